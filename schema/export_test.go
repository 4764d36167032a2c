package schema

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// MigrateTo applies only the first upTo migrations, and the views if
// withViews: a database as an older usagepipe left it.
func MigrateTo(ctx context.Context, conn driver.Conn, cfg Config, log *slog.Logger, upTo int, withViews bool) error {
	return migrate(ctx, SingleServer(conn), cfg, log, upTo, withViews)
}

// QuarterSQL returns the SQL quarter functions the views are rendered with.
func QuarterSQL(cfg Config) (qi, qstart, label func(string) string) {
	fm := quarterFuncs(cfg.withDefaults())
	return fm["qi"].(func(string) string), fm["qstart"].(func(string) string), fm["label"].(func(string) string)
}

// SupportsCreateOrReplaceView exposes the version gate.
var SupportsCreateOrReplaceView = supportsCreateOrReplaceView

// ViewStatements exposes how migrate (re)creates a view.
var ViewStatements = viewStatements

// RecomputeAllSQL is the recompute of every account from the earliest
// month a fact may carry, stamped with second sec.
func RecomputeAllSQL(cfg Config, sec uint32) ([]string, error) {
	sv, err := NewServed(nil, cfg)
	if err != nil {
		return nil, err
	}
	return sv.RecomputeSQL("1", sv.QuarterOf(MinMonth), sec)
}

// CopyRefreshSteps returns the statements of a refresh of quarter q with
// snapshot second sec by c: those before the installs, and the installs.
func CopyRefreshSteps(c *Copy, q string, sec uint32) (before, installs []string) {
	for _, st := range c.statements(q, sec) {
		if strings.HasPrefix(st.what, "install") {
			installs = append(installs, st.sql)
		} else {
			before = append(before, st.sql)
		}
	}
	return before, installs
}

// RangeChunk exposes how many of list's accounts (sorted) one range
// chunk of a recompute takes, 0 for account lists.
func RangeChunk(ctx context.Context, s *Served, list []string) (int, error) {
	return s.rangeChunk(ctx, s.topo.Global, list)
}

// SizeError exposes which recompute failures halve a chunk.
var SizeError = sizeError

// ReaderMarkerV1 is the marker the reader tables' record carried in served
// layout 1 (before readerDefinition was part of it).
func ReaderMarkerV1(cfg Config) string {
	_, rollups, features, _, err := readerDDL(cfg.withDefaults())
	if err != nil {
		panic(err)
	}
	return checksum(rollups + "\n" + features)[:16]
}

// ShardReader exposes a reader view's SELECT on one server (a subquery).
var ShardReader = shardReader

// SwapStatements exposes how migrate swaps a cluster reader's view in.
var SwapStatements = swapStatements

// ClusterViewSQL is the rendered cluster DDL of reader view name.
func ClusterViewSQL(cfg Config, name string) (sql, marker string, err error) {
	r, err := render(cfg)
	if err != nil {
		return "", "", err
	}
	for i, v := range views {
		if v.name == name {
			return installSQL(r.views[i].sql, 0), r.views[i].marker, nil
		}
	}
	return "", "", fmt.Errorf("no view %s", name)
}
