package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagepipe/usagepipe/aggregate"
	"github.com/usagepipe/usagepipe/ingest/dedup"
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
