package reference

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Reject reasons, as named by the contract (section 2).
const (
	ReasonTooLarge                 = "too_large"
	ReasonMalformedJSON            = "malformed_json"
	ReasonUnsupportedSchemaVersion = "unsupported_schema_version"
	ReasonMissingField             = "missing_field"
	ReasonUnknownType              = "unknown_type"
	ReasonInvalidField             = "invalid_field"
	ReasonTimestampOutOfRange      = "timestamp_out_of_range"
)

// Reasons lists every reject reason in contract order.
func Reasons() []string {
	return []string{
		ReasonTooLarge, ReasonMalformedJSON, ReasonUnsupportedSchemaVersion, ReasonMissingField,
		ReasonUnknownType, ReasonInvalidField, ReasonTimestampOutOfRange,
	}
}

// Event types.
const (
	typeLogin          = "login"
	typeFeatureUsed    = "feature_used"
	typeSeatAssigned   = "seat_assigned"
	typeSeatUnassigned = "seat_unassigned"
	typeSeatsPurchased = "seats_purchased"
)

// Limits (contract section 2).
const (
	maxValueBytes   = 1 << 20
	maxIDBytes      = 128
	maxProductBytes = 64
	maxSeats        = 10_000_000
	minOccurredAtMs = 946684800000  // 2000-01-01T00:00:00Z
	endOccurredAtMs = 4260211200000 // 2105-01-01T00:00:00Z, the first instant not accepted
)

// decoded is a valid record's event as validate returns it. Strings are
// bytes that may alias the record value; Compute copies what it keeps.
type decoded struct {
	eventID []byte
	typ     string // one of the type constants
	account []byte
	user    []byte // nil for seats_purchased
	feature []byte // feature_used only
	ms      int64  // occurred_at, UTC epoch milliseconds
	seats   int64  // seats_purchased only
}

// rfc3339 is the accepted shape of a string occurred_at (any number of
// fraction digits, as RFC 3339 allows). time.Parse alone is more lenient
// (a comma, offsets such as +24:00), so the shape is checked first.
var rfc3339 = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-]([0-9]{2}):([0-9]{2}))$`)

// validate applies the contract's rules to one record value, checking in
// this order (the numbers mark the steps below):
//
//  1. size over 1 MiB: too_large;
//  2. empty, not UTF-8, not JSON, not an object: malformed_json;
//  3. schema_version (absent or null is 1): an integer other than 1 is
//     unsupported_schema_version, any other JSON value invalid_field;
//  4. event_id, type, account_id, then user_id (not for seats_purchased) and
//     feature (feature_used): absent or null is missing_field, not a string
//     invalid_field, and (all but type) not 1–128 bytes once decoded
//     invalid_field;
//  5. type not one of the five (of any length, empty too): unknown_type
//     (checked after event_id, type and account_id, since user_id and
//     feature depend on it);
//  6. product, optional (null is absent): not a string or over 64 bytes is
//     invalid_field; fields a type does not use are ignored;
//  7. occurred_at: absent or null missing_field; an RFC 3339 string or an
//     integer literal (epoch ms), else invalid_field; before 2000, from 2105
//     on, or after the record timestamp plus the skew:
//     timestamp_out_of_range;
//  8. seats (seats_purchased): absent or null missing_field; not an
//     integer literal in 0..10,000,000 invalid_field.
//
// A repeated key's first occurrence wins. It returns the decoded event, or
// the reject reason. members is scratch space, reused between calls.
func validate(value []byte, recordTsMs int64, skewMs int64, members *object) (decoded, string) {
	var ev decoded

	// 1. Size.
	if len(value) > maxValueBytes {
		return ev, ReasonTooLarge
	}

	// 2. A JSON object, valid UTF-8.
	if !parseObject(value, members) {
		return ev, ReasonMalformedJSON
	}
	obj := *members

	// 3. schema_version: absent or null means 1.
	if raw, ok := obj.get("schema_version"); ok {
		if !isIntLiteral(raw) {
			return ev, ReasonInvalidField
		}
		if string(raw) != "1" {
			return ev, ReasonUnsupportedSchemaVersion
		}
	}

	// 4. Required strings every type has.
	var reason string
	if ev.eventID, reason = requiredString(obj, "event_id"); reason != "" {
		return ev, reason
	}
	typ, reason := anyString(obj, "type")
	if reason != "" {
		return ev, reason
	}
	if ev.account, reason = requiredString(obj, "account_id"); reason != "" {
		return ev, reason
	}

	// 5. Known type.
	switch string(typ) {
	case typeLogin:
		ev.typ = typeLogin
	case typeFeatureUsed:
		ev.typ = typeFeatureUsed
	case typeSeatAssigned:
		ev.typ = typeSeatAssigned
	case typeSeatUnassigned:
		ev.typ = typeSeatUnassigned
	case typeSeatsPurchased:
		ev.typ = typeSeatsPurchased
	default:
		return ev, ReasonUnknownType
	}

	// 4, continued: strings some types require. Fields a type does not use
	// are ignored, whatever they hold (6).
	if ev.typ != typeSeatsPurchased {
		if ev.user, reason = requiredString(obj, "user_id"); reason != "" {
			return ev, reason
		}
	}
	if ev.typ == typeFeatureUsed {
		if ev.feature, reason = requiredString(obj, "feature"); reason != "" {
			return ev, reason
		}
	}

	// 6. product: optional for every type.
	if raw, ok := obj.get("product"); ok {
		s, ok := decodeString(raw)
		if !ok || len(s) > maxProductBytes {
			return ev, ReasonInvalidField
		}
	}

	// 7. occurred_at.
	raw, ok := obj.get("occurred_at")
	if !ok {
		return ev, ReasonMissingField
	}
	var sub bool // the instant lies after ev.ms (a fraction finer than a millisecond)
	if ev.ms, sub, reason = occurredAt(raw); reason != "" {
		return ev, reason
	}
	if ev.ms < minOccurredAtMs || ev.ms >= endOccurredAtMs || ev.ms > recordTsMs+skewMs || ev.ms == recordTsMs+skewMs && sub {
		return ev, ReasonTimestampOutOfRange
	}

	// 8. seats.
	if ev.typ == typeSeatsPurchased {
		raw, ok := obj.get("seats")
		if !ok {
			return ev, ReasonMissingField
		}
		if !isIntLiteral(raw) {
			return ev, ReasonInvalidField
		}
		n, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil || n < 0 || n > maxSeats {
			return ev, ReasonInvalidField
		}
		ev.seats = n
	}
	return ev, ""
}

// object is a JSON object's members in order: keys decoded, values as raw
// JSON text aliasing the input.
type object []member

type member struct {
	key   []byte
	value []byte
}

// get returns the value of the first member called name (a repeated key's
// first occurrence wins). A null value counts as absent.
func (o object) get(name string) ([]byte, bool) {
	for _, m := range o {
		if string(m.key) == name {
			return m.value, string(m.value) != "null"
		}
	}
	return nil, false
}

// parseObject sets *obj to the members of a JSON object, reusing its
// memory. It returns false when value is empty, not UTF-8, not JSON, or not
// an object.
//
// encoding/json decides validity; only then are the top-level members split
// out by hand: encoding/json's Decoder can do that too, but at several times
// the cost, and decoding into a map would keep a repeated key's last value.
func parseObject(value []byte, obj *object) bool {
	*obj = (*obj)[:0]
	if len(value) == 0 || !utf8.Valid(value) || !json.Valid(value) {
		return false
	}
	i := skipSpace(value, 0)
	if value[i] != '{' {
		return false
	}
	i = skipSpace(value, i+1)
	for value[i] != '}' {
		if value[i] == ',' {
			i = skipSpace(value, i+1)
		}
		keyEnd := endOfString(value, i)
		key, ok := decodeString(value[i:keyEnd])
		if !ok {
			return false
		}
		i = skipSpace(value, keyEnd) // at ':'
		i = skipSpace(value, i+1)
		valueEnd := endOfValue(value, i)
		*obj = append(*obj, member{key: key, value: value[i:valueEnd]})
		i = skipSpace(value, valueEnd)
	}
	return true
}

// The helpers below walk JSON text that json.Valid accepted.

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// endOfString returns the index just past the string starting at b[i] ('"').
func endOfString(b []byte, i int) int {
	for j := i + 1; ; j++ {
		switch b[j] {
		case '\\':
			j++ // skip the escaped byte; \uXXXX's hex digits are harmless
		case '"':
			return j + 1
		}
	}
}

// endOfValue returns the index just past the value starting at b[i].
func endOfValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return endOfString(b, i)
	case '{', '[':
		depth := 0
		for j := i; ; j++ {
			switch b[j] {
			case '"':
				j = endOfString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
	default: // a number, true, false or null
		j := i
		for j < len(b) && !strings.ContainsRune(",}] \t\n\r", rune(b[j])) {
			j++
		}
		return j
	}
}

// isIntLiteral reports whether raw (valid JSON) is a number without a
// fraction or exponent.
func isIntLiteral(raw []byte) bool {
	s := bytes.TrimPrefix(raw, []byte("-"))
	if len(s) == 0 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// decodeString decodes raw if it is a JSON string. The result aliases raw
// when there is nothing to unescape.
func decodeString(raw []byte) ([]byte, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return nil, false
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1], true // no escapes: the bytes are the string
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, false
	}
	return []byte(s), true
}

// anyString returns the string field name, of any length.
func anyString(obj object, name string) ([]byte, string) {
	raw, ok := obj.get(name)
	if !ok {
		return nil, ReasonMissingField
	}
	s, ok := decodeString(raw)
	if !ok {
		return nil, ReasonInvalidField
	}
	return s, ""
}

// requiredString returns the string field name, 1–128 bytes once decoded.
func requiredString(obj object, name string) ([]byte, string) {
	raw, ok := obj.get(name)
	if !ok {
		return nil, ReasonMissingField
	}
	s, ok := decodeString(raw)
	if !ok || len(s) == 0 || len(s) > maxIDBytes {
		return nil, ReasonInvalidField
	}
	return s, ""
}

// occurredAt parses occurred_at: an RFC 3339 string or integer epoch
// milliseconds; sub says the instant lies after the millisecond returned.
// Only the parse is checked here, not the range.
func occurredAt(raw []byte) (ms int64, sub bool, reason string) {
	if isIntLiteral(raw) {
		ms, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			// An integer beyond int64 is far outside 2000..2105.
			return 0, false, ReasonTimestampOutOfRange
		}
		return ms, false, ""
	}
	s, ok := decodeString(raw)
	if !ok {
		return 0, false, ReasonInvalidField
	}
	m := rfc3339.FindSubmatch(s)
	if m == nil {
		return 0, false, ReasonInvalidField
	}
	if len(m[3]) > 0 && (string(m[3]) > "23" || string(m[4]) > "59") { // offset ±HH:MM
		return 0, false, ReasonInvalidField
	}
	norm := bytes.Clone(s)
	norm[10] = 'T'
	if last := len(norm) - 1; norm[last] == 'z' {
		norm[last] = 'Z'
	}
	t, err := time.Parse(time.RFC3339Nano, string(norm))
	if err != nil {
		return 0, false, ReasonInvalidField
	}
	// Truncate toward the earlier millisecond: Nanosecond is never
	// negative. (time.Parse keeps 9 digits; the regexp's fraction beyond
	// them counts for sub.)
	frac := m[1]
	sub = t.Nanosecond()%1e6 != 0 || len(frac) > 10 && len(bytes.Trim(frac[10:], "0")) > 0 // frac: "." and the digits
	return t.Unix()*1000 + int64(t.Nanosecond())/1e6, sub, ""
}
