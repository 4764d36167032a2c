package schema

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Migrate creates or upgrades usagepipe's ClickHouse objects for cfg:
// the database, the bookkeeping table schema_migrations, every migration
// not yet recorded there, the served rows of cfg's fiscal calendar unless
// already built (from the facts, with progress on the log), and each view
// unless system.tables shows this very definition installed (its last alias carries a hash of its SQL; a
// new release or fiscal start month changes it), then drops the served
// tables of layout 1 if present (docs/design.md, "Feature sets"). It is idempotent: a
// second run changes nothing. Runs that overlap (several `usagepipe run`
// starting at once) are harmless: every statement is IF NOT EXISTS or
// installs the same view. A nil log logs nothing.
func Migrate(ctx context.Context, conn driver.Conn, cfg Config, log *slog.Logger) error {
	return MigrateOn(ctx, SingleServer(conn), cfg, log)
}

// MigrateOn is Migrate on topology t: on a cluster (cfg.Cluster, which
// must be t's) every object is created ON CLUSTER with Replicated engines,
// the served rows are built shard by shard, and the cluster's layout is
// recorded (docs/design.md, "ClickHouse clusters").
func MigrateOn(ctx context.Context, t *Topology, cfg Config, log *slog.Logger) error {
	return migrate(ctx, t, cfg, log, len(migrations), true)
}

// migrate applies the first upTo migrations, and the views if withViews.
// Tests use it to build a database at an older version.
func migrate(ctx context.Context, t *Topology, cfg Config, log *slog.Logger, upTo int, withViews bool) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Cluster != t.Cluster {
		return fmt.Errorf("%w: migrate: clickhouse cluster %q, but connected to %q", ErrConfig, cfg.Cluster, t.Cluster)
	}
	conn := t.Global
	r, err := render(cfg)
	if err != nil {
		return err
	}
	db := r.cfg.Database
	sv, err := conn.ServerVersion()
	if err != nil {
		return fmt.Errorf("migrate: server version: %w", err)
	}
	for _, s := range r.bootstrap {
		if err := conn.Exec(ctx, s.sql); err != nil {
			return fmt.Errorf("migrate: %s: %w", s.file, err)
		}
	}
	applied, err := readAppliedOn(ctx, t, db)
	if err != nil {
		return err
	}

	for i, m := range migrations[:upTo] {
		sum := checksum(joinSQL(r.migrations[i]))
		if a, ok := applied[m.name]; ok {
			if a != sum {
				log.Warn("applied migration differs from this binary's; not re-running it", "migration", m.name)
			}
			continue
		}
		for _, s := range r.migrations[i] {
			if has, err := hasAddedColumn(ctx, conn, s.sql); err != nil {
				return fmt.Errorf("migrate %s: %s: %w", m.name, s.file, err)
			} else if has {
				continue // a migrate that crashed after it added the column
			}
			if err := conn.Exec(ctx, s.sql); err != nil {
				if has, _ := hasAddedColumn(ctx, conn, s.sql); has {
					continue // a concurrent migrate added it first
				}
				return fmt.Errorf("migrate %s: %s: %w", m.name, s.file, err)
			}
		}
		if err := record(ctx, conn, db, m.name, "migration", m.version, sum, ""); err != nil {
			return err
		}
		log.Info("applied migration", "database", db, "migration", m.name)
	}
	if t.Clustered() {
		if err := checkLayout(ctx, t, db, applied, true); err != nil {
			return err
		}
	}
	if !withViews {
		return nil
	}

	// Served rows of this fiscal calendar before the views read them, so
	// that a reader never sees them empty (docs/design.md, "Served
	// rollups"): once per database and fiscal start month.
	backfill := backfillRecord(r.cfg.FiscalStartMonth)
	served, err := NewServedOn(t, r.cfg)
	if err != nil {
		return err
	}
	readerTables := ReaderTables(sv.Version.Major, t.Clustered())
	if readerTables {
		if err := ensureCopyBook(ctx, conn, r.cfg); err != nil {
			return err
		}
	}
	if _, ok := applied[backfill]; ok && readerTables {
		// As below, for reader tables: their record names the calendar.
		if _, _, _, marker, err := readerDDL(r.cfg); err != nil {
			return err
		} else if applied[readerTablesRecord] != marker {
			n, err := served.Sweep(ctx)
			if err != nil {
				return fmt.Errorf("migrate: sweep served rollups: %w", err)
			}
			log.Info("brought served rollups up to date before switching the reader tables", "database", db, "fiscal_year_start_month", r.cfg.FiscalStartMonth, "accounts", n)
		}
	} else if ok {
		// Built before, but maybe for another calendar than the views
		// show now (a fiscal start month changed and changed back):
		// nothing kept those rows current meanwhile, so sweep them before
		// the views switch to them.
		for i, v := range views {
			engine, def, err := viewDefinition(ctx, conn, db, v.name)
			if err != nil {
				return err
			}
			if engine == "View" && strings.Contains(def, r.views[i].marker) {
				continue
			}
			n, err := served.Sweep(ctx)
			if err != nil {
				return fmt.Errorf("migrate: sweep served rollups: %w", err)
			}
			log.Info("brought served rollups up to date before switching the views", "database", db, "fiscal_year_start_month", r.cfg.FiscalStartMonth, "accounts", n)
			break
		}
	} else {
		if err := served.backfill(ctx, log); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if err := record(ctx, conn, db, backfill, "backfill", 0, "", ""); err != nil {
			return err
		}
		log.Info("built served rollups", "database", db, "fiscal_year_start_month", r.cfg.FiscalStartMonth)
	}

	if readerTables {
		if err := migrateReaderTables(ctx, conn, r, applied, log); err != nil {
			return err
		}
		return retireServedV1(ctx, conn, r, log)
	}
	replace := supportsCreateOrReplaceView(sv.Version.Major, sv.Version.Minor)
	if t.Clustered() {
		// The views read every shard through these (docs/design.md,
		// "Readers on a cluster read the replicated served tables").
		for _, table := range servedTables {
			if err := conn.Exec(ctx, servedAllDDL(r.cfg, table)); err != nil {
				return fmt.Errorf("migrate: distributed table %s: %w", ServedAll(table), err)
			}
		}
	}
	for i, v := range views {
		s := r.views[i]
		name := v.name
		engine, def, err := viewDefinition(ctx, conn, db, name)
		if err != nil {
			return err
		}
		if engine == "View" && strings.Contains(def, s.marker) {
			continue // this very definition is installed
		}
		if engine == "Distributed" && t.Clustered() && strings.Contains(def, "'"+LocalView(name)+"'") {
			// The reader of the cluster layout before 2026-12-08, over
			// per-node views: it holds no rows. The view takes its name in
			// one statement (docs/design.md, "Readers on a cluster read the
			// replicated served tables", Upgrade).
			at, err := viewFloor(ctx, conn, r, name)
			if err != nil {
				return err
			}
			swapErr := swapInView(ctx, conn, r, name, installSQL(s.sql, at))
			got, ours, err := settledView(ctx, conn, db, name, s.marker)
			if err != nil {
				return err
			}
			if swapErr != nil && !ours {
				// Another migrate may have swapped first (then the name is
				// a view, created again below); anything else is an error.
				e, _, err := viewDefinition(ctx, conn, db, name)
				if err != nil {
					return err
				}
				if e != "View" && e != "" {
					return swapErr
				}
				engine = e
				log.Warn("replacing the reader table of the previous cluster layout failed; creating the view", "database", db, "view", name, "err", swapErr)
			}
			if ours {
				if err := record(ctx, conn, db, name, "view", 0, s.marker, got); err != nil {
					return err
				}
				log.Info("replaced the reader table of the previous cluster layout by a view", "database", db, "view", name, "fiscal_start_month", r.cfg.FiscalStartMonth)
				warnLateNodes(ctx, t, r, name, s.marker, got, log)
				continue
			}
			if swapErr == nil {
				engine = "View" // another migrate's view: (re)created below
			}
		}
		if engine != "" && engine != "View" {
			// A table of that name (made by hand or by some older design):
			// keep its data aside rather than drop it.
			aside := fmt.Sprintf("%s_replaced_%d", name, time.Now().Unix())
			if err := conn.Exec(ctx, "RENAME TABLE "+db+"."+name+" TO "+db+"."+aside+r.onCluster()); err != nil {
				return fmt.Errorf("migrate: move table %s aside: %w", name, err)
			}
			log.Warn("moved a table out of a view's way", "database", db, "table", name, "now", aside, "engine", engine)
		}
		for attempt := 1; ; attempt++ {
			for _, q := range viewStatements(db, name, s.sql, replace, r.onCluster()) {
				if strings.Contains(q, switchedAtPlaceholder) {
					// The floor of the view's updated_at, read right
					// before the statement that shows the view (after
					// 18.16's DROP): docs/design.md, "updated_at across a
					// calendar switch".
					at, err := viewFloor(ctx, conn, r, name)
					if err != nil {
						return err
					}
					q = installSQL(q, at)
				}
				if err := conn.Exec(ctx, q); err != nil {
					return fmt.Errorf("migrate: view %s: %w", name, err)
				}
			}
			got, ours, err := settledView(ctx, conn, db, name, s.marker)
			if err != nil {
				return err
			}
			if ours {
				def = got
				break
			}
			// Another migrate with a different definition (another release,
			// another fiscal start month) won the race.
			if attempt == 5 {
				return fmt.Errorf("migrate: view %s: replaced by a different definition while migrating; is a usagepipe with other settings or another version migrating %s too?", v.name, db)
			}
		}
		if err := record(ctx, conn, db, name, "view", 0, s.marker, def); err != nil {
			return err
		}
		log.Info("created view", "database", db, "view", name, "fiscal_start_month", r.cfg.FiscalStartMonth, "replaced", engine != "")
		warnLateNodes(ctx, t, r, name, s.marker, def, log)
	}
	if t.Clustered() {
		// The per-node views of the previous cluster layout, and what an
		// interrupted upgrade left (before the per-node views: a
		// leftover Distributed table reads them).
		for _, v := range views {
			if err := dropSwapLeftovers(ctx, conn, r, v.name, log); err != nil {
				return err
			}
			local := LocalView(v.name)
			engine, _, err := viewDefinition(ctx, conn, db, local)
			if err != nil {
				return err
			}
			if engine != "View" {
				continue
			}
			if err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+db+"."+local+r.onCluster()); err != nil {
				return fmt.Errorf("migrate: drop view %s: %w", local, err)
			}
			log.Info("dropped a per-node view of the previous cluster layout", "database", db, "view", local)
		}
	}
	return retireServedV1(ctx, conn, r, log)
}

// retireServedV1 drops rollups_served and features_served, the served
// tables of layout 1 (migration 0003 still creates them), once the readers
// read layout 2: nothing reads them, and a writer of layout 1 still running
// fails instead of filling tables no one reads. Exactness does not depend
// on it (layout 1's rows satisfy no mark of layout 2: docs/design.md,
// "Feature sets"), so a drop that fails (a cluster node down makes ON
// CLUSTER time out) is logged and tried again by the next migrate.
func retireServedV1(ctx context.Context, conn driver.Conn, r *rendered, log *slog.Logger) error {
	db := r.cfg.Database
	for _, table := range []string{"features_served", "rollups_served"} {
		var n uint64
		if err := tablesRetry(ctx, func() error {
			return conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?", db, table).Scan(&n)
		}); err != nil {
			return fmt.Errorf("migrate: look for %s: %w", table, err)
		}
		if n == 0 {
			continue
		}
		if err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+db+"."+table+r.onCluster()); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("migrate: drop %s: %w", table, err)
			}
			log.Warn("could not drop a served table of the previous layout; nothing reads it, the next migrate tries again", "database", db, "table", table, "err", err)
			continue
		}
		log.Info("dropped a served table of the previous layout", "database", db, "table", table)
	}
	return nil
}

// floorRE finds the floor of an installed view's updated_at.
var floorRE = regexp.MustCompile(`if\(updated_at < toDateTime\((\d+), 'UTC'\)`)

// viewFloor is the floor (L) to install reader view name with: the
// installed view's own when it shows the same fiscal calendar (a new
// release of the view: the rows readers see do not change, so neither
// does their updated_at; 0 for a view from before the floor), else the
// server's clock now (a calendar switch).
func viewFloor(ctx context.Context, conn driver.Conn, r *rendered, name string) (uint32, error) {
	db := r.cfg.Database
	for _, n := range []string{name, LocalView(name)} { // _local: the cluster layout before 2026-12-08
		engine, def, err := viewDefinition(ctx, conn, db, n)
		if err != nil {
			return 0, err
		}
		if engine != "View" {
			continue
		}
		if !regexp.MustCompile(`WHERE fy = ` + fmt.Sprint(r.cfg.FiscalStartMonth) + `\b`).MatchString(def) {
			break
		}
		if m := floorRE.FindStringSubmatch(def); m != nil {
			v, err := strconv.ParseUint(m[1], 10, 32)
			if err != nil {
				return 0, fmt.Errorf("migrate: view %s: floor %q: %w", n, m[1], err)
			}
			return uint32(v), nil
		}
		return 0, nil
	}
	at, err := serverSecond(ctx, conn)
	if err != nil {
		return 0, fmt.Errorf("migrate: view %s: %w", name, err)
	}
	return at, nil
}

// onCluster is the ON CLUSTER clause of r's DDL ("" on one server).
func (r *rendered) onCluster() string {
	if r.cfg.Cluster == "" {
		return ""
	}
	return " ON CLUSTER " + lit(r.cfg.Cluster)
}

// checkLayout compares t's shard layout with the one recorded in
// schema_migrations; record: record it when none is (migrate).
func checkLayout(ctx context.Context, t *Topology, db string, applied map[string]string, rec bool) error {
	got, ok := applied["cluster_layout"]
	switch {
	case ok && got != t.Layout():
		return fmt.Errorf("%w: clickhouse cluster %s has shards %s, but database %s was created on shards %s: accounts would move between shards (see docs/operations.md, \"Clusters\")", ErrConfig, t.Cluster, t.Layout(), db, got)
	case !ok && rec:
		return record(ctx, t.Global, db, "cluster_layout", "cluster", 0, t.Layout(), t.Cluster)
	case !ok:
		return fmt.Errorf("%w: database %s has no cluster layout recorded: run usagepipe migrate with --clickhouse-cluster %s first", ErrConfig, db, t.Cluster)
	}
	return nil
}

// CheckLayout fails unless t's shard layout is the one migrate recorded
// for cfg's database (run and verify check before writing or reading).
func CheckLayout(ctx context.Context, t *Topology, cfg Config) error {
	if !t.Clustered() {
		return nil
	}
	cfg = cfg.withDefaults()
	applied, err := readAppliedOn(ctx, t, cfg.Database)
	if err != nil {
		return err
	}
	return checkLayout(ctx, t, cfg.Database, applied, false)
}

// viewStatements are the statements that (re)create view name from its
// rendered CREATE VIEW statement: CREATE OR REPLACE VIEW where the server
// has it (atomic for readers); else DROP + CREATE VIEW IF NOT EXISTS (18.16),
// where IF NOT EXISTS makes an overlapping migrate's create harmless.
func viewStatements(db, name, create string, replace bool, onCluster string) []string {
	if replace {
		return []string{strings.Replace(create, "CREATE VIEW ", "CREATE OR REPLACE VIEW ", 1)}
	}
	return []string{"DROP TABLE IF EXISTS " + db + "." + name + onCluster, strings.Replace(create, "CREATE VIEW ", "CREATE VIEW IF NOT EXISTS ", 1)}
}

// supportsCreateOrReplaceView: CREATE OR REPLACE VIEW came with
// ClickHouse 19.4 (PR 4654); 19.6 leaves a margin.
func supportsCreateOrReplaceView(major, minor uint64) bool {
	return major > 19 || major == 19 && minor >= 6
}

// readAppliedOn is readApplied on a node of t that has caught up on
// schema_migrations (on a cluster it lives on every node).
func readAppliedOn(ctx context.Context, t *Topology, db string) (map[string]string, error) {
	var out map[string]string
	err := t.All.Use(ctx, func(r *Replica) error {
		if err := t.CaughtUp(ctx, r, db, "schema_migrations"); err != nil {
			return err
		}
		var err error
		out, err = readApplied(ctx, r.Conn, db)
		return err
	})
	return out, err
}

// readApplied returns the checksum of every migration and view recorded
// in schema_migrations, by name.
func readApplied(ctx context.Context, conn driver.Conn, db string) (map[string]string, error) {
	rows, err := conn.Query(ctx, "SELECT name, argMax(checksum, seq) FROM "+db+".schema_migrations GROUP BY name")
	if err != nil {
		return nil, fmt.Errorf("migrate: read schema_migrations: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, sum string
		if err := rows.Scan(&name, &sum); err != nil {
			return nil, fmt.Errorf("migrate: read schema_migrations: %w", err)
		}
		out[name] = sum
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("migrate: read schema_migrations: %w", err)
	}
	return out, nil
}

// viewDefinition returns the engine ("" if there is no such object) and
// the server's CREATE query of db.name. On 18.16 reading system.tables
// fails while another migrate drops the view, so it tries a few times.
// settledView reads the view after this migrate installed it. On 18.16 a
// concurrent migrate of the same definition drops and re-creates the view,
// so an absent view is another run between its DROP and its CREATE: wait
// (with jitter, so that runs stop stepping on each other) for it to
// settle rather than dropping it again. ours reports whether the view
// installed carries marker.
func settledView(ctx context.Context, conn driver.Conn, db, name, marker string) (def string, ours bool, err error) {
	for wait := 1; ; wait++ {
		engine, def, err := viewDefinition(ctx, conn, db, name)
		if err != nil {
			return "", false, err
		}
		if engine == "View" && strings.Contains(def, marker) {
			return def, true, nil
		}
		if engine != "" || wait == 10 {
			return def, false, nil
		}
		select {
		case <-ctx.Done():
			return "", false, ctx.Err()
		case <-time.After(time.Duration(10+rand.IntN(40)) * time.Millisecond):
		}
	}
}

func viewDefinition(ctx context.Context, conn driver.Conn, db, name string) (engine, def string, err error) {
	for attempt := 1; ; attempt++ {
		engine, def, err = readViewDefinition(ctx, conn, db, name)
		if err == nil || attempt == 5 {
			return engine, def, err
		}
		select {
		case <-ctx.Done():
			return "", "", err
		case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
		}
	}
}

func readViewDefinition(ctx context.Context, conn driver.Conn, db, name string) (engine, def string, err error) {
	rows, err := conn.Query(ctx, "SELECT engine, create_table_query FROM system.tables WHERE database = ? AND name = ?", db, name)
	if err != nil {
		return "", "", fmt.Errorf("migrate: read system.tables: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := rows.Scan(&engine, &def); err != nil {
			return "", "", fmt.Errorf("migrate: read system.tables: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return "", "", fmt.Errorf("migrate: read system.tables: %w", err)
	}
	return engine, def, nil
}

// record appends one row to schema_migrations. It uses a batch: on 18.16
// Exec("INSERT … VALUES") hangs.
func record(ctx context.Context, conn driver.Conn, db, name, kind string, version uint32, sum, def string) error {
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".schema_migrations (name, kind, version, checksum, definition, applied_at, seq)")
	if err != nil {
		return fmt.Errorf("migrate: record %s: %w", name, err)
	}
	defer b.Close()
	now := time.Now()
	if err := b.Append(name, kind, version, sum, def, now, uint64(now.UnixNano())); err != nil {
		return fmt.Errorf("migrate: record %s: %w", name, err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("migrate: record %s: %w", name, err)
	}
	return nil
}

func joinSQL(ss []statement) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = s.sql
	}
	return strings.Join(parts, ";\n")
}

var addColumnRE = regexp.MustCompile(`(?m)^ALTER TABLE (\w+)\.(\w+) ADD COLUMN (\w+) `)

// hasAddedColumn reports whether sql is an ALTER TABLE … ADD COLUMN whose
// column exists already: 18.16 has no ADD COLUMN IF NOT EXISTS, so migrate
// skips such a statement itself.
func hasAddedColumn(ctx context.Context, conn driver.Conn, sql string) (bool, error) {
	m := addColumnRE.FindStringSubmatch(sql)
	if m == nil {
		return false, nil
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?", m[1], m[2], m[3]).Scan(&n); err != nil {
		return false, fmt.Errorf("read system.columns: %w", err)
	}
	return n > 0, nil
}
