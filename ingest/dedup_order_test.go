package ingest_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/ingest/dedup"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema/chtest"
)

// Duplicates in any timestamp order (contract section 2; docs/design.md,
// "The duplicate filter"), on kfake and Apache Kafka: imports whose record
// timestamps go back by months, re-sends long after, copies of copies,
// window edges, restarts between copies. Every case compares every rollup
// column with the reference, which applies section 2 literally.

// loginAt is one login record: event ID and Kafka timestamp (= occurred_at).
type loginAt struct {
	id string
	ts time.Time
}

// produceLogins produces the records in order, one partition, as a bulk
// loader does (record timestamp = event time).
func (p *pipeline) produceLogins(recs []loginAt) {
	p.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.brokers...), kgo.DefaultProduceTopic(p.topic), kgo.MaxBufferedRecords(1<<20))
	if err != nil {
		p.t.Fatal(err)
	}
	defer cl.Close()
	var mu sync.Mutex
	for i, r := range recs {
		v := fmt.Sprintf(`{"event_id":%q,"type":"login","account_id":"acme","user_id":"u-%d","occurred_at":%d}`, r.id, i%53, r.ts.UnixMilli())
		cl.Produce(context.Background(), &kgo.Record{Key: []byte("acme"), Value: []byte(v), Timestamp: r.ts}, func(r *kgo.Record, err error) {
			if err != nil {
				p.t.Errorf("produce: %v", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			p.produced = append(p.produced, reference.Record{Topic: p.topic, Partition: r.Partition, Offset: r.Offset, TimestampMs: r.Timestamp.UnixMilli(), Key: r.Key, Value: r.Value})
		})
	}
	if err := cl.Flush(context.Background()); err != nil {
		p.t.Fatal(err)
	}
}

// spread returns n logins prefix-0… evenly over [from, to).
func spread(prefix string, n int, from, to time.Time) []loginAt {
	out := make([]loginAt, n)
	step := to.Sub(from) / time.Duration(n)
	for i := range out {
		out[i] = loginAt{fmt.Sprint(prefix, i), from.Add(time.Duration(i) * step).Truncate(time.Millisecond)}
	}
	return out
}

func utc(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC) }

// TestImportReRun is issue 11's case: an import of Jan–Jun 2026, then an
// older Jul–Dec 2025 file, then a crashed job re-sends the first import's
// last 300 records with their original timestamps. All 300 are duplicates;
// with and without a restart between the copies.
func TestImportReRun(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		for _, restart := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/restart=%v", b.Kind, restart), func(t *testing.T) {
				p := newRealTopic(t, b)
				first := spread("h1-", 3000, utc(2026, 1, 1), utc(2026, 7, 1))
				p.produceLogins(first)
				p.produceLogins(spread("h2-", 3000, utc(2025, 7, 1), utc(2026, 1, 1)))
				var regs registries
				if restart {
					p.runReg("g", regs.next())
					p.wantLogins(6000)
				}
				p.produceLogins(first[2700:])
				p.runReg("g", regs.next())
				p.wantLogins(6000)
				if n := regs.sum(t, "usagepipe_dedup_recoveries_total"); n == 0 {
					t.Error("no recovery: the re-sent copies were found without re-reading, so this run proves nothing about recovery")
				}
				if n := regs.sum(t, "usagepipe_events_duplicate_total"); n != 300 {
					t.Errorf("usagepipe_events_duplicate_total = %v, want 300", n)
				}
				if n := regs.sum(t, "usagepipe_dedup_unrecoverable_total"); n != 0 {
					t.Errorf("usagepipe_dedup_unrecoverable_total = %v with nothing deleted", n)
				}
			})
		}
	}
}

// TestDuplicatesAnyOrder: copies whose timestamps jump back and forth by
// months across the window, copies of copies, and the window's edges
// (±1 ms), with restarts between some copies.
func TestDuplicatesAnyOrder(t *testing.T) {
	const w = 24 * time.Hour
	ms := time.Millisecond
	t0 := utc(2026, 3, 10)
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			filler := func(prefix string, from time.Time) []loginAt { // 10 days of records: evicts what came before
				return spread(prefix, 240, from, from.Add(10*24*time.Hour))
			}
			var batches [][]loginAt
			batches = append(batches,
				append([]loginAt{{"a", t0}, {"b", t0}, {"c", t0}, {"d", t0}, {"e", t0}}, filler("f1-", t0.Add(time.Hour))...),
				append([]loginAt{
					{"a", t0.Add(w)},              // the window's edge: a duplicate
					{"b", t0.Add(-w - ms)},        // 1 ms beyond it, earlier: counted
					{"c", t0.Add(w + ms)},         // 1 ms beyond it, later: counted
					{"d", t0.Add(-w)},             // the edge, earlier: a duplicate
					{"e", t0.Add(20 * time.Hour)}, // a duplicate, copied below
				}, filler("f2-", utc(2026, 8, 1))...),
				append([]loginAt{
					{"e", t0.Add(40 * time.Hour)}, // a copy of the copy: 20h from it, 40h from the first
					{"b", t0.Add(-w - 2*ms)},      // 1 ms from the counted earlier b: a duplicate
				}, filler("f3-", utc(2025, 11, 1))...),
				[]loginAt{
					{"c", t0.Add(2*w + ms)},                   // the edge of the counted later c: a duplicate
					{"e", t0.Add(65 * time.Hour)},             // beyond the window of all three e: counted
					{"f1-3", t0.Add(time.Hour + 3*time.Hour)}, // a filler record re-sent months later: a duplicate
				},
			)
			var regs registries
			for i, batch := range batches {
				p.produceLogins(batch)
				if i%2 == 1 { // a restart between some copies
					p.runReg("g", regs.next())
				}
			}
			p.runReg("g", regs.next())
			want := reference.Compute(p.produced, reference.Options{})
			if want.Duplicates != 7 {
				t.Fatalf("the reference finds %d duplicates, want the 7 this test is built around", want.Duplicates)
			}
			p.check()
			if n := regs.sum(t, "usagepipe_events_duplicate_total"); n != 7 {
				t.Errorf("usagepipe_events_duplicate_total = %v, want 7", n)
			}
			if n := regs.sum(t, "usagepipe_dedup_recoveries_total"); n == 0 {
				t.Error("no recovery happened")
			}
		})
	}
}

// registries gives each run of a test its own registry and sums a counter
// over all of them.
type registries []*prometheus.Registry

func (r *registries) next() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	*r = append(*r, reg)
	return reg
}

func (r registries) sum(t *testing.T, name string) float64 {
	var n float64
	for _, reg := range r {
		n += counter(t, reg, name)
	}
	return n
}

// wantExact checks a run that must be exact (contract section 2): the
// reference accepts accepted records and finds duplicates, the rollups
// hold accepted logins, and the runs counted duplicates as such.
func (p *pipeline) wantExact(regs registries, accepted, duplicates int) {
	p.t.Helper()
	want := reference.Compute(p.produced, reference.Options{})
	if want.Accepted != accepted || want.Duplicates != duplicates {
		p.t.Fatalf("reference: %d accepted, %d duplicates; want %d and %d", want.Accepted, want.Duplicates, accepted, duplicates)
	}
	p.wantLoginsOnly(uint64(accepted))
	if n := regs.sum(p.t, "usagepipe_events_duplicate_total"); n != float64(duplicates) {
		p.t.Errorf("usagepipe_events_duplicate_total = %v, want %d", n, duplicates)
	}
}

// TestDedupAfterRetention: retention deleted records still inside the dedup
// window. Copies of kept and of deleted records are both duplicates: the
// deleted ones are recognised from the archive of event IDs (docs/design.md,
// "Durable event IDs"; before it, the copy of a deleted record was counted
// and reported in usagepipe_dedup_unrecoverable_total). Records one an
// hour; after a restart the filter is rebuilt from record 474 (the floor).
//   - "through a floor move": records 0–489 deleted; the copy of 480 moves
//     the floor down.
//   - "above the floor": records 0–498 deleted, newer than the floor, so
//     the copy's window does not move it: the archive's hours of deleted
//     records become holes at the assignment (fails without them).
func TestDedupAfterRetention(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		for _, tc := range []struct {
			name   string
			keep   int64 // records retention keeps
			copies []int // records sent again
		}{
			{"through a floor move", 10, []int{495, 480}},
			{"above the floor", 1, []int{498, 499}},
		} {
			t.Run(b.Kind+"/"+tc.name, func(t *testing.T) {
				p := newRealTopic(t, b)
				recs := spread("r-", 500, utc(2026, 2, 1), utc(2026, 2, 1).Add(500*time.Hour))
				p.produceLogins(recs)
				var regs registries
				p.runReg("g", regs.next())
				p.retain(tc.keep)
				var again []loginAt
				for _, i := range tc.copies {
					again = append(again, recs[i])
				}
				p.produceLogins(again)
				p.runReg("g", regs.next())
				p.wantExact(regs, 500, 2)
				if n := regs.sum(t, "usagepipe_dedup_unrecoverable_total"); n != 0 {
					t.Errorf("usagepipe_dedup_unrecoverable_total = %v, want 0: the archive holds every deleted record", n)
				}
			})
		}
	}
}

// TestDedupRetentionDuringAssignment: retention moves the log start past
// the offset an assignment asked for after the assignment listed it and
// before the first fetch (kfake holds that fetch while records are
// deleted), so the client goes on from the new log start. The records it
// skipped were neither replayed into the filter nor covered by the
// archive's holes: the first record's window must recover them (a review
// found it counted the copy of one).
func TestDedupRetentionDuringAssignment(t *testing.T) {
	c := kafkatest.Kfake(t)
	p := newRealTopic(t, &kafkatest.Broker{Addrs: c.ListenAddrs(), Kind: kafkatest.KindKfake})
	recs := spread("r-", 500, utc(2026, 2, 1), utc(2026, 2, 1).Add(500*time.Hour)) // one an hour
	p.produceLogins(recs)
	var regs registries
	p.runReg("g", regs.next())
	p.produceLogins([]loginAt{recs[498], recs[499]})
	var once sync.Once
	deleted := false
	c.ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, tp := range req.(*kmsg.FetchRequest).Topics {
			for _, pp := range tp.Partitions {
				if pp.FetchOffset > 0 && pp.FetchOffset < 499 {
					// The replay of the second run: delete up to record 499.
					once.Do(func() { c.SleepControl(func() { p.retain(3); deleted = true }) })
				}
			}
		}
		return nil, nil, false
	})
	p.runReg("g", regs.next())
	if !deleted {
		t.Fatal("no fetch below record 499: nothing was deleted during the assignment, so this run proves nothing")
	}
	p.wantExact(regs, 500, 2)
}

// TestDedupArchiveAfterUpgrade: a database whose progress rows were
// written by a release before the archive of event IDs (ids_from -1, no
// dedup_ids rows). The upgraded run archives from its position on: a copy
// of a record it archived and retention deleted is a duplicate; a copy of
// an older deleted record cannot be recognised, is counted and reported in
// usagepipe_dedup_unrecoverable_total.
func TestDedupArchiveAfterUpgrade(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			old := spread("a-", 100, utc(2026, 2, 1), utc(2026, 2, 1).Add(100*time.Hour)) // one an hour
			p.produceLogins(old)
			var regs registries
			p.runReg("g", regs.next())
			// What the release before the archive leaves behind.
			conn := chtest.Open(t, p.db)
			ctx := context.Background()
			for _, q := range []string{
				"ALTER TABLE " + p.db + ".ingest_progress UPDATE ids_from = -1 WHERE 1",
				"ALTER TABLE " + p.db + ".dedup_ids DELETE WHERE 1",
			} {
				if err := conn.Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				var left uint64
				q := "SELECT (SELECT count() FROM " + p.db + ".ingest_progress WHERE ids_from != -1) + (SELECT count() FROM " + p.db + ".dedup_ids)"
				if err := conn.QueryRow(ctx, q).Scan(&left); err != nil {
					t.Fatal(err)
				}
				if left == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("mutations not done after 30 s")
				}
			}
			newer := spread("b-", 100, utc(2026, 2, 1).Add(100*time.Hour), utc(2026, 2, 1).Add(200*time.Hour))
			p.produceLogins(newer)
			p.runReg("g", regs.next()) // the upgraded release: archives offsets 100–199
			p.retain(0)
			p.produceLogins([]loginAt{old[99], newer[99]})
			p.runReg("g", regs.next())
			want := reference.Compute(p.produced, reference.Options{})
			if want.Accepted != 200 || want.Duplicates != 2 {
				t.Fatalf("reference: %d accepted, %d duplicates; want 200 and 2", want.Accepted, want.Duplicates)
			}
			p.wantLoginsOnly(201) // the copy of a-99: deleted before the archive began
			if n := regs.sum(t, "usagepipe_events_duplicate_total"); n != 1 {
				t.Errorf("usagepipe_events_duplicate_total = %v, want 1 (the copy of b-99)", n)
			}
			if n := regs.sum(t, "usagepipe_dedup_unrecoverable_total"); n < 1 {
				t.Error("the copy of a record deleted before the archive began was not reported")
			}
		})
	}
}

// TestDedupRetentionBeforeFlush: retention deletes a record the consumer
// has decided but not yet flushed (a consumer reading at the log start),
// after a later record evicted its hour; a copy's window then reaches that
// hour. The record is in neither Kafka nor the archive yet: the recovery
// takes it from the entries waiting for the flush (a review found it
// counted, unreported). kfake hands out one record per fetch and holds the
// third fetch while the first record is deleted.
func TestDedupRetentionBeforeFlush(t *testing.T) {
	c := kafkatest.Kfake(t)
	p := newRealTopic(t, &kafkatest.Broker{Addrs: c.ListenAddrs(), Kind: kafkatest.KindKfake})
	p.tweak = func(cfg *ingest.Config) {
		cfg.FlushInterval = time.Hour // nothing flushed before the run has read all three
		cfg.ConnOpts = append(cfg.ConnOpts, kgo.FetchMaxPartitionBytes(1), kgo.FetchMaxBytes(1))
	}
	ts := utc(2026, 3, 1)
	p.produceLogins([]loginAt{{"x", ts}})                     // offset 0
	p.produceLogins([]loginAt{{"x", ts.Add(26 * time.Hour)}}) // 1: more than the window + 1h later, evicts 0's hour
	p.produceLogins([]loginAt{{"x", ts.Add(time.Hour)}})      // 2: a copy of 0
	var once sync.Once
	deleted := false
	c.ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		for _, tp := range req.(*kmsg.FetchRequest).Topics {
			for _, pp := range tp.Partitions {
				if pp.FetchOffset == 2 {
					once.Do(func() { c.SleepControl(func() { p.retain(2); deleted = true }) })
				}
			}
		}
		return nil, nil, false
	})
	var regs registries
	p.runReg("g", regs.next())
	if !deleted {
		t.Fatal("no fetch at offset 2: the records came in one fetch, so this run proves nothing")
	}
	p.wantExact(regs, 2, 1)
	if n := regs.sum(t, "usagepipe_dedup_recoveries_total"); n == 0 {
		t.Error("no recovery: the copy's window did not reach the evicted hour, so this run proves nothing")
	}
}

// TestDedupAfterRetentionOldKept: retention deleted a record whose
// timestamp is newer than the records kept right after it (a backfill), so
// Kafka's listing by timestamp, which knows only the kept records, points
// past them. A copy of the deleted record after a restart moves the floor
// down; the archive of event IDs recognises it (before the archive it was
// counted, and reported since a review found it unreported).
func TestDedupAfterRetentionOldKept(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			gone := loginAt{"gone", utc(2026, 4, 10)}
			p.produceLogins([]loginAt{gone}) // offset 0, deleted below
			p.produceLogins(spread("old-", 100, utc(2026, 2, 19), utc(2026, 2, 19).Add(10*time.Hour)))
			p.produceLogins(spread("live-", 100, utc(2026, 4, 13), utc(2026, 4, 13).Add(10*time.Hour)))
			var regs registries
			p.runReg("g", regs.next())
			p.retain(200) // only offset 0
			p.produceLogins([]loginAt{{"gone", gone.ts.Add(time.Hour)}})
			p.runReg("g", regs.next())
			p.wantExact(regs, 201, 1)
			if n := regs.sum(t, "usagepipe_dedup_recoveries_total"); n == 0 {
				t.Error("no recovery: the copy did not move the floor, so this run proves nothing")
			}
			if n := regs.sum(t, "usagepipe_dedup_unrecoverable_total"); n != 0 {
				t.Errorf("usagepipe_dedup_unrecoverable_total = %v, want 0", n)
			}
		})
	}
}

// TestDedupImportRerunAfterRetention: an import with its original (old)
// timestamps is read, retention then deletes it (time retention drops a
// segment of old timestamps soon after it rolls), and the import is run
// again. Every record of the second run is a duplicate of one counted and
// deleted: the archive of event IDs recognises them all, nothing is
// reported. A new record among them is counted.
func TestDedupImportRerunAfterRetention(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			live := spread("live-", 100, utc(2026, 4, 13), utc(2026, 4, 13).Add(10*time.Hour))
			imp := spread("imp-", 300, utc(2026, 1, 5), utc(2026, 1, 5).Add(300*time.Hour)) // 12 days, one an hour
			p.produceLogins(live)
			p.produceLogins(imp)
			p.produceLogins(spread("live2-", 50, utc(2026, 4, 13).Add(11*time.Hour), utc(2026, 4, 13).Add(12*time.Hour)))
			var regs registries
			p.runReg("g", regs.next())
			p.retain(50) // the live records and the whole import deleted
			again := append(append([]loginAt(nil), imp...), loginAt{"imp-new", utc(2026, 1, 9)})
			p.produceLogins(again)
			p.runReg("g", regs.next())
			p.wantExact(regs, 451, 300)
			if n := regs.sum(t, "usagepipe_dedup_recoveries_total"); n == 0 {
				t.Error("no recovery: the import did not move the floor, so this run proves nothing")
			}
			if n := regs.sum(t, "usagepipe_dedup_unrecoverable_total"); n != 0 {
				t.Errorf("usagepipe_dedup_unrecoverable_total = %v, want 0", n)
			}
		})
	}
}

// TestDedupSpillsToDisk: a window that does not fit the filter's memory
// (1 MiB: about 16k IDs) moves its older hours to the on-disk store, and
// copies of records held there are still duplicates, across a restart.
// Also when the group assigned the partitions before Run opened the store
// (a CI run on a busy machine: those partitions never spilled).
func TestDedupSpillsToDisk(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		for _, early := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/assigned before run %v", b.Kind, early), func(t *testing.T) {
				testDedupSpills(t, b, early)
			})
		}
	}
}

func testDedupSpills(t *testing.T, b *kafkatest.Broker, early bool) {
	p := newRealTopic(t, b)
	p.tweak = func(c *ingest.Config) { c.DedupMemory, c.DedupDir = 1<<20, t.TempDir() }
	recs := spread("s-", 40000, utc(2026, 4, 1), utc(2026, 4, 1).Add(20*time.Hour))
	p.produceLogins(recs)
	var regs registries
	first := regs.next()
	before := dedup.DiskLookups()
	p.runWith("g", first, early)
	if dedup.DiskLookups() == before {
		t.Fatal("no lookup went to disk: nothing was moved there, and the test proves nothing")
	}
	copies := append([]loginAt(nil), recs[:1000]...) // the oldest hours: on disk
	copies = append(copies, recs[20000:20500]...)
	p.produceLogins(copies)
	second := regs.next()
	p.runReg("g", second)
	p.wantLogins(40000)
	if n := regs.sum(t, "usagepipe_events_duplicate_total"); n != 1500 {
		t.Errorf("usagepipe_events_duplicate_total = %v, want 1500", n)
	}
}

// TestDedupRecordStampedAhead: one record stamped ten years ahead of the
// clock, then 60 hours of records. The far-future record does not move the
// filter's watermark (docs/design.md, "Records stamped ahead of the
// clock"): the hours after it are evicted as usual, so the copy of a
// record of the first of them is found by a recovery, and the next owner's
// floor follows the rest of the stream. Before, the watermark stayed ten
// years ahead and no hour written after that record was ever evicted (no
// recovery; a floor in 2036). Copies of both are duplicates either way.
func TestDedupRecordStampedAhead(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newRealTopic(t, b)
			base := time.Now().Add(-80 * time.Hour).Truncate(time.Hour)
			ahead := time.Now().AddDate(10, 0, 0).Truncate(time.Millisecond)
			later := spread("n-", 600, base.Add(time.Hour), base.Add(61*time.Hour))
			recs := append([]loginAt{{"ahead", ahead}}, later...)
			recs = append(recs, loginAt{"n-5", later[5].ts}, loginAt{"ahead", ahead})
			p.produceLogins(recs)
			var regs registries
			p.runReg("g", regs.next())
			p.wantExact(regs, 601, 2)
			p.check() // every row of the grid, which now runs to the far-future record's quarter
			if n := regs.sum(t, "usagepipe_dedup_records_ahead_total"); n != 2 {
				t.Errorf("usagepipe_dedup_records_ahead_total = %v, want 2 (the record ten years ahead and its copy)", n)
			}
			if n := regs.sum(t, "usagepipe_dedup_recoveries_total"); n == 0 {
				t.Error("no recovery: the hours after the record ten years ahead were never evicted (the watermark followed it)")
			}
			st := p.openStore()
			defer st.Close()
			var from int64
			q := "SELECT max(dedup_from_ms) FROM " + p.db + ".ingest_progress"
			if err := st.Conn().QueryRow(context.Background(), q).Scan(&from); err != nil {
				t.Fatal(err)
			}
			// The watermark is at most the clock + 1h: the floor at most
			// the clock − window.
			if want := time.Now().Add(-24 * time.Hour); time.UnixMilli(from).After(want) {
				t.Errorf("dedup_from_ms = %s, want at most %s (the clock − window)", time.UnixMilli(from).UTC(), want.UTC())
			}
		})
	}
}
