package ingest

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chtest"
	"github.com/usagepipe/usagepipe/schema/store"
)

// holdServe is a store whose serve loop's reads of fact_user_activity
// (a live load) wait until released.
type holdServe struct {
	*store.Store
	conn *holdConn
}

func (w holdServe) Topology() *schema.Topology { return schema.SingleServer(w.conn) }

type holdConn struct {
	driver.Conn
	entered chan struct{}
	release chan struct{}
}

func (c *holdConn) Query(ctx context.Context, q string, args ...any) (driver.Rows, error) {
	if strings.Contains(q, ".fact_user_activity ") {
		select {
		case c.entered <- struct{}{}:
		default:
		}
		<-c.release
	}
	return c.Conn.Query(ctx, q, args...)
}

// liveStore opens a store on a fresh, migrated database (calendar
// quarters).
func liveStore(t *testing.T) *store.Store {
	t.Helper()
	ctx := context.Background()
	db := chtest.NewDatabase(t)
	st, err := store.Open(ctx, store.Config{Addr: []string{chtest.Addr()}, Database: db}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db, FiscalStartMonth: 1}, nil); err != nil {
		t.Fatal(err)
	}
	return st
}

// liveServer is a serve loop on w whose loops do not run (the test drives
// touch and live rounds), with the live path on.
func liveServer(t *testing.T, w Writer) *server {
	t.Helper()
	cfg := Defaults()
	cfg.FiscalStartMonth = 1
	s, err := newServer(w, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil || s == nil || s.lv == nil {
		t.Fatalf("server %v, live path %v: %v", s != nil, s != nil && s.lv != nil, err)
	}
	s.setLive(true)
	return s
}

// TestLiveOffDuringLoad: the live path turns off (a backlog, a lost
// group session) while a live round loads accounts. The round writes no
// row and gives the flush's marks back to the recompute loop; it must not
// touch the dropped cache (the chaos suite found a nil dereference here,
// after a zombie's SIGCONT).
func TestLiveOffDuringLoad(t *testing.T) {
	ctx := context.Background()
	st := liveStore(t)
	conn := &holdConn{Conn: st.Conn(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	s := liveServer(t, holdServe{st, conn})
	m := int32(2026*12 + 3)
	f := &schema.Facts{
		AccountMonths: []schema.AccountMonth{{Account: "a", Month: m}},
		UserActivity:  []schema.UserActivity{{Account: "a", User: "u", Month: m, LastMs: time.Date(2026, 4, 2, 0, 0, 0, 0, time.UTC).UnixMilli()}},
	}
	s.touch(f, map[delayKey]int{{sec: time.Now().Unix(), month: m}: 1})
	if _, ok := s.pending["a"]; ok {
		t.Fatal("the mark of the live quarter went to the recompute loop while the live path runs")
	}
	errc := make(chan error, 1)
	go func() { errc <- s.liveRound(ctx) }()
	<-conn.entered
	s.setLive(false)
	close(conn.release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	q, ok := s.pending["a"]
	delays := len(s.delays)
	s.mu.Unlock()
	if !ok || q != m {
		t.Fatalf("pending after the round: %v (%v), want a from %d: the mark was lost", q, ok, m)
	}
	if delays == 0 {
		t.Fatal("the flush's delays were lost")
	}
	var rows dto.Metric
	if err := s.lv.rows.Write(&rows); err != nil || rows.GetCounter().GetValue() != 0 {
		t.Fatalf("%v live rows written from a dropped cache (%v)", rows.GetCounter().GetValue(), err)
	}
}

// TestLiveRollover: the flush that moves the stream into a new quarter
// holds facts of both (docs/design.md, "Rollover"). Its live round writes
// the new quarter's rows of the cached accounts without loading them, and
// the late facts of the quarter before (a new user, a seat event that
// changes both quarters) as live rows of both: every mark is answered,
// every record's delay reported, and the rows equal a recompute from the
// facts (usagepipe verify). A fact two quarters back is recomputed, and
// its record's delay waits for that.
func TestLiveRollover(t *testing.T) {
	ctx := context.Background()
	st := liveStore(t)
	s := liveServer(t, st)
	apr, jun, jul, jan := int32(2026*12+3), int32(2026*12+5), int32(2026*12+6), int32(2026*12)
	ms := func(m int32, day int) int64 {
		return time.Date(int(m/12), time.Month(m%12+1), day, 12, 0, 0, 0, time.UTC).UnixMilli()
	}
	login := func(a string, m int32, end, n uint64) schema.EventCount {
		return schema.EventCount{Account: a, Month: m, Kind: schema.KindLogin, Topic: "t", Partition: 0, CoveredEnd: end, Events: n}
	}
	now := time.Now().Unix()
	flush := func(f *schema.Facts, delays map[delayKey]int) {
		t.Helper()
		if err := st.Write(ctx, f); err != nil {
			t.Fatal(err)
		}
		s.touch(f, delays)
	}
	round := func() {
		t.Helper()
		if err := s.liveRound(ctx); err != nil {
			t.Fatal(err)
		}
	}
	answered := func(when string) {
		t.Helper()
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.pending) > 0 || len(s.delays) > 0 {
			t.Fatalf("%s: marks %v and delays %v left to the recompute loop, want every one answered by live rows", when, s.pending, s.delays)
		}
	}

	// Q2: a holds a seat (u1) of 3 purchased and logs in; b logs in.
	flush(&schema.Facts{
		AccountMonths: []schema.AccountMonth{{Account: "a", Month: apr}, {Account: "b", Month: apr}},
		UserActivity:  []schema.UserActivity{{Account: "a", User: "u1", Month: apr, LastMs: ms(apr, 10)}, {Account: "b", User: "u5", Month: apr, LastMs: ms(apr, 11)}},
		EventCounts:   []schema.EventCount{login("a", apr, 2, 1), login("b", apr, 4, 1)},
		SeatEvents:    []schema.SeatEvent{{Account: "a", User: "u1", Month: apr, OccurredMs: ms(apr, 5), EventID: "s1", Assigned: true}},
		SeatPurchases: []schema.SeatPurchase{{Account: "a", Month: apr, OccurredMs: ms(apr, 1), EventID: "p1", Seats: 3}},
	}, map[delayKey]int{{now, apr}: 4})
	round()
	answered("Q2")

	// The rollover flush: a's first login of Q3, and late facts of Q2 —
	// b's new user, and a seat for u2 (in both quarters' rows).
	flush(&schema.Facts{
		AccountMonths: []schema.AccountMonth{{Account: "a", Month: jun}, {Account: "a", Month: jul}, {Account: "b", Month: jun}},
		UserActivity:  []schema.UserActivity{{Account: "a", User: "u1", Month: jul, LastMs: ms(jul, 1)}, {Account: "b", User: "u6", Month: jun, LastMs: ms(jun, 30)}},
		EventCounts:   []schema.EventCount{login("a", jul, 5, 1), login("b", jun, 6, 1)},
		SeatEvents:    []schema.SeatEvent{{Account: "a", User: "u2", Month: jun, OccurredMs: ms(jun, 20), EventID: "s2", Assigned: true}},
	}, map[delayKey]int{{now, jul}: 1, {now, jun}: 2})
	round()
	answered("the rollover")
	stale, err := s.sv.Stale(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) != 2 || stale["a"] != apr || stale["b"] != apr {
		t.Fatalf("stale %v, want a and b from Q2: their greatest rows of Q2 and Q3 are live", stale)
	}
	var diffs []string
	if _, err := s.sv.Verify(ctx, nil, func(d schema.Difference) { diffs = append(diffs, d.Key+": served "+d.Served+", computed "+d.Computed) }); err != nil {
		t.Fatal(err)
	}
	if len(diffs) > 0 {
		t.Fatalf("live rows differ from a recompute of the facts:\n%s", strings.Join(diffs, "\n"))
	}
	var loads dto.Metric
	if err := s.lv.loads.Write(&loads); err != nil || loads.GetCounter().GetValue() != 2 {
		t.Fatalf("%v accounts loaded, want 2 (the rollover loads none): %v", loads.GetCounter().GetValue(), err)
	}

	// After the rollover round: a late fact of Q2 for b (cached in both
	// quarters) is answered by live rows of both; one for c (not cached,
	// and not worth a load for late facts only) goes back to the
	// recompute loop, with the round's delays.
	flush(&schema.Facts{
		AccountMonths: []schema.AccountMonth{{Account: "b", Month: jun}, {Account: "c", Month: jun}},
		UserActivity:  []schema.UserActivity{{Account: "b", User: "u7", Month: jun, LastMs: ms(jun, 29)}, {Account: "c", User: "u9", Month: jun, LastMs: ms(jun, 28)}},
		EventCounts:   []schema.EventCount{login("b", jun, 8, 2), login("c", jun, 9, 1)},
	}, map[delayKey]int{{now, jun}: 2})
	round()
	s.mu.Lock()
	pending, delays := s.pending, s.delays
	s.pending, s.delays = map[string]int32{}, map[int64]int{}
	s.mu.Unlock()
	if len(pending) != 1 || pending["c"] != apr || delays[now] != 2 {
		t.Fatalf("after a late round: marks %v, delays %v left to the recompute loop; want c from Q2 only (b's rows of Q2 and Q3 live) and the round's 2 records", pending, delays)
	}
	if err := s.lv.loads.Write(&loads); err != nil || loads.GetCounter().GetValue() != 2 {
		t.Fatalf("%v accounts loaded, want still 2 (c has late facts only): %v", loads.GetCounter().GetValue(), err)
	}
	diffs = nil
	if _, err := s.sv.Verify(ctx, []string{"a", "b"}, func(d schema.Difference) { diffs = append(diffs, d.Key+": served "+d.Served+", computed "+d.Computed) }); err != nil {
		t.Fatal(err)
	}
	if len(diffs) > 0 {
		t.Fatalf("live rows after a late round differ from a recompute of the facts:\n%s", strings.Join(diffs, "\n"))
	}

	// Two quarters back: recomputed, and so is its record's delay.
	flush(&schema.Facts{
		AccountMonths: []schema.AccountMonth{{Account: "b", Month: jan}},
		UserActivity:  []schema.UserActivity{{Account: "b", User: "u5", Month: jan, LastMs: ms(jan, 3)}},
		EventCounts:   []schema.EventCount{login("b", jan, 7, 1)},
	}, map[delayKey]int{{now, jan}: 1})
	s.mu.Lock()
	q, ok := s.pending["b"]
	n := s.delays[now]
	s.mu.Unlock()
	if !ok || q != jan || n != 1 {
		t.Fatalf("pending b %v (%v), delays %d: want b from Q1 and its record left to the recompute loop", q, ok, n)
	}
}

// TestLiveOffRebuilt: a round that read the path on builds its cache just
// after the path turned off (which dropped the cache), and another round
// then finds the path off. Flushes of the off period are not gathered, so
// once the path is on again the next round must start over and load the
// account again rather than use that cache.
func TestLiveOffRebuilt(t *testing.T) {
	ctx := context.Background()
	st := liveStore(t)
	s := liveServer(t, st)
	m := int32(2026*12 + 3)
	flush := func(user string) *schema.Facts {
		f := &schema.Facts{
			AccountMonths: []schema.AccountMonth{{Account: "a", Month: m}},
			UserActivity:  []schema.UserActivity{{Account: "a", User: user, Month: m, LastMs: time.Date(2026, 4, 2, 0, 0, 0, 0, time.UTC).UnixMilli()}},
		}
		if err := st.Write(ctx, f); err != nil {
			t.Fatal(err)
		}
		s.touch(f, map[delayKey]int{{sec: time.Now().Unix(), month: m}: 1})
		return f
	}
	f := flush("u1")
	s.setLive(false)
	// The round that read "on" before the drop goes on to build a cache.
	if _, _, err := s.liveRows(ctx, f, m, false); err != nil {
		t.Fatal(err)
	}
	// A round kicked before the drop finds the path off.
	if err := s.liveRound(ctx); err != nil {
		t.Fatal(err)
	}
	flush("u2") // while off: not gathered
	s.setLive(true)
	flush("u3")
	if err := s.liveRound(ctx); err != nil {
		t.Fatal(err)
	}
	var loads dto.Metric
	if err := s.lv.loads.Write(&loads); err != nil || loads.GetCounter().GetValue() != 2 {
		t.Fatalf("account loaded %v times, want 2: the cache built after the drop was used again (%v)", loads.GetCounter().GetValue(), err)
	}
	var diffs []string
	if _, err := s.sv.Verify(ctx, nil, func(d schema.Difference) { diffs = append(diffs, d.Key+": served "+d.Served+", computed "+d.Computed) }); err != nil {
		t.Fatal(err)
	}
	if len(diffs) > 0 {
		t.Fatalf("live rows differ from a recompute (the off period's flush is missing):\n%s", strings.Join(diffs, "\n"))
	}
}

// TestLivePrevExpires: once the kept quarter expired, a late fact of it
// whose mark touch already gave the live loop (the kept quarter was still
// published) goes back to the recompute loop with its delay, and the
// next flush's late marks go there directly.
func TestLivePrevExpires(t *testing.T) {
	ctx := context.Background()
	st := liveStore(t)
	s := liveServer(t, st)
	s.lv.prevFor = 0 // expired at the first round after the rollover
	jun, jul := int32(2026*12+5), int32(2026*12+6)
	now := time.Now().Unix()
	flush := func(m int32, user string) {
		t.Helper()
		f := &schema.Facts{
			AccountMonths: []schema.AccountMonth{{Account: "a", Month: m}},
			UserActivity:  []schema.UserActivity{{Account: "a", User: user, Month: m, LastMs: time.Date(int(m/12), time.Month(m%12+1), 3, 0, 0, 0, 0, time.UTC).UnixMilli()}},
		}
		if err := st.Write(ctx, f); err != nil {
			t.Fatal(err)
		}
		s.touch(f, map[delayKey]int{{sec: now, month: m}: 1})
	}
	round := func() {
		t.Helper()
		if err := s.liveRound(ctx); err != nil {
			t.Fatal(err)
		}
	}
	flush(jun, "u1")
	round()
	flush(jul, "u2")
	round() // the rollover: keeps Q2 until now
	flush(jun, "u3")
	s.mu.Lock()
	owed := s.lv.owed["a"]
	s.mu.Unlock()
	if owed != jun-2 {
		t.Fatalf("owed a from %d, want %d: the kept quarter was published at touch", owed, jun-2)
	}
	round() // drops the expired quarter: writes a's Q3 row only
	s.mu.Lock()
	q, ok := s.pending["a"]
	n := s.delays[now]
	s.pending, s.delays = map[string]int32{}, map[int64]int{}
	s.mu.Unlock()
	if !ok || q != jun-2 || n != 1 {
		t.Fatalf("after the expiry: pending a %v (%v), delays %d; want a from Q2 and its record given back", q, ok, n)
	}
	if s.lv.prevQ.Load() != 0 {
		t.Fatalf("kept quarter %d still published after its expiry", s.lv.prevQ.Load())
	}
	flush(jun, "u4")
	s.mu.Lock()
	q, ok = s.pending["a"]
	_, owedA := s.lv.owed["a"]
	s.mu.Unlock()
	if !ok || q != jun-2 || owedA {
		t.Fatalf("late fact after the expiry: pending a %v (%v), owed %v; want it recomputed", q, ok, owedA)
	}
}
