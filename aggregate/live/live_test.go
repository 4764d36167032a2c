package live

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
)

const q = 2026*12 + 3 // 2026-Q2 (calendar)

func count(account string, part int32, bucket, end, events uint64) schema.EventCount {
	return schema.EventCount{Account: account, Month: q, Kind: schema.KindLogin, Topic: "t", Partition: part, Bucket: bucket, CoveredEnd: end, Events: events}
}

func logins(t *testing.T, s *State, a string) uint64 {
	t.Helper()
	r, ok := s.Row(a)
	if !ok {
		t.Fatalf("%s not cached", a)
	}
	return r.Rollup.Logins
}

// TestCountBuckets: a key's buckets fold into a sum as later buckets
// arrive; a row of an earlier bucket (a replay's) or a smaller
// covered_end of the open one changes nothing, as in
// ReplacingMergeTree(covered_end); a load's sum of lower buckets adds up.
func TestCountBuckets(t *testing.T) {
	s := New(quarter.Fiscal{StartMonth: 1}, q)
	s.Load([]string{"a"}, &schema.LiveLoad{
		Facts:     schema.Facts{EventCounts: []schema.EventCount{count("a", 0, 5, 5<<20+10, 3)}},
		CountSums: []uint64{40}, // buckets 0–4
	}, time.Now())
	steps := []struct {
		row  schema.EventCount
		want uint64
	}{
		{count("a", 0, 5, 5<<20+20, 4), 44}, // open bucket grows
		{count("a", 0, 5, 5<<20+15, 9), 44}, // smaller covered_end: an older writer
		{count("a", 0, 6, 6<<20+1, 1), 45},  // next bucket: 5 folds at 4
		{count("a", 0, 5, 5<<20+12, 3), 45}, // bucket 5 again, as a replay writes it: below the open one (its last row is final)
		{count("a", 0, 6, 6<<20+9, 2), 46},  // open bucket grows
		{count("a", 0, 9, 9<<20+9, 5), 51},  // a gap: buckets 7 and 8 had no event of the key
		{count("a", 0, 9, 9<<20+9, 5), 51},  // the same row again
	}
	for i, st := range steps {
		s.Apply(&schema.Facts{EventCounts: []schema.EventCount{st.row}}, nil)
		if got := logins(t, s, "a"); got != st.want {
			t.Fatalf("step %d: logins %d, want %d", i, got, st.want)
		}
	}
}

// TestUnkeyedAccountLeaves: an account whose counts come from two
// partitions of one topic leaves the cache and is not loaded again;
// partitions of two topics (incarnations) are fine.
func TestUnkeyedAccountLeaves(t *testing.T) {
	s := New(quarter.Fiscal{StartMonth: 1}, q)
	s.Load([]string{"a", "b"}, &schema.LiveLoad{}, time.Now())
	other := count("b", 1, 0, 10, 1)
	other.Topic = "t#new-incarnation" // partition 1, of another topic
	var changed []string
	s.Apply(&schema.Facts{EventCounts: []schema.EventCount{count("a", 0, 0, 10, 1), count("b", 0, 0, 10, 1), other}}, func(a string) { changed = append(changed, a) })
	if !s.Has("a") || !s.Has("b") || s.Unkeyed("a") || s.Unkeyed("b") {
		t.Fatalf("one partition per topic: cached a %v b %v", s.Has("a"), s.Has("b"))
	}
	s.Apply(&schema.Facts{EventCounts: []schema.EventCount{count("a", 1, 0, 10, 1)}}, nil)
	if s.Has("a") || !s.Unkeyed("a") {
		t.Fatalf("a with counts of partitions 0 and 1 of one topic: cached %v, unkeyed %v", s.Has("a"), s.Unkeyed("a"))
	}
	if _, ok := s.Row("a"); ok {
		t.Fatal("a row for an unkeyed account")
	}
	s.Load([]string{"a"}, &schema.LiveLoad{}, time.Now())
	if s.Has("a") {
		t.Fatal("an unkeyed account was loaded again")
	}
	if s.Len() != 1 || s.Bytes() <= 0 {
		t.Fatalf("cache of %d accounts, %d bytes", s.Len(), s.Bytes())
	}
	slices.Sort(changed)
	if got := fmt.Sprint(slices.Compact(changed)); got != "[a b]" {
		t.Fatalf("changed %s, want [a b]", got)
	}
}

// TestRollover: the next quarter's state keeps each account's seats and
// purchase (its whole history) and starts with no activity; merging the
// new quarter's flushes gives its row.
func TestRollover(t *testing.T) {
	s := New(quarter.Fiscal{StartMonth: 1}, q)
	f := &schema.Facts{
		UserActivity:  []schema.UserActivity{{Account: "a", User: "u1", Month: q, LastMs: 1000}, {Account: "a", User: "u2", Month: q + 1, LastMs: 2000}},
		SeatEvents:    []schema.SeatEvent{{Account: "a", User: "u1", Month: q, OccurredMs: 10, EventID: "s1", Assigned: true}, {Account: "a", User: "u2", Month: q, OccurredMs: 11, EventID: "s2", Assigned: true}},
		SeatPurchases: []schema.SeatPurchase{{Account: "a", Month: q, OccurredMs: 5, EventID: "p", Seats: 4}},
		EventCounts:   []schema.EventCount{count("a", 0, 0, 10, 2)},
	}
	s.Load([]string{"a"}, &schema.LiveLoad{Facts: *f}, time.Now())
	row, _ := s.Row("a")
	r := row.Rollup
	if r.SeatsAssigned != 2 || r.ActiveAssignedUsers != 2 || r.Logins != 2 || r.SeatsPurchased != 4 {
		t.Fatalf("before the rollover: %+v", r)
	}
	n := s.Rollover(q + 3)
	row, ok := n.Row("a")
	r = row.Rollup
	if !ok || r.SeatsAssigned != 2 || r.SeatsPurchased != 4 || r.ActiveUsers != 0 || r.ActiveAssignedUsers != 0 || r.Logins != 0 || r.QuarterStart != quarter.MonthStart(q+3) {
		t.Fatalf("after the rollover: %+v", r)
	}
	next := count("a", 0, 0, 20, 5)
	next.Month = q + 3
	n.Apply(&schema.Facts{
		UserActivity: []schema.UserActivity{{Account: "a", User: "u2", Month: q + 3, LastMs: 9000}},
		EventCounts:  []schema.EventCount{next},
	}, nil)
	row, _ = n.Row("a")
	r = row.Rollup
	if r.ActiveUsers != 1 || r.ActiveAssignedUsers != 1 || r.Logins != 5 || r.SeatsAssigned != 2 {
		t.Fatalf("the new quarter's row: %+v", r)
	}

	// The two states share nothing: late facts of the old quarter (a new
	// user, a seat event) change its row only, the new quarter's a row
	// of its own.
	s.Apply(&schema.Facts{
		UserActivity: []schema.UserActivity{{Account: "a", User: "u3", Month: q + 2, LastMs: 3000}},
		SeatEvents:   []schema.SeatEvent{{Account: "a", User: "u3", Month: q + 2, OccurredMs: 12, EventID: "s3", Assigned: true}},
	}, nil)
	n.Apply(&schema.Facts{
		UserActivity: []schema.UserActivity{{Account: "a", User: "u4", Month: q + 3, LastMs: 9500}, {Account: "a", User: "u3", Month: q + 3, LastMs: 9600}},
		SeatEvents:   []schema.SeatEvent{{Account: "a", User: "u1", Month: q + 3, OccurredMs: 20, EventID: "s4", Assigned: false}},
	}, nil)
	row, _ = s.Row("a")
	if r := row.Rollup; r.SeatsAssigned != 3 || r.ActiveUsers != 3 || r.ActiveAssignedUsers != 3 || r.Logins != 2 {
		t.Fatalf("the old quarter's row after its late facts: %+v", r)
	}
	row, _ = n.Row("a")
	if r := row.Rollup; r.SeatsAssigned != 1 || r.ActiveUsers != 3 || r.ActiveAssignedUsers != 1 || r.Logins != 5 {
		t.Fatalf("the new quarter's row: %+v", r)
	}
}
