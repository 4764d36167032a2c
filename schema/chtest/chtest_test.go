package chtest

import (
	"context"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

func TestNewDatabaseIsEmptyAndUsable(t *testing.T) {
	db := NewDatabase(t)
	conn := Open(t, db)
	ctx := context.Background()
	if err := conn.Exec(ctx, "CREATE TABLE x (a UInt8) ENGINE = Memory"); err != nil {
		t.Fatal(err)
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ?", db).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("tables in fresh database = %d, want 1", n)
	}
}
