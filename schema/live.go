package schema

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Live rows (docs/design.md, "Live quarter"): rows of the live quarter that
// the serve loop computes from its cached merge of an account's facts
// after each flush, for freshness. They never make a mark satisfied: the
// sweep recomputes every key whose greatest row is live, so exactness
// rests on recomputes alone.
//
// A row's kind is in the low 32 bits of its version (S·2³² + r): live
// rows set bit 31, carry their writer (a process's random 11-bit ID) in
// bits 20–30 and liveTag in bits 0–19; recomputes clear bit 31. So at
// equal S a live row wins: a recompute never hides a live row of its own
// second, and one of a later second holds every fact the live row did
// (the live row's facts were acknowledged before its S was read). Rows of
// releases before live rows have a random r, so about one in 2²¹ of them
// reads as live: the sweep then recomputes that key once.
const (
	liveBit     = 1 << 31
	liveTag     = 0xA11E5
	liveTagMask = 1<<20 - 1
	writerMask  = 1<<11 - 1
)

// recomputeVersion is the version of a recompute's rows of second sec.
func recomputeVersion(sec uint32) uint64 {
	return uint64(sec)<<32 | uint64(rand.Uint32()&(liveBit-1))
}

// liveVersion is the version of live rows of second sec by writer w.
func liveVersion(sec uint32, w uint16) uint64 {
	return uint64(sec)<<32 | liveBit | uint64(w&writerMask)<<20 | liveTag
}

// IsLive reports whether a served row of version v is a live row.
func IsLive(v uint64) bool { return v&liveBit != 0 && v&liveTagMask == liveTag }

// liveWriter is the writer of a live row of version v.
func liveWriter(v uint64) uint16 { return uint16(v>>20) & writerMask }

// NewLiveWriter draws a process's live writer ID.
func NewLiveWriter() uint16 { return uint16(rand.Uint32N(writerMask + 1)) }

// LiveRow is one account's live rows: its rollup of the live quarter and
// that quarter's feature set (features in name order, as
// served_feature_sets holds it).
type LiveRow struct {
	Rollup        Rollup
	Features      []string
	FeatureUsers  []uint64
	FeatureEvents []uint64
}

// LiveLoad is what LoadLive reads for a live cache: facts already merged
// by their tables' rules, and per count row the sum of its key's buckets
// below the row's (the row is the key's greatest bucket).
type LiveLoad struct {
	Facts     Facts
	CountSums []uint64 // parallel to Facts.EventCounts
}

// LoadLive reads, for accounts, the facts a live cache of the quarter
// starting at month index q holds (package aggregate/live): the
// quarter's activity, feature users and counts, and the latest seat
// event per user and latest purchase of the whole history up to the
// quarter's end. Every fact acknowledged before the call is in it. On a
// cluster each shard's accounts are read on a replica that has caught up.
func (s *Served) LoadLive(ctx context.Context, accounts []string, q int32) (*LiveLoad, error) {
	ld := &LiveLoad{}
	set := make(map[string]int32, len(accounts))
	for _, a := range accounts {
		set[a] = q
	}
	for i, part := range s.byShard(set) {
		if len(part) == 0 {
			continue
		}
		list := make([]string, 0, len(part))
		for a := range part {
			list = append(list, a)
		}
		err := s.topo.Shards[i].Use(ctx, func(r *Replica) error {
			if err := s.topo.CaughtUp(ctx, r, s.cfg.Database, computeTables...); err != nil {
				return err
			}
			for len(list) > 0 {
				n, expr := s.chunk(list)
				if err := s.loadLive(ctx, r.Conn, expr, q, ld); err != nil {
					return err
				}
				list = list[n:]
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("load live accounts: %w", err)
		}
	}
	return ld, nil
}

// monthSQL is a Date column as a month index.
func monthSQL(col string) string {
	return "toInt32(toYear(" + col + ") * 12 + toMonth(" + col + ") - 1)"
}

// loadLive appends to ld the facts of the accounts expr selects.
func (s *Served) loadLive(ctx context.Context, conn driver.Conn, expr string, q int32, ld *LiveLoad) error {
	f := &ld.Facts
	db := s.cfg.Database
	from, end := quarterDate(q), quarterDate(q+3)
	in := fmt.Sprintf("%s AND month >= toDate('%s') AND month < toDate('%s')", expr, from, end)
	upTo := fmt.Sprintf("%s AND month < toDate('%s')", expr, end)
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"max_query_size": maxQuerySize}))
	reads := []struct {
		table, sql string
		row        func(rows driver.Rows) error
	}{
		{"fact_user_activity",
			"SELECT account_id, user_id, " + monthSQL("month") + ", toInt64(max(last_activity_ms)) FROM " + db + ".fact_user_activity WHERE " + in + " GROUP BY account_id, user_id, month",
			func(rows driver.Rows) error {
				var r UserActivity
				err := rows.Scan(&r.Account, &r.User, &r.Month, &r.LastMs)
				f.UserActivity = append(f.UserActivity, r)
				return err
			}},
		{"fact_feature_users",
			"SELECT DISTINCT account_id, feature, user_id, " + monthSQL("month") + " FROM " + db + ".fact_feature_users WHERE " + in,
			func(rows driver.Rows) error {
				var r FeatureUser
				err := rows.Scan(&r.Account, &r.Feature, &r.User, &r.Month)
				f.FeatureUsers = append(f.FeatureUsers, r)
				return err
			}},
		{"fact_event_counts",
			// Per key: its greatest bucket's row, and the sum of the
			// others (each bucket's row of greatest covered_end).
			"SELECT account_id, " + monthSQL("month") + ", kind, feature, src_topic, src_partition, max(bucket), argMax(ce, bucket), argMax(n, bucket), toUInt64(sum(n) - argMax(n, bucket)) FROM (" +
				"SELECT account_id, month, kind, feature, src_topic, src_partition, bucket, max(covered_end) AS ce, argMax(events, covered_end) AS n FROM " + db + ".fact_event_counts WHERE " + in +
				" GROUP BY account_id, month, kind, feature, src_topic, src_partition, bucket) GROUP BY account_id, month, kind, feature, src_topic, src_partition",
			func(rows driver.Rows) error {
				var (
					r   EventCount
					sum uint64
				)
				err := rows.Scan(&r.Account, &r.Month, &r.Kind, &r.Feature, &r.Topic, &r.Partition, &r.Bucket, &r.CoveredEnd, &r.Events, &sum)
				f.EventCounts = append(f.EventCounts, r)
				ld.CountSums = append(ld.CountSums, sum)
				return err
			}},
		{"fact_seat_events",
			"SELECT account_id, user_id, " + monthSQL("argMax(month, (occurred_ms, event_id))") + ", toInt64(max(occurred_ms)), argMax(event_id, (occurred_ms, event_id)), argMax(assigned, (occurred_ms, event_id)) FROM " + db + ".fact_seat_events WHERE " + upTo +
				" GROUP BY account_id, user_id",
			func(rows driver.Rows) error {
				var (
					r        SeatEvent
					assigned uint8
				)
				err := rows.Scan(&r.Account, &r.User, &r.Month, &r.OccurredMs, &r.EventID, &assigned)
				r.Assigned = assigned == 1
				f.SeatEvents = append(f.SeatEvents, r)
				return err
			}},
		{"fact_seat_purchases",
			"SELECT account_id, " + monthSQL("argMax(month, (occurred_ms, event_id))") + ", toInt64(max(occurred_ms)), argMax(event_id, (occurred_ms, event_id)), toInt64(argMax(seats, (occurred_ms, event_id))) FROM " + db + ".fact_seat_purchases WHERE " + upTo +
				" GROUP BY account_id",
			func(rows driver.Rows) error {
				var r SeatPurchase
				err := rows.Scan(&r.Account, &r.Month, &r.OccurredMs, &r.EventID, &r.Seats)
				f.SeatPurchases = append(f.SeatPurchases, r)
				return err
			}},
	}
	for _, rd := range reads {
		rows, err := conn.Query(ctx, rd.sql)
		if err != nil {
			return fmt.Errorf("read %s: %w", rd.table, err)
		}
		for rows.Next() {
			if err := rd.row(rows); err != nil {
				rows.Close()
				return fmt.Errorf("read %s: %w", rd.table, err)
			}
		}
		err = errors.Join(rows.Err(), rows.Close())
		if err != nil {
			return fmt.Errorf("read %s: %w", rd.table, err)
		}
	}
	return nil
}

// WriteLive stores live rows: on each shard, the server clock S is read,
// then the rollup rows and then the feature sets are inserted with
// updated_at S and a live version of S and s.LiveWriter. A failed write
// leaves the previous rows (stale, never wrong) and may have landed some
// rows.
func (s *Served) WriteLive(ctx context.Context, rows []LiveRow) error {
	if len(rows) == 0 {
		return nil
	}
	byAccount := make(map[string]int32, len(rows))
	idx := make(map[string]int, len(rows))
	for i, r := range rows {
		byAccount[r.Rollup.AccountID] = 0
		idx[r.Rollup.AccountID] = i
	}
	var errs []error
	for i, part := range s.byShard(byAccount) {
		if len(part) == 0 {
			continue
		}
		err := s.topo.Shards[i].Use(ctx, func(r *Replica) error {
			sec, err := serverSecond(ctx, r.Conn)
			if err != nil {
				return err
			}
			return s.writeLive(ctx, r.Conn, rows, idx, part, sec)
		})
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, err)
		}
	}
	copyTables, err := s.ReaderTablesOn()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if copyTables {
		// As after a recompute: the copy holder refreshes the quarter.
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := MarkDirty(mctx, s.topo.Global, s.cfg.Database, quarterDate(quarterIndex(rows[0].Rollup.QuarterStart))); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// quarterIndex is the month index of a quarter_start Date.
func quarterIndex(d time.Time) int32 { return int32(d.Year()*12 + int(d.Month()) - 1) }

func (s *Served) writeLive(ctx context.Context, conn driver.Conn, rows []LiveRow, idx map[string]int, part map[string]int32, sec uint32) error {
	db, fy := s.cfg.Database, uint8(s.cfg.FiscalStartMonth)
	version, at := liveVersion(sec, s.LiveWriter), time.Unix(int64(sec), 0).UTC()
	// Column by column: one Append per column instead of per row.
	var (
		n                                                                      = len(part)
		accounts, quarters                                                     = make([]string, 0, n), make([]string, 0, n)
		starts, ends                                                           = make([]time.Time, 0, n), make([]time.Time, 0, n)
		purchased, assigned, active, activeAssigned, logins, featEvents, feats = make([]uint64, 0, n), make([]uint64, 0, n), make([]uint64, 0, n), make([]uint64, 0, n), make([]uint64, 0, n), make([]uint64, 0, n), make([]uint64, 0, n)
		utilization, activation                                                = make([]float64, 0, n), make([]float64, 0, n)
		lastActivity                                                           = make([]time.Time, 0, n)
		fAccounts, fQuarters                                                   []string
		fStarts, fEnds                                                         []time.Time
		fNames                                                                 [][]string
		fUsers, fEvents                                                        [][]uint64
	)
	for a := range part {
		row := &rows[idx[a]]
		r := &row.Rollup
		accounts, quarters = append(accounts, a), append(quarters, r.Quarter)
		starts, ends = append(starts, r.QuarterStart), append(ends, r.QuarterEnd)
		purchased, assigned, utilization = append(purchased, r.SeatsPurchased), append(assigned, r.SeatsAssigned), append(utilization, r.SeatUtilization)
		active, activeAssigned, activation = append(active, r.ActiveUsers), append(activeAssigned, r.ActiveAssignedUsers), append(activation, r.ActivationRate)
		logins, featEvents, feats = append(logins, r.Logins), append(featEvents, r.FeatureEvents), append(feats, r.FeaturesUsed)
		lastActivity = append(lastActivity, r.LastActivityAt)
		if len(row.Features) > 0 {
			fAccounts, fQuarters = append(fAccounts, a), append(fQuarters, r.Quarter)
			fStarts, fEnds = append(fStarts, r.QuarterStart), append(fEnds, r.QuarterEnd)
			fNames, fUsers, fEvents = append(fNames, row.Features), append(fUsers, row.FeatureUsers), append(fEvents, row.FeatureEvents)
		}
	}
	m := len(fAccounts)
	// Rollup rows first: a live feature set is then always under a live
	// rollup row of at least its version, which the sweep finds (the
	// sweep reads rollup rows only).
	inserts := []struct {
		what, sql string
		cols      []any
	}{
		{"live rollups", "INSERT INTO " + db + ".served_rollups (fy, account_id, quarter_start, quarter_end, quarter, seats_purchased, seats_assigned, seat_utilization, active_users, active_assigned_users, activation_rate, logins, feature_events, features_used, last_activity_at, updated_at, version)",
			[]any{slices.Repeat([]uint8{fy}, n), accounts, starts, ends, quarters, purchased, assigned, utilization, active, activeAssigned, activation, logins, featEvents, feats, lastActivity, slices.Repeat([]time.Time{at}, n), slices.Repeat([]uint64{version}, n)}},
		{"live feature sets", "INSERT INTO " + db + ".served_feature_sets (fy, account_id, quarter_start, quarter_end, quarter, features, active_users, events, updated_at, version)",
			[]any{slices.Repeat([]uint8{fy}, m), fAccounts, fStarts, fEnds, fQuarters, fNames, fUsers, fEvents, slices.Repeat([]time.Time{at}, m), slices.Repeat([]uint64{version}, m)}},
	}
	for _, ins := range inserts {
		if len(ins.cols[1].([]string)) == 0 {
			continue
		}
		b, err := conn.PrepareBatch(ctx, ins.sql)
		if err != nil {
			return fmt.Errorf("%s: %w", ins.what, err)
		}
		for i, col := range ins.cols {
			if err := b.Column(i).Append(col); err != nil {
				_ = b.Abort()
				return fmt.Errorf("%s: column %d: %w", ins.what, i, err)
			}
		}
		if err := b.Send(); err != nil {
			return fmt.Errorf("%s: %w", ins.what, err)
		}
	}
	return nil
}
