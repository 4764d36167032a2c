package gen

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/aggregate/reference"
)

// Produce sends every remaining record of g to topic with cl: asynchronously,
// each with its Kafka timestamp set from TimestampMs (so clock skew and dedup
// windows are deterministic), flushing at the end. It returns the number of
// records the broker acknowledged and, only if keep is true, those records
// as reference.Records with the partition, offset and timestamp the broker
// acknowledged, sorted by (partition, offset). Benchmarks pass keep=false to
// keep memory flat.
//
// Records are keyed by account, so the default partitioner keeps an
// account's records, and so every duplicate with its original, in one
// partition. A bad-record share or EdgeCases includes values over 1 MiB
// (MaxValueBytes): cl needs kgo.ProducerBatchMaxBytes above that, and the
// topic a max.message.bytes that admits the batch.
//
// Produce stops at the first failed record and returns its error after
// waiting for the records already sent; the count is then of the
// acknowledged ones.
func Produce(ctx context.Context, cl *kgo.Client, topic string, g *Generator, keep bool) ([]reference.Record, int, error) {
	var (
		mu       sync.Mutex
		acked    int
		out      []reference.Record
		firstErr error
		wg       sync.WaitGroup // promises still to run
	)
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return firstErr != nil
	}
	promise := func(r *kgo.Record, err error) {
		defer wg.Done()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("produce to %s: %w", topic, err)
			}
			return
		}
		acked++
		if keep {
			out = append(out, reference.Record{
				Topic:       r.Topic,
				Partition:   r.Partition,
				Offset:      r.Offset,
				TimestampMs: r.Timestamp.UnixMilli(),
				Key:         r.Key,
				Value:       r.Value,
			})
		}
	}

	var rec Record
	for !failed() && ctx.Err() == nil && g.Next(&rec) {
		wg.Add(1)
		cl.Produce(ctx, &kgo.Record{
			Topic:     topic,
			Key:       rec.Key,
			Value:     rec.Value,
			Timestamp: time.UnixMilli(rec.TimestampMs),
		}, promise)
	}
	flushErr := cl.Flush(ctx)
	wg.Wait() // records failed before buffering are not covered by Flush

	mu.Lock()
	defer mu.Unlock()
	err := firstErr
	if err == nil && flushErr != nil {
		err = fmt.Errorf("produce to %s: flush: %w", topic, flushErr)
	}
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("produce to %s: %w", topic, ctx.Err())
	}
	slices.SortFunc(out, func(a, b reference.Record) int {
		return cmp.Or(cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})
	return out, acked, err
}
