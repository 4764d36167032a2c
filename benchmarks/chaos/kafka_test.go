package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

// faultInjector fails or delays kfake requests while active, through
// kfake's control functions (which run on the cluster's goroutine and see
// each request before the broker acts on it).
type faultInjector struct {
	c      *kfake.Cluster
	active atomic.Bool

	fetchDelays, fetchDrops atomic.Int64
	commitFails             atomic.Int64
	produceFails            atomic.Int64
	joinRewrites            atomic.Int64
}

var errDropped = errors.New("chaos: connection dropped by fault injection")

// installFaults adds the fault controls to c; they do nothing until active.
// It also adds a JoinGroup control for group: the rebalance timeout is
// capped at rebalance and, if session > 0, the session timeout set to
// session (used when the binary has no session-timeout setting). See
// README.md, "Known limits".
func installFaults(c *kfake.Cluster, group string, session, rebalance time.Duration) *faultInjector {
	f := &faultInjector{c: c}
	c.ControlKey(int16(kmsg.Fetch), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !f.active.Load() {
			return nil, nil, false
		}
		switch x := rand.IntN(100); {
		case x < 30: // a slow broker: 0.2–1.5 s
			f.fetchDelays.Add(1)
			d := time.Duration(200+rand.IntN(1300)) * time.Millisecond
			c.SleepControl(func() { time.Sleep(d) })
		case x < 40:
			f.fetchDrops.Add(1)
			return nil, errDropped, true
		}
		return nil, nil, false
	})
	c.ControlKey(int16(kmsg.OffsetCommit), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !f.active.Load() || rand.IntN(2) == 0 {
			return nil, nil, false
		}
		f.commitFails.Add(1)
		if rand.IntN(2) == 0 {
			return nil, errDropped, true
		}
		return kafkatest.FailCommit(kreq.(*kmsg.OffsetCommitRequest), kerr.RequestTimedOut.Code), nil, true
	})
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if !f.active.Load() || rand.IntN(3) != 0 {
			return nil, nil, false
		}
		f.produceFails.Add(1)
		if rand.IntN(2) == 0 {
			return nil, errDropped, true
		}
		req := kreq.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition, rp.ErrorCode, rp.BaseOffset = p.Partition, kerr.NotLeaderForPartition.Code, -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	sessionMs, rebalanceMs := int32(session.Milliseconds()), int32(rebalance.Milliseconds())
	c.ControlKey(int16(kmsg.JoinGroup), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kreq.(*kmsg.JoinGroupRequest)
		if req.Group != group {
			return nil, nil, false
		}
		if sessionMs > 0 && req.SessionTimeoutMillis != sessionMs {
			req.SessionTimeoutMillis = sessionMs
		}
		if req.RebalanceTimeoutMillis > rebalanceMs {
			req.RebalanceTimeoutMillis = rebalanceMs
		}
		f.joinRewrites.Add(1)
		return nil, nil, false
	})
	return f
}

// dlqContents is what the dead-letter topic holds.
type dlqContents struct {
	reasons map[string]string // "partition@offset" of the source → reason
	copies  map[string]int    // "partition@offset" → dead letters for it
	total   int
	bad     []string // dead letters with wrong headers
}

// readDLQ reads the whole dead-letter topic.
func readDLQ(ctx context.Context, brokers []string, dlq, source string) (*dlqContents, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(dlq),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxBytes(64<<20))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, dlq)
	if err != nil {
		return nil, fmt.Errorf("dlq end offsets: %w", err)
	}
	remaining := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			remaining[o.Partition] = o.Offset
		}
	})
	out := &dlqContents{reasons: map[string]string{}, copies: map[string]int{}}
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dlq: read %d records, partitions still behind: %v: %w", out.total, remaining, ctx.Err())
		}
		fs.EachRecord(func(r *kgo.Record) {
			h := map[string]string{}
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			if h["usagepipe.source.topic"] != source || h["usagepipe.error"] == "" || h["usagepipe.reason"] == "" {
				out.bad = append(out.bad, fmt.Sprintf("%v", h))
			}
			k := h["usagepipe.source.partition"] + "@" + h["usagepipe.source.offset"]
			out.reasons[k] = h["usagepipe.reason"]
			out.copies[k]++
			out.total++
			if end, ok := remaining[r.Partition]; ok && r.Offset+1 >= end {
				delete(remaining, r.Partition)
			}
		})
	}
	return out, nil
}
