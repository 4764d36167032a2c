package ingest

import (
	"context"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Aborted records below the last stable offset (docs/design.md, "Aborted
// records just below the last stable offset"). The client drops aborted
// records without a word: when the offsets just below the last stable
// offset are aborted records whose abort marker lies above it (producer A
// aborted after producer B began a transaction), nothing arrives to move
// the position there until B's transaction ends. A partition whose
// position and last stable offset both stand still, the position below it,
// is probed: a read_committed fetch of its own from the position, parsed
// by franz-go. The offsets it passes without keeping any record (no data,
// no marker) held only aborted data (or nothing, after compaction), and
// the position moves past them as a transaction marker moves it.

// abortedProbeAfter is how long a partition's position and last stable
// offset must stand still before it is probed; abortedProbeBackoff delays
// the next probe of a partition after a failed one.
const (
	abortedProbeAfter   = time.Second
	abortedProbeBackoff = 10 * time.Second
)

// abortedProbeTimeout bounds one probe, and abortedProbeBudget the probes
// of one pass of the poll loop (which holds the consumer's lock).
const (
	abortedProbeTimeout = time.Second
	abortedProbeBudget  = 2 * time.Second
)

// abortedProbeFetches bounds the fetches of one probe; the first asks for
// 64 KiB (Kafka returns at least one whole batch), each next one for twice
// as much, up to 4 MiB.
const abortedProbeFetches = 16

// probeAborted probes the stalled partitions. Called by the poll loop with
// c.mu held, between polls: no worker runs, and no rebalance can revoke a
// partition meanwhile (BlockRebalanceOnPoll).
func (c *Consumer) probeAborted(ctx context.Context, now time.Time) {
	budget := now.Add(abortedProbeBudget)
	for _, st := range c.parts {
		pos := st.position()
		if pos != st.stallPos || st.hwm != st.stallHwm || st.stallSince.IsZero() {
			st.stallPos, st.stallHwm, st.stallSince = pos, st.hwm, now
			continue
		}
		replayed := st.next >= st.committed || st.next < 0 && st.fetchFrom >= st.committed
		if !st.hwmKnown || pos >= st.hwm || !replayed || now.Sub(st.stallSince) < abortedProbeAfter || time.Now().After(budget) {
			continue
		}
		st.stallSince = now // at most one probe a second
		pctx, cancel := context.WithTimeout(ctx, abortedProbeTimeout)
		next, err := c.skipAborted(pctx, st.p, st.topicID, pos)
		cancel()
		if err != nil {
			st.stallSince = now.Add(abortedProbeBackoff)
			c.log.Debug("aborted-records probe", "partition", st.p, "offset", pos, "err", err)
			continue
		}
		if next <= pos {
			continue
		}
		// Offsets pos..next-1 hold only aborted records: counted like
		// transaction markers (no count, no dead letter).
		if next-1 >= st.aggFrom {
			c.workers[int(st.p)%len(c.workers)].agg.Skip(st.p, next-1)
		}
		st.next, st.stallPos = next, next
		c.m.lag.WithLabelValues(strconv.Itoa(int(st.p))).Set(float64(max(st.hwm-next, 0)))
		c.log.Debug("position moved past aborted records", "partition", st.p, "from", pos, "to", next)
	}
}

// skipAborted fetches partition p from offset from (read_committed) and
// returns the offset up to which the log holds no record the client would
// return (only aborted data), not beyond the last stable offset: from
// itself when such a record is there, or when it cannot say (an error
// returns from too).
func (c *Consumer) skipAborted(ctx context.Context, p int32, topicID string, from int64) (int64, error) {
	var id [16]byte
	if b, err := hex.DecodeString(topicID); err == nil && len(b) == 16 {
		copy(id[:], b)
	}
	leader, _, err := c.cl.PartitionLeader(c.cfg.Topic, p)
	if err != nil {
		return from, err
	}
	if leader < 0 {
		return from, fmt.Errorf("partition %d has no leader", p)
	}
	if c.probe == nil {
		cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.cfg.Brokers...)}, c.cfg.ConnOpts...)...)
		if err != nil {
			return from, fmt.Errorf("aborted-records probe client: %w", err)
		}
		c.probe = cl
	}
	next, size := from, int32(64<<10)
	for range abortedProbeFetches {
		req := kmsg.NewPtrFetchRequest()
		req.ReplicaID, req.MaxWaitMillis, req.MinBytes, req.MaxBytes = -1, 0, 1, size
		req.IsolationLevel, req.SessionEpoch = 1, -1
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic, rt.TopicID = c.cfg.Topic, id
		rp := kmsg.NewFetchRequestTopicPartition()
		rp.Partition, rp.FetchOffset, rp.PartitionMaxBytes = p, next, size
		rp.CurrentLeaderEpoch, rp.LogStartOffset = -1, -1
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		kresp, err := c.probe.Broker(int(leader)).Request(ctx, req)
		if err != nil {
			return from, err
		}
		resp := kresp.(*kmsg.FetchResponse)
		if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
			return from, err
		}
		if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
			return from, fmt.Errorf("fetch of partition %d: unexpected response shape", p)
		}
		part := &resp.Topics[0].Partitions[0]
		fp, after := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{
			KeepControlRecords: true,
			Offset:             next,
			IsolationLevel:     kgo.ReadCommitted(),
			Topic:              c.cfg.Topic,
			Partition:          p,
		}, part, kgo.DefaultDecompressor(), nil)
		if fp.Err != nil {
			return from, fp.Err
		}
		if len(fp.Records) > 0 {
			// A record the client returns: the offsets before this
			// fetch's start (earlier fetches kept nothing) are passed.
			return next, nil
		}
		lso := part.LastStableOffset
		if lso < 0 {
			lso = part.HighWatermark
		}
		if after <= next || after >= lso {
			return min(max(after, next), lso), nil
		}
		next, size = after, min(size*2, 4<<20)
	}
	return next, nil
}
