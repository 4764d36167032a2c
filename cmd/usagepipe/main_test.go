package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema/chserver"
	"github.com/usagepipe/usagepipe/schema/chtest"
	"github.com/usagepipe/usagepipe/schema/store"
)

func TestMain(m *testing.M) { chtest.Main(kafkatest.Runner(m)) }

// exec runs the command line in-process and returns the exit code and what
// it printed.
func exec(ctx context.Context, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	err := runMain(ctx, args, &out, &errb)
	code := exitCode(err, &errb)
	return code, out.String(), errb.String()
}

// check runs args and expects exit code 2 with a last line naming want.
func check(t *testing.T, env map[string]string, want string, args []string) {
	t.Helper()
	code, _, stderr := exec(context.Background(), args...)
	if code != 2 {
		t.Fatalf("%v %v: exit %d, want 2 (stderr %q)", env, args, code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	if len(lines) != 1 || !strings.HasPrefix(last, "usagepipe: ") || !strings.Contains(last, want) {
		t.Fatalf("%v %v: stderr %q, want one line naming %q", env, args, stderr, want)
	}
}

func TestBadSettingIsOneLineNamingItAndExit2(t *testing.T) {
	f := func(env map[string]string, want string, args ...string) {
		t.Helper()
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			for k, v := range env {
				t.Setenv(k, v)
			}
			check(t, env, want, args)
		})
	}
	f(nil, "fiscal-year-start-month", "run", "--fiscal-year-start-month", "13")
	f(nil, "fiscal-year-start-month", "migrate", "--fiscal-year-start-month", "0")
	f(map[string]string{"USAGEPIPE_MAX_CLOCK_SKEW": "soon"}, "USAGEPIPE_MAX_CLOCK_SKEW", "run")
	f(map[string]string{"USAGEPIPE_FISCAL_YEAR_START_MONTH": "april"}, "USAGEPIPE_FISCAL_YEAR_START_MONTH", "run")
	f(nil, "dedup-window", "run", "--dedup-window", "-1h")
	f(nil, "max-clock-skew", "run", "--max-clock-skew", "-5m")
	f(nil, "max-clock-skew: must be a positive number of whole milliseconds", "run", "--max-clock-skew", "0s") // (was taken as 1h)
	f(nil, "max-clock-skew: must be a positive number of whole milliseconds", "run", "--max-clock-skew", "1500us")
	f(nil, "kafka-sasl-mechanism", "run", "--kafka-sasl-mechanism", "GSSAPI", "--kafka-sasl-user", "u")
	f(nil, "kafka-sasl-user", "run", "--kafka-sasl-mechanism", "PLAIN")
	f(nil, "log-format", "run", "--log-format", "xml")
	f(nil, "log-level", "migrate", "--log-level", "loud")
	f(nil, "kafka-brokers", "run", "--kafka-brokers", " , ")
	f(nil, "dlq-topic", "run", "--dlq-topic", "usage-events")
	f(nil, "clickhouse-addr", "migrate", "--clickhouse-addr", "")
	f(nil, "clickhouse-compression", "run", "--clickhouse-compression", "gzip")
	f(nil, "clickhouse-cluster", "migrate", "--clickhouse-cluster", "two words")
	f(nil, "clickhouse-password-file", "migrate", "--clickhouse-password-file", "/nonexistent/pw")
	f(nil, "kafka-tls-ca-file", "run", "--kafka-tls-ca-file", "/nonexistent/ca.pem")
	f(nil, "flush-interval", "run", "--flush-interval", "0s")
	f(nil, "kafka-session-timeout", "run", "--kafka-session-timeout", "10ms")
	f(nil, "unknown command", "frobnicate")
	f(nil, "flag provided but not defined: -nope", "run", "--nope")
	// (Before, a flag the flag package could not parse printed the whole
	// usage too, and a bad database name made run retry a connection
	// forever.)
	f(nil, "max-clock-skew: parse error (want a duration", "run", "--max-clock-skew", "5parsecs")
	f(map[string]string{"USAGEPIPE_DEDUP_WINDOW": "a day"}, "USAGEPIPE_DEDUP_WINDOW: invalid value \"a day\": parse error (want a duration", "run")
	f(nil, "flag -fiscal-year-start-month", "run", "--fiscal-year-start-month", "april")
	f(nil, "clickhouse-database", "run", "--clickhouse-database", "bad-name")
	f(nil, "clickhouse-database", "migrate", "--clickhouse-database", "")
	f(nil, "events: must be positive", "gen", "--events", "0")
}

// TestHelpGoesToStdout: -h prints the command's flags on stdout (so that
// `usagepipe run --help | less` shows them), durations as the contract
// writes them, and exits 0.
func TestHelpGoesToStdout(t *testing.T) {
	for _, cmd := range []string{"run", "migrate", "verify", "demo", "gen"} {
		code, stdout, stderr := exec(context.Background(), cmd, "--help")
		if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "usage: usagepipe "+cmd) {
			t.Errorf("%s --help: exit %d, stderr %q, stdout starts %.40q", cmd, code, stderr, stdout)
		}
	}
	_, stdout, _ := exec(context.Background(), "run", "--help")
	for _, want := range []string{"--dedup-window  [$USAGEPIPE_DEDUP_WINDOW] (default 24h)\n", "--max-clock-skew  [$USAGEPIPE_MAX_CLOCK_SKEW] (default 1h)\n"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("run --help lacks %q", want)
		}
	}
}

func TestFlagWinsOverEnvironment(t *testing.T) {
	t.Setenv("USAGEPIPE_FISCAL_YEAR_START_MONTH", "13") // bad, but the flag overrides it
	var p pipelineSettings
	fl := newFlags("run", "", io.Discard)
	p.register(fl)
	if err := fl.parse([]string{"--fiscal-year-start-month", "4"}); err != nil {
		t.Fatal(err)
	}
	if p.ch.fiscalStartMonth != 4 {
		t.Fatalf("fiscal start = %d, want the flag's 4", p.ch.fiscalStartMonth)
	}
	t.Setenv("USAGEPIPE_KAFKA_TOPIC", "from-env")
	var q pipelineSettings
	fl = newFlags("run", "", io.Discard)
	q.register(fl)
	if err := fl.parse(nil); err != nil {
		t.Fatal(err)
	}
	if q.kafka.topic != "from-env" || q.ch.fiscalStartMonth != 13 {
		t.Fatalf("env not applied: topic %q fiscal %d", q.kafka.topic, q.ch.fiscalStartMonth)
	}
}

func TestHelpListsEnvAndHidesSecrets(t *testing.T) {
	t.Setenv("USAGEPIPE_CLICKHOUSE_PASSWORD", "hunter2-secret")
	t.Setenv("USAGEPIPE_KAFKA_SASL_PASSWORD", "sasl-secret")
	for _, cmd := range []string{"run", "migrate", "gen", "demo"} {
		code, out, stderr := exec(context.Background(), cmd, "--help")
		all := out + stderr
		if code != 0 {
			t.Fatalf("%s --help: exit %d", cmd, code)
		}
		if strings.Contains(all, "hunter2") || strings.Contains(all, "sasl-secret") {
			t.Fatalf("%s --help shows a secret:\n%s", cmd, all)
		}
		if !strings.Contains(all, "$USAGEPIPE_CLICKHOUSE_ADDR") && !strings.Contains(all, "$USAGEPIPE_KAFKA_BROKERS") {
			t.Fatalf("%s --help does not name env vars:\n%s", cmd, all)
		}
	}
	if _, out, _ := exec(context.Background(), "--help"); !strings.Contains(out, "until-caught-up") {
		t.Fatalf("top-level help:\n%s", out)
	}
}

func TestSecretFromFile(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("USAGEPIPE_CLICKHOUSE_PASSWORD", "from-env")
	c := chSettings{addr: "127.0.0.1:9000", database: "usage", user: "ingest", passwordFile: pw, fiscalStartMonth: 1}
	cfg, err := c.storeConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Password != "s3cret" {
		t.Fatalf("password %q, want the file's (newline trimmed)", cfg.Password)
	}
	c.passwordFile = ""
	if cfg, _ = c.storeConfig(); cfg.Password != "from-env" {
		t.Fatalf("password %q, want the environment's", cfg.Password)
	}
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(url string) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s", what, within)
	return 0
}

// TestLiveMetricsAndReadiness runs `usagepipe run` against kfake and a
// private ClickHouse, checks every contract metric on /metrics, then stops
// ClickHouse: /readyz must fail within 30s while the process stays up, and
// recover by itself when ClickHouse is back.
func TestLiveMetricsAndReadiness(t *testing.T) {
	ctx := context.Background()
	chDir := t.TempDir()
	srv, err := chserver.Start(ctx, chDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	port := srv.Addr[strings.LastIndex(srv.Addr, ":")+1:]
	cluster := kafkatest.Kfake(t, kfake.SeedTopics(3, "usage-events"), kfake.SeedTopics(1, "usage-events-dlq"))
	brokers := strings.Join(cluster.ListenAddrs(), ",")
	if code, _, stderr := exec(ctx, "gen", "--kafka-brokers", brokers, "--events", "3000", "--accounts", "20", "--users", "200", "--bad-ratio", "0.05", "--dup-ratio", "0.05"); code != 0 {
		t.Fatalf("gen: %s", stderr)
	}
	metrics := freeAddr(t)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan string, 1)
	go func() {
		code, _, stderr := exec(runCtx, "run", "--kafka-brokers", brokers, "--clickhouse-addr", srv.Addr, "--metrics-addr", metrics,
			"--flush-interval", "200ms", "--ready-stall-timeout", "5s")
		done <- fmt.Sprintf("exit %d: %s", code, stderr)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	base := "http://" + metrics
	waitFor(t, "/readyz 200", 30*time.Second, func() bool { c, _ := get(base + "/readyz"); return c == 200 })
	waitFor(t, "all records consumed", 30*time.Second, func() bool {
		_, m := get(base + "/metrics")
		return strings.Contains(m, "usagepipe_records_consumed_total 3000") || strings.Contains(m, "usagepipe_records_consumed_total 3055")
	})
	_, m := get(base + "/metrics")
	for _, name := range []string{
		"usagepipe_records_consumed_total", `usagepipe_events_accepted_total{type="login"}`, `usagepipe_events_rejected_total{reason="malformed_json"}`,
		"usagepipe_events_duplicate_total", "usagepipe_flush_duration_seconds_bucket", `usagepipe_flushes_total{result="ok"}`,
		"usagepipe_clickhouse_rows_written_total", `usagepipe_consumer_lag_records{partition="0"}`, "usagepipe_event_delay_seconds_bucket",
		"usagepipe_last_flush_timestamp_seconds", "usagepipe_kafka_", "go_goroutines", "process_resident_memory_bytes",
	} {
		if !strings.Contains(m, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	for _, line := range strings.Split(m, "\n") {
		if strings.Contains(line, "acct-0") || strings.Contains(line, "user-0") {
			t.Errorf("/metrics exposes an ID: %s", line)
		}
	}
	if c, _ := get(base + "/healthz"); c != 200 {
		t.Fatalf("/healthz = %d", c)
	}
	// usagepipe_clickhouse_up and usagepipe_ready follow ClickHouse (the
	// first was never set: UsagepipeClickHouseDown fired on every healthy
	// instance).
	for _, want := range []string{"usagepipe_clickhouse_up 1", "usagepipe_ready 1"} {
		if !strings.Contains(m, want+"\n") {
			t.Errorf("/metrics lacks %q while ClickHouse is up", want)
		}
	}

	srv.Stop()
	took := waitFor(t, "/readyz non-200 after ClickHouse stopped", 30*time.Second, func() bool { c, _ := get(base + "/readyz"); return c != 200 && c != 0 })
	t.Logf("readyz failed %s after ClickHouse stopped", took.Round(100*time.Millisecond))
	waitFor(t, "usagepipe_clickhouse_up 0 and usagepipe_ready 0 after ClickHouse stopped", 10*time.Second, func() bool {
		_, m := get(base + "/metrics")
		return strings.Contains(m, "usagepipe_clickhouse_up 0\n") && strings.Contains(m, "usagepipe_ready 0\n")
	})
	// New data arrives while ClickHouse is down; the process keeps running.
	if code, _, stderr := exec(ctx, "gen", "--kafka-brokers", brokers, "--seed", "2", "--events", "1000", "--accounts", "20", "--users", "200"); code != 0 {
		t.Fatalf("gen: %s", stderr)
	}
	time.Sleep(3 * time.Second)
	select {
	case r := <-done:
		t.Fatalf("run exited while ClickHouse was down: %s", r)
	default:
	}
	if c, _ := get(base + "/healthz"); c != 200 {
		t.Fatalf("/healthz = %d while ClickHouse is down", c)
	}
	var p int
	fmt.Sscan(port, &p)
	srv2, err := chserver.Start(ctx, chDir, p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv2.Stop() })
	took = waitFor(t, "/readyz 200 after ClickHouse restarted", 60*time.Second, func() bool { c, _ := get(base + "/readyz"); return c == 200 })
	t.Logf("readyz recovered %s after ClickHouse restarted", took.Round(100*time.Millisecond))
	waitFor(t, "usagepipe_clickhouse_up 1 after ClickHouse restarted", 10*time.Second, func() bool {
		_, m := get(base + "/metrics")
		return strings.Contains(m, "usagepipe_clickhouse_up 1\n")
	})
	waitFor(t, "records of the outage written", 60*time.Second, func() bool {
		_, m := get(base + "/metrics")
		return strings.Contains(m, "usagepipe_consumer_lag_records{partition=\"0\"} 0") && strings.Contains(m, "usagepipe_records_consumed_total 40")
	})
	st, err := store.Open(ctx, store.Config{Addr: []string{srv2.Addr}, Database: "usage"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// The served rows follow the facts within seconds (the serve loop
	// retries the recomputes that failed while ClickHouse was down).
	var out string
	took = waitFor(t, "served rollups equal to the facts after recovery (usagepipe verify)", 90*time.Second, func() bool {
		var code int
		code, out, _ = exec(ctx, "verify", "--clickhouse-addr", srv2.Addr)
		return code == 0
	})
	t.Logf("served rows verified %s after the outage's records were written: %s", took.Round(100*time.Millisecond), strings.TrimSpace(out))
}

// TestHealthWhileStarting: while `usagepipe run` waits for ClickHouse at
// startup, /healthz answers (an orchestrator's liveness probe must not
// restart a process that waits: before, nothing answered on the metrics
// address until the migrate had run), /readyz fails saying what it waits
// for, /metrics answers, and a stop ends the wait.
func TestHealthWhileStarting(t *testing.T) {
	cluster := kafkatest.Kfake(t, kfake.SeedTopics(1, "usage-events"))
	metrics := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		code, _, _ := exec(ctx, "run", "--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","),
			"--clickhouse-addr", freeAddr(t), "--metrics-addr", metrics)
		done <- code
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("run did not stop within 30 s of its context")
		}
	}()
	base := "http://" + metrics
	waitFor(t, "/healthz 200 while ClickHouse is unreachable", 10*time.Second, func() bool { c, _ := get(base + "/healthz"); return c == 200 })
	if c, body := get(base + "/readyz"); c != http.StatusServiceUnavailable || !strings.Contains(body, "starting: connecting to ClickHouse") {
		t.Errorf("/readyz = %d %q, want 503 saying it is connecting to ClickHouse", c, body)
	}
	// A process stuck starting is not ready to Prometheus either
	// (UsagepipeNotReady), not just absent from it.
	c, body := get(base + "/metrics")
	for _, want := range []string{"go_goroutines", "usagepipe_ready 0\n", "usagepipe_clickhouse_up 0\n"} {
		if c != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics = %d, lacks %q", c, want)
		}
	}
	select {
	case code := <-done:
		t.Fatalf("run exited (code %d) while ClickHouse was unreachable; it should wait", code)
	default:
	}
}

// TestHealthActorKeepsRunsError: the metrics server's actor never ends
// the run group first on a stop, so the exit status is the consumer's:
// a final flush that failed after SIGTERM still exits 1. (Its first
// version returned nil when the run's context ended, and the group
// returned that nil.)
func TestHealthActorKeepsRunsError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := startHealth(ln, prometheus.NewRegistry())
	defer hs.stop()
	ctx, cancel := context.WithCancel(context.Background())
	var g run.Group
	flushFailed := errors.New("flush abandoned at shutdown")
	g.Add(func() error {
		<-ctx.Done()
		time.Sleep(50 * time.Millisecond) // the final flush
		return flushFailed
	}, func(error) { cancel() })
	hs.addTo(&g)
	time.AfterFunc(50*time.Millisecond, cancel) // SIGTERM: the run's context ends
	if err := g.Run(); !errors.Is(err, flushFailed) {
		t.Fatalf("group returned %v, want the consumer's %v", err, flushFailed)
	}
}

// TestKafkaSCRAMOverTLS runs gen and run against a kfake broker that demands
// SCRAM-SHA-256 over TLS, with the CA and password given as files.
func TestKafkaSCRAMOverTLS(t *testing.T) {
	dir := t.TempDir()
	serverCert, caPEM := testCA(t)
	caFile, pwFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "pw")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pwFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cluster := kafkatest.Kfake(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "alice", "s3cret"),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12}))
	brokers := strings.Join(cluster.ListenAddrs(), ",")
	sec := []string{"--kafka-brokers", brokers, "--kafka-tls", "--kafka-tls-ca-file", caFile,
		"--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-sasl-user", "alice", "--kafka-sasl-password-file", pwFile}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if code, out, stderr := exec(ctx, append([]string{"gen", "--events", "500", "--accounts", "5", "--users", "50"}, sec...)...); code != 0 {
		t.Fatalf("gen over SCRAM+TLS: %s", stderr)
	} else {
		t.Logf("gen took %s: %s", time.Since(start), out)
	}
	db := chtest.NewDatabase(t)
	args := append([]string{"run", "--until-caught-up", "--clickhouse-addr", chtest.Addr(), "--clickhouse-database", db, "--metrics-addr", "", "--log-level", "debug"}, sec...)
	runCtx, cancelRun := context.WithTimeout(ctx, 20*time.Second)
	defer cancelRun()
	if code, _, stderr := exec(runCtx, args...); code != 0 || runCtx.Err() != nil {
		t.Fatalf("run over SCRAM+TLS: exit %d: %s", code, stderr)
	}
	st, err := store.Open(ctx, store.Config{Addr: []string{chtest.Addr()}, Database: db}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rows, err := st.ReadRollups(ctx)
	if err != nil || len(rows) == 0 {
		t.Fatalf("rollups: %d rows, %v", len(rows), err)
	}
	// A wrong password is refused (gen fails instead of producing).
	if err := os.WriteFile(pwFile, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 20*time.Second)
	defer cancelShort()
	if code, _, _ := exec(short, append([]string{"gen", "--events", "10", "--accounts", "1", "--users", "1"}, sec...)...); code == 0 {
		t.Fatal("gen with a wrong SASL password succeeded")
	}
}

// testCA returns a server certificate for 127.0.0.1 and the PEM of the CA
// that signed it.
func testCA(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "usagepipe test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kfake"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// TestVerify: after run --until-caught-up, verify finds the served rows
// equal to a recompute from the facts (exit 0); a served row changed behind
// the pipeline's back is reported with its key (exit 1), also when only
// that account is checked, and not when only another one is.
func TestVerify(t *testing.T) {
	cluster := kafkatest.Kfake(t)
	brokers := strings.Join(cluster.ListenAddrs(), ",")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if code, _, stderr := exec(ctx, "gen", "--kafka-brokers", brokers, "--events", "3000", "--accounts", "12", "--users", "120"); code != 0 {
		t.Fatalf("gen: %s", stderr)
	}
	db := chtest.NewDatabase(t)
	ch := []string{"--clickhouse-addr", chtest.Addr(), "--clickhouse-database", db}
	if code, _, stderr := exec(ctx, append([]string{"run", "--until-caught-up", "--kafka-brokers", brokers, "--metrics-addr", ""}, ch...)...); code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	code, out, stderr := exec(ctx, append([]string{"verify"}, ch...)...)
	if code != 0 || !strings.Contains(out, "12 accounts checked, 0 differences") {
		t.Fatalf("verify after catch-up: exit %d\n%s\n%s", code, out, stderr)
	}

	st, err := store.Open(ctx, store.Config{Addr: []string{chtest.Addr()}, Database: db}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rows, err := st.ReadRollups(ctx)
	if err != nil || len(rows) < 2 {
		t.Fatalf("rollups: %d rows, %v", len(rows), err)
	}
	victim, other := rows[0].AccountID, rows[len(rows)-1].AccountID
	if victim == other {
		t.Fatal("want two accounts")
	}
	// A newer version of one served row with one login more.
	if err := st.Conn().Exec(ctx, "INSERT INTO "+db+".served_rollups SELECT fy, account_id, quarter_start, quarter_end, quarter, seats_purchased, seats_assigned, seat_utilization, active_users, active_assigned_users, activation_rate, logins + 1, feature_events, features_used, last_activity_at, updated_at, version + 1 FROM "+db+".served_rollups FINAL WHERE account_id = '"+victim+"' AND quarter_start = '"+rows[0].QuarterStart.Format(time.DateOnly)+"'"); err != nil {
		t.Fatal(err)
	}
	code, out, _ = exec(ctx, append([]string{"verify"}, ch...)...)
	// (Where readers are tables, 18.16, the served row differs; the copy
	// has not taken the tampered row.)
	if code != 1 || !strings.Contains(out, "account_id=\""+victim+"\"") || !strings.Contains(out, "1 differences") {
		t.Fatalf("verify of a changed row: exit %d, want 1 and the row's key:\n%s", code, out)
	}
	if code, out, _ = exec(ctx, append([]string{"verify", "--accounts", victim}, ch...)...); code != 1 || !strings.Contains(out, "1 accounts checked, 1 differences") {
		t.Fatalf("verify --accounts %s: exit %d:\n%s", victim, code, out)
	}
	if code, out, _ = exec(ctx, append([]string{"verify", "--accounts", other}, ch...)...); code != 0 || !strings.Contains(out, "1 accounts checked, 0 differences") {
		t.Fatalf("verify --accounts %s: exit %d:\n%s", other, code, out)
	}
	// A newer version of one served feature set with one event more on its
	// first feature: verify reads the sets through ARRAY JOIN too.
	if err := st.Conn().Exec(ctx, "INSERT INTO "+db+".served_feature_sets SELECT fy, account_id, quarter_start, quarter_end, quarter, features, active_users, arrayMap((e, i) -> if(i = 1, e + 1, e), events, arrayEnumerate(events)), updated_at, version + 1 FROM "+db+".served_feature_sets FINAL WHERE account_id = '"+other+"' LIMIT 1"); err != nil {
		t.Fatal(err)
	}
	if code, out, _ = exec(ctx, append([]string{"verify", "--accounts", other}, ch...)...); code != 1 || !strings.Contains(out, "1 accounts checked, 1 differences") || !strings.Contains(out, "DIFF served_feature_sets ") && !strings.Contains(out, "DIFF account_quarter_features ") {
		t.Fatalf("verify --accounts %s after changing a feature set: exit %d, want 1 and the feature row:\n%s", other, code, out)
	}

	// Found by an audit: an account asked for that has no rows at all
	// passed (a typo gave "0 differences"); --accounts could not name IDs
	// with a comma or surrounding spaces; a key with two reader rows
	// passed when both read alike; and a verify that could not check
	// exited 1, like one that found differences.
	if code, out, _ = exec(ctx, append([]string{"verify", "--accounts", "no-such-account"}, ch...)...); code != 1 || !strings.Contains(out, `account_id="no-such-account"`) || !strings.Contains(out, "no such account") {
		t.Fatalf("verify of an unknown account: exit %d, want 1 and the account named:\n%s", code, out)
	}
	file := filepath.Join(t.TempDir(), "accounts")
	if err := os.WriteFile(file, []byte(" spaced, with a comma\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, _ = exec(ctx, append([]string{"verify", "--accounts-file", file}, ch...)...); code != 1 || !strings.Contains(out, `account_id=" spaced, with a comma"`) || !strings.Contains(out, "1 accounts checked") {
		t.Fatalf("verify --accounts-file: exit %d, want 1 for exactly the account in the file:\n%s", code, out)
	}
	third := ""
	for _, r := range rows {
		if r.AccountID != victim && r.AccountID != other {
			third = r.AccountID
			break
		}
	}
	if code, out, _ = exec(ctx, append([]string{"verify", "--accounts", third}, ch...)...); code != 0 {
		t.Fatalf("verify --accounts %s before its row is doubled: exit %d:\n%s", third, code, out)
	}
	// On 18.16 the readers are tables: a second copy of one row.
	if err := st.Conn().Exec(ctx, "INSERT INTO "+db+".account_quarter_rollups SELECT * FROM "+db+".account_quarter_rollups WHERE account_id = '"+third+"' LIMIT 1"); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"verify", "--accounts", third}, {"verify"}} {
		if code, out, _ = exec(ctx, append(args, ch...)...); code != 1 || !strings.Contains(out, "ANOTHER ROW FOR THE SAME KEY") || !strings.Contains(out, `account_id="`+third+`"`) {
			t.Fatalf("%v with a key read twice: exit %d, want 1 and the key:\n%s", args, code, out)
		}
	}
	if code, _, stderr = exec(ctx, "verify", "--clickhouse-addr", "127.0.0.1:1", "--clickhouse-database", db); code != 3 {
		t.Fatalf("verify without a ClickHouse to check: exit %d, want 3:\n%s", code, stderr)
	}
}

// TestUpgradeWaitsForOldRelease: a database with facts whose served rows
// were never built (a release before the served rollups wrote it) is only
// built once the consumer group is empty: an old instance still consuming
// would write facts without marks during the build. run waits, says why,
// and goes on when the old member leaves; the rows are then exact.
func TestUpgradeWaitsForOldRelease(t *testing.T) {
	cluster := kafkatest.Kfake(t)
	brokers := strings.Join(cluster.ListenAddrs(), ",")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if code, _, stderr := exec(ctx, "gen", "--kafka-brokers", brokers, "--events", "2000", "--accounts", "8", "--users", "80"); code != 0 {
		t.Fatalf("gen: %s", stderr)
	}
	db := chtest.NewDatabase(t)
	ch := []string{"--clickhouse-addr", chtest.Addr(), "--clickhouse-database", db}
	// Facts of calendar 1; calendar 4's served rows do not exist yet.
	if code, _, stderr := exec(ctx, append([]string{"run", "--until-caught-up", "--kafka-brokers", brokers, "--kafka-group", "first", "--metrics-addr", ""}, ch...)...); code != 0 {
		t.Fatalf("run: %s", stderr)
	}
	// An "old release" member in the group the new run uses.
	old, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.ConsumerGroup("g"), kgo.ConsumeTopics("usage-events"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ctx.Err() == nil {
			if fs := old.PollFetches(ctx); fs.IsClientClosed() {
				return
			}
		}
	}()
	waitFor(t, "the old member joined", 30*time.Second, func() bool {
		gs, err := kadm.NewClient(old).DescribeGroups(ctx, "g")
		return err == nil && len(gs["g"].Members) == 1
	})
	type res struct {
		code   int
		stderr string
	}
	done := make(chan res, 1)
	go func() {
		code, _, stderr := exec(ctx, append([]string{"run", "--until-caught-up", "--kafka-brokers", brokers, "--kafka-group", "g", "--metrics-addr", "", "--fiscal-year-start-month", "4"}, ch...)...)
		done <- res{code, stderr}
	}()
	select {
	case r := <-done:
		t.Fatalf("run did not wait for the old member: exit %d\n%s", r.code, r.stderr)
	case <-time.After(5 * time.Second):
	}
	old.Close()
	r := <-done
	if r.code != 0 || !strings.Contains(r.stderr, "waiting for the consumer group to be empty") {
		t.Fatalf("run: exit %d, want 0 after saying it waits:\n%s", r.code, r.stderr)
	}
	code, out, _ := exec(ctx, append([]string{"verify", "--fiscal-year-start-month", "4"}, ch...)...)
	if code != 0 || !strings.Contains(out, "8 accounts checked, 0 differences") {
		t.Fatalf("verify: exit %d\n%s", code, out)
	}
}
