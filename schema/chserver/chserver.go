// Package chserver starts a private, throw-away ClickHouse server: its own
// data directory, loopback only, on a free port. The demo uses it when no
// ClickHouse is configured, the tests use it through schema/chtest, and
// schema/chcluster starts several of them (with extra configuration) as a
// cluster.
//
// A Server is owned by whoever started it and is not safe for concurrent
// use: Stop, Kill and Restart are called by one goroutine at a time (Addr,
// Dir and Port never change and may be read by anyone). Each running process
// has one goroutine that waits for it; Stop and Kill wait for that goroutine.
// The process gets SIGKILL when the thread that started it exits, so it
// does not outlive the test binary. No metrics.
package chserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Binary is the server executable Debian's clickhouse-server package installs.
const Binary = "clickhouse-server"

// Options change what StartWith writes besides the base configuration.
type Options struct {
	// ExtraConfig holds XML elements (without the <yandex> root) merged over
	// the base configuration: they are written inside <yandex> to
	// <dir>/config.d/extra.xml, which clickhouse-server merges over
	// config.xml at start. Elements given here replace or extend the base
	// ones (remote_servers, zookeeper, macros, interserver_http_port, …).
	// Empty removes a previous extra.xml.
	ExtraConfig string
}

// Server is a running private ClickHouse server.
type Server struct {
	Addr string // host:port of the native protocol
	Dir  string // data directory
	Port int    // native protocol port

	bin      string
	httpPort int
	opts     Options

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited and been reaped
	err  error         // cmd.Wait's result, set before done is closed
}

const configXML = `<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{{DIR}}/server.log</log><errorlog>{{DIR}}/server.err.log</errorlog><size>10M</size><count>1</count><console>0</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{{TCP}}</tcp_port>
    <http_port>{{HTTP}}</http_port>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
    <path>{{DIR}}/data/</path>
    <tmp_path>{{DIR}}/tmp/</tmp_path>
    <user_files_path>{{DIR}}/user_files/</user_files_path>
    <format_schema_path>{{DIR}}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mlock_executable>false</mlock_executable>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
`

const usersXML = `<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default><readonly><readonly>1</readonly></readonly></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`

// Start launches clickhouse-server with its data in dir (created if needed)
// on a free loopback port and waits until it accepts connections.
// If port is 0 a free one is chosen; a restart may pass the old port.
func Start(ctx context.Context, dir string, port int) (*Server, error) {
	return StartWith(ctx, dir, port, Options{})
}

// StartWith is Start with extra configuration.
func StartWith(ctx context.Context, dir string, port int, opts Options) (*Server, error) {
	bin, err := exec.LookPath(Binary)
	if err != nil {
		return nil, fmt.Errorf("%s not found (install Debian's clickhouse-server package: apt-get install clickhouse-server clickhouse-client): %w", Binary, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("clickhouse dir: %w", err)
	}
	// The ports are free when chosen and bound a moment later; in between
	// another process's outgoing connection may take one. A launch that
	// fails so is tried again with new ports (the ports this function
	// chose; a caller's port stays), three times in all.
	for attempt := 1; ; attempt++ {
		ports, err := FreePorts(2)
		if err != nil {
			return nil, err
		}
		p := port
		if p == 0 {
			p = ports[1]
		}
		s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", p), Dir: dir, Port: p, bin: bin, httpPort: ports[0], opts: opts}
		if err := s.writeConfig(); err != nil {
			return nil, err
		}
		err = s.launch(ctx)
		if err == nil {
			return s, nil
		}
		if attempt == 3 || !strings.Contains(err.Error(), "Address already in use") {
			return nil, err
		}
	}
}

// Restart starts the server again on the same ports, data directory and
// options, and waits until it accepts connections. A server still running
// is stopped first (Stop). A failed Restart leaves the server stopped.
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Stop(); err != nil {
		return err
	}
	if err := s.writeConfig(); err != nil {
		return err
	}
	return s.launch(ctx)
}

// Pid is the process id of the running server, 0 when it has exited.
func (s *Server) Pid() int {
	if s == nil || s.cmd == nil || s.exited() {
		return 0
	}
	return s.cmd.Process.Pid
}

func (s *Server) writeConfig() error {
	cfg := strings.NewReplacer("{{DIR}}", s.Dir, "{{TCP}}", fmt.Sprint(s.Port), "{{HTTP}}", fmt.Sprint(s.httpPort)).Replace(configXML)
	if err := os.WriteFile(filepath.Join(s.Dir, "config.xml"), []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("clickhouse config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "users.xml"), []byte(usersXML), 0o644); err != nil {
		return fmt.Errorf("clickhouse users: %w", err)
	}
	extra := filepath.Join(s.Dir, "config.d", "extra.xml")
	if s.opts.ExtraConfig == "" {
		if err := os.Remove(extra); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("clickhouse extra config: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(extra), 0o755); err != nil {
		return fmt.Errorf("clickhouse extra config: %w", err)
	}
	x := "<?xml version=\"1.0\"?>\n<yandex>\n" + s.opts.ExtraConfig + "\n</yandex>\n"
	if err := os.WriteFile(extra, []byte(x), 0o644); err != nil {
		return fmt.Errorf("clickhouse extra config: %w", err)
	}
	return nil
}

// launch starts the process and waits until it listens; on failure the
// process is killed and reaped.
func (s *Server) launch(ctx context.Context) error {
	out, err := os.OpenFile(filepath.Join(s.Dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("clickhouse log: %w", err)
	}
	cmd := exec.Command(s.bin, "--config-file="+filepath.Join(s.Dir, "config.xml"))
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("start clickhouse-server: %w", err)
	}
	done := make(chan struct{})
	s.cmd, s.done, s.err = cmd, done, nil
	go func() {
		s.err = cmd.Wait()
		out.Close()
		close(done)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(s.Dir, "server.err.log"))
			return fmt.Errorf("clickhouse-server exited during start: %v: %s", s.err, tail(log, 800))
		case <-ctx.Done():
			s.Kill()
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Kill()
			return errors.New("clickhouse-server did not listen within 60s")
		}
	}
}

func (s *Server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Stop terminates the server (SIGTERM, then SIGKILL after 10s) and waits.
// The server finishes open client connections first, idle ones included:
// close them before Stop for a quick stop. Stopping a server that has
// already exited does nothing.
func (s *Server) Stop() error {
	if s == nil || s.cmd == nil || s.exited() {
		return nil
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
	return nil
}

// Kill stops the server with SIGKILL (a crash) and waits.
// Killing a server that has already exited does nothing.
func (s *Server) Kill() {
	if s == nil || s.cmd == nil || s.exited() {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
}

// FreePorts returns n distinct loopback TCP ports that were free a moment
// ago (all held open together while they are chosen, so none repeats).
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
