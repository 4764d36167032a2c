package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/store"
)

var (
	flagReadScales = flag.String("bench.read-scales", "4000000:10000:300000,16000000:20000:1000000,48000000:30000:3000000",
		"TestRead: histories as events:accounts:users, comma-separated")
	flagReadChDB = flag.Bool("bench.read-chdb", true, "TestRead: also measure on chDB (a current ClickHouse engine, PyPI chdb)")
)

// readScale is one history of TestRead.
type readScale struct{ events, accounts, users int }

func parseScales(t *testing.T) []readScale {
	var out []readScale
	for _, s := range strings.Split(*flagReadScales, ",") {
		var r readScale
		if _, err := fmt.Sscanf(s, "%d:%d:%d", &r.events, &r.accounts, &r.users); err != nil {
			t.Fatalf("bench.read-scales %q: %v", s, err)
		}
		out = append(out, r)
	}
	return out
}

// factSQL fills the fact tables of db with the facts a history of r would
// leave (24 months from 2024-01, about 0.6 user-months, 0.2 feature-user
// rows and 0.03 seat events per event, 6 count rows per account-month, a
// purchase per account-quarter), deterministically. Account IDs are
// acct-<1000000+i>, so that ranges of them are ranges of accounts.
func factSQL(db string, r readScale) []string {
	a, u := r.accounts, r.users
	acct := func(x string) string { return fmt.Sprintf("concat('acct-', toString(1000000 + (%s) %% %d))", x, a) }
	user := fmt.Sprintf("concat('u-', toString(10000000 + number %% %d))", u)
	month := func(x string) string { return fmt.Sprintf("addMonths(toDate('2024-01-01'), toInt32(%s))", x) }
	um := fmt.Sprintf("intDiv(number, %d) %% 24", u)
	return []string{
		fmt.Sprintf("INSERT INTO %s.fact_account_months SELECT %s, %s FROM numbers(%d)", db, acct("number"), month(fmt.Sprintf("intDiv(number, %d)", a)), a*24),
		fmt.Sprintf("INSERT INTO %s.fact_user_activity SELECT %s, %s, %s, toUInt64(toUnixTimestamp(toDateTime(%s))) * 1000 + cityHash64(number) %% 2419200000 FROM numbers(%d)",
			db, acct(fmt.Sprintf("number %% %d", u)), month(um), user, month(um), r.events*6/10),
		fmt.Sprintf("INSERT INTO %s.fact_feature_users SELECT %s, %s, concat('feature-', toString(cityHash64(number) %% 20)), %s FROM numbers(%d)",
			db, acct(fmt.Sprintf("number %% %d", u)), month(um), user, r.events*2/10),
		fmt.Sprintf("INSERT INTO %s.fact_event_counts SELECT %s, %s, toUInt8(if(number %% 6 = 0, 1, 2)), if(number %% 6 = 0, '', concat('feature-', toString(cityHash64(number) %% 20))), 'usage-events', toInt32(number %% 4), toUInt64(0), toUInt64(1000000), toUInt64(1 + cityHash64(number, 1) %% 200) FROM numbers(%d)",
			db, acct(fmt.Sprintf("intDiv(number, 6)")), month(fmt.Sprintf("intDiv(number, %d) %% 24", 6*a)), a*24*6),
		fmt.Sprintf("INSERT INTO %s.fact_seat_events SELECT %s, %s, %s, toUInt64(toUnixTimestamp(toDateTime(%s))) * 1000 + cityHash64(number) %% 2419200000, concat('s-', toString(number)), toUInt8(cityHash64(number, 2) %% 5 != 0) FROM numbers(%d)",
			db, acct(fmt.Sprintf("number %% %d", u)), user, month(um), month(um), r.events*3/100),
		fmt.Sprintf("INSERT INTO %s.fact_seat_purchases SELECT %s, %s, toUInt64(toUnixTimestamp(toDateTime(%s))) * 1000, concat('p-', toString(number)), toUInt64(10 + cityHash64(number) %% 200) FROM numbers(%d)",
			db, acct("number"), month(fmt.Sprintf("3 * intDiv(number, %d)", a)), month(fmt.Sprintf("3 * intDiv(number, %d)", a)), a*8),
		fmt.Sprintf("INSERT INTO %s.rollup_marks (account_id, month) SELECT account_id, month FROM %s.fact_account_months", db, db),
	}
}

// readQuery is one read of TestRead, against a view and its plain copy.
type readQuery struct{ name, table, where string }

func readQueries(latest, account string) []readQuery {
	return []readQuery{
		{"rollups, all rows", "account_quarter_rollups", ""},
		{"rollups, latest quarter", "account_quarter_rollups", "quarter_start = '" + latest + "'"},
		{"rollups, one account", "account_quarter_rollups", "account_id = '" + account + "'"},
		{"features, all rows", "account_quarter_features", ""},
		{"features, latest quarter", "account_quarter_features", "quarter_start = '" + latest + "'"},
		{"features, one account", "account_quarter_features", "account_id = '" + account + "'"},
	}
}

func (q readQuery) sql(db, table string) string {
	s := "SELECT * FROM " + db + "." + table
	if q.where != "" {
		s += " WHERE " + q.where
	}
	return s
}

// TestRead: contract section 4, "Reading is cheap". For each history of
// -bench.read-scales, facts are generated in ClickHouse (SQL, see
// factSQL), the served rows are built by the serve loop's own sweep (timed:
// the upgrade's cost), a second version of the latest quarter's rows is
// written (so that reads meet unmerged versions, as they do live), and
// each read of the views is timed against a plain MergeTree copy of the
// rows it returns (CREATE TABLE … AS SELECT * FROM the view): wall time of
// clickhouse-client, best of 3, and the server's memory for it
// (system.query_log). The old way, computing every rollup from the facts,
// is timed once for comparison. With -bench.read-chdb the same SQL runs
// on chDB (read_chdb.py), timed in-process.
func TestRead(t *testing.T) {
	for _, r := range parseScales(t) {
		t.Run(fmt.Sprintf("%dM", r.events/1_000_000), func(t *testing.T) { readRun(t, r) })
	}
}

func readRun(t *testing.T, r readScale) {
	ctx := context.Background()
	db := "read_" + uniq()
	st, err := store.Open(ctx, store.Config{Addr: []string{env.chAddr}, Database: db}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	defer dropDatabase(t, db)
	cfg := schema.Config{Database: db, FiscalStartMonth: 1}
	if err := schema.Migrate(ctx, st.Conn(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	conn := st.Conn()
	start := time.Now()
	for _, q := range factSQL(db, r) {
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	factRows := count(t, conn, "SELECT sum(rows) FROM system.parts WHERE database = '"+db+"' AND active AND table LIKE 'fact_%'")
	t.Logf("%d events: %d fact rows generated in %s", r.events, factRows, time.Since(start).Round(time.Second))

	sv, err := schema.NewServed(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	n, err := sv.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	build := time.Since(start)
	// A second version of the latest quarter's rows, as a live pipeline
	// leaves them before merges.
	last, _, err := sv.LastQuarter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	again := map[string]int32{}
	for i := range r.accounts {
		again[fmt.Sprintf("acct-%d", 1000000+i)] = last
	}
	start = time.Now()
	if err := sv.Recompute(ctx, again, nil); err != nil {
		t.Fatal(err)
	}
	rollover := time.Since(start)
	// Where readers are tables (servers before 20.1), their copy of the
	// served rows, as the serve loop keeps it.
	start = time.Now()
	if err := schema.SyncReaders(ctx, conn, cfg); err != nil {
		t.Fatal(err)
	}
	copyTook := time.Since(start)
	servedRows := count(t, conn, "SELECT count() FROM "+db+".account_quarter_rollups")
	featureRows := count(t, conn, "SELECT count() FROM "+db+".account_quarter_features")
	t.Logf("served rows built by the sweep for %d accounts in %s (%d rollup rows, %d feature rows); every account's latest quarter recomputed in %s; reader tables synced in %s",
		n, build.Round(100*time.Millisecond), servedRows, featureRows, rollover.Round(100*time.Millisecond), copyTook.Round(100*time.Millisecond))
	for _, p := range []struct{ name, src, order string }{
		{"plain_rollups", "account_quarter_rollups", "account_id, quarter_start"},
		{"plain_features", "account_quarter_features", "account_id, quarter_start, feature"},
	} {
		if err := conn.Exec(ctx, "CREATE TABLE "+db+"."+p.name+" ENGINE = MergeTree ORDER BY ("+p.order+") AS SELECT * FROM "+db+"."+p.src); err != nil {
			t.Fatal(err)
		}
	}
	latest := time.Date(int(last/12), time.Month(last%12+1), 1, 0, 0, 0, 0, time.UTC).Format(time.DateOnly)
	account := fmt.Sprintf("acct-%d", 1000000+r.accounts/2)

	res := result{Test: "read", Events: r.events, Extra: map[string]string{
		"accounts": fmt.Sprint(r.accounts), "users": fmt.Sprint(r.users), "fact_rows": fmt.Sprint(factRows),
		"served_rollup_rows": fmt.Sprint(servedRows), "served_feature_rows": fmt.Sprint(featureRows),
		"build_s": fmt.Sprintf("%.1f", build.Seconds()), "latest_quarter_recompute_s": fmt.Sprintf("%.1f", rollover.Seconds()),
		"reader_sync_s": fmt.Sprintf("%.1f", copyTook.Seconds()),
	}}
	for _, q := range readQueries(latest, account) {
		plain := strings.Replace(q.table, "account_quarter_", "plain_", 1)
		v := clientRead(t, db, q.sql(db, q.table))
		p := clientRead(t, db, q.sql(db, plain))
		t.Logf("18.16 %-26s reader %6.3f s %7.1f MiB | plain %6.3f s %7.1f MiB | ratio %.2f", q.name, v.wall, v.mib, p.wall, p.mib, v.wall/p.wall)
		key := strings.NewReplacer(", ", "_", " ", "_").Replace(q.name)
		res.Extra["18.16 "+key] = fmt.Sprintf("view %.3f s %.1f MiB, plain %.3f s %.1f MiB, ratio %.2f", v.wall, v.mib, p.wall, p.mib, v.wall/p.wall)
	}
	_, roll, err := sv.ComputeSQL("1", sv.QuarterOf(schema.MinMonth))
	if err != nil {
		t.Fatal(err)
	}
	if old, err := clientReadOnce(db, roll); err != nil {
		t.Logf("18.16 the old way (every rollup from the facts): failed: %v", err)
		res.Extra["18.16 old_view_all_rollups"] = "failed: " + exceptionLine(err.Error())
	} else {
		t.Logf("18.16 the old way (every rollup from the facts): %.3f s, %.1f MiB", old.wall, old.mib)
		res.Extra["18.16 old_view_all_rollups"] = fmt.Sprintf("%.3f s %.1f MiB", old.wall, old.mib)
	}

	if *flagReadChDB {
		readChDB(t, db, cfg, r, sv, latest, account, roll, res.Extra)
	}
	report(t, res)
}

type readCost struct{ wall, mib float64 }

// clientRead runs q with FORMAT Null through clickhouse-client three times
// and returns the best wall time and the server's peak memory of that run.
func clientRead(t *testing.T, db, q string) readCost {
	t.Helper()
	host, port, err := net.SplitHostPort(env.chAddr)
	if err != nil {
		t.Fatal(err)
	}
	best := readCost{wall: 1e9}
	for i := range 3 {
		id := fmt.Sprintf("%s-%d-%d", db, time.Now().UnixNano(), i)
		start := time.Now()
		out, err := exec.Command("clickhouse-client", "--host", host, "--port", port, "--query_id", id, "--log_queries", "1", "--query", q+" FORMAT Null").CombinedOutput()
		wall := time.Since(start).Seconds()
		if err != nil {
			t.Fatalf("clickhouse-client: %v: %s\n%s", err, out, q)
		}
		if wall < best.wall {
			best = readCost{wall: wall, mib: queryMemory(t, id)}
		}
	}
	return best
}

// clientReadOnce runs q once (the old way can exceed the server's memory
// limit: that is a result, not a test failure).
func clientReadOnce(db, q string) (readCost, error) {
	host, port, err := net.SplitHostPort(env.chAddr)
	if err != nil {
		return readCost{}, err
	}
	id := fmt.Sprintf("%s-old-%d", db, time.Now().UnixNano())
	start := time.Now()
	out, err := exec.Command("clickhouse-client", "--host", host, "--port", port, "--query_id", id, "--log_queries", "1", "--query", q+" FORMAT Null").CombinedOutput()
	if err != nil {
		return readCost{}, fmt.Errorf("%v: %s", err, out)
	}
	wall := time.Since(start).Seconds()
	return readCost{wall: wall, mib: memoryOf(id)}, nil
}

func exceptionLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "Exception") {
			return strings.TrimSpace(l)
		}
	}
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// memoryOf is queryMemory without a test (-1 when not found).
func memoryOf(id string) float64 {
	ctx := context.Background()
	st, err := store.Open(ctx, store.Config{Addr: []string{env.chAddr}}, nil, nil)
	if err != nil {
		return -1
	}
	defer st.Close()
	for range 50 {
		if err := st.Conn().Exec(ctx, "SYSTEM FLUSH LOGS"); err != nil {
			return -1
		}
		var m, n uint64
		if err := st.Conn().QueryRow(ctx, "SELECT toUInt64(max(memory_usage)), count() FROM system.query_log WHERE query_id = ? AND type = 2", id).Scan(&m, &n); err != nil {
			return -1
		}
		if n > 0 {
			return float64(m) / (1 << 20)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return -1
}

// queryMemory is the peak memory of query id, from system.query_log.
func queryMemory(t *testing.T, id string) float64 {
	t.Helper()
	m := memoryOf(id)
	if m < 0 {
		t.Fatalf("query %s not in system.query_log", id)
	}
	return m
}

func count(t *testing.T, conn driver.Conn, q string) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// readChDB runs the same history on chDB: the rendered DDL, the same fact
// SQL, the recompute in ranges of 1000 accounts, a second version of the
// latest quarter, the plain copies, and the same reads (best of 3,
// in-process wall time, and memory from chDB's query_log).
func readChDB(t *testing.T, db string, cfg schema.Config, r readScale, sv *schema.Served, latest, account, roll string, extra map[string]string) {
	t.Helper()
	type spec struct {
		Setup   []string          `json:"setup"`
		Queries map[string]string `json:"queries"`
		Order   []string          `json:"order"`
	}
	ddl, err := schema.DDL(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := spec{Setup: append(ddl, factSQL(db, r)...), Queries: map[string]string{}}
	// The recompute statements refuse to start more than 10 s after
	// their S (the updated_at bound); chDB runs them after generating the
	// facts in-process, which takes longer than that at 48M: an S a day
	// ahead (these rows are only read).
	sec := uint32(time.Now().Unix()) + 86400
	for lo := 0; lo < r.accounts; lo += 1000 {
		expr := fmt.Sprintf("account_id >= 'acct-%d' AND account_id < 'acct-%d'", 1000000+lo, 1000000+min(lo+1000, r.accounts))
		qs, err := sv.RecomputeSQL(expr, sv.QuarterOf(schema.MinMonth), sec)
		if err != nil {
			t.Fatal(err)
		}
		s.Setup = append(s.Setup, qs...)
	}
	last, _, _ := sv.LastQuarter(context.Background())
	qs, err := sv.RecomputeSQL("1", last, sec+1)
	if err != nil {
		t.Fatal(err)
	}
	s.Setup = append(s.Setup, qs...)
	s.Setup = append(s.Setup,
		"CREATE TABLE "+db+".plain_rollups ENGINE = MergeTree ORDER BY (account_id, quarter_start) AS SELECT * FROM "+db+".account_quarter_rollups",
		"CREATE TABLE "+db+".plain_features ENGINE = MergeTree ORDER BY (account_id, quarter_start, feature) AS SELECT * FROM "+db+".account_quarter_features")
	for _, q := range readQueries(latest, account) {
		plain := strings.Replace(q.table, "account_quarter_", "plain_", 1)
		s.Queries["view "+q.name] = q.sql(db, q.table)
		s.Queries["plain "+q.name] = q.sql(db, plain)
		s.Order = append(s.Order, q.name)
	}
	s.Queries["old"] = roll
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json")
	b, _ := json.Marshal(s)
	if err := os.WriteFile(in, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("python3", "read_chdb.py", in, out)
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chDB: %v\n%s", err, o)
	}
	var res struct {
		Version string                        `json:"version"`
		SetupS  float64                       `json:"setup_s"`
		Results map[string]map[string]float64 `json:"results"`
	}
	b, err = os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	t.Logf("chDB %s: setup (facts, served rows, copies) %.1f s", res.Version, res.SetupS)
	for _, name := range s.Order {
		v, p := res.Results["view "+name], res.Results["plain "+name]
		t.Logf("chDB  %-26s view %6.3f s | plain %6.3f s | ratio %.2f | view fits 256 MiB: %v", name, v["s"], p["s"], v["s"]/p["s"], v["fits_256mib"] == 1)
		key := strings.NewReplacer(", ", "_", " ", "_").Replace(name)
		extra["chdb "+key] = fmt.Sprintf("view %.3f s (fits 256 MiB: %v), plain %.3f s, ratio %.2f", v["s"], v["fits_256mib"] == 1, p["s"], v["s"]/p["s"])
	}
	o := res.Results["old"]
	t.Logf("chDB  the old way (every rollup from the facts): %.3f s, fits 256 MiB: %v", o["s"], o["fits_256mib"] == 1)
	extra["chdb old_view_all_rollups"] = fmt.Sprintf("%.3f s, fits 256 MiB: %v", o["s"], o["fits_256mib"] == 1)
	extra["chdb_version"] = res.Version
}
