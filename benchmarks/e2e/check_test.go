package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/store"
)

// readBack reads every record of topic as the broker stores it (partition,
// offset, timestamp): the exact input of the run.
func readBack(t *testing.T, addrs []string, topic string) []reference.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxBytes(64<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	left := map[int32]int64{}
	var total int64
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			left[o.Partition] = o.Offset
			total += o.Offset
		}
	})
	out := make([]reference.Record, 0, total)
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read back %s: %v", topic, err)
		}
		fs.EachError(func(_ string, p int32, err error) { t.Fatalf("read back %s partition %d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, reference.Record{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset,
				TimestampMs: r.Timestamp.UnixMilli(), Key: r.Key, Value: r.Value})
			if end, ok := left[r.Partition]; ok && r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	return out
}

// checkExact compares db's rollups and feature rows, in every column, with
// the reference computed over every record of topic (no sampling). It
// returns "yes" or "NO (…)" and logs the first differences.
func checkExact(t *testing.T, addrs []string, topic, db string) string {
	t.Helper()
	start := time.Now()
	recs := readBack(t, addrs, topic)
	want := reference.Compute(recs, reference.Options{})
	n := len(recs)
	recs = nil // let the values go before reading the rollups
	ctx := context.Background()
	st, err := store.Open(ctx, store.Config{Addr: []string{env.chAddr}, Database: db}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := st.ReadRollups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gotF, err := st.ReadFeatures(ctx)
	if err != nil {
		t.Fatal(err)
	}
	diffs := 0
	if len(got) != len(want.Rollups) {
		t.Errorf("rollup rows: got %d, want %d", len(got), len(want.Rollups))
		diffs++
	}
	for i := range min(len(got), len(want.Rollups)) {
		if g, w := fmt.Sprintf("%+v", norm(got[i])), fmt.Sprintf("%+v", norm(want.Rollups[i])); g != w {
			if diffs < 5 {
				t.Errorf("rollup row %d:\n got  %s\n want %s", i, g, w)
			}
			diffs++
		}
	}
	fdiffs := 0
	if len(gotF) != len(want.Features) {
		fdiffs++
	}
	for i := range min(len(gotF), len(want.Features)) {
		if gotF[i] != normF(want.Features[i], gotF[i]) {
			fdiffs++
		}
	}
	t.Logf("exactness: %d records read back, %d accepted, %d duplicates, %d rejected; %d rollup rows (%d differ), %d feature rows (%d differ); checked in %s",
		n, want.Accepted, want.Duplicates, len(want.Rejected), len(want.Rollups), diffs, len(want.Features), fdiffs, time.Since(start).Round(time.Millisecond))
	if diffs+fdiffs > 0 {
		t.Errorf("rollups differ from the reference")
		return fmt.Sprintf("NO (%d rollup, %d feature rows differ)", diffs, fdiffs)
	}
	return fmt.Sprintf("yes (%d rollup rows, %d feature rows, all %d records)", len(want.Rollups), len(want.Features), n)
}

func norm(r schema.Rollup) schema.Rollup {
	r.QuarterStart, r.QuarterEnd, r.LastActivityAt = r.QuarterStart.UTC(), r.QuarterEnd.UTC(), r.LastActivityAt.UTC()
	return r
}

// normF returns want with its times in got's location, so that == compares
// instants.
func normF(want, got schema.FeatureRow) schema.FeatureRow {
	if want.QuarterStart.Equal(got.QuarterStart) {
		want.QuarterStart = got.QuarterStart
	}
	return want
}

func dropDatabase(t *testing.T, db string) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, store.Config{Addr: []string{env.chAddr}}, nil, nil)
	if err != nil {
		t.Logf("drop database %s: %v", db, err)
		return
	}
	defer st.Close()
	if err := st.Conn().Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
		t.Logf("drop database %s: %v", db, err)
	}
}
