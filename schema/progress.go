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
