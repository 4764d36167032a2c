package dedup

import (
	"math"
	"sort"
)

// Covered reports whether every earlier record within the window of a
// timestamp tsMs is known to the Set, so that CheckKey's answer for it is
// exact. The common case (a timestamp near the newest) is two comparisons.
func (s *Set) Covered(tsMs int64) bool {
	return tsMs-s.window >= s.floorTs && tsMs-s.window >= s.holesEnd || s.coveredSlow(tsMs)
}

func (s *Set) coveredSlow(tsMs int64) bool {
	lo := tsMs - s.window
	if lo < s.floorTs {
		return false
	}
	return s.firstHole(lo, tsMs+s.window+1) < 0
}

// firstHole returns the index of the first hole that intersects [lo, hi),
// or -1.
func (s *Set) firstHole(lo, hi int64) int {
	i := sort.Search(len(s.holes), func(i int) bool { return s.holes[i].Hi > lo })
	if i < len(s.holes) && s.holes[i].Lo < hi {
		return i
	}
	return -1
}

// Recovery is a part of the partition that the Set needs re-read before it
// can decide a record: the valid records at offsets [From, To) (the caller
// narrows From to the first offset whose timestamp is at least Lo, which
// Kafka's ListOffsets answers) are passed to Fill, then Recovered is called.
type Recovery struct {
	Lo, Hi   int64 // the band of record time being recovered, whole hours
	From, To int64 // offsets to re-read: From is a lower bound
	Floor    bool  // the floor moves down to Lo: ListOffsets(Lo) is needed
	oldFloor int64 // offset of the floor before the recovery
	holes    []Hole
	filled   int
}

// Filled is the number of records the recovery put into the table.
func (r *Recovery) Filled() int { return r.filled }

// OldFloor is the offset of the floor before the recovery: for a floor
// move, every record below it that the re-read does not reach (retention
// deleted it) is one whose timestamp nothing tells.
func (r *Recovery) OldFloor() int64 { return r.oldFloor }

// Recovery returns what must be re-read before a record with timestamp tsMs
// at offset off can be decided, or nil if nothing must (Covered). The band
// recovered reaches window + Slack beyond the record's window on each side,
// so that a run of old timestamps recovers once per band, not per record.
func (s *Set) Recovery(tsMs, off int64) *Recovery {
	if s.Covered(tsMs) {
		return nil
	}
	margin := s.window + s.keep
	r := &Recovery{
		Lo:       hourOf(tsMs - margin),
		Hi:       hourOf(tsMs+margin) + hourMs,
		From:     math.MaxInt64,
		To:       math.MinInt64,
		oldFloor: s.floorOff,
	}
	if r.Lo < s.floorTs {
		r.Floor = true
		r.From, r.To = 0, s.floorOff
	}
	for _, h := range s.holes {
		if h.Hi > r.Lo && h.Lo < r.Hi {
			r.holes = append(r.holes, h)
			r.From = min(r.From, h.OffLo)
			r.To = max(r.To, h.OffHi+1)
		}
	}
	r.To = min(r.To, off)
	s.filling = true
	if r.From > r.To {
		r.From = r.To
	}
	return r
}

// Fill gives the Set a valid record re-read for r. Records outside what r
// recovers are ignored or, below the old floor, remembered as holes.
func (s *Set) Fill(r *Recovery, k Key, tsMs, off int64) {
	if r.Floor && off < r.oldFloor {
		if tsMs >= r.Lo && tsMs < r.Hi {
			s.fill(r, k, tsMs, off)
			return
		}
		// Outside the band, below the old floor and at or above the new
		// one: not in the table, so a hole until a window needs it.
		h := hourOf(tsMs)
		s.addHole(Hole{Lo: h, Hi: h + hourMs, OffLo: off, OffHi: off})
		return
	}
	if tsMs < r.Lo || tsMs >= r.Hi {
		return
	}
	for _, h := range r.holes {
		if tsMs >= h.Lo && tsMs < h.Hi && off >= h.OffLo && off <= h.OffHi {
			s.fill(r, k, tsMs, off)
			return
		}
	}
}

func (s *Set) fill(r *Recovery, k Key, tsMs, off int64) {
	r.filled++
	// A re-read record is older than the record being decided: CheckKey
	// inserts it (its answer is of no interest) and touches its hour.
	s.CheckKey(k, tsMs, off)
}

// Recovered completes r: the band is no longer missing. start is the
// offset the re-read began at (for a floor move, ListOffsets(r.Lo)).
func (s *Set) Recovered(r *Recovery, start int64) {
	s.filling = false
	if r.Floor {
		s.floorOff, s.floorTs = min(start, s.floorOff), r.Lo
	}
	s.cutHoles(r.Lo, r.Hi)
}

// AddHole declares that valid records at offsets h.OffLo..h.OffHi with a
// timestamp in [h.Lo, h.Hi) (whole hours) may be missing from the Set: a
// record whose window reaches them recovers them first. The caller adds
// what a floor would otherwise wrongly claim (records retention deleted
// that the archive of event IDs holds).
func (s *Set) AddHole(h Hole) { s.addHole(h) }

// addHole adds h, merging it with the holes it overlaps or touches in time
// (the merged offset range covers both: conservative).
func (s *Set) addHole(h Hole) {
	i := sort.Search(len(s.holes), func(i int) bool { return s.holes[i].Hi >= h.Lo })
	if i < len(s.holes) && s.holes[i].Lo <= h.Lo && s.holes[i].Hi >= h.Hi {
		// Inside a hole's time already: widen its offsets in place.
		o := &s.holes[i]
		o.OffLo, o.OffHi = min(o.OffLo, h.OffLo), max(o.OffHi, h.OffHi)
		return
	}
	j := i
	for j < len(s.holes) && s.holes[j].Lo <= h.Hi {
		o := s.holes[j]
		h.Lo, h.Hi = min(h.Lo, o.Lo), max(h.Hi, o.Hi)
		h.OffLo, h.OffHi = min(h.OffLo, o.OffLo), max(h.OffHi, o.OffHi)
		j++
	}
	s.holes = append(s.holes[:i], append([]Hole{h}, s.holes[j:]...)...)
	s.holesEnd = max(s.holesEnd, h.Hi)
}

// cutHoles removes the time [lo, hi) from every hole.
func (s *Set) cutHoles(lo, hi int64) {
	out := s.holes[:0:0]
	for _, h := range s.holes {
		if h.Hi <= lo || h.Lo >= hi {
			out = append(out, h)
			continue
		}
		if h.Lo < lo {
			out = append(out, Hole{Lo: h.Lo, Hi: lo, OffLo: h.OffLo, OffHi: h.OffHi})
		}
		if h.Hi > hi {
			out = append(out, Hole{Lo: hi, Hi: h.Hi, OffLo: h.OffLo, OffHi: h.OffHi})
		}
	}
	s.holes = out
	s.holesEnd = math.MinInt64
	for _, h := range s.holes {
		s.holesEnd = max(s.holesEnd, h.Hi)
	}
}
