package benchmarks

import (
	"context"
	"flag"
	"runtime"
	"runtime/pprof"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/aggregate"
	"github.com/usagepipe/usagepipe/ingest/decode"
	"github.com/usagepipe/usagepipe/ingest/dedup"
	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

var (
	microCorpus     = flag.Int("micro.corpus", 1<<20, "distinct gen records the combined microbenchmark cycles through (dedup set size in steady state)")
	microPartitions = flag.Int("micro.partitions", 4, "partitions the corpus is spread over (by key, like the default producer partitioner)")
	microFlushEvery = flag.Int("micro.flush-every", 200_000, "events between two Drains (one flush)")
)

// microRecord is one corpus record: its value, its partition, its Kafka
// timestamp offset within a cycle.
type microRecord struct {
	value []byte
	part  int32
}

// loadCorpus generates n records with gen's defaults (10k accounts, 300k
// users, 40 features, RFC 3339 and epoch-millis occurred_at, unknown fields)
// and assigns partitions as the default Kafka partitioner does (murmur2 of
// the account key).
func loadCorpus(tb testing.TB, n, partitions int) ([]microRecord, int64, int64) {
	tb.Helper()
	g := gen.New(gen.Config{Seed: 1, Events: n})
	tp := kgo.StickyKeyPartitioner(nil).ForTopic("usage-events")
	out := make([]microRecord, 0, n)
	var r gen.Record
	var bytes, firstTs int64
	for g.Next(&r) {
		if len(out) == 0 {
			firstTs = r.TimestampMs
		}
		p := tp.Partition(&kgo.Record{Key: r.Key}, partitions)
		out = append(out, microRecord{value: r.Value, part: int32(p)})
		bytes += int64(len(r.Value))
	}
	return out, bytes, firstTs
}

// BenchmarkDecodeValidateAggregate is the per-event hot path of `usagepipe
// run` without Kafka and ClickHouse: decode+validate (ingest/decode), the
// per-partition duplicate check (ingest/dedup), aggregate.Add (or Skip for
// a reject or duplicate), and a Drain every -micro.flush-every events like a
// real flush (the facts are dropped, not written).
//
// Steady state: one untimed pass over the corpus first warms the interner,
// the dedup sets and the aggregator's maps. Record timestamps advance by
// step ms per event so that one pass over the corpus spans more than the
// dedup window plus its slack: a record seen again one pass later is not a
// duplicate, and each dedup set holds about corpus/partitions IDs, as it
// would with that many events per 25h.
func BenchmarkDecodeValidateAggregate(b *testing.B) {
	corpus, total, firstTs := loadCorpus(b, *microCorpus, *microPartitions)
	n := int64(len(corpus))
	keep := (24*time.Hour + dedup.Slack + time.Minute).Milliseconds()
	step := (keep + n - 1) / n

	sets := make([]*dedup.Set, *microPartitions)
	agg := aggregate.New("usage-events")
	for p := range sets {
		sets[p] = dedup.New(24 * time.Hour)
		agg.Assign(int32(p))
	}
	offsets := make([]int64, *microPartitions)
	var facts [2]schema.Facts
	var seq int64 // events applied so far
	var rejected, dups, drains int
	flushEvery := int64(*microFlushEvery)
	// As ingest's consumer does, each record is decoded and its dedup slot
	// prefetched one record ahead of its dedup check and aggregation.
	type ahead struct {
		dec *decode.Decoder
		ev  event.Event
		rej *event.Rejection
		key dedup.Key
		r   *microRecord
		ts  int64
	}
	var slots [2]ahead
	for i := range slots {
		slots[i].dec = decode.New(decode.Config{})
	}
	cur := -1          // slot of the record to apply next; -1: none prepared yet
	var prepared int64 // records prepared so far; drives the record clock
	prepare := func(r *microRecord) {
		d := &slots[(cur+1)&1]
		d.r, d.ts = r, firstTs+prepared*step
		prepared++
		d.rej = d.dec.Decode(r.value, d.ts, &d.ev)
		if d.rej == nil {
			d.key = sets[r.part].Key(d.ev.EventID)
			sets[r.part].Prefetch(d.key)
			agg.Prefetch(d.ev.AccountID)
		}
	}
	// one prepares next and applies the record prepared before it.
	one := func(next *microRecord) {
		if cur < 0 {
			prepare(next)
			cur = 0
			return
		}
		prepare(next)
		d := &slots[cur]
		cur ^= 1
		r := d.r
		off := offsets[r.part]
		offsets[r.part]++
		seq++
		if d.rej != nil {
			rejected++
			agg.Skip(r.part, off)
		} else if !sets[r.part].Covered(d.ts) {
			b.Fatalf("record %d needs a recovery in an in-order corpus", seq)
		} else if sets[r.part].CheckKey(d.key, d.ts, off) {
			dups++
			agg.Skip(r.part, off)
		} else {
			agg.Add(r.part, off, &d.ev)
		}
		if seq%flushEvery == 0 {
			agg.Drain(&facts[drains&1])
			drains++
		}
	}
	for i := range corpus { // warm-up pass, untimed
		one(&corpus[i])
	}
	if rejected > 0 || dups > 0 {
		b.Fatalf("warm-up: %d rejected, %d duplicates; the corpus must be all valid and distinct", rejected, dups)
	}

	b.ReportAllocs()
	b.SetBytes(total / n)
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	cpu0 := processCPU()
	start := seq
	i := 0
	// The timed loop carries the profiler label phase=timed, so that
	// `go tool pprof -tagfocus=phase=timed` leaves out corpus generation
	// and the warm-up pass.
	pprof.Do(context.Background(), pprof.Labels("phase", "timed"), func(context.Context) {
		for b.Loop() {
			one(&corpus[i])
			i++
			if i == len(corpus) {
				i = 0
			}
		}
	})
	cpu := processCPU() - cpu0
	runtime.ReadMemStats(&ms1)
	events := float64(seq - start)
	if rejected > 0 || dups > 0 {
		b.Fatalf("%d rejected, %d duplicates in steady state; want none", rejected, dups)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/events, "ns/event")
	b.ReportMetric(float64(cpu.Nanoseconds())/events, "cpu-ns/event")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/events, "allocs/event")
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/events, "B/event")
	b.ReportMetric(float64(agg.Names()), "names")
}

// processCPU is the user+system CPU time of this process so far (every
// thread, the GC's included). On a shared, noisy machine it is a steadier
// measure of cost than wall time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
