package reference

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/schema"
)

// recordTs is the Kafka timestamp of test records unless a test sets one:
// after every occurred_at used here.
var recordTs = time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()

// js renders s as a JSON string.
func js(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// ev renders an event. occurred is raw JSON; extra are raw members.
func ev(id, typ, account, user, occurred string, extra ...string) string {
	parts := []string{`"event_id":` + js(id), `"type":` + js(typ), `"account_id":` + js(account)}
	if user != "" {
		parts = append(parts, `"user_id":`+js(user))
	}
	parts = append(parts, `"occurred_at":`+occurred)
	parts = append(parts, extra...)
	return "{" + strings.Join(parts, ",") + "}"
}

// at renders an RFC 3339 UTC string for a time given as "2006-01-02T15:04:05Z".
func at(s string) string { return js(s) }

// stream collects records, numbering offsets per partition.
type stream struct {
	recs []Record
	next map[int32]int64
}

func (s *stream) add(partition int32, ts int64, value string) {
	if s.next == nil {
		s.next = make(map[int32]int64)
	}
	s.recs = append(s.recs, Record{Topic: "t", Partition: partition, Offset: s.next[partition], TimestampMs: ts, Value: []byte(value)})
	s.next[partition]++
}

// addAll adds values to partition 0 at recordTs.
func (s *stream) addAll(values ...string) {
	for _, v := range values {
		s.add(0, recordTs, v)
	}
}

func date(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC) }

var noActivity = time.Unix(0, 0).UTC()

// row is a Rollup with the derived fields filled in.
func row(account string, qs time.Time, label string, purchased, assigned, active, activeAssigned, logins, featureEvents, features uint64, last time.Time) schema.Rollup {
	ratio := func(n, d uint64) float64 {
		if d == 0 {
			return 0
		}
		return float64(n) / float64(d)
	}
	return schema.Rollup{
		AccountID: account, QuarterStart: qs, QuarterEnd: qs.AddDate(0, 3, 0), Quarter: label,
		SeatsPurchased: purchased, SeatsAssigned: assigned, SeatUtilization: ratio(assigned, purchased),
		ActiveUsers: active, ActiveAssignedUsers: activeAssigned, ActivationRate: ratio(activeAssigned, assigned),
		Logins: logins, FeatureEvents: featureEvents, FeaturesUsed: features, LastActivityAt: last,
	}
}

func checkRollups(t *testing.T, got, want []schema.Rollup) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	t.Errorf("rollups: got %d rows, want %d", len(got), len(want))
	for i := range max(len(got), len(want)) {
		var g, w any = "-", "-"
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("row %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
}

func checkFeatures(t *testing.T, got, want []schema.FeatureRow) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("features:\n got %+v\nwant %+v", got, want)
	}
}

func TestSeatTies(t *testing.T) {
	var s stream
	const T = `"2026-02-01T10:00:00.123Z"`
	s.addAll(
		// Same ms: the greater event_id wins, whatever the stream order.
		ev("p2", "seats_purchased", "a", "", T, `"seats":7`),
		ev("p1", "seats_purchased", "a", "", T, `"seats":3`),
		ev("x2", "seat_assigned", "a", "u1", T),
		ev("x1", "seat_unassigned", "a", "u1", T),
		ev("y1", "seat_assigned", "a", "u2", T),
		ev("y2", "seat_unassigned", "a", "u2", T),
		// A later occurred_at wins over a greater event_id.
		ev("z9", "seat_unassigned", "a", "u3", `"2026-02-01T10:00:00.124Z"`),
		ev("z1", "seat_assigned", "a", "u3", `"2026-02-01T10:00:00.125Z"`),
		ev("l1", "login", "a", "u1", at("2026-02-02T00:00:00.999Z")),
		ev("l2", "login", "a", "u2", at("2026-02-02T00:00:00Z")),
	)
	res := Compute(s.recs, Options{})
	checkRollups(t, res.Rollups, []schema.Rollup{
		row("a", date(2026, 1, 1), "2026-Q1", 7, 2, 2, 1, 2, 0, 0, time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)),
	})
	if res.Accepted != 10 || res.Duplicates != 0 || len(res.Rejected) != 0 {
		t.Errorf("counts = %d accepted, %d duplicates, %d rejected", res.Accepted, res.Duplicates, len(res.Rejected))
	}
}

func TestQuarterEdge(t *testing.T) {
	// 2026-04-01T00:00:00Z = 1775001600000.
	var s stream
	s.addAll(
		ev("e1", "login", "a", "q1", at("2026-04-01T08:59:59.999+09:00")),
		ev("e2", "login", "a", "q2", at("2026-04-01T09:00:00+09:00")),
		ev("e3", "login", "a", "q3", "1775001599999"),
		ev("e4", "login", "a", "q4", "1775001600000"),
		ev("e5", "feature_used", "a", "q5", at("2026-03-31T19:00:00.000-05:00"), `"feature":"f"`),
		ev("e6", "feature_used", "a", "q6", at("2026-03-31T18:59:59.999999999-05:00"), `"feature":"f"`),
		ev("e7", "login", "a", "q7", at("2026-03-31t23:59:59.9999999z")),
	)
	res := Compute(s.recs, Options{})
	checkRollups(t, res.Rollups, []schema.Rollup{
		row("a", date(2026, 1, 1), "2026-Q1", 0, 0, 4, 0, 3, 1, 1, time.Date(2026, 3, 31, 23, 59, 59, 0, time.UTC)),
		row("a", date(2026, 4, 1), "2026-Q2", 0, 0, 3, 0, 2, 1, 1, time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)),
	})
	checkFeatures(t, res.Features, []schema.FeatureRow{
		{AccountID: "a", QuarterStart: date(2026, 1, 1), Feature: "f", ActiveUsers: 1, Events: 1},
		{AccountID: "a", QuarterStart: date(2026, 4, 1), Feature: "f", ActiveUsers: 1, Events: 1},
	})
}

func TestFiscalYearStartingInApril(t *testing.T) {
	var s stream
	s.addAll(
		ev("e1", "login", "a", "u1", at("2026-03-31T23:59:59Z")),
		ev("e2", "login", "a", "u1", at("2026-04-01T00:00:00Z")),
		ev("e3", "login", "b", "u1", at("2027-01-15T00:00:00+09:00")), // 2027-01-14T15:00Z
	)
	s.recs[2].TimestampMs = date(2027, 2, 1).UnixMilli()
	res := Compute(s.recs, Options{FiscalStartMonth: 4})
	checkRollups(t, res.Rollups, []schema.Rollup{
		row("a", date(2026, 1, 1), "FY2026-Q4", 0, 0, 1, 0, 1, 0, 0, time.Date(2026, 3, 31, 23, 59, 59, 0, time.UTC)),
		row("a", date(2026, 4, 1), "FY2027-Q1", 0, 0, 1, 0, 1, 0, 0, time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)),
		row("a", date(2026, 7, 1), "FY2027-Q2", 0, 0, 0, 0, 0, 0, 0, noActivity),
		row("a", date(2026, 10, 1), "FY2027-Q3", 0, 0, 0, 0, 0, 0, 0, noActivity),
		row("a", date(2027, 1, 1), "FY2027-Q4", 0, 0, 0, 0, 0, 0, 0, noActivity),
		row("b", date(2027, 1, 1), "FY2027-Q4", 0, 0, 1, 0, 1, 0, 0, time.Date(2027, 1, 14, 15, 0, 0, 0, time.UTC)),
	})
}

func TestQuarterOf(t *testing.T) {
	f := func(ts string, fiscalStart int, wantStart time.Time, wantLabel string) {
		t.Helper()
		tm, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			t.Fatal(err)
		}
		q := quarterOf(tm.UnixMilli(), fiscalStart)
		if !q.start.Equal(wantStart) || !q.end.Equal(wantStart.AddDate(0, 3, 0)) || q.label != wantLabel {
			t.Errorf("quarterOf(%s, %d) = %v–%v %q, want %v %q", ts, fiscalStart, q.start, q.end, q.label, wantStart, wantLabel)
		}
	}
	f("2026-01-01T00:00:00Z", 1, date(2026, 1, 1), "2026-Q1")
	f("2026-03-31T23:59:59.999Z", 1, date(2026, 1, 1), "2026-Q1")
	f("2026-04-01T00:00:00Z", 1, date(2026, 4, 1), "2026-Q2")
	f("2026-09-15T00:00:00Z", 1, date(2026, 7, 1), "2026-Q3")
	f("2026-12-31T23:59:59.999Z", 1, date(2026, 10, 1), "2026-Q4")
	f("2026-04-01T00:00:00Z", 4, date(2026, 4, 1), "FY2027-Q1")
	f("2026-03-31T00:00:00Z", 4, date(2026, 1, 1), "FY2026-Q4")
	f("2027-02-01T00:00:00Z", 4, date(2027, 1, 1), "FY2027-Q4")
	f("2026-01-15T00:00:00Z", 2, date(2025, 11, 1), "FY2026-Q4") // FY Feb 2025–Jan 2026
	f("2026-02-01T00:00:00Z", 2, date(2026, 2, 1), "FY2027-Q1")
	f("2026-12-01T00:00:00Z", 12, date(2026, 12, 1), "FY2027-Q1")
	f("2026-11-30T00:00:00Z", 12, date(2026, 9, 1), "FY2026-Q4")
	f("2026-01-31T00:00:00Z", 12, date(2025, 12, 1), "FY2026-Q1")
	f("2026-10-01T00:00:00Z", 10, date(2026, 10, 1), "FY2027-Q1")
	f("2000-01-01T00:00:00Z", 7, date(2000, 1, 1), "FY2000-Q3") // FY Jul 1999–Jun 2000
	f("1999-12-31T23:59:59.999Z", 7, date(1999, 10, 1), "FY2000-Q2")
}

func TestOverAssignment(t *testing.T) {
	var s stream
	s.addAll(
		ev("p", "seats_purchased", "a", "", at("2026-01-02T00:00:00Z"), `"seats":2`),
		ev("s1", "seat_assigned", "a", "u1", at("2026-01-02T01:00:00Z")),
		ev("s2", "seat_assigned", "a", "u2", at("2026-01-02T01:00:00Z")),
		ev("s3", "seat_assigned", "a", "u3", at("2026-01-02T01:00:00Z")),
		ev("l1", "login", "a", "u1", at("2026-01-03T00:00:00Z")),
		ev("l2", "login", "a", "u4", at("2026-01-03T00:00:00Z")),
		// In Q2 u3 is unassigned and u1 reassigned: still 2 assigned of 2.
		ev("s4", "seat_unassigned", "a", "u3", at("2026-05-01T00:00:00Z")),
		ev("f1", "feature_used", "a", "u3", at("2026-05-02T00:00:00Z"), `"feature":"x"`),
		ev("f2", "feature_used", "a", "u2", at("2026-05-02T00:00:00Z"), `"feature":"x"`),
		ev("f3", "feature_used", "a", "u2", at("2026-05-03T00:00:00Z"), `"feature":"y"`),
	)
	res := Compute(s.recs, Options{})
	checkRollups(t, res.Rollups, []schema.Rollup{
		row("a", date(2026, 1, 1), "2026-Q1", 2, 3, 2, 1, 2, 0, 0, time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)),
		row("a", date(2026, 4, 1), "2026-Q2", 2, 2, 2, 1, 0, 3, 2, time.Date(2026, 5, 3, 0, 0, 0, 0, time.UTC)),
	})
	if u := res.Rollups[0].SeatUtilization; u != 1.5 {
		t.Errorf("utilization = %v, want 1.5", u)
	}
	checkFeatures(t, res.Features, []schema.FeatureRow{
		{AccountID: "a", QuarterStart: date(2026, 4, 1), Feature: "x", ActiveUsers: 2, Events: 2},
		{AccountID: "a", QuarterStart: date(2026, 4, 1), Feature: "y", ActiveUsers: 1, Events: 1},
	})
}

func TestSeatsWithoutActivity(t *testing.T) {
	var s stream
	s.addAll(
		ev("p", "seats_purchased", "quiet", "", at("2026-01-05T00:00:00Z"), `"seats":5`),
		ev("s1", "seat_assigned", "quiet", "u1", at("2026-01-05T00:00:00Z")),
		ev("s2", "seat_assigned", "quiet", "u2", at("2026-01-05T00:00:00Z")),
		ev("l", "login", "busy", "u1", at("2026-08-01T00:00:00Z")),
	)
	res := Compute(s.recs, Options{})
	checkRollups(t, res.Rollups, []schema.Rollup{
		row("busy", date(2026, 7, 1), "2026-Q3", 0, 0, 1, 0, 1, 0, 0, time.Date(2026, 8, 1, 0, 0, 0, 0, time.UTC)),
		row("quiet", date(2026, 1, 1), "2026-Q1", 5, 2, 0, 0, 0, 0, 0, noActivity),
		row("quiet", date(2026, 4, 1), "2026-Q2", 5, 2, 0, 0, 0, 0, 0, noActivity),
		row("quiet", date(2026, 7, 1), "2026-Q3", 5, 2, 0, 0, 0, 0, 0, noActivity),
	})
	if res.Features != nil {
		t.Errorf("features = %+v, want none", res.Features)
	}
}

func TestLateEvent(t *testing.T) {
	var s stream
	s.addAll(
		ev("e1", "login", "a", "u1", at("2026-05-01T00:00:00Z")),
		ev("e2", "login", "b", "u1", at("2026-05-01T00:00:00Z")),
		// Late, for Q1: a's first quarter becomes Q1; a purchase there
		// carries into Q2.
		ev("e3", "login", "a", "u2", at("2026-02-01T00:00:00Z")),
		ev("e4", "seats_purchased", "a", "", at("2026-02-01T00:00:00Z"), `"seats":4`),
		// Late, for b's quarter: a purchase before the quarter's end.
		ev("e5", "seats_purchased", "b", "", at("2026-04-02T00:00:00Z"), `"seats":9`),
	)
	res := Compute(s.recs, Options{})
	checkRollups(t, res.Rollups, []schema.Rollup{
		row("a", date(2026, 1, 1), "2026-Q1", 4, 0, 1, 0, 1, 0, 0, time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)),
		row("a", date(2026, 4, 1), "2026-Q2", 4, 0, 1, 0, 1, 0, 0, time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)),
		row("b", date(2026, 4, 1), "2026-Q2", 9, 0, 1, 0, 1, 0, 0, time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)),
	})
}

func TestDuplicates(t *testing.T) {
	const h = int64(time.Hour / time.Millisecond)
	base := date(2026, 6, 1).UnixMilli()
	var s stream
	x := ev("x", "login", "a", "u1", at("2026-05-01T00:00:00Z"))
	y := ev("y", "login", "a", "u2", at("2026-05-01T00:00:00Z"))
	z := ev("z", "login", "a", "u3", at("2026-05-01T00:00:00Z"))
	s.add(0, base, x)
	s.add(0, base, y)
	s.add(0, base, z)
	s.add(1, base+2*h, x)  // another partition: not a duplicate
	s.add(0, base+1*h, x)  // inside the window: dropped
	s.add(0, base+24*h, y) // exactly the window: dropped
	s.add(0, base+24*h+1, z)
	// z: 24h+1ms after the original, outside: counted.
	s.add(0, base+24*h+30*60_000, x) // 24.5h after x but 23.5h after its copy: dropped
	s.add(0, base+49*h, y)           // 25h after the last y: counted
	// A rejected record does not make the next one a duplicate.
	s.add(0, base+49*h, `{"event_id":"w","type":"login"}`)
	s.add(0, base+49*h, ev("w", "login", "a", "u4", at("2026-05-01T00:00:00Z")))

	res := Compute(s.recs, Options{})
	if res.Accepted != 7 || res.Duplicates != 3 {
		t.Errorf("accepted %d, duplicates %d; want 7, 3", res.Accepted, res.Duplicates)
	}
	if want := []Rejected{{Partition: 0, Offset: 8, Reason: ReasonMissingField}}; !reflect.DeepEqual(res.Rejected, want) {
		t.Errorf("rejected = %+v, want %+v", res.Rejected, want)
	}
	checkRollups(t, res.Rollups, []schema.Rollup{
		row("a", date(2026, 4, 1), "2026-Q2", 0, 0, 4, 0, 7, 0, 0, time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)),
	})

	// With a 30m window every copy above counts. A copy at a later offset
	// whose Kafka timestamp is before the original's is a duplicate within
	// the window (either direction), not beyond it.
	s.add(3, base+5*h, x)
	s.add(3, base, x)                // 5h before: counted
	s.add(3, base+5*h-20*60_000, x)  // 20m before the first: dropped
	s.add(3, base+5*h+-31*60_000, x) // 31m before the first, 11m before the last: dropped
	s.add(3, base+3*h+50*60_000, x)  // 39m before the nearest: counted
	res = Compute(s.recs, Options{DedupWindow: 30 * time.Minute})
	if res.Accepted != 13 || res.Duplicates != 2 {
		t.Errorf("30m window: accepted %d, duplicates %d; want 13, 2", res.Accepted, res.Duplicates)
	}
}

func TestUnicodeAndQuotedAccounts(t *testing.T) {
	accounts := []string{`"quoted", \back\slash 'single'`, "ünïcødé-日本語-🚀", "tab\tnew\nline"}
	var s stream
	for i, a := range accounts {
		s.addAll(ev(fmt.Sprint("e", i), "feature_used", a, "u", at("2026-01-02T00:00:00Z"), `"feature":`+js(fmt.Sprint("f", i))))
	}
	// The same account spelled with escapes.
	s.addAll(`{"event_id":"esc","type":"login","account_id":"\u00fcn\u00efc\u00f8d\u00e9-\u65e5\u672c\u8a9e-\ud83d\ude80","user_id":"v","occurred_at":"2026-01-03T00:00:00Z"}`)
	res := Compute(s.recs, Options{})
	last := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	checkRollups(t, res.Rollups, []schema.Rollup{
		row(accounts[0], date(2026, 1, 1), "2026-Q1", 0, 0, 1, 0, 0, 1, 1, last),
		row(accounts[2], date(2026, 1, 1), "2026-Q1", 0, 0, 1, 0, 0, 1, 1, last),
		row(accounts[1], date(2026, 1, 1), "2026-Q1", 0, 0, 2, 0, 1, 1, 1, last.AddDate(0, 0, 1)),
	})
}

func TestRejectReasons(t *testing.T) {
	good := ev("g", "login", "a", "u", at("2026-01-01T00:00:00Z"))
	var s stream
	s.add(2, recordTs, good)
	cases := []struct{ value, reason string }{
		{`{"blob":"` + strings.Repeat("x", 1<<20) + `"}`, ReasonTooLarge},
		{`[1]`, ReasonMalformedJSON},
		{ev("e", "login", "a", "u", at("2026-01-01T00:00:00Z"), `"schema_version":2`), ReasonUnsupportedSchemaVersion},
		{ev("e", "login", "a", "", at("2026-01-01T00:00:00Z")), ReasonMissingField},
		{ev("e", "logout", "a", "u", at("2026-01-01T00:00:00Z")), ReasonUnknownType},
		{ev("e", "login", "a", "u", at("2026-01-01T00:00:00Z"), `"product":false`), ReasonInvalidField},
		{ev("e", "login", "a", "u", at("2027-01-01T01:00:00.001Z")), ReasonTimestampOutOfRange},
	}
	var want []Rejected
	for _, c := range cases {
		want = append(want, Rejected{Partition: 2, Offset: s.next[2], Reason: c.reason})
		s.add(2, recordTs, c.value)
	}
	// Records in any order give the same result.
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(s.recs), func(i, j int) { s.recs[i], s.recs[j] = s.recs[j], s.recs[i] })
	res := Compute(s.recs, Options{})
	if !reflect.DeepEqual(res.Rejected, want) {
		t.Errorf("rejected:\n got %+v\nwant %+v", res.Rejected, want)
	}
	if res.Accepted != 1 || len(res.Rollups) != 1 {
		t.Errorf("accepted %d, %d rollups; want 1, 1", res.Accepted, len(res.Rollups))
	}
	// The skew is a setting.
	if res := Compute(s.recs, Options{MaxClockSkew: 2 * time.Hour}); len(res.Rejected) != len(want)-1 {
		t.Errorf("2h skew: %d rejected, want %d", len(res.Rejected), len(want)-1)
	}
}

func TestEmpty(t *testing.T) {
	res := Compute(nil, Options{})
	if !reflect.DeepEqual(res, Result{}) {
		t.Errorf("Compute(nil) = %+v", res)
	}
}
