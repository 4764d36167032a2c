package reference

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestValidate(t *testing.T) {
	const recordTs = 1780000000000 // 2026-05-28T20:26:40Z
	f := func(value, wantReason string) {
		t.Helper()
		_, got := validate([]byte(value), recordTs, time.Hour.Milliseconds(), new(object))
		if got != wantReason {
			t.Errorf("validate(%.200q) = %q, want %q", value, got, wantReason)
		}
	}
	// obj builds a login with the given members replacing or adding to the
	// defaults; a member value "-" removes it.
	obj := func(members ...string) string {
		keys := []string{"event_id", "type", "account_id", "user_id", "occurred_at"}
		vals := map[string]string{
			"event_id": `"e1"`, "type": `"login"`, "account_id": `"a"`, "user_id": `"u"`,
			"occurred_at": `"2026-05-01T00:00:00Z"`,
		}
		for i := 0; i < len(members); i += 2 {
			if _, ok := vals[members[i]]; !ok {
				keys = append(keys, members[i])
			}
			vals[members[i]] = members[i+1]
		}
		var parts []string
		for _, k := range keys {
			if vals[k] != "-" {
				parts = append(parts, `"`+k+`":`+vals[k])
			}
		}
		return "{" + strings.Join(parts, ",") + "}"
	}

	// Valid.
	f(obj(), "")
	f(obj("schema_version", "1"), "")
	f(obj("schema_version", "null"), "")
	f(obj("type", `"feature_used"`, "feature", `"x"`), "")
	f(obj("type", `"seat_assigned"`), "")
	f(obj("type", `"seat_unassigned"`), "")
	f(obj("type", `"seats_purchased"`, "user_id", "-", "seats", "0"), "")
	f(obj("type", `"seats_purchased"`, "user_id", "7", "seats", "10000000"), "") // user_id ignored
	f(obj("seats", `"lots"`, "feature", "[]"), "")                               // ignored on a login
	f(obj("product", `""`), "")
	f(obj("product", "null"), "")
	f(obj("product", `"`+strings.Repeat("p", 64)+`"`), "")
	f(obj("account_id", `"`+strings.Repeat("a", 128)+`"`), "")
	f(obj("account_id", `"`+strings.Repeat(`\u00e9`, 64)+`"`), "") // 128 bytes decoded
	f(obj("account_id", `"日本語 \"q\" \\ 🚀"`), "")
	f(obj("unknown", `{"nested":[1,2.5e3,null,{"type":7}]}`), "")
	f(obj("occurred_at", `"2026-05-01t00:00:00z"`), "")
	f(obj("occurred_at", `"2026-05-01T09:00:00.123456789+09:00"`), "")
	f(obj("occurred_at", `"2026-05-01T00:00:00.1-05:00"`), "")
	f(obj("occurred_at", "1777593600000"), "")
	f(obj("occurred_at", `"2000-01-01T00:00:00Z"`), "")
	f(obj("occurred_at", "946684800000"), "")
	f(obj("occurred_at", "1780003600000"), "") // exactly recordTs + skew
	f(obj("occurred_at", `"2026-05-28T21:26:40.000000Z"`), "")
	f(obj("occurred_at", `"2026-05-28T21:26:40.0005Z"`), ReasonTimestampOutOfRange)          // 0.5 ms past the skew
	f(obj("occurred_at", `"2026-05-28T21:26:40.0000000000001Z"`), ReasonTimestampOutOfRange) // past it beyond ns
	f(obj("occurred_at", `"2026-05-01T00:00:00.1234567890Z"`), "")                           // RFC 3339: any number of digits
	f(`{"event_id":"e1","type":"login","account_id":"a","user_id":"u","occurred_at":"2026-05-01T00:00:00Z","type":1,"user_id":null}`, "")
	f(" \n"+obj()+"\t ", "")

	// 1. too_large.
	f(obj("blob", `"`+strings.Repeat("x", 1<<20)+`"`), ReasonTooLarge)

	// 2. malformed_json.
	f("", ReasonMalformedJSON)
	f("   ", ReasonMalformedJSON)
	f(`{"event_id":"e\xff"}`, ReasonMalformedJSON)
	f(obj()[:20], ReasonMalformedJSON)
	f("["+obj()+"]", ReasonMalformedJSON)
	f(obj()+" {}", ReasonMalformedJSON)
	f(obj()+"x", ReasonMalformedJSON)
	f(`"login"`, ReasonMalformedJSON)
	f("null", ReasonMalformedJSON)
	f("12", ReasonMalformedJSON)
	f(`{event_id:"e1"}`, ReasonMalformedJSON)
	f(`{"a":1,}`, ReasonMalformedJSON)

	// 3. schema_version.
	f(obj("schema_version", "2"), ReasonUnsupportedSchemaVersion)
	f(obj("schema_version", "0"), ReasonUnsupportedSchemaVersion)
	f(obj("schema_version", "-1"), ReasonUnsupportedSchemaVersion)
	f(obj("schema_version", "123456789012345678901234567890"), ReasonUnsupportedSchemaVersion)
	f(obj("schema_version", `"1"`), ReasonInvalidField)
	f(obj("schema_version", "1.0"), ReasonInvalidField)
	f(obj("schema_version", "1.5"), ReasonInvalidField)
	f(obj("schema_version", "1e0"), ReasonInvalidField)
	f(obj("schema_version", "true"), ReasonInvalidField)

	// 4. Required strings.
	for _, k := range []string{"event_id", "type", "account_id", "user_id", "occurred_at"} {
		f(obj(k, "-"), ReasonMissingField)
		f(obj(k, "null"), ReasonMissingField)
	}
	f(obj("type", `"feature_used"`), ReasonMissingField)
	f(obj("type", `"feature_used"`, "feature", "null"), ReasonMissingField)
	f(obj("type", `"seat_assigned"`, "user_id", "-"), ReasonMissingField)
	f(obj("event_id", "1"), ReasonInvalidField)
	f(obj("event_id", `""`), ReasonInvalidField)
	f(obj("event_id", `"`+strings.Repeat("e", 129)+`"`), ReasonInvalidField)
	f(obj("type", "1"), ReasonInvalidField)
	f(obj("account_id", `["a"]`), ReasonInvalidField)
	f(obj("account_id", `"`+strings.Repeat("日", 43)+`"`), ReasonInvalidField) // 129 bytes
	f(obj("account_id", `"`+strings.Repeat(`\u00e9`, 65)+`"`), ReasonInvalidField)
	f(obj("user_id", "true"), ReasonInvalidField)
	f(obj("type", `"feature_used"`, "feature", "{}"), ReasonInvalidField)
	f(obj("type", `"feature_used"`, "feature", `""`), ReasonInvalidField)

	// 5. unknown_type.
	f(obj("type", `"logout"`), ReasonUnknownType)
	f(obj("type", `"Login"`), ReasonUnknownType)
	f(obj("type", `""`), ReasonUnknownType) // type has no length rule: any string not one of the five
	f(obj("type", `"`+strings.Repeat("t", 129)+`"`), ReasonUnknownType)

	// 6. product.
	f(obj("product", `"`+strings.Repeat("p", 65)+`"`), ReasonInvalidField)
	f(obj("product", "7"), ReasonInvalidField)

	// 7. occurred_at.
	for _, bad := range []string{
		`"2026-02-30T00:00:00Z"`, `"2026-05-01 00:00:00Z"`, `"2026-05-01T00:00:00"`,
		`"2026-05-01T00:00:00.Z"`, `"2026-05-01T00:00:00,5Z"`,
		`"2026-05-01T00:00:00+0900"`, `"2026-05-01T00:00:00+24:00"`, `"2026-05-01T00:00:00+09:60"`,
		`"2026-05-01T24:00:00Z"`, `"2026-05-01T00:00:60Z"`, `"1777593600000"`, `"yesterday"`, `""`,
		"1777593600000.0", "1.7775936e12", "true", "{}",
	} {
		f(obj("occurred_at", bad), ReasonInvalidField)
	}
	for _, out := range []string{
		`"1999-12-31T23:59:59.999999999Z"`, "946684799999", `"2000-01-01T08:59:59+09:00"`, "-1", "0",
		"1780003600001", `"2026-05-28T21:26:40.001Z"`, `"2105-01-01T00:00:00Z"`, `"0000-01-01T00:00:00Z"`,
		"99999999999999999999999",
	} {
		f(obj("occurred_at", out), ReasonTimestampOutOfRange)
	}

	// 8. seats.
	purchase := func(seats string) string {
		return obj("type", `"seats_purchased"`, "user_id", "-", "seats", seats)
	}
	f(purchase("-"), ReasonMissingField)
	f(purchase("null"), ReasonMissingField)
	for _, bad := range []string{"-1", "10000001", "2.5", "1e3", `"10"`, "true", "99999999999999999999"} {
		f(purchase(bad), ReasonInvalidField)
	}
}

func TestOccurredAtTruncates(t *testing.T) {
	f := func(raw string, want int64) {
		t.Helper()
		got, _, reason := occurredAt([]byte(raw))
		if reason != "" || got != want {
			t.Errorf("occurredAt(%s) = %d, %q; want %d", raw, got, reason, want)
		}
	}
	f(`"2026-04-01T08:59:59.9999999+09:00"`, 1775001599999) // 2026-03-31T23:59:59.999Z
	f(`"2026-03-31T18:59:59.999999999-05:00"`, 1775001599999)
	f(`"2026-04-01T00:00:00Z"`, 1775001600000)
	f(`"2026-04-01T09:00:00+09:00"`, 1775001600000)
	f(`"2026-04-01T00:00:00.0009Z"`, 1775001600000)
	f("1775001600000", 1775001600000)
}

// parseObjectDecoder is parseObject done with encoding/json's Decoder only:
// slower, but with nothing hand-written. FuzzParseObject checks they agree.
func parseObjectDecoder(value []byte) (keys []string, values []string, ok bool) {
	if len(value) == 0 || !utf8.Valid(value) || !json.Valid(value) {
		return nil, nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, false
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, nil, false
		}
		keys = append(keys, tok.(string))
		values = append(values, string(bytes.TrimSpace(raw)))
	}
	return keys, values, true
}

func FuzzParseObject(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `{"a":1}`, `{"a":1,"a":2}`, `{"a\u0062":"x\"y","b":[1,{"c":"]}"}],"d":null}`,
		`{"k" : true , "l":-1.5e3 ,"m":{"n":[[]]}}`, `[1]`, `"s"`, `{"a":"\ud800"}`, "{\"a\":\"\xff\"}",
		`{"event_id":"e1","type":"login","account_id":"a","user_id":"u","occurred_at":"2026-05-01T00:00:00Z","type":1}`,
		"{\"a\":1}\n", `{"a":1}{}`, `{"a":"\\"}`, `{"\\":"\\\\\""}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		var obj object
		ok := parseObject(value, &obj)
		keys, values, wantOK := parseObjectDecoder(value)
		if ok != wantOK {
			t.Fatalf("parseObject(%q) ok = %v, decoder says %v", value, ok, wantOK)
		}
		if len(obj) != len(keys) {
			t.Fatalf("parseObject(%q): %d members, decoder %d", value, len(obj), len(keys))
		}
		for i, m := range obj {
			if string(m.key) != keys[i] || string(m.value) != values[i] {
				t.Fatalf("parseObject(%q) member %d = %q:%q, decoder %q:%q", value, i, m.key, m.value, keys[i], values[i])
			}
		}
	})
}

// FuzzValidate checks that validate never panics and gives a contract
// reason or none.
func FuzzValidate(f *testing.F) {
	f.Add([]byte(`{"event_id":"e1","type":"seats_purchased","account_id":"a","occurred_at":"2026-05-01T00:00:00.5+09:00","seats":3}`), int64(1780000000000))
	f.Add([]byte(`{"event_id":"e1","type":"feature_used","account_id":"a","user_id":"u","feature":"f","occurred_at":1777593600000}`), int64(1780000000000))
	f.Add([]byte(`{"schema_version":2}`), int64(0))
	f.Fuzz(func(t *testing.T, value []byte, recordTs int64) {
		recordTs = max(min(recordTs, 1<<50), -1<<50)
		ev, reason := validate(value, recordTs, time.Hour.Milliseconds(), new(object))
		if reason == "" {
			if len(ev.eventID) == 0 || len(ev.account) == 0 || ev.ms < minOccurredAtMs {
				t.Fatalf("accepted %q as %+v", value, ev)
			}
			return
		}
		for _, r := range Reasons() {
			if r == reason {
				return
			}
		}
		t.Fatalf("validate(%q) = unknown reason %q", value, reason)
	})
}
