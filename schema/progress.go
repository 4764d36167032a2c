package schema

import "unsafe"

// Progress says that every record of one partition of one topic incarnation
// below NextOffset is in the fact tables. Table ingest_progress; a flush
// writes it after all its facts (see docs/design.md, "Progress lives in
// ClickHouse").
type Progress struct {
	Topic       string
	TopicID     string // the Kafka topic ID in hex; all zeros where the broker has none
	Partition   int32
	NextOffset  int64
	DedupFromMs int64 // record time from which the duplicate filter is replayed
	// IDsFrom: every valid record at offsets [IDsFrom, NextOffset) that a
	// flush wrote facts for has its row in dedup_ids; -1 claims nothing
	// (rows of releases before the archive).
	IDsFrom int64
}

// DedupIDs is one partition's entries in the duplicate filter's archive
// (table dedup_ids, docs/design.md "Durable event IDs") from one flush: one
// per valid record the flush writes facts for, in offset order, written
// after those facts and before the progress row (an archived record is a
// counted one). Columns, not rows, and the event IDs back to back in one
// buffer: no allocation per record, and an hour's records go to ClickHouse
// as slices of them.
type DedupIDs struct {
	Topic     string
	TopicID   string
	Partition int32
	Offsets   []uint64
	TsMs      []int64
	Ends      []uint32 // record i's event ID is IDs[Ends[i-1]:Ends[i]] (from 0 for i = 0)
	IDs       []byte
}

// Add appends a record (id is copied).
func (d *DedupIDs) Add(off, tsMs int64, id []byte) {
	d.Offsets = append(d.Offsets, uint64(off))
	d.TsMs = append(d.TsMs, tsMs)
	d.IDs = append(d.IDs, id...)
	d.Ends = append(d.Ends, uint32(len(d.IDs)))
}

// Reset empties d, keeping its capacity.
func (d *DedupIDs) Reset() {
	d.Offsets, d.TsMs, d.Ends, d.IDs = d.Offsets[:0], d.TsMs[:0], d.Ends[:0], d.IDs[:0]
}

// Len is the number of records in d.
func (d *DedupIDs) Len() int { return len(d.Offsets) }

// EventID is record i's event ID, as a view of d.IDs (valid while d.IDs is
// not appended to).
func (d *DedupIDs) EventID(i int) string {
	lo := uint32(0)
	if i > 0 {
		lo = d.Ends[i-1]
	}
	if d.Ends[i] == lo {
		return ""
	}
	return unsafe.String(&d.IDs[lo], int(d.Ends[i]-lo))
}

// HourMs is the length of the hours dedup_ids is keyed by.
const HourMs = int64(3600 * 1000)

// HourOf is the start of ts's hour (floor division), as dedup_ids.hour.
func HourOf(ts int64) int64 {
	h := ts / HourMs * HourMs
	if h > ts {
		h -= HourMs
	}
	return h
}

// OffsetRange is the offsets [Lo, Hi) of one partition.
type OffsetRange struct{ Lo, Hi int64 }

// ArchiveHour is what dedup_ids holds of one hour of record time within an
// offset range: the least and greatest offset of its rows.
type ArchiveHour struct {
	Hour           int64
	MinOff, MaxOff int64
}

// ZeroTopicID is the topic ID of brokers that have none (before Kafka 2.8).
const ZeroTopicID = "00000000000000000000000000000000"

// IncarnationKey is the src_topic under which an incarnation's event counts
// are stored: the topic name for the first incarnation a database saw (as
// releases before topic IDs wrote), topic#topicID for every later one.
func IncarnationKey(topic, topicID string, first bool) string {
	if first {
		return topic
	}
	return topic + "#" + topicID
}

// ArchiveQuery selects the archived records of one partition of one topic
// incarnation (TopicIDs: its progress IDs, the zero ID too where it was
// read before the brokers had IDs) with offsets in Offsets and an hour of
// record time in [HourLo, HourHi).
type ArchiveQuery struct {
	Topic          string
	TopicIDs       []string
	Partition      int32
	HourLo, HourHi int64
	Offsets        OffsetRange
}
