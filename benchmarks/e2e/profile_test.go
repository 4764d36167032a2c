package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/store"
)

var (
	flagFetchMax     = flag.Int("bench.fetch-max-bytes", 0, "TestProfile: override the pipeline's kgo.FetchMaxBytes (0: keep its default)")
	flagFetchPartMax = flag.Int("bench.fetch-max-partition-bytes", 0, "TestProfile: override the pipeline's kgo.FetchMaxPartitionBytes (0: keep its default)")
)

// TestProfile runs the pipeline in this process — what `usagepipe run
// --until-caught-up` runs, minus flag parsing and the metrics server —
// under the CPU profiler. Every goroutine the pipeline starts carries the
// profiler label pipeline=usagepipe (labels are inherited), so
//
//	go tool pprof -tagfocus=pipeline=usagepipe cpu.pprof
//
// shows the pipeline alone and -tagignore=pipeline=usagepipe the broker
// (kfake serves from this process) and the driver. Heap profiles are taken
// whenever the heap reaches a new high; heap.pprof is the largest.
func TestProfile(t *testing.T) {
	kind := brokerKinds()[0]
	b := startBroker(t, kind)
	sfx := uniq()
	topic, dlq, db := "usage-events-"+sfx, "usage-events-dlq-"+sfx, "bench_"+sfx
	kafkatest.CreateTopic(t, b.addrs, topic, int32(*flagPartitions))
	kafkatest.CreateTopic(t, b.addrs, dlq, 1)
	n, _ := produce(t, b.addrs, topic, genConfig(*flagEvents, 1))
	defer dropDatabase(t, db)

	dir := *flagProfileDir
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	reg := prometheus.NewRegistry()
	st, err := store.Open(ctx, store.Config{Addr: []string{env.chAddr}, Database: db}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db}, nil); err != nil {
		t.Fatal(err)
	}
	cfg := ingest.Defaults()
	cfg.Brokers, cfg.Topic, cfg.DLQTopic, cfg.Group = b.addrs, topic, dlq, "usagepipe-"+sfx
	cfg.UntilCaughtUp = true

	runtime.GC()
	cpuFile, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	defer cpuFile.Close()
	// Heap profiles: every 500 ms, when the heap is larger than ever
	// before, the in-use profile (as of the last GC) is kept: heap.pprof is
	// the state at its largest (interner, dedup sets, pending facts, fetch
	// buffers).
	var heapMu sync.Mutex
	var lastHeap bytes.Buffer
	var peakHeap uint64
	stopHeap := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // heap snapshots; stopped below
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-stopHeap:
				return
			case <-tick.C:
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse <= peakHeap {
				continue
			}
			peakHeap = ms.HeapInuse
			heapMu.Lock()
			lastHeap.Reset()
			_ = pprof.WriteHeapProfile(&lastHeap)
			heapMu.Unlock()
		}
	})
	var extra []kgo.Opt
	if *flagFetchMax > 0 {
		extra = append(extra, kgo.FetchMaxBytes(int32(*flagFetchMax)))
	}
	if *flagFetchPartMax > 0 {
		extra = append(extra, kgo.FetchMaxPartitionBytes(int32(*flagFetchPartMax)))
	}

	if err := pprof.StartCPUProfile(cpuFile); err != nil {
		t.Fatal(err)
	}
	cpu0 := selfCPU()
	start := time.Now()
	pprof.Do(ctx, pprof.Labels("pipeline", "usagepipe"), func(ctx context.Context) {
		c, err := ingest.New(cfg, st, nil, reg, extra...)
		if err != nil {
			t.Error(err)
			return
		}
		if err := c.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	wall, cpu := time.Since(start), selfCPU()-cpu0
	pprof.StopCPUProfile()
	close(stopHeap)
	wg.Wait()
	if t.Failed() {
		return
	}
	heapMu.Lock()
	if err := os.WriteFile(filepath.Join(dir, "heap.pprof"), lastHeap.Bytes(), 0o644); err != nil {
		t.Error(err)
	}
	heapMu.Unlock()
	t.Logf("in-process pipeline: %d events in %s (%.0f events/s); process CPU (pipeline + %s) %.0f ns/event; peak Go heap in use %.0f MiB, process peak RSS %.0f MiB (with kfake: its stored records too); fetch max bytes %d, per partition %d (0: pipeline default); profiles in %s",
		n, wall.Round(time.Millisecond), float64(n)/wall.Seconds(), kind, float64(cpu.Nanoseconds())/float64(n),
		float64(peakHeap)/(1<<20), float64(procHWM(os.Getpid()))/(1<<20), *flagFetchMax, *flagFetchPartMax, dir)
	t.Logf("pipeline metrics at the end: %s", summarizeMetrics(t, reg))
	t.Logf("go tool pprof -top -tagfocus=pipeline=usagepipe %s", filepath.Join(dir, "cpu.pprof"))
}

// summarizeMetrics prints the counters that say how much work a run did:
// flushes, rows written per fact table, records consumed.
func summarizeMetrics(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, mf := range mfs {
		switch mf.GetName() {
		case "usagepipe_clickhouse_rows_written_total", "usagepipe_flushes_total", "usagepipe_records_consumed_total":
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			name := strings.TrimPrefix(mf.GetName(), "usagepipe_")
			for _, l := range m.GetLabel() {
				name += "{" + l.GetValue() + "}"
			}
			out = append(out, fmt.Sprintf("%s=%.0f", name, m.GetCounter().GetValue()))
		}
	}
	return strings.Join(out, " ")
}
