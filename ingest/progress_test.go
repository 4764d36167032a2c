package ingest_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chtest"
	"github.com/usagepipe/usagepipe/schema/store"
)

// logCapture is a slog.Handler that keeps every record's message and
// attributes, and closes sawProgress at the first "progress" line that
// reports records left.
type logCapture struct {
	mu          sync.Mutex
	lines       []logLine
	once        sync.Once
	sawProgress chan struct{}
	onceWait    sync.Once
	sawWaiting  chan struct{} // closed at the first "progress" line that says what it waits for (if not nil)
}

type logLine struct {
	msg   string
	attrs map[string]slog.Value
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCapture) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logCapture) WithGroup(string) slog.Handler            { return h }

func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	l := logLine{msg: r.Message, attrs: map[string]slog.Value{}}
	r.Attrs(func(a slog.Attr) bool {
		l.attrs[a.Key] = a.Value.Resolve()
		return true
	})
	h.mu.Lock()
	h.lines = append(h.lines, l)
	h.mu.Unlock()
	if l.msg == "progress" && l.attrs["records_left"].Int64() > 0 {
		h.once.Do(func() { close(h.sawProgress) })
	}
	if l.msg == "progress" && strings.HasPrefix(l.attrs["waiting_for"].String(), "the last writes") && h.sawWaiting != nil {
		h.onceWait.Do(func() { close(h.sawWaiting) })
	}
	return nil
}

// find returns the lines with message msg, or all lines if msg is "".
func (h *logCapture) find(msg string) []logLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logLine
	for _, l := range h.lines {
		if msg == "" || l.msg == msg {
			out = append(out, l)
		}
	}
	return out
}

// gatedWriter holds the first flush until the run has logged a progress
// line with records left, so that the backlog outlasts at least one tick
// however fast the machine is.
type gatedWriter struct {
	*store.Store
	gate     <-chan struct{}
	deadline time.Time // then the flushes go on, and the test fails: no progress line
}

func (w gatedWriter) Write(ctx context.Context, f *schema.Facts) error {
	select {
	case <-w.gate:
	case <-time.After(time.Until(w.deadline)):
	case <-ctx.Done():
		return ctx.Err()
	}
	return w.Store.Write(ctx, f)
}

// TestProgressAndSummary: a run with a backlog logs progress lines (records
// done, rate, records left, time left) and ends with a summary whose counts
// are the reference's.
func TestProgressAndSummary(t *testing.T) {
	b := kafkatest.Brokers(t)[0]
	p := newPipeline(t, b, 1)
	p.produce(gen.Config{Seed: 14, Events: 20_000, Accounts: 100, Users: 2_000, Features: 10, Quarters: 2, BadRatio: 0.02, DupRatio: 0.03})

	logs := &logCapture{sawProgress: make(chan struct{})}
	// A flush after every poll: the second poll waits for the first flush,
	// which waits for a progress line, with at most 2,000 of the 20,000
	// records read.
	p.runLogged("g-progress", logs, logs.sawProgress, func(cfg *ingest.Config) { cfg.MaxPollRecords, cfg.MaxPendingFacts = 1000, 1 })
	want := p.check()

	progress := logs.find("progress")
	if len(progress) == 0 {
		for _, l := range logs.find("") {
			t.Logf("%s %v", l.msg, l.attrs)
		}
		t.Fatal("no progress line")
	}
	first := progress[0].attrs
	for _, k := range []string{"records_done", "rate_per_s", "records_left", "eta"} {
		if _, ok := first[k]; !ok {
			t.Errorf("progress line lacks %s: %v", k, first)
		}
	}
	var backlog bool
	for _, l := range progress {
		backlog = backlog || l.attrs["records_left"].Int64() > 0 && l.attrs["records_done"].Uint64() > 0 && l.attrs["eta"].String() != ""
	}
	if !backlog {
		t.Errorf("no progress line with records done and left: %v", progress)
	}

	summary := logs.find("run summary")
	if len(summary) != 1 {
		t.Fatalf("%d summary lines, want 1", len(summary))
	}
	s := summary[0].attrs
	f := func(key string, want uint64) {
		t.Helper()
		if got := s[key].Uint64(); got != want {
			t.Errorf("summary %s = %d, want %d", key, got, want)
		}
	}
	f("records", uint64(len(p.produced)))
	f("accepted", uint64(want.Accepted))
	f("rejected", uint64(len(want.Rejected)))
	f("duplicates", uint64(want.Duplicates))
	if s["wall_time"].Duration() <= 0 || s["rate_per_s"].Int64() <= 0 {
		t.Errorf("summary wall_time %v, rate_per_s %v", s["wall_time"], s["rate_per_s"])
	}
	t.Logf("%d progress lines, first %v; summary %v", len(progress), first, s)
}

// TestProgressWhileWriting: an --until-caught-up run that has read every
// record but still waits for its writes (here held until it says so; in
// life ClickHouse down, or the final served rows) goes on logging progress
// lines, records left 0, saying what it waits for. Before, its log was
// silent from the last record read until the exit.
func TestProgressWhileWriting(t *testing.T) {
	b := kafkatest.Brokers(t)[0]
	p := newPipeline(t, b, 1)
	p.produce(gen.Config{Seed: 15, Events: 500, Accounts: 10, Users: 50, Features: 5, Quarters: 1})

	logs := &logCapture{sawProgress: make(chan struct{}), sawWaiting: make(chan struct{})}
	p.runLogged("g-progress-writing", logs, logs.sawWaiting, nil)
	p.check()
	select {
	case <-logs.sawWaiting:
	default:
		t.Fatal("no progress line while the run waited for its writes (the writes went on after 20 s)")
	}
	for _, l := range logs.find("progress") {
		if strings.HasPrefix(l.attrs["waiting_for"].String(), "the last writes") && (l.attrs["records_left"].Int64() != 0 || l.attrs["records_done"].Uint64() == 0) {
			t.Errorf("waiting progress line %v: want records_left 0 and records done", l.attrs)
		}
	}
}

// runLogged runs an --until-caught-up consumer in a new database of p
// (progress every 10 ms, logs to logs, tweak applied to its settings),
// whose writes wait for gate (at most 20 s), until it exits.
func (p *pipeline) runLogged(group string, logs *logCapture, gate <-chan struct{}, tweak func(*ingest.Config)) {
	t := p.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := store.Open(ctx, store.Config{Addr: []string{chtest.Addr()}, Database: p.db}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: p.db, FiscalStartMonth: p.fiscal}, nil); err != nil {
		t.Fatal(err)
	}
	cfg := ingest.Defaults()
	cfg.FiscalStartMonth = p.fiscal
	cfg.Brokers, cfg.Topic, cfg.DLQTopic, cfg.Group = p.brokers, p.topic, p.dlq, group
	cfg.UntilCaughtUp = true
	cfg.ProgressInterval = 10 * time.Millisecond
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := ingest.New(cfg, gatedWriter{Store: st, gate: gate, deadline: time.Now().Add(20 * time.Second)}, slog.New(logs), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx); err != nil {
		t.Fatalf("run: %v", err)
	}
}
