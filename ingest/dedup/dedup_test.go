package dedup

import (
	"fmt"
	"math/rand/v2"
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
	if n := s.Len(); n > 2*250+2 {
		t.Fatalf("set holds %d ids, want at most 500 (2·25h at 10/h)", n)
	}
}

// TestMatchesMapModel runs random IDs and timestamps (going backwards less
// than Slack) through a Set and a plain map of the contract's rule, across
// growths and sweeps of the table.
func TestMatchesMapModel(t *testing.T) {
	const h = int64(time.Hour / time.Millisecond)
	for _, tc := range []struct {
		name    string
		ids     int
		steps   int
		span    int64 // ms the timestamps cover
		reserve int   // Reserve(reserve) before the first and the middle step
	}{
		{"few ids, many repeats", 50, 20000, 100 * h, 0},
		{"many ids, growth", 200000, 300000, 30 * h, 0},
		{"sweeps shrink the table", 100000, 400000, 400 * h, 0},
		{"reserved", 200000, 300000, 30 * h, 150000},
		{"reserved, sweeps shrink the table", 100000, 400000, 400 * h, 300000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tc.ids)))
			s := New(24 * time.Hour)
			model := map[int]int64{}
			var wm int64
			for step := range tc.steps {
				if tc.reserve > 0 && (step == 0 || step == tc.steps/2) {
					s.Reserve(tc.reserve)
				}
				id := rng.IntN(tc.ids)
				ts := int64(step)*tc.span/int64(tc.steps) - rng.Int64N(h/2)
				prev, seen := model[id]
				want := seen && ts-prev <= 24*h && prev >= wm-25*h
				if !seen || ts > prev {
					model[id] = ts
				}
				wm = max(wm, ts)
				if got := s.Check(fmt.Appendf(nil, "id-%d", id), ts); got != want {
					t.Fatalf("step %d: id %d at %d (previous %d, seen %v): dup=%v, want %v", step, id, ts, prev, seen, got, want)
				}
			}
			live := 0
			for _, ts := range model {
				if ts >= wm-25*h {
					live++
				}
			}
			if n := s.Len(); n < live || n > len(s.tab)/4*3 {
				t.Fatalf("Len %d: want at least the %d live ids and at most 3/4 of %d slots", n, live, len(s.tab))
			}
		})
	}
}

// TestCollidingSlots puts keys that start in the same slot next to each
// other and checks each is found as itself.
func TestCollidingSlots(t *testing.T) {
	s := New(time.Hour)
	keys := make([]Key, 500) // more than 3/4 of minSlots: the table grows
	for i := range keys {
		keys[i] = Key{h1: uint64(i)<<20 | 7, h2: uint64(i)}
		if s.CheckKey(keys[i], 0) {
			t.Fatalf("key %d: a new key is a duplicate", i)
		}
	}
	for i, k := range keys {
		if !s.CheckKey(k, 1) {
			t.Fatalf("key %d: not found", i)
		}
		s.Prefetch(k)
	}
	if s.CheckKey(Key{h1: 7, h2: 1 << 40}, 2) {
		t.Fatal("a key differing only in h2 is a duplicate")
	}
	if s.Len() != len(keys)+1 {
		t.Fatalf("Len = %d, want %d", s.Len(), len(keys)+1)
	}
}

// TestReserve checks that Reserve makes room for n more IDs at once, keeps
// what the set holds, and that the IDs then fit without growing the table.
func TestReserve(t *testing.T) {
	s := New(time.Hour)
	id := func(i int) []byte { return fmt.Appendf(nil, "id-%d", i) }
	for i := range 100 {
		s.Check(id(i), 0)
	}
	s.Reserve(10000)
	size := len(s.tab)
	if (100+10000)*4 > size*3 || size >= 2*16384 {
		t.Fatalf("after Reserve(10000) with 100 IDs: %d slots, want the smallest power of two holding 10100 at 3/4", size)
	}
	for i := range 100 {
		if !s.Check(id(i), 1) {
			t.Fatalf("id %d forgotten by Reserve", i)
		}
	}
	for i := 100; i < 10100; i++ {
		if s.Check(id(i), 1) {
			t.Fatalf("id %d: a new ID is a duplicate", i)
		}
	}
	if len(s.tab) != size {
		t.Fatalf("the table grew from %d to %d slots inside its reservation", size, len(s.tab))
	}
	s.Reserve(0)
	if len(s.tab) != size {
		t.Fatalf("Reserve(0) resized the table to %d slots", len(s.tab))
	}
}

// TestReserveSurvivesTheFirstTimestamp checks a table sized by Reserve
// before any ID keeps its size when the first IDs arrive with real Kafka
// timestamps (epoch milliseconds, far from the zero watermark of a new Set).
func TestReserveSurvivesTheFirstTimestamp(t *testing.T) {
	const ts0 = int64(1_795_000_000_000) // 2026-11-18
	for _, window := range []time.Duration{time.Hour, 24 * time.Hour} {
		s := New(window)
		s.Reserve(100_000)
		size := len(s.tab)
		for i := range 1000 {
			if s.Check(fmt.Appendf(nil, "id-%d", i), ts0+int64(i)) {
				t.Fatalf("window %s: id %d: a new ID is a duplicate", window, i)
			}
			if len(s.tab) != size {
				t.Fatalf("window %s: the reserved table went from %d to %d slots at the ID %d", window, size, len(s.tab), i)
			}
		}
		// A timestamp past keep since the first one sweeps as before.
		s.Check([]byte("late"), ts0+s.keep+1000)
		if s.lastSweep != ts0+s.keep+1000 {
			t.Fatalf("window %s: no sweep after the timestamps advanced by keep", window)
		}
	}
}

// TestFree checks Free empties a Set and that using it afterwards panics
// rather than touching released memory.
func TestFree(t *testing.T) {
	for _, reserve := range []int{0, 1 << 18} { // a heap table, a mapped one
		s := New(time.Hour)
		s.Reserve(reserve)
		s.Check([]byte("a"), 1)
		mappedBefore, size := MappedBytes(), int64(len(s.own.t.mem)) // 0 on the heap
		s.Free()
		if s.Len() != 0 {
			t.Fatalf("Len = %d after Free", s.Len())
		}
		// Other Sets' cleanups only ever lower MappedBytes.
		if s.own.t.mem != nil || MappedBytes() > mappedBefore-size {
			t.Fatalf("reserve %d: the %d-byte table is still mapped after Free", reserve, size)
		}
		s.Free() // idempotent
		for name, use := range map[string]func(){
			"Check":    func() { s.Check([]byte("a"), 2) },
			"Reserve":  func() { s.Reserve(10) },
			"Prefetch": func() { s.Prefetch(s.Key([]byte("a"))) },
		} {
			func() {
				defer func() {
					if recover() == nil {
						t.Fatalf("reserve %d: %s after Free did not panic", reserve, name)
					}
				}()
				use()
			}()
		}
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
