package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema/chcluster"
	"github.com/usagepipe/usagepipe/schema/store"
)

// TestClusterCommands: migrate, run and verify with --clickhouse-cluster
// on a real three-node cluster; a second migrate succeeds; and a database
// whose recorded shard layout differs from the cluster's is refused with a
// one-line error naming the setting.
func TestClusterCommands(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := chcluster.Start(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	kf := kafkatest.Kfake(t)
	brokers := strings.Join(kf.ListenAddrs(), ",")
	if code, _, stderr := exec(ctx, "gen", "--kafka-brokers", brokers, "--events", "3000", "--accounts", "12", "--users", "120"); code != 0 {
		t.Fatalf("gen: %s", stderr)
	}
	db := "t_cmd_cluster"
	t.Setenv("USAGEPIPE_CLICKHOUSE_CLUSTER", c.Name) // the environment works as the flag
	ch := []string{"--clickhouse-addr", strings.Join(c.Addrs(), ","), "--clickhouse-database", db}
	for range 2 {
		if code, _, stderr := exec(ctx, append([]string{"migrate"}, ch...)...); code != 0 {
			t.Fatalf("migrate: exit %d: %s", code, stderr)
		}
	}
	if code, _, stderr := exec(ctx, append([]string{"run", "--until-caught-up", "--kafka-brokers", brokers, "--metrics-addr", ""}, ch...)...); code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	code, out, stderr := exec(ctx, append([]string{"verify"}, ch...)...)
	if code != 0 || !strings.Contains(out, "12 accounts checked, 0 differences") {
		t.Fatalf("verify after catch-up: exit %d\n%s\n%s", code, out, stderr)
	}
	// Every node serves the same 12 accounts' rows.
	var want int
	for i, n := range c.Nodes() {
		st, err := store.Open(ctx, store.Config{Addr: []string{n.Addr}, Database: db}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := st.ReadRollups(ctx)
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		accounts := map[string]bool{}
		for _, r := range rows {
			accounts[r.AccountID] = true
		}
		if i == 0 {
			want = len(rows)
		}
		if len(accounts) != 12 || len(rows) != want {
			t.Fatalf("node %s: %d rollup rows of %d accounts, want %d rows of 12", n.Replica, len(rows), len(accounts), want)
		}
	}

	// The database says it was made on other shards.
	st, err := store.Open(ctx, store.Config{Addr: c.Addrs(), Database: db}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	b, err := st.Conn().PrepareBatch(ctx, "INSERT INTO "+db+".schema_migrations (name, kind, version, checksum, definition, applied_at, seq)")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Append("cluster_layout", "cluster", uint32(0), "weights=1,1,1", c.Name, time.Now(), uint64(time.Now().UnixNano())); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = exec(ctx, append([]string{"verify"}, ch...)...)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if last := lines[len(lines)-1]; code != 2 || !strings.Contains(last, "clickhouse cluster") || !strings.Contains(last, "weights=1,1,1") {
		t.Fatalf("verify on a changed layout: exit %d, last line %q; want exit 2 naming the cluster and both layouts", code, last)
	}
}
