package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
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
	var keep bool
	f := newFlags("demo", "The embedded default: an in-process Kafka broker (kfake), a private local ClickHouse\n(unless --clickhouse-addr is given), synthetic telemetry from gen, the pipeline until\ncaught up, then a rollup table checked against the independent reference. The Kafka connection flags\n(--kafka-brokers, TLS, SASL) are not used: the broker is in-process.", stdout)
	p.register(f)
	f.intv(&events, "events", 200_000, "synthetic records to produce")
	f.intv(&rows, "rows", 8, "accounts to print in each table")
	f.str(&dataDir, "data-dir", "", "where the private ClickHouse keeps its data when --clickhouse-addr is not given (default: a temporary directory, removed at the end)")
	f.boolv(&keep, "keep-clickhouse", false, "keep the private ClickHouse running after the table, to query it, until Ctrl-C")
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
	// Settings first: a bad one is refused before a ClickHouse is started.
	// The Kafka connection settings are not used: the broker is in-process.
	p.kafka = kafkaSettings{brokers: p.kafka.brokers, topic: p.kafka.topic, group: p.kafka.group, dlq: p.kafka.dlq}
	if events <= 0 {
		return usagef("events: must be positive, got %d", events)
	}
	if _, err := p.ingestConfig(); err != nil {
		return err
	}
	chCheck := p.ch
	if chCheck.addr == "" {
		chCheck.addr = "127.0.0.1:0" // the private server's, not known yet
	}
	if _, err := chCheck.storeConfig(); err != nil {
		return err
	}
	started := time.Now()

	private := p.ch.addr == ""
	var chDir string // the private ClickHouse's directory
	if private {
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
		chDir = filepath.Join(dir, "clickhouse")
		srv, err := chserver.Start(ctx, chDir, 0)
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
	// A realistic customer base: about 10 events per user over a year.
	gcfg := gen.Config{Seed: 42, Events: events, Accounts: max(events/800, 10), Users: max(events/10, 50), Features: 25,
		Quarters: 4, Population: gen.PopulationRealistic, BadRatio: 0.01, DupRatio: 0.02, EdgeCases: true}
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
	want := reference.Compute(recs, reference.Options{FiscalStartMonth: p.ch.fiscalStartMonth, MaxClockSkew: p.maxClockSkew, DedupWindow: refWindow(p.dedupWindow)})
	latest := printAtRisk(stdout, got, rows)
	diffs := diffRollups(got, want.Rollups)
	fmt.Fprintf(stdout, "\n%d records in %s through the pipeline (%.0f records/s); %d rollup rows, %d accounts; %d rejected to %s; %d duplicates\n",
		n, pipeTime.Round(time.Millisecond), float64(n)/pipeTime.Seconds(), len(got), countAccounts(got), len(want.Rejected), p.kafka.dlq, want.Duplicates)
	if diffs != 0 {
		return fmt.Errorf("rollups differ from the independent reference in %d rows", diffs)
	}
	fmt.Fprintf(stdout, "rollups match the independent reference computation exactly (%d rows, every column). Total %s.\n", len(got), time.Since(started).Round(time.Millisecond))
	host, port, err := net.SplitHostPort(p.ch.addr)
	if err != nil {
		return fmt.Errorf("clickhouse-addr: %w", err)
	}
	client := fmt.Sprintf("clickhouse-client --host %s --port %s -q %s", host, port, shellQuote(atRiskSQL(p.ch.database, latest)))
	switch {
	case !private:
		fmt.Fprintf(stdout, "query them: %s\n", client)
	case keep:
		fmt.Fprintf(stdout, "ClickHouse keeps running with the demo's data in %s; query it from another terminal:\n  %s\npress Ctrl-C to stop it\n", chDir, client)
		<-ctx.Done()
		fmt.Fprintln(stdout, "stopping ClickHouse")
	case dataDir != "":
		fmt.Fprintf(stdout, "ClickHouse is stopped; its data is kept in %s. To query it, start it over that data (Ctrl-C stops it):\n  clickhouse-server --config-file=%s\nthen, from another terminal:\n  %s\n",
			chDir, shellQuote(filepath.Join(chDir, "config.xml")), client)
	default:
		again := []string{os.Args[0], "demo"}
		for _, a := range args {
			again = append(again, shellQuote(a))
		}
		fmt.Fprintf(stdout, "ClickHouse is stopped and its data removed. To query the rollups yourself, run the demo again and keep it up until Ctrl-C:\n  %s --keep-clickhouse\n", strings.Join(again, " "))
	}
	return nil
}

// shellQuote quotes s for a POSIX shell when it needs it: in single
// quotes, or in double quotes when s has single quotes and nothing a
// shell expands inside double quotes.
func shellQuote(s string) string {
	switch {
	case s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@") == "":
		return s
	case !strings.Contains(s, "'"):
		return "'" + s + "'"
	case !strings.ContainsAny(s, "$`\\\"!"):
		return `"` + s + `"`
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// atRiskSQL is the query the closing hint prints: the latest quarter's
// accounts of at least minRiskSeats seats, lowest utilization or activation
// first.
func atRiskSQL(database, quarter string) string {
	return fmt.Sprintf("SELECT account_id, seats_purchased, seats_assigned, round(seat_utilization, 3) AS utilization, "+
		"round(activation_rate, 3) AS activation FROM %s.account_quarter_rollups WHERE quarter = '%s' AND seats_purchased >= %d "+
		"ORDER BY least(seat_utilization, activation_rate), seats_purchased DESC LIMIT 10 FORMAT PrettyCompact", database, quarter, minRiskSeats)
}

func countAccounts(rows []schema.Rollup) int {
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.AccountID] = true
	}
	return len(seen)
}

// minRiskSeats is the smallest account the at-risk table shows: below it a
// seat or two moves the percentages by tens of points.
const minRiskSeats = 10

// printAtRisk prints what a customer-success lead looks at first: the
// latest quarter's accounts (of at least minRiskSeats seats) with the
// lowest seat utilization, then those with the lowest activation, n of
// each, with how both moved since the quarter before; then how the whole
// base spreads. It returns the latest quarter's label.
func printAtRisk(w io.Writer, rows []schema.Rollup, n int) string {
	var latestStart time.Time
	for _, r := range rows {
		if r.QuarterStart.After(latestStart) {
			latestStart = r.QuarterStart
		}
	}
	prevStart := latestStart.AddDate(0, -3, 0)
	prev := map[string]schema.Rollup{}
	var latest []schema.Rollup
	quarter, prevQuarter := "", "the quarter before"
	for _, r := range rows {
		switch {
		case r.QuarterStart.Equal(latestStart):
			quarter = r.Quarter
			latest = append(latest, r)
		case r.QuarterStart.Equal(prevStart):
			prevQuarter = r.Quarter
			prev[r.AccountID] = r
		}
	}

	var seats []uint64
	var big []schema.Rollup
	underAssigned, lowActivation, isNew := 0, 0, 0
	for _, r := range latest {
		if r.SeatsPurchased == 0 {
			continue
		}
		seats = append(seats, r.SeatsPurchased)
		if r.SeatUtilization < 0.8 {
			underAssigned++
		}
		if r.SeatsAssigned > 0 && r.ActivationRate < 0.5 {
			lowActivation++
		}
		if p, ok := prev[r.AccountID]; !ok || p.SeatsPurchased == 0 {
			isNew++
		}
		if r.SeatsPurchased >= minRiskSeats {
			big = append(big, r)
		}
	}
	if len(seats) == 0 {
		return quarter
	}
	slices.Sort(seats)

	table := func(title string, key func(schema.Rollup) float64) {
		sort.Slice(big, func(i, j int) bool {
			a, b := big[i], big[j]
			return cmp.Or(cmp.Compare(key(a), key(b)), cmp.Compare(b.SeatsPurchased, a.SeatsPurchased), cmp.Compare(a.AccountID, b.AccountID)) < 0
		})
		fmt.Fprintf(w, "\n%s in %s (accounts with at least %d seats; change since %s in points)\n", title, quarter, minRiskSeats, prevQuarter)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "account\tseats purchased\tseats assigned\tutilization\tchange\tseat holders active\tactivation\tchange\tactive users\tlogins\tfeatures used\t")
		for _, r := range big[:min(n, len(big))] {
			du, da := "new", "new"
			if p, ok := prev[r.AccountID]; ok && p.SeatsPurchased > 0 {
				du, da = points(r.SeatUtilization-p.SeatUtilization), points(r.ActivationRate-p.ActivationRate)
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f%%\t%s\t%d\t%.1f%%\t%s\t%d\t%d\t%d\t\n", truncate(r.AccountID, 24), r.SeatsPurchased, r.SeatsAssigned,
				100*r.SeatUtilization, du, r.ActiveAssignedUsers, 100*r.ActivationRate, da, r.ActiveUsers, r.Logins, r.FeaturesUsed)
		}
		tw.Flush()
	}
	table("Lowest seat utilization (seats assigned / purchased)", func(r schema.Rollup) float64 { return r.SeatUtilization })
	table("Lowest activation (seat holders active / seats assigned)", func(r schema.Rollup) float64 { return r.ActivationRate })
	fmt.Fprintf(w, "\n%d accounts with seats in %s: %d to %d seats (median %d); %d below 80%% utilization, %d below 50%% activation, %d new since %s\n",
		len(seats), quarter, seats[0], seats[len(seats)-1], seats[len(seats)/2], underAssigned, lowActivation, isNew, prevQuarter)
	return quarter
}

// points formats a change of a share in percentage points.
func points(d float64) string {
	d = math.Round(1000*d) / 10
	if d == 0 {
		return "0.0"
	}
	return fmt.Sprintf("%+.1f", d)
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
