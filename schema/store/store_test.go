package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chtest"
	"github.com/usagepipe/usagepipe/schema/store"
)

func TestMain(m *testing.M) { chtest.Main(m) }

// open returns a Store on a fresh database, migrated unless bare.
func open(tb testing.TB, reg prometheus.Registerer, bare bool) *store.Store {
	tb.Helper()
	return openCompressed(tb, reg, bare, "")
}

func openCompressed(tb testing.TB, reg prometheus.Registerer, bare bool, compression string) *store.Store {
	tb.Helper()
	db := chtest.NewDatabase(tb)
	ctx := context.Background()
	st, err := store.Open(ctx, store.Config{Addr: []string{chtest.Addr()}, Database: db, WriteTimeout: time.Minute, Compression: compression}, nil, reg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	if !bare {
		if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db}, nil); err != nil {
			tb.Fatal(err)
		}
	}
	return st
}

// sample makes facts with n rows per table.
func sample(n int) *schema.Facts {
	f := &schema.Facts{}
	for i := range n {
		a := fmt.Sprintf("account-%d", i/8)
		u := fmt.Sprintf("user-%d", i%97)
		m := int32(2026*12 + i%5)
		f.AccountMonths = append(f.AccountMonths, schema.AccountMonth{Account: a, Month: m})
		f.UserActivity = append(f.UserActivity, schema.UserActivity{Account: a, User: u, Month: m, LastMs: 1_767_225_600_000 + int64(i)})
		f.FeatureUsers = append(f.FeatureUsers, schema.FeatureUser{Account: a, Feature: "feature", User: u, Month: m})
		f.EventCounts = append(f.EventCounts, schema.EventCount{Account: a, Month: m, Kind: schema.KindFeatureUsed, Feature: "feature",
			Topic: "usage-events", Partition: int32(i % 12), Bucket: uint64(i % 3), CoveredEnd: uint64(i + 1), Events: uint64(i%7 + 1)})
		f.SeatEvents = append(f.SeatEvents, schema.SeatEvent{Account: a, User: u, Month: m, OccurredMs: 1_767_225_600_000 + int64(i), EventID: fmt.Sprintf("e%d", i), Assigned: i%3 != 0})
		f.SeatPurchases = append(f.SeatPurchases, schema.SeatPurchase{Account: a, Month: m, OccurredMs: 1_767_225_600_000 + int64(i), EventID: fmt.Sprintf("p%d", i), Seats: int64(i)})
	}
	return f
}

var tables = []string{"fact_account_months", "fact_user_activity", "fact_feature_users", "fact_event_counts", "fact_seat_events", "fact_seat_purchases"}

func TestWriteStoresEveryTableAndCounts(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := open(t, reg, false)
	ctx := context.Background()
	f := sample(100)
	for range 2 {
		if err := st.Write(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Write(ctx, &schema.Facts{}); err != nil {
		t.Fatal(err)
	}
	for _, table := range tables {
		var n uint64
		if err := st.Conn().QueryRow(ctx, "SELECT count() FROM "+st.Database()+"."+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 200 {
			t.Errorf("%s: %d rows stored, want 200", table, n)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "usagepipe_clickhouse_rows_written_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	for _, table := range tables {
		if got[table] != 200 {
			t.Errorf("usagepipe_clickhouse_rows_written_total{table=%q} = %v, want 200", table, got[table])
		}
	}
}

// TestWriteManyBlocks writes more rows than two INSERT blocks hold, with
// each compression, and checks that every row arrived with its own values
// (no block sent twice, none lost, no buffer reused before it was sent).
func TestWriteManyBlocks(t *testing.T) {
	for _, c := range []string{"none", "lz4", "zstd"} {
		t.Run(c, func(t *testing.T) { testWriteManyBlocks(t, c) })
	}
}

func testWriteManyBlocks(t *testing.T, compression string) {
	st := openCompressed(t, nil, false, compression)
	ctx := context.Background()
	n := 2*store.BlockRows + 77
	f := sample(n)
	if err := st.Write(ctx, f); err != nil {
		t.Fatal(err)
	}
	var wantMs, wantEvents, wantSeats uint64
	for i := range n {
		wantMs += uint64(f.UserActivity[i].LastMs)
		wantEvents += f.EventCounts[i].Events
		wantSeats += uint64(f.SeatPurchases[i].Seats)
	}
	db := st.Database()
	for _, c := range []struct {
		sql  string
		want uint64
	}{
		{"SELECT count() FROM " + db + ".fact_account_months", uint64(n)},
		{"SELECT uniqExact(last_activity_ms) FROM " + db + ".fact_user_activity", uint64(n)},
		{"SELECT sum(last_activity_ms) FROM " + db + ".fact_user_activity", wantMs},
		{"SELECT sum(events) FROM " + db + ".fact_event_counts", wantEvents},
		{"SELECT uniqExact(event_id) FROM " + db + ".fact_seat_events", uint64(n)},
		{"SELECT sum(seats) FROM " + db + ".fact_seat_purchases", wantSeats},
		{"SELECT count() FROM " + db + ".fact_feature_users", uint64(n)},
	} {
		var got uint64
		if err := st.Conn().QueryRow(ctx, c.sql).Scan(&got); err != nil {
			t.Fatalf("%s: %v", c.sql, err)
		}
		if got != c.want {
			t.Errorf("%s = %d, want %d", c.sql, got, c.want)
		}
	}
	// The server squashes the blocks of one INSERT into one part (level 0:
	// not the product of a merge), as it would one big block.
	for _, table := range []string{"fact_account_months", "fact_user_activity", "fact_feature_users", "fact_event_counts", "fact_seat_events", "fact_seat_purchases"} {
		var parts, maxLevel uint64
		q := "SELECT count(), toUInt64(max(level)) FROM system.parts WHERE active AND database = '" + db + "' AND table = '" + table + "'"
		if err := st.Conn().QueryRow(ctx, q).Scan(&parts, &maxLevel); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if parts != 1 || maxLevel != 0 {
			t.Errorf("%s: %d active parts, highest level %d; want the INSERT's blocks squashed into 1 part of level 0", table, parts, maxLevel)
		}
	}
}

// TestWriteRoundTrip reads one row of each table back, column by column.
func TestWriteRoundTrip(t *testing.T) {
	st := open(t, nil, false)
	ctx := context.Background()
	acct := "Ünïcødé 'quoted' \"账户\"\\"
	f := &schema.Facts{
		AccountMonths: []schema.AccountMonth{{Account: acct, Month: schema.MinMonth}},
		UserActivity:  []schema.UserActivity{{Account: acct, User: "u", Month: schema.MaxMonth, LastMs: 4_260_211_199_999}},
		FeatureUsers:  []schema.FeatureUser{{Account: acct, Feature: "f", User: "u", Month: 2026*12 + 1}},
		EventCounts:   []schema.EventCount{{Account: acct, Month: 2026*12 + 2, Kind: 2, Feature: "f", Topic: "t", Partition: -1, Bucket: 7, CoveredEnd: 7<<20 + 5, Events: 3}},
		SeatEvents:    []schema.SeatEvent{{Account: acct, User: "u", Month: 2026*12 + 3, OccurredMs: 42, EventID: "e", Assigned: true}},
		SeatPurchases: []schema.SeatPurchase{{Account: acct, Month: 2026*12 + 4, OccurredMs: 43, EventID: "p", Seats: 10_000_000}},
	}
	if err := st.Write(ctx, f); err != nil {
		t.Fatal(err)
	}
	db := st.Database()
	q := func(sql, want string) {
		t.Helper()
		var got string
		if err := st.Conn().QueryRow(ctx, sql).Scan(&got); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		if got != want {
			t.Errorf("%s\n got  %s\n want %s", sql, got, want)
		}
	}
	row := "SELECT concat(" // every column as text, separated by |
	q(row+"account_id, '|', toString(month)) FROM "+db+".fact_account_months", acct+"|2000-01-01")
	q(row+"account_id, '|', toString(month), '|', user_id, '|', toString(last_activity_ms)) FROM "+db+".fact_user_activity", acct+"|2104-12-01|u|4260211199999")
	q(row+"account_id, '|', toString(month), '|', feature, '|', user_id) FROM "+db+".fact_feature_users", acct+"|2026-02-01|f|u")
	q(row+"account_id, '|', toString(month), '|', toString(kind), '|', feature, '|', src_topic, '|', toString(src_partition), '|', toString(bucket), '|', toString(covered_end), '|', toString(events)) FROM "+db+".fact_event_counts",
		acct+"|2026-03-01|2|f|t|-1|7|7340037|3")
	q(row+"account_id, '|', user_id, '|', toString(month), '|', toString(occurred_ms), '|', event_id, '|', toString(assigned)) FROM "+db+".fact_seat_events", acct+"|u|2026-04-01|42|e|1")
	q(row+"account_id, '|', toString(month), '|', toString(occurred_ms), '|', event_id, '|', toString(seats)) FROM "+db+".fact_seat_purchases", acct+"|2026-05-01|43|p|10000000")
}

func TestWriteRejectsInvalidFacts(t *testing.T) {
	st := open(t, nil, false)
	ctx := context.Background()
	f := func(facts *schema.Facts, table string) {
		t.Helper()
		err := st.Write(ctx, facts)
		if !errors.Is(err, store.ErrInvalidFact) || !strings.Contains(err.Error(), table) {
			t.Errorf("Write = %v, want ErrInvalidFact naming %s", err, table)
		}
	}
	ok := []schema.AccountMonth{{Account: "a", Month: 2026 * 12}}
	f(&schema.Facts{AccountMonths: ok, SeatPurchases: []schema.SeatPurchase{{Account: "a", Month: 2026 * 12, Seats: -1}}}, "fact_seat_purchases")
	f(&schema.Facts{AccountMonths: []schema.AccountMonth{{Account: "a", Month: schema.MinMonth - 1}}}, "fact_account_months")
	f(&schema.Facts{AccountMonths: ok, UserActivity: []schema.UserActivity{{Account: "a", Month: schema.MaxMonth + 1}}}, "fact_user_activity")
	f(&schema.Facts{AccountMonths: ok, SeatEvents: []schema.SeatEvent{{Account: "a", Month: 2026 * 12, OccurredMs: -5}}}, "fact_seat_events")
	f(&schema.Facts{AccountMonths: ok, EventCounts: []schema.EventCount{{Account: "a", Month: 2026 * 12, Kind: 3}}}, "fact_event_counts")
	var n uint64
	if err := st.Conn().QueryRow(ctx, "SELECT count() FROM "+st.Database()+".fact_account_months").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d rows written by refused Writes", n)
	}
}

func TestWriteErrorNamesTable(t *testing.T) {
	st := open(t, nil, true) // no tables
	err := st.Write(context.Background(), sample(1))
	if err == nil || !strings.Contains(err.Error(), "fact_account_months") {
		t.Fatalf("Write into a database without tables = %v, want an error naming fact_account_months", err)
	}
}

func TestOpen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := store.Open(ctx, store.Config{Addr: []string{"127.0.0.1:1"}, DialTimeout: time.Second}, nil, nil); err == nil {
		t.Error("Open of a closed port succeeded")
	}
	f := func(cfg store.Config) {
		t.Helper()
		if err := cfg.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", cfg)
		}
	}
	f(store.Config{})
	f(store.Config{Addr: []string{""}})
	f(store.Config{Addr: []string{"x:9000"}, Database: "bad-name"})
	f(store.Config{Addr: []string{"x:9000"}, WriteTimeout: -time.Second})
	st := open(t, nil, false)
	if err := st.Ping(ctx); err != nil {
		t.Error(err)
	}
}

// BenchmarkWrite writes 60,000 fact rows (10,000 per table) per op to the
// test server; ns/row is the cost per fact row, server time included.
func BenchmarkWrite(b *testing.B) {
	st := open(b, nil, false)
	ctx := context.Background()
	f := sample(10_000)
	rows := f.Rows()
	for b.Loop() {
		if err := st.Write(ctx, f); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rows), "ns/row")
}
