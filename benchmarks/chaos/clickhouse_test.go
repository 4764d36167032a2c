package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/usagepipe/usagepipe/schema/chserver"
)

// chServer is the suite's private ClickHouse: one data directory and one
// port, so that it can be stopped and started again in place.
type chServer struct {
	dir  string
	port int

	mu  sync.Mutex
	srv *chserver.Server // nil while down
}

func startCH(ctx context.Context, dir string) (*chServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c := &chServer{dir: dir, port: port}
	return c, c.up(ctx)
}

func (c *chServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", c.port) }

// down stops the server: SIGKILL (a crash) or SIGTERM (a clean stop).
func (c *chServer) down(kill bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv == nil {
		return
	}
	if kill {
		c.srv.Kill()
	} else {
		_ = c.srv.Stop()
	}
	c.srv = nil
}

// up starts the server on the same port and data directory.
func (c *chServer) up(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv != nil {
		return nil
	}
	var err error
	for try := 0; try < 5; try++ {
		sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		c.srv, err = chserver.Start(sctx, c.dir, c.port)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(time.Second) // the port may linger a moment after a kill
	}
	return fmt.Errorf("start clickhouse on port %d: %w", c.port, err)
}

// brokenQuery reports whether the error log says that a query of the
// connection from port (or the query queryID) broke because the client
// went away.
func brokenQuery(errLog string, queryID string, port int) bool {
	from := fmt.Sprintf("127.0.0.1:%d)", port)
	for _, line := range strings.Split(errLog, "\n") {
		if !strings.Contains(line, "Connection reset by peer") && !strings.Contains(line, "Client has gone away") && !strings.Contains(line, "Broken pipe") {
			continue
		}
		if strings.Contains(line, from) || (queryID != "" && strings.Contains(line, queryID)) {
			return true
		}
	}
	return false
}

// open connects to the server with a fresh connection.
func (c *chServer) open(ctx context.Context) (driver.Conn, error) { return openAddr(ctx, c.addr()) }

// chNode is one clickhouse-server the suite talks to: the server, or a
// node of the cluster.
type chNode struct {
	name  string // "server", or the node's replica macro: s1r1, s1r2, s2r1
	addr  string // host:port of the native protocol
	port  int
	dir   string // data directory (server.err.log)
	shard int    // 1-based; 1 for the server
}

// nodes are the servers: the one server, or the cluster's nodes in the
// order of chcluster.Node (0 = s1r1, 1 = s1r2, 2 = s2r1).
func (s *suite) nodes() []chNode {
	if s.cl == nil {
		return []chNode{{name: "server", addr: s.ch.addr(), port: s.ch.port, dir: s.ch.dir, shard: 1}}
	}
	var out []chNode
	for _, n := range s.cl.Nodes() {
		_, p, _ := net.SplitHostPort(n.Addr)
		port, _ := strconv.Atoi(p)
		out = append(out, chNode{name: n.Replica, addr: n.Addr, port: port, dir: n.Dir, shard: n.Shard})
	}
	return out
}

// chMode names the ClickHouse of the run, for the log and the figures.
func (s *suite) chMode() string {
	if s.cl == nil {
		return "server"
	}
	return "3-node cluster"
}

// chModeLong describes it in full.
func (s *suite) chModeLong() string {
	if s.cl == nil {
		return "private server, restarted in place"
	}
	return "3-node cluster " + s.cl.Name + " (ZooKeeper; shard 1: replicas s1r1, s1r2; shard 2: s2r1), nodes restarted in place"
}

// errLog is a node's error log (it survives restarts: appended).
func (n chNode) errLog() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "server.err.log"))
	return string(b)
}

// auditFrom is the table expression that reads every row of the audit
// table: on a cluster every node's audit copy (each node audits the
// INSERTs it received; a shard's INSERTs may go to either replica).
func (sc *scenario) auditFrom(table string) string {
	if sc.s.cl == nil {
		return sc.adb + "." + table
	}
	var addrs []string
	for _, n := range sc.s.nodes() {
		addrs = append(addrs, n.addr)
	}
	return "remote('" + strings.Join(addrs, ",") + "', " + sc.adb + ", " + table + ")"
}

// factsFrom is the table expression that reads a sharded fact table
// whole: on a cluster one replica per shard (s1r1 and s2r1).
func (sc *scenario) factsFrom(table string) string {
	if sc.s.cl == nil {
		return sc.db + "." + table
	}
	return "remote('" + sc.s.cl.Node(0).Addr + "," + sc.s.cl.Node(2).Addr + "', " + sc.db + ", " + table + ")"
}

// openAddr connects to one server with a fresh connection.
func openAddr(ctx context.Context, addr string) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{addr},
		Auth:        clickhouse.Auth{Username: "default"},
		DialTimeout: 2 * time.Second,
		ReadTimeout: 120 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// inflight is an INSERT a pipeline instance has running in ClickHouse.
type inflight struct {
	in      *instance
	node    int // index in suite.nodes() of the server running it
	queryID string
	table   string
	port    int // the client's port: ClickHouse logs it when the connection breaks
	elapsed float64
	seen    time.Time
}

// insertWatch is a server findInsert polls: its index in suite.nodes(),
// its port and a connection to it.
type insertWatch struct {
	node int
	port int
	conn driver.Conn
}

// findInsert polls system.processes of every watched server for an INSERT
// into db by one of cands (into a table that only accepts, if not nil)
// and returns the first it finds, or nil after timeout. The instance is found from the client port ClickHouse reports:
// /proc/net/tcp gives the socket's inode and /proc/<pid>/fd the process
// holding it. The writes of the cluster mode's caught-up check (into
// replica_barrier) are not flushes and are left out.
func findInsert(ctx context.Context, watch []insertWatch, db string, cands []*instance, timeout time.Duration, only func(table string) bool) *inflight {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, w := range watch {
			for _, f := range insertsOn(ctx, w, db, cands) {
				if only == nil || only(f.table) {
					return f
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// findInsertAfterCounts is findInsert for an INSERT into one of the tables
// a flush writes after fact_event_counts (afterCounts) by an instance whose
// INSERT into fact_event_counts was seen before it in the same flush (no
// INSERT of an earlier table of the flush seen since): a flush whose count
// rows have landed and which has not finished.
func findInsertAfterCounts(ctx context.Context, watch []insertWatch, db string, cands []*instance, timeout time.Duration) *inflight {
	deadline := time.Now().Add(timeout)
	counted := map[*instance]time.Time{} // when its count INSERT was last seen
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for _, w := range watch {
			for _, f := range insertsOn(ctx, w, db, cands) {
				switch {
				case f.table == "fact_event_counts":
					counted[f.in] = f.seen
				case slices.Contains(afterCounts, f.table):
					if t, ok := counted[f.in]; ok && f.seen.Sub(t) < time.Second {
						return f
					}
				case slices.Contains(beforeCounts, f.table):
					delete(counted, f.in) // its next flush
				}
			}
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// flushTable reports whether a flush writes table (the facts, their marks
// and the progress row), not a recompute or the reader tables' copy.
func flushTable(table string) bool {
	return strings.HasPrefix(table, "fact_") || table == "rollup_marks" || table == "ingest_progress"
}

// The tables a flush writes before and after fact_event_counts
// (schema/store: one table after another, progress last).
var (
	beforeCounts = []string{"fact_account_months", "fact_user_activity", "fact_feature_users"}
	afterCounts  = []string{"fact_seat_events", "fact_seat_purchases", "rollup_marks"}
)

// insertsOn lists the INSERTs into db (but replica_barrier) running on w's
// server by one of cands.
func insertsOn(ctx context.Context, w insertWatch, db string, cands []*instance) []*inflight {
	q := "SELECT query_id, port, elapsed, query FROM system.processes WHERE query LIKE 'INSERT INTO " + db + ".%' AND query NOT LIKE 'INSERT INTO " + db + ".replica_barrier%'"
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rows, err := w.conn.Query(qctx, q)
	if err != nil {
		return nil
	}
	defer rows.Close()
	var out []*inflight
	for rows.Next() {
		var id, query string
		var port uint16
		var elapsed float64
		if rows.Scan(&id, &port, &elapsed, &query) != nil {
			return out
		}
		if in := socketOwner(int(port), w.port, cands); in != nil {
			table := strings.TrimPrefix(query, "INSERT INTO "+db+".")
			if i := strings.IndexAny(table, " ("); i > 0 {
				table = table[:i]
			}
			out = append(out, &inflight{in: in, node: w.node, queryID: id, table: table, port: int(port), elapsed: elapsed, seen: time.Now()})
		}
	}
	return out
}

// socketOwner returns the instance among cands holding the TCP connection
// from 127.0.0.1:clientPort to serverPort, or nil.
func socketOwner(clientPort, serverPort int, cands []*instance) *instance {
	inode := ""
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if inode = findInode(f, clientPort, serverPort); inode != "" {
			break
		}
	}
	if inode == "" {
		return nil
	}
	want := "socket:[" + inode + "]"
	for _, in := range cands {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", in.pid))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", in.pid, fd.Name())); err == nil && l == want {
				return in
			}
		}
	}
	return nil
}

func findInode(path string, localPort, remotePort int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 10 || fs[0] == "sl" {
			continue
		}
		if hexPort(fs[1]) == localPort && hexPort(fs[2]) == remotePort {
			return fs[9]
		}
	}
	return ""
}

func hexPort(addr string) int {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return -1
	}
	p, err := strconv.ParseUint(addr[i+1:], 16, 16)
	if err != nil {
		return -1
	}
	return int(p)
}

// The audit database copies, through materialized views, every row any
// INSERT writes to the fact tables, before ReplacingMergeTree merges can
// collapse them. fact_event_counts is copied whole; the other tables only
// as a hash of their ORDER BY key.
var auditKeys = []struct{ table, key string }{
	{"fact_account_months", "account_id, month"},
	{"fact_user_activity", "account_id, month, user_id"},
	{"fact_feature_users", "account_id, month, feature, user_id"},
	{"fact_seat_events", "account_id, user_id, month, occurred_ms, event_id"},
	{"fact_seat_purchases", "account_id, month, occurred_ms, event_id"},
}

const countKey = "account_id, month, kind, feature, src_topic, src_partition, bucket"

func setupAudit(ctx context.Context, conn driver.Conn, db, adb string) error {
	stmts := []string{
		"CREATE DATABASE IF NOT EXISTS " + adb,
		"CREATE TABLE " + adb + ".fact_event_counts (account_id String, month Date, kind UInt8, feature String, src_topic String, src_partition Int32, bucket UInt64, covered_end UInt64, events UInt64, written DateTime) ENGINE = MergeTree ORDER BY tuple()",
		"CREATE MATERIALIZED VIEW " + adb + ".fact_event_counts_mv TO " + adb + ".fact_event_counts AS SELECT " + countKey + ", covered_end, events, now() AS written FROM " + db + ".fact_event_counts",
	}
	for _, a := range auditKeys {
		stmts = append(stmts,
			"CREATE TABLE "+adb+"."+a.table+" (k UInt64, written DateTime) ENGINE = MergeTree ORDER BY tuple()",
			"CREATE MATERIALIZED VIEW "+adb+"."+a.table+"_mv TO "+adb+"."+a.table+" AS SELECT cityHash64("+a.key+") AS k, now() AS written FROM "+db+"."+a.table)
	}
	for _, s := range stmts {
		if err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("audit: %s: %w", s, err)
		}
	}
	return nil
}

// rowStats are physical-row figures of the fact tables.
type rowStats struct {
	written    uint64            // rows every INSERT ever wrote (audit)
	beyondKey  uint64            // written rows beyond one per key
	perTable   map[string]uint64 // beyondKey by table
	countRows  uint64            // fact_event_counts rows written
	replayRows uint64            // fact_event_counts rows repeating an earlier (key, events): replays and retries
	impure     uint64            // (key, covered_end) written with different counts: must be 0
	unmerged   uint64            // rows beyond one per key still in the fact tables before OPTIMIZE
	dupKeys    uint64            // fact_event_counts keys with more than one physical row before OPTIMIZE
}

func queryUints(ctx context.Context, conn driver.Conn, q string, dst ...*uint64) error {
	row := conn.QueryRow(ctx, q)
	if err := row.Err(); err != nil {
		return fmt.Errorf("%s: %w", q, err)
	}
	if err := row.Scan(anySlice(dst)...); err != nil {
		return fmt.Errorf("%s: %w", q, err)
	}
	return nil
}

func anySlice(dst []*uint64) []any {
	out := make([]any, len(dst))
	for i := range dst {
		out[i] = dst[i]
	}
	return out
}

// physicalRows reads the audit copy (through sc.auditFrom) and the fact
// tables (sc.factsFrom) over conn.
func (sc *scenario) physicalRows(ctx context.Context, conn driver.Conn) (rowStats, error) {
	st := rowStats{perTable: map[string]uint64{}}
	var n, keys, keyEvents uint64
	if err := queryUints(ctx, conn, "SELECT count(), uniqExact("+countKey+"), uniqExact("+countKey+", events) FROM "+sc.auditFrom("fact_event_counts"), &n, &keys, &keyEvents); err != nil {
		return st, err
	}
	st.written, st.countRows = n, n
	st.beyondKey = n - keys
	st.perTable["fact_event_counts"] = n - keys
	st.replayRows = n - keyEvents
	if err := queryUints(ctx, conn, "SELECT count() FROM (SELECT "+countKey+", covered_end, uniqExact(events) AS u FROM "+sc.auditFrom("fact_event_counts")+" GROUP BY "+countKey+", covered_end HAVING u > 1)", &st.impure); err != nil {
		return st, err
	}
	for _, a := range auditKeys {
		if err := queryUints(ctx, conn, "SELECT count(), uniqExact(k) FROM "+sc.auditFrom(a.table), &n, &keys); err != nil {
			return st, err
		}
		st.written += n
		st.beyondKey += n - keys
		st.perTable[a.table] = n - keys
	}
	// What is physically left before merges finish: rows beyond one per key.
	for _, a := range append(auditKeys, struct{ table, key string }{"fact_event_counts", countKey}) {
		if err := queryUints(ctx, conn, "SELECT toUInt64(count() - uniqExact("+a.key+")) FROM "+sc.factsFrom(a.table), &n); err != nil {
			return st, err
		}
		st.unmerged += n
	}
	if err := queryUints(ctx, conn, "SELECT count() FROM (SELECT "+countKey+", count() AS c FROM "+sc.factsFrom("fact_event_counts")+" GROUP BY "+countKey+" HAVING c > 1)", &st.dupKeys); err != nil {
		return st, err
	}
	return st, nil
}

// quarterCounts are logins and feature events per (account, quarter start).
type quarterCounts map[string][2]uint64

func qkey(account string, q time.Time) string { return account + "\x00" + q.UTC().Format("2006-01-02") }

func readCounts(ctx context.Context, conn driver.Conn, q string) (quarterCounts, error) {
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", q, err)
	}
	defer rows.Close()
	out := quarterCounts{}
	for rows.Next() {
		var acct string
		var qs time.Time
		var logins, feats uint64
		if err := rows.Scan(&acct, &qs, &logins, &feats); err != nil {
			return nil, err
		}
		y, m, d := qs.Date()
		out[qkey(acct, time.Date(y, m, d, 0, 0, 0, 0, time.UTC))] = [2]uint64{logins, feats}
	}
	return out, rows.Err()
}

// countsDiffer is the number of (account, quarter) whose logins or
// feature events differ between got and want (a missing entry counts 0).
func countsDiffer(got, want quarterCounts) int {
	n := 0
	for k, w := range want {
		if got[k] != w {
			n++
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok && g != [2]uint64{} {
			n++
		}
	}
	return n
}

// Readers of the count facts. The naive one sums every physical row, as a
// reader that forgot argMax (or a SummingMergeTree) would; the idempotent
// one is the views' rule: argMax(events, covered_end) per key, then sum.
func naiveCountsSQL(table string) string {
	return "SELECT account_id, toStartOfQuarter(month) AS q, sumIf(events, kind = 1), sumIf(events, kind = 2) FROM " + table + " GROUP BY account_id, q"
}

func idempotentCountsSQL(table string) string {
	return "SELECT account_id, toStartOfQuarter(month) AS q, sumIf(e, kind = 1), sumIf(e, kind = 2) FROM (SELECT " + countKey + ", argMax(events, covered_end) AS e FROM " + table + " GROUP BY " + countKey + ") GROUP BY account_id, q"
}

// negativeControl2 plays a redelivered flush into a SummingMergeTree copy
// and into a ReplacingMergeTree(covered_end) copy of the count facts: the
// final rows of every partition once, then those of the busiest partition
// again. It returns the (account, quarter)s that differ from want for each.
// audit is the table expression of the audit copy of fact_event_counts;
// the copies are created in adb on conn's server.
func negativeControl2(ctx context.Context, conn driver.Conn, adb, audit string, want quarterCounts) (summingDiff, replacingDiff int, replayed uint64, err error) {
	final := "SELECT " + countKey + ", max(covered_end) AS ce, argMax(events, covered_end) AS ev FROM " + audit + " GROUP BY " + countKey
	var busiest uint64
	if err = queryUints(ctx, conn, "SELECT toUInt64(src_partition) FROM ("+final+") GROUP BY src_partition ORDER BY count() DESC LIMIT 1", &busiest); err != nil {
		return
	}
	stmts := []string{
		"CREATE TABLE " + adb + ".nc_summing (account_id String, month Date, kind UInt8, feature String, src_topic String, src_partition Int32, bucket UInt64, events UInt64) ENGINE = SummingMergeTree ORDER BY (" + countKey + ")",
		"CREATE TABLE " + adb + ".nc_replacing (account_id String, month Date, kind UInt8, feature String, src_topic String, src_partition Int32, bucket UInt64, covered_end UInt64, events UInt64) ENGINE = ReplacingMergeTree(covered_end) ORDER BY (" + countKey + ")",
	}
	// The original write, then the re-delivered flush of the busiest partition.
	for _, where := range []string{"1", fmt.Sprintf("src_partition = %d", busiest)} {
		stmts = append(stmts,
			"INSERT INTO "+adb+".nc_summing ("+countKey+", events) SELECT "+countKey+", ev FROM ("+final+") WHERE "+where,
			"INSERT INTO "+adb+".nc_replacing ("+countKey+", covered_end, events) SELECT "+countKey+", ce, ev FROM ("+final+") WHERE "+where)
	}
	for _, s := range stmts {
		if err = conn.Exec(ctx, s); err != nil {
			err = fmt.Errorf("negative control: %s: %w", s, err)
			return
		}
	}
	if err = queryUints(ctx, conn, fmt.Sprintf("SELECT count() FROM (%s) WHERE src_partition = %d", final, busiest), &replayed); err != nil {
		return
	}
	sum, err := readCounts(ctx, conn, naiveCountsSQL(adb+".nc_summing"))
	if err != nil {
		return
	}
	rep, err := readCounts(ctx, conn, idempotentCountsSQL(adb+".nc_replacing"))
	if err != nil {
		return
	}
	return countsDiffer(sum, want), countsDiffer(rep, want), replayed, nil
}

// optimizeAll merges every fact table completely (on a cluster it is run
// on one replica of each shard: the other replicas merge through the
// replication log).
func optimizeAll(ctx context.Context, conn driver.Conn, db string) error {
	var errs []error
	for _, a := range append(auditKeys, struct{ table, key string }{"fact_event_counts", countKey}) {
		if err := conn.Exec(ctx, "OPTIMIZE TABLE "+db+"."+a.table+" FINAL"); err != nil {
			errs = append(errs, fmt.Errorf("optimize %s: %w", a.table, err))
		}
	}
	return errors.Join(errs...)
}
