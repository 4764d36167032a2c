package ingest_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

// TestLiveRows: a running consumer serves its flushes through live rows
// (docs/design.md, "Live quarter"): with the periodic sweep an hour away,
// every batch reaches the readers and the accounts' greatest rows are live
// (stale to a strict sweep: a live row satisfies no mark). A stop leaves
// none of them as the greatest (the shutdown recomputes the cached
// accounts). A second run with a 1 s sweep confirms its own live rows
// while it runs: the strict sweep finds nothing once the stream is quiet,
// and the rows equal the reference.
//
// (Each run's first flush may land before the consumer's lag is known,
// and so be recomputed; the second is live.)
func TestLiveRows(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			logins := func(from, n int) { p.produceMinutes(from, n, 7, 13) }

			p.tweak = func(cfg *ingest.Config) { cfg.SweepInterval = time.Hour }
			reg := prometheus.NewRegistry()
			stop := p.start("g", reg)
			logins(0, 70)
			p.waitLogins(70)
			logins(70, 70)
			p.waitLogins(140)
			if n := counter(t, reg, "usagepipe_serve_live_rows_total"); n == 0 {
				t.Fatal("no live rows written")
			}
			if stale := p.servedStale(); len(stale) != 7 {
				t.Fatalf("accounts whose greatest row is live: %v, want all 7", stale)
			}
			stop()
			if stale := p.servedStale(); len(stale) != 0 {
				t.Fatalf("stale after a stop: %v (live rows left as the greatest)", stale)
			}
			p.wantLogins(140)

			p.tweak = func(cfg *ingest.Config) { cfg.SweepInterval = time.Second }
			reg = prometheus.NewRegistry()
			stop = p.start("g", reg)
			defer stop()
			logins(140, 70)
			p.waitLogins(210)
			logins(210, 70) // (the first flush may land before the lag is known)
			p.waitLogins(280)
			deadline := time.Now().Add(20 * time.Second)
			for len(p.servedStale()) > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("still stale 20 s after the stream stopped: %v", p.servedStale())
				}
				time.Sleep(200 * time.Millisecond)
			}
			if n := counter(t, reg, "usagepipe_serve_live_rows_total"); n == 0 {
				t.Fatal("no live rows written by the second run")
			}
			p.wantLogins(280)
		})
	}
}
