package chaos

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// snap is what one scrape of an instance's /metrics says.
type snap struct {
	at       time.Time
	flushOK  float64 // usagepipe_flushes_total{result="ok"}
	flushErr float64 // usagepipe_flushes_total{result="error"}
	replayed float64 // usagepipe_records_replayed_total
	consumed float64 // usagepipe_records_consumed_total
	pending  float64 // usagepipe_pending_facts
	assigned float64 // usagepipe_assigned_partitions
	rows     float64 // sum of usagepipe_clickhouse_rows_written_total
	ready    float64 // usagepipe_ready
	lag      float64 // sum of usagepipe_consumer_lag_records
}

// parseMetrics reads the few series the suite watches from Prometheus text.
func parseMetrics(r io.Reader) snap {
	s := snap{at: time.Now()}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "usagepipe_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		switch key := line[:i]; {
		case key == `usagepipe_flushes_total{result="ok"}`:
			s.flushOK = v
		case key == `usagepipe_flushes_total{result="error"}`:
			s.flushErr = v
		case key == "usagepipe_records_replayed_total":
			s.replayed = v
		case key == "usagepipe_records_consumed_total":
			s.consumed = v
		case key == "usagepipe_pending_facts":
			s.pending = v
		case key == "usagepipe_assigned_partitions":
			s.assigned = v
		case key == "usagepipe_ready":
			s.ready = v
		case strings.HasPrefix(key, "usagepipe_clickhouse_rows_written_total{"):
			s.rows += v
		case strings.HasPrefix(key, "usagepipe_consumer_lag_records{"):
			s.lag += v
		}
	}
	return s
}

// How an instance was ended on purpose.
const (
	endNone int32 = iota
	endKilled
	endTermed
)

// instance is one `usagepipe run` process (one incarnation of a slot).
type instance struct {
	name    string // "p<slot>.<incarnation>"
	slot    int
	cmd     *exec.Cmd
	pid     int
	addr    string // metrics host:port
	logPath string
	started time.Time
	done    chan struct{} // closed once the process has been waited for
	exitErr error         // valid after done

	ended  atomic.Int32 // endNone, endKilled, endTermed
	paused atomic.Bool  // SIGSTOPped: the scraper leaves it alone

	excused *atomic.Int32 // > 0 while stalls are expected (ClickHouse down, a zombie, no data produced)

	mu         sync.Mutex
	last       snap      // the latest successful scrape
	firstFlush time.Time // first scrape showing a successful flush
	stallFrom  time.Time // since when records wait and no flush succeeded
	maxStall   time.Duration
	stallEnd   time.Time // when maxStall was last observed
}

var httpc = &http.Client{Timeout: time.Second}

func (in *instance) get(path string, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+in.addr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// scrape reads /metrics once and remembers the result.
func (in *instance) scrape(timeout time.Duration) (snap, error) {
	code, body, err := in.get("/metrics", timeout)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("/metrics: HTTP %d", code)
	}
	if err != nil {
		return snap{}, err
	}
	s := parseMetrics(strings.NewReader(string(body)))
	in.mu.Lock()
	// A stall: the instance owns partitions while data flows to all of
	// them, has flushed before, and its flush counter stands still.
	switch {
	case in.excused.Load() > 0 || s.assigned == 0 || s.flushOK == 0 || s.flushOK != in.last.flushOK || in.stallFrom.IsZero():
		in.stallFrom = s.at
	case s.at.Sub(in.stallFrom) > in.maxStall:
		in.maxStall, in.stallEnd = s.at.Sub(in.stallFrom), s.at
	}
	in.last = s
	if s.flushOK > 0 && in.firstFlush.IsZero() {
		in.firstFlush = s.at
	}
	in.mu.Unlock()
	return s, nil
}

func (in *instance) snapshot() (snap, time.Time) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.last, in.firstFlush
}

// scraper polls /metrics every interval until the process ends.
func (in *instance) scraper(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-in.done:
			return
		case <-t.C:
		}
		if !in.paused.Load() {
			_, _ = in.scrape(interval)
		}
	}
}

func (in *instance) alive() bool {
	select {
	case <-in.done:
		return false
	default:
		return true
	}
}

// ready reports /readyz: 1 for 200, 0 for 503, -1 if it did not answer.
func (in *instance) ready() int {
	code, _, err := in.get("/readyz", 500*time.Millisecond)
	switch {
	case err != nil:
		return -1
	case code == http.StatusOK:
		return 1
	case code == http.StatusServiceUnavailable:
		return 0
	}
	return -1
}

func (in *instance) signal(sig syscall.Signal) {
	_ = syscall.Kill(in.pid, sig) // fails only if the process is gone
}

// kill SIGKILLs the process and waits for it.
func (in *instance) kill() {
	in.ended.Store(endKilled)
	in.signal(syscall.SIGKILL)
	<-in.done
}

// term SIGTERMs the process and waits up to timeout for a clean exit.
func (in *instance) term(timeout time.Duration) error {
	in.ended.Store(endTermed)
	in.signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(timeout):
		in.signal(syscall.SIGKILL)
		<-in.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed\n%s", in.name, timeout, in.logTail(3000))
	}
	if in.exitErr != nil {
		return fmt.Errorf("%s exited after SIGTERM with %v\n%s", in.name, in.exitErr, in.logTail(3000))
	}
	return nil
}

func (in *instance) logTail(n int) string {
	b, _ := os.ReadFile(in.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// launcher starts `usagepipe run` processes with one set of settings.
type launcher struct {
	bin  string
	env  []string // the process environment: USAGEPIPE_* settings
	args []string // flags added to every run
	dir  string   // logs

	excused atomic.Int32 // see instance.excused

	mu  sync.Mutex
	seq map[int]int // slot → incarnations so far
	all []*instance
}

func newLauncher(bin, dir string, settings map[string]string, args []string) *launcher {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "USAGEPIPE_") {
			env = append(env, kv)
		}
	}
	for k, v := range settings {
		env = append(env, k+"="+v)
	}
	return &launcher{bin: bin, env: env, args: args, dir: dir, seq: map[int]int{}}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start launches one process for slot. It does not wait for it to be up
// (see waitUp): with ClickHouse down, a process waits for it before serving
// /healthz.
func (l *launcher) start(slot int, extra ...string) (*instance, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.seq[slot]++
	name := fmt.Sprintf("p%d.%d", slot, l.seq[slot])
	l.mu.Unlock()
	in := &instance{
		name:    name,
		slot:    slot,
		addr:    fmt.Sprintf("127.0.0.1:%d", port),
		logPath: filepath.Join(l.dir, name+".log"),
		done:    make(chan struct{}),
		excused: &l.excused,
	}
	args := append([]string{"run", "--metrics-addr", in.addr, "--flush-interval", "200ms"}, l.args...)
	args = append(args, extra...)
	logf, err := os.Create(in.logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(l.bin, args...)
	cmd.Env = l.env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", l.bin, err)
	}
	in.cmd, in.pid, in.started = cmd, cmd.Process.Pid, time.Now()
	go func() { // owned by in: ends with the process, which cleanup ensures
		in.exitErr = cmd.Wait()
		logf.Close()
		close(in.done)
	}()
	go in.scraper(200 * time.Millisecond)
	l.mu.Lock()
	l.all = append(l.all, in)
	l.mu.Unlock()
	return in, nil
}

// waitUp waits until in answers /healthz.
func (in *instance) waitUp(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if code, _, err := in.get("/healthz", 300*time.Millisecond); err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-in.done:
			return fmt.Errorf("%s exited during start: %v\n%s", in.name, in.exitErr, in.logTail(3000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not up within %s\n%s", in.name, timeout, in.logTail(3000))
		}
	}
}

// runOnce runs the binary with args to completion (migrate, run
// --until-caught-up) and returns its combined output.
func (l *launcher) runOnce(ctx context.Context, logName string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, l.bin, args...)
	cmd.Env = l.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	_ = os.WriteFile(filepath.Join(l.dir, logName+".log"), out, 0o644)
	return string(out), err
}

// cleanup kills every process still running.
func (l *launcher) cleanup() {
	l.mu.Lock()
	all := append([]*instance(nil), l.all...)
	l.mu.Unlock()
	for _, in := range all {
		if in.alive() {
			in.signal(syscall.SIGCONT)
			in.kill()
		}
	}
}

// unexpected lists the processes that ended without being asked to.
func (l *launcher) unexpected() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, in := range l.all {
		if !in.alive() && in.ended.Load() == endNone {
			out = append(out, fmt.Sprintf("%s exited on its own: %v\n%s", in.name, in.exitErr, in.logTail(2000)))
		}
	}
	return out
}

// totals sums, over every incarnation, the last scraped counters, and
// finds the longest stall.
func (l *launcher) totals() (replayed, maxReplayed, rows float64, incarnations int, stall time.Duration, stallWho string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, in := range l.all {
		in.mu.Lock()
		s := in.last
		if in.maxStall > stall {
			stall, stallWho = in.maxStall, fmt.Sprintf("%s, ended %s", in.name, in.stallEnd.Format("15:04:05.0"))
		}
		in.mu.Unlock()
		replayed += s.replayed
		maxReplayed = max(maxReplayed, s.replayed)
		rows += s.rows
	}
	return replayed, maxReplayed, rows, len(l.all), stall, stallWho
}

// helpHas reports whether `usagepipe run --help` lists flag.
func helpHas(bin, flag string) (bool, error) {
	out, err := exec.Command(bin, "run", "--help").CombinedOutput()
	if err != nil && len(out) == 0 {
		return false, fmt.Errorf("%s run --help: %w", bin, err)
	}
	return strings.Contains(string(out), "--"+flag+" "), nil
}
