package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/usagepipe/usagepipe/schema/chserver"
)

// The peer is ClickHouse's own Kafka table engine: a Kafka table reading the
// events topic as JSONEachRow, a materialized view moving every row into a
// MergeTree of raw events. It does no validation, no dedup and no rollup —
// it only lands the rows, so it is a lower bound on what ClickHouse alone
// must spend before any query can compute a rollup.
//
// It runs in a dedicated clickhouse-server (schema/chserver) whose config.d
// and users.d add what 18.16 needs: auto_offset_reset=smallest (else a new
// group reads from the end of the topic) and
// input_format_skip_unknown_fields=1 in the default profile (gen adds
// fields the table does not have, such as session_id and a nested ctx).
const peerKafkaXML = `<?xml version="1.0"?>
<yandex>
    <kafka><auto_offset_reset>smallest</auto_offset_reset></kafka>
</yandex>
`

const peerUsersXML = `<?xml version="1.0"?>
<yandex>
    <profiles><default>
        <input_format_skip_unknown_fields>1</input_format_skip_unknown_fields>
        <date_time_input_format>best_effort</date_time_input_format>
        <stream_flush_interval_ms>{{FLUSH}}</stream_flush_interval_ms>
    </default></profiles>
</yandex>
`

// peerServer is a running peer ClickHouse.
type peerServer struct {
	srv  *chserver.Server
	pid  int
	conn driver.Conn
}

// startPeerServer starts a dedicated ClickHouse for the peer and stops it
// when t ends.
func startPeerServer(t *testing.T, flushMs int) *peerServer {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "peer-clickhouse")
	for sub, body := range map[string]string{
		"config.d/kafka.xml": peerKafkaXML,
		"users.d/peer.xml":   strings.ReplaceAll(peerUsersXML, "{{FLUSH}}", fmt.Sprint(flushMs)),
	} {
		p := filepath.Join(dir, sub)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	srv, err := chserver.Start(ctx, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{srv.Addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	pid := findPID(func(cmdline []string, ppid int) bool {
		return ppid == os.Getpid() && strings.Contains(strings.Join(cmdline, " "), "--config-file="+filepath.Join(dir, "config.xml"))
	})
	return &peerServer{srv: srv, pid: pid, conn: conn}
}

// errLog is the tail of the peer server's error log.
func (s *peerServer) errLog() string {
	b, _ := os.ReadFile(filepath.Join(s.srv.Dir, "server.err.log"))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// peerDDL creates, in database db, the raw-events MergeTree, the Kafka
// table and the materialized view between them. The MergeTree is created
// first and the view last, so nothing is consumed before the view exists.
func peerDDL(db string, brokers []string, topic, group string, consumers, block int) []string {
	settings := fmt.Sprintf("kafka_broker_list = '%s', kafka_topic_list = '%s', kafka_group_name = '%s', kafka_format = 'JSONEachRow', kafka_num_consumers = %d",
		strings.Join(brokers, ","), topic, group, consumers)
	if block > 0 {
		settings += fmt.Sprintf(", kafka_max_block_size = %d", block)
	}
	return []string{
		"CREATE DATABASE " + db,
		`CREATE TABLE ` + db + `.events (
			event_id String, type String, account_id String, user_id String,
			feature String, product String, occurred_at DateTime, seats Int64
		) ENGINE = MergeTree() ORDER BY (account_id, event_id)`,
		fmt.Sprintf(`CREATE TABLE %s.queue (
			event_id String, type String, account_id String, user_id String,
			feature String, product String, occurred_at DateTime, seats Int64
		) ENGINE = Kafka SETTINGS %s`, db, settings),
		`CREATE MATERIALIZED VIEW ` + db + `.mv TO ` + db + `.events AS SELECT * FROM ` + db + `.queue`,
	}
}

func (s *peerServer) exec(t *testing.T, stmts ...string) {
	t.Helper()
	for _, q := range stmts {
		if err := s.conn.Exec(context.Background(), q); err != nil {
			t.Fatalf("peer: %s: %v", firstLine(q), err)
		}
	}
}

// count evaluates an aggregate such as count() over the raw events.
func (s *peerServer) count(db, agg string) (uint64, error) {
	var n uint64
	err := s.conn.QueryRow(context.Background(), "SELECT "+agg+" FROM "+db+".events").Scan(&n)
	return n, err
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

var (
	flagPeer        = flag.Bool("bench.peer", true, "after usagepipe, run the peer (ClickHouse's Kafka engine) on the same topic")
	flagPeerConfigs = flag.String("bench.peer-configs", "1:0,4:1048576", "peer configurations to run, comma-separated kafka_num_consumers:kafka_max_block_size (block 0: the server default, max_block_size = 65536)")
	flagPeerFlushMs = flag.Int("bench.peer-flush-ms", 1000, "stream_flush_interval_ms of the peer server (18.16 default: 7500)")
	flagPeerTimeout = flag.Duration("bench.peer-timeout", 10*time.Minute, "give up on the peer after this long")
)

// peerConfig is one configuration of the peer's Kafka table.
type peerConfig struct{ consumers, block int }

func peerConfigs(t *testing.T) []peerConfig {
	t.Helper()
	var out []peerConfig
	for _, f := range strings.Split(*flagPeerConfigs, ",") {
		var c peerConfig
		if _, err := fmt.Sscanf(strings.TrimSpace(f), "%d:%d", &c.consumers, &c.block); err != nil || c.consumers < 1 || c.block < 0 {
			t.Fatalf("bench.peer-configs: bad entry %q (want consumers:block)", f)
		}
		out = append(out, c)
	}
	return out
}

// runPeer lands the n records of topic with the peer and measures it: wall
// time from creating the Kafka table until the MergeTree holds n distinct
// event IDs (count() polled every 200 ms until it reaches n, then
// uniqExact(event_id), since the Kafka engine is at-least-once and may land
// a record twice), the peer server's CPU and the broker's over the same
// interval, and the server's peak RSS (VmHWM, since its start).
func runPeer(t *testing.T, b broker, topic string, n int, pc peerConfig) result {
	t.Helper()
	ps := startPeerServer(t, *flagPeerFlushMs)
	db := "peer_" + uniq()
	ps.exec(t, "SELECT 1") // connected before the clock starts
	ddl := peerDDL(db, b.addrs, topic, "peer-"+uniq(), pc.consumers, pc.block)
	ps.exec(t, ddl[:2]...) // database and MergeTree: not timed

	bcpu0, cpu0 := b.cpu(), procCPU(ps.pid)
	load0 := loadAvg()
	start := time.Now()
	ps.exec(t, ddl[2:]...) // Kafka table and view: consumption starts
	var rows, distinct uint64
	var firstRows time.Duration
	deadline := start.Add(*flagPeerTimeout)
	for {
		var err error
		if rows, err = ps.count(db, "count()"); err != nil {
			t.Fatalf("peer: count: %v", err)
		}
		if rows > 0 && firstRows == 0 {
			firstRows = time.Since(start)
		}
		if rows >= uint64(n) {
			if distinct, err = ps.count(db, "uniqExact(event_id)"); err != nil {
				t.Fatalf("peer: uniqExact: %v", err)
			}
			if distinct >= uint64(n) {
				break
			}
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	wall := time.Since(start)
	bcpu, cpu := b.cpu()-bcpu0, procCPU(ps.pid)-cpu0
	if distinct < uint64(n) {
		t.Errorf("peer: %d distinct event IDs (%d rows) of %d after %s\n%s", distinct, rows, n, wall.Round(time.Second), ps.errLog())
	}
	ps.exec(t, "DROP TABLE "+db+".mv", "DROP TABLE "+db+".queue") // stop consuming
	ps.exec(t, "DROP DATABASE "+db)
	r := result{
		Test: "peer", Broker: b.kind, Events: n, Partitions: *flagPartitions,
		WallS: wall.Seconds(), EventsPerS: float64(n) / wall.Seconds(),
		CPUNsEvent:       float64(cpu.Nanoseconds()) / float64(n),
		BrokerCPUNsEvent: float64(bcpu.Nanoseconds()) / float64(n),
		MaxRSSMiB:        float64(procHWM(ps.pid)) / (1 << 20),
		Load:             load0 + "→" + loadAvg(),
		Exact: fmt.Sprintf("raw rows only (no validation, dedup or rollup): %d distinct of %d events, %d rows (%d landed twice)",
			distinct, n, rows, rows-min(rows, distinct)),
		Extra: map[string]string{
			"broker":          b.note,
			"peer_config":     fmt.Sprintf("kafka_num_consumers=%d kafka_max_block_size=%s", pc.consumers, blockName(pc.block)),
			"engine":          fmt.Sprintf("ClickHouse 18.16 Kafka engine → materialized view → MergeTree ORDER BY (account_id, event_id); JSONEachRow; stream_flush_interval_ms=%d", *flagPeerFlushMs),
			"first_rows_s":    fmt.Sprintf("%.2f", firstRows.Seconds()),
			"cpu_is":          "the peer clickhouse-server process (user+sys)",
			"occurred_at_col": "DateTime, date_time_input_format=best_effort: epoch-millis values (6% of gen's) are read as seconds",
		},
	}
	t.Logf("%s peer (%s): %d distinct of %d in %s (%d rows; first rows after %s), ClickHouse CPU %.0f ns/event, broker CPU %.0f ns/event, ClickHouse peak RSS %.0f MiB",
		b.kind, r.Extra["peer_config"], distinct, n, wall.Round(time.Millisecond), rows, firstRows.Round(time.Millisecond), r.CPUNsEvent, r.BrokerCPUNsEvent, r.MaxRSSMiB)
	return r
}

func blockName(b int) string {
	if b == 0 {
		return "default(65536)"
	}
	return fmt.Sprint(b)
}
