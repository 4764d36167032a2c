package ingest_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chcluster"
	"github.com/usagepipe/usagepipe/schema/store"
)

// The package's tests share one three-node ClickHouse cluster (ZooKeeper,
// shard 1 with two replicas, shard 2 with one), started by the first test
// that needs it and stopped after the last test.
var shared struct {
	once sync.Once
	c    *chcluster.Cluster
	dir  string
	took time.Duration
	err  error
}

func testCluster(t *testing.T) *chcluster.Cluster {
	t.Helper()
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "usagepipe-cluster-"); shared.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		start := time.Now()
		shared.c, shared.err = chcluster.Start(ctx, shared.dir)
		shared.took = time.Since(start)
	})
	if shared.err != nil {
		t.Fatalf("start the ClickHouse cluster: %v", shared.err)
	}
	return shared.c
}

// clusterRunner stops the shared cluster once the tests ran.
type clusterRunner struct{ r interface{ Run() int } }

func (c clusterRunner) Run() int {
	code := c.r.Run()
	if shared.c != nil {
		shared.c.Stop()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	return code
}

// hookWriter calls before ahead of every Write (with the 1-based number of
// the Write) and counts failed Writes.
type hookWriter struct {
	*store.Store
	n, failed atomic.Int32
	before    func(n int)
}

func (w *hookWriter) Write(ctx context.Context, f *schema.Facts) error {
	if w.before != nil {
		w.before(int(w.n.Add(1)))
	}
	err := w.Store.Write(ctx, f)
	if err != nil {
		w.failed.Add(1)
	}
	return err
}

// TestPipelineOnCluster is the pipeline test on a real replicated, sharded
// cluster (contract §8): migrate twice changes nothing; a run in which the
// preferred replica of shard 1 is killed after the first flushes and
// restarted a few seconds later; a run during which shard 2, its only
// replica, is stopped for a while. After each run the rollups equal the
// reference when read on every node, and verify finds no difference.
func TestPipelineOnCluster(t *testing.T) {
	c := testCluster(t)
	t.Logf("cluster started in %v", shared.took.Round(time.Millisecond))
	b := kafkatest.Brokers(t)[0]
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	p := &pipeline{t: t, brokers: b.Addrs, fiscal: 1, chAddrs: c.Addrs(), cluster: c.Name, db: "t_cluster_" + suffix}
	p.topic, p.dlq = "events-"+suffix, "dlq-"+suffix
	kafkatest.CreateTopic(t, b.Addrs, p.topic, 4)
	kafkatest.CreateTopic(t, b.Addrs, p.dlq, 1)
	ctx := context.Background()

	// migrate, then again: nothing changes on any node.
	st := p.openStore()
	defer st.Close()
	scfg := schema.Config{Database: p.db, FiscalStartMonth: 1, Cluster: c.Name}
	if err := schema.MigrateOn(ctx, st.Topology(), scfg, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		st := p.openStore()
		defer st.Close()
		if err := st.Conn().Exec(context.Background(), "DROP DATABASE IF EXISTS "+p.db+" ON CLUSTER "+c.Name); err != nil {
			t.Logf("drop database: %v", err)
		}
	})
	before := clusterObjects(t, c, p.db)
	if err := schema.MigrateOn(ctx, st.Topology(), scfg, nil); err != nil {
		t.Fatal(err)
	}
	if after := clusterObjects(t, c, p.db); after != before {
		t.Fatalf("a second migrate changed the objects:\nbefore %s\nafter  %s", before, after)
	}

	// Run 1: the preferred replica of shard 1 dies after two flushes and
	// comes back 4 s later.
	p.produce(gen.Config{Seed: 31, Events: 20_000, Accounts: 150, Users: 3_000, Features: 12, Quarters: 3, BadRatio: 0.02, DupRatio: 0.03, EdgeCases: true})
	restarted := make(chan error, 1)
	var hw *hookWriter
	p.tweak = func(cfg *ingest.Config) { cfg.MaxPendingFacts = 2_000 } // many small flushes
	p.writer = func(w ingest.Writer) ingest.Writer {
		hw = &hookWriter{Store: w.(*store.Store), before: func(n int) {
			if n == 2 {
				c.Node(0).Kill()
				go func() {
					time.Sleep(4 * time.Second)
					restarted <- c.Node(0).Restart(context.Background())
				}()
			}
		}}
		return hw
	}
	p.run("g1")
	if n := hw.n.Load(); n < 3 {
		t.Fatalf("only %d flushes: the replica was not killed mid-run", n)
	}
	if err := <-restarted; err != nil {
		t.Fatalf("restart replica %s: %v", c.Node(0).Replica, err)
	}
	t.Logf("run 1: %d flushes, %d failed and retried", hw.n.Load(), hw.failed.Load())
	want := p.checkEveryNode(c)
	if want.Duplicates == 0 || len(want.Rejected) == 0 {
		t.Fatalf("test data has %d duplicates and %d rejects; want both", want.Duplicates, len(want.Rejected))
	}
	p.checkDeadLetters(want)
	p.verifyCluster(st)

	// Run 2: shard 2, its only replica, stops after the first flush and
	// is back 6 s later.
	p.produce(gen.Config{Seed: 32, Events: 8_000, Accounts: 150, Users: 3_000, Features: 12, Quarters: 4, BadRatio: 0.02, DupRatio: 0.03, RecordTime: p.lastRecordTime()})
	var peak atomic.Uint64
	stopSampling := sampleHeap(&peak)
	p.writer = func(w ingest.Writer) ingest.Writer {
		hw = &hookWriter{Store: w.(*store.Store), before: func(n int) {
			if n == 2 {
				if err := c.Node(2).Stop(); err != nil {
					t.Error(err)
				}
				go func() {
					time.Sleep(6 * time.Second)
					restarted <- c.Node(2).Restart(context.Background())
				}()
			}
		}}
		return hw
	}
	p.run("g1")
	stopSampling()
	if n := hw.n.Load(); n < 2 {
		t.Fatalf("only %d flushes: shard 2 was not stopped mid-run", n)
	}
	if err := <-restarted; err != nil {
		t.Fatalf("restart shard 2: %v", err)
	}
	if hw.failed.Load() == 0 {
		t.Fatalf("no write failed: the run did not meet the shard outage")
	}
	t.Logf("run 2: %d flushes, %d failed while shard 2 was down; peak Go heap %d MiB", hw.n.Load(), hw.failed.Load(), peak.Load()>>20)
	if peak.Load() > 512<<20 {
		t.Errorf("Go heap reached %d MiB while a shard was down", peak.Load()>>20)
	}
	want = p.checkEveryNode(c)
	p.checkDeadLetters(want)
	p.verifyCluster(st)
}

// clusterObjects describes db's objects on every node: names, engines and
// definitions, and the number of schema_migrations rows.
func clusterObjects(t *testing.T, c *chcluster.Cluster, db string) string {
	t.Helper()
	var out []string
	for _, n := range c.Nodes() {
		st, err := store.Open(context.Background(), store.Config{Addr: []string{n.Addr}, Database: db}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := st.Conn().Query(context.Background(), "SELECT name, engine, create_table_query FROM system.tables WHERE database = ? ORDER BY name", db)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for rows.Next() {
			var name, engine, q string
			if err := rows.Scan(&name, &engine, &q); err != nil {
				t.Fatal(err)
			}
			names = append(names, name+":"+engine+":"+schemaHash(q))
		}
		rows.Close()
		var applied uint64
		if err := st.Conn().QueryRow(context.Background(), "SELECT count() FROM "+db+".schema_migrations").Scan(&applied); err != nil {
			t.Fatal(err)
		}
		st.Close()
		if len(names) < 17 {
			t.Fatalf("node %s has %d objects of %s, want every table, view and Distributed table: %v", n.Replica, len(names), db, names)
		}
		out = append(out, fmt.Sprintf("%s[%d migrations rows] %s", n.Replica, applied, strings.Join(names, " ")))
	}
	return strings.Join(out, "\n")
}

func schemaHash(q string) string { return strconv.Itoa(len(q)) }

// checkEveryNode waits (up to 90 s) until reading the rollups on every node
// gives the reference, and fails the test if one never does.
func (p *pipeline) checkEveryNode(c *chcluster.Cluster) (want reference.Result) {
	p.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for _, n := range c.Nodes() {
		st, err := store.Open(context.Background(), store.Config{Addr: []string{n.Addr}, Database: p.db}, nil, nil)
		if err != nil {
			p.t.Fatal(err)
		}
		for {
			want, err = p.compare(st)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				st.Close()
				p.t.Fatalf("read on node %s: %v", n.Replica, err)
			}
			time.Sleep(250 * time.Millisecond)
		}
		st.Close()
	}
	return want
}

// verifyCluster runs usagepipe verify's check over every account.
func (p *pipeline) verifyCluster(st *store.Store) {
	p.t.Helper()
	sv, err := schema.NewServedOn(st.Topology(), schema.Config{Database: p.db, FiscalStartMonth: p.fiscal, Cluster: p.cluster})
	if err != nil {
		p.t.Fatal(err)
	}
	var diffs []string
	n, err := sv.Verify(context.Background(), nil, func(d schema.Difference) { diffs = append(diffs, d.Table+" "+d.Key) })
	if err != nil {
		p.t.Fatal(err)
	}
	if len(diffs) > 0 || n == 0 {
		p.t.Fatalf("verify checked %d accounts, %d differences: %v", n, len(diffs), diffs[:min(len(diffs), 5)])
	}
}

// sampleHeap records the peak Go heap in use until the returned func is
// called.
func sampleHeap(peak *atomic.Uint64) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}
