package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

// broker is a Kafka endpoint under test and a way to read its CPU time.
type broker struct {
	kind  string
	addrs []string
	cpu   func() time.Duration
	note  string
}

func brokerKinds() []string {
	var out []string
	for _, k := range strings.Split(*flagBrokers, ",") {
		if k = strings.TrimSpace(k); k != "" {
			out = append(out, k)
		}
	}
	return out
}

func startBroker(t *testing.T, kind string) broker {
	t.Helper()
	switch kind {
	case kafkatest.KindKfake:
		c := kafkatest.Kfake(t)
		return broker{kind: kind, addrs: c.ListenAddrs(), cpu: selfCPU, note: "in-process kfake; its CPU is the driver process's"}
	case kafkatest.KindApache:
		b := kafkatest.Apache(t)
		pid := findPID(func(cmdline []string, ppid int) bool {
			return ppid == os.Getpid() && strings.Contains(strings.Join(cmdline, " "), "kafka.Kafka")
		})
		if pid == 0 {
			t.Logf("Apache Kafka process not found: its CPU is not measured")
		}
		return broker{kind: kind, addrs: b.Addrs, cpu: func() time.Duration { return procCPU(pid) }, note: "Apache Kafka " + kafkatest.ApacheVersion()}
	}
	t.Fatalf("bench.brokers: unknown broker %q (want kfake or apache)", kind)
	return broker{}
}

// uniq is a fresh name suffix.
func uniq() string { return strconv.FormatInt(time.Now().UnixNano(), 36) }

func genConfig(events int, seed int64) gen.Config {
	return gen.Config{Seed: seed, Events: events, Accounts: *flagAccounts, Users: *flagUsers,
		BadRatio: *flagBadRatio, DupRatio: *flagDupRatio}
}

func producer(t *testing.T, addrs []string) *kgo.Client {
	t.Helper()
	// As `usagepipe gen`: zstd batches, keyed by account (default partitioner).
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ProducerBatchCompression(kgo.ZstdCompression()),
		kgo.ProducerBatchMaxBytes(16<<20), kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedBytes(256<<20))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// produce puts the records of cfg on topic and returns how many the broker
// acknowledged and how long it took.
func produce(t *testing.T, addrs []string, topic string, cfg gen.Config) (int, time.Duration) {
	t.Helper()
	cl := producer(t, addrs)
	defer cl.Close()
	start := time.Now()
	_, n, err := gen.Produce(context.Background(), cl, topic, gen.New(cfg), false)
	if err != nil {
		t.Fatalf("produce: %v", err)
	}
	return n, time.Since(start)
}

// warmFetch reads the whole topic once with a plain franz-go consumer
// before usagepipe and the peer are timed. A freshly started JVM broker
// spends its first fetches compiling its fetch path: whichever consumer
// came first paid for it (broker CPU 310 ns/event for a first usagepipe
// run against 120 for a second one on the same topic, and 0.5 s of wall).
// With the warm-up both meet the same warm broker.
func warmFetch(t *testing.T, kind string, addrs []string, topic string, n int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	read := 0
	for read < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("warm-up read: %d of %d records: %v", read, n, err)
		}
		read += fs.NumRecords()
	}
	t.Logf("%s: warm-up read of %d records (broker's fetch path, before timing) in %s", kind, read, time.Since(start).Round(time.Millisecond))
}

// TestE2E: N records on a fresh topic, one `usagepipe run --until-caught-up`
// process draining them into a fresh database, per broker kind.
func TestE2E(t *testing.T) {
	for _, kind := range brokerKinds() {
		t.Run(kind, func(t *testing.T) {
			b := startBroker(t, kind)
			sfx := uniq()
			topic, dlq, db := "usage-events-"+sfx, "usage-events-dlq-"+sfx, "bench_"+sfx
			kafkatest.CreateTopic(t, b.addrs, topic, int32(*flagPartitions))
			kafkatest.CreateTopic(t, b.addrs, dlq, 1)
			n, prodTime := produce(t, b.addrs, topic, genConfig(*flagEvents, 1))
			t.Logf("%s: produced %d records in %s (%.0f/s)", kind, n, prodTime.Round(time.Millisecond), float64(n)/prodTime.Seconds())
			defer dropDatabase(t, db)
			warmFetch(t, kind, b.addrs, topic, n)

			r := measureRun(t, b, pipelineArgs{brokers: b.addrs, topic: topic, dlq: dlq, group: "usagepipe-" + sfx, db: db,
				metricsAddr: freeAddr(t), untilCaughtUp: true}, n)
			r.Test, r.Broker, r.Partitions, r.Instances, r.Produce = "e2e", kind, *flagPartitions, 1, prodTime.Seconds()
			var peers []result
			if *flagPeer {
				// Right after usagepipe, on the same topic: same data, same
				// broker, as close in time (and machine load) as possible.
				for _, pc := range peerConfigs(t) {
					peer := runPeer(t, b, topic, n, pc)
					peer.Produce = prodTime.Seconds()
					ratio := fmt.Sprintf("%.2f", peer.WallS/r.WallS)
					peer.Extra["usagepipe_wall_s"] = fmt.Sprintf("%.2f", r.WallS)
					peer.Extra["peer_over_usagepipe_wall"] = ratio
					r.Extra["peer_over_usagepipe_wall "+peer.Extra["peer_config"]] = ratio
					t.Logf("%s: peer (%s) wall %.2fs / usagepipe wall %.2fs = %sx", kind, peer.Extra["peer_config"], peer.WallS, r.WallS, ratio)
					peers = append(peers, peer)
				}
			}
			r.Exact = "not checked"
			if *flagCheck {
				r.Exact = checkExact(t, b.addrs, topic, db)
			}
			report(t, r)
			for _, p := range peers {
				report(t, p)
			}
		})
	}
}

// measureRun runs one pipeline process to completion and measures it and
// the broker and ClickHouse over the same interval.
func measureRun(t *testing.T, b broker, a pipelineArgs, n int) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), *flagRunTimeout)
	defer cancel()
	bcpu0, chcpu0 := b.cpu(), procCPU(env.chPID)
	load0 := loadAvg()
	p := startPipeline(t, a)
	st := p.wait(ctx, t)
	bcpu, chcpu := b.cpu()-bcpu0, procCPU(env.chPID)-chcpu0
	startup, drain := logTimeline(p.logPath)
	r := result{
		Events: n, WallS: st.wall.Seconds(), EventsPerS: float64(n) / st.wall.Seconds(),
		CPUNsEvent: float64(st.cpu().Nanoseconds()) / float64(n),
		UserS:      st.user.Seconds(), SysS: st.sys.Seconds(), MaxRSSMiB: float64(st.maxRSS) / (1 << 20),
		BrokerCPUNsEvent: float64(bcpu.Nanoseconds()) / float64(n),
		Extra:            map[string]string{"broker": b.note, "ru_maxrss_mib": fmt.Sprint(st.ruMaxRSS >> 20)},
		Load:             load0 + "→" + loadAvg(),
	}
	if env.chPID != 0 {
		r.CHCPUNsEvent = float64(chcpu.Nanoseconds()) / float64(n)
	}
	if ss := p.rssSamples(); len(ss) > 0 {
		var tl []string
		for _, q := range []int{1, 2, 3, 4} {
			x := ss[min(len(ss)-1, len(ss)*q/4)]
			tl = append(tl, fmt.Sprintf("%.1fs:%dMiB", x.at.Seconds(), x.rss>>20))
		}
		r.Extra["rss_timeline"] = strings.Join(tl, " ")
	}
	if startup > 0 {
		r.Extra["startup_s"] = fmt.Sprintf("%.2f", startup.Seconds())
		r.Extra["drain_s"] = fmt.Sprintf("%.2f", drain.Seconds())
		r.Extra["drain_events_per_s"] = fmt.Sprintf("%.0f", float64(n)/drain.Seconds())
	}
	t.Logf("%s: %d events in %s wall (%.0f events/s), pipeline CPU %.0f ns/event (user %.1fs sys %.1fs), peak RSS %.0f MiB, broker CPU %.0f ns/event, ClickHouse CPU %.0f ns/event; startup %s, drain %s",
		b.kind, n, st.wall.Round(time.Millisecond), r.EventsPerS, r.CPUNsEvent, r.UserS, r.SysS, r.MaxRSSMiB, r.BrokerCPUNsEvent, r.CHCPUNsEvent,
		startup.Round(time.Millisecond), drain.Round(time.Millisecond))
	return r
}

// logTimeline reads the pipeline's text log: from process start to "usagepipe
// running" (connect, migrate, client set-up) and from there to "caught up".
func logTimeline(path string) (startup, drain time.Duration) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	var first, running, caught time.Time
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		ts, ok := logTime(line)
		if !ok {
			continue
		}
		if first.IsZero() {
			first = ts
		}
		switch {
		case strings.Contains(line, `msg="usagepipe running"`):
			running = ts
		case strings.Contains(line, `msg="caught up"`):
			caught = ts
		}
	}
	if running.IsZero() || caught.IsZero() {
		return 0, 0
	}
	return running.Sub(first), caught.Sub(running)
}

func logTime(line string) (time.Time, bool) {
	v, ok := strings.CutPrefix(line, "time=")
	if !ok {
		return time.Time{}, false
	}
	if i := strings.IndexByte(v, ' '); i > 0 {
		v = v[:i]
	}
	ts, err := time.Parse(time.RFC3339Nano, v)
	return ts, err == nil
}
