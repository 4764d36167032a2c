package schema

import (
	"strconv"
	"testing"
)

// TestInternSurvivesReset keeps strings of an earlier flush and checks
// that Reset and later Interns (into new arena blocks) never change them.
func TestInternSurvivesReset(t *testing.T) {
	var f Facts
	var kept []string
	var want []string
	for round := range 3 {
		for i := range 5000 { // several 64 KiB blocks per round
			b := []byte("user-" + string(rune('a'+round)) + "-" + strconv.Itoa(i))
			kept = append(kept, f.Intern(b))
			want = append(want, string(b))
			b[0] = 'X' // the caller's buffer is not retained
		}
		f.Reset()
	}
	if f.Intern(nil) != "" {
		t.Fatal("Intern(nil) is not empty")
	}
	for i := range kept {
		if kept[i] != want[i] {
			t.Fatalf("string %d is %q, want %q", i, kept[i], want[i])
		}
	}
}

func TestReserveKeepsRowsAndMakesRoom(t *testing.T) {
	f := Facts{UserActivity: []UserActivity{{Account: "a", User: "u", Month: 1}}}
	g := Facts{UserActivity: make([]UserActivity, 1000), EventCounts: make([]EventCount, 10)}
	f.Reserve(&g, 1)
	if len(f.UserActivity) != 1 || f.UserActivity[0].User != "u" {
		t.Fatalf("rows changed: %+v", f.UserActivity)
	}
	if c := cap(f.UserActivity) - len(f.UserActivity); c < 1000 {
		t.Fatalf("room for %d user activity rows, want at least 1000", c)
	}
	if cap(f.EventCounts) < 10 || len(f.EventCounts) != 0 {
		t.Fatalf("event counts: len %d cap %d", len(f.EventCounts), cap(f.EventCounts))
	}
	var h Facts
	h.Reserve(&g, 3.5)
	if cap(h.UserActivity) < 3500 {
		t.Fatalf("scaled by 3.5: room for %d user activity rows, want at least 3500", cap(h.UserActivity))
	}
}
