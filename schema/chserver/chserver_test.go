package chserver

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// open connects to s. Close it before stopping s: a graceful stop waits
// for open connections.
func open(t *testing.T, s *Server) driver.Conn {
	t.Helper()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{s.Addr}, DialTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func query(t *testing.T, c driver.Conn, q string) string {
	t.Helper()
	var s string
	if err := c.QueryRow(context.Background(), q).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

// queryOnce runs q on a connection of its own.
func queryOnce(t *testing.T, s *Server, q string) string {
	t.Helper()
	c := open(t, s)
	defer c.Close()
	return query(t, c, q)
}

// ExtraConfig reaches the server, and Restart after Kill and after Stop
// brings back the same port, data and configuration.
func TestStartWithAndRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	s, err := StartWith(ctx, dir, 0, Options{ExtraConfig: "<macros><replica>r7</replica></macros>"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	addr := s.Addr
	c := open(t, s)
	if got := query(t, c, "SELECT substitution FROM system.macros WHERE macro = 'replica'"); got != "r7" {
		t.Fatalf("macro replica = %q, want r7", got)
	}
	if err := c.Exec(ctx, "CREATE TABLE default.x (a String) ENGINE = MergeTree ORDER BY a"); err != nil {
		t.Fatal(err)
	}
	b, err := c.PrepareBatch(ctx, "INSERT INTO default.x (a)")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Append("kept"); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, stop := range []struct {
		name string
		fn   func()
	}{{"kill", s.Kill}, {"stop", func() { _ = s.Stop() }}} {
		stop.fn()
		if s.Pid() != 0 {
			t.Fatalf("after %s: Pid = %d, want 0", stop.name, s.Pid())
		}
		stop.fn() // a second stop of a stopped server does nothing
		if err := s.Restart(ctx); err != nil {
			t.Fatalf("restart after %s: %v", stop.name, err)
		}
		if s.Addr != addr || s.Pid() == 0 {
			t.Fatalf("after restart: Addr %s Pid %d, want %s and a process", s.Addr, s.Pid(), addr)
		}
		if got := queryOnce(t, s, "SELECT a FROM default.x"); got != "kept" {
			t.Errorf("after %s and restart: row = %q, want kept", stop.name, got)
		}
		if got := queryOnce(t, s, "SELECT substitution FROM system.macros WHERE macro = 'replica'"); got != "r7" {
			t.Errorf("after %s and restart: macro replica = %q, want r7", stop.name, got)
		}
	}
	// Start on the same dir without extra configuration drops it.
	_ = s.Stop()
	s2, err := Start(ctx, dir, s.Port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Stop() })
	if _, err := os.Stat(filepath.Join(dir, "config.d", "extra.xml")); !os.IsNotExist(err) {
		t.Errorf("extra.xml after Start without ExtraConfig: %v, want it gone", err)
	}
	if got := queryOnce(t, s2, "SELECT toString(count()) FROM system.macros"); got != "0" {
		t.Errorf("macros after Start without ExtraConfig = %s, want none", got)
	}
}
