package schema_test

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/usagepipe/usagepipe/schema"
)

type archived struct {
	off, ts int64
	id      string
}

func encode(hour int64, recs []archived) []byte {
	var e schema.ArchiveEncoder
	e.Reset(hour, uint64(recs[0].off))
	for _, r := range recs {
		e.Add(uint64(r.off), r.ts, r.id)
	}
	return slices.Clone(e.Bytes())
}

// TestArchiveRowRoundTrip: a row of dedup_ids decodes to the records
// encoded into it; a row that does not match its count, or is cut short,
// is an error before any record is handed out.
func TestArchiveRowRoundTrip(t *testing.T) {
	hour := int64(1_767_225_600_000)
	for _, tc := range []struct {
		name string
		recs []archived
	}{
		{"one", []archived{{7, hour, "a"}}},
		{"gaps and equal offsets", []archived{{0, hour + 1, "x"}, {0, hour + 1, "x"}, {5, hour + schema.HourMs - 1, "é-ünïcode"}, {1 << 40, hour, string(make([]byte, 300))}}},
		{"offsets near the top", []archived{{math.MaxInt64 - 1, hour, "y"}, {math.MaxInt64, hour + 2, "z"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := encode(hour, tc.recs)
			var got []archived
			if err := schema.DecodeArchive(b, hour, uint64(tc.recs[0].off), len(tc.recs), func(off, ts int64, id string) {
				got = append(got, archived{off, ts, id})
			}); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.recs) {
				t.Fatalf("decoded %v, want %v", got, tc.recs)
			}
			for _, bad := range []struct {
				b []byte
				n int
			}{{b, len(tc.recs) + 1}, {b[:len(b)-1], len(tc.recs)}, {append(slices.Clone(b), 0, 0, 0), len(tc.recs)}} {
				calls := 0
				if err := schema.DecodeArchive(bad.b, hour, uint64(tc.recs[0].off), bad.n, func(int64, int64, string) { calls++ }); err == nil || calls > 0 {
					t.Errorf("%d bytes, count %d: err %v after %d records; want an error and none", len(bad.b), bad.n, err, calls)
				}
			}
		})
	}
}

// FuzzDecodeArchive: any bytes decode to an error or to records within the
// row's hour, offsets ascending from off_lo, IDs non-empty, and encoding
// those records again gives the same bytes.
func FuzzDecodeArchive(f *testing.F) {
	hour := int64(1_767_225_600_000)
	f.Add(encode(hour, []archived{{3, hour, "a"}, {9, hour + 5, "bb"}}), uint64(3), 2)
	f.Add([]byte{0x80}, uint64(0), 1)
	f.Fuzz(func(t *testing.T, b []byte, offLo uint64, n int) {
		var got []archived
		err := schema.DecodeArchive(b, hour, offLo, n, func(off, ts int64, id string) { got = append(got, archived{off, ts, id}) })
		if err != nil {
			return
		}
		last := int64(offLo)
		for i, r := range got {
			if r.off < last || r.ts < hour || r.ts >= hour+schema.HourMs || r.id == "" {
				t.Fatalf("record %d: %+v (after offset %d)", i, r, last)
			}
			last = r.off
		}
		if len(got) == 0 {
			return
		}
		var e schema.ArchiveEncoder
		e.Reset(hour, offLo)
		for _, r := range got {
			e.Add(uint64(r.off), r.ts, r.id)
		}
		if fmt.Sprint(e.Bytes()) != fmt.Sprint(b) && !nonMinimal(b) {
			t.Fatalf("re-encoded %x, decoded from %x", e.Bytes(), b)
		}
	})
}

// nonMinimal reports whether b may hold varints with redundant bytes
// (which decode but re-encode shorter).
func nonMinimal(b []byte) bool {
	for i := 1; i < len(b); i++ {
		if b[i] == 0 && b[i-1]&0x80 != 0 {
			return true
		}
	}
	return false
}
