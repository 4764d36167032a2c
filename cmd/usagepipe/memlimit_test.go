package main

import (
	"context"
	"errors"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/oklog/run"

	"github.com/usagepipe/usagepipe/ingest/dedup"
)

func TestHeapLimit(t *testing.T) {
	for _, c := range []struct{ base, mapped, want int64 }{
		{800 << 20, 0, 800 << 20},
		{800 << 20, 96 << 20, 704 << 20},
		{800 << 20, 700 << 20, 200 << 20}, // a quarter of base at least
		{800 << 20, 2 << 30, 200 << 20},
	} {
		if got := heapLimit(c.base, c.mapped); got != c.want {
			t.Errorf("heapLimit(%d, %d) = %d, want %d", c.base, c.mapped, got, c.want)
		}
	}
}

// TestFollowMemLimit runs followMemLimit with a 48 MiB dedup table mapped
// and checks the runtime's limit is base minus the mapped bytes, and base
// again after it returns.
func TestFollowMemLimit(t *testing.T) {
	const base = 1 << 30
	old := debug.SetMemoryLimit(base)
	defer debug.SetMemoryLimit(old)
	s := dedup.New(time.Hour)
	s.Reserve(1 << 20) // 2^21 slots of 24 bytes
	const table = 48 << 20
	if m := dedup.MappedBytes(); m < table {
		t.Fatalf("MappedBytes = %d with a 2^21-slot table", m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { followMemLimit(ctx, base); close(done) }()
	// Other tests' Sets may be unmapped meanwhile (their cleanups): wait
	// for the limit to be base minus the mappings of the moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		lim, m := debug.SetMemoryLimit(-1), dedup.MappedBytes()
		if lim == base-m && lim <= base-table {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("memory limit %d, want %d - %d (mapped) ≤ %d", lim, int64(base), m, int64(base-table))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if got := debug.SetMemoryLimit(-1); got != base {
		t.Fatalf("memory limit %d after followMemLimit returned, want %d", got, int64(base))
	}
	runtime.KeepAlive(s)
}

// TestMemLimitActorWaitsForTheGroup checks the memory-limit actor does not
// end the run group when the process's context ends: the consumer's final
// flush decides how the group ends, here with an error, and the limit is
// restored only after that.
func TestMemLimitActorWaitsForTheGroup(t *testing.T) {
	const base = 1 << 30
	old := debug.SetMemoryLimit(base)
	defer debug.SetMemoryLimit(old)
	ctx, sigterm := context.WithCancel(context.Background())
	errFlush := errors.New("final flush failed")
	var g run.Group
	runCtx, cancel := context.WithCancel(ctx)
	g.Add(func() error {
		<-runCtx.Done()
		time.Sleep(50 * time.Millisecond) // the final flush
		return errFlush
	}, func(error) { cancel() })
	addMemLimit(&g, base)
	go sigterm()
	if err := g.Run(); !errors.Is(err, errFlush) {
		t.Fatalf("group ended with %v, want the consumer's %v", err, errFlush)
	}
	if got := debug.SetMemoryLimit(-1); got != base {
		t.Fatalf("memory limit %d after the group ended, want %d", got, int64(base))
	}
}
