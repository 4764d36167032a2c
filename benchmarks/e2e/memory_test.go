package e2e

import (
	"context"
	"flag"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

var flagMemLimit = flag.String("bench.gomemlimit", "800MiB", "TestMemory: GOMEMLIMIT of the second 2M run")

// TestMemory measures `usagepipe run --until-caught-up` memory on the
// first broker of -bench.brokers:
//
//   - N records (seed 1) with the defaults, then the same N with
//     GOMEMLIMIT=-bench.gomemlimit in the environment (Go's soft memory
//     limit; no code change): peak RSS and CPU of both;
//   - then N more records (seed 2: same accounts, users and quarters, new
//     event IDs) on the same topic, and a fresh group over all 2N, with
//     /metrics scraped every 250 ms: RSS and Go heap in use when the
//     pipeline had consumed N and when it had consumed 2N.
//
// Everything N more events add that does not depend on the population is
// the dedup set (every event ID within the 24h window is kept: gen's 2N
// records span well under 24h of record time) and garbage the GC has not
// returned yet.
func TestMemory(t *testing.T) {
	kind := brokerKinds()[0]
	b := startBroker(t, kind)
	sfx := uniq()
	topic, dlq := "usage-events-"+sfx, "usage-events-dlq-"+sfx
	kafkatest.CreateTopic(t, b.addrs, topic, int32(*flagPartitions))
	kafkatest.CreateTopic(t, b.addrs, dlq, 1)
	n, prodTime := produce(t, b.addrs, topic, genConfig(*flagEvents, 1))
	t.Logf("%s: produced %d records in %s", kind, n, prodTime.Round(time.Millisecond))

	run := func(name string, env []string, events int) result {
		db := "bench_" + uniq()
		defer dropDatabase(t, db)
		r := measureRun(t, b, pipelineArgs{brokers: b.addrs, topic: topic, dlq: dlq, group: "usagepipe-" + uniq(), db: db,
			metricsAddr: freeAddr(t), untilCaughtUp: true, env: env}, events)
		r.Test, r.Broker, r.Partitions, r.Instances, r.Exact = "memory", kind, *flagPartitions, 1, "not checked"
		r.Extra["variant"] = name
		return r
	}
	def := run("defaults", nil, n)
	lim := run("GOMEMLIMIT="+*flagMemLimit, []string{"GOMEMLIMIT=" + *flagMemLimit}, n)
	lim.Extra["rss_vs_defaults"] = fmt.Sprintf("%.2f", lim.MaxRSSMiB/def.MaxRSSMiB)
	lim.Extra["cpu_vs_defaults"] = fmt.Sprintf("%.2f", lim.CPUNsEvent/def.CPUNsEvent)
	t.Logf("GOMEMLIMIT=%s: peak RSS %.0f → %.0f MiB (×%s), CPU %.0f → %.0f ns/event (×%s)", *flagMemLimit,
		def.MaxRSSMiB, lim.MaxRSSMiB, lim.Extra["rss_vs_defaults"], def.CPUNsEvent, lim.CPUNsEvent, lim.Extra["cpu_vs_defaults"])
	report(t, def)
	report(t, lim)

	// Flatness: N more records of the same population, one run over 2N.
	n2, _ := produce(t, b.addrs, topic, genConfig(*flagEvents, 2))
	total := n + n2
	db := "bench_" + uniq()
	defer dropDatabase(t, db)
	metrics := freeAddr(t)
	type point struct {
		consumed, rss, heapInuse float64
	}
	var (
		mu     sync.Mutex
		points []point
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // stopped below, after the run
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			s, err := scrape(metrics)
			if err != nil {
				continue
			}
			mu.Lock()
			points = append(points, point{s.sum("usagepipe_records_consumed_total"), s.sum("process_resident_memory_bytes"), s.sum("go_memstats_heap_inuse_bytes")})
			mu.Unlock()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), *flagRunTimeout)
	defer cancel()
	load0 := loadAvg()
	p := startPipeline(t, pipelineArgs{brokers: b.addrs, topic: topic, dlq: dlq, group: "usagepipe-" + uniq(), db: db,
		metricsAddr: metrics, untilCaughtUp: true})
	st := p.wait(ctx, t)
	close(stop)
	wg.Wait()
	// The largest RSS and heap seen while consumed ≤ N, and over the run.
	var rssN, heapN, rss2N, heap2N float64
	for _, pt := range points {
		if pt.consumed <= float64(n) {
			rssN, heapN = max(rssN, pt.rss), max(heapN, pt.heapInuse)
		}
		rss2N, heap2N = max(rss2N, pt.rss), max(heap2N, pt.heapInuse)
	}
	mib := func(x float64) string { return fmt.Sprintf("%.0f", x/(1<<20)) }
	r := result{
		Test: "memory", Broker: kind, Events: total, Partitions: *flagPartitions, Instances: 1,
		WallS: st.wall.Seconds(), EventsPerS: float64(total) / st.wall.Seconds(),
		CPUNsEvent: float64(st.cpu().Nanoseconds()) / float64(total), UserS: st.user.Seconds(), SysS: st.sys.Seconds(),
		MaxRSSMiB: float64(st.maxRSS) / (1 << 20), Exact: "not checked", Load: load0 + "→" + loadAvg(),
		Extra: map[string]string{
			"variant":                    fmt.Sprintf("defaults, %d then %d records of the same population", n, n2),
			"peak_rss_mib_first_half":    mib(rssN),
			"peak_rss_mib_whole":         mib(rss2N),
			"peak_heap_inuse_mib_first":  mib(heapN),
			"peak_heap_inuse_mib_whole":  mib(heap2N),
			"scrapes":                    fmt.Sprint(len(points)),
			"dedup_growth_mib_at_50B_id": fmt.Sprintf("%.0f", float64(n2)*50/(1<<20)),
		},
	}
	t.Logf("flatness: %d then %d records: peak RSS %s MiB while ≤%d consumed, %s MiB over all %d (kernel peak %.0f MiB); Go heap in use %s → %s MiB; %d more IDs in the dedup set at ~50 B (BenchmarkStateSize) = %s MiB",
		n, n2, mib(rssN), n, mib(rss2N), total, r.MaxRSSMiB, mib(heapN), mib(heap2N), n2, r.Extra["dedup_growth_mib_at_50B_id"])
	report(t, r)
}
