package e2e

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

var (
	flagScalePartitions = flag.String("bench.scale-partitions", "4,12", "TestScale: partition counts, one topic each")
	flagScaleInstances  = flag.String("bench.scale-instances", "1,2", "TestScale: numbers of `run` instances sharing one group")
	flagScaleCheck      = flag.String("bench.scale-check", "12x2", "TestScale: runs (PARTITIONSxINSTANCES, comma-separated) whose rollups are checked against the reference")
)

// TestScale: for each partition count a topic of N records, drained by 1
// and by 2 `run --until-caught-up` processes sharing one consumer group (a
// fresh group and database per run), on the first broker of -bench.brokers.
// Wall is until the last process exits; CPU and peak RSS are summed over
// the processes.
func TestScale(t *testing.T) {
	kind := brokerKinds()[0]
	b := startBroker(t, kind)
	checks := map[string]bool{}
	for _, c := range strings.Split(*flagScaleCheck, ",") {
		checks[strings.TrimSpace(c)] = true
	}
	for _, ps := range ints(t, *flagScalePartitions) {
		sfx := uniq()
		topic, dlq := "usage-events-"+sfx, "usage-events-dlq-"+sfx
		kafkatest.CreateTopic(t, b.addrs, topic, int32(ps))
		kafkatest.CreateTopic(t, b.addrs, dlq, 1)
		n, prodTime := produce(t, b.addrs, topic, genConfig(*flagEvents, 1))
		for _, k := range ints(t, *flagScaleInstances) {
			name := fmt.Sprintf("%dx%d", ps, k)
			db := "bench_" + uniq()
			group := "usagepipe-" + uniq()
			bcpu0, chcpu0 := b.cpu(), procCPU(env.chPID)
			load0 := loadAvg()
			var procs []*proc
			for range k {
				procs = append(procs, startPipeline(t, pipelineArgs{brokers: b.addrs, topic: topic, dlq: dlq, group: group, db: db,
					metricsAddr: freeAddr(t), untilCaughtUp: true}))
			}
			ctx, cancel := context.WithTimeout(context.Background(), *flagRunTimeout)
			var wall, cpu time.Duration
			var rss float64
			var perProc []string
			for i, p := range procs {
				st := p.wait(ctx, t)
				wall = max(wall, st.wall)
				cpu += st.cpu()
				rss += float64(st.maxRSS) / (1 << 20)
				perProc = append(perProc, fmt.Sprintf("#%d %.1fs %.1f cpu-s %d MiB", i+1, st.wall.Seconds(), st.cpu().Seconds(), st.maxRSS>>20))
			}
			cancel()
			bcpu, chcpu := b.cpu()-bcpu0, procCPU(env.chPID)-chcpu0
			r := result{
				Test: "scale", Broker: kind, Events: n, Partitions: ps, Instances: k,
				WallS: wall.Seconds(), EventsPerS: float64(n) / wall.Seconds(),
				CPUNsEvent: float64(cpu.Nanoseconds()) / float64(n), MaxRSSMiB: rss,
				BrokerCPUNsEvent: float64(bcpu.Nanoseconds()) / float64(n), Produce: prodTime.Seconds(),
				Load: load0 + "→" + loadAvg(), Exact: "not checked",
				Extra: map[string]string{"broker": b.note, "processes": strings.Join(perProc, "; "), "max_rss_is": "sum of the processes' peaks"},
			}
			if env.chPID != 0 {
				r.CHCPUNsEvent = float64(chcpu.Nanoseconds()) / float64(n)
			}
			t.Logf("%s %s: %d events in %.2fs (%.0f/s), CPU %.0f ns/event, RSS %.0f MiB (%s)", kind, name, n, r.WallS, r.EventsPerS, r.CPUNsEvent, rss, r.Extra["processes"])
			if checks[name] && *flagCheck {
				r.Exact = checkExact(t, b.addrs, topic, db)
			}
			report(t, r)
			dropDatabase(t, db)
		}
	}
}

func ints(t *testing.T, s string) []int {
	t.Helper()
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v <= 0 {
			t.Fatalf("bad list %q: want positive integers", s)
		}
		out = append(out, v)
	}
	return out
}
