package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/<pid>/stat CPU times (100 on
// every Linux build we run on).
const clockTick = 100

// findPID returns the first process for which match(cmdline, ppid) holds,
// or 0.
func findPID(match func(cmdline []string, ppid int) bool) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		cmdline := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if match(cmdline, procPPID(pid)) {
			return pid
		}
	}
	return 0
}

// statFields returns the fields of /proc/<pid>/stat after the command name.
func statFields(pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(raw[i+1:])) // [0] is state (field 3)
}

func procPPID(pid int) int {
	f := statFields(pid)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// procCPU returns user+system CPU time of pid (all its threads), or 0.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	f := statFields(pid)
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64) // utime, field 14
	s, _ := strconv.ParseInt(f[12], 10, 64) // stime, field 15
	return time.Duration(u+s) * time.Second / clockTick
}

// procMem returns the resident set size of pid and its high-water mark
// (VmRSS, VmHWM) in bytes, or zeros.
func procMem(pid int) (rss, hwm int64) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	return rss, hwm
}

// selfCPU is this process's user+system CPU time (the in-process kfake
// broker's cost, while the driver does nothing else).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// pipelineArgs are the settings of one `usagepipe run` instance.
type pipelineArgs struct {
	brokers       []string
	topic, dlq    string
	group         string
	db            string
	metricsAddr   string // "" for none
	untilCaughtUp bool
	extra         []string
	env           []string // extra KEY=value pairs (GOMEMLIMIT=…)
}

func (a pipelineArgs) argv() []string {
	args := []string{"run",
		"--kafka-brokers", strings.Join(a.brokers, ","),
		"--kafka-topic", a.topic, "--dlq-topic", a.dlq, "--kafka-group", a.group,
		"--clickhouse-addr", env.chAddr, "--clickhouse-database", a.db,
		"--metrics-addr", a.metricsAddr,
	}
	if a.untilCaughtUp {
		args = append(args, "--until-caught-up")
	}
	return append(args, a.extra...)
}

// proc is a running `usagepipe run` process and what is known about it.
type proc struct {
	cmd     *exec.Cmd
	logPath string
	started time.Time

	mu      sync.Mutex
	samples []rssSample
	hwm     int64 // largest VmHWM sampled
	done    chan struct{}
	stop    chan struct{}
	wg      sync.WaitGroup
	err     error
	ended   time.Time
}

type rssSample struct {
	at  time.Duration // since start
	rss int64
}

// startPipeline starts `usagepipe run` with an environment free of
// USAGEPIPE_ settings (flags only) and of GOGC/GOMEMLIMIT, plus a.env, and
// samples its RSS until it exits.
func startPipeline(t *testing.T, a pipelineArgs) *proc {
	t.Helper()
	// The log outlives a failed test (t.TempDir would not): kept for a
	// post-mortem, its path logged.
	logDir, err := os.MkdirTemp("", "usagepipe-bench-log-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("usagepipe log kept: %s", logDir)
			return
		}
		os.RemoveAll(logDir)
	})
	logPath := filepath.Join(logDir, "usagepipe.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(env.bin, a.argv()...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "USAGEPIPE_") && !strings.HasPrefix(kv, "GOMEMLIMIT=") && !strings.HasPrefix(kv, "GOGC=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, a.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{cmd: cmd, logPath: logPath, done: make(chan struct{}), stop: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start usagepipe: %v", err)
	}
	p.wg.Go(func() { // owned by p: ends with the process
		defer logf.Close()
		p.err = cmd.Wait()
		p.ended = time.Now()
		close(p.done)
	})
	p.wg.Go(func() { // owned by p: ends when the process does
		tick := time.NewTicker(*flagRSSEvery)
		defer tick.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-tick.C:
			}
			if rss, hwm := procMem(cmd.Process.Pid); rss > 0 {
				p.mu.Lock()
				p.samples = append(p.samples, rssSample{time.Since(p.started), rss})
				p.hwm = max(p.hwm, hwm)
				p.mu.Unlock()
			}
		}
	})
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
		}
		p.wg.Wait()
	})
	return p
}

// procStats is what the kernel says about a finished process.
type procStats struct {
	wall      time.Duration
	user, sys time.Duration
	// maxRSS is the peak resident set size in bytes: the largest VmHWM
	// sampled every -bench.rss-every (it misses growth in the last interval
	// before exit). Not wait4's ru_maxrss: Linux folds the parent's RSS into
	// it at exec when the child was started with CLONE_VM (os/exec does), so
	// a driver holding read-back records inflates it (ruMaxRSS, for the
	// record).
	maxRSS   int64
	ruMaxRSS int64
}

func (s procStats) cpu() time.Duration { return s.user + s.sys }

// wait waits for p to exit (killing it at ctx's end) and returns its
// rusage; a non-zero exit fails t with the end of its log.
func (p *proc) wait(ctx context.Context, t *testing.T) procStats {
	t.Helper()
	select {
	case <-p.done:
	case <-ctx.Done():
		// SIGQUIT first: the Go runtime writes every goroutine's stack to
		// the log (kept, since the test fails) before exiting.
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		t.Fatalf("usagepipe did not finish in time (goroutine dump in %s)\n%s", p.logPath, p.logTail())
	}
	p.wg.Wait()
	if p.err != nil {
		t.Fatalf("usagepipe: %v\n%s", p.err, p.logTail())
	}
	ru := p.cmd.ProcessState.SysUsage().(*syscall.Rusage)
	st := procStats{
		wall:     p.ended.Sub(p.started),
		user:     time.Duration(ru.Utime.Nano()),
		sys:      time.Duration(ru.Stime.Nano()),
		ruMaxRSS: ru.Maxrss << 10, // kB on Linux
	}
	p.mu.Lock()
	st.maxRSS = p.hwm
	p.mu.Unlock()
	if st.maxRSS == 0 { // exited before the first sample
		st.maxRSS = st.ruMaxRSS
	}
	return st
}

// signal sends sig (e.g. SIGTERM to end a run without --until-caught-up).
func (p *proc) signal(sig os.Signal) { _ = p.cmd.Process.Signal(sig) }

func (p *proc) rssSamples() []rssSample {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]rssSample(nil), p.samples...)
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// procHWM returns the peak resident set size of pid (VmHWM) in bytes, or 0.
func procHWM(pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
