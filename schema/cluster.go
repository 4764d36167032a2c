package schema

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/dchest/siphash"
)

// Where rows live: one server, or the shards of a ClickHouse cluster
// (docs/design.md, "ClickHouse clusters").

// A Replica is one server of a shard.
type Replica struct {
	Addr string      // host:port of its native protocol
	Conn driver.Conn // connections to this server only
	// replicated: the ZooKeeper paths of this server's replicated tables,
	// by table name (read once from system.replicas).
	mu    sync.Mutex
	paths map[string][2]string // table → (zookeeper_path, replica_path)
}

// A Shard holds the rows of the accounts that map to it (ShardOf), on each
// of its replicas.
type Shard struct {
	Num      int // shard_num in system.clusters (1-based)
	Weight   int
	Replicas []*Replica

	pref      atomic.Int32 // the replica that answered last
	preferred atomic.Int64 // unix nano when pref last changed
}

// Topology is a single server (Cluster == "": one shard, one replica, no
// replication) or the shards of a cluster. It is safe for concurrent use.
type Topology struct {
	// Cluster names the cluster in the servers' remote_servers; "" means
	// a single server.
	Cluster string
	// Global reaches any node: it writes and reads the tables replicated
	// on every node (ingest_progress, topic_incarnations,
	// schema_migrations) and runs ON CLUSTER DDL.
	Global driver.Conn
	Shards []*Shard
	// All has every node as a replica (shard by shard): reads and writes
	// of the tables replicated on every node go through it, each read on
	// a node that has caught up on that table.
	All *Shard

	slots []int // slots[i]: cumulative weight through shard i
	// LagWait is how long a read waits for a lagging replica to catch
	// up before it tries another; 0 means 5 s.
	LagWait time.Duration
}

// SingleServer is the topology of one server reached through conn.
func SingleServer(conn driver.Conn) *Topology {
	t := &Topology{Global: conn, Shards: []*Shard{{Num: 1, Weight: 1, Replicas: []*Replica{{Conn: conn}}}}}
	t.All = t.Shards[0]
	t.slots = []int{1}
	return t
}

// NewTopology is the topology of cluster with the given shards (ordered
// by shard number), each with at least one replica and a weight ≥ 1.
func NewTopology(cluster string, global driver.Conn, shards []*Shard) (*Topology, error) {
	if len(shards) == 0 {
		return nil, fmt.Errorf("cluster %s: no shards", cluster)
	}
	t := &Topology{Cluster: cluster, Global: global, Shards: shards, All: &Shard{}}
	total := 0
	for _, s := range shards {
		if len(s.Replicas) == 0 || s.Weight < 1 {
			return nil, fmt.Errorf("cluster %s: shard %d has no replica or a weight below 1", cluster, s.Num)
		}
		total += s.Weight
		t.slots = append(t.slots, total)
		t.All.Replicas = append(t.All.Replicas, s.Replicas...)
	}
	return t, nil
}

// Clustered reports whether t is a cluster.
func (t *Topology) Clustered() bool { return t.Cluster != "" }

// ShardIndex is the index in t.Shards of the shard that holds account's
// rows: sipHash64(account) modulo the total weight, mapped through the
// shards' cumulative weights, as a Distributed table with sharding key
// sipHash64(account_id) maps it.
func (t *Topology) ShardIndex(account string) int {
	if len(t.Shards) == 1 {
		return 0
	}
	slot := int(siphash.Hash(0, 0, []byte(account)) % uint64(t.slots[len(t.slots)-1]))
	i, _ := slices.BinarySearch(t.slots, slot+1)
	return i
}

// ShardFilter is a SQL condition on account_id that selects the accounts of
// shard i (for statements that run on one shard over a global table).
func (t *Topology) ShardFilter(i int) string {
	if len(t.Shards) == 1 {
		return "1"
	}
	lo := 0
	if i > 0 {
		lo = t.slots[i-1]
	}
	return fmt.Sprintf("(sipHash64(account_id) %% %d) BETWEEN %d AND %d", t.slots[len(t.slots)-1], lo, t.slots[i]-1)
}

// Layout is the shard count and weights, as migrate records them: a
// cluster whose layout changed maps accounts to other shards.
func (t *Topology) Layout() string {
	w := make([]string, len(t.Shards))
	for i, s := range t.Shards {
		w[i] = strconv.Itoa(s.Weight)
	}
	return "weights=" + strings.Join(w, ",")
}

// Use runs fn on a replica of s: the one that answered last (but the first
// replica again once 30 s passed, so that instances agree on one), then
// each other in turn while fn fails. It returns nil at the first success.
func (s *Shard) Use(ctx context.Context, fn func(*Replica) error) error {
	start := int(s.pref.Load())
	if start != 0 && time.Since(time.Unix(0, s.preferred.Load())) > 30*time.Second {
		start = 0
	}
	var errs []error
	for i := range s.Replicas {
		k := (start + i) % len(s.Replicas)
		r := s.Replicas[k]
		err := fn(r)
		if err == nil {
			if int(s.pref.Swap(int32(k))) != k {
				s.preferred.Store(time.Now().UnixNano())
			}
			return nil
		}
		if ctx.Err() != nil || len(s.Replicas) == 1 {
			return err
		}
		errs = append(errs, fmt.Errorf("replica %s: %w", r.Addr, err))
	}
	return fmt.Errorf("shard %d: %w", s.Num, errors.Join(errs...))
}

// ErrLagging is returned (wrapped) by CaughtUp when a replica has not
// fetched every part acknowledged before the check within LagWait.
var ErrLagging = errors.New("replica has not caught up")

// CaughtUp returns once replica r holds every part of db's tables that any
// replica acknowledged before the call (docs/design.md, "ClickHouse
// clusters"). Through r, in order: a barrier write (r's ZooKeeper session
// then sees every earlier commit), r is writable and not being re-cloned
// (is_lost), the greatest entry L of each table's replication log, r's
// log_pointer past L, no `get` entry in r's queue created up to the
// barrier's time (+ the clock allowance), and is_lost unchanged. A read
// that runs on r afterwards sees those parts. It waits up to LagWait, then
// fails with ErrLagging. On a single server it returns at once.
func (t *Topology) CaughtUp(ctx context.Context, r *Replica, db string, tables ...string) error {
	if !t.Clustered() {
		return nil
	}
	paths, err := r.zkPaths(ctx, db, tables)
	if err != nil {
		return err
	}
	wait := t.LagWait
	if wait == 0 {
		wait = 5 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		lag, err := lagging(ctx, r.Conn, db, tables, paths)
		if err != nil {
			return fmt.Errorf("replica %s: replication state: %w", r.Addr, err)
		}
		if lag == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replica %s: %w (%s)", r.Addr, ErrLagging, lag)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// zkPaths returns the ZooKeeper paths of tables on r.
func (r *Replica) zkPaths(ctx context.Context, db string, tables []string) (map[string][2]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	missing := false
	for _, tb := range tables {
		if _, ok := r.paths[db+"."+tb]; !ok {
			missing = true
		}
	}
	if !missing {
		return r.pick(db, tables), nil
	}
	rows, err := r.Conn.Query(ctx, "SELECT table, zookeeper_path, replica_path FROM system.replicas WHERE database = ?", db)
	if err != nil {
		return nil, fmt.Errorf("replica %s: read system.replicas: %w", r.Addr, err)
	}
	defer rows.Close()
	if r.paths == nil {
		r.paths = map[string][2]string{}
	}
	for rows.Next() {
		var tb, zk, rp string
		if err := rows.Scan(&tb, &zk, &rp); err != nil {
			return nil, fmt.Errorf("replica %s: read system.replicas: %w", r.Addr, err)
		}
		r.paths[db+"."+tb] = [2]string{zk, rp}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("replica %s: read system.replicas: %w", r.Addr, err)
	}
	for _, tb := range tables {
		if _, ok := r.paths[db+"."+tb]; !ok {
			return nil, fmt.Errorf("replica %s: %s.%s is not a replicated table there", r.Addr, db, tb)
		}
	}
	return r.pick(db, tables), nil
}

// pick returns the paths of db's tables by table name; r.mu is held.
func (r *Replica) pick(db string, tables []string) map[string][2]string {
	out := make(map[string][2]string, len(tables))
	for _, tb := range tables {
		out[tb] = r.paths[db+"."+tb]
	}
	return out
}

// lagging reads whether conn's server misses a part of tables (see
// CaughtUp); it returns "" when it misses none, else what it waits for.
func lagging(ctx context.Context, conn driver.Conn, db string, tables []string, paths map[string][2]string) (string, error) {
	union := func(one func(tb string, p [2]string) string) string {
		parts := make([]string, len(tables))
		for i, tb := range tables {
			parts[i] = one(tb, paths[tb])
		}
		return strings.Join(parts, " UNION ALL ")
	}
	// 0. A write through this server's ZooKeeper session: a follower
	// answers reads from what it has applied, and a session's own write
	// is applied after everything committed before it.
	if err := conn.Exec(ctx, "INSERT INTO "+db+".replica_barrier (k, nonce) SELECT 0, rand64()"); err != nil {
		return "", fmt.Errorf("barrier: %w", err)
	}
	var barrier uint32
	if err := conn.QueryRow(ctx, "SELECT toUInt32(now())").Scan(&barrier); err != nil {
		return "", err
	}
	// 1. Writable, and not a lost replica being cloned (is_lost "1", or
	// its version changing while we look).
	lost := func() (map[string]string, error) {
		out := map[string]string{}
		err := scanPairs(ctx, conn, union(func(tb string, p [2]string) string {
			return "SELECT " + lit(tb) + " AS t, concat(any(value), '/', toString(any(version))) AS v FROM system.zookeeper WHERE path = " + lit(p[1]) + " AND name = 'is_lost'"
		}), func(tb, v string) { out[tb] = v })
		return out, err
	}
	lost0, err := lost()
	if err != nil {
		return "", err
	}
	for tb, v := range lost0 {
		if strings.HasPrefix(v, "1/") {
			return tb + ": replica is lost and being cloned", nil
		}
	}
	var readonly uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.replicas WHERE database = ? AND is_readonly", db).Scan(&readonly); err != nil {
		return "", err
	}
	if readonly > 0 {
		return "read-only (no ZooKeeper session)", nil
	}
	// 2. The greatest entry of each table's replication log.
	maxLog := map[string]int64{}
	err = scanPairs(ctx, conn, union(func(tb string, p [2]string) string {
		return "SELECT " + lit(tb) + " AS t, max(name) AS v FROM system.zookeeper WHERE path = " + lit(p[0]+"/log")
	}), func(tb, v string) {
		maxLog[tb] = logIndex(v)
	})
	if err != nil {
		return "", err
	}
	// 3. This replica's log pointer: the next entry it copies into its
	// queue (copying and moving the pointer are one transaction).
	var behind []string
	err = scanPairs(ctx, conn, union(func(tb string, p [2]string) string {
		return "SELECT " + lit(tb) + " AS t, any(value) AS v FROM system.zookeeper WHERE path = " + lit(p[1]) + " AND name = 'log_pointer'"
	}), func(tb, v string) {
		ptr, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || ptr <= maxLog[tb] {
			behind = append(behind, fmt.Sprintf("%s: log pointer %q, log up to %d", tb, v, maxLog[tb]))
		}
	})
	if err != nil || len(behind) > 0 {
		return strings.Join(behind, "; "), err
	}
	// 4. No part left to fetch that was logged up to the barrier (an entry
	// leaves the queue only once its part is committed here). Entries of
	// later inserts are not waited for: under steady writes some always
	// are in the queue.
	var fetching []string
	err = scanPairs(ctx, conn, union(func(tb string, p [2]string) string {
		return "SELECT " + lit(tb) + " AS t, toString(countIf(position(value, '\nget\n') > 0 AND toUInt32(toDateTime(if(extract(value, 'create_time: ([0-9: -]+)') = '', '1970-01-01 00:00:00', extract(value, 'create_time: ([0-9: -]+)')))) <= " +
			strconv.FormatUint(uint64(barrier+clusterSkew), 10) + ")) AS v FROM system.zookeeper WHERE path = " + lit(p[1]+"/queue")
	}), func(tb, v string) {
		if v != "0" {
			fetching = append(fetching, fmt.Sprintf("%s: %s parts to fetch", tb, v))
		}
	})
	if err != nil || len(fetching) > 0 {
		return strings.Join(fetching, "; "), err
	}
	// 5. Not re-cloned meanwhile.
	lost1, err := lost()
	if err != nil {
		return "", err
	}
	for tb, v := range lost1 {
		if v != lost0[tb] {
			return tb + ": is_lost changed", nil
		}
	}
	return "", nil
}

// clusterSkew is K of docs/design.md: how far apart (seconds) the clocks
// of two nodes may be.
const clusterSkew = 1

// logIndex is the number of a replication log entry name ("log-0000000012"),
// -1 for none.
func logIndex(name string) int64 {
	n, err := strconv.ParseInt(strings.TrimPrefix(name, "log-"), 10, 64)
	if name == "" || err != nil {
		return -1
	}
	return n
}

func scanPairs(ctx context.Context, conn driver.Conn, q string, fn func(a, b string)) error {
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var a, b string
		if err := rows.Scan(&a, &b); err != nil {
			return err
		}
		fn(a, b)
	}
	return rows.Err()
}

// lit is s as a SQL string literal.
func lit(s string) string {
	var b strings.Builder
	quote(&b, s)
	return b.String()
}

// ReadShards reads the shards and replicas of cluster from system.clusters
// through conn: for each shard by number, its weight and its replicas'
// host:port, in replica order.
func ReadShards(ctx context.Context, conn driver.Conn, cluster string) (nums, weights []int, addrs [][]string, err error) {
	rows, err := conn.Query(ctx, "SELECT shard_num, shard_weight, host_name, port FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num", cluster)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read system.clusters: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			num, weight uint32
			host        string
			port        uint16
		)
		if err := rows.Scan(&num, &weight, &host, &port); err != nil {
			return nil, nil, nil, fmt.Errorf("read system.clusters: %w", err)
		}
		if len(nums) == 0 || nums[len(nums)-1] != int(num) {
			nums = append(nums, int(num))
			weights = append(weights, int(weight))
			addrs = append(addrs, nil)
		}
		addrs[len(addrs)-1] = append(addrs[len(addrs)-1], fmt.Sprintf("%s:%d", host, port))
	}
	if err := rows.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("read system.clusters: %w", err)
	}
	if len(nums) == 0 {
		return nil, nil, nil, fmt.Errorf("%w: clickhouse cluster %q: not in system.clusters of the server (remote_servers)", ErrConfig, cluster)
	}
	return nums, weights, addrs, nil
}
