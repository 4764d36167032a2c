package main

import (
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/reference"
)

// TestRefWindow: gen's and demo's expected rollups follow the pipeline's
// --dedup-window 0 (same timestamp only), not the reference's default of
// 24h for a zero window.
func TestRefWindow(t *testing.T) {
	rec := func(off, ts int64) reference.Record {
		return reference.Record{Topic: "t", Offset: off, TimestampMs: ts,
			Value: []byte(`{"event_id":"e1","type":"login","account_id":"a","user_id":"u","occurred_at":"2026-05-01T00:00:00Z"}`)}
	}
	const ts = 1777593600000 // 2026-05-01T00:00:00Z
	for _, c := range []struct {
		window time.Duration
		dups   int
	}{{0, 0}, {time.Millisecond, 1}, {24 * time.Hour, 1}} {
		res := reference.Compute([]reference.Record{rec(0, ts), rec(1, ts+1)}, reference.Options{DedupWindow: refWindow(c.window)})
		if res.Duplicates != c.dups || res.Accepted != 2-c.dups {
			t.Errorf("--dedup-window %v: %d accepted, %d duplicates; want %d duplicates", c.window, res.Accepted, res.Duplicates, c.dups)
		}
	}
}
