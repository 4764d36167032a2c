package main

import (
	"context"
	"runtime/debug"
	"time"

	"github.com/oklog/run"

	"github.com/usagepipe/usagepipe/ingest/dedup"
)

// addMemLimit adds followMemLimit to g as an actor that ends only when the
// group interrupts it. Its context is deliberately not the process's: on
// SIGTERM it must not be the first actor to return, which would end the
// group with nil and interrupt the consumer's final flush and the metrics
// server early, and hide a failed flush behind exit status 0.
func addMemLimit(g *run.Group, base int64) {
	ctx, stop := context.WithCancel(context.Background())
	g.Add(func() error { followMemLimit(ctx, base); return nil }, func(error) { stop() })
}

// heapLimit is the Go heap's memory limit that keeps the whole process
// within base (GOMEMLIMIT) while the duplicate filter's tables, which live
// outside the Go heap, take mapped bytes. It never goes below a quarter of
// base: past that the process is short of memory whatever the GC does.
func heapLimit(base, mapped int64) int64 { return max(base-mapped, base/4) }

// followMemLimit keeps GOMEMLIMIT (base, set) a limit for the whole
// process: every second it lowers the Go runtime's limit by
// dedup.MappedBytes(). It returns when ctx ends, restoring base.
func followMemLimit(ctx context.Context, base int64) {
	defer debug.SetMemoryLimit(base)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		debug.SetMemoryLimit(heapLimit(base, dedup.MappedBytes()))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
