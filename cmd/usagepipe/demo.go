package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chserver"
	"github.com/usagepipe/usagepipe/schema/store"
)

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var p pipelineSettings
	var events, rows int
	var dataDir string
	f := newFlags("demo", "The embedded default: an in-process Kafka broker (kfake), a private local ClickHouse\n(unless --clickhouse-addr is given), synthetic telemetry from gen, the pipeline until\ncaught up, then a rollup table checked against the independent reference.", stderr)
	p.register(f)
	f.intv(&events, "events", 200_000, "synthetic records to produce")
	f.intv(&rows, "rows", 12, "accounts to print")
	f.str(&dataDir, "data-dir", "", "where the private ClickHouse keeps its data when --clickhouse-addr is not given (default: a temporary directory, removed at the end)")
	f.setDefault("clickhouse-addr", "")
	f.setDefault("clickhouse-database", "usagepipe_demo")
	f.setDefault("metrics-addr", "")
	if err := f.parse(args); err != nil {
		return err
	}
	log, err := p.log.logger(stderr)
	if err != nil {
		return err
	}
	started := time.Now()

	if p.ch.addr == "" {
		dir := dataDir
		if dir == "" {
			tmp, err := os.MkdirTemp("", "usagepipe-demo-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			dir = tmp
		}
		dir, err := filepath.Abs(dir)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "starting a private ClickHouse in %s …\n", dir)
		srv, err := chserver.Start(ctx, filepath.Join(dir, "clickhouse"), 0)
		if err != nil {
			return err
		}
		defer srv.Stop()
		p.ch.addr = srv.Addr
	}
	scfg, err := p.ch.storeConfig()
	if err != nil {
		return err
	}
	// A fresh demo database each time.
	st, err := openStore(ctx, scfg, log, nil, false)
	if err != nil {
		return err
	}
	if err := st.Conn().Exec(ctx, "DROP DATABASE IF EXISTS "+p.ch.database); err != nil {
		st.Close()
		return fmt.Errorf("reset demo database: %w", err)
	}
	st.Close()

	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, p.kafka.topic), kfake.SeedTopics(1, p.kafka.dlq))
	if err != nil {
		return fmt.Errorf("start in-process kafka: %w", err)
	}
	defer cluster.Close()
	p.kafka.brokers = cluster.ListenAddrs()[0]
	fmt.Fprintf(stdout, "in-process Kafka (kfake) at %s, ClickHouse at %s, database %s\n", p.kafka.brokers, p.ch.addr, p.ch.database)

	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.ProducerBatchCompression(kgo.ZstdCompression()), kgo.ProducerBatchMaxBytes(16<<20))
	if err != nil {
		return err
	}
	gcfg := gen.Config{Seed: 42, Events: events, Accounts: max(events/200, 10), Users: max(events/7, 50), Features: 25,
		Quarters: 3, BadRatio: 0.01, DupRatio: 0.02, EdgeCases: true}
	recs, n, err := gen.Produce(ctx, cl, p.kafka.topic, gen.New(gcfg), true)
	cl.Close()
	if err != nil {
		return fmt.Errorf("produce synthetic telemetry: %w", err)
	}
	fmt.Fprintf(stdout, "produced %d synthetic records (1%% invalid, 2%% re-sent duplicates, edge cases)\n", n)

	p.untilCaughtUp = true
	pipeStart := time.Now()
	if err := runPipeline(ctx, &p, log, prometheus.NewRegistry(), nil); err != nil {
		return err
	}
	pipeTime := time.Since(pipeStart)

	st, err = store.Open(ctx, scfg, log, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	got, err := st.ReadRollups(ctx)
	if err != nil {
		return err
	}
	want := reference.Compute(recs, reference.Options{FiscalStartMonth: p.ch.fiscalStartMonth, MaxClockSkew: p.maxClockSkew, DedupWindow: p.dedupWindow})
	printRollups(stdout, got, rows)
	diffs := diffRollups(got, want.Rollups)
	fmt.Fprintf(stdout, "\n%d records in %s through the pipeline (%.0f records/s); %d rollup rows, %d accounts; %d rejected to %s; %d duplicates\n",
		n, pipeTime.Round(time.Millisecond), float64(n)/pipeTime.Seconds(), len(got), countAccounts(got), len(want.Rejected), p.kafka.dlq, want.Duplicates)
	if diffs != 0 {
		return fmt.Errorf("rollups differ from the independent reference in %d rows", diffs)
	}
	fmt.Fprintf(stdout, "rollups match the independent reference computation exactly (%d rows, every column). Total %s.\n", len(got), time.Since(started).Round(time.Millisecond))
	fmt.Fprintf(stdout, "query them: clickhouse-client --port %s -q 'SELECT * FROM %s.account_quarter_rollups LIMIT 10'\n", portOf(p.ch.addr), p.ch.database)
	return nil
}

func portOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == ':' {
			return addr[i+1:]
		}
	}
	return "9000"
}

func countAccounts(rows []schema.Rollup) int {
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.AccountID] = true
	}
	return len(seen)
}

// printRollups prints the latest quarter of the accounts with the most
// purchased seats.
func printRollups(w io.Writer, rows []schema.Rollup, n int) {
	latest := map[string]schema.Rollup{}
	for _, r := range rows {
		if l, ok := latest[r.AccountID]; !ok || r.QuarterStart.After(l.QuarterStart) {
			latest[r.AccountID] = r
		}
	}
	list := make([]schema.Rollup, 0, len(latest))
	for _, r := range latest {
		list = append(list, r)
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].SeatsPurchased != list[j].SeatsPurchased {
			return list[i].SeatsPurchased > list[j].SeatsPurchased
		}
		return list[i].AccountID < list[j].AccountID
	})
	if len(list) > n {
		list = list[:n]
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "account\tquarter\tseats purchased\tseats assigned\tutilization\tactive users\tactive seat holders\tactivation\tlogins\tfeatures used\t")
	for _, r := range list {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f%%\t%d\t%d\t%.1f%%\t%d\t%d\t\n", truncate(r.AccountID, 24), r.Quarter, r.SeatsPurchased, r.SeatsAssigned,
			100*r.SeatUtilization, r.ActiveUsers, r.ActiveAssignedUsers, 100*r.ActivationRate, r.Logins, r.FeaturesUsed)
	}
	tw.Flush()
}

func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// diffRollups counts rows that differ between got and want (both sorted by
// account, quarter), printing the first few differences to stderr.
func diffRollups(got, want []schema.Rollup) int {
	key := func(r schema.Rollup) string { return r.AccountID + "\x00" + r.QuarterStart.Format(time.DateOnly) }
	g := map[string]schema.Rollup{}
	for _, r := range got {
		g[key(r)] = r
	}
	diffs := 0
	for _, w := range want {
		r, ok := g[key(w)]
		delete(g, key(w))
		if !ok || !sameRollup(r, w) {
			if diffs < 5 {
				fmt.Fprintf(os.Stderr, "differs: got %+v\n         want %+v\n", r, w)
			}
			diffs++
		}
	}
	return diffs + len(g)
}

func sameRollup(a, b schema.Rollup) bool {
	return a.AccountID == b.AccountID && a.QuarterStart.Equal(b.QuarterStart) && a.QuarterEnd.Equal(b.QuarterEnd) && a.Quarter == b.Quarter &&
		a.SeatsPurchased == b.SeatsPurchased && a.SeatsAssigned == b.SeatsAssigned && a.SeatUtilization == b.SeatUtilization &&
		a.ActiveUsers == b.ActiveUsers && a.ActiveAssignedUsers == b.ActiveAssignedUsers && a.ActivationRate == b.ActivationRate &&
		a.Logins == b.Logins && a.FeatureEvents == b.FeatureEvents && a.FeaturesUsed == b.FeaturesUsed && a.LastActivityAt.Equal(b.LastActivityAt)
}
