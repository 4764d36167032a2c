package gen

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"hash/fnv"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/schema"
)

var testRecordTime = time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)

func smallConfig() Config {
	return Config{
		Seed: 42, Events: 20_000, Accounts: 200, Users: 3000, Features: 12,
		BadRatio: 0.05, DupRatio: 0.03, EdgeCases: true, RecordTime: testRecordTime,
	}
}

func all(g *Generator) []Record {
	var out []Record
	var r Record
	for g.Next(&r) {
		out = append(out, r)
	}
	return out
}

// asReference places records into 4 partitions by key, offsets in stream
// order, as a keyed producer would.
func asReference(recs []Record) []reference.Record {
	next := map[int32]int64{}
	out := make([]reference.Record, len(recs))
	for i, r := range recs {
		h := fnv.New32a()
		h.Write(r.Key)
		p := int32(h.Sum32() % 4)
		out[i] = reference.Record{Topic: "t", Partition: p, Offset: next[p], TimestampMs: r.TimestampMs, Key: r.Key, Value: r.Value}
		next[p]++
	}
	return out
}

func TestDeterministic(t *testing.T) {
	a, b := all(New(smallConfig())), all(New(smallConfig()))
	if len(a) != New(smallConfig()).Total() {
		t.Fatalf("got %d records, Total says %d", len(a), New(smallConfig()).Total())
	}
	if len(a) != len(b) {
		t.Fatalf("lengths %d and %d", len(a), len(b))
	}
	for i := range a {
		if !bytes.Equal(a[i].Key, b[i].Key) || !bytes.Equal(a[i].Value, b[i].Value) ||
			a[i].TimestampMs != b[i].TimestampMs || a[i].WantReason != b[i].WantReason {
			t.Fatalf("record %d differs:\n%q\n%q", i, a[i].Value, b[i].Value)
		}
	}
	cfg := smallConfig()
	cfg.Seed++
	c := all(New(cfg))
	same := 0
	for i := range min(len(a), len(c)) {
		if bytes.Equal(a[i].Value, c[i].Value) {
			same++
		}
	}
	if same > len(a)/10 { // edge cases repeat; random events must not
		t.Errorf("seed+1: %d of %d records equal", same, len(a))
	}
}

func TestTimestamps(t *testing.T) {
	recs := all(New(smallConfig()))
	for i := 1; i < len(recs); i++ {
		if recs[i].TimestampMs <= recs[i-1].TimestampMs {
			t.Fatalf("record %d: timestamp %d after %d", i, recs[i].TimestampMs, recs[i-1].TimestampMs)
		}
	}
	if got := recs[0].TimestampMs; got != testRecordTime.UnixMilli() {
		t.Errorf("first timestamp %d, want %d", got, testRecordTime.UnixMilli())
	}

	// RecordTime before the end of the occurred_at range moves to that end.
	g := New(Config{Events: 10, Accounts: 1, Users: 1, Features: 1, RecordTime: DefaultStart()})
	if got, want := g.Config().RecordTime, DefaultStart().AddDate(0, 6, 0); !got.Equal(want) {
		t.Errorf("RecordTime = %v, want %v", got, want)
	}
	// The default is in the past.
	g = New(Config{Events: 10, Accounts: 1, Users: 1, Features: 1})
	if rt := g.Config().RecordTime; rt.After(time.Now()) && rt.After(DefaultStart().AddDate(0, 6, 0)) {
		t.Errorf("default RecordTime %v is in the future", rt)
	}
}

// TestReasonsAgree checks every record's WantReason against the reference
// and that every reason occurs.
func TestReasonsAgree(t *testing.T) {
	recs := all(New(smallConfig()))
	refs := asReference(recs)
	res := reference.Compute(refs, reference.Options{})

	type po struct {
		p int32
		o int64
	}
	got := map[po]string{}
	for _, r := range res.Rejected {
		got[po{r.Partition, r.Offset}] = r.Reason
	}
	seen := map[string]int{}
	wantDup := 0
	for i, r := range recs {
		if g := got[po{refs[i].Partition, refs[i].Offset}]; g != r.WantReason {
			t.Errorf("record %d: reference says %q, generator %q: %.300q", i, g, r.WantReason, r.Value)
		}
		seen[r.WantReason]++
	}
	for _, reason := range reference.Reasons() {
		if seen[reason] == 0 {
			t.Errorf("no %s record", reason)
		}
	}
	bad := len(recs) - seen[""]
	if bad != len(res.Rejected) || res.Accepted+res.Duplicates+bad != len(recs) {
		t.Errorf("%d bad, reference: %d rejected, %d accepted, %d duplicates of %d", bad, len(res.Rejected), res.Accepted, res.Duplicates, len(recs))
	}
	// 3% re-sent (inside the window), plus the edge cases' 3.
	wantDup = int(0.03*float64(smallConfig().Events)) + 3
	if res.Duplicates < wantDup-2 || res.Duplicates > wantDup {
		t.Errorf("%d duplicates, want about %d", res.Duplicates, wantDup)
	}
	if share := float64(bad) / float64(len(recs)); share < 0.045 || share > 0.06 {
		t.Errorf("bad share %.3f, want about 0.05", share)
	}
	t.Logf("%d records: %v; %d accepted, %d duplicates, %d rollups, %d feature rows",
		len(recs), seen, res.Accepted, res.Duplicates, len(res.Rollups), len(res.Features))
}

func TestRealistic(t *testing.T) {
	cfg := smallConfig()
	cfg.BadRatio, cfg.DupRatio, cfg.EdgeCases = 0, 0, false
	recs := all(New(cfg))
	var size int
	var offsets, epoch, version, extra int
	types := map[string]int{}
	for _, r := range recs {
		size += len(r.Value)
		v := string(r.Value)
		for _, typ := range []string{"login", "feature_used", "seat_assigned", "seat_unassigned", "seats_purchased"} {
			if bytes.Contains(r.Value, []byte(`"type":"`+typ+`"`)) {
				types[typ]++
			}
		}
		switch {
		case bytes.Contains(r.Value, []byte(`+09:00"`)), bytes.Contains(r.Value, []byte(`-05:00"`)):
			offsets++
		case !bytes.Contains(r.Value, []byte(`"occurred_at":"`)):
			epoch++
		}
		if bytes.Contains(r.Value, []byte(`"schema_version":1`)) {
			version++
		}
		if bytes.Contains(r.Value, []byte(`"ctx":`)) {
			extra++
		}
		if !bytes.HasPrefix(r.Key, []byte("acct-")) || !bytes.Contains(r.Value, []byte(`"account_id":"`+string(r.Key)+`"`)) {
			t.Fatalf("key %q does not match %s", r.Key, v)
		}
	}
	mean := size / len(recs)
	t.Logf("mean %d bytes; types %v; %d with offsets, %d epoch ms, %d schema_version, %d extra; e.g. %s",
		mean, types, offsets, epoch, version, extra, recs[0].Value)
	if mean < 200 || mean > 300 {
		t.Errorf("mean value %d bytes, want 200–300", mean)
	}
	n := len(recs)
	if types["login"]+types["feature_used"] < n*8/10 || types["seats_purchased"] == 0 || types["seat_assigned"] == 0 || types["seat_unassigned"] == 0 {
		t.Errorf("type mix %v", types)
	}
	for name, c := range map[string]int{"offsets": offsets, "epoch": epoch, "schema_version": version, "extra": extra} {
		if c < n/50 {
			t.Errorf("only %d of %d events with %s", c, n, name)
		}
	}

	// Every event is valid, and the rollups cover both quarters.
	res := reference.Compute(asReference(recs), reference.Options{})
	if res.Accepted != n || res.Duplicates != 0 || len(res.Rejected) != 0 {
		t.Errorf("accepted %d of %d, %d duplicates, %d rejected", res.Accepted, n, res.Duplicates, len(res.Rejected))
	}
	var q2 bool
	for _, r := range res.Rollups {
		q2 = q2 || r.Quarter == "2026-Q2" && r.SeatsPurchased > 0 && r.ActiveAssignedUsers > 0
	}
	if !q2 || len(res.Features) == 0 {
		t.Errorf("rollups lack 2026-Q2 rows with seats and activity")
	}
}

// TestEdgeCases checks the hand-computed results of the edge cases.
func TestEdgeCases(t *testing.T) {
	cfg := smallConfig()
	cfg.Events, cfg.BadRatio, cfg.DupRatio = 500, 0, 0
	g := New(cfg)
	recs := all(g)
	res := reference.Compute(asReference(recs), reference.Options{})

	if len(EdgeLongEscaped) != 128 {
		t.Fatalf("EdgeLongEscaped is %d bytes", len(EdgeLongEscaped))
	}
	rows := map[string][]schema.Rollup{}
	for _, r := range res.Rollups {
		rows[r.AccountID] = append(rows[r.AccountID], r)
	}
	q1, q2 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	if b := g.EdgeQuarterBoundary(); !b.Equal(q2) {
		t.Fatalf("boundary %v", b)
	}
	type want struct {
		purchased, assigned, active, activeAssigned, logins, featureEvents uint64
		utilization                                                        float64
	}
	check := func(account string, qs time.Time, w want) {
		t.Helper()
		for _, r := range rows[account] {
			if r.QuarterStart.Equal(qs) {
				got := want{r.SeatsPurchased, r.SeatsAssigned, r.ActiveUsers, r.ActiveAssignedUsers, r.Logins, r.FeatureEvents, r.SeatUtilization}
				if got != w {
					t.Errorf("%q %v: got %+v, want %+v", account, qs, got, w)
				}
				return
			}
		}
		t.Errorf("%q: no row for %v in %+v", account, qs, rows[account])
	}
	check(EdgeOverassigned, q1, want{2, 3, 2, 1, 2, 0, 1.5})
	check(EdgeOverassigned, q2, want{2, 3, 0, 0, 0, 0, 1.5})
	check(EdgeSeatTie, q1, want{7, 1, 2, 1, 2, 0, 1.0 / 7})
	check(EdgeSeatsOnly, q1, want{5, 2, 0, 0, 0, 0, 0.4})
	check(EdgeSeatsOnly, q2, want{5, 2, 0, 0, 0, 0, 0.4})
	check(EdgeDup, q1, want{0, 0, 3, 0, 3, 1, 0})
	check(EdgeQuarterEdge, q1, want{0, 0, 4, 0, 3, 1, 0})
	check(EdgeQuarterEdge, q2, want{0, 0, 3, 0, 2, 1, 0})
	check(EdgeUnicode, q1, want{0, 0, 3, 0, 2, 1, 0})
	check(EdgeQuoted, q1, want{0, 0, 2, 0, 1, 1, 0})
	check(EdgeControl, q1, want{0, 0, 2, 0, 1, 1, 0})
	check(EdgeLongEscaped, q1, want{0, 0, 1, 0, 1, 0, 0})
	check(EdgeDupKey, q1, want{0, 0, 1, 0, 1, 0, 0})
	check(EdgeBig, q1, want{0, 0, 1, 0, 1, 0, 0})
	check(EdgeBounds, q1, want{0, 1, 3, 1, 3, 0, 0})
	check(EdgeLate, q1, want{0, 0, 1, 0, 1, 0, 0})
	check(EdgeLate, q2, want{0, 0, 1, 0, 1, 0, 0})
	check(EdgeY2K, time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC), want{0, 0, 2, 0, 3, 0, 0})
	if n := len(rows[EdgeY2K]); n != 106 { // 2000-Q1 … 2026-Q2
		t.Errorf("%s has %d rows, want 106", EdgeY2K, n)
	}
	if n := len(rows[EdgeSeatsOnly]); n != 2 {
		t.Errorf("%s has %d rows, want 2", EdgeSeatsOnly, n)
	}
	for _, r := range rows[EdgeSeatsOnly] {
		if !r.LastActivityAt.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: last activity %v", EdgeSeatsOnly, r.LastActivityAt)
		}
	}
	if last := rows[EdgeQuarterEdge][0].LastActivityAt; !last.Equal(q2.Add(-time.Second)) {
		t.Errorf("%s: Q1 last activity %v", EdgeQuarterEdge, last)
	}
	if res.Duplicates != 3 {
		t.Errorf("%d duplicates, want 3", res.Duplicates)
	}
	var rejected []string
	for _, r := range res.Rejected {
		rejected = append(rejected, r.Reason)
	}
	if !slices.Equal(rejected, []string{reference.ReasonTooLarge}) {
		t.Errorf("rejected %v, want the one too_large", rejected)
	}

	// Stream order: the late event comes after the account's later one,
	// and the out-of-window copy more than 24h after its original.
	var lateIdx [2]int
	for i, r := range recs {
		if bytes.Equal(r.Key, []byte(EdgeLate)) {
			lateIdx[0], lateIdx[1] = lateIdx[1], i
		}
	}
	if !(lateIdx[0] < lateIdx[1] && bytes.Contains(recs[lateIdx[1]].Value, []byte("edge-l2"))) {
		t.Errorf("late event order: %v", lateIdx)
	}
	if span := recs[len(recs)-1].TimestampMs - recs[0].TimestampMs; span < (24*time.Hour + 30*time.Minute).Milliseconds() {
		t.Errorf("record clock spans %v", time.Duration(span)*time.Millisecond)
	}

	// Without edge cases none of this is there.
	cfg.EdgeCases = false
	for _, r := range all(New(cfg)) {
		if bytes.HasPrefix(r.Key, []byte("edge-")) {
			t.Fatalf("edge record without EdgeCases: %s", r.Value)
		}
	}
}

func TestRegisterFlags(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	c.RegisterFlags(fs)
	err := fs.Parse([]string{"-gen-seed=7", "-gen-events=10", "-gen-start=2025-04-01T00:00:00Z", "-gen-bad-ratio=0.5", "-gen-edge-cases", "-gen-population=realistic"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Seed: 7, Events: 10, Start: time.Date(2025, 4, 1, 0, 0, 0, 0, time.UTC), BadRatio: 0.5, EdgeCases: true, Population: PopulationRealistic}
	if c != want {
		t.Errorf("parsed %+v, want %+v", c, want)
	}
}

func TestConfigValidate(t *testing.T) {
	f := func(c Config, wantErr bool) {
		t.Helper()
		if err := c.Validate(); (err != nil) != wantErr {
			t.Errorf("Validate(%+v) = %v", c, err)
		}
	}
	f(Config{}, false)
	f(smallConfig(), false)
	f(Config{Events: -1}, true)
	f(Config{BadRatio: 1.5}, true)
	f(Config{BadRatio: 0.6, DupRatio: 0.6}, true)
	f(Config{Start: time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)}, true)
	f(Config{Population: PopulationRealistic}, false)
	f(Config{Population: PopulationUniform}, false)
	f(Config{Population: "enterprise"}, true)
}

func TestProduceKfake(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "t"),
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": fmt.Sprint(4 << 20)}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)

	producer, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.ProducerBatchMaxBytes(4<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(producer.Close)

	cfg := smallConfig()
	cfg.Events = 5000
	g := New(cfg)
	produced, n, err := Produce(ctx, producer, "t", g, true)
	if err != nil {
		t.Fatal(err)
	}
	if n != g.Total() || len(produced) != n {
		t.Fatalf("produced %d (%d kept), want %d", n, len(produced), g.Total())
	}

	consumer, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.ConsumeTopics("t"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxBytes(8<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(consumer.Close)
	var consumed []reference.Record
	for len(consumed) < n {
		fs := consumer.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("after %d records: %v", len(consumed), err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			consumed = append(consumed, reference.Record{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset,
				TimestampMs: r.Timestamp.UnixMilli(), Key: r.Key, Value: r.Value})
		})
	}
	slices.SortFunc(consumed, func(a, b reference.Record) int {
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	if len(consumed) != n {
		t.Fatalf("consumed %d, want %d", len(consumed), n)
	}
	parts := map[int32]bool{}
	for i := range consumed {
		p, c := produced[i], consumed[i]
		if p.Partition != c.Partition || p.Offset != c.Offset || p.TimestampMs != c.TimestampMs ||
			!bytes.Equal(p.Key, c.Key) || !bytes.Equal(p.Value, c.Value) {
			t.Fatalf("record %d: produced p%d@%d ts %d, consumed p%d@%d ts %d", i, p.Partition, p.Offset, p.TimestampMs, c.Partition, c.Offset, c.TimestampMs)
		}
		parts[c.Partition] = true
	}
	if len(parts) != 4 {
		t.Errorf("records in %d partitions, want 4", len(parts))
	}

	// The reference agrees with the generator's reasons and duplicates.
	want := reference.Compute(asReference(all(New(cfg))), reference.Options{})
	got := reference.Compute(consumed, reference.Options{})
	if got.Accepted != want.Accepted || got.Duplicates != want.Duplicates || len(got.Rejected) != len(want.Rejected) {
		t.Errorf("from kfake: %d accepted, %d duplicates, %d rejected; simulated: %d, %d, %d",
			got.Accepted, got.Duplicates, len(got.Rejected), want.Accepted, want.Duplicates, len(want.Rejected))
	}
	if len(got.Rollups) != len(want.Rollups) {
		t.Errorf("from kfake: %d rollups, simulated %d", len(got.Rollups), len(want.Rollups))
	}

	// keep=false returns only the count.
	kept, n2, err := Produce(ctx, producer, "t", New(Config{Seed: 1, Events: 100, Accounts: 5, Users: 10, Features: 3, RecordTime: testRecordTime}), false)
	if err != nil || n2 != 100 || kept != nil {
		t.Errorf("keep=false: %d records kept, n=%d, err=%v", len(kept), n2, err)
	}
}

func BenchmarkNext(b *testing.B) {
	g := New(Config{Seed: 1, Events: 1_000_000, BadRatio: 0.01, DupRatio: 0.01, RecordTime: testRecordTime})
	var r Record
	var n, size int
	b.ReportAllocs()
	for b.Loop() {
		if !g.Next(&r) {
			g = New(g.Config())
		}
		n++
		size += len(r.Value)
	}
	b.SetBytes(int64(size / max(n, 1)))
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/event")
}

// BenchmarkReferenceCompute measures the oracle on 2M generated events.
func BenchmarkReferenceCompute(b *testing.B) {
	const events = 2_000_000
	recs := asReference(all(New(Config{Seed: 1, Events: events, BadRatio: 0.001, DupRatio: 0.01, RecordTime: testRecordTime})))
	b.ReportAllocs()
	for b.Loop() {
		reference.Compute(recs, reference.Options{})
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/events, "ns/event")
}
