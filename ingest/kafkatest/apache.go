package kafkatest

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

//go:embed fetch-kafka.sh apache/pom.xml apache/log4j2.properties
var files embed.FS

const (
	readyTimeout = 90 * time.Second // JVM start plus KRaft bootstrap; a warm start takes a few seconds
	stopTimeout  = 30 * time.Second // controlled shutdown before SIGKILL
	startTries   = 3                // free-port races: another process may take a port we picked
	heap         = "-Xmx512m"
)

// apache is the broker shared by one test binary: started by the first
// Apache call, stopped by Main. It is the package's only mutable state; mu
// guards it and is held while the broker starts.
var apache struct {
	mu      sync.Mutex
	inMain  bool
	started bool
	proc    *apacheProc
	err     error
}

// Main runs the tests of m and then stops the broker that [Apache] started,
// if any, and exits. Call it from TestMain in every package that uses Apache
// (directly or through [Brokers]); [Runner] does the same for harnesses that
// call os.Exit themselves.
func Main(m *testing.M) { os.Exit(run(m)) }

// run runs m, stops the shared broker and returns the exit code: m's, or 1
// if the broker did not stop cleanly.
func run(m *testing.M) int {
	apache.mu.Lock()
	apache.inMain = true
	apache.mu.Unlock()

	code := m.Run()

	apache.mu.Lock()
	p := apache.proc // left in place: a late Apache call then reports it exited
	apache.mu.Unlock()
	if p != nil {
		if err := p.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "kafkatest: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Apache returns the test binary's single-node KRaft Apache Kafka broker,
// starting it on the first call: jars from Maven Central (cached, see
// fetch-kafka.sh), free 127.0.0.1 ports, a temporary data directory. It fails
// tb if the broker cannot be started or has died, and if TestMain does not
// call [Main] or run [Runner] (which stop the broker when the tests end).
func Apache(tb testing.TB) *Broker {
	tb.Helper()
	apache.mu.Lock()
	defer apache.mu.Unlock()
	if !apache.inMain {
		tb.Fatal("kafkatest: Apache needs the package's TestMain to call kafkatest.Main(m) or run kafkatest.Runner(m), which stop the shared broker")
	}
	if !apache.started {
		apache.started = true
		apache.proc, apache.err = startApache(tb.Logf)
	}
	if apache.err != nil {
		tb.Fatalf("kafkatest: %v", apache.err)
	}
	if err := apache.proc.alive(); err != nil {
		tb.Fatalf("kafkatest: %v", err)
	}
	return apache.proc.broker.clone()
}

// ApacheVersion returns the Apache Kafka version that [Apache] runs, from
// apache/pom.xml.
func ApacheVersion() string {
	pom, err := files.ReadFile("apache/pom.xml")
	if err != nil {
		panic(err) // embedded; cannot happen
	}
	m := regexp.MustCompile(`<kafka\.version>([^<]+)</kafka\.version>`).FindSubmatch(pom)
	if m == nil {
		panic("kafkatest: apache/pom.xml has no <kafka.version>")
	}
	return string(m[1])
}

// apacheProc is a running broker process and the directory it owns.
type apacheProc struct {
	broker *Broker
	dir    string // temporary; holds server.properties, data/ and kafka.log
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	err    error         // cmd.Wait result, valid after exited is closed
}

func startApache(logf func(string, ...any)) (*apacheProc, error) {
	start := time.Now()
	libs, err := fetchKafka()
	if err != nil {
		return nil, err
	}
	fetched := time.Now()

	var p *apacheProc
	for try := 1; ; try++ {
		p, err = launch(libs)
		if err == nil {
			break
		}
		var pe *portError
		if !errors.As(err, &pe) || try == startTries {
			return nil, err
		}
		logf("kafkatest: retrying Apache Kafka start: %v", err)
	}
	logf("kafkatest: Apache Kafka %s at %s: jars ready in %v, broker ready in %v (dir %s)",
		ApacheVersion(), p.broker.Addrs[0], fetched.Sub(start).Round(time.Millisecond),
		time.Since(fetched).Round(time.Millisecond), p.dir)
	return p, nil
}

// fetchKafka runs the embedded fetch-kafka.sh and returns the libs directory
// it prints.
func fetchKafka() (string, error) {
	tmp, err := os.MkdirTemp("", "kafkatest-fetch-")
	if err != nil {
		return "", fmt.Errorf("fetch Kafka jars: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.CopyFS(tmp, files); err != nil {
		return "", fmt.Errorf("fetch Kafka jars: %w", err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", filepath.Join(tmp, "fetch-kafka.sh"))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("fetch Kafka %s jars from Maven Central with fetch-kafka.sh: %w\n%s",
			ApacheVersion(), err, cleanMaven(stderr.String()))
	}
	libs := strings.TrimSpace(stdout.String())
	if _, err := os.Stat(filepath.Join(libs, "kafka_2.13-"+ApacheVersion()+".jar")); err != nil {
		return "", fmt.Errorf("fetch-kafka.sh printed %q: %w", libs, err)
	}
	return libs, nil
}

// cleanMaven drops the colour resets that Debian's Maven 3.8 prints even in
// batch mode.
func cleanMaven(s string) string {
	return strings.TrimSpace(strings.ReplaceAll(s, "\x1b[0m", ""))
}

// portError means the broker could not bind a port picked for it.
type portError struct{ err error }

func (e *portError) Error() string { return e.err.Error() }
func (e *portError) Unwrap() error { return e.err }

// launch formats a fresh data directory and starts the broker on it.
func launch(libs string) (_ *apacheProc, err error) {
	java, err := javaPath()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kafkatest-apache-")
	if err != nil {
		return nil, fmt.Errorf("start Apache Kafka: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	ports, err := freePorts(2)
	if err != nil {
		return nil, fmt.Errorf("start Apache Kafka: %w", err)
	}
	clientAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	props := filepath.Join(dir, "server.properties")
	if err := os.WriteFile(props, serverProperties(clientAddr, ports[1], filepath.Join(dir, "data")), 0o644); err != nil {
		return nil, fmt.Errorf("start Apache Kafka: %w", err)
	}
	log4j := filepath.Join(dir, "log4j2.properties")
	if err := copyEmbedded("apache/log4j2.properties", log4j); err != nil {
		return nil, fmt.Errorf("start Apache Kafka: %w", err)
	}
	jvm := []string{heap, "-Xms64m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError",
		"-Djava.awt.headless=true", "-Djava.io.tmpdir=" + dir,
		"-Dlog4j2.configurationFile=" + log4j, "-cp", filepath.Join(libs, "*")}

	clusterID, err := newClusterID()
	if err != nil {
		return nil, fmt.Errorf("start Apache Kafka: %w", err)
	}
	format := exec.Command(java, append(jvm, "kafka.tools.StorageTool", "format",
		"--cluster-id", clusterID, "--config", props)...)
	if out, err := format.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("format Apache Kafka storage: %w\n%s", err, tail(out, 4096))
	}

	logPath := filepath.Join(dir, "kafka.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start Apache Kafka: %w", err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(java, append(jvm, "kafka.Kafka", props)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	setDeathSignal(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start Apache Kafka: %w", err)
	}
	p := &apacheProc{
		broker: &Broker{Addrs: []string{clientAddr}, Kind: KindApache},
		dir:    dir,
		cmd:    cmd,
		exited: make(chan struct{}),
	}
	go func() { // owned by p: ends when the process does, which stop ensures
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitReady(); err != nil {
		p.kill()
		log, _ := os.ReadFile(logPath)
		err = fmt.Errorf("start Apache Kafka: %w\nkafka.log ends:\n%s", err, tail(log, 8192))
		if bytes.Contains(log, []byte("Address already in use")) {
			return nil, &portError{err}
		}
		return nil, err
	}
	return p, nil
}

func serverProperties(clientAddr string, controllerPort int, dataDir string) []byte {
	return fmt.Appendf(nil, `# Written by kafkatest: a single-node KRaft broker for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:%[2]d
listeners=PLAINTEXT://%[1]s,CONTROLLER://127.0.0.1:%[2]d
advertised.listeners=PLAINTEXT://%[1]s
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=%[3]s
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Tests replay fixed historical and generated timestamps; Kafka 4 rejects
# records more than 1h in the future by default.
log.message.timestamp.after.max.ms=9223372036854775807
log.message.timestamp.before.max.ms=9223372036854775807
# Those timestamps are weeks old: the default 7-day retention would delete
# them at its next check (every 5 minutes), at a random point of a test.
# Tests that need retention delete records themselves (DeleteRecords).
log.retention.ms=-1
num.network.threads=2
num.io.threads=4
`, clientAddr, controllerPort, dataDir)
}

// waitReady waits until a kgo client sees the broker in metadata.
func (p *apacheProc) waitReady() error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.broker.Addrs...), kgo.DialTimeout(time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	deadline := time.After(readyTimeout)
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		md, err := adm.BrokerMetadata(ctx)
		cancel()
		switch {
		case err != nil:
			last = err
		case len(md.Brokers) == 0:
			last = errors.New("metadata lists no brokers")
		default:
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("broker exited: %v", p.err)
		case <-deadline:
			return fmt.Errorf("broker not ready after %v: %w", readyTimeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// alive returns an error if the broker process has exited.
func (p *apacheProc) alive() error {
	select {
	case <-p.exited:
		log, _ := os.ReadFile(filepath.Join(p.dir, "kafka.log"))
		return fmt.Errorf("Apache Kafka broker exited: %v\nkafka.log ends:\n%s", p.err, tail(log, 8192))
	default:
		return nil
	}
}

// stop shuts the broker down (SIGTERM, then SIGKILL after stopTimeout) and
// removes its directory.
func (p *apacheProc) stop() error {
	defer os.RemoveAll(p.dir)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.kill()
		return fmt.Errorf("stop Apache Kafka: %w", err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(stopTimeout):
		p.kill()
		return fmt.Errorf("stop Apache Kafka: no exit %v after SIGTERM; killed", stopTimeout)
	}
}

func (p *apacheProc) kill() {
	_ = p.cmd.Process.Kill() // fails only if already gone
	<-p.exited
}

func javaPath() (string, error) {
	if home := os.Getenv("JAVA_HOME"); home != "" {
		java := filepath.Join(home, "bin", "java")
		if _, err := os.Stat(java); err == nil {
			return java, nil
		}
	}
	java, err := exec.LookPath("java")
	if err != nil {
		return "", fmt.Errorf("start Apache Kafka: no java (17 or newer) on PATH or in JAVA_HOME: %w", err)
	}
	return java, nil
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close() // hold all until we have n, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// newClusterID returns a random Kafka cluster ID: 16 bytes, URL-safe base64.
func newClusterID() (string, error) {
	for {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		// As Kafka's Uuid.randomUuid: never one that starts with '-' (the
		// storage tool would take it for an option; 1 in 64 did).
		if id := base64.RawURLEncoding.EncodeToString(b[:]); id[0] != '-' {
			return id, nil
		}
	}
}

func copyEmbedded(name, to string) error {
	b, err := fs.ReadFile(files, name)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

// tail returns at most the last n bytes of b.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
