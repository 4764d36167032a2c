package e2e

import (
	"context"
	"flag"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

var (
	flagRate     = flag.Int("bench.rate", 100_000, "TestLatency: records per second the paced producer sends")
	flagDuration = flag.Duration("bench.duration", 45*time.Second, "TestLatency: how long the paced producer runs")
	flagWarmup   = flag.Duration("bench.warmup", 10*time.Second, "TestLatency: first part of the run left out of the steady-state figures")
)

const (
	delayMetric  = "usagepipe_event_delay_seconds"
	servedMetric = "usagepipe_served_delay_seconds"
)

// TestLatency: `usagepipe run` (long-running, default settings) consumes
// while a paced producer sends -bench.rate gen records per second for
// -bench.duration, each stamped with the wall clock when it is produced.
// usagepipe_event_delay_seconds (record timestamp → facts acknowledged by
// ClickHouse) is scraped from /metrics after the warm-up and once the
// pipeline has flushed every record; the quantiles are computed from the
// histogram's buckets (Prometheus's histogram_quantile interpolation) over
// the steady-state interval, and over the whole run.
func TestLatency(t *testing.T) {
	for _, kind := range brokerKinds() {
		t.Run(kind, func(t *testing.T) { latencyRun(t, kind) })
	}
}

func latencyRun(t *testing.T, kind string) {
	b := startBroker(t, kind)
	sfx := uniq()
	topic, dlq, db := "usage-events-"+sfx, "usage-events-dlq-"+sfx, "bench_"+sfx
	kafkatest.CreateTopic(t, b.addrs, topic, int32(*flagPartitions))
	kafkatest.CreateTopic(t, b.addrs, dlq, 1)
	defer dropDatabase(t, db)

	metrics := freeAddr(t)
	p := startPipeline(t, pipelineArgs{brokers: b.addrs, topic: topic, dlq: dlq, group: "usagepipe-" + sfx, db: db, metricsAddr: metrics})
	// Ready and owning every partition before the clock starts.
	waitUntil(t, 60*time.Second, "pipeline owns every partition", func() bool {
		s, err := scrape(metrics)
		return err == nil && s.sum("usagepipe_assigned_partitions") == float64(*flagPartitions)
	})

	// Records come from gen in a goroutine ahead of the pacer; the pacer
	// stamps them with the wall clock as it produces them.
	total := int(float64(*flagRate) * flagDuration.Seconds())
	recs := make(chan gen.Record, 4*(*flagRate))
	genCtx, stopGen := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { // stopped by stopGen or when gen is exhausted
		defer close(recs)
		g := gen.New(genConfig(total, 7))
		var r gen.Record
		for g.Next(&r) {
			select {
			case recs <- r:
			case <-genCtx.Done():
				return
			}
		}
	})
	defer func() { stopGen(); wg.Wait() }()
	for len(recs) < cap(recs)/2 { // a head start
		time.Sleep(10 * time.Millisecond)
	}

	cl := producer(t, b.addrs)
	defer cl.Close()
	var acked, failed atomic.Int64
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			failed.Add(1)
			return
		}
		acked.Add(1)
	}

	var warm samples
	var warmCPU, warmCH time.Duration
	var warmAt time.Duration
	var lagMax float64
	pid := p.cmd.Process.Pid
	cpu0 := procCPU(pid)
	load0 := loadAvg()
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	sent := 0
	nextScrape := start.Add(time.Second)
	for sent < total {
		now := <-tick.C
		want := min(total, int(float64(*flagRate)*now.Sub(start).Seconds()))
		for ; sent < want; sent++ {
			r, ok := <-recs
			if !ok {
				t.Fatalf("gen ended after %d records", sent)
			}
			cl.Produce(context.Background(), &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value, Timestamp: time.Now()}, promise)
		}
		if now.After(nextScrape) {
			nextScrape = nextScrape.Add(time.Second)
			s, err := scrape(metrics)
			if err != nil {
				continue
			}
			lagMax = math.Max(lagMax, s.sum("usagepipe_consumer_lag_records"))
			if warm == nil && now.Sub(start) >= *flagWarmup {
				warm, warmCPU, warmCH, warmAt = s, procCPU(pid), procCPU(env.chPID), now.Sub(start)
			}
		}
	}
	tick.Stop()
	produceWall := time.Since(start)
	if err := cl.Flush(context.Background()); err != nil {
		t.Fatalf("flush producer: %v", err)
	}
	if failed.Load() > 0 {
		t.Fatalf("%d records failed to produce", failed.Load())
	}
	steadyCPU, steadyCH := procCPU(pid)-warmCPU, procCPU(env.chPID)-warmCH
	steadyWall := produceWall - warmAt
	// Every record flushed: the histogram has counted all of them.
	var end samples
	waitUntil(t, 2*time.Minute, "every record's delay observed", func() bool {
		s, err := scrape(metrics)
		if err != nil {
			return false
		}
		end = s
		return s[delayMetric+"_count"] >= float64(acked.Load()) && s[servedMetric+"_count"] >= float64(acked.Load())
	})
	catchUp := time.Since(start) - produceWall
	cpu := procCPU(pid) - cpu0
	p.signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := p.wait(ctx, t)

	all := end.histogram(delayMetric)
	steady := all
	servedAll := end.histogram(servedMetric)
	served := servedAll
	if warm != nil {
		steady = minus(all, warm.histogram(delayMetric))
		served = minus(servedAll, warm.histogram(servedMetric))
	}
	r := result{
		Test: "latency", Broker: kind, Events: int(acked.Load()), Partitions: *flagPartitions, Instances: 1,
		WallS: produceWall.Seconds(), EventsPerS: float64(acked.Load()) / produceWall.Seconds(),
		CPUNsEvent: float64(cpu.Nanoseconds()) / float64(acked.Load()),
		MaxRSSMiB:  float64(st.maxRSS) / (1 << 20),
		Exact:      "not checked",
		Load:       load0 + "→" + loadAvg(),
		Extra: map[string]string{
			"broker":                  b.note,
			"target_rate":             fmt.Sprint(*flagRate),
			"p50_s":                   fmt.Sprintf("%.2f", quantile(0.50, steady)),
			"p99_s":                   fmt.Sprintf("%.2f", quantile(0.99, steady)),
			"p999_s":                  fmt.Sprintf("%.2f", quantile(0.999, steady)),
			"share_le_5s":             fmt.Sprintf("%.4f", shareAtMost(5, steady)),
			"served_p50_s":            fmt.Sprintf("%.2f", quantile(0.50, served)),
			"served_p99_s":            fmt.Sprintf("%.2f", quantile(0.99, served)),
			"served_share_le_5s":      fmt.Sprintf("%.4f", shareAtMost(5, served)),
			"served_p99_s_whole_run":  fmt.Sprintf("%.2f", quantile(0.99, servedAll)),
			"p50_s_whole_run":         fmt.Sprintf("%.2f", quantile(0.50, all)),
			"p99_s_whole_run":         fmt.Sprintf("%.2f", quantile(0.99, all)),
			"steady_window_s":         fmt.Sprintf("%.0f", steadyWall.Seconds()),
			"steady_cpu_cores":        fmt.Sprintf("%.2f", steadyCPU.Seconds()/steadyWall.Seconds()),
			"steady_clickhouse_cores": fmt.Sprintf("%.2f", steadyCH.Seconds()/steadyWall.Seconds()),
			"max_lag_records":         fmt.Sprintf("%.0f", lagMax),
			"catch_up_after_s":        fmt.Sprintf("%.2f", catchUp.Seconds()),
			"flushes":                 fmt.Sprintf("%.0f", end.sum("usagepipe_flushes_total")),
			"delay_buckets_s":         bucketString(steady),
			"served_buckets_s":        bucketString(served),
			"histogram_rounding":      "delay is measured from the record's second + 0.5 s (ingest/consumer.go), so ±0.5 s",
		},
	}
	t.Logf("%s: served rows (record → served row rewritten) steady p50 %s s, p99 %s s, share ≤5 s %s; whole run p99 %s s", kind, r.Extra["served_p50_s"], r.Extra["served_p99_s"], r.Extra["served_share_le_5s"], r.Extra["served_p99_s_whole_run"])
	t.Logf("%s: %d records at %.0f/s for %s; event delay steady p50 %s s, p99 %s s, p99.9 %s s, share ≤5 s %s; whole run p50 %s p99 %s; pipeline CPU %s cores (steady), %.0f ns/event; ClickHouse %s cores; peak RSS %.0f MiB; max lag %.0f",
		kind, acked.Load(), r.EventsPerS, produceWall.Round(time.Second), r.Extra["p50_s"], r.Extra["p99_s"], r.Extra["p999_s"], r.Extra["share_le_5s"],
		r.Extra["p50_s_whole_run"], r.Extra["p99_s_whole_run"], r.Extra["steady_cpu_cores"], r.CPUNsEvent, r.Extra["steady_clickhouse_cores"], r.MaxRSSMiB, lagMax)
	if math.Abs(r.EventsPerS-float64(*flagRate)) > 0.05*float64(*flagRate) {
		t.Logf("the producer did not hold the target rate (%.0f/s of %d/s): the machine is saturated", r.EventsPerS, *flagRate)
	}
	report(t, r)
}

func bucketString(h []bucket) string {
	var parts []string
	for _, b := range h {
		parts = append(parts, fmt.Sprintf("≤%g:%.0f", b.le, b.count))
	}
	return strings.Join(parts, " ")
}

// waitUntil polls cond every 100 ms until it holds, failing t after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
