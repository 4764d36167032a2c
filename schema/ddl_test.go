package schema_test

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chtest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) { chtest.Main(m) }

func TestDDLGolden(t *testing.T) {
	f := func(cfg schema.Config, golden string) {
		t.Helper()
		ss, err := schema.DDL(cfg)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(ss, ";\n\n") + ";\n"
		path := filepath.Join("testdata", golden)
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./schema -run TestDDLGolden -update)", err)
		}
		if got != string(want) {
			t.Errorf("DDL(%+v) differs from %s (run with -update and review the diff):\n%s", cfg, path, diff(strings.Split(got, "\n"), strings.Split(string(want), "\n")))
		}
	}
	f(schema.Config{}, "ddl_usage_fs1.golden.sql")
	f(schema.Config{Database: "analytics", FiscalStartMonth: 4}, "ddl_analytics_fs4.golden.sql")
	f(schema.Config{Cluster: "usagepipe_test"}, "ddl_usage_fs1_cluster.golden.sql")
}

func TestDDLOrderByIsJustified(t *testing.T) {
	ss, err := schema.DDL(schema.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if !strings.Contains(s, "\nORDER BY") {
			continue
		}
		var comment strings.Builder
		for line := range strings.SplitSeq(s, "\n") {
			if c, ok := strings.CutPrefix(line, "-- "); ok {
				comment.WriteString(c + " ")
			}
		}
		if !strings.Contains(comment.String(), "ORDER BY (") {
			t.Errorf("statement has an ORDER BY but no comment justifying it:\n%s", s)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	f := func(cfg schema.Config, ok bool) {
		t.Helper()
		err := cfg.Validate()
		if (err == nil) != ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", cfg, err, ok)
		}
		if _, err := schema.DDL(cfg); (err == nil) != ok {
			t.Errorf("DDL(%+v) = %v, want ok=%v", cfg, err, ok)
		}
	}
	f(schema.Config{}, true)
	f(schema.Config{Database: "usage_2", FiscalStartMonth: 12}, true)
	f(schema.Config{Database: "usage-2"}, false)
	f(schema.Config{Database: "1usage"}, false)
	f(schema.Config{Database: "u`; DROP DATABASE x"}, false)
	f(schema.Config{FiscalStartMonth: 13}, false)
	f(schema.Config{FiscalStartMonth: -1}, false)
}

func TestCreateOrReplaceViewGate(t *testing.T) {
	f := func(major, minor uint64, want bool) {
		t.Helper()
		if got := schema.SupportsCreateOrReplaceView(major, minor); got != want {
			t.Errorf("%d.%d: got %v, want %v", major, minor, got, want)
		}
	}
	f(18, 16, false)
	f(19, 3, false)
	f(19, 6, true)
	f(24, 8, true)
	f(26, 9, true)
}

// TestQuarterSQLMatchesGo checks the SQL quarter arithmetic the views are
// rendered with against aggregate/quarter, for every fiscal start month and
// every month a fact may carry.
func TestQuarterSQLMatchesGo(t *testing.T) {
	conn := chtest.Open(t, "")
	ctx := context.Background()
	n := schema.MaxMonth - schema.MinMonth + 1
	for fs := 1; fs <= 12; fs++ {
		qi, qstart, label := schema.QuarterSQL(schema.Config{FiscalStartMonth: fs})
		q := "SELECT toInt32(number), " + qi("month") + " AS qi, " + qstart("qi") + " AS qs, " + label("qi") +
			" FROM (SELECT number, addMonths(toDate('2000-01-01'), toInt32(number)) AS month FROM system.numbers LIMIT " + strconv.Itoa(int(n)) + ")"
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Fatalf("fs=%d: %v\n%s", fs, err, q)
		}
		fy := quarter.Fiscal{StartMonth: fs}
		seen := 0
		for rows.Next() {
			var i, gotQI int32
			var gotStart time.Time
			var gotLabel string
			if err := rows.Scan(&i, &gotQI, &gotStart, &gotLabel); err != nil {
				t.Fatal(err)
			}
			mi := schema.MinMonth + i
			wantQI := fy.QuarterIndex(mi)
			y, m, d := gotStart.Date()
			gotStart = time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
			if gotQI != wantQI || !gotStart.Equal(quarter.MonthStart(wantQI)) || gotLabel != fy.Label(wantQI) {
				t.Errorf("fs=%d month %s: SQL qi=%d start=%s label=%s; Go qi=%d start=%s label=%s", fs, quarter.MonthStart(mi).Format("2006-01"),
					gotQI, gotStart.Format(time.DateOnly), gotLabel, wantQI, quarter.MonthStart(wantQI).Format(time.DateOnly), fy.Label(wantQI))
			}
			seen++
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		if seen != int(n) {
			t.Fatalf("fs=%d: %d rows, want %d", fs, seen, n)
		}
	}
}
