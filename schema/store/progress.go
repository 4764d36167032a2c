package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/usagepipe/usagepipe/schema"
)

// ReadProgress returns the durable position of each partition of topic
// that has one under any of topicIDs (one incarnation; the zero ID too
// where it was read before the brokers had IDs): the greatest next_offset
// written, with its dedup_from_ms.
func (s *Store) ReadProgress(ctx context.Context, topic string, topicIDs ...string) (map[int32]schema.Progress, error) {
	if len(topicIDs) == 0 {
		return nil, fmt.Errorf("read ingest_progress: no topic ID")
	}
	args := []any{topic}
	ids := make([]string, len(topicIDs))
	for i, id := range topicIDs {
		ids[i] = "topic_id = ?"
		args = append(args, id)
	}
	q := "SELECT partition, max(next_offset), argMax(dedup_from_ms, next_offset), argMax(ids_from, next_offset) FROM " + s.db +
		".ingest_progress WHERE topic = ? AND (" + strings.Join(ids, " OR ") + ") GROUP BY partition"
	var out map[int32]schema.Progress
	// On a cluster, on a node that has every progress row acknowledged
	// before the read (a far older position would replay past retention).
	err := s.topo.All.Use(ctx, func(r *schema.Replica) error {
		if err := s.topo.CaughtUp(ctx, r, s.db, "ingest_progress"); err != nil {
			return err
		}
		var err error
		out, err = readProgress(ctx, r.Conn, q, args, topic, topicIDs[0])
		return err
	})
	return out, err
}

func readProgress(ctx context.Context, conn driver.Conn, q string, args []any, topic, topicID string) (map[int32]schema.Progress, error) {
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read ingest_progress: %w", err)
	}
	defer rows.Close()
	out := map[int32]schema.Progress{}
	for rows.Next() {
		var p int32
		var next uint64
		var from, idsFrom int64
		if err := rows.Scan(&p, &next, &from, &idsFrom); err != nil {
			return nil, fmt.Errorf("read ingest_progress: %w", err)
		}
		out[p] = schema.Progress{Topic: topic, TopicID: topicID, Partition: p, NextOffset: int64(next), DedupFromMs: from, IDsFrom: idsFrom}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read ingest_progress: %w", err)
	}
	return out, nil
}

// ReadBucketCounts returns, for each partition p in buckets, the event
// counts stored under srcTopic of bucket buckets[p] and of any later
// bucket: per count key the row with the greatest covered_end (the one
// ReplacingMergeTree keeps). It is what a new owner of p restores instead
// of recounting from Kafka.
func (s *Store) ReadBucketCounts(ctx context.Context, srcTopic string, buckets map[int32]uint64) ([]schema.EventCount, error) {
	if len(buckets) == 0 {
		return nil, nil
	}
	var cond strings.Builder
	for p, b := range buckets {
		if cond.Len() > 0 {
			cond.WriteString(" OR ")
		}
		cond.WriteString("src_partition = " + strconv.Itoa(int(p)) + " AND bucket >= " + strconv.FormatUint(b, 10))
	}
	q := "SELECT account_id, month, kind, feature, src_partition, bucket, max(covered_end), argMax(events, covered_end) FROM " + s.db +
		".fact_event_counts WHERE src_topic = ? AND (" + cond.String() + ") GROUP BY account_id, month, kind, feature, src_partition, bucket"
	// Each shard on a replica that holds every count row acknowledged
	// before the read (a lagging one would resume an older count under a
	// newer covered_end; docs/design.md, "ClickHouse clusters").
	var out []schema.EventCount
	for _, sh := range s.topo.Shards {
		var part []schema.EventCount
		err := sh.Use(ctx, func(r *schema.Replica) error {
			if err := s.topo.CaughtUp(ctx, r, s.db, "fact_event_counts"); err != nil {
				return err
			}
			var err error
			part, err = readCounts(ctx, r.Conn, q, srcTopic)
			return err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, part...)
	}
	return out, nil
}

func readCounts(ctx context.Context, conn driver.Conn, q, srcTopic string) ([]schema.EventCount, error) {
	rows, err := conn.Query(ctx, q, srcTopic)
	if err != nil {
		return nil, fmt.Errorf("read fact_event_counts: %w", err)
	}
	defer rows.Close()
	var out []schema.EventCount
	for rows.Next() {
		r := schema.EventCount{Topic: srcTopic}
		var month time.Time
		if err := rows.Scan(&r.Account, &month, &r.Kind, &r.Feature, &r.Partition, &r.Bucket, &r.CoveredEnd, &r.Events); err != nil {
			return nil, fmt.Errorf("read fact_event_counts: %w", err)
		}
		y, m, _ := month.Date()
		r.Month = int32(y*12 + int(m) - 1)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read fact_event_counts: %w", err)
	}
	return out, nil
}

// Incarnation registers the topic ID topicID of topic (once) and returns
// the src_topic its event counts are stored under (schema.IncarnationKey):
// the topic name for the first ID the database saw, topic#ID for later ones.
// The zero ID (brokers before Kafka 2.8) is no incarnation of its own: it
// and the first real ID seen are the same, first, incarnation, so a broker
// upgrade that gives an existing topic its ID changes nothing.
func (s *Store) Incarnation(ctx context.Context, topic, topicID string) (string, error) {
	var key string
	// On a cluster, on a node that has every row acknowledged before the
	// read: a node missing the first incarnation's row would name a later
	// one first.
	err := s.topo.All.Use(ctx, func(r *schema.Replica) error {
		if err := s.topo.CaughtUp(ctx, r, s.db, "topic_incarnations"); err != nil {
			return err
		}
		var err error
		key, err = s.incarnation(ctx, r.Conn, topic, topicID)
		return err
	})
	return key, err
}

func (s *Store) incarnation(ctx context.Context, conn driver.Conn, topic, topicID string) (string, error) {
	for attempt := 0; ; attempt++ {
		rows, err := conn.Query(ctx, "SELECT topic_id, min(first_seen_ms) AS seen FROM "+s.db+
			".topic_incarnations WHERE topic = ? GROUP BY topic_id ORDER BY seen, topic_id", topic)
		if err != nil {
			return "", fmt.Errorf("read topic_incarnations: %w", err)
		}
		first, found := "", false
		for rows.Next() {
			var id string
			var seen uint64
			if err := rows.Scan(&id, &seen); err != nil {
				rows.Close()
				return "", fmt.Errorf("read topic_incarnations: %w", err)
			}
			if first == "" && id != schema.ZeroTopicID {
				first = id
			}
			found = found || id == topicID
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return "", fmt.Errorf("read topic_incarnations: %w", err)
		}
		if found {
			return schema.IncarnationKey(topic, topicID, topicID == schema.ZeroTopicID || first == topicID), nil
		}
		if attempt > 0 {
			return "", fmt.Errorf("topic_incarnations: the row for %s %s did not appear", topic, topicID)
		}
		b, err := conn.PrepareBatch(ctx, "INSERT INTO "+s.db+".topic_incarnations (topic, topic_id, first_seen_ms)")
		if err != nil {
			return "", fmt.Errorf("write topic_incarnations: %w", err)
		}
		if err := b.Append(topic, topicID, uint64(time.Now().UnixMilli())); err != nil {
			_ = b.Abort()
			return "", fmt.Errorf("write topic_incarnations: %w", err)
		}
		if err := b.Send(); err != nil {
			return "", fmt.Errorf("write topic_incarnations: %w", err)
		}
	}
}
