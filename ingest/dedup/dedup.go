// Package dedup finds duplicate events within one Kafka partition (contract
// section 2): a valid record at offset o with Kafka timestamp t is a
// duplicate when an earlier valid record (offset below o) of the same
// partition with the same event_id has a timestamp within the window of t,
// in either direction, whatever order the timestamps arrive in.
//
// A Set belongs to one partition and one goroutine; it is not safe for
// concurrent use. It exports no metrics (the consumer does).
//
// The Set holds entries (ID hash, timestamp), each of a real valid record
// below the one being decided, in an open-addressing table of 24-byte
// entries (linear probing, at most 3/4 full), plus an explicit, conservative
// description of which earlier records may be missing from it: a floor
// (every record below offset S has a timestamp below F) and holes (records
// in an offset range with a timestamp in an hour range, evicted from the
// table). A record whose window reaches into missing time is not decided
// until the caller has re-read that part of the partition from Kafka
// (Recovery, Fill, Recovered). docs/design.md, "The duplicate filter",
// explains why every answer is exact.
//
// Event IDs are kept as 128-bit hashes (two independently seeded maphash
// sums); a false duplicate would need a 128-bit collision. The seeds are
// per process: a Set is rebuilt from Kafka after a restart, never
// persisted. A table of 1 MiB or more lives in an anonymous memory mapping
// outside the Go heap (table.go).
//
// The table is far larger than the CPU caches, so a lookup is a cache
// miss. A caller that knows the next ID early computes its Key and calls
// Prefetch, then CheckKey after other work: the miss overlaps that work.
package dedup

import (
	"hash/maphash"
	"math"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/usagepipe/usagepipe/ingest/prefetch"
)

// Key is an event ID's 128-bit hash. The zero Key is never produced.
type Key struct{ h1, h2 uint64 }

type entry struct {
	Key       // h1 == 0: an empty slot
	ts  int64 // Kafka timestamp of a valid record with this ID
}

const minSlots = 1 << 10

// hourMs is the granularity of eviction and of holes.
const hourMs = int64(time.Hour / time.Millisecond)

// Slack is the margin kept beyond the window: hours are evicted once they
// end more than window + Slack behind the greatest timestamp seen, and a
// recovery re-reads window + Slack beyond the window on each side.
const Slack = time.Hour

// hourStat is what the Set knows of the valid records of one hour of record
// time that it holds: their offsets, and the watermark when the hour was
// last written to (so that hours written recently are kept, however old).
type hourStat struct {
	minOff, maxOff int64
	touched        int64
	spilled        int // entries moved to disk (spill.go)
}

// Hole says that records at offsets OffLo..OffHi with a timestamp in
// [Lo, Hi) may be missing from the table. Lo and Hi are whole hours.
type Hole struct {
	Lo, Hi       int64
	OffLo, OffHi int64
}

// Set decides duplicates for one partition.
type Set struct {
	window    int64 // ms
	keep      int64 // ms: window + Slack
	seeds     [2]maphash.Seed
	tab       []entry // len is a power of two; owned by own (table.go)
	own       *owner
	n         int   // entries in use
	watermark int64 // greatest timestamp seen, records beyond ahead as ahead or not at all (SetClock)
	started   bool  // a timestamp was seen
	lastTs    int64 // timestamp of the last record given
	ahead     int64 // the host's clock + Slack (SetClock); math.MaxInt64: no limit
	now       int64 // the host's clock (SetClock); math.MinInt64: none given
	lastOn    int64 // timestamp of the last record not beyond ahead; math.MinInt64: none
	lastOnAt  int64 // the clock when that record came, or when the first clock was given
	filling   bool  // a recovery is filling the table: no eviction until it ends
	lastSweep int64

	floorOff int64 // S: every record below it has a timestamp below floorTs
	floorTs  int64 // F; math.MinInt64: nothing is known to be below S
	holes    []Hole
	holesEnd int64 // greatest Hi of holes; math.MinInt64 if none

	hours   map[int64]*hourStat // by hour start
	curHour int64
	cur     *hourStat

	// The on-disk tier (disk.go), nil without one: hours spilled when the
	// table holds more than limit entries.
	disk        *Disk
	diskID      uint64
	epochMs     int64
	limit       int
	onDisk      map[int64]*hourStat // hours whose entries were spilled, by hour start
	epochHours  map[int64]int       // spilled hours per epoch start
	diskLo      int64               // least spilled hour; math.MaxInt64 if none
	diskHi      int64               // end of the greatest spilled hour; math.MinInt64 if none
	diskEntries int
	diskErr     error
}

// diskLookups counts the lookups of all Sets that went to disk.
var diskLookups atomic.Int64

// DiskLookups returns the lookups of this process's Sets that went to the
// on-disk tier.
func DiskLookups() int64 { return diskLookups.Load() }

// UseDisk gives s an on-disk tier: when the table holds more than limit
// entries, the hours written to least recently move to d. A limit of 0
// keeps everything in memory.
func (s *Set) UseDisk(d *Disk, limit int) {
	s.disk, s.diskID, s.limit = d, d.newID(), limit
	s.epochMs = max((s.window+hourMs-1)/hourMs*hourMs, hourMs)
}

// HasDisk reports whether s has an on-disk tier (UseDisk).
func (s *Set) HasDisk() bool { return s.disk != nil }

// SetLimit changes the entries s keeps in memory before spilling (0: no
// limit); it takes effect at the next insert.
func (s *Set) SetLimit(limit int) { s.limit = limit }

// DiskEntries is the number of entries s has spilled to disk and not yet
// aged out.
func (s *Set) DiskEntries() int { return s.diskEntries }

// Err is the on-disk tier's error, if a lookup or a spill failed: the
// answer of the CheckKey that returned with it must not be used.
func (s *Set) Err() error { return s.diskErr }

// New returns an empty Set for the given dedup window that knows every
// earlier record: the partition is read from its first record.
func New(window time.Duration) *Set {
	s := &Set{
		window:   window.Milliseconds(),
		keep:     (window + Slack).Milliseconds(),
		seeds:    [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		floorTs:  math.MinInt64,
		holesEnd: math.MinInt64,
		ahead:    math.MaxInt64,
		now:      math.MinInt64,
		lastOn:   math.MinInt64,
		hours:    map[int64]*hourStat{},
		curHour:  math.MinInt64,
		diskLo:   math.MaxInt64,
		diskHi:   math.MinInt64,
	}
	s.setTable(minSlots)
	return s
}

// SetFloor declares that every record below offset off has a timestamp
// below ts (off is what ListOffsets by timestamp answered for ts) and that
// the Set will be given every record from off on. Records below off whose
// window reaches ts - window or earlier are then recovered on demand.
func (s *Set) SetFloor(off, ts int64) { s.floorOff, s.floorTs = off, ts }

// Floor returns the current floor (offset, timestamp).
func (s *Set) Floor() (off, ts int64) { return s.floorOff, s.floorTs }

// Watermark returns the greatest timestamp seen (records stamped beyond
// the clock's limit count as the limit, SetClock), and whether any was.
func (s *Set) Watermark() (int64, bool) { return s.watermark, s.started }

// slackMs is Slack in milliseconds.
const slackMs = int64(Slack / time.Millisecond)

// SetClock gives s this host's clock (epoch ms). A record stamped more than
// Slack after it is decided like any other, but the watermark that
// eviction follows takes it as the clock + Slack, and not at all while
// the partition is read more than window + Slack behind the clock (a
// backlog) unless no record has been on time for window + Slack of wall
// time (every record is ahead): one record stamped years ahead would
// otherwise keep every later hour in the table (docs/design.md, "Records
// stamped ahead of the clock"). A Set never given a clock has no limit.
func (s *Set) SetClock(nowMs int64) {
	if s.now == math.MinInt64 {
		s.lastOnAt = nowMs
	}
	s.now, s.ahead = nowMs, math.MaxInt64
	if nowMs <= math.MaxInt64-slackMs {
		s.ahead = nowMs + slackMs
	}
}

// Ahead reports whether a record stamped tsMs is beyond the clock's limit
// (SetClock).
func (s *Set) Ahead(tsMs int64) bool { return tsMs > s.ahead }

// Key returns id's key in s.
func (s *Set) Key(id []byte) Key {
	k := Key{maphash.Bytes(s.seeds[0], id), maphash.Bytes(s.seeds[1], id)}
	if k.h1 == 0 {
		k.h1 = 1 // 0 marks empty slots; one fewer value of 2^128 changes nothing
	}
	return k
}

// Prefetch starts loading the slot where k's lookup begins into the CPU
// cache. It changes nothing and is a no-op where the CPU has no prefetch
// instruction wired up.
func (s *Set) Prefetch(k Key) {
	prefetch.Addr(unsafe.Pointer(&s.tab[k.h1&uint64(len(s.tab)-1)]))
}

// Check is CheckKey for event ID id, for a Set that knows every earlier
// record (tests and benchmarks).
func (s *Set) Check(id []byte, tsMs, off int64) bool { return s.CheckKey(s.Key(id), tsMs, off) }

// CheckKey records a valid record at offset off with key k and Kafka
// timestamp tsMs, and reports whether it is a duplicate. Duplicates are
// recorded too: a copy of a duplicate within the window of it is also a
// duplicate. The answer is exact only when Covered(tsMs) (the caller
// recovers first otherwise); records of a re-read that only fill the Set
// may ignore it.
func (s *Set) CheckKey(k Key, tsMs, off int64) bool {
	mask := uint64(len(s.tab) - 1)
	i := k.h1 & mask
	dup, exact, same, reuse := false, false, 0, -1
	for ; s.tab[i].h1 != 0; i = (i + 1) & mask {
		e := &s.tab[i]
		if e.Key != k {
			continue
		}
		same++
		switch d := tsMs - e.ts; {
		case d == 0:
			dup, exact = true, true
		case d <= s.window && d >= -s.window:
			dup = true
		case d > s.keep && reuse < 0 && !s.filling:
			reuse = int(i) // too old for this record's window, and soon evicted
		}
		if exact {
			break
		}
	}
	if !dup && s.diskHi > tsMs-s.window && s.diskLo <= tsMs+s.window {
		dup = s.lookupDisk(k, tsMs)
	}
	switch {
	case exact:
		// An entry with this very timestamp exists.
	case reuse >= 0:
		// Reuse the slot of an entry older than eviction's horizon (an ID
		// repeated after more than window + Slack): its hour becomes a
		// hole, as the next sweep would make it, so a record whose window
		// reaches it later recovers it from Kafka. Not while a recovery
		// fills the table: the hole could fall inside the band it removes.
		s.forgetHour(s.tab[reuse].ts, off)
		s.tab[reuse].ts = tsMs
	case same == 0 || same == 1 && s.tab[i].h1 == 0:
		// i is the empty slot ending the probe. With one entry before,
		// there is no middle timestamp to prune.
		s.tab[i] = entry{Key: k, ts: tsMs}
		s.n++
	default:
		s.insertMore(k, tsMs)
	}
	s.touch(tsMs, off)
	w, moves := tsMs, true
	if tsMs > s.ahead {
		// Beyond the clock's limit (SetClock): it counts as the limit.
		// Not at all in a backlog, where the watermark would jump past
		// everything read after it, unless no record has been on time
		// for window + Slack of wall time (every record is ahead: a
		// producer's clock, or this host's, is off).
		w = s.ahead
		moves = s.lastOn >= s.now-s.keep || s.lastOnAt <= s.now-s.keep
	} else if s.now != math.MinInt64 && !s.filling {
		// (A recovery's re-read records are older: they do not say
		// where the stream is.)
		s.lastOn, s.lastOnAt = tsMs, s.now
	}
	s.lastTs = tsMs
	if moves && (w > s.watermark || !s.started) {
		if !s.started {
			// The first timestamp: there is nothing older to sweep, and a
			// sweep now would shrink a table just sized by Reserve.
			s.lastSweep, s.started = w, true
		}
		s.watermark = max(s.watermark, w)
		if s.watermark-s.lastSweep > s.keep && !s.filling {
			s.sweep() // bound the memory of a set that stopped growing
		}
	}
	if s.limit > 0 && s.n > s.limit && s.disk != nil && !s.filling {
		s.spill()
	}
	if s.n > len(s.tab)/4*3 {
		if !s.filling {
			// Make room before growing. Not while a recovery fills the
			// table: an hour evicted now inside the band being recovered
			// would count as recovered without its records.
			s.sweep()
		}
		if s.n > len(s.tab)/2 {
			s.rebuild(len(s.tab) * 2)
		}
	}
	return dup
}

// insertMore adds timestamp ts to an ID that has entries already, keeping
// only the timestamps that can change an answer: of three timestamps
// a < b < c of one ID with c - a <= 2·window, b is redundant (any time
// within the window of b is within the window of a or of c).
func (s *Set) insertMore(k Key, ts int64) {
	var have [8]int64
	got := have[:0]
	mask := uint64(len(s.tab) - 1)
	for i := k.h1 & mask; s.tab[i].h1 != 0; i = (i + 1) & mask {
		if s.tab[i].Key == k {
			got = append(got, s.tab[i].ts)
		}
	}
	keep := prune(append(got, ts), 2*s.window)
	for _, t := range got {
		if !contains(keep, t) {
			s.remove(k, t)
		}
	}
	if contains(keep, ts) {
		i := k.h1 & uint64(len(s.tab)-1)
		for s.tab[i].h1 != 0 {
			i = (i + 1) & uint64(len(s.tab)-1)
		}
		s.tab[i] = entry{Key: k, ts: ts}
		s.n++
	}
}

// prune sorts ts and drops every middle timestamp whose neighbours are at
// most span apart.
func prune(ts []int64, span int64) []int64 {
	for i := 1; i < len(ts); i++ { // insertion sort: a handful of values
		for j := i; j > 0 && ts[j] < ts[j-1]; j-- {
			ts[j], ts[j-1] = ts[j-1], ts[j]
		}
	}
	out := ts[:0]
	for i, t := range ts {
		if i > 0 && t == out[len(out)-1] {
			continue
		}
		if len(out) >= 2 && t-out[len(out)-2] <= span {
			out[len(out)-1] = t // the previous one is redundant
			continue
		}
		out = append(out, t)
	}
	return out
}

func contains(ts []int64, t int64) bool {
	for _, v := range ts {
		if v == t {
			return true
		}
	}
	return false
}

// remove deletes k's entry with timestamp ts.
func (s *Set) remove(k Key, ts int64) {
	mask := uint64(len(s.tab) - 1)
	for i := k.h1 & mask; s.tab[i].h1 != 0; i = (i + 1) & mask {
		if s.tab[i].Key == k && s.tab[i].ts == ts {
			s.deleteAt(i)
			return
		}
	}
}

// forgetHour makes the hour of ts a hole: an entry of it leaves the table.
// off is the offset of the record being decided (every record of the hour
// is below it).
func (s *Set) forgetHour(ts, off int64) {
	h := hourOf(ts)
	lo, hi := int64(0), off-1
	if st := s.hours[h]; st != nil {
		lo, hi = st.minOff, st.maxOff
	}
	s.addHole(Hole{Lo: h, Hi: h + hourMs, OffLo: lo, OffHi: hi})
}

// touch records that a valid record at offset off with timestamp ts is
// held (or represented) by the table.
func (s *Set) touch(ts, off int64) {
	if d := ts - s.curHour; d < 0 || d >= hourMs {
		h := hourOf(ts)
		st := s.hours[h]
		if st == nil {
			st = &hourStat{minOff: off, maxOff: off}
			s.hours[h] = st
		}
		s.curHour, s.cur = h, st
	}
	st := s.cur
	st.minOff, st.maxOff = min(st.minOff, off), max(st.maxOff, off)
	st.touched = max(st.touched, s.watermark, ts)
}

// hourOf is the start of ts's hour (floor division).
func hourOf(ts int64) int64 {
	h := ts / hourMs * hourMs
	if h > ts {
		h -= hourMs
	}
	return h
}

// Reserve grows the table, if needed, so that n more IDs fit without
// growing it again: a caller that knows how many records are coming (a
// backlog) saves the rehashes and first touches of the tables in between.
func (s *Set) Reserve(n int) {
	size := len(s.tab)
	if size == 0 {
		panic("dedup: Reserve on a freed Set")
	}
	for (s.n+n)*4 > size*3 {
		size *= 2
	}
	if size > len(s.tab) {
		s.rebuild(size)
	}
}

// Free releases the table's memory now rather than when the garbage
// collector finds s unreachable. s must not be used afterwards (it panics).
func (s *Set) Free() {
	s.own.t.free()
	s.tab, s.n = nil, 0
	if s.disk != nil {
		_ = s.disk.dropSet(s.diskID) // a failed delete leaves unreachable keys until the next start
		s.disk = nil
	}
}

// Len is the number of entries (event ID, timestamp) held.
func (s *Set) Len() int { return s.n }

// Holes returns the number of hole ranges (time ranges that a record's
// window reaching them would make the caller recover).
func (s *Set) Holes() int { return len(s.holes) }

// sweep evicts the hours that ended more than keep before the watermark
// and were not written to since then: their entries leave the table and
// they become holes. A table left mostly empty shrinks.
func (s *Set) sweep() {
	s.lastSweep = s.watermark
	cut := s.watermark - s.keep
	s.ageDisk(cut)
	var evict map[int64]bool
	for h, st := range s.hours {
		if h+hourMs <= cut && st.touched <= cut {
			if evict == nil {
				evict = map[int64]bool{}
			}
			evict[h] = true
		}
	}
	if evict == nil {
		return
	}
	for i := 0; i < len(s.tab); {
		if e := &s.tab[i]; e.h1 != 0 && e.ts < cut && evict[hourOf(e.ts)] {
			s.deleteAt(uint64(i)) // slot i may now hold a later entry: look again
			continue
		}
		i++
	}
	for h := range evict {
		st := s.hours[h]
		s.addHole(Hole{Lo: h, Hi: h + hourMs, OffLo: st.minOff, OffHi: st.maxOff})
		delete(s.hours, h)
	}
	s.curHour, s.cur = math.MinInt64, nil
	if len(s.tab) > minSlots && s.n < len(s.tab)/8 {
		s.rebuild(len(s.tab) / 2)
	}
}

// deleteAt empties slot i, moving back the entries after it that probing
// would otherwise no longer find.
func (s *Set) deleteAt(i uint64) {
	mask := uint64(len(s.tab) - 1)
	for j := (i + 1) & mask; s.tab[j].h1 != 0; j = (j + 1) & mask {
		if home := s.tab[j].h1 & mask; (j-home)&mask >= (j-i)&mask {
			s.tab[i] = s.tab[j] // its probe from home passes i before j
			i = j
		}
	}
	s.tab[i] = entry{}
	s.n--
}

// rebuild moves every entry into a new table of size slots.
func (s *Set) rebuild(size int) {
	old, oldOwner := s.tab, s.own.t
	s.own.t = nil // freed below, after the move
	s.setTable(size)
	s.n = 0
	mask := uint64(size - 1)
	for _, e := range old {
		if e.h1 == 0 {
			continue
		}
		i := e.h1 & mask
		for s.tab[i].h1 != 0 {
			i = (i + 1) & mask
		}
		s.tab[i] = e
		s.n++
	}
	oldOwner.free()
}
