package schema

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

// DedupID is one valid record's entry in the duplicate filter's archive
// (table dedup_ids, docs/design.md "Durable event IDs"): written for every
// valid record a flush writes facts for, after those facts and before the
// progress row (an archived record is a counted one).
type DedupID struct {
	Topic     string
	TopicID   string
	Partition int32
	Offset    int64
	TsMs      int64 // Kafka timestamp
	EventID   string
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
