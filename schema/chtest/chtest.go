// Package chtest gives tests a real ClickHouse server and a fresh database
// per test. The server is the one named by USAGEPIPE_TEST_CLICKHOUSE
// (host:port, set by `make test`), or else a private clickhouse-server that
// Main starts for the test binary and stops at its end.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { chtest.Main(m) }
package chtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/usagepipe/usagepipe/schema/chserver"
)

// EnvAddr names the variable holding an already running server's address.
const EnvAddr = "USAGEPIPE_TEST_CLICKHOUSE"

var addr string

// Runner runs tests: *testing.M, or a wrapper such as kafkatest.Runner.
type Runner interface{ Run() int }

// Main runs the tests of a package against a ClickHouse server and exits.
func Main(m Runner) {
	os.Exit(run(m))
}

func run(m Runner) int {
	addr = os.Getenv(EnvAddr)
	if addr == "" {
		dir, err := os.MkdirTemp("", "usagepipe-chtest-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "chtest:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		srv, err := chserver.Start(ctx, dir, 0)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "chtest:", err)
			return 1
		}
		defer srv.Stop()
		addr = srv.Addr
	}
	return m.Run()
}

// Addr is the native-protocol address of the test server.
func Addr() string { return addr }

// Open connects to the test server with database db ("" for default).
func Open(tb testing.TB, db string) driver.Conn {
	tb.Helper()
	if addr == "" {
		tb.Fatal("chtest: no ClickHouse server; call chtest.Main from TestMain")
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        []string{addr},
		Auth:        clickhouse.Auth{Database: db, Username: "default"},
		DialTimeout: 5 * time.Second,
		ReadTimeout: 60 * time.Second,
	})
	if err != nil {
		tb.Fatalf("chtest: open: %v", err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// NewDatabase creates a fresh, uniquely named database dropped when the test
// ends, and returns its name.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	conn := Open(tb, "")
	ctx := context.Background()
	if err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("chtest: create database: %v", err)
	}
	tb.Cleanup(func() {
		c := Open(tb, "")
		if err := c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name); err != nil {
			tb.Logf("chtest: drop database %s: %v", name, err)
		}
	})
	return name
}
