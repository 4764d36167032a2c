package ingest_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/ingest"
	"github.com/usagepipe/usagepipe/ingest/gen"
	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chtest"
	"github.com/usagepipe/usagepipe/schema/store"
)

func TestMain(m *testing.M) { chtest.Main(clusterRunner{kafkatest.Runner(m)}) }

// pipeline is one database + topic under test.
type pipeline struct {
	t        *testing.T
	brokers  []string
	topic    string
	dlq      string
	db       string
	fiscal   int
	produced []reference.Record
	tweak    func(*ingest.Config)              // applied to the consumer's settings by runReg and start, if set
	writer   func(ingest.Writer) ingest.Writer // wraps the store runReg and start write through, if set
	chAddrs  []string                          // ClickHouse nodes; nil: chtest's server
	cluster  string                            // ClickHouse cluster of chAddrs, if any
}

// storeConfig is how the test's store reaches ClickHouse.
func (p *pipeline) storeConfig() store.Config {
	if p.chAddrs != nil {
		return store.Config{Addr: p.chAddrs, Database: p.db, Cluster: p.cluster}
	}
	return store.Config{Addr: []string{chtest.Addr()}, Database: p.db}
}

func newPipeline(t *testing.T, b *kafkatest.Broker, fiscal int) *pipeline {
	p := &pipeline{t: t, brokers: b.Addrs, fiscal: fiscal}
	suffix := strconv.FormatInt(time.Now().UnixNano(), 36)
	p.topic, p.dlq = "events-"+suffix, "dlq-"+suffix
	kafkatest.CreateTopic(t, b.Addrs, p.topic, 4)
	kafkatest.CreateTopic(t, b.Addrs, p.dlq, 1)
	p.db = chtest.NewDatabase(t)
	return p
}

func (p *pipeline) produce(cfg gen.Config) {
	p.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.brokers...), kgo.ProducerBatchCompression(kgo.ZstdCompression()), kgo.ProducerBatchMaxBytes(16<<20), kgo.MaxBufferedBytes(256<<20))
	if err != nil {
		p.t.Fatal(err)
	}
	defer cl.Close()
	recs, _, err := gen.Produce(context.Background(), cl, p.topic, gen.New(cfg), true)
	if err != nil {
		p.t.Fatalf("produce: %v", err)
	}
	p.produced = append(p.produced, recs...)
}

// lastRecordTime is just after the latest record timestamp produced so far.
func (p *pipeline) lastRecordTime() time.Time {
	var last int64
	for _, r := range p.produced {
		last = max(last, r.TimestampMs)
	}
	return time.UnixMilli(last + 1000)
}

// run runs the consumer with --until-caught-up semantics and returns it.
func (p *pipeline) run(group string) {
	p.t.Helper()
	p.runReg(group, nil)
}

// check compares ClickHouse's rollups and feature rows with the reference
// over everything produced, in every column.
func (p *pipeline) check() reference.Result {
	p.t.Helper()
	st := p.openStore()
	defer st.Close()
	want, err := p.compare(st)
	if err != nil {
		p.t.Fatal(err)
	}
	return want
}

// compare reads the rollups and feature rows through st and returns the
// first differences from the reference, if any.
func (p *pipeline) compare(st *store.Store) (reference.Result, error) {
	want := reference.Compute(p.produced, reference.Options{FiscalStartMonth: p.fiscal})
	got, err := st.ReadRollups(context.Background())
	if err != nil {
		return want, err
	}
	var errs []string
	if len(got) != len(want.Rollups) {
		errs = append(errs, fmt.Sprintf("rollup rows: got %d, want %d", len(got), len(want.Rollups)))
	}
	diffs := 0
	for i := range min(len(got), len(want.Rollups)) {
		if g, w := fmt.Sprintf("%+v", norm(got[i])), fmt.Sprintf("%+v", norm(want.Rollups[i])); g != w {
			if diffs < 5 {
				errs = append(errs, fmt.Sprintf("rollup row %d:\n got  %s\n want %s", i, g, w))
			}
			diffs++
		}
	}
	if diffs > 0 {
		errs = append(errs, fmt.Sprintf("%d rollup rows differ", diffs))
	}
	gotF, err := st.ReadFeatures(context.Background())
	if err != nil {
		return want, err
	}
	if g, w := fmt.Sprintf("%+v", gotF), fmt.Sprintf("%+v", want.Features); g != w {
		errs = append(errs, fmt.Sprintf("feature rows differ: got %d rows, want %d", len(gotF), len(want.Features)))
	}
	if len(errs) > 0 {
		return want, errors.New(strings.Join(errs, "\n"))
	}
	return want, nil
}

// openStore opens the test's ClickHouse database.
func (p *pipeline) openStore() *store.Store {
	p.t.Helper()
	st, err := store.Open(context.Background(), p.storeConfig(), nil, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	return st
}

func norm(r schema.Rollup) schema.Rollup {
	r.QuarterStart, r.QuarterEnd, r.LastActivityAt = r.QuarterStart.UTC(), r.QuarterEnd.UTC(), r.LastActivityAt.UTC()
	return r
}

// dlq reads the whole dead-letter topic: source offset → reason.
func (p *pipeline) dlqRecords() (map[string]string, int) {
	p.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.brokers...), kgo.ConsumeTopics(p.dlq), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxBytes(64<<20))
	if err != nil {
		p.t.Fatal(err)
	}
	defer cl.Close()
	out, n := map[string]string{}, 0
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	want := len(reference.Compute(p.produced, reference.Options{FiscalStartMonth: p.fiscal}).Rejected)
	for n < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			break
		}
		fs.EachRecord(func(r *kgo.Record) {
			h := map[string]string{}
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			if h["usagepipe.source.topic"] != p.topic || h["usagepipe.error"] == "" {
				p.t.Errorf("dead letter with headers %v", h)
			}
			out[h["usagepipe.source.partition"]+"@"+h["usagepipe.source.offset"]] = h["usagepipe.reason"]
			n++
		})
	}
	// Anything beyond the expected count would be a duplicate dead letter.
	extra, cancelExtra := context.WithTimeout(context.Background(), time.Second)
	defer cancelExtra()
	n += cl.PollFetches(extra).NumRecords()
	return out, n
}

func (p *pipeline) checkDLQ(want reference.Result) {
	p.t.Helper()
	p.checkDeadLetters(want)
	reasons := map[string]int{}
	for _, r := range want.Rejected {
		reasons[r.Reason]++
	}
	if len(reasons) != len(reference.Reasons()) {
		p.t.Fatalf("test data covers reasons %v, want all of %v", reasons, reference.Reasons())
	}
}

// checkDeadLetters checks that the dead-letter topic holds exactly one
// record per rejected record, with its reason.
func (p *pipeline) checkDeadLetters(want reference.Result) {
	p.t.Helper()
	got, n := p.dlqRecords()
	if n != len(want.Rejected) {
		p.t.Fatalf("dead-letter topic holds %d records, want exactly %d", n, len(want.Rejected))
	}
	for _, r := range want.Rejected {
		k := fmt.Sprintf("%d@%d", r.Partition, r.Offset)
		if got[k] != r.Reason {
			p.t.Fatalf("dead letter for %s: reason %q, want %q", k, got[k], r.Reason)
		}
	}
}

// TestPipelineMatchesReference is the end-to-end check: generated events with
// every kind of bad record, duplicates and edge cases go through a real
// broker and a real ClickHouse, and the rollups equal the independent
// reference in every column; then more data and re-sent duplicates in a
// second run; then the same topic with the fiscal year starting in April.
func TestPipelineMatchesReference(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			p := newPipeline(t, b, 1)
			p.produce(gen.Config{Seed: 7, Events: 20_000, Accounts: 150, Users: 3_000, Features: 12, Quarters: 3, BadRatio: 0.02, DupRatio: 0.03, EdgeCases: true})
			p.run("g1")
			want := p.check()
			if want.Duplicates == 0 || len(want.Rejected) == 0 {
				t.Fatalf("test data has %d duplicates and %d rejects; want both", want.Duplicates, len(want.Rejected))
			}
			p.checkDLQ(want)

			// A second run after new data, including re-sent copies of
			// events of the first run (same seed: same event IDs).
			// Record timestamps keep increasing, as a broker's would.
			p.produce(gen.Config{Seed: 8, Events: 5_000, Accounts: 150, Users: 3_000, Features: 12, Quarters: 4, BadRatio: 0.02, DupRatio: 0.03, RecordTime: p.lastRecordTime()})
			p.produce(gen.Config{Seed: 7, Events: 2_000, Accounts: 150, Users: 3_000, Features: 12, Quarters: 3, RecordTime: p.lastRecordTime().Add(-23 * time.Hour)})
			p.run("g1")
			want = p.check()
			p.checkDLQ(want)

			// Fiscal year starting in April: a new database and group over
			// the same topic.
			q := *p
			q.t, q.fiscal, q.db = t, 4, chtest.NewDatabase(t)
			q.run("g-fiscal")
			q.check()
		})
	}
}

// TestDeadLetterBacklog: a backlog of rejected records far larger than one
// record batch the dead-letter topic accepts (1 MiB by default) must reach
// it whole, in chunks, without stalling the pipeline.
func TestDeadLetterBacklog(t *testing.T) {
	b := kafkatest.Brokers(t)[0]
	p := newPipeline(t, b, 1)
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.brokers...), kgo.DefaultProduceTopic(p.topic), kgo.ProducerBatchCompression(kgo.ZstdCompression()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 20_000
	ts := time.Now().Add(-time.Hour)
	var mu sync.Mutex
	for i := range n {
		v := fmt.Sprintf(`{"event_id":"bad-%06d","type":"logout","account_id":"acme","user_id":"u-%d","occurred_at":"%s","note":"%0200d"}`,
			i, i%50, ts.UTC().Format(time.RFC3339), i)
		cl.Produce(context.Background(), &kgo.Record{Key: []byte("acme"), Value: []byte(v), Timestamp: ts}, func(r *kgo.Record, err error) {
			if err != nil {
				t.Errorf("produce: %v", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			p.produced = append(p.produced, reference.Record{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, TimestampMs: r.Timestamp.UnixMilli(), Key: r.Key, Value: r.Value})
		})
	}
	if err := cl.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.run("g-backlog")
	got, total := p.dlqRecords()
	if total != n || len(got) != n {
		t.Fatalf("dead-letter topic holds %d records (%d distinct sources), want %d", total, len(got), n)
	}
	for k, reason := range got {
		if reason != "unknown_type" {
			t.Fatalf("dead letter %s has reason %q", k, reason)
		}
	}
}
