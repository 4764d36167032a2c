package dedup

import (
	"fmt"
	"testing"
	"time"
)

func TestCheck(t *testing.T) {
	const h = int64(time.Hour / time.Millisecond)
	type rec struct {
		id  string
		ts  int64
		dup bool
	}
	f := func(name string, recs ...rec) {
		t.Helper()
		s := New(24 * time.Hour)
		for i, r := range recs {
			if got := s.Check([]byte(r.id), r.ts); got != r.dup {
				t.Fatalf("%s: record %d (%s@%d): dup=%v, want %v", name, i, r.id, r.ts, got, r.dup)
			}
		}
	}
	f("first is not a duplicate", rec{"a", 0, false}, rec{"b", 0, false})
	f("repeat inside the window", rec{"a", 0, false}, rec{"a", 24 * h, true})
	f("repeat just outside the window", rec{"a", 0, false}, rec{"a", 24*h + 1, false})
	f("repeat of a repeat extends the window", rec{"a", 0, false}, rec{"a", 20 * h, true}, rec{"a", 30 * h, true})
	f("new copy after the window opens a new window", rec{"a", 0, false}, rec{"a", 25 * h, false}, rec{"a", 26 * h, true})
	f("earlier timestamp than the first copy is still a duplicate", rec{"a", 10 * h, false}, rec{"a", 9 * h, true})
	f("ids differing in one byte", rec{"abc", 0, false}, rec{"abd", 0, false}, rec{"abc", 1, true})
}

func TestSweepKeepsWhatTheWindowNeeds(t *testing.T) {
	const h = int64(time.Hour / time.Millisecond)
	s := New(24 * time.Hour)
	for i := range 1000 {
		s.Check([]byte(fmt.Sprint("e", i)), int64(i)*h/10) // 100 hours of records
	}
	// Everything older than watermark-(window+slack) may go; everything newer must stay.
	if !s.Check([]byte("e999"), 100*h) {
		t.Fatal("recent id forgotten")
	}
	if s.Check([]byte("e0"), 100*h) {
		t.Fatal("id 100h old counted as duplicate")
	}
	if n := s.Len(); n > 260+2 {
		t.Fatalf("set holds %d ids, want about 250 (25h at 10/h)", n)
	}
}

func BenchmarkCheck(b *testing.B) {
	ids := make([][]byte, 1<<16)
	for i := range ids {
		ids[i] = fmt.Appendf(nil, "0190f3a2-7c1e-7b9a-9a1e-%012x", i)
	}
	s := New(24 * time.Hour)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.Check(ids[i&(len(ids)-1)], int64(i))
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
}
