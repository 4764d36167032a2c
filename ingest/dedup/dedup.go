// Package dedup finds duplicate events within one Kafka partition (contract
// section 2): a valid record is a duplicate when an earlier valid record of
// the same partition with the same event_id has a Kafka timestamp at most
// the window before it.
//
// A Set belongs to one partition and one goroutine; it is not safe for
// concurrent use. It exports no metrics.
//
// Event IDs are kept as 128-bit hashes (two independently seeded maphash
// sums), so memory is ~40 bytes per event in the window whatever the ID
// length; a false duplicate would need a 128-bit collision. The seeds are
// per process: a Set is rebuilt by replaying its partition after a restart,
// never persisted.
package dedup

import (
	"hash/maphash"
	"time"
)

type key [2]uint64

// Set remembers, per event ID, the greatest Kafka timestamp of a valid record.
type Set struct {
	window    int64 // ms
	keep      int64 // ms; entries older than watermark-keep are evicted
	seeds     [2]maphash.Seed
	m         map[key]int64
	watermark int64 // greatest timestamp seen
	lastSweep int64
}

// Slack is how far record timestamps in a partition may go backwards and
// still be compared exactly: entries are kept for window+Slack behind the
// greatest timestamp seen.
const Slack = time.Hour

// New returns an empty Set for the given dedup window.
func New(window time.Duration) *Set {
	return &Set{
		window: window.Milliseconds(),
		keep:   (window + Slack).Milliseconds(),
		seeds:  [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		m:      make(map[key]int64),
	}
}

// Check records a valid record with event ID id and Kafka timestamp tsMs and
// reports whether it is a duplicate. Duplicates are recorded too: a repeat
// of a duplicate within the window of it is also a duplicate.
func (s *Set) Check(id []byte, tsMs int64) bool {
	k := key{maphash.Bytes(s.seeds[0], id), maphash.Bytes(s.seeds[1], id)}
	prev, seen := s.m[k]
	dup := seen && tsMs-prev <= s.window
	if !seen || tsMs > prev {
		s.m[k] = tsMs
	}
	if tsMs > s.watermark {
		s.watermark = tsMs
		if s.watermark-s.lastSweep > s.keep/8 {
			s.sweep()
		}
	}
	return dup
}

// Len is the number of event IDs remembered.
func (s *Set) Len() int { return len(s.m) }

func (s *Set) sweep() {
	s.lastSweep = s.watermark
	cut := s.watermark - s.keep
	for k, ts := range s.m {
		if ts < cut {
			delete(s.m, k)
		}
	}
}
