package ingest

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// progress logs how a run advances (contract section 5): every
// Config.ProgressInterval while there is a backlog (in an --until-caught-up
// run, until it exits), a "progress" line with
// the records done, the rate over the interval, the records left (the lag
// to the last stable offset of the partitions this instance owns) and an
// estimate of the time left; and when the run ends, one "run summary" line.
//
// It costs nothing per record: each tick reads the metrics the poll loop
// keeps anyway, usagepipe_records_consumed_total and
// usagepipe_consumer_lag_records{partition} (both set as each partition's
// records of a poll are done, so they agree with each other).
//
// Run owns it: startProgress starts its goroutine, stop ends it, waits for
// it and logs the summary.
type progress struct {
	c      *Consumer
	start  time.Time
	stopCh chan struct{}
	wg     sync.WaitGroup

	// Touched by the goroutine only.
	lastDone uint64
	lastAt   time.Time
	lastLeft int64 // records left as of the last line logged
}

func (c *Consumer) startProgress() *progress {
	now := time.Now()
	p := &progress{c: c, start: now, lastAt: now, stopCh: make(chan struct{})}
	p.wg.Go(p.loop)
	return p
}

func (p *progress) loop() {
	t := time.NewTicker(p.c.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stopCh:
			return
		case now := <-t.C:
			p.tick(now)
		}
	}
}

// tick logs a progress line while records are left, and once more when
// the backlog has just been worked off. An --until-caught-up run logs one
// every tick until it exits: after the last record is read it may still
// wait for its writes (ClickHouse down) and the served rows, and says so.
func (p *progress) tick(now time.Time) {
	done := counterValue(p.c.m.consumed)
	left := gaugeSum(p.c.m.lag)
	if left <= 0 && p.lastLeft <= 0 {
		if p.c.cfg.UntilCaughtUp {
			// (No lag known yet: the group has not assigned the
			// partitions, or their positions are being restored.)
			waiting := "the consumer group's assignment"
			if p.c.lagKnown.Load() {
				waiting = "the last writes to ClickHouse and the served rows"
			}
			p.c.log.Info("progress", "records_done", done, "rate_per_s", 0, "records_left", 0, "eta", "unknown", "waiting_for", waiting)
		}
		p.lastDone, p.lastAt = done, now
		return
	}
	rate := float64(done-p.lastDone) / now.Sub(p.lastAt).Seconds()
	eta := "unknown" // nothing read in the interval: waiting for ClickHouse, a rebalance, or a replay
	switch {
	case left <= 0:
		eta = "0s"
	case rate > 0:
		d := time.Duration(float64(left) / rate * float64(time.Second))
		eta = max(d.Round(time.Second), time.Second).String()
	}
	p.c.log.Info("progress", "records_done", done, "rate_per_s", int64(rate), "records_left", max(left, 0), "eta", eta)
	p.lastDone, p.lastAt, p.lastLeft = done, now, left
}

// stop ends the goroutine, waits for it and logs the run summary. Call it
// once, after the last flush.
func (p *progress) stop() {
	close(p.stopCh)
	p.wg.Wait()
	m := p.c.m
	var accepted, rejected uint64
	for _, c := range m.accepted {
		accepted += counterValue(c)
	}
	for _, c := range m.rejected {
		rejected += counterValue(c)
	}
	records := counterValue(m.consumed)
	wall := time.Since(p.start)
	p.c.log.Info("run summary", "records", records, "accepted", accepted, "rejected", rejected,
		"duplicates", counterValue(m.duplicates), "wall_time", wall.Round(time.Millisecond),
		"rate_per_s", int64(float64(records)/max(wall.Seconds(), 1e-3)))
}

// gaugeSum adds up the gauges of v.
func gaugeSum(v *prometheus.GaugeVec) int64 {
	ch := make(chan prometheus.Metric, 16)
	go func() {
		v.Collect(ch)
		close(ch)
	}()
	var sum float64
	for m := range ch { // until Collect is done
		var d dto.Metric
		if m.Write(&d) == nil {
			sum += d.GetGauge().GetValue()
		}
	}
	return int64(sum)
}

// counterValue reads a counter (registered or not).
func counterValue(c prometheus.Counter) uint64 {
	if c == nil {
		return 0
	}
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return 0
	}
	return uint64(d.GetCounter().GetValue())
}
