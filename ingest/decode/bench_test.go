package decode

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/schema/event"
)

// benchRecordTsMs is the Kafka timestamp of every benchmark record.
var benchRecordTsMs = time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC).UnixMilli()

// realisticEvents returns n varied, valid records of 200–300 bytes as
// product services publish them: UUID event IDs, a product, RFC 3339
// timestamps with Z or an offset (some with fractions), some epoch millis,
// and a few unknown fields.
func realisticEvents(n int) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	types := []string{"login", "login", "feature_used", "feature_used", "feature_used", "seat_assigned", "seat_unassigned", "seats_purchased"}
	products := []string{"analytics", "billing-portal", "crm", "docs", "warehouse-studio"}
	features := []string{"export_csv", "dashboard.share", "sso_login", "report_builder", "api_tokens", "alerts.create"}
	offsets := []string{"Z", "+09:00", "-05:00", "+05:30", "+00:00", "Z", "-08:00", "+01:00"}
	clients := []string{"web", "ios", "android", "cli"}
	out := make([][]byte, n)
	for i := range out {
		typ := types[rng.IntN(len(types))]
		at := time.UnixMilli(benchRecordTsMs - rng.Int64N(90*24*3600*1000))
		var occurred string
		switch rng.IntN(4) {
		case 0:
			occurred = fmt.Sprint(at.UnixMilli())
		case 1:
			off := offsets[rng.IntN(len(offsets))]
			occurred = `"` + at.In(zoneOf(off)).Format("2006-01-02T15:04:05.000") + off + `"`
		default:
			off := offsets[rng.IntN(len(offsets))]
			occurred = `"` + at.In(zoneOf(off)).Format("2006-01-02T15:04:05") + off + `"`
		}
		b := fmt.Appendf(nil, `{"schema_version":1,"event_id":"%08x-%04x-4%03x-a%03x-%012x","type":%q,"account_id":"acct-%06d"`,
			rng.Uint32(), rng.IntN(1<<16), rng.IntN(1<<12), rng.IntN(1<<12), rng.Uint64()&(1<<48-1), typ, rng.IntN(5000))
		if typ != "seats_purchased" {
			b = fmt.Appendf(b, `,"user_id":"usr_%012x"`, rng.Uint64()&(1<<48-1))
		}
		b = fmt.Appendf(b, `,"occurred_at":%s,"product":%q`, occurred, products[rng.IntN(len(products))])
		switch typ {
		case "feature_used":
			b = fmt.Appendf(b, `,"feature":%q`, features[rng.IntN(len(features))])
		case "seats_purchased":
			b = fmt.Appendf(b, `,"seats":%d`, 1+rng.IntN(500))
		}
		b = fmt.Appendf(b, `,"client":{"kind":%q,"version":"%d.%d.%d"},"region":"eu-west-1"}`,
			clients[rng.IntN(len(clients))], rng.IntN(10), rng.IntN(30), rng.IntN(100))
		out[i] = b
	}
	return out
}

func zoneOf(off string) *time.Location {
	if off == "Z" {
		return time.UTC
	}
	t, err := time.Parse("-07:00", off)
	if err != nil {
		panic(err)
	}
	return t.Location()
}

func BenchmarkDecode(b *testing.B) {
	events := realisticEvents(1000)
	var total int
	for _, e := range events {
		total += len(e)
	}
	d := New(Config{})
	var ev event.Event
	for _, e := range events { // all must be accepted
		if rej := d.Decode(e, benchRecordTsMs, &ev); rej != nil {
			b.Fatalf("%s: %v", e, rej)
		}
	}
	b.ReportAllocs()
	b.SetBytes(int64(total / len(events)))
	i := 0
	for b.Loop() {
		if rej := d.Decode(events[i], benchRecordTsMs, &ev); rej != nil {
			b.Fatal(rej)
		}
		i++
		if i == len(events) {
			i = 0
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
}

func BenchmarkParseRFC3339Ms(b *testing.B) {
	in := []byte("2026-07-01T08:59:59.999+09:00")
	for b.Loop() {
		if _, ok := ParseRFC3339Ms(in); !ok {
			b.Fatal("rejected")
		}
	}
}
