package ingest

import (
	"context"
	"fmt"
	"math"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/ingest/decode"
	"github.com/usagepipe/usagepipe/ingest/dedup"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// Recovering the duplicate filter (docs/design.md, "The duplicate filter"):
// a record whose dedup window reaches time the filter no longer holds (an
// evicted hour, or below the floor it was rebuilt from) is decided only
// after that part of the partition was re-read from Kafka by a direct
// reader of its own. The poll loop waits for it: a wrong answer is never
// given to save time.

// recoverDedup re-reads what st's filter needs to decide a record at offset
// off, retrying until it succeeds or the consumer stops.
func (c *Consumer) recoverDedup(st *partState, r *dedup.Recovery, off int64) error {
	started := time.Now()
	ctx := c.flushCtx
	var start, read, archived int64
	var gone bool
	err := c.retry(ctx, "recover the duplicate filter", func() error {
		var err error
		start, gone, err = c.recoveryStart(ctx, st, r)
		if err != nil {
			return err
		}
		read, err = c.readRange(ctx, st.p, start, r.To, func(rec *kgo.Record, ev *decode.Decoder) {
			fillDedup(st, r, rec, ev)
		})
		if err != nil {
			return err
		}
		var logStart int64
		archived, logStart, err = c.readArchive(ctx, st, r)
		if r.Floor {
			// Every record between the new floor and the old one was read
			// from Kafka or, below the log start listed after that read
			// (retention may have moved it meanwhile), from the archive.
			start = max(start, min(logStart, r.OldFloor()))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("partition %d: %w", st.p, err)
	}
	if gone {
		c.m.dedupUnrecoverable.Inc()
		c.warn.Do(func(n int) {
			c.log.Warn("retention deleted records the duplicate filter needs: duplicates of them are counted",
				"partition", st.p, "ids_from", st.idsFrom, "from", time.UnixMilli(r.Lo).UTC(), "to", time.UnixMilli(r.Hi).UTC(), "repeats", n)
		})
	}
	st.dedup.Recovered(r, start)
	c.m.dedupRecoveries.Inc()
	c.m.dedupRecoveredRecords.Add(float64(read + archived))
	c.log.Debug("duplicate filter recovered", "partition", st.p, "offset", off,
		"from", time.UnixMilli(r.Lo).UTC(), "to", time.UnixMilli(r.Hi).UTC(),
		"offsets", fmt.Sprintf("%d-%d", start, r.To), "records", read, "archived", archived, "filled", r.Filled(), "took", time.Since(started))
	return nil
}

// readArchive gives st's filter, for recovery r, the records below the log
// start that the archive of event IDs holds (docs/design.md, "Durable
// event IDs"): those of r's band at offsets from r's unnarrowed lower bound
// (ids_from at least) up to the log start, listed after Kafka's part was
// read. For a floor move, the archived records above the band at those
// offsets become holes, one per hour: the new floor would otherwise claim
// them older than r.Lo. It returns the records read and the log start.
func (c *Consumer) readArchive(ctx context.Context, st *partState, r *dedup.Recovery) (n, logStart int64, err error) {
	starts, err := c.adm.ListStartOffsets(ctx, c.cfg.Topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return 0, 0, fmt.Errorf("list start offsets: %w", err)
	}
	s, ok := starts.Lookup(c.cfg.Topic, st.p)
	if !ok || s.Err != nil {
		return 0, 0, fmt.Errorf("list start offsets: partition %d missing", st.p)
	}
	logStart = s.Offset
	from := max(r.From, st.idsFrom, 0)
	if r.Floor {
		from = max(st.idsFrom, 0)
	}
	offs := schema.OffsetRange{Lo: from, Hi: min(logStart, r.To)}
	if offs.Lo >= offs.Hi {
		return 0, logStart, nil
	}
	q := schema.ArchiveQuery{Topic: c.cfg.Topic, TopicIDs: st.progressIDs, Partition: st.p, HourLo: r.Lo, HourHi: r.Hi, Offsets: offs}
	err = c.w.ReadArchive(ctx, q, func(off, ts int64, id string) {
		n++
		st.dedup.Fill(r, st.dedup.Key(unsafe.Slice(unsafe.StringData(id), len(id))), ts, off)
	})
	if err != nil {
		return n, logStart, err
	}
	// Records decided but not yet archived (waiting for the next flush, or
	// in the one being written) that retention deleted meanwhile: a
	// consumer reading at the log start, whose hours were evicted before
	// their flush (a review). Fill keeps what r covers and, for a floor
	// move, makes the rest below the old floor holes.
	for _, d := range c.pendingIDs(st) {
		for i, o := range d.Offsets {
			if off := int64(o); off >= offs.Lo && off < offs.Hi {
				n++
				st.dedup.Fill(r, st.dedup.Key(unsafe.Slice(unsafe.StringData(d.EventID(i)), len(d.EventID(i)))), d.TsMs[i], off)
			}
		}
	}
	if !r.Floor {
		return n, logStart, nil
	}
	// Above the band: only what the old floor did not already claim.
	hi := int64(math.MaxInt64)
	if _, fts := st.dedup.Floor(); fts < math.MaxInt64-2*schema.HourMs {
		hi = schema.HourOf(fts) + schema.HourMs
	}
	q.HourLo, q.HourHi = r.Hi, hi
	q.Offsets.Hi = min(q.Offsets.Hi, r.OldFloor()) // above the old floor: in the table or a hole already
	hours, err := c.w.ArchiveHours(ctx, q)
	if err != nil {
		return n, logStart, err
	}
	for _, h := range hours {
		st.dedup.AddHole(dedup.Hole{Lo: h.Hour, Hi: h.Hour + schema.HourMs, OffLo: h.MinOff, OffHi: h.MaxOff})
	}
	return n, logStart, nil
}

// recoveryStart is the first offset r needs: none below the first offset
// whose timestamp is at least r.Lo (Kafka's ListOffsets by timestamp, exact
// for out-of-order timestamps), nor below r.From when the floor stays. It
// also reports a recovery that needs records retention deleted.
func (c *Consumer) recoveryStart(ctx context.Context, st *partState, r *dedup.Recovery) (start int64, gone bool, err error) {
	p := st.p
	listed, err := c.adm.ListOffsetsAfterMilli(ctx, r.Lo, c.cfg.Topic)
	if err == nil {
		err = listed.Error()
	}
	if err != nil {
		return 0, false, fmt.Errorf("list offsets after %d: %w", r.Lo, err)
	}
	o, ok := listed.Lookup(c.cfg.Topic, p)
	if !ok || o.Offset < 0 {
		return 0, false, fmt.Errorf("list offsets after %d: partition %d missing", r.Lo, p)
	}
	starts, err := c.adm.ListStartOffsets(ctx, c.cfg.Topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return 0, false, fmt.Errorf("list start offsets: %w", err)
	}
	s, ok := starts.Lookup(c.cfg.Topic, p)
	if !ok || s.Err != nil {
		return 0, false, fmt.Errorf("list start offsets: partition %d missing", p)
	}
	logStart := s.Offset
	start = o.Offset
	if !r.Floor {
		start = max(start, r.From)
	}
	start = min(start, r.To)
	// Records below the log start are gone. They may have been within the
	// band when the filter had evicted them (r.From below the log start),
	// or, when the floor moves down, whenever records below the old floor
	// were deleted: Kafka's listing by timestamp knows only the records it
	// kept, so deleted ones may be inside the band even when the first
	// kept record at or after Lo is far above the log start (a review
	// found that case unreported: old-timestamp records kept right after
	// deleted newer ones).
	// Since the archive of event IDs, only records below ids_from are gone
	// for good.
	gone = min(logStart, st.idsFrom) > 0 && (r.From < min(logStart, st.idsFrom) && !r.Floor || r.Floor && r.OldFloor() > 0)
	return start, gone, nil
}

// readRange reads the records of partition p at offsets [from, to) with a
// direct (groupless) reader, read_committed like the group client, and
// hands each data record to fn with a decoder it may use. It returns the
// records read.
func (c *Consumer) readRange(ctx context.Context, p int32, from, to int64, fn func(*kgo.Record, *decode.Decoder)) (int64, error) {
	if from >= to {
		return 0, nil
	}
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(c.cfg.Brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{c.cfg.Topic: {p: kgo.NewOffset().At(from)}}),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), // below the log start: from what is left
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.FetchMaxBytes(8 << 20),
		kgo.FetchMaxPartitionBytes(8 << 20),
	}, c.cfg.ConnOpts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return 0, fmt.Errorf("recovery reader: %w", err)
	}
	defer cl.Close()
	dec := decode.New(decode.Config{MaxClockSkew: c.cfg.MaxClockSkew})
	var n int64
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return n, err
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil {
			return n, fmt.Errorf("recovery read of partition %d: %w", p, ferr)
		}
		done := false
		fs.EachRecord(func(r *kgo.Record) {
			if done || r.Offset >= to {
				done = true
				return
			}
			if !r.Attrs.IsControl() {
				n++ // records, not transaction markers
				fn(r, dec)
			}
			// The record being decided (offset to or later) exists, so the
			// read always reaches to-1 or passes it.
			done = r.Offset >= to-1
		})
		if done {
			return n, nil
		}
	}
}

// fillDedup gives st's filter one re-read record, if it is valid (an
// invalid record is never an earlier copy: contract section 2).
func fillDedup(st *partState, r *dedup.Recovery, rec *kgo.Record, dec *decode.Decoder) {
	ts := rec.Timestamp.UnixMilli()
	var ev event.Event
	if dec.Decode(rec.Value, ts, &ev) != nil {
		return
	}
	st.dedup.Fill(r, st.dedup.Key(ev.EventID), ts, rec.Offset)
}

// pendingIDs are st's archive entries not known to be in ClickHouse yet:
// those waiting for the next flush and those of the flush being written.
// Called by the poll loop (it holds c.mu; the flusher only reads them).
func (c *Consumer) pendingIDs(st *partState) []*schema.DedupIDs {
	var out []*schema.DedupIDs
	if st.ids != nil && st.ids.Len() > 0 {
		out = append(out, st.ids)
	}
	if c.flight != nil {
		for _, d := range c.flight.facts.DedupIDs {
			if d.Partition == st.p && d.TopicID == st.topicID {
				out = append(out, d)
			}
		}
	}
	return out
}

// checkReset runs when the first record of a fetch lies above the offset
// expected (the one the assignment asked for, or the record after the last
// one handled). Aborted transactions and compaction leave such gaps; so
// does retention passing that offset before the fetch (after the
// assignment's listings, or while a replay or a backlog is read), and then
// the client went on from the new log start: the records in between were
// neither given to the filter nor covered by the archive's holes (two
// reviews found it). The filter then claims nothing below the first
// record, so the first window moves the floor through Kafka and the
// archive. Records lost unread are counted as at an assignment. fetched is
// the log start the fetch response carried (-1: none, then it is listed).
func (c *Consumer) checkReset(st *partState, expected, first, fetched int64) {
	logStart := fetched
	if logStart < 0 {
		// A broker that did not say (fetch versions before 5): ask.
		starts, err := c.adm.ListStartOffsets(c.flushCtx, c.cfg.Topic)
		if err == nil {
			err = starts.Error()
		}
		if err == nil {
			if s, ok := starts.Lookup(c.cfg.Topic, st.p); ok {
				logStart = s.Offset
			}
		}
	}
	if logStart >= 0 && logStart <= expected {
		return // a gap the log has: nothing was skipped
	}
	// Skipped, or not known (the listing failed): claim nothing below.
	st.dedup.SetFloor(first, math.MaxInt64)
	if lost := min(logStart, first) - max(st.committed, expected); lost > 0 {
		c.m.expired.Add(float64(lost))
		c.m.dedupUnrecoverable.Inc()
		// An upper bound: a gap of aborted records the log start then
		// passed counts too (Kafka does not say which offsets were data).
		c.log.Warn("retention deleted records no instance had read: their events may be lost",
			"partition", st.p, "position", max(st.committed, expected), "log_start", logStart)
	}
}
