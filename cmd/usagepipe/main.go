// Command usagepipe consumes product-usage events from Kafka and keeps exact
// per-account quarterly rollups in ClickHouse. See README.md.
//
//	usagepipe run      consume, aggregate, write (applies migrations first)
//	usagepipe migrate  create or upgrade the ClickHouse objects
//	usagepipe verify   recompute rollups from the facts and compare with the served rows
//	usagepipe demo     everything on an embedded default, then a rollup table
//	usagepipe gen      deterministic synthetic telemetry (and expected rollups)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"

	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

func exitCode(err error, stderr io.Writer) int {
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "usagepipe:", ue.msg)
		return 2
	case errors.As(err, new(*checkError)):
		fmt.Fprintln(stderr, "usagepipe:", err)
		return 3
	case errors.Is(err, schema.ErrConfig):
		// A setting that does not fit the database or the servers (a
		// cluster that is not in remote_servers, another shard layout).
		fmt.Fprintln(stderr, "usagepipe:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "usagepipe:", err)
		return 1
	}
}

const topUsage = `usagepipe — exact per-account quarterly usage rollups from Kafka to ClickHouse

usage: usagepipe <command> [flags]

commands:
  run       consume events, aggregate, write rollups to ClickHouse (migrates first)
            --until-caught-up stops once every record present at start is written
  migrate   create or upgrade the ClickHouse database, tables and views
  verify    recompute rollups from the facts and compare them with the served rows (exit 1 on any difference)
  demo      in-process Kafka + local ClickHouse + synthetic data, then print rollups
  gen       produce deterministic synthetic telemetry (optionally write expected rollups)

Run 'usagepipe <command> --help' for its flags. Every flag can also be set by
an environment variable USAGEPIPE_<FLAG_NAME> (verify's --accounts:
USAGEPIPE_VERIFY_ACCOUNTS), shown in each command's help; the flag wins.`

func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, topUsage)
		return usagef("a command is required: run, migrate, verify, demo or gen")
	}
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stdout, stderr)
	case "migrate":
		return cmdMigrate(ctx, args[1:], stdout, stderr)
	case "verify":
		return cmdVerify(ctx, args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(ctx, args[1:], stdout, stderr)
	case "gen":
		return cmdGen(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, topUsage)
		return nil
	}
	return usagef("unknown command %q (want run, migrate, verify, demo or gen)", args[0])
}

func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var p pipelineSettings
	f := newFlags("run", "Consume usage events, aggregate them and write facts to ClickHouse; the views\naccount_quarter_rollups and account_quarter_features give the rollups.", stdout)
	p.register(f)
	f.boolv(&p.untilCaughtUp, "until-caught-up", false, "stop (exit 0) once every record that existed at start is processed and flushed")
	if err := f.parse(args); err != nil {
		return err
	}
	log, err := p.log.logger(stderr)
	if err != nil {
		return err
	}
	return runPipeline(ctx, &p, log, prometheus.NewRegistry(), nil)
}

// chCommand parses the flags of a command that only talks to ClickHouse
// (f, with ch and the log settings registered here) and connects.
func chCommand(ctx context.Context, f *flags, ch *chSettings, args []string, stderr io.Writer) (*store.Store, *slog.Logger, error) {
	var ls logSettings
	ch.register(f)
	ls.register(f)
	if err := f.parse(args); err != nil {
		return nil, nil, err
	}
	log, err := ls.logger(stderr)
	if err != nil {
		return nil, nil, err
	}
	scfg, err := ch.storeConfig()
	if err != nil {
		return nil, nil, err
	}
	st, err := openStore(ctx, scfg, log, nil, false)
	return st, log, err
}

func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var ch chSettings
	f := newFlags("migrate", "Create or upgrade the ClickHouse database, fact tables and rollup views (idempotent).", stdout)
	st, log, err := chCommand(ctx, f, &ch, args, stderr)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := schema.MigrateOn(ctx, st.Topology(), ch.schemaConfig(), log); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	log.Info("migrated", "database", ch.database, "fiscal_year_start_month", ch.fiscalStartMonth)
	return nil
}

// errDifferences is verify's "the served rows differ from the facts"
// (exit 1); any other failure of verify exits 3 (checkError), so that a
// script can tell a difference from a check that did not run.
var errDifferences = errors.New("differences between the served rows and the facts")

// checkError is a verify that could not check (ClickHouse unreachable, a
// query failed, interrupted): exit 3.
type checkError struct{ err error }

func (e *checkError) Error() string { return e.err.Error() }
func (e *checkError) Unwrap() error { return e.err }

func cmdVerify(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	defer func() {
		var ue *usageError
		if err != nil && !errors.Is(err, errDifferences) && !errors.As(err, &ue) && !errors.Is(err, schema.ErrConfig) && !errors.Is(err, flag.ErrHelp) {
			err = &checkError{err}
		}
	}()
	var ch chSettings
	var accounts, accountsFile string
	f := newFlags("verify", "Recompute the rollups of every account (or --accounts, --accounts-file) from the fact tables\nand compare every column with the served rows of account_quarter_rollups and\naccount_quarter_features. Prints each difference. Exit code 0: none; 1: differences (an\naccount asked for that has no rows at all counts as one); 2: a bad setting; 3: could not\ncheck. Run it once the pipeline has caught up.", stdout)
	f.str(&accounts, "accounts", "", "comma-separated account IDs to check (default: every account); IDs with a comma or surrounding spaces: --accounts-file")
	f.env["accounts"] = "USAGEPIPE_VERIFY_ACCOUNTS" // (USAGEPIPE_ACCOUNTS is gen's count)
	f.str(&accountsFile, "accounts-file", "", "file of account IDs to check, one per line, exactly as written (only the line ending is removed)")
	f.env["accounts-file"] = "USAGEPIPE_VERIFY_ACCOUNTS_FILE"
	st, _, err := chCommand(ctx, f, &ch, args, stderr)
	if err != nil {
		return err
	}
	defer st.Close()
	sv, err := schema.NewServedOn(st.Topology(), ch.schemaConfig())
	if err != nil {
		return usagef("%v", err)
	}
	if err := schema.CheckLayout(ctx, st.Topology(), ch.schemaConfig()); err != nil {
		return err
	}
	var list []string
	if accounts != "" {
		for _, a := range strings.Split(accounts, ",") {
			if a = strings.TrimSpace(a); a != "" {
				list = append(list, a)
			}
		}
		if len(list) == 0 {
			return usagef("accounts: no account ID in %q", accounts)
		}
	}
	if accountsFile != "" {
		b, err := os.ReadFile(accountsFile)
		if err != nil {
			return usagef("accounts-file: %v", err)
		}
		n := len(list)
		for _, a := range strings.Split(string(b), "\n") {
			if a = strings.TrimSuffix(a, "\r"); a != "" {
				list = append(list, a)
			}
		}
		if len(list) == n {
			return usagef("accounts-file: no account ID in %s", accountsFile)
		}
	}
	diffs := 0
	checked, err := sv.Verify(ctx, list, func(d schema.Difference) {
		diffs++
		fmt.Fprintf(stdout, "DIFF %s %s\n  served:   %s\n  computed: %s\n", d.Table, d.Key, orNone(d.Served), orNone(d.Computed))
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "verify: %d accounts checked, %d differences (database %s, fiscal year start month %d)\n", checked, diffs, ch.database, ch.fiscalStartMonth)
	if diffs > 0 {
		return fmt.Errorf("verify: %d %w", diffs, errDifferences)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(no row)"
	}
	return s
}

// openStore connects to ClickHouse; with wait it retries until ctx ends
// (a pipeline started before its database keeps trying).
func openStore(ctx context.Context, cfg store.Config, log *slog.Logger, reg prometheus.Registerer, wait bool) (*store.Store, error) {
	// The database may not exist before the first migration: connect to
	// "default" for migrations and writes name the database explicitly.
	backoff := 500 * time.Millisecond
	for {
		st, err := store.Open(ctx, cfg, log, reg)
		if err == nil {
			if err = st.Ping(ctx); err == nil {
				return st, nil
			}
			st.Close()
		}
		if !wait || ctx.Err() != nil {
			return nil, fmt.Errorf("connect to clickhouse %v: %w", cfg.Addr, err)
		}
		log.Warn("clickhouse not reachable; retrying", "addr", cfg.Addr, "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to clickhouse %v: %w", cfg.Addr, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// runPipeline migrates, then runs the consumer and the metrics server in one
// group until ctx ends or the consumer returns. extra are added Kafka client
// options (the demo's in-process broker needs none).
func runPipeline(ctx context.Context, p *pipelineSettings, log *slog.Logger, reg *prometheus.Registry, extra []kgo.Opt) error {
	icfg, err := p.ingestConfig()
	if err != nil {
		return err
	}
	scfg, err := p.ch.storeConfig()
	if err != nil {
		return err
	}
	kopts, err := p.kafka.options(log)
	if err != nil {
		return err
	}
	var ln net.Listener
	if p.metricsAddr != "" {
		if ln, err = net.Listen("tcp", p.metricsAddr); err != nil {
			return usagef("metrics-addr: %v", err)
		}
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	kmetrics := kprom.NewMetrics("usagepipe", kprom.Subsystem("kafka"), kprom.Registerer(reg))
	icfg.ConnOpts = append(kopts, extra...)
	// /healthz answers while startup waits (ClickHouse, the older release's
	// instances, a backfill); /readyz says what for.
	hs := startHealth(ln, reg)
	defer hs.stop()

	hs.starting("connecting to ClickHouse")
	st, err := openStore(ctx, scfg, log, reg, true)
	if err != nil {
		return err
	}
	defer st.Close()
	hs.clickHouseUp()
	mcfg := p.ch.schemaConfig()
	if pending, err := schema.BackfillPending(ctx, st.Conn(), mcfg); err != nil || pending {
		if err == nil {
			hs.starting("waiting for the older release's instances to leave the consumer group")
			err = waitGroupEmpty(ctx, kopts, icfg.Brokers, icfg.Group, log)
		}
		if err != nil {
			return err
		}
	}
	hs.starting("migrating the ClickHouse objects (a backfill of served rows logs its progress)")
	if err := schema.MigrateOn(ctx, st.Topology(), mcfg, log); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	hs.starting("joining the consumer group")
	hs.handOver()
	cons, err := ingest.New(icfg, st, log, reg, kgo.WithHooks(kmetrics))
	if err != nil {
		return err
	}
	hs.running(cons)

	var g run.Group
	runCtx, cancel := context.WithCancel(ctx)
	g.Add(func() error { return cons.Run(runCtx) }, func(error) { cancel() })
	if base := debug.SetMemoryLimit(-1); base != math.MaxInt64 {
		// GOMEMLIMIT is set: the dedup tables outside the Go heap count too.
		addMemLimit(&g, base)
	}
	hs.addTo(&g)
	log.Info("usagepipe running", "brokers", icfg.Brokers, "topic", icfg.Topic, "group", icfg.Group,
		"clickhouse", scfg.Addr, "database", scfg.Database, "metrics", p.metricsAddr, "until_caught_up", icfg.UntilCaughtUp)
	return g.Run()
}

// waitGroupEmpty waits until the consumer group has no members. Before
// the served rows are first built from existing facts, instances of an
// older release must be gone: they write facts without marks, and a fact
// written while the rows are being built would never be served
// (docs/operations.md, "Served rollups"). New instances have not joined
// yet (they migrate first), so any member is an old one.
func waitGroupEmpty(ctx context.Context, kopts []kgo.Opt, brokers []string, group string, log *slog.Logger) error {
	cl, err := kgo.NewClient(append(append([]kgo.Opt{}, kopts...), kgo.SeedBrokers(brokers...))...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	var warned time.Time
	for {
		gs, err := adm.DescribeGroups(ctx, group)
		if err == nil {
			err = gs.Error()
		}
		members := -1
		if err == nil {
			members = 0
			if g, ok := gs[group]; ok {
				members = len(g.Members)
			}
			if members == 0 {
				return nil
			}
		}
		if time.Since(warned) > 30*time.Second {
			warned = time.Now()
			if err != nil {
				log.Warn("served rollups: cannot see the consumer group before building the served rows; retrying", "group", group, "err", err)
			} else {
				log.Warn("served rollups: waiting for the consumer group to be empty before building the served rows from the facts: stop the older usagepipe still running (it writes no marks; docs/operations.md, Served rollups, Upgrade)", "group", group, "members", members)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for consumer group %s to be empty: %w", group, ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}
