package chcluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// One cluster for the test binary; the tests run one at a time (some kill
// and restart nodes) and each uses its own database.
var (
	cl          *Cluster
	startupWall time.Duration
	startupRSS  map[string]int64 // process → VmRSS in KiB right after Start
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "usagepipe-chcluster-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "chcluster:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	cl, err = Start(ctx, dir)
	startupWall = time.Since(t0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chcluster:", err)
		return 1
	}
	defer cl.Stop()
	startupRSS = map[string]int64{"zookeeper": vmRSS(cl.zooKeeperPid())}
	for _, n := range cl.Nodes() {
		startupRSS[n.Replica] = vmRSS(n.Pid())
	}
	return m.Run()
}

// vmRSS is the resident set of process pid in KiB (0 if unknown).
func vmRSS(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}

func open(t testing.TB, n *Node) driver.Conn {
	t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{n.Addr},
		Auth:        clickhouse.Auth{Username: "default"},
		DialTimeout: 5 * time.Second,
		ReadTimeout: 60 * time.Second,
	})
	if err != nil {
		t.Fatalf("open %s: %v", n.Replica, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// conns connects to every node, in the order of Cluster.Node.
func conns(t testing.TB) []driver.Conn {
	var cs []driver.Conn
	for _, n := range cl.Nodes() {
		cs = append(cs, open(t, n))
	}
	return cs
}

func do(t testing.TB, c driver.Conn, q string) {
	t.Helper()
	if err := c.Exec(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// newDatabase creates a uniquely named database on every node (ON CLUSTER)
// and drops it on every node when the test ends.
func newDatabase(t *testing.T, c driver.Conn) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	db := "t_" + hex.EncodeToString(b[:])
	do(t, c, "CREATE DATABASE "+db+" ON CLUSTER "+cl.Name)
	t.Cleanup(func() {
		if err := c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+db+" ON CLUSTER "+cl.Name); err != nil {
			t.Logf("drop database %s: %v", db, err)
		}
	})
	return db
}

// kv is a row of the test tables.
type kv struct {
	K string
	V uint64
}

// insert writes rows into table with one batch (18.16 needs the data sent
// as blocks, not inline in the query).
func insert(t testing.TB, c driver.Conn, table string, rs ...kv) {
	t.Helper()
	b, err := c.PrepareBatch(context.Background(), "INSERT INTO "+table+" (k, v)")
	if err != nil {
		t.Fatalf("insert into %s: %v", table, err)
	}
	for _, r := range rs {
		if err := b.Append(r.K, r.V); err != nil {
			t.Fatalf("insert into %s: %v", table, err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatalf("insert into %s: %v", table, err)
	}
}

func rows(t testing.TB, c driver.Conn, q string) []kv {
	t.Helper()
	r, err := c.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer r.Close()
	var out []kv
	for r.Next() {
		var x kv
		if err := r.Scan(&x.K, &x.V); err != nil {
			t.Fatalf("%s: scan: %v", q, err)
		}
		out = append(out, x)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}

// entry is a znode read from system.zookeeper.
type entry struct{ Name, Value string }

// queueOf reads the replication queue of the replica at replicaPath in
// ZooKeeper through c.
func queueOf(t testing.TB, c driver.Conn, replicaPath string) []entry {
	t.Helper()
	q := fmt.Sprintf("SELECT name, value FROM system.zookeeper WHERE path = '%s/queue' ORDER BY name", replicaPath)
	r, err := c.Query(context.Background(), q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer r.Close()
	var out []entry
	for r.Next() {
		var e entry
		if err := r.Scan(&e.Name, &e.Value); err != nil {
			t.Fatalf("%s: scan: %v", q, err)
		}
		out = append(out, e)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return out
}

func str(t testing.TB, c driver.Conn, q string) string {
	t.Helper()
	var s string
	if err := c.QueryRow(context.Background(), q).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

// eventually polls q on c until it returns want, for up to timeout, and
// returns how long that took.
func eventually(t testing.TB, c driver.Conn, q string, want []kv, timeout time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		got := rows(t, c, q)
		if slices.Equal(got, want) {
			return time.Since(t0)
		}
		if time.Since(t0) > timeout {
			t.Fatalf("%s: after %v got %v, want %v", q, timeout, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// createPerShard creates db.t, replicated within each shard.
func createPerShard(t *testing.T, c driver.Conn, db string) {
	do(t, c, fmt.Sprintf("CREATE TABLE %s.t ON CLUSTER %s (k String, v UInt64) "+
		"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/%[1]s/t', '{replica}', v) ORDER BY k", db, cl.Name))
}

func TestLayout(t *testing.T) {
	c := open(t, cl.Node(0))
	type row struct {
		Shard, Replica uint32
		Port           uint16
		Host           string
	}
	r, err := c.Query(context.Background(), "SELECT shard_num, replica_num, port, host_address FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num", cl.Name)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for r.Next() {
		var x row
		if err := r.Scan(&x.Shard, &x.Replica, &x.Port, &x.Host); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%d/%d %s:%d", x.Shard, x.Replica, x.Host, x.Port))
	}
	r.Close()
	var want []string
	replicaNum := map[int]int{} // shard → replicas so far
	for _, n := range cl.Nodes() {
		replicaNum[n.Shard]++
		want = append(want, fmt.Sprintf("%d/%d %s", n.Shard, replicaNum[n.Shard], n.Addr))
	}
	if !slices.Equal(got, want) {
		t.Errorf("system.clusters = %v, want %v", got, want)
	}
	for i, n := range cl.Nodes() {
		c := open(t, n)
		got := str(t, c, "SELECT arrayStringConcat(groupArray(concat(macro, '=', substitution)), ',') FROM (SELECT * FROM system.macros ORDER BY macro)")
		want := fmt.Sprintf("replica=%s,shard=%s", n.Replica, n.ShardMacro())
		if got != want {
			t.Errorf("node %d macros = %s, want %s", i, got, want)
		}
	}
}

// a. ON CLUSTER DDL runs on every node; a per-shard replicated table copies
// an insert to the other replica of its shard and nowhere else.
func TestOnClusterPerShardReplication(t *testing.T) {
	cs := conns(t)
	db := newDatabase(t, cs[0])
	createPerShard(t, cs[0], db)
	for i, n := range cl.Nodes() {
		got := str(t, cs[i], fmt.Sprintf("SELECT zookeeper_path FROM system.replicas WHERE database = '%s' AND table = 't'", db))
		want := fmt.Sprintf("/clickhouse/tables/%s/%s/t", n.ShardMacro(), db)
		if got != want {
			t.Errorf("%s: zookeeper_path = %s, want %s", n.Replica, got, want)
		}
	}
	insert(t, cs[0], db+".t", kv{"a", 1})
	took := eventually(t, cs[1], "SELECT k, v FROM "+db+".t", []kv{{"a", 1}}, 30*time.Second)
	t.Logf("s1r1 → s1r2 replication: %v", took)
	if got := rows(t, cs[2], "SELECT k, v FROM "+db+".t"); len(got) != 0 {
		t.Errorf("s2r1 has %v, want nothing (other shard)", got)
	}
}

// b. A table replicated on every node: ZooKeeper path without {shard},
// replica name '{shard}-{replica}'.
func TestGlobalReplicatedOnAllNodes(t *testing.T) {
	cs := conns(t)
	db := newDatabase(t, cs[1])
	do(t, cs[1], fmt.Sprintf("CREATE TABLE %s.g ON CLUSTER %s (k String, v UInt64) "+
		"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/global/%[1]s/g', '{shard}-{replica}', v) ORDER BY k", db, cl.Name))
	for i, n := range cl.Nodes() {
		got := str(t, cs[i], fmt.Sprintf("SELECT concat(zookeeper_path, ' ', replica_name) FROM system.replicas WHERE database = '%s' AND table = 'g'", db))
		want := fmt.Sprintf("/clickhouse/tables/global/%s/g %s-%s", db, n.ShardMacro(), n.Replica)
		if got != want {
			t.Errorf("%s: system.replicas = %q, want %q", n.Replica, got, want)
		}
	}
	var want []kv
	for i, n := range cl.Nodes() {
		insert(t, cs[i], db+".g", kv{n.Replica, uint64(i + 1)})
		want = append(want, kv{n.Replica, uint64(i + 1)})
	}
	for i, n := range cl.Nodes() {
		took := eventually(t, cs[i], "SELECT k, v FROM "+db+".g ORDER BY k", want, 30*time.Second)
		t.Logf("all rows on %s after %v", n.Replica, took)
	}
}

// c. A Distributed table over a per-node view reading with FINAL returns
// each key once, from any node; FINAL on a Distributed table over the
// replicated table itself does the same on 18.16.
func TestDistributedOverFinalView(t *testing.T) {
	cs := conns(t)
	db := newDatabase(t, cs[0])
	createPerShard(t, cs[0], db)
	do(t, cs[0], fmt.Sprintf("CREATE VIEW %s.v_local ON CLUSTER %s AS SELECT k, v FROM %[1]s.t FINAL", db, cl.Name))
	do(t, cs[0], fmt.Sprintf("CREATE TABLE %s.v ON CLUSTER %s (k String, v UInt64) ENGINE = Distributed(%[2]s, %[1]s, v_local)", db, cl.Name))
	do(t, cs[0], fmt.Sprintf("CREATE TABLE %s.td ON CLUSTER %s (k String, v UInt64) ENGINE = Distributed(%[2]s, %[1]s, t)", db, cl.Name))
	// No merges, so that the versions stay in separate parts and only
	// FINAL collapses them.
	for _, c := range cs {
		do(t, c, "SYSTEM STOP MERGES "+db+".t")
	}
	// Shard 1 gets a (two versions, from both replicas) and c; shard 2 gets b.
	for _, ins := range []struct {
		node int
		k    string
		v    uint64
	}{{0, "a", 1}, {1, "a", 2}, {0, "c", 3}, {2, "b", 1}, {2, "b", 5}} {
		insert(t, cs[ins.node], db+".t", kv{ins.k, ins.v})
	}
	shard1 := []kv{{"a", 1}, {"a", 2}, {"c", 3}}
	eventually(t, cs[0], "SELECT k, v FROM "+db+".t ORDER BY k, v", shard1, 30*time.Second)
	eventually(t, cs[1], "SELECT k, v FROM "+db+".t ORDER BY k, v", shard1, 30*time.Second)

	final := []kv{{"a", 2}, {"b", 5}, {"c", 3}}
	all := []kv{{"a", 1}, {"a", 2}, {"b", 1}, {"b", 5}, {"c", 3}}
	for i, n := range cl.Nodes() {
		if got := rows(t, cs[i], "SELECT k, v FROM "+db+".v ORDER BY k, v"); !slices.Equal(got, final) {
			t.Errorf("%s: Distributed over FINAL view = %v, want %v", n.Replica, got, final)
		}
		if got := rows(t, cs[i], "SELECT k, v FROM "+db+".td FINAL ORDER BY k, v"); !slices.Equal(got, final) {
			t.Errorf("%s: Distributed FINAL = %v, want %v", n.Replica, got, final)
		}
		if got := rows(t, cs[i], "SELECT k, v FROM "+db+".td ORDER BY k, v"); !slices.Equal(got, all) {
			t.Errorf("%s: Distributed without FINAL = %v, want %v", n.Replica, got, all)
		}
	}
}

// d. What system.zookeeper shows of a replicated table: the shared log,
// the replica's log_pointer, and a get entry in the replica's queue while
// its fetches are stopped.
func TestSystemZooKeeper(t *testing.T) {
	cs := conns(t)
	db := newDatabase(t, cs[0])
	createPerShard(t, cs[0], db)
	for _, c := range cs[:2] {
		do(t, c, "SYSTEM STOP MERGES "+db+".t")
	}
	r2 := cs[1]
	var zkPath, replicaPath string
	if err := r2.QueryRow(context.Background(), "SELECT zookeeper_path, replica_path FROM system.replicas WHERE database = ? AND table = 't'", db).Scan(&zkPath, &replicaPath); err != nil {
		t.Fatal(err)
	}
	if want := "/clickhouse/tables/01/" + db + "/t/replicas/s1r2"; replicaPath != want {
		t.Errorf("replica_path = %s, want %s", replicaPath, want)
	}
	maxLog := func() string {
		return str(t, r2, fmt.Sprintf("SELECT max(name) FROM system.zookeeper WHERE path = '%s/log'", zkPath))
	}
	logPointer := func() string {
		return str(t, r2, fmt.Sprintf("SELECT value FROM system.zookeeper WHERE path = '%s' AND name = 'log_pointer'", replicaPath))
	}
	queue := func() []entry { return queueOf(t, r2, replicaPath) }

	insert(t, cs[0], db+".t", kv{"a", 1})
	insert(t, cs[0], db+".t", kv{"b", 1})
	eventually(t, r2, "SELECT k, v FROM "+db+".t ORDER BY k", []kv{{"a", 1}, {"b", 1}}, 30*time.Second)
	if got := maxLog(); got != "log-0000000001" {
		t.Errorf("max log after 2 inserts = %q, want log-0000000001", got)
	}
	if got := logPointer(); got != "2" {
		t.Errorf("log_pointer after 2 inserts = %q, want 2", got)
	}
	if got := queue(); len(got) != 0 {
		t.Errorf("queue after replication = %v, want empty", got)
	}
	t.Logf("caught up: max(log) = %s, log_pointer = %s, queue empty", maxLog(), logPointer())

	do(t, r2, "SYSTEM STOP FETCHES "+db+".t")
	insert(t, cs[0], db+".t", kv{"c", 1})
	var q []entry
	for t0 := time.Now(); len(q) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Since(t0) > 30*time.Second {
			t.Fatal("no queue entry within 30s")
		}
		q = queue()
	}
	t.Logf("fetches stopped: max(log) = %s, log_pointer = %s, queue = %q", maxLog(), logPointer(), q)
	if got := maxLog(); got != "log-0000000002" {
		t.Errorf("max log after 3 inserts = %q, want log-0000000002", got)
	}
	if got := logPointer(); got != "3" {
		t.Errorf("log_pointer after the entry moved to the queue = %q, want 3", got)
	}
	if len(q) != 1 || !strings.HasPrefix(q[0].Name, "queue-") ||
		!strings.Contains(q[0].Value, "source replica: s1r1\n") || !strings.HasSuffix(q[0].Value, "\nget\nall_2_2_0\n") {
		t.Errorf("queue = %q, want one get of all_2_2_0 from s1r1", q)
	}
	if got := rows(t, r2, "SELECT k, v FROM "+db+".t ORDER BY k"); len(got) != 2 {
		t.Errorf("s1r2 with fetches stopped has %v, want only a and b", got)
	}
	do(t, r2, "SYSTEM START FETCHES "+db+".t")
	took := eventually(t, r2, "SELECT k, v FROM "+db+".t ORDER BY k", []kv{{"a", 1}, {"b", 1}, {"c", 1}}, 60*time.Second)
	t.Logf("fetched %v after START FETCHES", took)
	for t0 := time.Now(); len(queue()) != 0; time.Sleep(50 * time.Millisecond) {
		if time.Since(t0) > 10*time.Second {
			t.Fatalf("queue after the fetch = %q, want empty", queue())
		}
	}
}

// e. A replica killed while its shard takes an insert gets the row after
// its restart: restarted at once (its old ZooKeeper session, and so its
// is_active node, still alive) and restarted after the session expired.
func TestKilledReplicaCatchesUp(t *testing.T) {
	f := func(t *testing.T, down time.Duration) {
		cs := conns(t)
		db := newDatabase(t, cs[0])
		createPerShard(t, cs[0], db)
		n := cl.Node(1)
		n.Kill()
		t.Cleanup(func() { // the other tests need s1r2 (ON CLUSTER DDL waits for it)
			if n.Pid() == 0 {
				_ = n.Restart(context.Background())
			}
		})
		insert(t, cs[0], db+".t", kv{"a", 1})
		time.Sleep(down)
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		restarted := time.Since(t0)
		c := open(t, n)
		replicaPath := "/clickhouse/tables/01/" + db + "/t/replicas/s1r2"
		t.Logf("right after the restart: log_pointer = %q, queue = %q", str(t, c, "SELECT value FROM system.zookeeper WHERE path = '"+replicaPath+"' AND name = 'log_pointer'"),
			queueOf(t, c, replicaPath))
		took := eventually(t, c, "SELECT k, v FROM "+db+".t", []kv{{"a", 1}}, time.Minute)
		t.Logf("down %v; restart took %v; the row arrived %v after the restart", down, restarted, took)
	}
	t.Run("restart at once", func(t *testing.T) { f(t, 0) })
	t.Run("restart after the session expired", func(t *testing.T) { f(t, SessionTimeoutMS*time.Millisecond+time.Second) })
}

// Start fails when a node cannot start, and stops what it started.
func TestFailedStartCleansUp(t *testing.T) {
	dir := t.TempDir()
	// A file where s2r1's data directory should be.
	if err := os.WriteFile(filepath.Join(dir, "s2r1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Start(context.Background(), dir)
	if err == nil {
		c.Stop()
		t.Fatal("Start succeeded with s2r1's directory a file")
	}
	t.Logf("Start: %v", err)
	if left := processesUnder(dir); len(left) != 0 {
		t.Errorf("processes left running: %v", left)
	}
}

// processesUnder lists the processes whose command line names dir.
func processesUnder(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

// f. What the cluster costs: startup wall time and resident memory.
func TestStartupCost(t *testing.T) {
	t.Logf("cluster startup (wall): %v", startupWall)
	var sum int64
	for _, p := range []string{"zookeeper", "s1r1", "s1r2", "s2r1"} {
		kb := startupRSS[p]
		if kb == 0 {
			t.Errorf("%s: no VmRSS", p)
		}
		sum += kb
		t.Logf("%-9s VmRSS %7d kB", p, kb)
	}
	t.Logf("total     VmRSS %7d kB", sum)
}
