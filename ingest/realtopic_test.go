package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chtest"
	"github.com/usagepipe/usagepipe/schema/store"
)

// Topics that behave like production ones (docs/design.md, "Progress lives
// in ClickHouse"): retention deletes counted records, the group's offsets
// are lost, the topic is re-created, producers are transactional. Every
// case runs on kfake and on Apache Kafka and compares every rollup column
// with the reference over every record the topic ever held.

// newRealTopic is a pipeline over a one-partition topic: one partition
// keeps every record in one offset bucket, where a recount from Kafka
// would show a loss at once.
func newRealTopic(t *testing.T, b *kafkatest.Broker) *pipeline {
	p := &pipeline{t: t, brokers: b.Addrs, fiscal: 1}
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	p.topic, p.dlq = "real-"+suffix, "real-dlq-"+suffix
	kafkatest.CreateTopic(t, b.Addrs, p.topic, 1)
	kafkatest.CreateTopic(t, b.Addrs, p.dlq, 1)
	p.db = chtest.NewDatabase(t)
	return p
}

// logins produces n valid logins of account acme (plus one rejected record
// per 100) with event IDs prefix-i, record timestamps one second apart from
// start, optionally inside a transaction that is committed or aborted.
// Records that end up in the log visibly (committed or plain) are added to
// p.produced under refTopic (the reference's name for the incarnation).
func (p *pipeline) logins(prefix string, n int, start time.Time, txn string, commit bool, refTopic string) {
	p.t.Helper()
	opts := []kgo.Opt{kgo.SeedBrokers(p.brokers...), kgo.DefaultProduceTopic(p.topic)}
	if txn != "" {
		opts = append(opts, kgo.TransactionalID(txn))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		p.t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	if txn != "" {
		if err := cl.BeginTransaction(); err != nil {
			p.t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var got []reference.Record
	for i := range n {
		ts := start.Add(time.Duration(i) * time.Second)
		v := fmt.Sprintf(`{"event_id":"%s-%d","type":"login","account_id":"acme","user_id":"u-%d","occurred_at":%d}`, prefix, i, i%37, ts.UnixMilli())
		if i%100 == 99 {
			v = fmt.Sprintf(`{"event_id":"%s-%d","type":"logout","account_id":"acme","user_id":"u-1","occurred_at":%d}`, prefix, i, ts.UnixMilli())
		}
		cl.Produce(ctx, &kgo.Record{Key: []byte("acme"), Value: []byte(v), Timestamp: ts}, func(r *kgo.Record, err error) {
			if err != nil {
				p.t.Errorf("produce: %v", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			got = append(got, reference.Record{Topic: refTopic, Partition: r.Partition, Offset: r.Offset, TimestampMs: r.Timestamp.UnixMilli(), Key: r.Key, Value: r.Value})
		})
	}
	if err := cl.Flush(ctx); err != nil {
		p.t.Fatal(err)
	}
	if txn != "" {
		if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			p.t.Fatal(err)
		}
	}
	if txn == "" || commit {
		p.produced = append(p.produced, got...)
	}
}

// runReg runs the consumer until caught up, with its metrics in reg.
func (p *pipeline) runReg(group string, reg prometheus.Registerer) {
	p.t.Helper()
	p.runWith(group, reg, false)
}

// runWith is runReg; with assigned, Run starts only once the group has
// assigned the consumer its partitions (franz-go joins as soon as the
// client exists, so an assignment may come before Run's setup).
func (p *pipeline) runWith(group string, reg prometheus.Registerer, assigned bool) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := store.Open(ctx, p.storeConfig(), nil, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	defer st.Close()
	if err := schema.MigrateOn(ctx, st.Topology(), schema.Config{Database: p.db, FiscalStartMonth: p.fiscal, Cluster: p.cluster}, nil); err != nil {
		p.t.Fatal(err)
	}
	c := p.newConsumer(st, group, true, reg)
	for assigned && c.OwnedPartitions() == 0 {
		select {
		case <-ctx.Done():
			p.t.Fatal("no partition assigned before Run")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := c.Run(ctx); err != nil {
		p.t.Fatalf("run: %v", err)
	}
	if ctx.Err() != nil {
		// Run exits cleanly when its context ends (a SIGTERM): that is
		// not catching up.
		p.t.Fatal("run --until-caught-up: not caught up within 3 minutes")
	}
}

func (p *pipeline) admin() *kadm.Client {
	p.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.brokers...))
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// retain deletes every record of partition 0 below the last keep, as
// retention does.
func (p *pipeline) retain(keep int64) {
	p.t.Helper()
	adm := p.admin()
	ctx := context.Background()
	ends, err := adm.ListEndOffsets(ctx, p.topic)
	if err != nil {
		p.t.Fatal(err)
	}
	end, _ := ends.Lookup(p.topic, 0)
	os := kadm.Offsets{}
	os.Add(kadm.Offset{Topic: p.topic, Partition: 0, At: end.Offset - keep})
	resp, err := adm.DeleteRecords(ctx, os)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		p.t.Fatalf("delete records: %v", err)
	}
	starts, err := adm.ListStartOffsets(ctx, p.topic)
	if err != nil {
		p.t.Fatal(err)
	}
	if s, _ := starts.Lookup(p.topic, 0); s.Offset != end.Offset-keep {
		p.t.Fatalf("log start %d after DeleteRecords, want %d", s.Offset, end.Offset-keep)
	}
}

// logins counts the rollups' logins of acme over all quarters.
func (p *pipeline) storedLogins() uint64 {
	p.t.Helper()
	st := p.openStore()
	defer st.Close()
	rows, err := st.ReadRollups(context.Background())
	if err != nil {
		p.t.Fatal(err)
	}
	var n uint64
	for _, r := range rows {
		n += r.Logins
	}
	return n
}

func (p *pipeline) wantLogins(want uint64) {
	p.t.Helper()
	p.wantLoginsOnly(want)
	p.check()
}

// wantLoginsOnly checks the logins without comparing with the reference
// (for what the reference counts differently by design).
func (p *pipeline) wantLoginsOnly(want uint64) {
	p.t.Helper()
	if got := p.storedLogins(); got != want {
		p.t.Fatalf("logins in the rollups: %d, want %d", got, want)
	}
}

// TestRetentionKeepsCounts: records counted once stay counted after
// retention deleted them and after the group's committed offsets are lost
// (issue 10's cases 1 and 2).
func TestRetentionKeepsCounts(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			start := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
			p.logins("a", 3000, start, "", false, p.topic)
			p.runReg("g", nil)
			p.wantLogins(2970) // every hundredth record is rejected

			p.retain(200)
			p.logins("b", 500, start.Add(4000*time.Second), "", false, p.topic)
			p.runReg("g", nil)
			p.wantLogins(2970 + 495)

			// The group's offsets are lost (expired or deleted): the
			// position comes from ClickHouse, nothing is counted twice.
			resp, err := p.admin().DeleteGroups(context.Background(), "g")
			if err == nil {
				err = resp.Error()
			}
			if err != nil {
				t.Fatalf("delete group: %v", err)
			}
			p.retain(100)
			p.logins("c", 400, start.Add(5000*time.Second), "", false, p.topic)
			p.runReg("g", nil)
			p.wantLogins(2970 + 495 + 396)

			// Another group over the same database resumes from the same
			// durable position: the database, not the group, knows what
			// was counted.
			p.runReg("g-other", nil)
			p.wantLogins(2970 + 495 + 396)
			p.checkDeadLetters(reference.Compute(p.produced, reference.Options{}))
		})
	}
}

// countedLogins produces 1000 logins (990 valid) from 30 days ago and
// counts them with group g; it returns their first record's time.
func (p *pipeline) countedLogins() time.Time {
	p.t.Helper()
	start := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
	p.logins("a", 1000, start, "", false, p.topic)
	p.runReg("g", nil)
	p.wantLogins(990)
	return start
}

// countsMore checks that the 990 logins of countedLogins are counted
// once, produces 200 more (198 valid) after them, and checks that a run of
// group g counts those once too.
func (p *pipeline) countsMore(start time.Time) {
	p.t.Helper()
	p.wantLogins(990)
	p.logins("b", 200, start.Add(2000*time.Second), "", false, p.topic)
	p.runReg("g", nil)
	p.wantLogins(990 + 198)
}

// TestStopDuringStartup: a run stopped before its loop started (a SIGTERM
// while it lists the end offsets), after the group assigned its
// partitions, returns the stop's error. Closing the client revokes the
// partitions, and the revoke flushed through a flusher that did not exist
// yet (a nil dereference in franz-go's goroutine: the process died).
func TestStopDuringStartup(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			p.logins("a", 100, time.Now().Add(-time.Hour).Truncate(time.Second), "", false, p.topic)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			st, err := store.Open(ctx, p.storeConfig(), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := schema.MigrateOn(ctx, st.Topology(), schema.Config{Database: p.db, FiscalStartMonth: p.fiscal}, nil); err != nil {
				t.Fatal(err)
			}
			c := p.newConsumer(st, "g", true, nil)
			for c.OwnedPartitions() == 0 {
				select {
				case <-ctx.Done():
					t.Fatal("no partition assigned")
				case <-time.After(10 * time.Millisecond):
				}
			}
			stopped, stop := context.WithCancel(ctx)
			stop()
			if err := c.Run(stopped); !errors.Is(err, context.Canceled) {
				t.Fatalf("Run = %v, want the stop's error", err)
			}
			// Nothing was read: the next run counts everything.
			p.runReg("g", nil)
			p.wantLogins(99)
		})
	}
}

// TestNoProgressRowYet: a partition without a progress row in the
// database writes its position at the first flush, even with no record to
// read, so that --until-caught-up exits (runReg fails when a run does not)
// and the next run resumes from the row. Both ways to get there:
//   - "new database, same group": the group's commits are ahead of the
//     database (a new or emptied database, the same group name). Every
//     retained record is counted into the new database: the database, not
//     the group, knows what was counted there.
//   - "upgrade from v1 commits": a release before progress rows kept its
//     position in the group's commits (metadata "usagepipe/v1
//     dedup_from_ms=…"); the first run resumes from that offset. Before,
//     it took the offset as already written, wrote no row until a record
//     arrived, never exited on an idle partition, and every restart took
//     the v1 path again.
//
// Either way the run ends with progress 1000, the group at 1000 with v2
// metadata, every login counted once, and the next records counted.
func TestNoProgressRowYet(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		for _, tc := range []struct {
			name  string
			setup func(t *testing.T, p *pipeline, start time.Time)
		}{
			{"new database, same group", func(t *testing.T, p *pipeline, _ time.Time) {
				p.db = chtest.NewDatabase(t)
			}},
			{"upgrade from v1 commits", func(t *testing.T, p *pipeline, start time.Time) {
				// Facts, no progress rows, the group's offset committed
				// with v1 metadata.
				conn := chtest.Open(t, p.db)
				ctx := context.Background()
				if err := conn.Exec(ctx, "ALTER TABLE "+p.db+".ingest_progress DELETE WHERE 1"); err != nil {
					t.Fatal(err)
				}
				for deadline := time.Now().Add(30 * time.Second); p.progress().rows > 0; time.Sleep(100 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("progress rows still there 30s after ALTER TABLE … DELETE")
					}
				}
				v1 := kadm.Offsets{}
				v1.Add(kadm.Offset{Topic: p.topic, Partition: 0, At: 1000, LeaderEpoch: -1,
					Metadata: "usagepipe/v1 dedup_from_ms=" + strconv.FormatInt(start.UnixMilli(), 10)})
				if resp, err := p.admin().CommitOffsets(ctx, "g", v1); err != nil || resp.Error() != nil {
					t.Fatalf("commit v1 offsets: %v %v", err, resp.Error())
				}
			}},
		} {
			t.Run(b.Kind+"/"+tc.name, func(t *testing.T) {
				p := newRealTopic(t, b)
				start := p.countedLogins()
				tc.setup(t, p, start)

				p.runReg("g", nil) // no new record: must exit
				if pr := p.progress(); pr.rows == 0 || pr.next != 1000 {
					t.Fatalf("after the run: %d progress rows, next_offset %d; want 1000 written", pr.rows, pr.next)
				}
				committed, err := p.admin().FetchOffsets(context.Background(), "g")
				if err != nil {
					t.Fatal(err)
				}
				if o, ok := committed.Lookup(p.topic, 0); !ok || o.At != 1000 || !strings.HasPrefix(o.Metadata, "usagepipe/v2 ") {
					t.Fatalf("group offset after the run: %+v, want 1000 with v2 metadata", o)
				}
				p.countsMore(start)
			})
		}
	}
}

// progress is the database's ingest_progress: rows and greatest position.
func (p *pipeline) progress() (pr struct{ rows, next uint64 }) {
	p.t.Helper()
	st := p.openStore()
	defer st.Close()
	q := "SELECT count(), max(next_offset) FROM " + p.db + ".ingest_progress"
	if err := st.Conn().QueryRow(context.Background(), q).Scan(&pr.rows, &pr.next); err != nil {
		p.t.Fatal(err)
	}
	return pr
}

// TestRecreatedTopicCountsBothIncarnations: a topic deleted and re-created
// under the same name restarts its offsets at 0; the records of both
// incarnations count.
func TestRecreatedTopicCountsBothIncarnations(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			start := p.countedLogins()

			adm := p.admin()
			ctx := context.Background()
			if resp, err := adm.DeleteTopics(ctx, p.topic); err != nil || resp.Error() != nil {
				t.Fatalf("delete topic: %v %v", err, resp.Error())
			}
			recreate(t, adm, p.topic)
			// Different event IDs: whether a record of one incarnation
			// duplicates one of the other is not the question here.
			p.logins("b", 300, start.Add(2000*time.Second), "", false, p.topic+"#2")
			p.runReg("g", nil)
			p.wantLogins(990 + 297)
		})
	}
}

// recreate creates topic again once the broker has finished deleting it.
func recreate(t *testing.T, adm *kadm.Client, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		resp, err := adm.CreateTopic(ctx, 1, -1, nil, topic)
		if err == nil {
			err = resp.Err
		}
		if err == nil {
			break
		}
		if !errors.Is(err, kerr.TopicAlreadyExists) || ctx.Err() != nil {
			t.Fatalf("re-create topic: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for {
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err == nil && ends.Error() == nil {
			if o, ok := ends.Lookup(topic, 0); ok && o.Offset == 0 {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("re-created topic not usable: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTransactionalTopic: committed transactions count, aborted ones never
// do, and a partition that ends in transaction markers is caught up:
// --until-caught-up exits, the lag gauge and the group's lag are 0.
func TestTransactionalTopic(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			start := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
			p.logins("a", 500, start, "tx-"+p.topic, true, p.topic)
			p.logins("b", 300, start.Add(600*time.Second), "tx-"+p.topic, false, p.topic)
			p.logins("c", 200, start.Add(1000*time.Second), "tx-"+p.topic, true, p.topic)
			p.logins("d", 100, start.Add(1300*time.Second), "tx-"+p.topic, false, p.topic) // the log ends in an abort marker
			p.runReg("g", nil)                                                             // must return: the test's deadline fails a hang
			p.wantLogins(495 + 198)
			p.checkDeadLetters(reference.Compute(p.produced, reference.Options{}))

			adm := p.admin()
			lags, err := adm.Lag(context.Background(), "g")
			if err != nil {
				t.Fatal(err)
			}
			var total int64
			lags.Each(func(l kadm.DescribedGroupLag) {
				for _, ps := range l.Lag {
					for _, pl := range ps {
						if pl.Err != nil {
							t.Fatalf("group lag: %v", pl.Err)
						}
						total += pl.Lag
					}
				}
			})
			if total != 0 {
				t.Fatalf("the group's committed offsets lag the end by %d, want 0", total)
			}

			// A long-running consumer (a new database: it reads the topic
			// again) shows a lag of 0 once it has read everything.
			p.db = chtest.NewDatabase(t)
			reg := prometheus.NewRegistry()
			stop := p.start("g-live", reg)
			deadline := time.Now().Add(time.Minute)
			for {
				if lag, ok := gauge(t, reg, "usagepipe_consumer_lag_records"); ok && lag == 0 &&
					counter(t, reg, "usagepipe_records_consumed_total") == float64(700) {
					break
				}
				if time.Now().After(deadline) {
					lag, _ := gauge(t, reg, "usagepipe_consumer_lag_records")
					t.Fatalf("lag gauge %v, %v records consumed, after a minute; want 0 and 700", lag, counter(t, reg, "usagepipe_records_consumed_total"))
				}
				time.Sleep(50 * time.Millisecond)
			}
			stop()
			p.wantLogins(495 + 198)
		})
	}
}

// gauge sums the series of a gauge; ok is false while it has none.
func gauge(t *testing.T, g prometheus.Gatherer, name string) (sum float64, ok bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			ok = true
			sum += m.GetGauge().GetValue()
		}
	}
	return sum, ok
}

func counter(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// start runs a consumer until the returned stop is called; stop waits for
// it and fails the test on an error.
func (p *pipeline) start(group string, reg prometheus.Registerer) (stop func()) {
	p.t.Helper()
	_, stop = p.startConsumer(group, reg)
	return stop
}

// startConsumer is start, returning the running consumer too.
func (p *pipeline) startConsumer(group string, reg prometheus.Registerer) (*ingest.Consumer, func()) {
	p.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, store.Config{Addr: []string{chtest.Addr()}, Database: p.db}, nil, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: p.db, FiscalStartMonth: p.fiscal}, nil); err != nil {
		p.t.Fatal(err)
	}
	c := p.newConsumer(st, group, false, reg)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return c, func() {
		cancel()
		if err := <-done; err != nil {
			p.t.Errorf("run: %v", err)
		}
		st.Close()
	}
}

// TestTopicRecreatedWhileRunning: a running consumer whose topic is deleted
// and re-created writes what it read and stops with ErrTopicRecreated (the
// client would otherwise fetch the deleted incarnation forever); the next
// run counts the new incarnation.
func TestTopicRecreatedWhileRunning(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			start := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
			p.logins("a", 400, start, "", false, p.topic)
			reg := prometheus.NewRegistry()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			st, err := store.Open(ctx, store.Config{Addr: []string{chtest.Addr()}, Database: p.db}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: p.db, FiscalStartMonth: 1}, nil); err != nil {
				t.Fatal(err)
			}
			cfg := ingest.Defaults()
			cfg.FiscalStartMonth = p.fiscal
			cfg.Brokers, cfg.Topic, cfg.DLQTopic, cfg.Group = p.brokers, p.topic, p.dlq, "g"
			cfg.FlushInterval = 200 * time.Millisecond
			c, err := ingest.New(cfg, st, nil, reg)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			for counter(t, reg, "usagepipe_records_consumed_total") < 400 {
				if ctx.Err() != nil {
					t.Fatal("the first 400 records were not consumed")
				}
				time.Sleep(20 * time.Millisecond)
			}
			adm := p.admin()
			if resp, err := adm.DeleteTopics(ctx, p.topic); err != nil || resp.Error() != nil {
				t.Fatalf("delete topic: %v %v", err, resp.Error())
			}
			recreate(t, adm, p.topic)
			p.logins("b", 200, start.Add(1000*time.Second), "", false, p.topic+"#2")
			if err := <-done; !errors.Is(err, ingest.ErrTopicRecreated) {
				t.Fatalf("run returned %v, want ErrTopicRecreated", err)
			}
			p.wantLoginsWritten(396)
			p.runReg("g", nil)
			p.wantLogins(396 + 198)
		})
	}
}

// TestCleanStopLeavesGroup: a consumer stopped cleanly (SIGTERM: Run's
// context ends) writes what it read, commits, and leaves the group, so
// the next member gets the partitions at once instead of after the
// stopped one's session timeout (60 s here): right after Run returned the
// group has no member. The next run counts what came after, once.
func TestCleanStopLeavesGroup(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			p.tweak = func(c *ingest.Config) { c.SessionTimeout = time.Minute }
			start := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
			p.logins("a", 300, start, "", false, p.topic)
			reg := prometheus.NewRegistry()
			_, stop := p.startConsumer("g", reg)
			for deadline := time.Now().Add(time.Minute); counter(t, reg, "usagepipe_records_consumed_total") < 300; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the 300 records were not consumed within a minute")
				}
			}
			stop()
			p.wantLoginsWritten(297)
			ctx := context.Background()
			groups, err := p.admin().DescribeGroups(ctx, "g")
			if err == nil {
				err = groups.Error()
			}
			if err != nil {
				t.Fatalf("describe group: %v", err)
			}
			if g := groups["g"]; len(g.Members) != 0 {
				t.Fatalf("group g after a clean stop: state %s, %d members; want none (the stopped consumer left)", g.State, len(g.Members))
			}
			committed, err := p.admin().FetchOffsets(ctx, "g")
			if err != nil {
				t.Fatal(err)
			}
			if o, ok := committed.Lookup(p.topic, 0); !ok || o.At != 300 {
				t.Fatalf("committed after a clean stop: %+v, want offset 300", o)
			}

			p.logins("b", 100, start.Add(1000*time.Second), "", false, p.topic)
			p.runReg("g", nil)
			p.wantLogins(297 + 99)
		})
	}
}

// TestCleanStopCommitsAgain: when the last flush before a stop has nothing
// new, the commit of the flush before it may not have landed (it is
// asynchronous and given up after a second, e.g. while the coordinator
// moves). The stop commits every position it flushed once more,
// synchronously, so the group is not left behind the database. kfake
// fails every commit while the records are read and flushed, then lets
// them through; the group must end at 300.
func TestCleanStopCommitsAgain(t *testing.T) {
	cl := kafkatest.Kfake(t)
	var failing atomic.Bool
	var failed300 atomic.Int32
	failing.Store(true)
	cl.ControlKey(int16(kmsg.OffsetCommit), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		cl.KeepControl()
		if !failing.Load() {
			return nil, nil, false
		}
		req := kreq.(*kmsg.OffsetCommitRequest)
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				if rp.Offset == 300 {
					failed300.Add(1)
				}
			}
		}
		return kafkatest.FailCommit(req, kerr.OffsetMetadataTooLarge.Code), nil, true
	})
	p := newRealTopic(t, &kafkatest.Broker{Addrs: cl.ListenAddrs(), Kind: kafkatest.KindKfake})
	p.logins("a", 300, time.Now().Add(-30*24*time.Hour).Truncate(time.Second), "", false, p.topic)
	_, stop := p.startConsumer("g", nil)
	for deadline := time.Now().Add(time.Minute); failed300.Load() == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no commit of offset 300 within a minute")
		}
	}
	failing.Store(false)
	stop()
	p.wantLoginsWritten(297)
	committed, err := p.admin().FetchOffsets(context.Background(), "g")
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := committed.Lookup(p.topic, 0); !ok || o.At != 300 {
		t.Fatalf("committed after a clean stop whose earlier commits failed: %+v (found %v), want offset 300", o, ok)
	}
}

// wantLoginsWritten checks that exactly the first incarnation's logins were
// written before the consumer stopped.
func (p *pipeline) wantLoginsWritten(n uint64) {
	p.t.Helper()
	if got := p.storedLogins(); got != n {
		p.t.Fatalf("logins written before the stop: %d, want %d", got, n)
	}
}

// newConsumer is a consumer of the pipeline's topic in group writing to
// st, with p.tweak and p.writer applied.
func (p *pipeline) newConsumer(st *store.Store, group string, untilCaughtUp bool, reg prometheus.Registerer) *ingest.Consumer {
	p.t.Helper()
	cfg := ingest.Defaults()
	cfg.FiscalStartMonth = p.fiscal
	cfg.Brokers, cfg.Topic, cfg.DLQTopic, cfg.Group = p.brokers, p.topic, p.dlq, group
	cfg.FlushInterval = 200 * time.Millisecond
	cfg.UntilCaughtUp = untilCaughtUp
	if p.tweak != nil {
		p.tweak(&cfg)
	}
	var w ingest.Writer = st
	if p.writer != nil {
		w = p.writer(st)
	}
	c, err := ingest.New(cfg, w, nil, reg)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

// waitProgress waits until the progress row of partition 0 reaches next.
func (p *pipeline) waitProgress(next uint64) {
	p.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); p.progress().next < next; {
		if time.Now().After(deadline) {
			p.t.Fatalf("progress %+v, want next %d", p.progress(), next)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestUntilCaughtUpWithoutPartitions: a `run --until-caught-up` that shares
// its group with a running instance owning every partition gets none; it
// exits once the group's progress rows reach its targets (it waited
// forever: it read progress only after an assignment of its own; found by
// an audit).
func TestUntilCaughtUpWithoutPartitions(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			p.logins("a", 300, time.Now().Add(-30*24*time.Hour).Truncate(time.Second), "", false, p.topic)
			stopA := p.start("g", prometheus.NewRegistry())
			defer stopA()
			p.waitProgress(300)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st, err := store.Open(ctx, p.storeConfig(), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			c := p.newConsumer(st, "g", true, nil)
			if err := c.Run(ctx); err != nil || ctx.Err() != nil {
				t.Fatalf("--until-caught-up without a partition did not exit by itself within 30 s: %v, %v (progress %+v)", err, ctx.Err(), p.progress())
			}
			if n := c.OwnedPartitions(); n != 0 {
				t.Fatalf("the second member owns %d partitions: this run does not test a member without any", n)
			}
		})
	}
}

// TestRetentionEmptiedPartition: retention deleted, before anyone read
// them, every record after the durable position. They are lost (and
// counted once), but nothing is left to read: the lag is 0, the instance
// is ready, and the position moves to the log start, so the next start
// does not count them lost again (the lag stayed 50 and /readyz down
// forever, and every start counted the 50 again; found by an audit).
func TestRetentionEmptiedPartition(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			start := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
			p.logins("a", 100, start, "", false, p.topic)
			p.runReg("g", nil)
			p.logins("b", 50, start.Add(200*time.Second), "", false, p.topic)
			p.retain(0)
			p.tweak = func(c *ingest.Config) { c.ReadyStallTimeout = 2 * time.Second }
			reg := prometheus.NewRegistry()
			c, stop := p.startConsumer("g", reg)
			p.waitProgress(150)
			time.Sleep(3 * time.Second) // past the stall timeout
			lag, _ := gauge(t, reg, "usagepipe_consumer_lag_records")
			ready, why := c.Ready()
			stop()
			if lag != 0 {
				t.Errorf("lag %v with nothing left to read, want 0", lag)
			}
			if !ready {
				t.Errorf("not ready with nothing left to read: %s", why)
			}
			if n := counter(t, reg, "usagepipe_records_expired_unread_total"); n != 50 {
				t.Errorf("usagepipe_records_expired_unread_total = %v, want 50", n)
			}
			again := prometheus.NewRegistry()
			p.runReg("g", again)
			if n := counter(t, again, "usagepipe_records_expired_unread_total"); n != 0 {
				t.Errorf("the next start counted %v records lost again", n)
			}
			p.wantLoginsOnly(99)
		})
	}
}

// TestDeadLetterTopicMissing: while the dead-letter topic does not exist,
// flushes wait (nothing is recorded or committed past an undelivered dead
// letter) and usagepipe_dlq_errors_total says why: the flush errors alone
// looked like a ClickHouse outage (found by an audit). Once the topic
// exists, the same run delivers every dead letter and goes on.
func TestDeadLetterTopicMissing(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := &pipeline{t: t, brokers: b.Addrs, fiscal: 1}
			suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
			p.topic, p.dlq = "real-"+suffix, "missing-dlq-"+suffix
			kafkatest.CreateTopic(t, b.Addrs, p.topic, 1)
			p.db = chtest.NewDatabase(t)
			p.logins("a", 200, time.Now().Add(-2*time.Hour).Truncate(time.Second), "", false, p.topic)
			reg := prometheus.NewRegistry()
			_, stop := p.startConsumer("g", reg)
			for deadline := time.Now().Add(30 * time.Second); counter(t, reg, "usagepipe_dlq_errors_total") == 0; {
				if time.Now().After(deadline) {
					t.Fatal("no dead-letter error counted while the topic is missing")
				}
				time.Sleep(100 * time.Millisecond)
			}
			if pr := p.progress(); pr.next > 0 {
				t.Fatalf("progress %d past undelivered dead letters", pr.next)
			}
			kafkatest.CreateTopic(t, b.Addrs, p.dlq, 1)
			p.waitProgress(200)
			stop()
			p.checkDeadLetters(p.check())
		})
	}
}

// TestAbortedBelowOpenTransaction: producer A's transaction is aborted
// after producer B's began, so A's records lie just below the last stable
// offset (B's first record) and A's abort marker above it. The client
// returns none of A's records, and nothing else until B's transaction
// ends; the consumer finds by a fetch of its own that those offsets hold
// only aborted records and moves its position past them (aborted.go):
// --until-caught-up exits with B still open, its progress at the last
// stable offset, and a running consumer's lag 0. Before, both waited for
// B's transaction (here two minutes). Then B commits and its record counts.
func TestAbortedBelowOpenTransaction(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			start := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
			p.logins("c", 100, start, "", false, p.topic) // offsets 0–99
			ctx := context.Background()
			txn := func(id string) *kgo.Client {
				cl, err := kgo.NewClient(kgo.SeedBrokers(p.brokers...), kgo.DefaultProduceTopic(p.topic),
					kgo.TransactionalID(id+p.topic), kgo.TransactionTimeout(2*time.Minute))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(cl.Close)
				if err := cl.BeginTransaction(); err != nil {
					t.Fatal(err)
				}
				return cl
			}
			value := func(id string, ts time.Time) []byte {
				return fmt.Appendf(nil, `{"event_id":%q,"type":"login","account_id":"acme","user_id":"u-b","occurred_at":%d}`, id, ts.UnixMilli())
			}
			a := txn("ta-")
			for i := range 50 { // offsets 100–149, aborted below
				ts := start.Add(time.Duration(200+i) * time.Second)
				if err := a.ProduceSync(ctx, &kgo.Record{Key: []byte("acme"), Value: value(fmt.Sprint("a-", i), ts), Timestamp: ts}).FirstErr(); err != nil {
					t.Fatal(err)
				}
			}
			bc := txn("tb-")
			ts := start.Add(300 * time.Second)
			brec := &kgo.Record{Key: []byte("acme"), Value: value("b-0", ts), Timestamp: ts}
			if err := bc.ProduceSync(ctx, brec).FirstErr(); err != nil { // offset 150: the last stable offset while open
				t.Fatal(err)
			}
			if err := a.EndTransaction(ctx, kgo.TryAbort); err != nil { // its marker lands above B's record
				t.Fatal(err)
			}
			if brec.Offset != 150 {
				t.Fatalf("B's record at offset %d, want 150", brec.Offset)
			}

			reg := prometheus.NewRegistry()
			done := make(chan struct{})
			go func() { defer close(done); p.runReg("g", reg) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Error("--until-caught-up still waiting after 30 s: the aborted records below the open transaction held the position")
				if err := bc.EndTransaction(ctx, kgo.TryAbort); err != nil { // lets the run end
					t.Error(err)
				}
				<-done
				return
			}
			if pr := p.progress(); pr.next != 150 {
				t.Errorf("progress at %d, want the last stable offset 150", pr.next)
			}
			p.wantLogins(99)

			// A long-running consumer (another database: it reads the
			// topic again) shows a lag of 0 with B still open.
			db := p.db
			p.db = chtest.NewDatabase(t)
			live := prometheus.NewRegistry()
			stop := p.start("g-live", live)
			deadline := time.Now().Add(30 * time.Second)
			for {
				if lag, ok := gauge(t, live, "usagepipe_consumer_lag_records"); ok && lag == 0 &&
					counter(t, live, "usagepipe_records_consumed_total") == 100 {
					break
				}
				if time.Now().After(deadline) {
					lag, _ := gauge(t, live, "usagepipe_consumer_lag_records")
					t.Fatalf("lag gauge %v after 30 s with B open, want 0", lag)
				}
				time.Sleep(50 * time.Millisecond)
			}
			stop()
			p.db = db

			if err := bc.EndTransaction(ctx, kgo.TryCommit); err != nil {
				t.Fatal(err)
			}
			p.produced = append(p.produced, reference.Record{Topic: p.topic, Partition: brec.Partition, Offset: brec.Offset,
				TimestampMs: brec.Timestamp.UnixMilli(), Key: brec.Key, Value: brec.Value})
			p.runReg("g", nil)
			p.wantLogins(100) // and every rollup column against the reference
		})
	}
}
