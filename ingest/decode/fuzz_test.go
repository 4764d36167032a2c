package decode

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/usagepipe/usagepipe/schema/event"
)

// model decodes value the slow, obvious way — encoding/json for the JSON,
// the package's rules written out again for the fields — and returns the
// event or the reason the Decoder must give. FuzzDecode holds the Decoder to
// it. Only ParseRFC3339Ms is shared; FuzzParseRFC3339 holds it to time.Parse.
func model(value []byte, recordTsMs, skewMs int64) (event.Event, event.Reason) {
	var e event.Event
	if len(value) > event.MaxValueBytes {
		return e, event.ReasonTooLarge
	}
	if len(value) == 0 || !utf8.Valid(value) || !json.Valid(value) {
		return e, event.ReasonMalformedJSON
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return e, event.ReasonMalformedJSON
	}
	fields := map[string][]byte{} // first occurrence of each key
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			panic(err)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			panic(err)
		}
		if _, seen := fields[tok.(string)]; !seen {
			fields[tok.(string)] = bytes.TrimSpace(raw)
		}
	}
	present := func(k string) bool { raw, ok := fields[k]; return ok && string(raw) != "null" }
	isNumber := func(raw []byte) bool { return raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9' }
	str := func(k string) (string, bool) {
		var s string
		return s, json.Unmarshal(fields[k], &s) == nil
	}
	reqStr := func(k string, max int) ([]byte, event.Reason) {
		if !present(k) {
			return nil, event.ReasonMissingField
		}
		s, ok := str(k)
		if !ok || len(s) == 0 || len(s) > max {
			return nil, event.ReasonInvalidField
		}
		return []byte(s), event.ReasonNone
	}
	intLit := func(raw []byte) (int64, bool) {
		if bytes.ContainsAny(raw, ".eE") {
			return 0, false
		}
		n, err := strconv.ParseInt(string(raw), 10, 64)
		return n, err == nil
	}

	if present("schema_version") {
		raw := fields["schema_version"]
		switch {
		case !isNumber(raw) || bytes.ContainsAny(raw, ".eE"):
			return e, event.ReasonInvalidField
		case string(raw) != "1":
			return e, event.ReasonUnsupportedSchemaVersion
		}
	}
	var r event.Reason
	if e.EventID, r = reqStr("event_id", event.MaxIDBytes); r != event.ReasonNone {
		return e, r
	}
	// type: any string (one not a type name, "" and long ones too, is
	// unknown_type below).
	if !present("type") {
		return e, event.ReasonMissingField
	}
	typS, isStr := str("type")
	if !isStr {
		return e, event.ReasonInvalidField
	}
	typ := []byte(typS)
	if e.AccountID, r = reqStr("account_id", event.MaxIDBytes); r != event.ReasonNone {
		return e, r
	}
	switch string(typ) {
	case "login":
		e.Type = event.Login
	case "feature_used":
		e.Type = event.FeatureUsed
	case "seat_assigned":
		e.Type = event.SeatAssigned
	case "seat_unassigned":
		e.Type = event.SeatUnassigned
	case "seats_purchased":
		e.Type = event.SeatsPurchased
	default:
		return e, event.ReasonUnknownType
	}
	if e.Type != event.SeatsPurchased {
		if e.UserID, r = reqStr("user_id", event.MaxIDBytes); r != event.ReasonNone {
			return e, r
		}
	}
	if e.Type == event.FeatureUsed {
		if e.Feature, r = reqStr("feature", event.MaxIDBytes); r != event.ReasonNone {
			return e, r
		}
	}
	if present("product") {
		s, isStr := str("product")
		if !isStr || len(s) > event.MaxProductBytes {
			return e, event.ReasonInvalidField
		}
		e.Product = []byte(s)
	}
	if !present("occurred_at") {
		return e, event.ReasonMissingField
	}
	raw := fields["occurred_at"]
	var sub bool // the instant lies after OccurredAtMs
	if s, isStr := str("occurred_at"); isStr {
		var ok bool
		e.OccurredAtMs, sub, ok = parseRFC3339([]byte(s))
		if !ok {
			return e, event.ReasonInvalidField
		}
	} else if isNumber(raw) && !bytes.ContainsAny(raw, ".eE") {
		ms, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil { // beyond int64: far out of range
			return e, event.ReasonTimestampOutOfRange
		}
		e.OccurredAtMs = ms
	} else {
		return e, event.ReasonInvalidField
	}
	if e.OccurredAtMs < event.MinOccurredAtMs || e.OccurredAtMs >= event.MaxOccurredAtMs || after(e.OccurredAtMs, recordTsMs) > uint64(skewMs) ||
		sub && after(e.OccurredAtMs, recordTsMs) == uint64(skewMs) {
		return e, event.ReasonTimestampOutOfRange
	}
	if e.Type == event.SeatsPurchased {
		if !present("seats") {
			return e, event.ReasonMissingField
		}
		raw := fields["seats"]
		if !isNumber(raw) {
			return e, event.ReasonInvalidField
		}
		n, ok := intLit(raw)
		if !ok || n < 0 || n > event.MaxSeats {
			return e, event.ReasonInvalidField
		}
		e.Seats = n
	}
	return e, event.ReasonNone
}

// after returns how many ms a is after b, without overflow; 0 if a <= b.
func after(a, b int64) uint64 {
	if a <= b {
		return 0
	}
	return uint64(a) - uint64(b)
}

// checkAccepted fails unless e obeys every rule of an accepted event.
func checkAccepted(t *testing.T, e event.Event, recordTsMs, skewMs int64) {
	t.Helper()
	id := func(name string, b []byte) {
		if len(b) < 1 || len(b) > event.MaxIDBytes || !utf8.Valid(b) {
			t.Fatalf("accepted %s %q", name, b)
		}
	}
	id("event_id", e.EventID)
	id("account_id", e.AccountID)
	if _, ok := event.ParseType([]byte(e.Type.String())); !ok {
		t.Fatalf("accepted type %v", e.Type)
	}
	if e.Type == event.SeatsPurchased {
		if len(e.UserID) != 0 {
			t.Fatalf("seats_purchased with user_id %q", e.UserID)
		}
	} else {
		id("user_id", e.UserID)
	}
	if e.Type == event.FeatureUsed {
		id("feature", e.Feature)
	} else if len(e.Feature) != 0 {
		t.Fatalf("%v with feature %q", e.Type, e.Feature)
	}
	if len(e.Product) > event.MaxProductBytes || !utf8.Valid(e.Product) {
		t.Fatalf("accepted product %q", e.Product)
	}
	if e.OccurredAtMs < event.MinOccurredAtMs || e.OccurredAtMs >= event.MaxOccurredAtMs || after(e.OccurredAtMs, recordTsMs) > uint64(skewMs) {
		t.Fatalf("accepted occurred_at %d with record timestamp %d", e.OccurredAtMs, recordTsMs)
	}
	if e.Type == event.SeatsPurchased {
		if e.Seats < 0 || e.Seats > event.MaxSeats {
			t.Fatalf("accepted seats %d", e.Seats)
		}
	} else if e.Seats != 0 {
		t.Fatalf("%v with seats %d", e.Type, e.Seats)
	}
}

func FuzzDecode(f *testing.F) {
	for _, typ := range typeNames {
		f.Add([]byte(rec(typ)), recTs)
		f.Add([]byte(rec(typ, "schema_version=1", `occurred_at="2026-07-01T08:59:59.999+09:00"`, `x={"a":[1,2.5e3,null]}`)), recTs)
		f.Add([]byte(rec(typ, "occurred_at=1782820800000", `product=""`, `event_id="a\"b\u00e9\ud83d\ude00"`)), recTs)
		f.Add([]byte(rec(typ, "seats=10000001", "feature=1", "user_id=null")), recTs)
	}
	for _, s := range []string{
		"", " ", "[]", "{}", "null", `{"a":1,}`, `{"a":01}`, `{"a":"\x"}`, "{\"a\":\"\x01\"}", `{"a":NaN}`,
		`{"a` + "\xff" + `":1}`, `{"event_id":"e","event_id":5}`, `{"schema_version":2}`, `{"schema_version":1.0}`,
		rec("login", `occurred_at="2000-01-01T00:00:00Z"`), rec("login", "occurred_at=946684799999"),
		rec("login", `event_id="\ud800\u0041"`), rec("login", `type="Login"`), rec("seats_purchased", "seats=-0"),
		rec("login", "x="+strings.Repeat("[", 50)+strings.Repeat("]", 50)),
		rec("login", `occurred_at="2026-07-01T13:00:00.001Z"`),
	} {
		f.Add([]byte(s), recTs)
	}
	f.Add([]byte(rec("login", "occurred_at=1782820800000")), int64(1782820800000-3600_000))
	f.Add([]byte(rec("login", "occurred_at=1782820800000")), int64(-1))

	d := New(Config{})
	skewMs := time.Hour.Milliseconds()
	f.Fuzz(func(t *testing.T, value []byte, recordTsMs int64) {
		orig := bytes.Clone(value)
		var ev event.Event
		rej := d.Decode(value, recordTsMs, &ev)
		if !bytes.Equal(value, orig) {
			t.Fatalf("Decode changed its input")
		}
		want, wantReason := model(value, recordTsMs, skewMs)
		if rej != nil {
			if rej.Reason != wantReason {
				t.Fatalf("Decode(%q) = %v, model says %v", value, rej, wantReason)
			}
			if rej.Msg == "" || len(rej.Msg) > 400 || !utf8.ValidString(rej.Msg) {
				t.Fatalf("Decode(%q): bad message %q", value, rej.Msg)
			}
			return
		}
		if wantReason != event.ReasonNone {
			t.Fatalf("Decode(%q) accepted %s, model says %v", value, show(ev), wantReason)
		}
		checkAccepted(t, ev, recordTsMs, skewMs)
		if got, w := show(ev), show(want); got != w {
			t.Fatalf("Decode(%q)\n got %s\nwant %s", value, got, w)
		}
	})
}

func FuzzParseRFC3339(f *testing.F) {
	for _, s := range []string{
		"2026-07-01T08:59:59.999+09:00", "2000-01-01T00:00:00Z", "1969-12-31T23:59:59.9999Z",
		"0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999-23:59", "2024-02-29T12:00:00Z",
		"2026-07-01t09:00:00z", "2026-07-01T09:00:00.1234567890Z", "2026-07-01T09:00:00,5Z",
		"2026-07-01T24:00:00Z", "2026-07-01T09:00:00+24:00", "2026-02-29T00:00:00Z", "2026-07-01T09:00:00",
	} {
		f.Add(s)
	}
	// The RFC 3339 profile of the contract; whatever time.Parse accepts of
	// it, ParseRFC3339Ms must accept too. (time.Parse also accepts offsets
	// of +24:00 and minute 60; the profile stops at ±23:59.)
	profile := regexp.MustCompile(`^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$`)
	f.Fuzz(func(t *testing.T, s string) {
		ms, ok := ParseRFC3339Ms([]byte(s))
		if ref, err := time.Parse(time.RFC3339Nano, s); ok && err == nil && ms != ref.UnixMilli() {
			t.Fatalf("ParseRFC3339Ms(%q) = %d, time.Parse: %d", s, ms, ref.UnixMilli())
		}
		up := strings.ToUpper(s)
		ref, err := time.Parse(time.RFC3339Nano, up)
		if ok && err != nil {
			t.Fatalf("ParseRFC3339Ms(%q) = %d, but time.Parse rejects %q: %v", s, ms, up, err)
		}
		if ok && ms != ref.UnixMilli() {
			t.Fatalf("ParseRFC3339Ms(%q) = %d, time.Parse(%q): %d", s, ms, up, ref.UnixMilli())
		}
		if !ok && err == nil && profile.MatchString(s) {
			t.Fatalf("ParseRFC3339Ms(%q) rejects it; time.Parse(%q) = %v", s, up, ref)
		}
	})
}

// FuzzDecodeFields fuzzes the raw JSON text of each known field of an
// otherwise well-formed record, so that the fuzzer spends its time on field
// rules rather than on broken JSON. Any of them may be left out.
func FuzzDecodeFields(f *testing.F) {
	f.Add(`1`, `"e-1"`, `"login"`, `"acct-1"`, `"user-1"`, `"2026-06-30T12:00:00Z"`, ``, `"web"`, ``, recTs)
	f.Add(``, `"e\u00e9"`, `"feature_used"`, `"a"`, `"u"`, `"2026-07-01T08:59:59.999+09:00"`, `"export"`, ``, `5`, recTs)
	f.Add(`null`, `"e"`, `"seats_purchased"`, `"a"`, ``, `1782820800000`, ``, `null`, `10000000`, recTs)
	f.Add(`2`, `"\ud800"`, `"seat_assigned"`, `"a\"b"`, `5`, `"2000-01-01T00:00:00Z"`, `[]`, `""`, `-1`, recTs)
	f.Add(`"1"`, `""`, `"seat_unassigned"`, `null`, `"u"`, `946684799999`, `{}`, `1`, `1.5`, int64(-1))
	d := New(Config{})
	skewMs := time.Hour.Milliseconds()
	f.Fuzz(func(t *testing.T, schemaVersion, eventID, typ, accountID, userID, occurredAt, feature, product, seats string, recordTsMs int64) {
		var b strings.Builder
		b.WriteString(`{"x":0`)
		for i, v := range []string{schemaVersion, eventID, typ, accountID, userID, occurredAt, feature, product, seats} {
			if v != "" {
				b.WriteString(`,"` + fieldNames[i] + `":` + v)
			}
		}
		b.WriteString(`}`)
		value := []byte(b.String())
		var ev event.Event
		rej := d.Decode(value, recordTsMs, &ev)
		want, wantReason := model(value, recordTsMs, skewMs)
		switch {
		case rej != nil && rej.Reason != wantReason:
			t.Fatalf("Decode(%q) = %v, model says %v", value, rej, wantReason)
		case rej == nil && wantReason != event.ReasonNone:
			t.Fatalf("Decode(%q) accepted %s, model says %v", value, show(ev), wantReason)
		case rej == nil:
			checkAccepted(t, ev, recordTsMs, skewMs)
			if got, w := show(ev), show(want); got != w {
				t.Fatalf("Decode(%q)\n got %s\nwant %s", value, got, w)
			}
		}
	})
}

// FuzzParseRFC3339Fields builds timestamps from fuzzed parts, mostly in the
// contract's profile, and holds ParseRFC3339Ms to time.Parse on them.
func FuzzParseRFC3339Fields(f *testing.F) {
	f.Add(uint16(2026), uint8(7), uint8(1), uint8(8), uint8(59), uint8(59), uint32(999), uint8(3), int16(9*60), byte('T'), byte('+'))
	f.Add(uint16(2000), uint8(2), uint8(29), uint8(0), uint8(0), uint8(0), uint32(0), uint8(0), int16(0), byte('t'), byte('Z'))
	f.Add(uint16(1969), uint8(12), uint8(31), uint8(23), uint8(59), uint8(59), uint32(999999999), uint8(9), int16(-23*60-59), byte('T'), byte('-'))
	f.Fuzz(func(t *testing.T, year uint16, month, day, hour, minute, sec uint8, frac uint32, fracDigits uint8, offMin int16, sep, zone byte) {
		s := fmt.Sprintf("%04d-%02d-%02d%c%02d:%02d:%02d", year%10000, month%100, day%100, sep, hour%100, minute%100, sec%100)
		if n := int(fracDigits % 11); n > 0 {
			s += "." + fmt.Sprintf("%010d", frac)[10-n:]
		}
		switch zone {
		case 'Z', 'z':
			s += string(zone)
		default:
			sign := byte('+')
			if zone == '-' || offMin < 0 {
				sign = '-'
			}
			m := int(offMin)
			if m < 0 {
				m = -m
			}
			s += fmt.Sprintf("%c%02d:%02d", sign, m/60%100, m%60+int(zone%2)*(m/6000))
		}
		ms, ok := ParseRFC3339Ms([]byte(s))
		up := strings.ToUpper(s)
		ref, err := time.Parse(time.RFC3339Nano, up)
		inProfile := sep == 'T' || sep == 't'
		if inProfile {
			// ±23:59 at most; time.Parse also takes 24:00 and minute 60.
			if i := len(up) - 6; up[len(up)-1] != 'Z' && (up[i+1:i+3] > "23" || up[i+4:] > "59") {
				inProfile = false
			}
		}
		switch {
		case ok && err != nil:
			t.Fatalf("ParseRFC3339Ms(%q) = %d, but time.Parse rejects it: %v", s, ms, err)
		case ok && ms != ref.UnixMilli():
			t.Fatalf("ParseRFC3339Ms(%q) = %d, time.Parse: %d", s, ms, ref.UnixMilli())
		case !ok && err == nil && inProfile:
			t.Fatalf("ParseRFC3339Ms(%q) rejects it; time.Parse: %v", s, ref)
		}
	})
}
