package store_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/usagepipe/usagepipe/schema"
)

// TestArchiveRoundTrip: the duplicate filter's archive reads back exactly
// the records written, by partition, band of hours and offset range,
// whatever the hours' order in a flush (runs of one hour, hours that come
// back, rows split past their size and blocks past theirs), and
// ArchiveHours bounds each hour's offsets.
func TestArchiveRoundTrip(t *testing.T) {
	st := open(t, nil, false)
	ctx := context.Background()
	const hour = schema.HourMs
	base := int64(1_767_225_600_000) // 2026-01-01
	type rec struct {
		off, ts int64
		id      string
	}
	var want []rec
	f := &schema.Facts{}
	d := &schema.DedupIDs{Topic: "t", TopicID: "id1", Partition: 3}
	// 70000 live records in hour 10 (split into rows, past a block), then a backfill that
	// alternates hours 2 and 5, then hour 10 again.
	off := int64(100)
	addRec := func(ts int64) {
		r := rec{off, ts, fmt.Sprintf("ev-%d-%d", off, ts)}
		want = append(want, r)
		d.Add(r.off, r.ts, []byte(r.id))
		off++
	}
	for i := range 70000 {
		addRec(base + 10*hour + int64(i))
	}
	for i := range 300 {
		addRec(base + int64(2+3*(i%2))*hour + int64(i))
	}
	addRec(base + 10*hour + 5)
	f.DedupIDs = append(f.DedupIDs, d)
	other := &schema.DedupIDs{Topic: "t", TopicID: "id1", Partition: 4}
	other.Add(5, base+2*hour, []byte("other-partition"))
	f.DedupIDs = append(f.DedupIDs, other)
	if err := st.Write(ctx, f); err != nil {
		t.Fatal(err)
	}

	read := func(q schema.ArchiveQuery) []rec {
		var got []rec
		if err := st.ReadArchive(ctx, q, func(o, ts int64, id string) { got = append(got, rec{o, ts, id}) }); err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(got, func(a, b rec) int { return int(a.off - b.off) })
		return got
	}
	filter := func(hLo, hHi, oLo, oHi int64) []rec {
		var out []rec
		for _, r := range want {
			if h := schema.HourOf(r.ts); h >= hLo && h < hHi && r.off >= oLo && r.off < oHi {
				out = append(out, r)
			}
		}
		return out
	}
	for _, tc := range []struct {
		name           string
		hLo, hHi       int64
		oLo, oHi       int64
		topicIDs       []string
		wantN          int
		wantFromFilter bool
	}{
		{"everything", math.MinInt64, math.MaxInt64, 0, math.MaxInt64, []string{"id1"}, len(want), true},
		{"the backfill's hour 2", base + 2*hour, base + 3*hour, 0, math.MaxInt64, []string{"id1"}, 150, true},
		{"hour 10, an offset range inside a row", base + 10*hour, base + 11*hour, 50000, 50010, []string{"id1"}, 10, true},
		{"hours 2–5, offsets of the backfill's second half", base + 2*hour, base + 6*hour, 70100 + 150, 70100 + 300, []string{"id1"}, 150, true},
		{"another incarnation", math.MinInt64, math.MaxInt64, 0, math.MaxInt64, []string{"id2"}, 0, false},
		{"both IDs", base + 2*hour, base + 3*hour, 0, math.MaxInt64, []string{"id2", "id1"}, 150, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := read(schema.ArchiveQuery{Topic: "t", TopicIDs: tc.topicIDs, Partition: 3, HourLo: tc.hLo, HourHi: tc.hHi,
				Offsets: schema.OffsetRange{Lo: tc.oLo, Hi: tc.oHi}})
			if len(got) != tc.wantN {
				t.Fatalf("%d records, want %d", len(got), tc.wantN)
			}
			if tc.wantFromFilter && !slices.Equal(got, filter(tc.hLo, tc.hHi, tc.oLo, tc.oHi)) {
				t.Fatal("records differ from those written")
			}
		})
	}

	hours, err := st.ArchiveHours(ctx, schema.ArchiveQuery{Topic: "t", TopicIDs: []string{"id1"}, Partition: 3,
		HourLo: math.MinInt64, HourHi: math.MaxInt64, Offsets: schema.OffsetRange{Lo: 0, Hi: math.MaxInt64}})
	if err != nil {
		t.Fatal(err)
	}
	wantHours := []schema.ArchiveHour{
		{Hour: base + 2*hour, MinOff: 70100, MaxOff: 70398},
		{Hour: base + 5*hour, MinOff: 70101, MaxOff: 70399},
		{Hour: base + 10*hour, MinOff: 100, MaxOff: 70400},
	}
	if !slices.Equal(hours, wantHours) {
		t.Fatalf("ArchiveHours = %+v, want %+v", hours, wantHours)
	}
}

// BenchmarkArchiveWrite writes flushes of 250k archive entries with
// UUID-like event IDs (one partition, about 3 hours each) and reports the
// bytes ClickHouse keeps per record after merging them.
//
//	go test ./schema/store -run '^$' -bench '^BenchmarkArchiveWrite$' -benchtime 4x
func BenchmarkArchiveWrite(b *testing.B) {
	st := open(b, nil, false)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	const perFlush = 250_000
	base := int64(1_767_225_600_000)
	off := int64(0)
	d := &schema.DedupIDs{Topic: "usage-events", TopicID: "0123456789abcdef0123456789abcdef"}
	for b.Loop() {
		b.StopTimer()
		d.Reset()
		for range perFlush {
			id := fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", rng.Uint32(), rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint64()&0xffffffffffff)
			d.Add(off, base+off*40+int64(rng.IntN(1000)), []byte(id))
			off++
		}
		b.StartTimer()
		if err := st.Write(ctx, &schema.Facts{DedupIDs: []*schema.DedupIDs{d}}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := st.Conn().Exec(ctx, "OPTIMIZE TABLE "+st.Database()+".dedup_ids FINAL"); err != nil {
		b.Fatal(err)
	}
	var bytes uint64
	if err := st.Conn().QueryRow(ctx, "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = ? AND table = 'dedup_ids' AND active", st.Database()).Scan(&bytes); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(bytes)/float64(off), "disk_bytes/record")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(off), "ns/record")
}
