package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema/chserver"
)

var (
	flagEvents     = flag.Int("bench.events", 2_000_000, "records to produce per run")
	flagAccounts   = flag.Int("bench.accounts", gen.DefaultAccounts, "distinct accounts")
	flagUsers      = flag.Int("bench.users", gen.DefaultUsers, "distinct users")
	flagPartitions = flag.Int("bench.partitions", 4, "partitions of the events topic")
	flagDupRatio   = flag.Float64("bench.dup-ratio", 0, "share of re-sent duplicates (gen)")
	flagBadRatio   = flag.Float64("bench.bad-ratio", 0, "share of invalid records (gen)")
	flagBrokers    = flag.String("bench.brokers", "kfake", "comma-separated brokers to run against: kfake, apache")
	flagBin        = flag.String("bench.bin", "", "usagepipe binary to measure (default: go build ./cmd/usagepipe into a temporary directory)")
	flagCheck      = flag.Bool("bench.check", true, "compare the rollups with aggregate/reference over every record read back from the topic")
	flagOut        = flag.String("bench.out", "", "append one JSON line per result to this file")
	flagCH         = flag.String("bench.clickhouse", "", "host:port of a running ClickHouse (default: a private clickhouse-server for this test binary)")
	flagProfileDir = flag.String("bench.profile-dir", "", "where TestProfile writes cpu.pprof and heap.pprof (default: a temporary directory, path logged)")
	flagRunTimeout = flag.Duration("bench.run-timeout", 5*time.Minute, "a `usagepipe run --until-caught-up` still running after this is stopped with SIGQUIT (goroutine dump in its kept log) and the test fails")
	flagRSSEvery   = flag.Duration("bench.rss-every", 100*time.Millisecond, "how often the pipeline's RSS is sampled from /proc")
)

// env is what TestMain sets up for every test.
var env struct {
	bin    string // usagepipe binary
	chAddr string
	chPID  int // 0 when the server is not ours
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(mainCode(m))
}

func mainCode(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "usagepipe-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	env.bin = *flagBin
	if env.bin == "" {
		env.bin = filepath.Join(tmp, "usagepipe")
		cmd := exec.Command("go", "build", "-o", env.bin, "github.com/usagepipe/usagepipe/cmd/usagepipe")
		cmd.Dir = moduleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build usagepipe: %v\n%s", err, out)
			return 1
		}
	} else if env.bin, err = filepath.Abs(env.bin); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}

	env.chAddr = *flagCH
	if env.chAddr == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		dir := filepath.Join(tmp, "clickhouse")
		srv, err := chserver.Start(ctx, dir, 0)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer srv.Stop()
		env.chAddr = srv.Addr
		env.chPID = findPID(func(cmdline []string, ppid int) bool {
			return ppid == os.Getpid() && len(cmdline) > 1 && strings.Contains(strings.Join(cmdline, " "), "--config-file="+filepath.Join(dir, "config.xml"))
		})
	}
	return kafkatest.Runner(m).Run()
}

// result is one measured run, as a JSON line.
type result struct {
	Test       string  `json:"test"`
	Broker     string  `json:"broker"`
	Events     int     `json:"events"`
	Partitions int     `json:"partitions"`
	Instances  int     `json:"instances,omitempty"`
	WallS      float64 `json:"wall_s"`
	EventsPerS float64 `json:"events_per_s"`
	CPUNsEvent float64 `json:"cpu_ns_per_event"`
	UserS      float64 `json:"user_s"`
	SysS       float64 `json:"sys_s"`
	MaxRSSMiB  float64 `json:"max_rss_mib"`
	// CPU of the other processes over the same interval, per event.
	BrokerCPUNsEvent float64 `json:"broker_cpu_ns_per_event,omitempty"`
	CHCPUNsEvent     float64 `json:"clickhouse_cpu_ns_per_event,omitempty"`
	// Exact is "yes", "NO (…)" or "not checked".
	Exact   string            `json:"exact"`
	Produce float64           `json:"produce_s"`
	Extra   map[string]string `json:"extra,omitempty"`
	// Load is the 1-minute load average when the measurement started and
	// when it ended (other engineers' jobs share the machine).
	Load string `json:"load"`
	Date string `json:"date"`
}

var outMu sync.Mutex

func report(t *testing.T, r result) {
	t.Helper()
	r.Date = time.Now().UTC().Format(time.RFC3339)
	b, _ := json.Marshal(r)
	t.Logf("RESULT %s", b)
	if *flagOut == "" {
		return
	}
	outMu.Lock()
	defer outMu.Unlock()
	f, err := os.OpenFile(*flagOut, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Errorf("bench.out: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s\n", b)
}

// loadAvg is the 1-minute load average from /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// moduleRoot is the nearest directory at or above the working directory
// holding go.mod (go test runs in the package directory), or "".
func moduleRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}
