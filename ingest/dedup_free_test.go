package ingest_test

import (
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/ingest/dedup"
	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

// TestPartitionsFreeTheirDedupTables checks that a consumer unmaps its
// partitions' dedup tables when it lets the partitions go (here when Run
// ends and the client leaves the group), not later when the garbage
// collector finds them: the collector is off during the run, so only the
// consumer can lower dedup.MappedBytes.
func TestPartitionsFreeTheirDedupTables(t *testing.T) {
	b := kafkatest.Brokers(t)[0] // kfake
	p := newPipeline(t, b, 1)
	// ~40k records per partition: each partition's table is sized for its
	// backlog, 2^16 slots or more (≥ 1.5 MiB), and mapped.
	p.produce(gen.Config{Seed: 11, Events: 160_000, Accounts: 400, Users: 8_000, Features: 12, Quarters: 2})

	// Earlier tests' unreachable Sets are unmapped by cleanups after a GC;
	// let those finish first, or one landing during the run could hide a
	// table of this run that stays mapped.
	runtime.GC()
	for prev, deadline := int64(-1), time.Now().Add(5*time.Second); prev != dedup.MappedBytes() && time.Now().Before(deadline); {
		prev = dedup.MappedBytes()
		time.Sleep(50 * time.Millisecond)
	}
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	before := dedup.MappedBytes()
	var (
		peak int64
		stop = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			peak = max(peak, dedup.MappedBytes())
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	p.run("g-free")
	close(stop)
	wg.Wait()
	p.check()

	if peak-before < 1<<20 {
		t.Fatalf("the dedup tables mapped at most %d bytes during the run; want ≥ 1 MiB to test their release", peak-before)
	}
	if after := dedup.MappedBytes(); after > before {
		t.Fatalf("%d bytes of dedup tables still mapped after the consumer let its partitions go (%d before the run, %d at the peak)", after-before, before, peak)
	}
}
