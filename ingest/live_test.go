package ingest_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/store"
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

// failLive is a store whose serve loop's live INSERTs fail while armed
// (recomputes, which are INSERT … SELECT statements, still work).
type failLive struct {
	*store.Store
	conn *failConn
}

func (w failLive) Topology() *schema.Topology { return schema.SingleServer(w.conn) }

type failConn struct {
	driver.Conn
	armed atomic.Bool
	fired atomic.Int32
}

func (c *failConn) PrepareBatch(ctx context.Context, q string, opts ...driver.PrepareBatchOption) (driver.Batch, error) {
	if c.armed.Load() && strings.Contains(q, ".served_rollups ") {
		c.fired.Add(1)
		return nil, errors.New("injected: live INSERT failed")
	}
	return c.Conn.PrepareBatch(ctx, q, opts...)
}

// TestLiveRoundFails: while live INSERTs fail (each failure drops the
// cache), the marks the live loop answered for go back to the recompute
// loop, so the readers still get every batch, and a stop leaves no live
// row as the greatest.
func TestLiveRoundFails(t *testing.T) {
	b := kafkatest.Brokers(t)[0] // kfake
	p := newRealTopic(t, b)
	conn := &failConn{}
	p.tweak = func(cfg *ingest.Config) { cfg.SweepInterval = time.Hour }
	p.writer = func(w ingest.Writer) ingest.Writer {
		st := w.(*store.Store)
		conn.Conn = st.Conn()
		return failLive{st, conn}
	}
	reg := prometheus.NewRegistry()
	stop := p.start("g", reg)
	logins := func(from, n int) { p.produceMinutes(from, n, 7, 13) }
	logins(0, 70)
	p.waitLogins(70)
	logins(70, 70)
	p.waitLogins(140)
	if counter(t, reg, "usagepipe_serve_live_rows_total") == 0 {
		t.Fatal("no live rows written before the failures")
	}
	conn.armed.Store(true)
	logins(140, 70)
	p.waitLogins(210) // recomputed: the marks came back
	if conn.fired.Load() == 0 || counter(t, reg, "usagepipe_serve_live_errors_total") == 0 {
		t.Fatalf("live INSERTs failed %d times, live errors %v: the test would prove nothing", conn.fired.Load(), counter(t, reg, "usagepipe_serve_live_errors_total"))
	}
	stop()
	if stale := p.servedStale(); len(stale) != 0 {
		t.Fatalf("stale after a stop: %v (live rows left as the greatest)", stale)
	}
	p.wantLogins(210)
}
