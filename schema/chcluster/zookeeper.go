package chcluster

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

// ZooKeeperJar is the server jar of Debian's zookeeper package; its manifest
// names the libraries it needs. ZooKeeperConf holds the package's logging
// configuration.
const (
	ZooKeeperJar  = "/usr/share/java/zookeeper.jar"
	ZooKeeperConf = "/etc/zookeeper/conf"
)

// zooCfg is a standalone server on loopback. A short tick lets sessions be
// short (ZooKeeper accepts 2 to 20 ticks), so the ephemeral nodes of a
// killed clickhouse-server vanish soon; forceSync=no skips the fsync per
// write (the data is throw-away); no admin HTTP server (it would take port
// 8080).
const zooCfg = `tickTime=250
dataDir={{DIR}}/data
clientPort={{PORT}}
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=srvr
forceSync=no
`

// zooKeeper is a running standalone ZooKeeper.
type zooKeeper struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited and been reaped
	err  error         // cmd.Wait's result, set before done is closed
}

// startZooKeeper runs ZooKeeper with its data and logs in dir on port and
// waits until it serves requests.
func startZooKeeper(ctx context.Context, dir string, port int) (*zooKeeper, error) {
	java, err := exec.LookPath("java")
	if err != nil {
		return nil, fmt.Errorf("java not found (apt-get install default-jre-headless): %w", err)
	}
	if _, err := os.Stat(ZooKeeperJar); err != nil {
		return nil, fmt.Errorf("zookeeper not installed (apt-get install zookeeper): %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, fmt.Errorf("zookeeper dir: %w", err)
	}
	cfgPath := filepath.Join(dir, "zoo.cfg")
	cfg := strings.NewReplacer("{{DIR}}", dir, "{{PORT}}", fmt.Sprint(port)).Replace(zooCfg)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, fmt.Errorf("zookeeper config: %w", err)
	}
	out, err := os.OpenFile(filepath.Join(dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("zookeeper log: %w", err)
	}
	cmd := exec.Command(java,
		// A small heap and a client JIT: ZooKeeper holds a few thousand
		// nodes here, and startup time counts more than peak speed.
		"-Xms16m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
		"-Dzookeeper.admin.enableServer=false",
		"-Dzookeeper.log.dir="+dir,
		"-cp", ZooKeeperJar+":"+ZooKeeperConf,
		"org.apache.zookeeper.server.ZooKeeperServerMain", cfgPath)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start zookeeper: %w", err)
	}
	done := make(chan struct{})
	z := &zooKeeper{addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd, done: done}
	go func() {
		z.err = cmd.Wait()
		out.Close()
		close(done)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if z.serving() {
			return z, nil
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "stdout.log"))
			return nil, fmt.Errorf("zookeeper exited during start: %v: %s", z.err, tail(log, 800))
		case <-ctx.Done():
			z.stop(syscall.SIGKILL)
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			z.stop(syscall.SIGKILL)
			return nil, errors.New("zookeeper did not serve within 60s")
		}
	}
}

// serving asks the server's state with the srvr four-letter command.
func (z *zooKeeper) serving() bool {
	c, err := net.DialTimeout("tcp", z.addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("srvr")); err != nil {
		return false
	}
	var b strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return strings.Contains(b.String(), "Mode: standalone")
}

func (z *zooKeeper) pid() int {
	select {
	case <-z.done:
		return 0
	default:
		return z.cmd.Process.Pid
	}
}

// stop sends sig (SIGTERM: SIGKILL after 10s) and waits for the exit.
func (z *zooKeeper) stop(sig syscall.Signal) {
	select {
	case <-z.done:
		return
	default:
	}
	_ = syscall.Kill(-z.cmd.Process.Pid, sig)
	select {
	case <-z.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-z.cmd.Process.Pid, syscall.SIGKILL)
		<-z.done
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
