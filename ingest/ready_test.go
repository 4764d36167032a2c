package ingest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagepipe/usagepipe/aggregate"
	"github.com/usagepipe/usagepipe/ingest/dedup"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

// TestLagKnownThroughRebalances walks one member through the assignments a
// cooperative group gives it and checks when its lag counts as known (the
// serve loop takes it for caught up only then): never between an
// assignment and the set-up of every partition it gave (AdjustFetchOffsets,
// simulated here), and with no partition at all only after an assignment
// said so.
func TestLagKnownThroughRebalances(t *testing.T) {
	const topic = "events"
	c := &Consumer{
		cfg:     Config{Topic: topic},
		m:       newMetrics(prometheus.NewRegistry()),
		parts:   map[int32]*partState{},
		owned:   map[int32]bool{},
		workers: []*worker{{agg: aggregate.New(topic)}},
	}
	setUp := func(ps ...int32) { // what adjustOffsets does, hwm listed
		for _, p := range ps {
			c.parts[p] = &partState{p: p, hwm: 10, hwmKnown: true, next: -1, dedup: dedup.New(time.Hour)}
			c.owned[p] = true
		}
	}
	assign := func(ps ...int32) {
		c.mu.Unlock()
		c.onAssigned(context.Background(), nil, map[string][]int32{topic: ps, "other": {7}})
		c.mu.Lock()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range []struct {
		step  string
		do    func()
		known bool
	}{
		{"before any assignment", func() {}, false},
		{"assigned 0 and 1, not set up", func() { assign(0, 1) }, false},
		{"0 set up, 1 not yet", func() { setUp(0) }, false},
		{"both set up", func() { setUp(1) }, true},
		{"2 more assigned (cooperative: only the new one)", func() { assign(2) }, false},
		{"2 set up", func() { setUp(2) }, true},
		{"a partition not yet fetched", func() { c.parts[2].hwmKnown = false }, false},
		{"fetched", func() { c.parts[2].hwmKnown = true }, true},
		{"1 and 2 revoked", func() { c.drop([]int32{1, 2}) }, true},
		{"0 revoked too: none until the next assignment", func() { c.drop([]int32{0}) }, false},
		{"an assignment that gives none", func() { assign() }, true},
		{"3 and 4 assigned", func() { assign(3, 4) }, false},
		{"3 dropped by franz-go before set-up, 4 set up", func() {
			setUp(4)
			c.forgetUnset() // as adjustOffsets does after setting up
		}, true},
	} {
		s.do()
		c.updateReady()
		if got := c.lagKnown.Load(); got != s.known {
			t.Fatalf("%s: lag known %v, want %v (owned %v, %d set up)", s.step, got, s.known, c.owned, len(c.parts))
		}
	}
}

// TestReadyBeforeRun: franz-go joins the group as soon as New made the
// client, so the lag can be known before Run starts. The stall clock
// starts in New: /readyz then says ok, and once the stall timeout passed
// without a flush it names a stall as long as the process has been up
// (before the fix: "no flush for 491000h", counted from the epoch).
func TestReadyBeforeRun(t *testing.T) {
	cl := kafkatest.Kfake(t)
	cfg := Defaults()
	cfg.FiscalStartMonth = 1
	cfg.Brokers, cfg.Topic, cfg.DLQTopic, cfg.Group = cl.ListenAddrs(), "events", "events-dlq", "g"
	cfg.ReadyStallTimeout = 200 * time.Millisecond
	c, err := New(cfg, liveStore(t), nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer c.cl.Close()
	c.totalLag.Store(100) // what updateReady stores once an assignment's offsets are set up
	if ok, why := c.Ready(); !ok || why != "ok" {
		t.Fatalf("right after New with lag: ready %v %q, want ok", ok, why)
	}
	time.Sleep(400 * time.Millisecond)
	ok, why := c.Ready()
	const prefix = "lag 100 records and no flush for "
	if ok || !strings.HasPrefix(why, prefix) {
		t.Fatalf("past the stall timeout: ready %v %q, want not ready, %q…", ok, why, prefix)
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(why, prefix)); err != nil || d > time.Minute {
		t.Fatalf("stall %q: want the time since New (< 1m), got %v (%v)", why, d, err)
	}
}
