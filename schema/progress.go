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
