package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/schema"
)

type genSettings struct {
	kafka        kafkaSettings
	log          logSettings
	cfg          gen.Config
	start        string
	partitions   int
	expectedOut  string
	fiscalStart  int
	maxClockSkew time.Duration
	dedupWindow  time.Duration
}

func (g *genSettings) register(f *flags) {
	g.kafka.register(f, false)
	g.log.register(f)
	f.int64v(&g.cfg.Seed, "seed", 1, "random seed: the same seed and sizes give the same records")
	f.intv(&g.cfg.Events, "events", 100_000, "records to produce (--edge-cases adds its few dozen hard cases)")
	f.intv(&g.cfg.Accounts, "accounts", 300, "distinct accounts")
	f.intv(&g.cfg.Users, "users", 10_000, "distinct users (about; the realistic population's shapes need about 10 events per user)")
	f.str(&g.cfg.Population, "population", gen.PopulationRealistic, "realistic (a customer base: a handful to thousands of seats, under-assigned, low-activation, growing and shrinking accounts) or uniform (every account alike; what the benchmarks use)")
	f.intv(&g.cfg.Features, "features", 40, "distinct features")
	f.intv(&g.cfg.Quarters, "quarters", 2, "calendar quarters the occurred_at values span")
	f.str(&g.start, "start", "2026-01-01T00:00:00Z", "first occurred_at (RFC 3339)")
	f.float(&g.cfg.BadRatio, "bad-ratio", 0, "share of invalid records (cycling through every rejection reason)")
	f.float(&g.cfg.DupRatio, "dup-ratio", 0, "share of re-sent duplicates")
	f.boolv(&g.cfg.EdgeCases, "edge-cases", false, "add the hard cases: unicode IDs, +09:00 quarter edges, epoch millis, seat ties, late events…")
	f.intv(&g.partitions, "partitions", 4, "partitions when the topic has to be created")
	f.str(&g.expectedOut, "expected-out", "", "write the expected rollups (JSON lines, computed by the independent reference) to this file")
	f.intv(&g.fiscalStart, "fiscal-year-start-month", 1, "fiscal year start month for --expected-out")
	f.dur(&g.maxClockSkew, "max-clock-skew", time.Hour, "clock skew for --expected-out")
	f.dur(&g.dedupWindow, "dedup-window", 24*time.Hour, "dedup window for --expected-out")
}

func cmdGen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var g genSettings
	f := newFlags("gen", "Produce deterministic synthetic usage telemetry to Kafka (keyed by account_id, zstd batches).", stdout)
	g.register(f)
	if err := f.parse(args); err != nil {
		return err
	}
	log, err := g.log.logger(stderr)
	if err != nil {
		return err
	}
	if g.cfg.Start, err = time.Parse(time.RFC3339, g.start); err != nil {
		return usagef("start: %v", err)
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"events", g.cfg.Events}, {"accounts", g.cfg.Accounts}, {"users", g.cfg.Users}, {"features", g.cfg.Features}, {"quarters", g.cfg.Quarters}} {
		if n.v <= 0 {
			return usagef("%s: must be positive, got %d", n.name, n.v)
		}
	}
	if g.cfg.BadRatio < 0 || g.cfg.BadRatio > 1 || g.cfg.DupRatio < 0 || g.cfg.DupRatio > 1 {
		return usagef("bad-ratio and dup-ratio must be between 0 and 1")
	}
	if g.cfg.Population != gen.PopulationRealistic && g.cfg.Population != gen.PopulationUniform {
		return usagef("population: must be %s or %s, got %q", gen.PopulationRealistic, gen.PopulationUniform, g.cfg.Population)
	}
	if g.fiscalStart < 1 || g.fiscalStart > 12 {
		return usagef("fiscal-year-start-month: must be 1–12, got %d", g.fiscalStart)
	}
	brokers, err := g.kafka.brokerList()
	if err != nil {
		return err
	}
	kopts, err := g.kafka.options(log)
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(kopts, kgo.SeedBrokers(brokers...), kgo.ProducerBatchCompression(kgo.ZstdCompression()),
		kgo.ProducerBatchMaxBytes(16<<20), kgo.ProducerLinger(5*time.Millisecond))...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	if err := ensureTopic(ctx, kadm.NewClient(cl), g.kafka.topic, g.partitions); err != nil {
		return err
	}
	started := time.Now()
	recs, n, err := gen.Produce(ctx, cl, g.kafka.topic, gen.New(g.cfg), g.expectedOut != "")
	if err != nil {
		return fmt.Errorf("produce: %w", err)
	}
	el := time.Since(started)
	fmt.Fprintf(stdout, "produced %d records to %s in %s (%.0f records/s)\n", n, g.kafka.topic, el.Round(time.Millisecond), float64(n)/el.Seconds())
	if g.expectedOut == "" {
		return nil
	}
	res := reference.Compute(recs, reference.Options{FiscalStartMonth: g.fiscalStart, MaxClockSkew: g.maxClockSkew, DedupWindow: refWindow(g.dedupWindow)})
	if err := writeExpected(g.expectedOut, res.Rollups); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %d expected rollup rows to %s (%d accepted, %d duplicates, %d rejected)\n",
		len(res.Rollups), g.expectedOut, res.Accepted, res.Duplicates, len(res.Rejected))
	return nil
}

// ensureTopic creates topic with the given partitions unless it exists.
func ensureTopic(ctx context.Context, adm *kadm.Client, topic string, partitions int) error {
	td, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return fmt.Errorf("list topics: %w", err)
	}
	if td.Has(topic) && td[topic].Err == nil {
		return nil
	}
	resp, err := adm.CreateTopic(ctx, int32(partitions), -1, nil, topic)
	if err != nil {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	if resp.Err != nil {
		return fmt.Errorf("create topic %s: %w", topic, resp.Err)
	}
	return nil
}

func writeExpected(path string, rows []schema.Rollup) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("expected-out: %w", err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, r := range rows {
		if err := enc.Encode(rollupJSON(r)); err != nil {
			f.Close()
			return fmt.Errorf("expected-out: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("expected-out: %w", err)
	}
	return f.Close()
}

// rollupJSON is the JSON form of a rollup row, with the contract's column
// names and ClickHouse's text formats.
func rollupJSON(r schema.Rollup) map[string]any {
	return map[string]any{
		"account_id": r.AccountID, "quarter_start": r.QuarterStart.Format(time.DateOnly), "quarter_end": r.QuarterEnd.Format(time.DateOnly),
		"quarter": r.Quarter, "seats_purchased": r.SeatsPurchased, "seats_assigned": r.SeatsAssigned, "seat_utilization": r.SeatUtilization,
		"active_users": r.ActiveUsers, "active_assigned_users": r.ActiveAssignedUsers, "activation_rate": r.ActivationRate,
		"logins": r.Logins, "feature_events": r.FeatureEvents, "features_used": r.FeaturesUsed,
		"last_activity_at": r.LastActivityAt.UTC().Format(time.DateTime),
	}
}

// refWindow is the reference's DedupWindow for the pipeline's --dedup-window
// w: the reference takes 0 as its default (24h), while the pipeline's 0 is
// a window of no time (same timestamp only); 1ns is that too, as the
// reference compares whole milliseconds.
func refWindow(w time.Duration) time.Duration {
	if w == 0 {
		return time.Nanosecond
	}
	return w
}
