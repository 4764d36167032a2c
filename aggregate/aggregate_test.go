package aggregate

import (
	"cmp"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

func ms(s string) int64 {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

func ev(typ event.Type, id, acct, user, feat, at string, seats int64) *event.Event {
	return &event.Event{EventID: []byte(id), Type: typ, AccountID: []byte(acct), UserID: []byte(user), Feature: []byte(feat), OccurredAtMs: ms(at), Seats: seats}
}

func drain(a *Aggregator) schema.Facts {
	var f schema.Facts
	a.Drain(&f)
	slices.SortFunc(f.EventCounts, func(x, y schema.EventCount) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month), cmp.Compare(x.Kind, y.Kind), cmp.Compare(x.Feature, y.Feature), cmp.Compare(x.Bucket, y.Bucket))
	})
	slices.SortFunc(f.AccountMonths, func(x, y schema.AccountMonth) int {
		return cmp.Or(cmp.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month))
	})
	return f
}

func TestSeatTieAtSameInstantGreaterEventIDWins(t *testing.T) {
	a := New("t")
	a.Assign(0)
	a.Add(0, 0, ev(event.SeatAssigned, "e-b", "acme", "u1", "", "2026-05-01T00:00:00Z", 0))
	a.Add(0, 1, ev(event.SeatUnassigned, "e-a", "acme", "u1", "", "2026-05-01T00:00:00Z", 0)) // smaller id: loses
	a.Add(0, 2, ev(event.SeatsPurchased, "p-1", "acme", "", "", "2026-05-01T00:00:00Z", 10))
	a.Add(0, 3, ev(event.SeatsPurchased, "p-2", "acme", "", "", "2026-05-01T00:00:00Z", 7)) // greater id: wins
	f := drain(a)
	if len(f.SeatEvents) != 1 || !f.SeatEvents[0].Assigned || f.SeatEvents[0].EventID != "e-b" {
		t.Fatalf("seat events = %+v, want the assignment e-b", f.SeatEvents)
	}
	if len(f.SeatPurchases) != 1 || f.SeatPurchases[0].Seats != 7 {
		t.Fatalf("purchases = %+v, want 7 seats from p-2", f.SeatPurchases)
	}
	if len(f.AccountMonths) != 1 || f.AccountMonths[0].Month != quarter.MonthIndex(ms("2026-05-01T00:00:00Z")) {
		t.Fatalf("account months = %+v", f.AccountMonths)
	}
}

func TestCountsCoverTheirBucketFromItsStart(t *testing.T) {
	a := New("t")
	a.Assign(3)
	const B = schema.BucketSize
	a.Add(3, B-2, ev(event.Login, "1", "acme", "u1", "", "2026-05-01T00:00:00Z", 0))
	a.Skip(3, B-1) // a rejected record
	f := drain(a)
	want := []schema.EventCount{{Account: "acme", Month: quarter.MonthIndex(ms("2026-05-01T00:00:00Z")), Kind: schema.KindLogin, Topic: "t", Partition: 3, Bucket: 0, CoveredEnd: B, Events: 1}}
	if !slices.Equal(f.EventCounts, want) {
		t.Fatalf("first flush counts = %+v, want %+v", f.EventCounts, want)
	}
	// Next bucket: a new row keyed by bucket 1; bucket 0 is not rewritten.
	a.Add(3, B, ev(event.Login, "2", "acme", "u1", "", "2026-05-02T00:00:00Z", 0))
	a.Add(3, B+1, ev(event.Login, "3", "acme", "u2", "", "2026-05-03T00:00:00Z", 0))
	f = drain(a)
	want = []schema.EventCount{{Account: "acme", Month: quarter.MonthIndex(ms("2026-05-01T00:00:00Z")), Kind: schema.KindLogin, Topic: "t", Partition: 3, Bucket: 1, CoveredEnd: B + 2, Events: 2}}
	if !slices.Equal(f.EventCounts, want) {
		t.Fatalf("second flush counts = %+v, want %+v", f.EventCounts, want)
	}
	// Same bucket again: the running total of the bucket, with a later covered_end.
	a.Add(3, B+2, ev(event.Login, "4", "acme", "u1", "", "2026-05-04T00:00:00Z", 0))
	f = drain(a)
	if len(f.EventCounts) != 1 || f.EventCounts[0].Events != 3 || f.EventCounts[0].CoveredEnd != B+3 {
		t.Fatalf("third flush counts = %+v, want 3 events covering to %d", f.EventCounts, B+3)
	}
	// Nothing new: nothing written.
	if f = drain(a); f.Rows() != 0 {
		t.Fatalf("idle flush wrote %d rows", f.Rows())
	}
}

func TestBucketClosedBetweenFlushesKeepsItsCounts(t *testing.T) {
	a := New("t")
	a.Assign(0)
	const B = schema.BucketSize
	a.Add(0, B-1, ev(event.FeatureUsed, "1", "acme", "u1", "export", "2026-05-01T00:00:00Z", 0))
	a.Add(0, B, ev(event.FeatureUsed, "2", "acme", "u1", "export", "2026-05-01T00:00:01Z", 0))
	f := drain(a)
	if len(f.EventCounts) != 2 {
		t.Fatalf("counts = %+v, want one row per bucket", f.EventCounts)
	}
	for i, c := range f.EventCounts {
		if c.Bucket != uint64(i) || c.Events != 1 || c.Feature != "export" || c.Kind != schema.KindFeatureUsed {
			t.Fatalf("count %d = %+v", i, c)
		}
	}
	if f.EventCounts[0].CoveredEnd != B || f.EventCounts[1].CoveredEnd != B+1 {
		t.Fatalf("covered ends = %d, %d", f.EventCounts[0].CoveredEnd, f.EventCounts[1].CoveredEnd)
	}
	if len(f.FeatureUsers) != 1 || len(f.UserActivity) != 1 || f.UserActivity[0].LastMs != ms("2026-05-01T00:00:01Z") {
		t.Fatalf("feature users %+v, activity %+v", f.FeatureUsers, f.UserActivity)
	}
}

func TestActivityKeepsLatestPerMonthAndUnicodeNames(t *testing.T) {
	a := New("t")
	a.Assign(0)
	acct := "Ünïcødé \"quoted\" 会社"
	a.Add(0, 0, ev(event.Login, "1", acct, "u1", "", "2026-06-30T23:59:59.999Z", 0))
	a.Add(0, 1, ev(event.Login, "2", acct, "u1", "", "2026-07-01T08:59:59.999+09:00", 0)) // same instant class: June in UTC
	a.Add(0, 2, ev(event.Login, "3", acct, "u1", "", "2026-06-01T00:00:00Z", 0))
	f := drain(a)
	if len(f.UserActivity) != 1 || f.UserActivity[0].Account != acct || f.UserActivity[0].LastMs != ms("2026-06-30T23:59:59.999Z") {
		t.Fatalf("activity = %+v", f.UserActivity)
	}
}

func BenchmarkAdd(b *testing.B) {
	const accounts, users = 10_000, 300_000
	evs := make([]event.Event, 1<<16)
	base := ms("2026-04-01T00:00:00Z")
	for i := range evs {
		u := (i * 7919) % users
		t := event.Login
		if i%3 == 0 {
			t = event.FeatureUsed
		}
		evs[i] = event.Event{EventID: fmt.Appendf(nil, "e-%d", i), Type: t, AccountID: fmt.Appendf(nil, "acct-%05d", u%accounts),
			UserID: fmt.Appendf(nil, "user-%06d", u), Feature: fmt.Appendf(nil, "feature-%02d", i%40), OccurredAtMs: base + int64(i)*60_000}
	}
	a := New("t")
	a.Assign(0)
	var f schema.Facts
	for i := range evs { // warm the interner and maps
		a.Add(0, int64(i), &evs[i])
	}
	a.Drain(&f)
	b.ReportAllocs()
	off := int64(len(evs))
	for b.Loop() {
		a.Add(0, off, &evs[off&(1<<16-1)])
		off++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
}

// A partition lost between two flushes must not write the counts it held,
// nor count them again when it comes back (it is recounted from its bucket
// start after the new assignment).
func TestDropForgetsUnwrittenCounts(t *testing.T) {
	a := New("t")
	a.Assign(0)
	a.Assign(1)
	a.Add(0, 5, ev(event.Login, "1", "acme", "u1", "", "2026-05-01T00:00:00Z", 0))
	a.Add(0, 6, ev(event.FeatureUsed, "2", "acme", "u1", "export", "2026-05-01T00:00:00Z", 0))
	a.Add(1, 9, ev(event.Login, "3", "acme", "u1", "", "2026-05-01T00:00:00Z", 0))
	a.Drop(0)
	f := drain(a)
	if len(f.EventCounts) != 1 || f.EventCounts[0].Partition != 1 || f.EventCounts[0].Events != 1 {
		t.Fatalf("counts after dropping partition 0 = %+v, want partition 1's only", f.EventCounts)
	}
	if len(f.UserActivity) == 0 || f.UserActivity[0].User != "u1" || len(f.FeatureUsers) != 1 {
		t.Fatalf("set and max facts must stay: activity %+v, features %+v", f.UserActivity, f.FeatureUsers)
	}
	// Lost and regained before a flush: recounted from the bucket start.
	a.Add(0, 7, ev(event.Login, "4", "acme", "u2", "", "2026-05-02T00:00:00Z", 0))
	a.Assign(0)
	a.Add(0, 0, ev(event.Login, "4", "acme", "u2", "", "2026-05-02T00:00:00Z", 0))
	f = drain(a)
	if len(f.EventCounts) != 1 || f.EventCounts[0].Events != 1 || f.EventCounts[0].CoveredEnd != 1 {
		t.Fatalf("counts after re-assignment = %+v, want 1 event covering [0,1)", f.EventCounts)
	}
}
