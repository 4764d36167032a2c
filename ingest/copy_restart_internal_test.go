package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/usagepipe/usagepipe/schema"
)

// restartingConn simulates a ClickHouse restart: once a statement
// containing failOn is sent, every call fails until down is cleared.
type restartingConn struct {
	driver.Conn
	down   atomic.Bool
	failOn atomic.Value // string
}

var errRestarting = errors.New("read: connection reset by peer (simulated ClickHouse restart)")

func (c *restartingConn) Exec(ctx context.Context, q string, args ...any) error {
	if f, _ := c.failOn.Load().(string); f != "" && strings.Contains(q, f) {
		c.failOn.Store("")
		c.down.Store(true)
	}
	if c.down.Load() {
		return errRestarting
	}
	return c.Conn.Exec(ctx, q, args...)
}

func (c *restartingConn) Query(ctx context.Context, q string, args ...any) (driver.Rows, error) {
	if c.down.Load() {
		return nil, errRestarting
	}
	return c.Conn.Query(ctx, q, args...)
}

type restartingRow struct{}

func (restartingRow) Err() error           { return errRestarting }
func (restartingRow) Scan(...any) error    { return errRestarting }
func (restartingRow) ScanStruct(any) error { return errRestarting }

func (c *restartingConn) QueryRow(ctx context.Context, q string, args ...any) driver.Row {
	if c.down.Load() {
		return restartingRow{}
	}
	return c.Conn.QueryRow(ctx, q, args...)
}

// TestCopyHolderKeepsClaimAfterFailedRefresh: ClickHouse restarts in the
// middle of the holder's reader-table refresh (18.16), after a REPLACE
// PARTITION, and loads the replaced part again: every key of that quarter
// reads twice. The holder must take the copy lease again at its next round
// and heal it. It dropped its claim instead (the refresh's re-acquire
// failed while ClickHouse was down), so every process waited the 30 s
// takeover rule with two rows per key visible; found by an audit, which
// also reproduced it with a real SIGKILL.
func TestCopyHolderKeepsClaimAfterFailedRefresh(t *testing.T) {
	st := liveStore(t)
	db, conn, ctx := st.Database(), st.Conn(), context.Background()
	cfg := schema.Config{Database: db, FiscalStartMonth: 1}
	const q = "2026-01-01"
	put := func(value, ver uint32) {
		t.Helper()
		for _, s := range []string{
			fmt.Sprintf("INSERT INTO %s.served_rollups SELECT 1, concat('a-', toString(number)), toDate('%s'), addMonths(toDate('%s'), 3), 'Q', 5, 4, 0.8, 3, 2, 0.5, %d, %d, 1, toDateTime(0, 'UTC'), toDateTime(%d, 'UTC'), %d FROM numbers(50)", db, q, q, value, value, ver, uint64(ver)<<32),
			fmt.Sprintf("INSERT INTO %s.copy_dirty (from_quarter) SELECT toDate('%s')", db, q),
		} {
			if err := conn.Exec(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(1, 100)
	rc := &restartingConn{Conn: conn}
	s := &server{conn: rc, scfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), copy: schema.NewCopy(rc, cfg),
		installs: prometheus.NewCounter(prometheus.CounterOpts{Name: "installs"}), holds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "holds"})}
	if err := s.keepCopy(ctx, true); err != nil || !s.copy.Holds() {
		t.Fatalf("first round: %v, holds the lease %v", err, s.copy.Holds())
	}
	time.Sleep(1100 * time.Millisecond) // a later version second
	put(2, 200)
	rc.failOn.Store("REPLACE PARTITION")
	if err := s.keepCopy(ctx, false); err == nil {
		t.Fatal("the round cut by the restart reported no error")
	}
	rc.down.Store(false) // ClickHouse answers again, with a replaced part loaded again
	if err := conn.Exec(ctx, "INSERT INTO "+db+".account_quarter_rollups SELECT * FROM "+db+".account_quarter_rollups WHERE account_id = 'a-1'"); err != nil {
		t.Fatal(err)
	}
	for round := 1; ; round++ {
		if err := s.keepCopy(ctx, false); err != nil {
			t.Logf("round %d after the restart: %v", round, err)
		}
		var n, logins uint64
		if err := conn.QueryRow(ctx, "SELECT count(), max(logins) FROM "+db+".account_quarter_rollups WHERE account_id = 'a-1'").Scan(&n, &logins); err != nil {
			t.Fatal(err)
		}
		if n == 1 && logins == 2 {
			return
		}
		if round == 2 {
			t.Fatalf("two rounds after ClickHouse answered again, a-1 reads %d rows (logins %d), want 1 row of the new values; holds the lease %v", n, logins, s.copy.Holds())
		}
	}
}
