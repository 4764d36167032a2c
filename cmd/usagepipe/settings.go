package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/store"
)

// usageError is a bad command line or setting: one line, exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// flags is a FlagSet whose flags can also be set by environment variables
// (USAGEPIPE_ + the flag name in upper snake case); a flag given on the
// command line wins.
type flags struct {
	fs   *flag.FlagSet
	env  map[string]string // flag name → env var
	help func()            // prints the command's usage (on -h/--help)
}

// newFlags makes the flags of command name; its usage goes to help (the
// command's stdout) on -h or --help only: a bad flag is one line, as every
// bad setting is.
func newFlags(name, summary string, help io.Writer) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	f := &flags{fs: fs, env: map[string]string{}}
	f.help = func() {
		fmt.Fprintf(help, "usage: usagepipe %s [flags]\n\n%s\n\nFlags (each also settable by the environment variable shown; the flag wins):\n", name, summary)
		fs.VisitAll(func(fl *flag.Flag) {
			def := fl.DefValue
			if d, ok := durationOf(fl); ok {
				def = shortDuration(d)
			}
			if def != "" && def != "false" && def != "0" && def != "[]" {
				def = fmt.Sprintf(" (default %s)", def)
			} else {
				def = ""
			}
			fmt.Fprintf(help, "  --%s  [$%s]%s\n      %s\n", fl.Name, f.env[fl.Name], def, fl.Usage)
		})
	}
	return f
}

// durationOf is the default of a duration flag.
func durationOf(fl *flag.Flag) (time.Duration, bool) {
	g, ok := fl.Value.(flag.Getter)
	if !ok {
		return 0, false
	}
	if _, ok := g.Get().(time.Duration); !ok {
		return 0, false
	}
	d, err := time.ParseDuration(fl.DefValue)
	return d, err == nil
}

// shortDuration writes 24h for 24h0m0s and 1h30m for 1h30m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// setDefault changes a registered flag's default (environment and command
// line still override it).
func (f *flags) setDefault(name, v string) {
	fl := f.fs.Lookup(name)
	_ = fl.Value.Set(v)
	fl.DefValue = v
}

func envName(flagName string) string {
	return "USAGEPIPE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (f *flags) str(p *string, name, def, usage string) {
	f.fs.StringVar(p, name, def, usage)
	f.env[name] = envName(name)
}
func (f *flags) dur(p *time.Duration, name string, def time.Duration, usage string) {
	f.fs.DurationVar(p, name, def, usage)
	f.env[name] = envName(name)
}
func (f *flags) intv(p *int, name string, def int, usage string) {
	f.fs.IntVar(p, name, def, usage)
	f.env[name] = envName(name)
}
func (f *flags) int64v(p *int64, name string, def int64, usage string) {
	f.fs.Int64Var(p, name, def, usage)
	f.env[name] = envName(name)
}
func (f *flags) float(p *float64, name string, def float64, usage string) {
	f.fs.Float64Var(p, name, def, usage)
	f.env[name] = envName(name)
}
func (f *flags) boolv(p *bool, name string, def bool, usage string) {
	f.fs.BoolVar(p, name, def, usage)
	f.env[name] = envName(name)
}

// parse applies the environment, then the command line. Any error is a
// usageError naming the setting.
func (f *flags) parse(args []string) error {
	set := map[string]bool{}
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			f.help()
			return err
		}
		msg := err.Error()
		if m := flagInError.FindStringSubmatch(msg); m != nil {
			msg += f.hint(m[1])
		}
		return usagef("%s", msg)
	}
	if f.fs.NArg() > 0 {
		return usagef("unexpected argument %q", f.fs.Arg(0))
	}
	f.fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	var err error
	f.fs.VisitAll(func(fl *flag.Flag) {
		if err != nil || set[fl.Name] {
			return
		}
		if v, ok := os.LookupEnv(f.env[fl.Name]); ok {
			if e := fl.Value.Set(v); e != nil {
				err = usagef("%s: invalid value %q: %v%s", f.env[fl.Name], v, unwrapFlagErr(e), f.hint(fl.Name))
			}
		}
	})
	return err
}

// flagInError finds the flag a FlagSet's parse error names.
var flagInError = regexp.MustCompile(`for flag -([A-Za-z0-9-]+):`)

// hint says what a duration flag accepts (the flag package only says
// "parse error").
func (f *flags) hint(name string) string {
	if fl := f.fs.Lookup(name); fl != nil {
		if _, ok := durationOf(fl); ok {
			return " (want a duration such as 500ms, 90s, 15m or 24h)"
		}
	}
	return ""
}

func unwrapFlagErr(err error) error {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		return ne.Err
	}
	return err
}

// kafkaSettings are the Kafka connection settings shared by run and gen.
type kafkaSettings struct {
	brokers, topic, group, dlq string
	tls                        bool
	caFile, certFile, keyFile  string
	saslMechanism, saslUser    string
	saslPasswordFile           string
}

func (k *kafkaSettings) register(f *flags, withGroup bool) {
	f.str(&k.brokers, "kafka-brokers", "127.0.0.1:9092", "comma-separated Kafka bootstrap brokers")
	f.str(&k.topic, "kafka-topic", "usage-events", "topic of usage events")
	if withGroup {
		f.str(&k.group, "kafka-group", "usagepipe", "consumer group; instances sharing it split the partitions")
		f.str(&k.dlq, "dlq-topic", "usage-events-dlq", "dead-letter topic for rejected records")
	}
	f.boolv(&k.tls, "kafka-tls", false, "connect to Kafka with TLS")
	f.str(&k.caFile, "kafka-tls-ca-file", "", "PEM CA bundle for Kafka TLS (default: system roots)")
	f.str(&k.certFile, "kafka-tls-cert-file", "", "PEM client certificate for Kafka mTLS")
	f.str(&k.keyFile, "kafka-tls-key-file", "", "PEM client key for Kafka mTLS")
	f.str(&k.saslMechanism, "kafka-sasl-mechanism", "", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (empty: none)")
	f.str(&k.saslUser, "kafka-sasl-user", "", "SASL user name")
	f.str(&k.saslPasswordFile, "kafka-sasl-password-file", "", "file holding the SASL password (or set $USAGEPIPE_KAFKA_SASL_PASSWORD)")
}

func (k *kafkaSettings) brokerList() ([]string, error) {
	var out []string
	for _, b := range strings.Split(k.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		return nil, usagef("kafka-brokers: at least one broker is required")
	}
	return out, nil
}

// options builds the TLS, SASL and logging client options. Secrets come
// from files or the environment only, never from argv.
func (k *kafkaSettings) options(log *slog.Logger) ([]kgo.Opt, error) {
	// The Kafka client logs every assignment and metadata refresh at info;
	// keep its info lines for --log-level debug.
	klog := log
	if !log.Enabled(context.Background(), slog.LevelDebug) {
		klog = slog.New(minLevel{log.Handler(), slog.LevelWarn})
	}
	opts := []kgo.Opt{kgo.WithLogger(kslog.New(klog))}
	if k.tls || k.caFile != "" || k.certFile != "" {
		cfg, err := tlsConfig("kafka-tls", k.caFile, k.certFile, k.keyFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.DialTLSConfig(cfg))
	}
	if k.saslMechanism == "" {
		return opts, nil
	}
	pass, err := secret("USAGEPIPE_KAFKA_SASL_PASSWORD", "kafka-sasl-password-file", k.saslPasswordFile)
	if err != nil {
		return nil, err
	}
	if k.saslUser == "" {
		return nil, usagef("kafka-sasl-user: required with kafka-sasl-mechanism %s", k.saslMechanism)
	}
	switch strings.ToUpper(k.saslMechanism) {
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: k.saslUser, Pass: pass}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: k.saslUser, Pass: pass}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: k.saslUser, Pass: pass}.AsSha512Mechanism()))
	default:
		return nil, usagef("kafka-sasl-mechanism: must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, got %q", k.saslMechanism)
	}
	return opts, nil
}

// minLevel drops records below a level.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func tlsConfig(setting, caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, usagef("%s-ca-file: %v", setting, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usagef("%s-ca-file: no PEM certificates in %s", setting, caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, usagef("%s-cert-file and %s-key-file: set both or neither", setting, setting)
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, usagef("%s-cert-file: %v", setting, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// secret reads a secret from the environment variable env or, when the
// file setting is given, from that file (trailing newline trimmed).
func secret(env, fileSetting, file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", usagef("%s: %v", fileSetting, err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	return os.Getenv(env), nil
}

// chSettings are the ClickHouse settings.
type chSettings struct {
	addr, database, user, passwordFile string
	tls                                bool
	caFile                             string
	compression                        string
	fiscalStartMonth                   int
	cluster                            string
}

// schemaConfig is the schema.Config of these settings.
func (c *chSettings) schemaConfig() schema.Config {
	return schema.Config{Database: c.database, FiscalStartMonth: c.fiscalStartMonth, Cluster: c.cluster}
}

func (c *chSettings) register(f *flags) {
	f.str(&c.addr, "clickhouse-addr", "127.0.0.1:9000", "ClickHouse native-protocol address(es), comma-separated")
	f.str(&c.database, "clickhouse-database", "usage", "ClickHouse database")
	f.str(&c.user, "clickhouse-user", "default", "ClickHouse user")
	f.str(&c.passwordFile, "clickhouse-password-file", "", "file holding the ClickHouse password (or set $USAGEPIPE_CLICKHOUSE_PASSWORD)")
	f.boolv(&c.tls, "clickhouse-tls", false, "connect to ClickHouse with TLS (secure native port)")
	f.str(&c.caFile, "clickhouse-tls-ca-file", "", "PEM CA bundle for ClickHouse TLS (default: system roots)")
	f.str(&c.compression, "clickhouse-compression", "none", "compression of INSERT blocks: none, lz4 or zstd (lz4 pays off over slow or metered links)")
	f.intv(&c.fiscalStartMonth, "fiscal-year-start-month", 1, "first month (1-12) of the fiscal year; quarters are fiscal quarters in UTC")
	f.str(&c.cluster, "clickhouse-cluster", "", "ClickHouse cluster (remote_servers name): replicated, sharded objects ON CLUSTER; --clickhouse-addr may list several nodes (default: one server)")
}

func (c *chSettings) storeConfig() (store.Config, error) {
	if err := (quarter.Fiscal{StartMonth: c.fiscalStartMonth}).Validate(); err != nil {
		return store.Config{}, usagef("fiscal-year-start-month: %v", err)
	}
	var addrs []string
	for _, a := range strings.Split(c.addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return store.Config{}, usagef("clickhouse-addr: must not be empty")
	}
	// Checked here, not only when connecting: run retries a connection
	// forever, and would retry a bad name with it.
	if err := schema.ValidateDatabase(c.database); err != nil {
		return store.Config{}, usagef("clickhouse-database: must match %s, got %q", "^[A-Za-z_][A-Za-z0-9_]{0,63}$", c.database)
	}
	pass, err := secret("USAGEPIPE_CLICKHOUSE_PASSWORD", "clickhouse-password-file", c.passwordFile)
	if err != nil {
		return store.Config{}, err
	}
	if c.cluster != "" {
		if err := (schema.Config{Cluster: c.cluster}).Validate(); err != nil {
			return store.Config{}, usagef("clickhouse-cluster: %v", err)
		}
	}
	cfg := store.Config{Addr: addrs, Database: c.database, User: c.user, Password: pass, Compression: c.compression, DialTimeout: 5 * time.Second, WriteTimeout: 60 * time.Second, Cluster: c.cluster}
	if err := cfg.ValidateCompression(); err != nil {
		return store.Config{}, usagef("clickhouse-compression: %v", err)
	}
	if c.tls || c.caFile != "" {
		if cfg.TLS, err = tlsConfig("clickhouse-tls", c.caFile, "", ""); err != nil {
			return store.Config{}, err
		}
	}
	return cfg, nil
}

// logSettings choose the log format and level.
type logSettings struct{ format, level string }

func (l *logSettings) register(f *flags) {
	f.str(&l.format, "log-format", "text", "log format: text or json")
	f.str(&l.level, "log-level", "info", "log level: debug, info, warn or error")
}

func (l *logSettings) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.level)); err != nil {
		return nil, usagef("log-level: must be debug, info, warn or error, got %q", l.level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("log-format: must be text or json, got %q", l.format)
}

// pipelineSettings are the settings of run (and demo).
type pipelineSettings struct {
	kafka         kafkaSettings
	ch            chSettings
	log           logSettings
	metricsAddr   string
	maxClockSkew  time.Duration
	dedupWindow   time.Duration
	dedupMemMiB   int
	liveCacheMiB  int
	dedupDir      string
	flushInterval time.Duration
	readyStall    time.Duration
	session       time.Duration
	rebalance     time.Duration
	untilCaughtUp bool
}

func (p *pipelineSettings) register(f *flags) {
	p.kafka.register(f, true)
	p.ch.register(f)
	p.log.register(f)
	f.str(&p.metricsAddr, "metrics-addr", ":9464", "HTTP address for /metrics, /healthz and /readyz (empty: off)")
	f.dur(&p.maxClockSkew, "max-clock-skew", time.Hour, "reject events whose occurred_at is more than this after the record timestamp")
	f.dur(&p.dedupWindow, "dedup-window", 24*time.Hour, "an event_id repeated within this much record time in a partition is a duplicate")
	f.intv(&p.dedupMemMiB, "dedup-memory-mib", 256, "memory for the duplicate filters' tables (all partitions); older hours of the window move to disk under --dedup-dir")
	f.intv(&p.liveCacheMiB, "live-cache-mib", 256, "memory for the live path's cache of account facts, which rewrites the live quarter's rows after each flush (0: off, rows are recomputed)")
	f.str(&p.dedupDir, "dedup-dir", "", "directory for the duplicate filters' on-disk part, a cache rebuilt from Kafka (default: the system's temporary directory)")
	f.dur(&p.flushInterval, "flush-interval", time.Second, "how often aggregated facts are written to ClickHouse")
	f.dur(&p.readyStall, "ready-stall-timeout", 20*time.Second, "/readyz fails when records wait and no flush succeeded for this long")
	f.dur(&p.session, "kafka-session-timeout", 45*time.Second, "consumer group session timeout: how long a silent member keeps its partitions")
	f.dur(&p.rebalance, "kafka-rebalance-timeout", 60*time.Second, "consumer group rebalance timeout: how long members may take to rejoin")
}

func (p *pipelineSettings) ingestConfig() (ingest.Config, error) {
	brokers, err := p.kafka.brokerList()
	if err != nil {
		return ingest.Config{}, err
	}
	cfg := ingest.Defaults()
	cfg.Brokers, cfg.Topic, cfg.Group, cfg.DLQTopic = brokers, p.kafka.topic, p.kafka.group, p.kafka.dlq
	cfg.MaxClockSkew, cfg.DedupWindow, cfg.FlushInterval, cfg.ReadyStallTimeout = p.maxClockSkew, p.dedupWindow, p.flushInterval, p.readyStall
	cfg.SessionTimeout, cfg.RebalanceTimeout = p.session, p.rebalance
	cfg.DedupMemory, cfg.DedupDir = int64(p.dedupMemMiB)<<20, p.dedupDir
	cfg.UntilCaughtUp = p.untilCaughtUp
	cfg.LiveCacheMemory = int64(p.liveCacheMiB) << 20
	cfg.FiscalStartMonth = p.ch.fiscalStartMonth
	if err := cfg.Validate(); err != nil {
		return ingest.Config{}, usagef("%v", err)
	}
	return cfg, nil
}
