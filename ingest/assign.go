package ingest

import (
	"context"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/ingest/dedup"
	"github.com/usagepipe/usagepipe/schema"
)

// resume is where one newly assigned partition goes on from.
type resume struct {
	pos     int64 // durable position: every record below it is in ClickHouse
	from    int64 // dedup replay start (record time), if hasFrom
	hasFrom bool
	stored  bool  // pos is this database's progress row (not a v1 commit)
	group   int64 // the group's committed offset, -1 if none
	// idsFrom: from which offset the archive of event IDs holds every
	// record counted (docs/design.md, "Durable event IDs").
	idsFrom int64
}

// adjustOffsets runs when partitions are assigned, before fetching. The
// position of each partition comes from ClickHouse (ingest_progress), not
// from the group's committed offsets, which expire, vanish with the group
// and restart with a re-created topic; the open bucket's counts are
// restored from ClickHouse too, so nothing Kafka's retention deleted is
// ever needed again (docs/design.md, "Progress lives in ClickHouse"). Each
// partition is sought back to where its duplicate filter's replay starts.
func (c *Consumer) adjustOffsets(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	// The client joins the group as soon as it exists, so an assignment
	// can arrive before New has made c.adm from it.
	select {
	case <-c.built:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	parts := offsets[c.cfg.Topic]
	if len(parts) == 0 {
		return offsets, nil
	}
	var (
		topicID, srcTopic string
		progressIDs       []string
		res               map[int32]resume
		counts            []schema.EventCount
		starts, ends      kadm.ListedOffsets
	)
	err := c.retry(ctx, "read progress", func() error {
		var err error
		if topicID, err = c.fetchTopicID(ctx); err != nil {
			return err
		}
		if srcTopic, progressIDs, err = c.incarnation(ctx, topicID); err != nil {
			return err
		}
		if starts, err = c.adm.ListStartOffsets(ctx, c.cfg.Topic); err == nil {
			err = starts.Error()
		}
		if err != nil {
			return fmt.Errorf("list start offsets: %w", err)
		}
		// The last stable offsets: the partitions' lag is known before
		// their first fetch (a partition that stays empty is never
		// fetched with an answer). A partition listed with an error
		// learns it from its first fetch.
		if ends, err = c.adm.ListCommittedOffsets(ctx, c.cfg.Topic); err != nil {
			return fmt.Errorf("list end offsets: %w", err)
		}
		if res, err = c.resumes(ctx, progressIDs, parts, starts); err != nil {
			return err
		}
		buckets := make(map[int32]uint64, len(res))
		for p, r := range res {
			buckets[p] = uint64(r.pos / schema.BucketSize)
		}
		counts, err = c.w.ReadBucketCounts(ctx, srcTopic, buckets)
		return err
	})
	if err != nil {
		return nil, err
	}
	replayFrom := map[int32]int64{}
	for p, r := range res {
		if !r.hasFrom {
			continue
		}
		listed, err := c.adm.ListOffsetsAfterMilli(ctx, r.from, c.cfg.Topic)
		if err != nil {
			return nil, fmt.Errorf("list offsets after %d: %w", r.from, err)
		}
		if o, ok := listed.Lookup(c.cfg.Topic, p); ok && o.Err == nil && o.Offset >= 0 {
			replayFrom[p] = o.Offset
		}
	}

	// Records retention deleted at or after a floor's time would be claimed
	// older than it (a partition without progress: every record below the
	// log start, known to nothing): where the archive holds them, each of
	// their hours becomes a hole, recovered from the archive when a window
	// reaches it. The log start is listed after the floors: records it
	// passed meanwhile are among them.
	holes, err := c.archiveHoles(ctx, progressIDs, res, replayFrom)
	if err != nil {
		return nil, err
	}
	byPart := map[int32][]schema.EventCount{}
	for _, r := range counts {
		byPart[r.Partition] = append(byPart[r.Partition], r)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.topicID, c.progressIDs = topicID, progressIDs
	out := make(map[int32]kgo.Offset, len(parts))
	for p := range parts {
		r := res[p]
		st := &partState{p: p, topicID: topicID, committed: r.pos, aggFrom: r.pos, next: -1, flushed: r.flushed(),
			from: r.from, hasFrom: r.hasFrom, tsBucket: -1, dedup: dedup.New(c.cfg.DedupWindow), delays: map[delayKey]int{},
			idsFrom: r.idsFrom, progressIDs: progressIDs, ids: &schema.DedupIDs{}}
		if d := c.disk.Load(); d != nil {
			st.dedup.UseDisk(d, 0) // limits: setDedupLimits below
		}
		if s, ok := starts.Lookup(c.cfg.Topic, p); ok && s.Offset > r.pos {
			c.m.expired.Add(float64(s.Offset - r.pos))
			// A flush that died after its facts and before its IDs left
			// records counted whose copies the archive cannot recognise.
			c.m.dedupUnrecoverable.Inc()
			c.log.Warn("retention deleted records no instance had read: their events are lost",
				"partition", p, "position", r.pos, "log_start", s.Offset)
			// Nothing below the log start can be read any more: the
			// partition is handled up to it, so the lag counts only what
			// is left and the next flush writes it as progress (else a
			// partition emptied by retention kept its lag and readiness
			// down forever, and every start counted the same records
			// lost again).
			st.next = s.Offset
		}
		if e, ok := ends.Lookup(c.cfg.Topic, p); ok && e.Err == nil && e.Offset >= 0 {
			st.hwm, st.hwmKnown = e.Offset, true
			c.m.lag.WithLabelValues(strconv.Itoa(int(p))).Set(float64(max(e.Offset-st.position(), 0)))
		}
		// The filter's floor: every record below start has a timestamp
		// below r.from (ListOffsets by timestamp); [start, r.pos) is read
		// again only to fill the filter. No record at or after r.from:
		// nothing needs reading again.
		start := r.pos
		if rf, ok := replayFrom[p]; ok {
			start = min(rf, start)
		}
		if r.hasFrom {
			if rf, ok := replayFrom[p]; ok {
				st.dedup.SetFloor(start, r.from)
				if s, ok := starts.Lookup(c.cfg.Topic, p); ok && min(s.Offset, r.idsFrom) > 0 && rf <= s.Offset && rf < r.pos {
					// The first record kept is already inside the window:
					// records retention deleted just before it may have
					// been too, and below ids_from nothing recognises
					// copies of them.
					c.m.dedupUnrecoverable.Inc()
					c.log.Warn("retention deleted records the duplicate filter needs: duplicates of them are counted",
						"partition", p, "log_start", s.Offset, "ids_from", r.idsFrom, "dedup_from", time.UnixMilli(r.from).UTC())
				}
			} else {
				// The listing failed: nothing is known below the position,
				// so the first record recovers what its window needs.
				st.dedup.SetFloor(start, math.MaxInt64)
			}
		}
		for _, h := range holes[p] {
			st.dedup.AddHole(dedup.Hole{Lo: h.Hour, Hi: h.Hour + schema.HourMs, OffLo: h.MinOff, OffHi: h.MaxOff})
		}
		st.fetchFrom = start
		out[p] = kgo.NewOffset().At(start).WithEpoch(-1)
		c.log.Info("partition assigned", "partition", p, "topic_id", topicID, "src_topic", srcTopic,
			"position", r.pos, "from_progress", r.hasFrom, "replay_from", start, "restored_rows", len(byPart[p]))
		c.parts[p] = st
		c.owned[p] = true
		c.worker(p).agg.Restore(p, srcTopic, r.pos, byPart[p])
	}
	c.forgetUnset()
	c.setDedupLimits()
	c.m.restoredRows.Add(float64(len(counts)))
	c.m.ownPartitions.Set(float64(len(c.parts)))
	offsets[c.cfg.Topic] = out
	return offsets, nil
}

// forgetUnset forgets the owned partitions AdjustFetchOffsets did not set
// up: franz-go dropped them from the assignment (their offset fetch
// failed), so the lag does not wait for them (one fetched later is owned
// again when it is set up). Called with c.mu held.
func (c *Consumer) forgetUnset() {
	for p := range c.owned {
		if c.parts[p] == nil {
			delete(c.owned, p)
		}
	}
}

// flushed is the position a partition starts as flushed at: below it, a
// flush writes no progress row and commits nothing. With a progress row in
// this database, the lesser of it and the group's commit (a group behind
// is brought up to date by the first flush). Without one, -1, so that the
// first flush writes the position even with no record read:
//   - a new database, the same group: nothing of this partition is durable
//     here, whatever the group committed. Before, the group's offset was
//     taken: the partition re-read the log and wrote its facts, but no
//     progress row until it passed that offset, so --until-caught-up never
//     exited on an idle topic and every restart read it all again
//     (TestNoProgressRowYet).
//   - an upgrade from a release that committed v1 metadata: the position is
//     the group's offset, but no row says so. Taking it as flushed wrote
//     none until a record arrived: --until-caught-up never exited on an
//     idle partition, and every restart took the v1 path again
//     (TestNoProgressRowYet).
func (r resume) flushed() int64 {
	if !r.stored {
		return -1
	}
	return min(r.group, r.pos)
}

// resumes finds each assigned partition's durable position: its progress
// row in ClickHouse; else, once after an upgrade, the group's offset
// committed by a release that kept progress there (metadata v1); else the
// log start.
func (c *Consumer) resumes(ctx context.Context, progressIDs []string, parts map[int32]kgo.Offset, starts kadm.ListedOffsets) (map[int32]resume, error) {
	prog, err := c.w.ReadProgress(ctx, c.cfg.Topic, progressIDs...)
	if err != nil {
		return nil, err
	}
	var meta kadm.OffsetResponses
	for _, o := range parts {
		if o.EpochOffset().Offset >= 0 {
			if meta, err = c.adm.FetchOffsetsForTopics(ctx, c.cfg.Group, c.cfg.Topic); err != nil {
				return nil, fmt.Errorf("fetch committed offsets: %w", err)
			}
			break
		}
	}
	out := make(map[int32]resume, len(parts))
	for p, o := range parts {
		r := resume{group: o.EpochOffset().Offset}
		if r.group < 0 {
			r.group = -1
		}
		if pr, ok := prog[p]; ok {
			r.pos, r.from, r.hasFrom, r.stored = pr.NextOffset, pr.DedupFromMs, true, true
			// A row of a release before the archive (-1) claims nothing:
			// the archive starts here.
			r.idsFrom = pr.NextOffset
			if pr.IDsFrom >= 0 && pr.IDsFrom <= pr.NextOffset {
				r.idsFrom = pr.IDsFrom
			}
		} else if m, ok := meta.Lookup(c.cfg.Topic, p); ok && m.Err == nil && r.group >= 0 {
			if from, ok := parseMetaV1(m.Metadata); ok {
				r.pos, r.from, r.hasFrom = r.group, from, true
				r.idsFrom = r.group // counted without an archive below
			}
		}
		if !r.hasFrom {
			if s, ok := starts.Lookup(c.cfg.Topic, p); ok && s.Err == nil && s.Offset > 0 {
				r.pos = s.Offset
			}
		}
		out[p] = r
	}
	return out, nil
}

// fetchTopicID is the hex Kafka topic ID of the events topic (all zeros on
// brokers without topic IDs).
// incarnation returns the src_topic of the topic incarnation topicID and
// the topic IDs its progress rows may carry: the first incarnation may have
// been read while the brokers reported no topic IDs (before 2.8), and its
// progress rows then carry the zero ID.
func (c *Consumer) incarnation(ctx context.Context, topicID string) (srcTopic string, progressIDs []string, err error) {
	if srcTopic, err = c.w.Incarnation(ctx, c.cfg.Topic, topicID); err != nil {
		return "", nil, err
	}
	progressIDs = []string{topicID}
	if srcTopic == c.cfg.Topic && topicID != schema.ZeroTopicID {
		progressIDs = append(progressIDs, schema.ZeroTopicID)
	}
	return srcTopic, progressIDs, nil
}

func (c *Consumer) fetchTopicID(ctx context.Context) (string, error) {
	td, err := c.adm.ListTopics(ctx, c.cfg.Topic)
	if err != nil {
		return "", fmt.Errorf("topic metadata: %w", err)
	}
	d, ok := td[c.cfg.Topic]
	if !ok || d.Err != nil {
		return "", fmt.Errorf("topic metadata of %s: %v", c.cfg.Topic, d.Err)
	}
	return hex.EncodeToString(d.ID[:]), nil
}

// retry runs fn until it succeeds or ctx ends, backing off from 100 ms to
// 5 s: an assignment waits for ClickHouse rather than processing records it
// cannot place.
func (c *Consumer) retry(ctx context.Context, what string, fn func() error) error {
	backoff := 100 * time.Millisecond
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		c.warn.Do(func(n int) { c.log.Warn(what+" failed; retrying", "err", err, "backoff", backoff, "repeats", n) })
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// archiveHoles returns, per assigned partition, the hours of the archive's
// records below the log start (listed now) that the partition's floor
// would claim: at or after the floor's time, or all of them where the
// filter starts knowing every earlier record (no progress). A partition
// whose floor listing failed recovers everything anyway.
func (c *Consumer) archiveHoles(ctx context.Context, progressIDs []string, res map[int32]resume, replayFrom map[int32]int64) (map[int32][]schema.ArchiveHour, error) {
	out := map[int32][]schema.ArchiveHour{}
	var starts kadm.ListedOffsets
	err := c.retry(ctx, "read the archive of event IDs", func() error {
		var err error
		if starts, err = c.adm.ListStartOffsets(ctx, c.cfg.Topic); err == nil {
			err = starts.Error()
		}
		if err != nil {
			return fmt.Errorf("list start offsets: %w", err)
		}
		for p, r := range res {
			hourLo := int64(math.MinInt64)
			if r.hasFrom {
				if _, ok := replayFrom[p]; !ok {
					continue
				}
				hourLo = schema.HourOf(r.from)
			}
			s, ok := starts.Lookup(c.cfg.Topic, p)
			if !ok || s.Err != nil {
				return fmt.Errorf("list start offsets: partition %d missing", p)
			}
			if s.Offset <= r.idsFrom {
				continue
			}
			q := schema.ArchiveQuery{Topic: c.cfg.Topic, TopicIDs: progressIDs, Partition: p,
				HourLo: hourLo, HourHi: math.MaxInt64, Offsets: schema.OffsetRange{Lo: r.idsFrom, Hi: s.Offset}}
			if out[p], err = c.w.ArchiveHours(ctx, q); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}
