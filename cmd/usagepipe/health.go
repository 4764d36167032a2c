package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/usagepipe/usagepipe/ingest"
)

// health serves /metrics, /healthz and /readyz from the moment the metrics
// address is open, before ClickHouse answers: a process that waits for
// ClickHouse, for an older release's instances to leave the group, or for
// migrate's backfill of the served rows is alive (liveness answers, so an
// orchestrator does not restart it in a loop) but not ready (/readyz says
// what it waits for). Its serving goroutine is owned by stop.
type health struct {
	srv     *http.Server
	phase   atomic.Value // string: what startup waits for
	cons    atomic.Pointer[ingest.Consumer]
	stopped chan struct{} // closed when Serve returned
	err     error         // Serve's error (not ErrServerClosed), set before stopped closes

	// During startup, usagepipe_ready (0) and usagepipe_clickhouse_up stand
	// in for the consumer's, so that an instance stuck starting alerts
	// (UsagepipeNotReady) instead of scraping as up with no readiness.
	reg         *prometheus.Registry
	ready, chUp prometheus.Gauge
}

// startHealth serves on ln; nil when ln is nil (metrics off).
func startHealth(ln net.Listener, reg *prometheus.Registry) *health {
	if ln == nil {
		return nil
	}
	h := &health{stopped: make(chan struct{}), reg: reg,
		ready: prometheus.NewGauge(ingest.ReadyGaugeOpts),
		chUp:  prometheus.NewGauge(ingest.ClickHouseUpGaugeOpts),
	}
	reg.MustRegister(h.ready, h.chUp)
	h.phase.Store("starting")
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := false, "starting: "+h.phase.Load().(string)
		if c := h.cons.Load(); c != nil {
			ok, why = c.Ready()
		}
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	h.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(h.stopped)
		if err := h.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			h.err = err
		}
	}()
	return h
}

// starting records what startup waits for now (shown by /readyz).
func (h *health) starting(what string) {
	if h != nil {
		h.phase.Store(what)
	}
}

// clickHouseUp records that startup reached ClickHouse.
func (h *health) clickHouseUp() {
	if h != nil {
		h.chUp.Set(1)
	}
}

// handOver drops the startup gauges, just before the consumer registers
// its own.
func (h *health) handOver() {
	if h != nil {
		h.reg.Unregister(h.ready)
		h.reg.Unregister(h.chUp)
	}
}

// running hands readiness to the consumer.
func (h *health) running(c *ingest.Consumer) {
	if h != nil {
		h.cons.Store(c)
	}
}

// addTo adds the server to g as an actor that ends when the server fails
// (then the group stops) or when the group interrupts it. Like addMemLimit,
// its context is deliberately not the process's: on SIGTERM it must not be
// the first actor to return, which would end the group with nil and hide
// the consumer's failed final flush behind exit status 0
// (TestHealthActorKeepsRunsError). stop shuts the server down after the
// group, so /metrics answers during the final flush.
func (h *health) addTo(g *run.Group) {
	if h == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.Add(func() error {
		select {
		case <-ctx.Done():
			return nil
		case <-h.stopped:
			if h.err != nil {
				return fmt.Errorf("metrics server: %w", h.err)
			}
			return errors.New("metrics server stopped")
		}
	}, func(error) { cancel() })
}

// stop shuts the server down (waiting up to 5 s for requests in flight)
// and waits for its goroutine.
func (h *health) stop() {
	if h == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil {
		h.srv.Close()
	}
	<-h.stopped
}
