package schema

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"strings"
	"text/template"
)

//go:embed sql/*.sql
var sqlFiles embed.FS

// bootstrap statements run on every migrate; each is IF NOT EXISTS.
// The last, replica_barrier, only on a cluster (schema.Topology.CaughtUp).
var bootstrap = []string{"000_database.sql", "001_schema_migrations.sql", "002_replica_barrier.sql"}

// A migration is a versioned, append-only step. Its statements must be
// idempotent (IF NOT EXISTS, ADD COLUMN IF NOT EXISTS, …): a migrate that
// crashed half way runs them again. Never edit a released migration; add one.
type migration struct {
	version uint32
	name    string
	files   []string
}

var migrations = []migration{
	{1, "0001_fact_tables", []string{
		"fact_account_months.sql",
		"fact_user_activity.sql",
		"fact_feature_users.sql",
		"fact_event_counts.sql",
		"fact_seat_events.sql",
		"fact_seat_purchases.sql",
	}},
	{2, "0002_progress", []string{
		"ingest_progress.sql",
		"topic_incarnations.sql",
	}},
	{3, "0003_served_rollups", []string{
		"rollups_served.sql",
		"features_served.sql",
		"rollup_marks.sql",
	}},
	// Served rows, layout 2: feature rows as one set per account and
	// quarter, under new table names that fence writers of layout 1
	// (docs/design.md, "Feature sets"); migrate builds them (record
	// served_v2_fy<F>) and drops rollups_served and features_served after
	// the readers switched.
	{4, "0004_served_v2", []string{
		"served_rollups.sql",
		"served_feature_sets.sql",
	}},
	// The duplicate filter's archive of event IDs (docs/design.md,
	// "Durable event IDs").
	{5, "0005_dedup_ids", []string{
		"dedup_ids.sql",
		"ingest_progress_ids_from.sql",
	}},
}

// views are repeatable: migrate (re)creates one whenever its rendered
// definition differs from the one it recorded, e.g. when the fiscal start
// month changed. Each reads one served table (FINAL), never the facts.
var views = []struct{ name, file string }{
	{"account_quarter_rollups", "account_quarter_rollups.sql"},
	{"account_quarter_features", "account_quarter_features.sql"},
}

// statement is one rendered SQL statement.
type statement struct {
	file   string
	sql    string
	marker string // views: the hash in the view's last alias
}

// rendered is everything migrate runs for one Config.
type rendered struct {
	cfg        Config
	bootstrap  []statement
	migrations [][]statement // parallel to migrations
	views      []statement   // parallel to views
}

// DDL returns every statement Migrate may run for cfg, rendered, in order:
// the database and bookkeeping table, the migrations' statements, on a
// cluster the Distributed tables over the served tables, then the views.
// Migrate runs the views as CREATE OR REPLACE VIEW where the server
// supports it, and otherwise as DROP TABLE IF EXISTS + CREATE VIEW IF NOT
// EXISTS.
func DDL(cfg Config) ([]string, error) {
	r, err := render(cfg)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range r.bootstrap {
		out = append(out, s.sql)
	}
	for _, m := range r.migrations {
		for _, s := range m {
			out = append(out, s.sql)
		}
	}
	if r.cfg.Cluster != "" {
		for _, t := range servedTables {
			out = append(out, servedAllDDL(r.cfg, t))
		}
	}
	for _, s := range r.views {
		out = append(out, installSQL(s.sql, 0))
	}
	return out, nil
}

func render(cfg Config) (*rendered, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	r := &rendered{cfg: cfg}
	one := func(file string) (statement, error) {
		s, err := renderFile(cfg, file, markerPlaceholder)
		if err == nil && cfg.Cluster != "" {
			s = onCluster(cfg, s)
		}
		if err != nil || !strings.Contains(s, markerPlaceholder) {
			return statement{file: file, sql: s}, err
		}
		// A view: its last alias carries a hash of its own text, so that
		// migrate can tell from system.tables which version is installed.
		marker := "v" + checksum(s)[:16]
		return statement{file: file, sql: strings.ReplaceAll(s, markerPlaceholder, marker), marker: marker}, nil
	}
	for _, f := range bootstrap {
		if f == "002_replica_barrier.sql" && cfg.Cluster == "" {
			continue
		}
		s, err := one(f)
		if err != nil {
			return nil, err
		}
		r.bootstrap = append(r.bootstrap, s)
	}
	for _, m := range migrations {
		var ss []statement
		for _, f := range m.files {
			s, err := one(f)
			if err != nil {
				return nil, err
			}
			ss = append(ss, s)
		}
		r.migrations = append(r.migrations, ss)
	}
	for _, v := range views {
		s, err := one(v.file)
		if err != nil {
			return nil, err
		}
		if strings.Count(s.sql, "CREATE VIEW ") != 1 || s.marker == "" {
			return nil, fmt.Errorf("schema: %s: want exactly one CREATE VIEW, and a {{.Marker}}", v.file)
		}
		r.views = append(r.views, s)
	}
	return r, nil
}

// markerPlaceholder stands for a view's marker while its hash is computed.
const markerPlaceholder = "MARKER_PLACEHOLDER"

// switchedAtPlaceholder stands for the second a view is installed at (the
// floor of its updated_at) in a rendered view: the marker does not depend
// on it, and migrate puts the server's clock there when it installs the
// view (installSQL); DDL shows 0.
const switchedAtPlaceholder = "SWITCHED_AT"

// installSQL is view statement sql with its install second sec.
func installSQL(sql string, sec uint32) string {
	return strings.ReplaceAll(sql, switchedAtPlaceholder, fmt.Sprint(sec))
}

// tmplData is what a SQL template may use. Accounts, FromQ and FromDate
// only appear in the compute_*.sql templates (served.go).
type tmplData struct {
	DB               string
	FiscalStartMonth int
	Marker           string
	SwitchedAt       string // views: see switchedAtPlaceholder
	Accounts         string // a boolean SQL expression on account_id
	FromQ            int32  // the first quarter index computed
	FromDate         string // a Date SQL expression: that quarter's first day
	// LastQ, when set, is the global last quarter index as a literal
	// (cluster: no shard holds every account's months); else lastq reads
	// fact_account_months.
	LastQ string
}

func renderFile(cfg Config, file, marker string) (string, error) {
	return renderData(cfg, file, tmplData{DB: cfg.Database, FiscalStartMonth: cfg.FiscalStartMonth, Marker: marker, SwitchedAt: switchedAtPlaceholder})
}

func renderData(cfg Config, file string, data tmplData) (string, error) {
	src, err := sqlFiles.ReadFile("sql/" + file)
	if err != nil {
		return "", fmt.Errorf("schema: %w", err)
	}
	funcs := quarterFuncs(cfg)
	if data.LastQ != "" {
		funcs["lastq"] = func() string { return data.LastQ }
	}
	t, err := template.New(file).Option("missingkey=error").Funcs(funcs).Parse(string(src))
	if err != nil {
		return "", fmt.Errorf("schema: parse %s: %w", file, err)
	}
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return "", fmt.Errorf("schema: render %s: %w", file, err)
	}
	return strings.TrimSpace(b.String()), nil
}

// quarterFuncs are the template functions of the quarter arithmetic of
// aggregate/quarter, in SQL, with the fiscal start month fs baked in. A
// quarter is identified by qi, the month index (year*12 + month-1) of its
// first month.
//
//	qi "m"     qi of the quarter containing Date expression m (Int32)
//	qstart "q" quarter_start (Date) of quarter index q
//	label "q"  the quarter label of quarter index q (contract section 3)
//	lastq      qi of the quarter holding the latest month of any account
func quarterFuncs(cfg Config) template.FuncMap {
	f := cfg.FiscalStartMonth - 1 // months the fiscal year is shifted by
	minus := func(x string, k int) string {
		if k == 0 {
			return x
		}
		return fmt.Sprintf("(%s - %d)", x, k)
	}
	qi := func(m string) string {
		mi := fmt.Sprintf("(toInt32(toYear(%[1]s)) * 12 + toInt32(toMonth(%[1]s)) - 1)", m)
		return fmt.Sprintf("toInt32(%s - %s %% 3)", mi, minus(mi, f))
	}
	prefix := "'FY', "
	if f == 0 {
		prefix = ""
	}
	return template.FuncMap{
		"qi": qi,
		"qstart": func(q string) string {
			return fmt.Sprintf("addMonths(toDate('2000-01-01'), %s - 24000)", q)
		},
		"label": func(q string) string {
			pos := fmt.Sprintf("%s %% 12", minus(q, f)) // months since the fiscal year's start
			return fmt.Sprintf("concat(%stoString(intDiv(%s - %s + 11, 12)), '-Q', toString(intDiv(%s, 3) + 1))", prefix, q, pos, pos)
		},
		"lastq": func() string {
			return fmt.Sprintf("(SELECT %s FROM %s.fact_account_months)", qi("max(month)"), cfg.Database)
		},
	}
}

func checksum(sql string) string {
	h := sha256.Sum256([]byte(sql))
	return hex.EncodeToString(h[:])
}
