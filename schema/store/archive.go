package store

import (
	"context"
	"fmt"
	"strings"
	"unsafe"

	"github.com/usagepipe/usagepipe/schema"
)

// The duplicate filter's archive (table dedup_ids, docs/design.md "Durable
// event IDs"): read where a recovery needs records below Kafka's log start.
// On a cluster it lives on every node and is read on one that has caught up
// on it, as progress is.

func archiveWhere(q schema.ArchiveQuery) (string, []any) {
	ids := make([]string, len(q.TopicIDs))
	args := []any{q.Topic}
	for i, id := range q.TopicIDs {
		ids[i] = "topic_id = ?"
		args = append(args, id)
	}
	args = append(args, q.Partition, q.HourLo, q.HourHi, uint64(max(q.Offsets.Lo, 0)), uint64(max(q.Offsets.Hi, 0)))
	return "topic = ? AND (" + strings.Join(ids, " OR ") + ") AND partition = ? AND hour >= ? AND hour < ? AND off_hi >= ? AND off_lo < ?", args
}

// ReadArchive calls fn with every archived record q selects (a record
// archived twice may come twice). fn may be called again for the same
// records if ReadArchive is retried after an error.
func (s *Store) ReadArchive(ctx context.Context, q schema.ArchiveQuery, fn func(off, tsMs int64, eventID string)) error {
	if len(q.TopicIDs) == 0 {
		return fmt.Errorf("read dedup_ids: no topic ID")
	}
	if q.Offsets.Lo >= q.Offsets.Hi || q.HourLo >= q.HourHi {
		return nil
	}
	where, args := archiveWhere(q)
	sql := "SELECT hour, off_lo, n, records FROM " + s.db + ".dedup_ids WHERE " + where
	return s.topo.All.Use(ctx, func(r *schema.Replica) error {
		if err := s.topo.CaughtUp(ctx, r, s.db, "dedup_ids"); err != nil {
			return err
		}
		rows, err := r.Conn.Query(ctx, sql, args...)
		if err != nil {
			return fmt.Errorf("read dedup_ids: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var hour int64
			var offLo uint64
			var n uint32
			var recs string
			if err := rows.Scan(&hour, &offLo, &n, &recs); err != nil {
				return fmt.Errorf("read dedup_ids: %w", err)
			}
			err := schema.DecodeArchive(unsafe.Slice(unsafe.StringData(recs), len(recs)), hour, offLo, int(n), func(off, ts int64, id string) {
				if off >= q.Offsets.Lo && off < q.Offsets.Hi {
					fn(off, ts, id) // a view of recs, which Scan allocated for this row
				}
			})
			if err != nil {
				return fmt.Errorf("read dedup_ids: partition %d, hour %d, offset %d: %w", q.Partition, hour, offLo, err)
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read dedup_ids: %w", err)
		}
		return nil
	})
}

// ArchiveHours returns, per hour of record time that q selects, bounds of
// the offsets archived (the least and greatest of the rows that reach into
// q.Offsets: they may reach past it): where a floor claims nothing, these
// become holes of the duplicate filter.
func (s *Store) ArchiveHours(ctx context.Context, q schema.ArchiveQuery) ([]schema.ArchiveHour, error) {
	if len(q.TopicIDs) == 0 {
		return nil, fmt.Errorf("read dedup_ids: no topic ID")
	}
	if q.Offsets.Lo >= q.Offsets.Hi || q.HourLo >= q.HourHi {
		return nil, nil
	}
	where, args := archiveWhere(q)
	sql := "SELECT hour, min(off_lo), max(off_hi) FROM " + s.db + ".dedup_ids WHERE " + where + " GROUP BY hour ORDER BY hour"
	var out []schema.ArchiveHour
	err := s.topo.All.Use(ctx, func(r *schema.Replica) error {
		out = out[:0]
		if err := s.topo.CaughtUp(ctx, r, s.db, "dedup_ids"); err != nil {
			return err
		}
		rows, err := r.Conn.Query(ctx, sql, args...)
		if err != nil {
			return fmt.Errorf("read dedup_ids hours: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var h int64
			var lo, hi uint64
			if err := rows.Scan(&h, &lo, &hi); err != nil {
				return fmt.Errorf("read dedup_ids hours: %w", err)
			}
			out = append(out, schema.ArchiveHour{Hour: h, MinOff: int64(lo), MaxOff: int64(hi)})
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read dedup_ids hours: %w", err)
		}
		return nil
	})
	return out, err
}
