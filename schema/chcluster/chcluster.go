// Package chcluster starts a private ClickHouse cluster for tests: one
// standalone ZooKeeper and three clickhouse-server processes (schema/chserver)
// on loopback, each with its own ports and data directory under one
// directory. The cluster is named Name and has two shards:
//
//	shard 1 (macro shard=01): replicas s1r1 and s1r2
//	shard 2 (macro shard=02): replica  s2r1
//
// Both shards use internal_replication, every node knows the ZooKeeper and
// runs ON CLUSTER DDL from /clickhouse/task_queue/ddl, and the macro replica
// is unique across the cluster, so a table replicated on every node can use
// '{shard}-{replica}' as its replica name under a ZooKeeper path without
// {shard}.
//
// ON CLUSTER DDL waits for every node, so while a node is down it blocks
// (distributed_ddl_task_timeout, 180 s by default).
//
// A Cluster is owned by whoever called Start and stopped by Stop. It is not
// safe for concurrent use: one goroutine at a time stops, kills or restarts
// its nodes (Node fields never change and may be read by anyone). Each
// process has one goroutine that waits for its exit; Node.Stop, Node.Kill
// and Cluster.Stop end the process and wait for that goroutine. Every
// process gets SIGKILL when the thread that started it exits, so none
// outlives the test binary. With Options.ZooKeeperProxy each node reaches
// ZooKeeper through a proxy goroutine of the Cluster (accept loop and two
// copiers per connection), which Stop closes and waits for;
// Node.SilenceZooKeeper may be called from any goroutine. No metrics.
package chcluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/usagepipe/usagepipe/schema/chserver"
)

// Name is the cluster's name in every node's remote_servers.
const Name = "usagepipe_test"

// DDLPath is where the nodes queue ON CLUSTER DDL in ZooKeeper.
const DDLPath = "/clickhouse/task_queue/ddl"

// SessionTimeoutMS is the nodes' ZooKeeper session timeout. Short, so that
// a killed node's ephemeral nodes (its replicas' is_active) expire soon and
// the node's replicas become active again soon after a restart.
const SessionTimeoutMS = 4000

// Cluster is a running ZooKeeper and its ClickHouse nodes.
type Cluster struct {
	Name      string // the cluster name (Name)
	ZooKeeper string // host:port of ZooKeeper
	Dir       string // holds zookeeper/ and one directory per node

	zk      *zooKeeper
	nodes   []*Node
	proxies []*zkProxy // with Options.ZooKeeperProxy
}

// Node is one clickhouse-server of the cluster.
type Node struct {
	Addr    string // host:port of the native protocol
	Shard   int    // shard number, 1-based as shard_num in system.clusters
	Replica string // the replica macro, unique across the cluster
	Dir     string // data directory

	srv     *chserver.Server
	zkProxy *zkProxy // with Options.ZooKeeperProxy
}

// layout is the cluster's nodes in order: Node(i) is layout()[i].
func layout() []Node {
	return []Node{{Shard: 1, Replica: "s1r1"}, {Shard: 1, Replica: "s1r2"}, {Shard: 2, Replica: "s2r1"}}
}

// Options change how StartWith starts a cluster.
type Options struct {
	// ZooKeeperProxy: every node reaches ZooKeeper through a proxy of its
	// own in this process, so that Node.SilenceZooKeeper can make its
	// link go silent.
	ZooKeeperProxy bool
}

// Start starts ZooKeeper and then the nodes (in parallel), with their data
// under dir (created if needed), and returns when every node accepts
// connections. On failure it stops whatever it started.
func Start(ctx context.Context, dir string) (*Cluster, error) {
	return StartWith(ctx, dir, Options{})
}

// StartWith is Start with options.
//
// The ports are chosen free, then bound by the servers a moment later; in
// between the kernel may hand one to another process's outgoing
// connection. A start that fails so ("Address already in use") is
// stopped and tried again with new ports, in a fresh subdirectory of dir,
// up to three times in all.
func StartWith(ctx context.Context, dir string, opt Options) (*Cluster, error) {
	for attempt := 1; ; attempt++ {
		d := dir
		if attempt > 1 {
			d = filepath.Join(dir, fmt.Sprintf("retry%d", attempt))
		}
		c, err := startOnce(ctx, d, opt)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "Address already in use") {
			return c, err
		}
	}
}

// startOnce is one attempt of StartWith.
func startOnce(ctx context.Context, dir string, opt Options) (*Cluster, error) {
	nodes := layout()
	// The ports: ZooKeeper, then per node its native and interserver ports.
	ports, err := chserver.FreePorts(1 + 2*len(nodes))
	if err != nil {
		return nil, err
	}
	zk, err := startZooKeeper(ctx, filepath.Join(dir, "zookeeper"), ports[0])
	if err != nil {
		return nil, err
	}
	c := &Cluster{Name: Name, ZooKeeper: zk.addr, Dir: dir, zk: zk}
	tcp := func(i int) int { return ports[1+2*i] }
	var remote strings.Builder
	for s := 1; ; s++ {
		var replicas strings.Builder
		for i, n := range nodes {
			if n.Shard == s {
				fmt.Fprintf(&replicas, "\n      <replica><host>127.0.0.1</host><port>%d</port></replica>", tcp(i))
			}
		}
		if replicas.Len() == 0 {
			break
		}
		fmt.Fprintf(&remote, "\n    <shard>\n      <internal_replication>true</internal_replication>%s\n    </shard>", replicas.String())
	}
	if opt.ZooKeeperProxy {
		for i := range nodes {
			p, err := newZKProxy(zk.addr)
			if err != nil {
				c.Stop()
				return nil, err
			}
			nodes[i].zkProxy = p
			c.proxies = append(c.proxies, p)
		}
	}
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i := range nodes {
		n := &nodes[i]
		n.Dir = filepath.Join(dir, n.Replica)
		zkPort := ports[0]
		if n.zkProxy != nil {
			zkPort = n.zkProxy.port()
		}
		extra := fmt.Sprintf(`  <interserver_http_host>127.0.0.1</interserver_http_host>
  <interserver_http_port>%d</interserver_http_port>
  <remote_servers>
   <%s>%s
   </%s>
  </remote_servers>
  <zookeeper>
    <node><host>127.0.0.1</host><port>%d</port></node>
    <session_timeout_ms>%d</session_timeout_ms>
  </zookeeper>
  <macros><shard>%02d</shard><replica>%s</replica></macros>
  <distributed_ddl><path>%s</path></distributed_ddl>`,
			ports[2+2*i], Name, remote.String(), Name, zkPort, SessionTimeoutMS, n.Shard, n.Replica, DDLPath)
		wg.Go(func() {
			n.srv, errs[i] = chserver.StartWith(ctx, n.Dir, tcp(i), chserver.Options{ExtraConfig: extra})
			if n.srv != nil {
				n.Addr = n.srv.Addr
			}
		})
	}
	wg.Wait()
	for i := range nodes {
		c.nodes = append(c.nodes, &nodes[i])
	}
	if err := errors.Join(errs...); err != nil {
		c.Stop()
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	return c, nil
}

// Node is the i-th node: 0 is s1r1, 1 is s1r2, 2 is s2r1.
func (c *Cluster) Node(i int) *Node { return c.nodes[i] }

// Nodes are all nodes, in the order of Node.
func (c *Cluster) Nodes() []*Node { return append([]*Node(nil), c.nodes...) }

// Addrs are the nodes' native addresses, in the order of Node.
func (c *Cluster) Addrs() []string {
	a := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		a[i] = n.Addr
	}
	return a
}

// Stop stops every node (in parallel) and then ZooKeeper, and waits for
// all of them. Stopping twice does nothing more.
func (c *Cluster) Stop() {
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Go(func() { _ = n.Stop() })
	}
	wg.Wait()
	for _, p := range c.proxies {
		p.stop()
	}
	c.zk.stop(syscall.SIGTERM)
}

// SilenceZooKeeper makes the node's link to ZooKeeper drop every byte
// (on) or carry them again (off), keeping its connections open; the node
// sees its session expire after SessionTimeoutMS. It needs a cluster
// started with Options.ZooKeeperProxy.
func (n *Node) SilenceZooKeeper(on bool) error {
	if n.zkProxy == nil {
		return fmt.Errorf("node %s: no ZooKeeper proxy (chcluster.Options.ZooKeeperProxy)", n.Replica)
	}
	n.zkProxy.silent.Store(on)
	return nil
}

// Stop terminates the node (SIGTERM, then SIGKILL after 10s) and waits;
// the node first finishes its open client connections, idle ones included.
func (n *Node) Stop() error { return n.srv.Stop() }

// Kill ends the node with SIGKILL (a crash) and waits.
func (n *Node) Kill() { n.srv.Kill() }

// Restart starts a stopped or killed node again on the same ports and data
// (a running one is stopped first) and waits until it accepts connections.
//
// After Kill, the node's old ZooKeeper session lives on for up to
// SessionTimeoutMS, and with it the is_active node of each of its
// replicas. A node restarted before that finds its replicas "already
// active" and 18.16 retries only 10 s later: its replicated tables are
// read-only and fetch nothing for about 10 s. Restarted after the session
// expired, they catch up at once.
func (n *Node) Restart(ctx context.Context) error { return n.srv.Restart(ctx) }

// Pid is the node's process id, 0 while it is down.
func (n *Node) Pid() int { return n.srv.Pid() }

// ShardMacro is the node's shard macro: "01", "02".
func (n *Node) ShardMacro() string { return fmt.Sprintf("%02d", n.Shard) }

// zooKeeperPid is ZooKeeper's process id, 0 once it has exited.
func (c *Cluster) zooKeeperPid() int { return c.zk.pid() }
