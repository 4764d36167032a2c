package decode

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/usagepipe/usagepipe/schema/event"
)

// recTs is the Kafka record timestamp of the test records.
var recTs = time.Date(2026, 7, 1, 12, 0, 0, 0, time.UTC).UnixMilli()

// baseOccurredMs is occurred_at of the records rec builds.
var baseOccurredMs = time.Date(2026, 6, 30, 12, 0, 0, 0, time.UTC).UnixMilli()

// rec builds a valid record of type typ, then applies edits in order:
// "key=raw" sets key to the raw JSON text (appending key if it is new), and
// "-key" removes key. Keys are written as they are, without escaping.
func rec(typ string, edits ...string) string {
	kvs := [][2]string{
		{"event_id", `"e-1"`},
		{"type", `"` + typ + `"`},
		{"account_id", `"acct-1"`},
	}
	if typ != "seats_purchased" {
		kvs = append(kvs, [2]string{"user_id", `"user-1"`})
	}
	kvs = append(kvs, [2]string{"occurred_at", `"2026-06-30T12:00:00Z"`}, [2]string{"product", `"web"`})
	switch typ {
	case "feature_used":
		kvs = append(kvs, [2]string{"feature", `"export"`})
	case "seats_purchased":
		kvs = append(kvs, [2]string{"seats", `25`})
	}
edits:
	for _, e := range edits {
		if k, ok := strings.CutPrefix(e, "-"); ok {
			for i := range kvs {
				if kvs[i][0] == k {
					kvs = append(kvs[:i], kvs[i+1:]...)
					continue edits
				}
			}
			panic("rec: no key " + k)
		}
		k, v, ok := strings.Cut(e, "=")
		if !ok {
			panic("rec: bad edit " + e)
		}
		for i := range kvs {
			if kvs[i][0] == k {
				kvs[i][1] = v
				continue edits
			}
		}
		kvs = append(kvs, [2]string{k, v})
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, kv := range kvs {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%s":%s`, kv[0], kv[1])
	}
	b.WriteByte('}')
	return b.String()
}

// want is the Event rec(typ) decodes to, changed by edit.
func want(typ event.Type, edit func(*event.Event)) event.Event {
	e := event.Event{EventID: []byte("e-1"), Type: typ, AccountID: []byte("acct-1"), UserID: []byte("user-1"),
		Product: []byte("web"), OccurredAtMs: baseOccurredMs}
	switch typ {
	case event.FeatureUsed:
		e.Feature = []byte("export")
	case event.SeatsPurchased:
		e.UserID, e.Seats = nil, 25
	}
	if edit != nil {
		edit(&e)
	}
	return e
}

// show renders an Event for comparison; nil and empty slices look the same.
func show(e event.Event) string {
	return fmt.Sprintf("event_id=%q type=%v account_id=%q user_id=%q feature=%q product=%q occurred_at=%d seats=%d",
		e.EventID, e.Type, e.AccountID, e.UserID, e.Feature, e.Product, e.OccurredAtMs, e.Seats)
}

var typeNames = []string{"login", "feature_used", "seat_assigned", "seat_unassigned", "seats_purchased"}

func TestDecodeAccepted(t *testing.T) {
	d := New(Config{})
	f := func(value string, want event.Event) {
		t.Helper()
		var ev event.Event
		if rej := d.Decode([]byte(value), recTs, &ev); rej != nil {
			t.Fatalf("Decode(%s) = %v, want accepted", value, rej)
		}
		if got, w := show(ev), show(want); got != w {
			t.Fatalf("Decode(%s)\n got %s\nwant %s", value, got, w)
		}
	}
	withMs := func(ms int64) func(*event.Event) { return func(e *event.Event) { e.OccurredAtMs = ms } }
	utc := func(y int, mo time.Month, d, h, mi, s, ns int) int64 {
		return time.Date(y, mo, d, h, mi, s, ns, time.UTC).UnixMilli()
	}

	// One per type.
	f(rec("login"), want(event.Login, nil))
	f(rec("feature_used"), want(event.FeatureUsed, nil))
	f(rec("seat_assigned"), want(event.SeatAssigned, nil))
	f(rec("seat_unassigned"), want(event.SeatUnassigned, nil))
	f(rec("seats_purchased"), want(event.SeatsPurchased, nil))
	f(`{"type":"seats_purchased","seats":7,"account_id":"a","occurred_at":1782820800000,"event_id":"x"}`,
		event.Event{EventID: []byte("x"), Type: event.SeatsPurchased, AccountID: []byte("a"), OccurredAtMs: 1782820800000, Seats: 7})

	// Whitespace around and inside the object.
	f(" \t\r\n"+strings.ReplaceAll(rec("login"), ",", " ,\n\t")+"\n ", want(event.Login, nil))

	// schema_version absent (above), 1, null.
	f(rec("login", "schema_version=1"), want(event.Login, nil))
	f(rec("login", "schema_version=null"), want(event.Login, nil))

	// IDs: 1 and 128 bytes, multi-byte UTF-8, escapes.
	f(rec("login", `event_id="x"`), want(event.Login, func(e *event.Event) { e.EventID = []byte("x") }))
	id128 := strings.Repeat("i", 128)
	f(rec("feature_used", `event_id="`+id128+`"`, `account_id="`+id128+`"`, `user_id="`+id128+`"`, `feature="`+id128+`"`),
		want(event.FeatureUsed, func(e *event.Event) {
			e.EventID, e.AccountID, e.UserID, e.Feature = []byte(id128), []byte(id128), []byte(id128), []byte(id128)
		}))
	e64 := strings.Repeat("é", 64) // 128 bytes
	f(rec("login", `account_id="`+e64+`"`), want(event.Login, func(e *event.Event) { e.AccountID = []byte(e64) }))
	f(rec("login", `account_id="`+strings.Repeat(`\u00e9`, 64)+`"`), want(event.Login, func(e *event.Event) { e.AccountID = []byte(e64) }))
	f(rec("login", `user_id="`+strings.Repeat("😀", 32)+`"`), want(event.Login, func(e *event.Event) { e.UserID = []byte(strings.Repeat("😀", 32)) }))
	f(rec("login", `event_id="a\"b"`), want(event.Login, func(e *event.Event) { e.EventID = []byte(`a"b`) }))
	f(rec("login", `event_id="\u00e9"`), want(event.Login, func(e *event.Event) { e.EventID = []byte("é") }))
	f(rec("login", `event_id="\\\/\b\f\n\r\t"`), want(event.Login, func(e *event.Event) { e.EventID = []byte("\\/\b\f\n\r\t") }))
	f(rec("login", `event_id="\ud83d\ude00"`), want(event.Login, func(e *event.Event) { e.EventID = []byte("😀") }))
	f(rec("login", `event_id="\ud800"`), want(event.Login, func(e *event.Event) { e.EventID = []byte("\uFFFD") }))
	f(rec("login", `event_id="\ud800\u0041"`), want(event.Login, func(e *event.Event) { e.EventID = []byte("\uFFFDA") }))
	f(rec("login", `event_id="\udc00\ud800x"`), want(event.Login, func(e *event.Event) { e.EventID = []byte("\uFFFD\uFFFDx") }))
	f(rec("login", `type="log\u0069n"`), want(event.Login, nil))
	f(rec("login", "-event_id", `event\u005fid="e-1"`), want(event.Login, nil))

	// product: optional everywhere, "" allowed, up to 64 bytes.
	f(rec("login", "-product"), want(event.Login, func(e *event.Event) { e.Product = nil }))
	f(rec("seats_purchased", "product=null"), want(event.SeatsPurchased, func(e *event.Event) { e.Product = nil }))
	f(rec("login", `product=""`), want(event.Login, func(e *event.Event) { e.Product = nil }))
	p64 := strings.Repeat("p", 64)
	f(rec("login", `product="`+p64+`"`), want(event.Login, func(e *event.Event) { e.Product = []byte(p64) }))

	// occurred_at: the lower bound, the skew bound, offsets, fractions, epoch ms.
	f(rec("login", `occurred_at="2000-01-01T00:00:00Z"`), want(event.Login, withMs(event.MinOccurredAtMs)))
	f(rec("login", "occurred_at=946684800000"), want(event.Login, withMs(event.MinOccurredAtMs)))
	f(rec("login", `occurred_at="2000-01-01T09:00:00+09:00"`), want(event.Login, withMs(event.MinOccurredAtMs)))
	f(rec("login", `occurred_at="2026-07-01T13:00:00Z"`), want(event.Login, withMs(recTs+time.Hour.Milliseconds())))
	f(rec("login", fmt.Sprintf("occurred_at=%d", recTs+3600_000)), want(event.Login, withMs(recTs+3600_000)))
	f(rec("login", `occurred_at="2026-07-01T08:59:59.999+09:00"`), want(event.Login, withMs(utc(2026, 6, 30, 23, 59, 59, 999e6))))
	f(rec("login", `occurred_at="2026-07-01T09:00:00+09:00"`), want(event.Login, withMs(utc(2026, 7, 1, 0, 0, 0, 0))))
	f(rec("login", `occurred_at="2026-06-30T19:00:00-05:00"`), want(event.Login, withMs(utc(2026, 7, 1, 0, 0, 0, 0))))
	f(rec("login", `occurred_at="2026-06-30t23:59:59.5z"`), want(event.Login, withMs(utc(2026, 6, 30, 23, 59, 59, 500e6))))
	for n := 1; n <= 9; n++ {
		frac := "987654321"[:n]
		wantNs := 0
		fmt.Sscan((frac + "00000000")[:9], &wantNs)
		f(rec("login", `occurred_at="2026-06-30T12:00:00.`+frac+`Z"`),
			want(event.Login, withMs(utc(2026, 6, 30, 12, 0, 0, wantNs/1e6*1e6))))
	}
	f(rec("login", "occurred_at=1782820800000"), want(event.Login, withMs(1782820800000)))
	f(rec("login", "occurred_at=1782820800000", "schema_version=1"), want(event.Login, withMs(1782820800000)))

	// seats bounds.
	f(rec("seats_purchased", "seats=0"), want(event.SeatsPurchased, func(e *event.Event) { e.Seats = 0 }))
	f(rec("seats_purchased", "seats=10000000"), want(event.SeatsPurchased, func(e *event.Event) { e.Seats = 10_000_000 }))
	f(rec("seats_purchased", "seats=-0"), want(event.SeatsPurchased, func(e *event.Event) { e.Seats = 0 }))

	// Unknown fields, of every JSON type and nested, are ignored.
	f(rec("login", `client={"os":"linux","tags":["a",{"b":[1,2.5e-3,true,false,null]}],"x":{}}`, `n=-12.5E+3`,
		`s="\u0000 \"x\""`, `arr=[]`, `z=null`, `Event_ID="other"`, `EVENT_ID=5`),
		want(event.Login, nil))
	f(rec("login", `deep=`+strings.Repeat("[", 9998)+strings.Repeat("]", 9998)), want(event.Login, nil))

	// Fields unused by the type are ignored: not validated, not returned.
	f(rec("login", `seats="many"`, "feature=5"), want(event.Login, nil))
	f(rec("login", "seats=5", `feature="export"`), want(event.Login, nil))
	f(rec("seat_assigned", `feature="export"`, "seats=-1"), want(event.SeatAssigned, nil))
	f(rec("seat_unassigned", "feature={}"), want(event.SeatUnassigned, nil))
	f(rec("seats_purchased", "user_id=5", "feature=[]"), want(event.SeatsPurchased, nil))
	f(rec("seats_purchased", `user_id="u"`, `feature="f"`), want(event.SeatsPurchased, nil))
	f(rec("seats_purchased", `user_id=""`), want(event.SeatsPurchased, nil))

	// Duplicate keys: the first occurrence wins.
	f(`{"event_id":"first","event_id":"second","event_id":5,`+rec("login")[1:], want(event.Login, func(e *event.Event) { e.EventID = []byte("first") }))
	f(`{"event\u005fid":"first",`+rec("login")[1:], want(event.Login, func(e *event.Event) { e.EventID = []byte("first") }))
	f(`{"seats":1,`+rec("seats_purchased")[1:], want(event.SeatsPurchased, func(e *event.Event) { e.Seats = 1 }))

	// A custom clock skew.
	d = New(Config{MaxClockSkew: 5 * time.Minute})
	f(rec("login", fmt.Sprintf("occurred_at=%d", recTs+300_000)), want(event.Login, withMs(recTs+300_000)))
}

func TestDecodeRejected(t *testing.T) {
	d := New(Config{})
	f := func(value string, reason event.Reason, msgPart string) {
		t.Helper()
		ev := event.Event{EventID: []byte("untouched")}
		rej := d.Decode([]byte(value), recTs, &ev)
		if rej == nil {
			t.Fatalf("Decode(%.200s) accepted: %s", value, show(ev))
		}
		if rej.Reason != reason || !strings.Contains(rej.Msg, msgPart) {
			t.Fatalf("Decode(%.200s) = %v\nwant %v containing %q", value, rej, reason, msgPart)
		}
		if len(rej.Msg) > 300 {
			t.Fatalf("Decode(%.200s): message is %d bytes: %s", value, len(rej.Msg), rej.Msg)
		}
		if string(ev.EventID) != "untouched" {
			t.Fatalf("Decode(%.200s) changed the event on rejection: %s", value, show(ev))
		}
	}

	// too_large: the size is checked first.
	short := rec("login", `pad=""`)
	pad := rec("login", `pad="`+strings.Repeat("x", event.MaxValueBytes-len(short))+`"`)
	if len(pad) != event.MaxValueBytes {
		t.Fatalf("pad is %d bytes", len(pad))
	}
	var ev event.Event
	if rej := d.Decode([]byte(pad), recTs, &ev); rej != nil {
		t.Fatalf("a valid record of exactly %d bytes: %v", len(pad), rej)
	}
	f(pad[:len(pad)-1]+` }`, event.ReasonTooLarge, "record value is 1048577 bytes, more than 1048576")
	f(strings.Repeat("[", event.MaxValueBytes+1), event.ReasonTooLarge, "1048577 bytes")

	// malformed_json
	for _, v := range []string{
		"", " ", "\n\t", "[]", `[` + rec("login") + `]`, `"login"`, "1", "null", "true",
		"{", "}", `{"event_id"}`, `{"event_id":}`, `{"a":1,}`, `{,"a":1}`, `{"a" 1}`, `{"a":1 "b":2}`,
		`{'a':1}`, `{a:1}`, `{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":-}`, `{"a":1e}`, `{"a":+1}`, `{"a":NaN}`,
		`{"a":Infinity}`, `{"a":tru}`, `{"a":nul}`, `{"a":True}`, `{"a":"\x"}`, `{"a":"\u12"}`, `{"a":"\u12g4"}`,
		"{\"a\":\"tab\there\"}", "{\"a\":\"nl\nhere\"}", "{\"a\":\"\x00\"}", `{"a":"unterminated}`, `{"a":[1,2}`,
		`{"a":{"b":1]}`, `{"a":[1,]}`, `{} {}`, `{}x`, rec("login") + rec("login"), rec("login") + ",",
		"\ufeff" + rec("login"), `{"a":1}` + "\x00", `{"a` + "\xff" + `":1}`, rec("login", `event_id="a`+"\xc3\x28"+`"`),
		rec("login", "x="+strings.Repeat("[", 10000)+strings.Repeat("]", 10000)),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		"\x00", "\xed\xa0\x80", // an encoded surrogate is not UTF-8
	} {
		f(v, event.ReasonMalformedJSON, "record value")
	}
	f("", event.ReasonMalformedJSON, "record value is empty")
	f(`{"a":"`+"\xff"+`"}`, event.ReasonMalformedJSON, "not valid UTF-8")
	// Inside a field the decoder knows, too, at the right byte.
	f(`{"event_id":"e`+"\xff"+`"}`, event.ReasonMalformedJSON, `not valid UTF-8 at byte 14 (in the value of field "event_id")`)
	f(`{"extra":[1,}`, event.ReasonMalformedJSON, `(in the value of field "extra")`)
	f(`{"event_id":"e`+"\x01"+`"}`, event.ReasonMalformedJSON, `unexpected '\x01' at byte 14`)
	f(`{"event_id":"e\x"}`, event.ReasonMalformedJSON, `unexpected 'x' at byte 15`)
	f(`{"event_id":"e\`, event.ReasonMalformedJSON, `it ends early`)
	f(`[1,2]`, event.ReasonMalformedJSON, "value is an array, not a JSON object")
	f(`"x"`, event.ReasonMalformedJSON, "not a JSON object")
	f(`{"a":1,}`, event.ReasonMalformedJSON, `not valid JSON: unexpected '}' at byte 7`)
	f(`{"a":1`, event.ReasonMalformedJSON, `not valid JSON: it ends early`)

	// schema_version
	for _, v := range []string{"2", "0", "-1", "99999999999999999999", "-0"} {
		f(rec("login", "schema_version="+v), event.ReasonUnsupportedSchemaVersion, `field "schema_version" is `+v+"; only 1 is supported")
	}
	for _, v := range []string{`"1"`, "1.0", "1e0", "1E0", "1.5", "true", "false", "{}", "[1]", `{"v":1}`} {
		f(rec("login", "schema_version="+v), event.ReasonInvalidField, `field "schema_version"`)
	}
	// schema_version is checked before any other field.
	f(`{"schema_version":2}`, event.ReasonUnsupportedSchemaVersion, "schema_version")

	// Required strings: absent, null, wrong JSON type, length.
	wrongTypes := []string{"1", "0", "1.5", "-3e2", "true", "false", "{}", "[]", `{"a":"b"}`, `["x"]`}
	required := map[string][]string{
		"login":           {"event_id", "type", "account_id", "user_id"},
		"feature_used":    {"event_id", "type", "account_id", "user_id", "feature"},
		"seat_assigned":   {"event_id", "type", "account_id", "user_id"},
		"seat_unassigned": {"event_id", "type", "account_id", "user_id"},
		"seats_purchased": {"event_id", "type", "account_id"},
	}
	for _, typ := range typeNames {
		for _, k := range required[typ] {
			f(rec(typ, "-"+k), event.ReasonMissingField, fmt.Sprintf("field %q is missing", k))
			f(rec(typ, k+"=null"), event.ReasonMissingField, fmt.Sprintf("field %q is null", k))
			for _, v := range wrongTypes {
				f(rec(typ, k+"="+v), event.ReasonInvalidField, fmt.Sprintf("field %q must be a string, got ", k))
			}
			if k == "type" {
				// type has no length rule: any string not one of the five.
				f(rec(typ, k+`=""`), event.ReasonUnknownType, `field "type" is "", not one of`)
				f(rec(typ, k+`="`+strings.Repeat("x", 129)+`"`), event.ReasonUnknownType, `field "type" is "xxx`)
				continue
			}
			f(rec(typ, k+`=""`), event.ReasonInvalidField, fmt.Sprintf("field %q must be 1 to 128 bytes, got 0", k))
			f(rec(typ, k+`="`+strings.Repeat("x", 129)+`"`), event.ReasonInvalidField, fmt.Sprintf("field %q must be 1 to 128 bytes, got 129", k))
			f(rec(typ, k+`="`+strings.Repeat("é", 64)+`x"`), event.ReasonInvalidField, fmt.Sprintf("field %q must be 1 to 128 bytes, got 129", k))
			f(rec(typ, k+`="`+strings.Repeat("€", 43)+`"`), event.ReasonInvalidField, fmt.Sprintf("field %q must be 1 to 128 bytes, got 129", k))
			f(rec(typ, k+`="`+strings.Repeat(`\u00e9`, 64)+`\n"`), event.ReasonInvalidField, fmt.Sprintf("field %q must be 1 to 128 bytes, got 129", k))
		}
	}
	f(rec("login", "-user_id"), event.ReasonMissingField, `field "user_id" is missing`)

	// type
	for _, v := range []string{`"Login"`, `"logins"`, `"seat"`, `" login"`, `"login\u0000"`, `"feature-used"`, `"ünknown"`} {
		f(rec("login", "type="+v), event.ReasonUnknownType, `field "type" is `)
	}
	f(rec("login", `type="`+strings.Repeat("x", 128)+`"`), event.ReasonUnknownType, `field "type" is "xxxx`)
	f(rec("login", `type="nope"`), event.ReasonUnknownType, `field "type" is "nope", not one of login, feature_used, seat_assigned, seat_unassigned, seats_purchased`)

	// occurred_at: missing, wrong types, unparseable, out of range.
	for _, typ := range typeNames {
		f(rec(typ, "-occurred_at"), event.ReasonMissingField, `field "occurred_at" is missing`)
		f(rec(typ, "occurred_at=null"), event.ReasonMissingField, `field "occurred_at" is null`)
	}
	for _, v := range []string{"true", "false", "{}", "[]", `[1782820800000]`, `{"ms":1}`} {
		f(rec("login", "occurred_at="+v), event.ReasonInvalidField, `field "occurred_at" must be an RFC 3339 timestamp or integer epoch milliseconds, got a`)
	}
	for _, v := range []string{
		"1.5", "1782820800000.0", "1.7828208e12", "1E3", "-0.0",
		`""`, `"yesterday"`, `"1782820800000"`, `"2026-06-30"`, `"2026-06-30T12:00:00"`, `"2026-06-30 12:00:00Z"`,
		`"2026-06-30T12:00:00.Z"`, `"2026-06-31T12:00:00Z"`, `"2025-02-29T12:00:00Z"`,
		`"2026-06-30T24:00:00Z"`, `"2026-06-30T12:60:00Z"`, `"2026-06-30T23:59:60Z"`, `"2026-06-30T12:00:00+24:00"`,
		`"2026-06-30T12:00:00+0900"`, `"2026-06-30T12:00:00 Z"`, `" 2026-06-30T12:00:00Z"`, `"2026-06-30T12:00:00,5Z"`,
	} {
		f(rec("login", "occurred_at="+v), event.ReasonInvalidField, `field "occurred_at" must be an RFC 3339 timestamp or integer epoch milliseconds, got `)
	}
	f(rec("login", `occurred_at="1999-12-31T23:59:59.999Z"`), event.ReasonTimestampOutOfRange, `field "occurred_at" is 1999-12-31T23:59:59.999Z, before 2000-01-01T00:00:00Z`)
	f(rec("login", "occurred_at=946684799999"), event.ReasonTimestampOutOfRange, "before 2000-01-01T00:00:00Z")
	f(rec("login", `occurred_at="2000-01-01T08:59:59.999+09:00"`), event.ReasonTimestampOutOfRange, "before 2000-01-01")
	f(rec("login", "occurred_at=0"), event.ReasonTimestampOutOfRange, "before 2000-01-01")
	f(rec("login", "occurred_at=-1"), event.ReasonTimestampOutOfRange, "before 2000-01-01")
	f(rec("login", "occurred_at=-9223372036854775808"), event.ReasonTimestampOutOfRange, "before 2000-01-01")
	f(rec("login", `occurred_at="0000-01-01T00:00:00Z"`), event.ReasonTimestampOutOfRange, "before 2000-01-01")
	f(rec("login", fmt.Sprintf("occurred_at=%d", recTs+3600_001)), event.ReasonTimestampOutOfRange,
		`field "occurred_at" is 1h0m0.001s after the record timestamp (max clock skew 1h0m0s)`)
	f(rec("login", `occurred_at="2026-07-01T13:00:00.001Z"`), event.ReasonTimestampOutOfRange, "after the record timestamp")
	// Past the skew by less than a millisecond: out too (the millisecond
	// is truncated, the instant is not).
	f(rec("login", `occurred_at="2026-07-01T13:00:00.0005Z"`), event.ReasonTimestampOutOfRange, "less than a millisecond more than the max clock skew (1h0m0s)")
	f(rec("login", `occurred_at="2026-07-01T13:00:00.0000000000001Z"`), event.ReasonTimestampOutOfRange, "less than a millisecond more")
	f(rec("login", `occurred_at="2026-07-01T15:00:00Z"`), event.ReasonTimestampOutOfRange,
		`field "occurred_at" is 3h0m0s after the record timestamp (max clock skew 1h0m0s)`)
	f(rec("login", `occurred_at="2026-07-02T00:00:00+09:00"`), event.ReasonTimestampOutOfRange, "is 3h0m0s after")
	f(rec("login", "occurred_at=9223372036854775807"), event.ReasonTimestampOutOfRange, "after the record timestamp")
	f(rec("login", `occurred_at="9999-12-31T23:59:59.999999999Z"`), event.ReasonTimestampOutOfRange, "after the record timestamp")
	f(rec("login", "occurred_at=9223372036854775808"), event.ReasonTimestampOutOfRange, `field "occurred_at" is 9223372036854775808 ms, after the record timestamp`)
	f(rec("login", "occurred_at=99999999999999999999999"), event.ReasonTimestampOutOfRange, "after the record timestamp")
	f(rec("login", "occurred_at=-9223372036854775809"), event.ReasonTimestampOutOfRange, `field "occurred_at" is -9223372036854775809 ms, before 2000-01-01T00:00:00Z`)

	// seats
	f(rec("seats_purchased", "-seats"), event.ReasonMissingField, `field "seats" is missing`)
	f(rec("seats_purchased", "seats=null"), event.ReasonMissingField, `field "seats" is null`)
	f(rec("seats_purchased", "seats=12000000"), event.ReasonInvalidField, `field "seats" must be an integer from 0 to 10000000, got 12000000`)
	for _, v := range []string{"10000001", "-1", "1.5", "1.0", "1e3", "-9223372036854775809", "18446744073709551616"} {
		f(rec("seats_purchased", "seats="+v), event.ReasonInvalidField, `field "seats" must be an integer from 0 to 10000000, got `+v)
	}
	for _, v := range []string{`"5"`, "true", "{}", "[5]"} {
		f(rec("seats_purchased", "seats="+v), event.ReasonInvalidField, `field "seats" must be an integer, got `)
	}

	// product
	for _, v := range []string{"5", "true", "{}", `["web"]`} {
		f(rec("login", "product="+v), event.ReasonInvalidField, `field "product" must be a string, got `)
	}
	f(rec("login", `product="`+strings.Repeat("p", 65)+`"`), event.ReasonInvalidField, `field "product" must be at most 64 bytes, got 65`)
	f(rec("login", `product="`+strings.Repeat("é", 32)+`p"`), event.ReasonInvalidField, `field "product" must be at most 64 bytes, got 65`)

	// Duplicate keys: a null first occurrence wins too.
	f(`{"user_id":null,`+rec("login")[1:], event.ReasonMissingField, `field "user_id" is null`)
	f(`{"occurred_at":true,`+rec("login")[1:], event.ReasonInvalidField, `field "occurred_at"`)

	// Several faults: the first in the fixed field order is reported.
	f(`{"type":"nope","occurred_at":"x"}`, event.ReasonMissingField, `field "event_id" is missing`)
	f(`{"event_id":"e","type":"nope","occurred_at":"x"}`, event.ReasonMissingField, `field "account_id" is missing`)
	f(`{"event_id":"e","type":5}`, event.ReasonInvalidField, `field "type" must be a string`)
	f(`{"event_id":"e","type":"nope","account_id":"a","occurred_at":"x"}`, event.ReasonUnknownType, `field "type"`)
	f(`{"event_id":"e","type":"login","account_id":"a","occurred_at":"x"}`, event.ReasonMissingField, `field "user_id" is missing`)
	f(`{"event_id":"e","type":"feature_used","account_id":"a","user_id":"u","product":5,"occurred_at":"x"}`, event.ReasonMissingField, `field "feature" is missing`)
	f(`{"event_id":"e","type":"feature_used","account_id":"a","user_id":"u","feature":"f","product":5,"occurred_at":"x"}`, event.ReasonInvalidField, `field "product"`)
	f(`{"event_id":"e","type":"seats_purchased","account_id":"a","occurred_at":"x","seats":-1}`, event.ReasonInvalidField, `field "occurred_at"`)

	// Long values are not echoed whole.
	f(rec("login", `type="`+strings.Repeat("é", 70)+`"`), event.ReasonUnknownType, `"`+strings.Repeat("é", 32)+`"…`)
	f(rec("login", `type="`+strings.Repeat("é", 50)+`"`), event.ReasonUnknownType, `"`+strings.Repeat("é", 32)+`"…`)
	f(rec("login", `occurred_at="`+strings.Repeat("9", 5000)+`"`), event.ReasonInvalidField, strings.Repeat("9", 64)+`"…`)
	f(rec("seats_purchased", "seats="+strings.Repeat("9", 5000)), event.ReasonInvalidField, "got "+strings.Repeat("9", 64)+"…")
}

// TestDecodeBorrowsValueOrDecoderMemory pins what an event's slices point
// to: a string without escapes is the record value's own bytes (no copy),
// an unescaped one is the decoder's copy; Decode never writes to value, and
// no slice can be appended to in place over the bytes after it.
func TestDecodeBorrowsValueOrDecoderMemory(t *testing.T) {
	d := New(Config{})
	value := []byte(rec("feature_used", `event_id="e\u00e9"`))
	orig := string(value)
	var ev event.Event
	if rej := d.Decode(value, recTs, &ev); rej != nil {
		t.Fatal(rej)
	}
	if string(value) != orig {
		t.Fatalf("Decode changed its input: %s", value)
	}
	within := func(b []byte) bool {
		return len(b) > 0 && uintptr(unsafe.Pointer(&b[0])) >= uintptr(unsafe.Pointer(&value[0])) &&
			uintptr(unsafe.Pointer(&b[0])) < uintptr(unsafe.Pointer(&value[0]))+uintptr(len(value))
	}
	if !within(ev.AccountID) || !within(ev.UserID) || !within(ev.Feature) {
		t.Fatal("strings without escapes are copied, want them borrowed from the value")
	}
	if within(ev.EventID) || string(ev.EventID) != "eé" {
		t.Fatalf("event_id %q: an escaped string must be unescaped into the decoder's memory", ev.EventID)
	}
	for _, b := range [][]byte{ev.AccountID, ev.UserID, ev.Feature, ev.EventID} {
		if cap(b) != len(b) {
			t.Fatalf("%q has spare capacity %d: an append would overwrite the record", b, cap(b)-len(b))
		}
	}
}

func TestDecodeAllocs(t *testing.T) {
	d := New(Config{})
	value := []byte(`{"schema_version":1,"event_id":"3f1c6f0e-5b4a-4c1e-9a8e-2f7d1c0b9a55","type":"feature_used",` +
		`"account_id":"acct-004211","user_id":"usr_8c1d2e3f4a5b","occurred_at":"2026-07-01T08:59:59.999+09:00",` +
		`"product":"analytics","feature":"dashboard.share","client":{"kind":"web","version":"4.12.0"},"region":"ap-northeast-1"}`)
	var ev event.Event
	if rej := d.Decode(value, recTs, &ev); rej != nil {
		t.Fatal(rej)
	}
	if n := testing.AllocsPerRun(100, func() { d.Decode(value, recTs, &ev) }); n != 0 {
		t.Fatalf("Decode allocates %v times per accepted event, want 0", n)
	}
}

func TestConfig(t *testing.T) {
	if err := (Config{MaxClockSkew: -time.Second}).Validate(); err == nil || !strings.Contains(err.Error(), "max clock skew") {
		t.Fatalf("Validate(-1s) = %v, want an error naming the setting", err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatal(err)
	}
	if d := New(Config{}); d.skew != time.Hour {
		t.Fatalf("default skew %v, want 1h", d.skew)
	}
}
