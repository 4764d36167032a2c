package dedup

import (
	"fmt"
	"testing"
	"time"
	"unsafe"
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
		// A partition holding the records, so that the Set can recover
		// what it evicted.
		l := &modelLog{}
		for _, r := range recs {
			l.recs = append(l.recs, modelRec{id: r.id, ts: r.ts, valid: true})
		}
		c := &modelCaller{t: t, log: l, window: 24 * time.Hour}
		c.assign(0, nil)
		for i, r := range recs {
			if got := c.decide(i); got != r.dup {
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
	f("earlier timestamp beyond the window is not", rec{"a", 30 * h, false}, rec{"a", 6*h - 1, false}, rec{"a", 6 * h, true})
	f("copies on both sides", rec{"a", 100 * h, false}, rec{"a", 0, false}, rec{"a", 50 * h, false}, rec{"a", 76 * h, true}, rec{"a", 24 * h, true})
	f("a far copy does not hide a near one", rec{"a", 200 * h, false}, rec{"a", 0, false}, rec{"a", 1 * h, true}, rec{"a", 199 * h, true})
	f("window edges", rec{"a", 100 * h, false}, rec{"a", 76*h - 1, false}, rec{"b", 100 * h, false}, rec{"b", 76 * h, true}, rec{"c", 50 * h, false}, rec{"c", 74 * h, true}, rec{"d", 50 * h, false}, rec{"d", 74*h + 1, false})
	f("ids differing in one byte", rec{"abc", 0, false}, rec{"abd", 0, false}, rec{"abc", 1, true})
}

func TestSweepKeepsWhatTheWindowNeeds(t *testing.T) {
	const h = int64(time.Hour / time.Millisecond)
	s := New(24 * time.Hour)
	for i := range 1000 {
		s.Check([]byte(fmt.Sprint("e", i)), int64(i)*h/10, int64(i)) // 100 hours of records
	}
	// Everything older than watermark-(window+slack) may go; everything newer must stay.
	if !s.Check([]byte("e999"), 100*h, 1000) {
		t.Fatal("recent id forgotten")
	}
	if s.Check([]byte("e0"), 100*h, 1001) {
		t.Fatal("id 100h old counted as duplicate")
	}
	if n := s.Len(); n > 2*260+2 {
		t.Fatalf("set holds %d ids, want at most 520 (2·26h at 10/h)", n)
	}
	if s.Holes() != 1 {
		t.Fatalf("%d holes, want the evicted hours as one", s.Holes())
	}
}

// TestClockBoundsEviction: 100 hours of records (10 an hour) with one
// record stamped ten years ahead among them, or every record stamped ahead
// of the host's clock. Given a clock (SetClock), the Set keeps about the
// memory of an in-order stream (as TestSweepKeepsWhatTheWindowNeeds);
// without one (as before SetClock), the far-future record held every later
// hour. Copies within the window are duplicates in every case.
func TestClockBoundsEviction(t *testing.T) {
	const h = int64(time.Hour / time.Millisecond)
	const ts0 = int64(1_795_000_000_000) // 2026-11-18
	far := ts0 + 10*365*24*h
	last := ts0 + 999*h/10
	for _, tc := range []struct {
		name   string
		window time.Duration
		far    int // the far-future record comes before record far (-1: none)
		// clock is the host's clock when the stream is at ts (ok false:
		// no clock given).
		clock  func(ts int64) (now int64, ok bool)
		maxLen int   // entries held at the end, at most
		wm     int64 // the watermark at the end (0: not checked)
	}{
		{"live stream", 24 * time.Hour, 10, func(ts int64) (int64, bool) { return ts, true }, 2*260 + 3, last + h}, // the far copy counts as the clock + 1h
		{"far record first", 24 * time.Hour, 0, func(ts int64) (int64, bool) { return ts, true }, 2*260 + 3, last + h},
		{"backlog: the clock 1000h ahead of the stream", 24 * time.Hour, 10, func(int64) (int64, bool) { return ts0 + 1000*h, true }, 2*260 + 3, last},
		{"backlog, far record first", 24 * time.Hour, 0, func(int64) (int64, bool) { return ts0 + 1000*h, true }, 2*260 + 3, last},
		{"a producer 3h ahead of the clock, window 1h", time.Hour, -1, func(ts int64) (int64, bool) { return ts - 3*h, true }, (2*2 + 3 + 2) * 10, last - 2*h},
		{"the clock steps back and forth by 50h", 24 * time.Hour, 10, func(ts int64) (int64, bool) { return ts - 50*h*(ts/(50*h)%2), true }, 2*(260+500) + 3, 0},
		{"no clock: everything held", 24 * time.Hour, 10, func(int64) (int64, bool) { return 0, false }, 1000 + 2, far},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(tc.window)
			check := func(id string, ts, off, stream int64) bool {
				if now, ok := tc.clock(stream); ok {
					s.SetClock(now)
				}
				return s.Check([]byte(id), ts, off)
			}
			off := int64(0)
			for i := range 1000 {
				ts := ts0 + int64(i)*h/10
				if i == tc.far {
					if check("far", far, off, ts) {
						t.Fatal("a new id is a duplicate")
					}
					off++
				}
				if check(fmt.Sprint("e", i), ts, off, ts) {
					t.Fatalf("e%d: a new id is a duplicate", i)
				}
				off++
			}
			if !check("e999", last, off, last) || tc.far >= 0 && !check("far", far, off+1, last) {
				t.Fatal("a copy is not a duplicate")
			}
			if n := s.Len(); n > tc.maxLen {
				t.Errorf("%d entries held, want at most %d", n, tc.maxLen)
			}
			if wm, ok := s.Watermark(); tc.wm != 0 && (!ok || wm != tc.wm) {
				t.Errorf("watermark %d (%v), want %d", wm, ok, tc.wm)
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
		if s.CheckKey(keys[i], 0, int64(i)) {
			t.Fatalf("key %d: a new key is a duplicate", i)
		}
	}
	for i, k := range keys {
		if !s.CheckKey(k, 1, int64(1000+i)) {
			t.Fatalf("key %d: not found", i)
		}
		s.Prefetch(k)
	}
	if s.CheckKey(Key{h1: 7, h2: 1 << 40}, 2, 2000) {
		t.Fatal("a key differing only in h2 is a duplicate")
	}
	// Each key holds both of its timestamps (either can be the only one
	// within the window of a later copy).
	if s.Len() != 2*len(keys)+1 {
		t.Fatalf("Len = %d, want %d", s.Len(), 2*len(keys)+1)
	}
}

// TestReserve checks that Reserve makes room for n more IDs at once, keeps
// what the set holds, and that the IDs then fit without growing the table.
func TestReserve(t *testing.T) {
	s := New(time.Hour)
	id := func(i int) []byte { return fmt.Appendf(nil, "id-%d", i) }
	for i := range 100 {
		s.Check(id(i), 0, int64(i))
	}
	s.Reserve(10000)
	size := len(s.tab)
	if (100+10000)*4 > size*3 || size >= 2*16384 {
		t.Fatalf("after Reserve(10000) with 100 IDs: %d slots, want the smallest power of two holding 10100 at 3/4", size)
	}
	for i := range 100 {
		if !s.Check(id(i), 1, int64(100+i)) {
			t.Fatalf("id %d forgotten by Reserve", i)
		}
	}
	for i := 100; i < 10100; i++ {
		if s.Check(id(i), 1, int64(100+i)) {
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
			if s.Check(fmt.Appendf(nil, "id-%d", i), ts0+int64(i), int64(i)) {
				t.Fatalf("window %s: id %d: a new ID is a duplicate", window, i)
			}
			if len(s.tab) != size {
				t.Fatalf("window %s: the reserved table went from %d to %d slots at the ID %d", window, size, len(s.tab), i)
			}
		}
		// A timestamp past keep since the first one sweeps as before.
		s.Check([]byte("late"), ts0+s.keep+1000, 1000)
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
		s.Check([]byte("a"), 1, 0)
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
			"Check":    func() { s.Check([]byte("a"), 2, 1) },
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
		s.Check(ids[i&(len(ids)-1)], int64(i), int64(i))
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
}

// LimitFor keeps a table's peak (its doubling to 2·limit slots, with the
// half-size table still mapped) within the bytes given, and takes the
// largest such table.
func TestLimitFor(t *testing.T) {
	for _, bytes := range []int64{0, 1 << 20, 100 << 20, 128 << 20, 1 << 30} {
		limit := LimitFor(bytes)
		slots := int64(2 * limit)
		peak := slots * int64(unsafe.Sizeof(entry{})) * 3 / 2
		if limit > 1024 && peak > bytes {
			t.Errorf("LimitFor(%d) = %d: peak %d bytes", bytes, limit, peak)
		}
		if 2*peak <= bytes {
			t.Errorf("LimitFor(%d) = %d: a table twice as large fits", bytes, limit)
		}
	}
	if got := LimitFor(128 << 20); got != 1<<20 {
		t.Errorf("LimitFor(128 MiB) = %d, want 1Mi entries (2Mi slots, 48 MiB, 72 MiB while doubling)", got)
	}
}
