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

// TestLiveOffDuringLoad: the live path turns off (a backlog, a lost
// group session) while a live round loads accounts. The round writes no
// row and gives the flush's marks back to the recompute loop; it must not
// touch the dropped cache (the chaos suite found a nil dereference here,
// after a zombie's SIGCONT).
func TestLiveOffDuringLoad(t *testing.T) {
	ctx := context.Background()
	db := chtest.NewDatabase(t)
	st, err := store.Open(ctx, store.Config{Addr: []string{chtest.Addr()}, Database: db}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db, FiscalStartMonth: 1}, nil); err != nil {
		t.Fatal(err)
	}
	conn := &holdConn{Conn: st.Conn(), entered: make(chan struct{}, 1), release: make(chan struct{})}
	cfg := Defaults()
	cfg.FiscalStartMonth = 1
	s, err := newServer(holdServe{st, conn}, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil || s == nil || s.lv == nil {
		t.Fatalf("server %v, live path %v: %v", s != nil, s != nil && s.lv != nil, err)
	}
	s.setLive(true)
	m := int32(2026*12 + 3)
	f := &schema.Facts{
		AccountMonths: []schema.AccountMonth{{Account: "a", Month: m}},
		UserActivity:  []schema.UserActivity{{Account: "a", User: "u", Month: m, LastMs: time.Date(2026, 4, 2, 0, 0, 0, 0, time.UTC).UnixMilli()}},
	}
	s.touch(f, map[int64]int{time.Now().Unix(): 1})
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
