package schema

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// readerTablesRecord names the schema_migrations row of the reader
// tables: checksum = readerMarker, definition = readerDefinition.
const readerTablesRecord = "reader_tables"

// readerDefinition is what the reader tables' record says they hold: the
// fiscal start month, and the served layout they are copied from. A
// process of layout 1 reads anything but its bare month as another
// calendar (ErrCalendar): it releases the lease and never takes it again,
// so it cannot keep copying from its own, no longer written, served tables
// (docs/design.md, "Feature sets").
func readerDefinition(fy int) string { return fmt.Sprintf("%d served_v2", fy) }

// readerDDL renders the bookkeeping tables of the copy and the two reader
// tables, and the marker that tells migrate whether the installed reader
// tables are these.
func readerDDL(cfg Config) (book []string, rollups, features, marker string, err error) {
	for _, f := range []string{"copy_dirty.sql", "copy_installs.sql", "copy_beats.sql"} {
		s, err := renderFile(cfg, f, "")
		if err != nil {
			return nil, "", "", "", err
		}
		book = append(book, s)
	}
	if rollups, err = renderFile(cfg, "reader_rollups_table.sql", ""); err != nil {
		return nil, "", "", "", err
	}
	if features, err = renderFile(cfg, "reader_features_table.sql", ""); err != nil {
		return nil, "", "", "", err
	}
	// The layout is part of the marker: the reader tables of layout 1 are
	// built again, from layout 2's served rows, under its definition.
	return book, rollups, features, checksum(rollups + "\n" + features + "\n" + readerDefinition(cfg.FiscalStartMonth))[:16], nil
}

// migrateReaderTables installs the reader tables (docs/design.md, "Reader
// tables where views cannot filter") unless these very ones are installed:
// it builds new tables under other names, fills them through a Copy lease
// (which fences any running holder), then renames them into place — so
// readers see the old objects until the new ones are complete — and drops
// what they replace: views, or reader tables of another fiscal calendar.
// A table of that name that is neither is kept aside, as for views.
func migrateReaderTables(ctx context.Context, conn driver.Conn, r *rendered, applied map[string]string, log *slog.Logger) error {
	db := r.cfg.Database
	_, rollupsDDL, featuresDDL, marker, err := readerDDL(r.cfg)
	if err != nil {
		return err
	}
	objects := []struct{ name, ddl string }{{"account_quarter_rollups", rollupsDDL}, {"account_quarter_features", featuresDDL}}
	engines := map[string]string{}
	for _, o := range objects {
		engine, _, err := viewDefinition(ctx, conn, db, o.name)
		if err != nil {
			return err
		}
		engines[o.name] = engine
	}
	if applied[readerTablesRecord] == marker && engines["account_quarter_rollups"] == "MergeTree" && engines["account_quarter_features"] == "MergeTree" {
		return nil // these reader tables are installed
	}
	_, ours := applied[readerTablesRecord]
	suffix := fmt.Sprintf("_building_%d", time.Now().UnixNano())
	c := NewCopy(conn, r.cfg)
	c.rollups, c.features = objects[0].name+suffix, objects[1].name+suffix
	c.building = true
	cleanup := func() {
		bg := context.WithoutCancel(ctx)
		_ = c.Release(bg)
		for _, o := range objects {
			_ = conn.Exec(bg, "DROP TABLE IF EXISTS "+db+"."+o.name+suffix)
		}
	}
	for _, o := range objects {
		q := strings.Replace(o.ddl, db+"."+o.name+"\n", db+"."+o.name+suffix+"\n", 1)
		if err := conn.Exec(ctx, q); err != nil {
			cleanup()
			return fmt.Errorf("migrate: reader table %s: %w", o.name, err)
		}
	}
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := c.Sync(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrLeaseLost) || attempt == 20 {
			cleanup()
			return fmt.Errorf("migrate: fill reader tables: %w", err)
		}
		// Another migrate (or a pipeline's serve loop) took the lease.
		// If a concurrent migrate installed these very tables, done.
		if now, err := readApplied(ctx, conn, db); err == nil && now[readerTablesRecord] == marker {
			cleanup()
			return nil
		}
		select {
		case <-ctx.Done():
			cleanup()
			return ctx.Err()
		case <-time.After(time.Duration(100+rand.IntN(400*min(attempt, 5))) * time.Millisecond):
		}
	}
	var drops []string
	for attempt := 1; ; attempt++ {
		// A concurrent migrate may have installed reader tables meanwhile:
		// done if they are these very ones; else theirs are ours to drop.
		now, err := readApplied(ctx, conn, db)
		if err != nil {
			cleanup()
			return err
		}
		if now[readerTablesRecord] == marker && attempt > 1 {
			cleanup()
			return nil
		}
		_, ours = now[readerTablesRecord]
		if err := c.Beat(ctx); err != nil {
			cleanup()
			return err
		}
		var renames []string
		drops = drops[:0]
		for _, o := range objects {
			engine, def, err := viewDefinition(ctx, conn, db, o.name)
			if err != nil {
				cleanup()
				return err
			}
			engines[o.name] = engine
			// Reader tables of this design (another calendar's, or a
			// concurrent migrate's whose record has not landed yet) carry
			// its partition key and setting.
			mine := ours || strings.Contains(def, "PARTITION BY quarter_start") && strings.Contains(def, "old_parts_lifetime = 1")
			switch {
			case engine == "":
			case engine == "View" || engine == "MergeTree" && mine:
				old := fmt.Sprintf("%s_old_%d", o.name, time.Now().UnixNano())
				renames = append(renames, db+"."+o.name+" TO "+db+"."+old)
				drops = append(drops, db+"."+old)
			default:
				aside := fmt.Sprintf("%s_replaced_%d", o.name, time.Now().Unix())
				renames = append(renames, db+"."+o.name+" TO "+db+"."+aside)
				log.Warn("moved a table out of a reader table's way", "database", db, "table", o.name, "now", aside, "engine", engine)
			}
			renames = append(renames, db+"."+o.name+suffix+" TO "+db+"."+o.name)
		}
		err = conn.Exec(ctx, "RENAME TABLE "+strings.Join(renames, ", "))
		if err == nil {
			break
		}
		// A concurrent migrate renamed first: done if it installed these
		// very tables, else try again over what it installed.
		if now, rerr := readApplied(ctx, conn, db); rerr == nil && now[readerTablesRecord] == marker {
			cleanup()
			return nil
		}
		if attempt == 5 {
			cleanup()
			return fmt.Errorf("migrate: install reader tables: %w", err)
		}
		time.Sleep(time.Duration(50+rand.IntN(200)) * time.Millisecond)
	}
	// The record names the calendar every holder checks before it
	// installs, so it is written while this migrate still holds the lease
	// (no process of the old calendar can install into the new tables).
	errs := []error{record(ctx, conn, db, readerTablesRecord, "reader", 0, marker, readerDefinition(r.cfg.FiscalStartMonth))}
	for _, d := range drops {
		if err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+d); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, c.Release(context.WithoutCancel(ctx)))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("migrate: reader tables: %w", err)
	}
	log.Info("installed reader tables", "database", db, "fiscal_start_month", r.cfg.FiscalStartMonth, "replaced", engines["account_quarter_rollups"], "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// ensureCopyBook creates the copy's bookkeeping tables (before anything
// recomputes: every recompute then writes copy_dirty).
func ensureCopyBook(ctx context.Context, conn driver.Conn, cfg Config) error {
	book, _, _, _, err := readerDDL(cfg)
	if err != nil {
		return err
	}
	for _, s := range book {
		if err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	return nil
}
