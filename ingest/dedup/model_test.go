package dedup

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// A partition as the filter's caller sees it: records with event IDs,
// Kafka timestamps and validity, Kafka's ListOffsets by timestamp over
// them, and a caller that recovers what the Set asks for, restarts from a
// floor, and loses records to retention.

type modelRec struct {
	id    string
	ts    int64
	valid bool
}

type modelLog struct {
	recs     []modelRec
	logStart int
}

// listOffsets is Kafka's ListOffsets by timestamp: the first retained offset
// whose timestamp is at least ts (the end offset if none).
func (l *modelLog) listOffsets(ts int64) int64 {
	for o := l.logStart; o < len(l.recs); o++ {
		if l.recs[o].ts >= ts {
			return int64(o)
		}
	}
	return int64(len(l.recs))
}

// contractDup is contract section 2 itself: an earlier valid record of the
// same ID within the window, in either direction.
func (l *modelLog) contractDup(o int, window int64) bool {
	r := l.recs[o]
	if !r.valid {
		return false
	}
	for q := range o {
		e := l.recs[q]
		if e.valid && e.id == r.id && r.ts-e.ts <= window && e.ts-r.ts <= window {
			return true
		}
	}
	return false
}

type modelCaller struct {
	t          *testing.T
	log        *modelLog
	window     time.Duration
	s          *Set
	recoveries int
	unknown    int // recoveries that needed records retention had deleted
	disk       *Disk
	limit      int
	clock      func(o int) int64 // the host's clock when record o is read; nil: no clock
}

// assign starts a new Set at durable position x, as the consumer does: the
// floor comes from the previous owner's watermark (or, with none, its
// floor), and [floor, x) is re-read only to fill the Set.
func (c *modelCaller) assign(x int, prev *Set) {
	s := New(c.window)
	if c.disk != nil {
		s.UseDisk(c.disk, c.limit)
	}
	if c.clock != nil {
		s.SetClock(c.clock(x))
	}
	if prev != nil {
		f, ok := prev.Watermark()
		f -= s.keep
		if !ok {
			// No watermark: it read nothing, or only records stamped
			// ahead of its clock. The consumer then keeps the floor it
			// was assigned; any floor is right, since S = ListOffsets(F).
			_, f = prev.Floor()
		}
		off := min(c.log.listOffsets(f), int64(x))
		s.SetFloor(off, f)
		for q := off; q < int64(x); q++ {
			if r := c.log.recs[q]; r.valid {
				s.CheckKey(s.Key([]byte(r.id)), r.ts, q)
			}
		}
	}
	c.s = s
}

// decide recovers what the Set needs and decides record o.
func (c *modelCaller) decide(o int) bool {
	r := c.log.recs[o]
	if c.clock != nil {
		c.s.SetClock(c.clock(o))
	}
	if rec := c.s.Recovery(r.ts, int64(o)); rec != nil {
		c.recoveries++
		start := c.log.listOffsets(rec.Lo)
		if !rec.Floor {
			start = max(start, rec.From)
		}
		if need := rec.From; need < int64(c.log.logStart) && (rec.Floor || start == int64(c.log.logStart)) {
			c.unknown++
		}
		for q := start; q < rec.To; q++ {
			if e := c.log.recs[q]; e.valid {
				c.s.Fill(rec, c.s.Key([]byte(e.id)), e.ts, q)
			}
		}
		c.s.Recovered(rec, start)
	}
	if !c.s.Covered(r.ts) {
		c.t.Fatalf("record %d still not covered after its recovery", o)
	}
	dup := c.s.CheckKey(c.s.Key([]byte(r.id)), r.ts, int64(o))
	if err := c.s.Err(); err != nil {
		c.t.Fatal(err)
	}
	return dup
}

// run processes the whole log with restarts at the given offsets and
// compares every valid record's answer with the contract's.
func (c *modelCaller) run(restarts map[int]bool) {
	c.assign(0, nil)
	for o, r := range c.log.recs {
		if restarts[o] {
			c.assign(o, c.s)
		}
		if !r.valid {
			continue
		}
		got, want := c.decide(o), c.log.contractDup(o, c.window.Milliseconds())
		if got != want {
			c.t.Fatalf("record %d (%s at %s): duplicate=%v, contract says %v", o, r.id,
				time.UnixMilli(r.ts).UTC().Format(time.RFC3339Nano), got, want)
		}
	}
}

const day = 24 * hourMs

// genLog makes n records whose timestamps follow one of several shapes
// that production topics have.
func genLog(rng *rand.Rand, shape string, n int, window int64) *modelLog {
	l := &modelLog{}
	base := int64(1_767_225_600_000) // 2026-01-01
	ts := base
	ids := 0
	newID := func() string { ids++; return fmt.Sprint("e", ids) }
	for len(l.recs) < n {
		r := modelRec{valid: rng.IntN(20) != 0}
		switch shape {
		case "in order":
			ts += rng.Int64N(10 * 60_000)
		case "jitter":
			ts += rng.Int64N(10*60_000) - 3*60_000
			if rng.IntN(50) == 0 {
				ts -= rng.Int64N(3 * hourMs) // late records beyond any slack
			}
		case "import re-runs":
			switch rng.IntN(200) {
			case 0:
				ts -= rng.Int64N(120 * day) // an older file
			case 1:
				ts += rng.Int64N(60 * day) // a newer one
			default:
				ts += rng.Int64N(30 * 60_000)
			}
		case "far ahead":
			ts += rng.Int64N(10 * 60_000)
			if rng.IntN(100) == 0 {
				// A producer's clock years ahead: one record, the stream
				// goes on (kept in ts only for this record).
				r.ts = ts + (1+rng.Int64N(20))*365*day
				r.id = newID()
				l.recs = append(l.recs, r)
				continue
			}
		case "back and forth":
			if rng.IntN(30) == 0 {
				ts = base + rng.Int64N(200*day)
			} else {
				ts += rng.Int64N(20 * 60_000)
			}
		}
		r.id = newID()
		if len(l.recs) > 0 && rng.IntN(4) == 0 {
			// A copy of an earlier record (maybe itself a copy or an
			// invalid one), at its timestamp, near it, or near the window
			// edge on either side.
			e := l.recs[rng.IntN(len(l.recs))]
			r.id = e.id
			switch rng.IntN(6) {
			case 0:
				r.ts = e.ts
			case 1:
				r.ts = e.ts + window
			case 2:
				r.ts = e.ts - window - 1
			case 3:
				r.ts = e.ts + window + 1
			case 4:
				r.ts = e.ts - window
			default:
				r.ts = ts
			}
		} else {
			r.ts = ts
		}
		l.recs = append(l.recs, r)
	}
	return l
}

// TestMatchesTheContract: the Set, with recoveries and restarts, gives the
// contract's answer for every record of logs whose timestamps go back and
// forth by months, with copies of copies and copies at the window's edges.
func TestMatchesTheContract(t *testing.T) {
	disk, err := OpenDisk(DiskConfig{Dir: t.TempDir() + "/dedup"})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	for _, shape := range []string{"in order", "jitter", "import re-runs", "back and forth", "far ahead"} {
		t.Run(shape, func(t *testing.T) {
			recoveries := 0
			for seed := range uint64(120) {
				rng := rand.New(rand.NewPCG(seed, 11))
				window := []time.Duration{24 * time.Hour, time.Hour, 90 * time.Minute}[seed%3]
				l := genLog(rng, shape, 1500, window.Milliseconds())
				restarts := map[int]bool{}
				for range rng.IntN(4) {
					restarts[rng.IntN(len(l.recs))] = true
				}
				c := &modelCaller{t: t, log: l, window: window}
				// The host's clock: none, following the stream (lagging
				// or leading it by up to two days, stepping back too),
				// far behind it (every record is ahead of it), or jumping.
				switch clockRng := rand.New(rand.NewPCG(seed, 13)); seed / 2 % 4 {
				case 1:
					c.clock = func(o int) int64 { return l.recs[o].ts + clockRng.Int64N(4*day) - 2*day }
				case 2:
					c.clock = func(int) int64 { return l.recs[0].ts - 30*day }
				case 3:
					c.clock = func(int) int64 { return l.recs[0].ts + clockRng.Int64N(300*day) - 30*day }
				}
				if seed%2 == 1 {
					// A tiny memory: hours spill to disk all the time.
					c.disk, c.limit = disk, 50+int(seed%7)*40
				}
				t.Logf("seed %d", seed)
				c.run(restarts)
				recoveries += c.recoveries
			}
			t.Logf("%d recoveries, %d disk lookups so far", recoveries, DiskLookups())
			if shape != "in order" && recoveries == 0 {
				t.Errorf("no recovery happened: the test exercises nothing beyond the table")
			}
		})
	}
}

// TestImportReRun is the case: Jan–Jun 2026 imported with event
// times as record timestamps, then Jul–Dec 2025, then the first import's
// last 300 records sent again; with a restart before the re-send too.
func TestImportReRun(t *testing.T) {
	for _, restart := range []bool{false, true} {
		l := &modelLog{}
		add := func(prefix string, from time.Time, months, n int) {
			span := from.AddDate(0, months, 0).Sub(from).Milliseconds()
			for i := range n {
				l.recs = append(l.recs, modelRec{id: fmt.Sprint(prefix, i), ts: from.UnixMilli() + span*int64(i)/int64(n), valid: true})
			}
		}
		add("h1-", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 6, 3000)
		add("h2-", time.Date(2025, 7, 1, 0, 0, 0, 0, time.UTC), 6, 3000)
		resend := len(l.recs)
		l.recs = append(l.recs, l.recs[2700:3000]...)
		c := &modelCaller{t: t, log: l, window: 24 * time.Hour}
		c.run(map[int]bool{resend: restart})
		dups := 0
		for o := resend; o < len(l.recs); o++ {
			if l.contractDup(o, day) {
				dups++
			}
		}
		if dups != 300 {
			t.Fatalf("the contract finds %d duplicates among the 300 re-sent records", dups)
		}
	}
}

// TestRetentionIsReported: a recovery that needs records retention deleted
// decides from what is left and is reported.
func TestRetentionIsReported(t *testing.T) {
	l := &modelLog{}
	base := int64(1_767_225_600_000)
	for i := range 400 {
		l.recs = append(l.recs, modelRec{id: fmt.Sprint("e", i), ts: base + int64(i)*hourMs, valid: true})
	}
	// A copy of record 5, far behind the watermark.
	l.recs = append(l.recs, modelRec{id: "e5", ts: base + 5*hourMs, valid: true})
	c := &modelCaller{t: t, log: l, window: 24 * time.Hour}
	c.assign(0, nil)
	for o := range 400 {
		c.decide(o)
	}
	if c.s.Holes() == 0 {
		t.Fatal("400 hours of records evicted nothing")
	}
	l.logStart = 100 // retention deleted records 0..99
	if c.decide(400) {
		t.Fatal("a duplicate of a deleted record cannot be found")
	}
	if c.unknown != 1 {
		t.Fatalf("%d recoveries reported deleted records, want 1", c.unknown)
	}
	if math.MinInt64 == c.s.holesEnd && c.s.Holes() != 0 {
		t.Fatal("holesEnd out of date")
	}
}
