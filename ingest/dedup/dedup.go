// Package dedup finds duplicate events within one Kafka partition (contract
// section 2): a valid record is a duplicate when an earlier valid record of
// the same partition with the same event_id has a Kafka timestamp at most
// the window before it.
//
// A Set belongs to one partition and one goroutine; it is not safe for
// concurrent use. It exports no metrics.
//
// Event IDs are kept as 128-bit hashes (two independently seeded maphash
// sums) in an open-addressing table of 24-byte entries (linear probing,
// at most 3/4 full), so memory is 32–64 bytes per event ID in the window
// whatever the ID length; a false duplicate would need a 128-bit collision.
// The seeds are per process: a Set is rebuilt by replaying its partition
// after a restart, never persisted. A table of 1 MiB or more lives in an
// anonymous memory mapping outside the Go heap (table.go): the garbage
// collector's heap goal (twice the live heap at GOGC=100) does not double it.
//
// The table is far larger than the CPU caches, so a lookup is a cache
// miss. A caller that knows the next ID early computes its Key and calls
// Prefetch, then CheckKey after other work: the miss overlaps that work.
package dedup

import (
	"hash/maphash"
	"time"
	"unsafe"

	"github.com/usagepipe/usagepipe/ingest/prefetch"
)

// Key is an event ID's 128-bit hash. The zero Key is never produced.
type Key struct{ h1, h2 uint64 }

type entry struct {
	Key       // h1 == 0: an empty slot
	ts  int64 // greatest Kafka timestamp of a valid record with this ID
}

const minSlots = 1 << 10

// Set remembers, per event ID, the greatest Kafka timestamp of a valid record.
//
// Entries older than the greatest timestamp seen minus (window + Slack) are
// swept when the table is 3/4 full (before it grows) and whenever the
// timestamps advanced by window + Slack since the last sweep, so the set
// holds at most the IDs of the last 2·(window + Slack) and a sweep's cost
// (one pass over the table) is spread over many inserts.
type Set struct {
	window    int64 // ms
	keep      int64 // ms; entries older than watermark-keep are evicted
	seeds     [2]maphash.Seed
	tab       []entry // len is a power of two; owned by own (table.go)
	own       *owner
	n         int   // entries in use
	watermark int64 // greatest timestamp seen
	lastSweep int64
}

// Slack is how far record timestamps in a partition may go backwards and
// still be compared exactly: entries are kept for window+Slack behind the
// greatest timestamp seen.
const Slack = time.Hour

// New returns an empty Set for the given dedup window.
func New(window time.Duration) *Set {
	s := &Set{
		window: window.Milliseconds(),
		keep:   (window + Slack).Milliseconds(),
		seeds:  [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
	}
	s.setTable(minSlots)
	return s
}

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

// Check records a valid record with event ID id and Kafka timestamp tsMs and
// reports whether it is a duplicate. Duplicates are recorded too: a repeat
// of a duplicate within the window of it is also a duplicate.
func (s *Set) Check(id []byte, tsMs int64) bool { return s.CheckKey(s.Key(id), tsMs) }

// CheckKey is Check for an ID whose Key is k.
func (s *Set) CheckKey(k Key, tsMs int64) bool {
	mask := uint64(len(s.tab) - 1)
	i := k.h1 & mask
	dup := false
	for {
		e := &s.tab[i]
		if e.h1 == 0 {
			*e = entry{Key: k, ts: tsMs}
			s.n++
			break
		}
		if e.Key == k {
			dup = tsMs-e.ts <= s.window
			e.ts = max(e.ts, tsMs)
			break
		}
		i = (i + 1) & mask
	}
	if tsMs > s.watermark {
		if s.watermark == 0 {
			// The first timestamp: there is nothing older to sweep, and a
			// sweep now would shrink a table just sized by Reserve.
			s.lastSweep = tsMs
		}
		s.watermark = tsMs
		if s.watermark-s.lastSweep > s.keep {
			s.sweep() // bound the memory of a set that stopped growing
		}
	}
	if s.n > len(s.tab)/4*3 {
		s.sweep() // make room before growing
		if s.n > len(s.tab)/2 {
			s.rebuild(len(s.tab) * 2)
		}
	}
	return dup
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
}

// Len is the number of event IDs remembered.
func (s *Set) Len() int { return s.n }

// sweep forgets the entries older than the watermark minus keep, in place
// (backward-shift deletion), and shrinks a table left mostly empty.
func (s *Set) sweep() {
	s.lastSweep = s.watermark
	cut := s.watermark - s.keep
	for i := 0; i < len(s.tab); {
		if e := &s.tab[i]; e.h1 != 0 && e.ts < cut {
			s.deleteAt(uint64(i)) // slot i may now hold a later entry: look again
			continue
		}
		i++
	}
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

func (s *Set) rebuild(size int) { s.rebuildFrom(size, s.watermark-s.keep) }

// rebuildFrom moves the entries not older than cut into a new table of
// size slots.
func (s *Set) rebuildFrom(size int, cut int64) {
	old, oldOwner := s.tab, s.own.t
	s.own.t = nil // freed below, after the move
	s.setTable(size)
	s.n = 0
	mask := uint64(size - 1)
	for _, e := range old {
		if e.h1 == 0 || e.ts < cut {
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
