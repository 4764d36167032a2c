package schema_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
)

// The input and output of testdata/chdb_run.py.
type chdbSpec struct {
	Statements []string          `json:"statements"`
	Inserts    []chdbInsert      `json:"inserts"`
	After      []string          `json:"after"`
	Queries    map[string]string `json:"queries"`
	// Config, when set, is written as config.xml where chDB starts, which
	// it reads (e.g. remote_servers for Distributed tables).
	Config string `json:"-"`
}

type chdbInsert struct {
	Table   string   `json:"table"`
	Columns []string `json:"columns"`
	Rows    [][]any  `json:"rows"`
}

type chdbResult struct {
	Version string `json:"version"`
	Results map[string]struct {
		Meta []struct{ Name, Type string } `json:"meta"`
		Data [][]any                       `json:"data"`
	} `json:"results"`
}

// runChDB runs spec on chDB, a current ClickHouse engine embedded in a
// Python package. It fails, never skips, when python3 or chdb is missing:
// CI installs chdb with pip.
func runChDB(t *testing.T, spec chdbSpec) chdbResult {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 not found (needed for the chDB check; then: pip install chdb): %v", err)
	}
	script, err := filepath.Abs(filepath.Join("testdata", "chdb_run.py"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json")
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(in, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if spec.Config != "" {
		if err := os.WriteFile(filepath.Join(dir, "config.xml"), []byte(spec.Config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(py, script, in, out)
	cmd.Dir = dir // chDB reads a config.xml from its working directory
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, stderr.String())
	}
	b, err = os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res chdbResult
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&res); err != nil {
		t.Fatal(err)
	}
	return res
}

// factRows are the rows Store.Write inserts for f, by table.
func factRows(db string, f *schema.Facts) []chdbInsert {
	date := func(m int32) string { return quarter.MonthStart(m).Format(time.DateOnly) }
	ins := []chdbInsert{
		{Table: db + ".fact_account_months", Columns: []string{"account_id", "month"}},
		{Table: db + ".fact_user_activity", Columns: []string{"account_id", "month", "user_id", "last_activity_ms"}},
		{Table: db + ".fact_feature_users", Columns: []string{"account_id", "month", "feature", "user_id"}},
		{Table: db + ".fact_event_counts", Columns: []string{"account_id", "month", "kind", "feature", "src_topic", "src_partition", "bucket", "covered_end", "events"}},
		{Table: db + ".fact_seat_events", Columns: []string{"account_id", "user_id", "month", "occurred_ms", "event_id", "assigned"}},
		{Table: db + ".fact_seat_purchases", Columns: []string{"account_id", "month", "occurred_ms", "event_id", "seats"}},
	}
	for _, r := range f.AccountMonths {
		ins[0].Rows = append(ins[0].Rows, []any{r.Account, date(r.Month)})
	}
	for _, r := range f.UserActivity {
		ins[1].Rows = append(ins[1].Rows, []any{r.Account, date(r.Month), r.User, r.LastMs})
	}
	for _, r := range f.FeatureUsers {
		ins[2].Rows = append(ins[2].Rows, []any{r.Account, date(r.Month), r.Feature, r.User})
	}
	for _, r := range f.EventCounts {
		ins[3].Rows = append(ins[3].Rows, []any{r.Account, date(r.Month), r.Kind, r.Feature, r.Topic, r.Partition, r.Bucket, r.CoveredEnd, r.Events})
	}
	for _, r := range f.SeatEvents {
		a := 0
		if r.Assigned {
			a = 1
		}
		ins[4].Rows = append(ins[4].Rows, []any{r.Account, r.User, date(r.Month), r.OccurredMs, r.EventID, a})
	}
	for _, r := range f.SeatPurchases {
		ins[5].Rows = append(ins[5].Rows, []any{r.Account, date(r.Month), r.OccurredMs, r.EventID, r.Seats})
	}
	var out []chdbInsert
	for _, i := range ins {
		if len(i.Rows) > 0 {
			out = append(out, i)
		}
	}
	return out
}

// cells converts one chDB JSONCompact row.
type cells struct {
	t   *testing.T
	row []any
}

func (c cells) str(i int) string { return fmt.Sprint(c.row[i]) }

func (c cells) u64(i int) uint64 {
	v, err := strconv.ParseUint(c.str(i), 10, 64)
	if err != nil {
		c.t.Fatalf("column %d: %v", i, err)
	}
	return v
}

func (c cells) f64(i int) float64 {
	v, err := strconv.ParseFloat(c.str(i), 64)
	if err != nil {
		c.t.Fatalf("column %d: %v", i, err)
	}
	return v
}

func (c cells) time(i int, layout string) time.Time {
	v, err := time.ParseInLocation(layout, c.str(i), time.UTC)
	if err != nil {
		c.t.Fatalf("column %d: %v", i, err)
	}
	return v
}

// TestChDBSameResults runs the rendered DDL (and both ways migrate
// replaces a view), the facts of replayed writes and the view queries on
// chDB, and checks it returns what 18.16 returns and what the contract
// says, with the same column types.
func TestChDBSameResults(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(11, 12))
	evs := randomEvents(rng, 700)
	half := maxOffsets(evs)
	for p := range half {
		half[p] /= 2
	}
	writes := []*schema.Facts{factsOf(evs, half), factsOf(evs, nil), factsOf(evs, half), factsOf(evs, nil)}

	spec := chdbSpec{Queries: map[string]string{}}
	type side struct {
		fs       int
		db       string
		rollups  []string
		features []string
		columns  []string
	}
	var sides []side
	var markers []string
	for _, fs := range []int{1, 4} {
		// ClickHouse 18.16.
		st := migrated(t, fs)
		for _, f := range writes {
			write(t, st, f)
		}
		checkViews(t, st, evs, fs)
		r, err := st.ReadRollups(ctx)
		if err != nil {
			t.Fatal(err)
		}
		f, err := st.ReadFeatures(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s := side{fs: fs, db: fmt.Sprintf("usage_fs%d", fs), rollups: fmtRollups(r), features: fmtFeatures(f), columns: viewColumns(t, st.Conn(), st.Database())}
		sides = append(sides, s)

		// chDB: the DDL as rendered, then each view replaced both ways.
		cfg := schema.Config{Database: s.db, FiscalStartMonth: fs}
		ss, err := schema.DDL(cfg)
		if err != nil {
			t.Fatal(err)
		}
		spec.Statements = append(spec.Statements, ss...)
		for _, q := range ss {
			if m := markerRE.FindStringSubmatch(q); m != nil {
				markers = append(markers, m[1])
			}
			if _, rest, ok := strings.Cut(q, "CREATE VIEW "+s.db+"."); ok {
				name, _, _ := strings.Cut(rest, " ")
				spec.Statements = append(spec.Statements, schema.ViewStatements(s.db, name, q, false, "")...)
				spec.Statements = append(spec.Statements, schema.ViewStatements(s.db, name, q, true, "")...)
			}
		}
		for _, f := range writes {
			spec.Inserts = append(spec.Inserts, factRows(s.db, f)...)
		}
		// The served rows: the recompute of every account, as SQL.
		rq, err := schema.RecomputeAllSQL(cfg, uint32(time.Now().Unix()+300)) // S ahead of the clock: the statements start well within S + 10 s
		if err != nil {
			t.Fatal(err)
		}
		spec.After = append(spec.After, rq...)
		spec.Queries[s.db+".views"] = "SELECT name, create_table_query FROM system.tables WHERE database = '" + s.db + "' AND engine = 'View' ORDER BY name"
		spec.Queries[s.db+".rollups"] = "SELECT * EXCEPT updated_at FROM " + s.db + ".account_quarter_rollups ORDER BY account_id, quarter_start"
		spec.Queries[s.db+".features"] = "SELECT account_id, quarter_start, feature, active_users, events FROM " + s.db + ".account_quarter_features ORDER BY account_id, quarter_start, feature"
		for _, v := range viewNames {
			spec.Queries[s.db+".columns."+v] = columnsQuery(s.db, v)
		}
	}
	for fs := 1; fs <= 12; fs++ {
		qi, qstart, label := schema.QuarterSQL(schema.Config{FiscalStartMonth: fs})
		spec.Queries[fmt.Sprintf("quarters%d", fs)] = "SELECT toInt32(number), " + qi("month") + " AS qi, " + qstart("qi") + " AS qs, " + label("qi") +
			" FROM (SELECT number, addMonths(toDate('2000-01-01'), toInt32(number)) AS month FROM system.numbers LIMIT " + strconv.Itoa(int(schema.MaxMonth-schema.MinMonth+1)) + ")"
	}

	res := runChDB(t, spec)
	t.Logf("chDB engine %s", res.Version)
	// Migrate recognises an installed view by the marker in its last alias:
	// the server must keep it in create_table_query.
	var defs []string
	for _, s := range sides {
		for _, row := range res.Results[s.db+".views"].Data {
			defs = append(defs, fmt.Sprint(row[1]))
		}
	}
	if len(defs) != len(markers) || len(markers) != 2*len(sides) {
		t.Fatalf("%d views on chDB, %d markers", len(defs), len(markers))
	}
	for _, m := range markers {
		found := false
		for _, d := range defs {
			found = found || strings.Contains(d, m)
		}
		if !found {
			t.Errorf("view marker %s not in chDB's create_table_query", m)
		}
	}
	for _, s := range sides {
		var rollups []schema.Rollup
		for _, row := range res.Results[s.db+".rollups"].Data {
			c := cells{t, row}
			rollups = append(rollups, schema.Rollup{
				AccountID: c.str(0), QuarterStart: c.time(1, time.DateOnly), QuarterEnd: c.time(2, time.DateOnly), Quarter: c.str(3),
				SeatsPurchased: c.u64(4), SeatsAssigned: c.u64(5), SeatUtilization: c.f64(6), ActiveUsers: c.u64(7), ActiveAssignedUsers: c.u64(8),
				ActivationRate: c.f64(9), Logins: c.u64(10), FeatureEvents: c.u64(11), FeaturesUsed: c.u64(12), LastActivityAt: c.time(13, time.DateTime),
			})
		}
		if d := diff(fmtRollups(rollups), s.rollups); d != "" {
			t.Errorf("fiscal start %d: chDB rollups differ from 18.16's:\n%s", s.fs, d)
		}
		var features []schema.FeatureRow
		for _, row := range res.Results[s.db+".features"].Data {
			c := cells{t, row}
			features = append(features, schema.FeatureRow{AccountID: c.str(0), QuarterStart: c.time(1, time.DateOnly), Feature: c.str(2), ActiveUsers: c.u64(3), Events: c.u64(4)})
		}
		if d := diff(fmtFeatures(features), s.features); d != "" {
			t.Errorf("fiscal start %d: chDB features differ from 18.16's:\n%s", s.fs, d)
		}
		var cols []string
		for _, v := range viewNames {
			for _, row := range res.Results[s.db+".columns."+v].Data {
				cols = append(cols, strings.TrimSuffix(fmt.Sprintln(row...), "\n"))
			}
		}
		if d := diff(cols, s.columns); d != "" {
			t.Errorf("chDB view columns differ from 18.16's:\n%s", d)
		}
		if d := diff(s.columns, contractColumns); d != "" {
			t.Errorf("view columns differ from the contract's:\n%s", d)
		}
	}
	for fs := 1; fs <= 12; fs++ {
		fy := quarter.Fiscal{StartMonth: fs}
		data := res.Results[fmt.Sprintf("quarters%d", fs)].Data
		if len(data) != int(schema.MaxMonth-schema.MinMonth+1) {
			t.Fatalf("fs=%d: %d quarter rows", fs, len(data))
		}
		for _, row := range data {
			c := cells{t, row}
			mi := schema.MinMonth + int32(c.u64(0))
			q := fy.QuarterIndex(mi)
			got := fmt.Sprintf("%s %s %s", c.str(1), c.str(2), c.str(3))
			want := fmt.Sprintf("%d %s %s", q, quarter.MonthStart(q).Format(time.DateOnly), fy.Label(q))
			if got != want {
				t.Fatalf("fs=%d month %d: chDB %s, Go %s", fs, mi, got, want)
			}
		}
	}
}

var markerRE = regexp.MustCompile(`AS served_(v[0-9a-f]{16}) FINAL`)

// contractColumns are the views' columns and types (contract section 4).
var contractColumns = strings.Split(`account_quarter_features account_id String
account_quarter_features quarter_start Date
account_quarter_features quarter_end Date
account_quarter_features quarter String
account_quarter_features feature String
account_quarter_features active_users UInt64
account_quarter_features events UInt64
account_quarter_rollups account_id String
account_quarter_rollups quarter_start Date
account_quarter_rollups quarter_end Date
account_quarter_rollups quarter String
account_quarter_rollups seats_purchased UInt64
account_quarter_rollups seats_assigned UInt64
account_quarter_rollups seat_utilization Float64
account_quarter_rollups active_users UInt64
account_quarter_rollups active_assigned_users UInt64
account_quarter_rollups activation_rate Float64
account_quarter_rollups logins UInt64
account_quarter_rollups feature_events UInt64
account_quarter_rollups features_used UInt64
account_quarter_rollups last_activity_at DateTime('UTC')
account_quarter_rollups updated_at DateTime('UTC')`, "\n")

// columnsQuery lists a table's columns in their order (18.16's
// system.columns has no position column to sort by).
func columnsQuery(db, table string) string {
	return "SELECT table, name, type FROM system.columns WHERE database = '" + db + "' AND table = '" + table + "'"
}

var viewNames = []string{"account_quarter_features", "account_quarter_rollups"}
