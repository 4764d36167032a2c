package schema

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Reader tables (docs/design.md, "Reader tables where views cannot
// filter"): on servers before 20.1 a reader's filter does not reach into a
// view, so there account_quarter_rollups and account_quarter_features are
// tables holding a copy of the served rows, one partition per quarter,
// each replaced whole from a stage table by the one process that holds the
// copy lease.

// ErrLeaseLost: another process took the copy lease (dropped this one's
// stage tables); this one must not install until it acquires again.
var ErrLeaseLost = errors.New("copy lease lost")

// ReaderTables reports whether the reader objects of a database on a
// server of this major version, single or clustered, are tables kept by
// Copy rather than views.
func ReaderTables(major uint64, clustered bool) bool {
	return major < 20 && !clustered
}

const (
	// copyBump: rows new to the copy get updated_at ≥ S - copyBump.
	copyBump = 20
	// copyTakeover: a holder whose last heartbeat is this old is taken
	// over (fenced) by a process that needs the copy kept.
	copyTakeover = 30 * time.Second
)

// rollupValues are the value columns of a rollup row (the key is
// account_id, quarter_start; updated_at is set by the copy).
var rollupValues = []string{"quarter_end", "quarter", "seats_purchased", "seats_assigned", "seat_utilization",
	"active_users", "active_assigned_users", "activation_rate", "logins", "feature_events", "features_used", "last_activity_at"}

var featureNames = []string{"account_id", "quarter_start", "quarter_end", "quarter", "feature", "active_users", "events"}

// servedFeatures is the FROM clause of the served feature rows: each
// account and quarter's greatest-version set, unfolded into featureNames
// (as the view account_quarter_features reads them).
func servedFeatures(db string) string {
	return db + ".served_feature_sets FINAL ARRAY JOIN features AS feature, active_users, events"
}

// Copy keeps the reader tables of one database and fiscal calendar. It is
// used by one goroutine at a time (the serve loop, or migrate).
type Copy struct {
	conn driver.Conn
	db   string
	fy   int
	// the reader tables it fills (migrate fills new ones, then renames)
	rollups, features string

	holder  string // "" without the lease
	attempt int    // refreshes begun under this lease (query IDs)
	// building: migrate's Copy filling new tables, before the calendar
	// record names them
	building bool
}

// NewCopy returns a Copy for cfg's database on the server conn reaches.
func NewCopy(conn driver.Conn, cfg Config) *Copy {
	cfg = cfg.withDefaults()
	return &Copy{conn: conn, db: cfg.Database, fy: cfg.FiscalStartMonth, rollups: "account_quarter_rollups", features: "account_quarter_features"}
}

// Holds reports whether this Copy holds the lease (as far as it knows).
func (c *Copy) Holds() bool { return c.holder != "" }

func (c *Copy) stage(kind string) string {
	return c.db + ".copy_stage_" + c.holder + "_" + kind
}

// Acquire takes the copy lease: it creates this holder's stage tables,
// then drops every other holder's. A DROP waits for a REPLACE that reads
// the dropped table, so every install of an earlier holder finished before
// Acquire returns, and later ones fail.
func (c *Copy) Acquire(ctx context.Context) (err error) {
	defer func() {
		if err != nil && c.holder != "" {
			// Interrupted (a stop, ClickHouse gone): drop what this
			// attempt created, so that nobody, this process included,
			// waits for a holder that does not exist.
			bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			for _, k := range []string{"f", "r"} {
				_ = c.conn.Exec(bg, "DROP TABLE IF EXISTS "+c.stage(k))
			}
			c.holder = ""
		}
	}()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	c.holder = hex.EncodeToString(b[:])
	c.attempt = 0
	// A heartbeat before the stages exist: a process that sees them
	// sees a live holder.
	if err := BeatAs(ctx, c.conn, c.db, c.holder); err != nil {
		c.holder = ""
		return fmt.Errorf("copy lease: %w", err)
	}
	for _, k := range []struct{ kind, from string }{{"f", c.features}, {"r", c.rollups}} {
		if err := c.conn.Exec(ctx, "CREATE TABLE "+c.stage(k.kind)+" AS "+c.db+"."+k.from); err != nil {
			return fmt.Errorf("copy lease: create stage: %w", err)
		}
	}
	var others []string
	err = tablesRetry(ctx, func() error {
		others = others[:0]
		rows, err := c.conn.Query(ctx, "SELECT name FROM system.tables WHERE database = ? AND startsWith(name, 'copy_stage_')", c.db)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				return err
			}
			if !strings.HasPrefix(name, "copy_stage_"+c.holder+"_") {
				others = append(others, name)
			}
		}
		return rows.Err()
	})
	if err != nil {
		return fmt.Errorf("copy lease: list stages: %w", err)
	}
	for _, name := range others {
		if err := c.conn.Exec(ctx, "DROP TABLE IF EXISTS "+c.db+"."+name); err != nil {
			return fmt.Errorf("copy lease: drop stage %s: %w", name, err)
		}
	}
	return c.check(ctx)
}

// tablesRetry runs a read of system.tables, again after a short pause
// when it fails: 18.16 fails such a read while another query drops or
// renames a table of the database.
func tablesRetry(ctx context.Context, read func() error) error {
	for attempt := 1; ; attempt++ {
		err := read()
		if err == nil || attempt == 5 || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
		}
	}
}

// check fails with ErrLeaseLost unless both stage tables still exist.
func (c *Copy) check(ctx context.Context) error {
	var n uint64
	err := tablesRetry(ctx, func() error {
		return c.conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name IN (?, ?)", c.db,
			"copy_stage_"+c.holder+"_f", "copy_stage_"+c.holder+"_r").Scan(&n)
	})
	if err != nil {
		return fmt.Errorf("copy lease: %w", err)
	}
	if n != 2 {
		c.holder = ""
		return ErrLeaseLost
	}
	return nil
}

// Release drops this holder's stage tables (at a clean stop).
func (c *Copy) Release(ctx context.Context) error {
	if c.holder == "" {
		return nil
	}
	var errs []error
	for _, k := range []string{"f", "r"} {
		if err := c.conn.Exec(ctx, "DROP TABLE IF EXISTS "+c.stage(k)); err != nil {
			errs = append(errs, err)
		}
	}
	c.holder = ""
	return errors.Join(errs...)
}

// lost maps a failure of a statement on a stage table to ErrLeaseLost when
// the table is gone (another holder dropped it).
func (c *Copy) lost(ctx context.Context, what string, err error) error {
	if ctx.Err() == nil {
		if e := c.check(ctx); errors.Is(e, ErrLeaseLost) {
			return ErrLeaseLost
		}
	}
	return fmt.Errorf("copy %s: %w", what, err)
}

// Refresh installs a new snapshot of the served rows of quarter q (its
// first day, "YYYY-MM-DD") into both reader tables. Each reader partition
// is exactly one part (the stage is merged to one before the swap), so no
// background merge of a replaced partition's old parts can bring them
// back; the installed partition is checked for it after the swap.
func (c *Copy) Refresh(ctx context.Context, q string) (err error) {
	if c.holder == "" {
		return ErrLeaseLost
	}
	defer func() {
		if err != nil && !errors.Is(err, ErrLeaseLost) && !errors.Is(err, ErrCalendar) {
			// A statement of this refresh may still wait on the server
			// (a REPLACE behind a lock, a slow INSERT): new stage tables,
			// and the old ones dropped, so that it cannot land in the
			// middle of the next refresh (a DROP waits for a statement
			// using the table; one that comes later fails). Unless the
			// lease went to another process meanwhile: then it is lost.
			bg := context.WithoutCancel(ctx)
			if e := c.check(bg); errors.Is(e, ErrLeaseLost) {
				err = fmt.Errorf("%w (after: %v)", ErrLeaseLost, err)
			} else if e := c.Acquire(bg); e != nil {
				err = errors.Join(err, e)
			}
		}
	}()
	if !c.building {
		if err := c.checkCalendar(ctx); err != nil {
			return err
		}
	}
	c.attempt++
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"max_execution_time": recomputeTimeout}))
	exec := func(what, sql string, stage bool, n int) error {
		qctx := clickhouse.Context(ctx, clickhouse.WithQueryID(fmt.Sprintf("copy-%s-%d-%d", c.holder, c.attempt, n)),
			clickhouse.WithSettings(clickhouse.Settings{"max_execution_time": recomputeTimeout}))
		if err := c.conn.Exec(qctx, sql); err != nil {
			if stage {
				return c.lost(ctx, what, err)
			}
			return fmt.Errorf("copy %s: %w", what, err)
		}
		return nil
	}
	served, err := c.count(ctx, fmt.Sprintf("%s.served_rollups WHERE fy = %d AND quarter_start = '%s'", c.db, c.fy, q))
	if err != nil {
		return err
	}
	if served == 0 {
		// Rows of no served quarter (another calendar's, left by a
		// process configured for it): gone from the readers.
		for i, t := range []string{c.features, c.rollups} {
			if err := exec("drop stray quarter", fmt.Sprintf("ALTER TABLE %s.%s DROP PARTITION '%s'", c.db, t, q), false, i); err != nil {
				return err
			}
		}
		return nil
	}
	sec, err := serverSecond(ctx, c.conn)
	if err != nil {
		return err
	}
	checked := false
	for i, st := range c.statements(q, sec) {
		if strings.HasPrefix(st.what, "install") && !checked {
			// Stages full: merge each to one part, check, then swap.
			if err := c.mergeStages(ctx, q); err != nil {
				return err
			}
			if err := c.checkStages(ctx, q); err != nil {
				return err
			}
			checked = true
		}
		if err := exec(st.what, st.sql, true, 10+i); err != nil {
			return err
		}
	}
	for _, t := range []string{c.features, c.rollups} {
		parts, err := c.count(ctx, fmt.Sprintf("system.parts WHERE database = '%s' AND table = '%s' AND active AND partition = '%s'", c.db, t, q))
		if err != nil {
			return err
		}
		if parts > 1 || parts == 0 && t == c.rollups {
			return fmt.Errorf("copy: %s quarter %s has %d parts after its install, want 1 (installed again next round)", t, q, parts)
		}
	}
	if err := exec("record install", fmt.Sprintf("INSERT INTO %s.copy_installs (quarter_start, snapshot, holder) SELECT toDate('%s'), toDateTime(%d, 'UTC'), '%s'", c.db, q, sec, c.holder), false, 30); err != nil {
		return err
	}
	return nil
}

// mergeStages merges each stage partition of quarter q into one part.
// OPTIMIZE does nothing (without an error) while a background merge holds
// the parts, so it is tried again until one part is left.
func (c *Copy) mergeStages(ctx context.Context, q string) error {
	for _, k := range []string{"r", "f"} {
		name := "copy_stage_" + c.holder + "_" + k
		for attempt := 1; ; attempt++ {
			parts, err := c.count(ctx, fmt.Sprintf("system.parts WHERE database = '%s' AND table = '%s' AND active AND partition = '%s'", c.db, name, q))
			if err != nil {
				return err
			}
			if parts <= 1 {
				break
			}
			if attempt == 20 {
				return fmt.Errorf("copy: stage of quarter %s still has %d parts after %d merges", q, parts, attempt-1)
			}
			if err := c.conn.Exec(ctx, fmt.Sprintf("OPTIMIZE TABLE %s.%s PARTITION '%s' FINAL", c.db, name, q)); err != nil {
				return c.lost(ctx, "merge stage", err)
			}
			if attempt > 1 {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
	}
	return nil
}

// count returns SELECT count() FROM from.
func (c *Copy) count(ctx context.Context, from string) (uint64, error) {
	var n uint64
	if err := c.conn.QueryRow(ctx, "SELECT count() FROM "+from).Scan(&n); err != nil {
		return 0, fmt.Errorf("copy: count %s: %w", from, err)
	}
	return n, nil
}

// checkStages refuses a swap that would lose rows: each stage partition
// must be one part, not empty, and hold at least the keys its reader
// partition holds (served keys never disappear).
func (c *Copy) checkStages(ctx context.Context, q string) error {
	for _, k := range []struct{ stage, table, key string }{{"f", c.features, "account_id, feature"}, {"r", c.rollups, "account_id"}} {
		name := "copy_stage_" + c.holder + "_" + k.stage
		parts, err := c.count(ctx, fmt.Sprintf("system.parts WHERE database = '%s' AND table = '%s' AND active AND partition = '%s'", c.db, name, q))
		if err != nil {
			return err
		}
		have, err := c.count(ctx, fmt.Sprintf("%s.%s", c.db, name))
		if err != nil {
			if e := c.check(ctx); errors.Is(e, ErrLeaseLost) {
				return ErrLeaseLost
			}
			return err
		}
		// The reader partition's rows bound its keys, and counting them
		// reads one small column. The keys are counted only when the
		// stage holds fewer rows than the partition: a partition holding
		// keys twice (a replaced part loaded again by a restart before
		// its cleanup), or a stage that would lose keys. Counting them
		// every time (uniqExact over 200k feature rows) was most of the
		// stage check, itself a third of a live round's refresh.
		old, err := c.count(ctx, fmt.Sprintf("%s.%s WHERE quarter_start = '%s'", c.db, k.table, q))
		if err != nil {
			return err
		}
		unit := "rows"
		if have < old {
			unit = "keys"
			if err := c.conn.QueryRow(ctx, fmt.Sprintf("SELECT uniqExact(%s) FROM %s.%s WHERE quarter_start = '%s'", k.key, c.db, k.table, q)).Scan(&old); err != nil {
				return fmt.Errorf("copy: count keys of %s: %w", k.table, err)
			}
		}
		if have == 0 && k.stage == "r" || have < old || have > 0 && parts != 1 {
			return fmt.Errorf("copy: stage for %s quarter %s holds %d rows in %d parts, the table %d %s: not installed", k.table, q, have, parts, old, unit)
		}
	}
	return nil
}

// ErrCalendar: the reader tables are for another fiscal calendar than
// this process's (a migrate changed it; this process must restart with
// the new setting).
var ErrCalendar = errors.New("reader tables are for another fiscal calendar")

// checkCalendar fails with ErrCalendar unless the reader tables' record
// names this Copy's fiscal start month.
func (c *Copy) checkCalendar(ctx context.Context) error {
	var def string
	if err := c.conn.QueryRow(ctx, "SELECT argMax(definition, seq) FROM "+c.db+".schema_migrations WHERE name = '"+readerTablesRecord+"'").Scan(&def); err != nil {
		return fmt.Errorf("copy: read the reader tables' calendar: %w", err)
	}
	if def != readerDefinition(c.fy) {
		return fmt.Errorf("%w: the reader tables' record says %q, this process wants %q", ErrCalendar, def, readerDefinition(c.fy))
	}
	return nil
}

// Beat records that this holder is alive (ShouldTake of the others).
func (c *Copy) Beat(ctx context.Context) error {
	if c.holder == "" {
		return nil
	}
	return BeatAs(ctx, c.conn, c.db, c.holder)
}

type copyStatement struct {
	what string
	sql  string
}

// statements are the steps of one refresh of quarter q with snapshot
// second sec: empty the stage tables, snapshot the served rows into them
// (a rollup row whose values the reader table does not hold yet gets
// updated_at ≥ sec - copyBump; no row's updated_at goes back), merge each
// into one part, then replace the quarter's partitions.
//
// The snapshots filter in PREWHERE: 18.16 does not move a condition of a
// FINAL read there, so WHERE merges the versions of every quarter of the
// calendar before it filters. fy and quarter_start are columns of the
// sorting key, so a PREWHERE on them keeps or drops all versions of a key
// together and FINAL still picks each key's greatest one.
func (c *Copy) statements(q string, sec uint32) []copyStatement {
	f, r := c.stage("f"), c.stage("r")
	cols := strings.Join(featureNames, ", ")
	var same, right []string
	for _, v := range rollupValues {
		same = append(same, v+" = c_"+v)
		right = append(right, v+" AS c_"+v)
	}
	vals := strings.Join(rollupValues, ", ")
	part := "'" + q + "'"
	rollups := fmt.Sprintf(
		"INSERT INTO %s (account_id, quarter_start, %s, updated_at) "+
			"SELECT account_id, quarter_start, %s, "+
			"if(c_present = 1 AND %s, greatest(updated_at, c_updated_at), greatest(updated_at, toDateTime(%d, 'UTC'))) "+
			"FROM (SELECT account_id, quarter_start, %s, updated_at FROM %s.served_rollups FINAL PREWHERE fy = %d AND quarter_start = %s) "+
			"ANY LEFT JOIN (SELECT account_id, quarter_start, %s, updated_at AS c_updated_at, toUInt8(1) AS c_present FROM %s.%s WHERE quarter_start = %s) "+
			"USING (account_id, quarter_start)",
		r, vals, vals, strings.Join(same, " AND "), sec-copyBump,
		vals, c.db, c.fy, part, strings.Join(right, ", "), c.db, c.rollups, part)
	return []copyStatement{
		{"empty stage", "TRUNCATE TABLE " + f},
		{"empty stage", "TRUNCATE TABLE " + r},
		{"snapshot features", fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s PREWHERE fy = %d AND quarter_start = %s", f, cols, cols, servedFeatures(c.db), c.fy, part)},
		{"snapshot rollups", rollups},
		{"install features", fmt.Sprintf("ALTER TABLE %s.%s REPLACE PARTITION %s FROM %s", c.db, c.features, part, f)},
		{"install rollups", fmt.Sprintf("ALTER TABLE %s.%s REPLACE PARTITION %s FROM %s", c.db, c.rollups, part, r)},
	}
}

// copyQuarter is what Copy knows of one quarter of the served rows.
type copyQuarter struct {
	dirty    uint32 // greatest copy_dirty.at covering it
	snapshot uint32 // greatest installed snapshot second
	has      bool   // an install was recorded
}

// Due returns the quarters whose served rows may have changed since their
// last install (a copy_dirty row at or after it, or no install at all),
// or whose reader partitions hold more than one part, oldest first.
func (c *Copy) Due(ctx context.Context) ([]string, error) {
	quarters, err := c.quarters(ctx)
	if err != nil {
		return nil, err
	}
	var due []string
	for _, q := range sortedKeys(quarters) {
		if st := quarters[q]; !st.has || st.dirty >= st.snapshot {
			due = append(due, q)
		}
	}
	return due, nil
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// quarters reads every quarter of the served rows of this calendar with
// its dirty and install seconds.
func (c *Copy) quarters(ctx context.Context) (map[string]*copyQuarter, error) {
	out := map[string]*copyQuarter{}
	read := func(q string, fn func(string, uint32)) error {
		rows, err := c.conn.Query(ctx, q)
		if err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var d time.Time
			var sec uint32
			if err := rows.Scan(&d, &sec); err != nil {
				return fmt.Errorf("copy: %w", err)
			}
			fn(d.Format(time.DateOnly), sec)
		}
		return rows.Err()
	}
	if err := read(fmt.Sprintf("SELECT DISTINCT quarter_start, toUInt32(0) FROM %s.served_rollups WHERE fy = %d", c.db, c.fy), func(q string, _ uint32) {
		out[q] = &copyQuarter{}
	}); err != nil {
		return nil, err
	}
	var dirty []struct {
		from string
		at   uint32
	}
	if err := read("SELECT from_quarter, toUInt32(max(at)) FROM "+c.db+".copy_dirty GROUP BY from_quarter", func(q string, at uint32) {
		dirty = append(dirty, struct {
			from string
			at   uint32
		}{q, at})
	}); err != nil {
		return nil, err
	}
	if err := read("SELECT quarter_start, toUInt32(max(snapshot)) FROM "+c.db+".copy_installs GROUP BY quarter_start", func(q string, s uint32) {
		if st, ok := out[q]; ok {
			st.snapshot, st.has = s, true
		}
	}); err != nil {
		return nil, err
	}
	// A reader partition of more than one part: replaced parts a server
	// restart loaded again (a crash between a REPLACE and the DROP after
	// it), or anything else that wrote there.
	if err := read(fmt.Sprintf("SELECT toDate(partition), toUInt32(count()) FROM system.parts WHERE database = '%s' AND table IN ('%s', '%s') AND active GROUP BY table, partition HAVING count() > 1", c.db, c.rollups, c.features), func(q string, _ uint32) {
		if st, ok := out[q]; ok {
			st.has = false
		} else {
			out[q] = &copyQuarter{}
		}
	}); err != nil {
		return nil, err
	}
	for q, st := range out {
		for _, d := range dirty {
			if d.from <= q {
				st.dirty = max(st.dirty, d.at)
			}
		}
	}
	return out, nil
}

// Differing returns the quarters whose reader rows differ from the served
// rows (count or checksum of every column but updated_at): what a crash
// between a recompute and its copy_dirty row leaves.
func (c *Copy) Differing(ctx context.Context) ([]string, error) {
	sum := func(table, cols, from string) (map[string][2]uint64, error) {
		q := fmt.Sprintf("SELECT quarter_start, count(), sum(cityHash64(%s)) FROM %s GROUP BY quarter_start", cols, from)
		rows, err := c.conn.Query(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("copy: compare %s: %w", table, err)
		}
		defer rows.Close()
		out := map[string][2]uint64{}
		for rows.Next() {
			var d time.Time
			var n, h uint64
			if err := rows.Scan(&d, &n, &h); err != nil {
				return nil, fmt.Errorf("copy: compare %s: %w", table, err)
			}
			out[d.Format(time.DateOnly)] = [2]uint64{n, h}
		}
		return out, rows.Err()
	}
	diff := map[string]bool{}
	for _, t := range []struct{ name, cols, served, reader string }{
		{"rollups", "account_id, quarter_start, " + strings.Join(rollupValues, ", "), c.db + ".served_rollups FINAL", c.rollups},
		{"features", strings.Join(featureNames, ", "), servedFeatures(c.db), c.features},
	} {
		served, err := sum(t.name, t.cols, fmt.Sprintf("%s WHERE fy = %d", t.served, c.fy))
		if err != nil {
			return nil, err
		}
		copied, err := sum(t.name, t.cols, c.db+"."+t.reader)
		if err != nil {
			return nil, err
		}
		for q, v := range served {
			if copied[q] != v {
				diff[q] = true
			}
		}
		for q := range copied {
			if _, ok := served[q]; !ok {
				diff[q] = true
			}
		}
	}
	return sortedKeys(diff), nil
}

// MarkDirty records that served rows of quarters from q on (its first day)
// landed before now; every recompute writes it after its rows landed.
func MarkDirty(ctx context.Context, conn driver.Conn, db, q string) error {
	if err := conn.Exec(ctx, "INSERT INTO "+db+".copy_dirty (from_quarter) SELECT toDate('"+q+"')"); err != nil {
		return fmt.Errorf("copy: mark dirty: %w", err)
	}
	return nil
}

// Sync brings the reader tables up to date with the served rows: it takes
// the lease if it does not hold it (fencing any other holder), then
// refreshes every quarter that is due or differs. Tests, migrate and
// `run --until-caught-up` use it; the serve loop refreshes as it goes.
func (c *Copy) Sync(ctx context.Context) error {
	if !c.Holds() {
		if err := c.Acquire(ctx); err != nil {
			return err
		}
	}
	due, err := c.Due(ctx)
	if err != nil {
		return err
	}
	differ, err := c.Differing(ctx)
	if err != nil {
		return err
	}
	for _, q := range slices.Compact(slices.Sorted(slices.Values(append(due, differ...)))) {
		if err := c.Beat(ctx); err != nil {
			return err
		}
		if err := c.Refresh(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// SyncReaders is Copy.Sync on the reader tables of cfg's database when its
// server has them (ReaderTables) and does nothing otherwise; the lease is
// released after.
func SyncReaders(ctx context.Context, conn driver.Conn, cfg Config) error {
	sv, err := conn.ServerVersion()
	if err != nil {
		return fmt.Errorf("copy: server version: %w", err)
	}
	if !ReaderTables(sv.Version.Major, false) {
		return nil
	}
	c := NewCopy(conn, cfg)
	err = c.Sync(ctx)
	return errors.Join(err, c.Release(context.WithoutCancel(ctx)))
}

// ShouldTake reports whether a process without the lease should take it:
// the reader tables are of its calendar, and no holder's stage tables
// exist, or the holders whose stages exist have not beaten their heart
// for copyTakeover (gone or stalled; taking the lease fences them).
func (c *Copy) ShouldTake(ctx context.Context) (bool, error) {
	if err := c.checkCalendar(ctx); err != nil {
		return false, err
	}
	var holders []string
	if err := tablesRetry(ctx, func() error {
		holders = holders[:0]
		rows, err := c.conn.Query(ctx, "SELECT DISTINCT extract(name, '^copy_stage_([0-9a-f]+)_') FROM system.tables WHERE database = ? AND startsWith(name, 'copy_stage_')", c.db)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var h string
			if err := rows.Scan(&h); err != nil {
				return err
			}
			holders = append(holders, lit(h))
		}
		return rows.Err()
	}); err != nil {
		return false, fmt.Errorf("copy lease: %w", err)
	}
	if len(holders) == 0 {
		return true, nil
	}
	var age int64
	if err := c.conn.QueryRow(ctx, "SELECT toInt64(now()) - toInt64(max(beat)) FROM "+c.db+".copy_beats WHERE holder IN ("+strings.Join(holders, ", ")+")").Scan(&age); err != nil {
		return false, fmt.Errorf("copy lease: %w", err)
	}
	return time.Duration(age)*time.Second > copyTakeover, nil
}

// Holder is the name of this Copy's lease ("" without it), for BeatAs.
func (c *Copy) Holder() string { return c.holder }

// BeatAs records that holder is alive; the serve loop beats on a ticker of
// its own, so that a long round is not taken for a dead holder.
func BeatAs(ctx context.Context, conn driver.Conn, db, holder string) error {
	if err := conn.Exec(ctx, "INSERT INTO "+db+".copy_beats (holder) SELECT "+lit(holder)); err != nil {
		return fmt.Errorf("copy heartbeat: %w", err)
	}
	return nil
}
