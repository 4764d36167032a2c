package dedup

import (
	"math"
	"sort"
)

// Spilling hours to the on-disk tier and reading them back (disk.go).

// spillBatchEntries is how many entries a spill writes per Pebble batch.
const spillBatchEntries = 1 << 15

// epochOf is the start of ts's epoch.
func (s *Set) epochOf(ts int64) int64 {
	e := ts / s.epochMs * s.epochMs
	if e > ts {
		e -= s.epochMs
	}
	return e
}

// lookupDisk reports whether the spilled entries of k hold a timestamp
// within the window of ts.
func (s *Set) lookupDisk(k Key, ts int64) bool {
	if s.disk == nil || s.diskErr != nil {
		return false
	}
	lo, hi := ts-s.window, ts+s.window
	eLo, eHi := s.epochOf(max(lo, s.diskLo)), s.epochOf(min(hi, s.diskHi-1))
	spilled := false
	for n, e := (eHi-eLo)/s.epochMs, eLo; n >= 0 && !spilled; n, e = n-1, e+s.epochMs {
		spilled = s.epochHours[e] > 0
	}
	if !spilled {
		// diskLo..diskHi is a hull: hours far apart (one stamped years
		// ahead) leave the epochs between them empty.
		return false
	}
	diskLookups.Add(1)
	found, err := s.disk.lookup(s.diskID, k, eLo, eHi, s.epochMs, lo, hi)
	if err != nil {
		s.diskErr = err
	}
	return found
}

// spill moves the hours written to least recently out of the table until it
// holds half its limit.
func (s *Set) spill() {
	count := map[int64]int{}
	for i := range s.tab {
		if e := &s.tab[i]; e.h1 != 0 {
			count[hourOf(e.ts)]++
		}
	}
	hours := make([]int64, 0, len(count))
	for h := range count {
		hours = append(hours, h)
	}
	// Hours beyond both the watermark and window + Slack past the last
	// record go first: stamped far ahead of the clock (SetClock) and of
	// the stream, they are needed only when it gets there. (A producer a
	// few hours ahead writes the hours after the watermark: those stay.)
	beyond := max(s.watermark, s.lastTs)
	if beyond <= math.MaxInt64-s.keep {
		beyond += s.keep
	}
	touched := func(h int64) int64 {
		if st := s.hours[h]; st != nil && h <= beyond {
			return st.touched
		}
		return math.MinInt64 // also entries of an hour without stats: none expected
	}
	sort.Slice(hours, func(i, j int) bool {
		ti, tj := touched(hours[i]), touched(hours[j])
		return ti < tj || ti == tj && hours[i] < hours[j]
	})
	move := map[int64]bool{}
	for freed, i := 0, 0; i < len(hours) && s.n-freed > s.limit/2; i++ {
		move[hours[i]] = true
		freed += count[hours[i]]
	}
	b := s.disk.newSpill(s.diskID)
	for i := 0; i < len(s.tab); {
		e := &s.tab[i]
		if e.h1 != 0 && move[hourOf(e.ts)] {
			if err := b.add(s.epochOf(e.ts), e.Key, e.ts); err != nil && s.diskErr == nil {
				s.diskErr = err
			}
			if s.diskEntries++; s.diskEntries%spillBatchEntries == 0 {
				// Commit in pieces: one batch of every spilled entry would
				// cost its size in memory twice (batch and memtable).
				if err := b.commit(); err != nil && s.diskErr == nil {
					s.diskErr = err
				}
				b = s.disk.newSpill(s.diskID)
			}
			s.deleteAt(uint64(i)) // slot i may now hold a later entry: look again
			continue
		}
		i++
	}
	if err := b.commit(); err != nil && s.diskErr == nil {
		s.diskErr = err
	}
	for h := range move {
		st := s.hours[h]
		delete(s.hours, h)
		if st == nil {
			continue
		}
		st.spilled = count[h]
		if d := s.onDisk[h]; d != nil {
			d.minOff, d.maxOff, d.touched = min(d.minOff, st.minOff), max(d.maxOff, st.maxOff), max(d.touched, st.touched)
			d.spilled += st.spilled
		} else {
			if s.onDisk == nil {
				s.onDisk, s.epochHours = map[int64]*hourStat{}, map[int64]int{}
			}
			s.onDisk[h] = st
			s.epochHours[s.epochOf(h)]++
		}
		s.diskLo, s.diskHi = min(s.diskLo, h), max(s.diskHi, h+hourMs)
	}
	s.curHour, s.cur = math.MinInt64, nil
	// The table keeps its size: it spilled because it was full and fills
	// again. Shrinking it here (as sweep does when entries age out) made a
	// partition whose newest hour alone exceeds the limit (100M IDs a day
	// under a 256 MiB cap) spill that whole hour, shrink to a few slots
	// and double its way back, over and over: a rebuild every doubling,
	// with the old and the new table mapped at once, and fresh pages to
	// fault in. LimitFor counts the one doubling to the table's full size.
}

// ageDisk turns the spilled hours that aged out (as sweep does for the
// table's) into holes, and deletes the epochs left without spilled hours.
func (s *Set) ageDisk(cut int64) {
	if len(s.onDisk) == 0 {
		return
	}
	for h, st := range s.onDisk {
		if h+hourMs > cut || st.touched > cut {
			continue
		}
		s.addHole(Hole{Lo: h, Hi: h + hourMs, OffLo: st.minOff, OffHi: st.maxOff})
		delete(s.onDisk, h)
		s.diskEntries -= st.spilled
		e := s.epochOf(h)
		if s.epochHours[e]--; s.epochHours[e] == 0 {
			delete(s.epochHours, e)
			if err := s.disk.dropEpochs(s.diskID, e, e+s.epochMs); err != nil && s.diskErr == nil {
				s.diskErr = err
			}
		}
	}
	s.diskLo, s.diskHi = math.MaxInt64, math.MinInt64
	for h := range s.onDisk {
		s.diskLo, s.diskHi = min(s.diskLo, h), max(s.diskHi, h+hourMs)
	}
}
