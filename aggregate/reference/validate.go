package reference

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
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

// event is one valid event, fields decoded.
type event struct {
	eventID string
	typ     string
	account string
	user    string // "" for seats_purchased
	feature string // feature_used only
	ms      int64  // occurred_at, UTC epoch milliseconds
	seats   int64  // seats_purchased only
}

// rfc3339 is the accepted shape of a string occurred_at. time.Parse alone is
// more lenient (it takes more than 9 fraction digits, a comma, offsets such
// as +24:00), so the shape is checked first.
var rfc3339 = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-]([0-9]{2}):([0-9]{2}))$`)

// validate applies the contract's rules, in the order of the brief, to one
// record value. It returns the decoded event, or the reject reason.
func validate(value []byte, recordTsMs int64, skewMs int64) (event, string) {
	var ev event

	// 1. Size.
	if len(value) > maxValueBytes {
		return ev, ReasonTooLarge
	}

	// 2. A JSON object, valid UTF-8.
	fields, ok := parseObject(value)
	if !ok {
		return ev, ReasonMalformedJSON
	}

	// 3. schema_version: absent or null means 1.
	if raw, ok := fields["schema_version"]; ok && !isNull(raw) {
		if !isIntLiteral(raw) {
			return ev, ReasonInvalidField
		}
		if string(raw) != "1" {
			return ev, ReasonUnsupportedSchemaVersion
		}
	}

	// 4. Required strings every type has.
	var reason string
	if ev.eventID, reason = requiredString(fields, "event_id"); reason != "" {
		return ev, reason
	}
	if ev.typ, reason = requiredString(fields, "type"); reason != "" {
		return ev, reason
	}
	if ev.account, reason = requiredString(fields, "account_id"); reason != "" {
		return ev, reason
	}

	// 5. Known type.
	switch ev.typ {
	case typeLogin, typeFeatureUsed, typeSeatAssigned, typeSeatUnassigned, typeSeatsPurchased:
	default:
		return ev, ReasonUnknownType
	}

	// 4, continued: strings some types require. Fields a type does not use
	// are ignored, whatever they hold (6).
	if ev.typ != typeSeatsPurchased {
		if ev.user, reason = requiredString(fields, "user_id"); reason != "" {
			return ev, reason
		}
	}
	if ev.typ == typeFeatureUsed {
		if ev.feature, reason = requiredString(fields, "feature"); reason != "" {
			return ev, reason
		}
	}

	// 6. product: optional for every type.
	if raw, ok := fields["product"]; ok && !isNull(raw) {
		s, ok := decodeString(raw)
		if !ok || len(s) > maxProductBytes {
			return ev, ReasonInvalidField
		}
	}

	// 7. occurred_at.
	if ev.ms, reason = occurredAt(fields["occurred_at"]); reason != "" {
		return ev, reason
	}
	if ev.ms < minOccurredAtMs || ev.ms >= endOccurredAtMs || ev.ms > recordTsMs+skewMs {
		return ev, ReasonTimestampOutOfRange
	}

	// 8. seats.
	if ev.typ == typeSeatsPurchased {
		raw, ok := fields["seats"]
		if !ok || isNull(raw) {
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

// parseObject returns the members of a JSON object, the first occurrence of
// a repeated key winning, each value as its raw JSON text. ok is false when
// value is empty, not UTF-8, not JSON, or not an object.
func parseObject(value []byte) (map[string]json.RawMessage, bool) {
	if len(value) == 0 || !utf8.Valid(value) || !json.Valid(value) {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	fields := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, false
		}
		key, ok := tok.(string)
		if !ok {
			return nil, false
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, false
		}
		if _, seen := fields[key]; !seen {
			fields[key] = json.RawMessage(bytes.TrimSpace(raw))
		}
	}
	return fields, true
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// isIntLiteral reports whether raw (valid JSON) is a number without a
// fraction or exponent.
func isIntLiteral(raw json.RawMessage) bool {
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

// decodeString decodes raw if it is a JSON string.
func decodeString(raw json.RawMessage) (string, bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// requiredString returns the string field name, 1–128 bytes once decoded.
func requiredString(fields map[string]json.RawMessage, name string) (string, string) {
	raw, ok := fields[name]
	if !ok || isNull(raw) {
		return "", ReasonMissingField
	}
	s, ok := decodeString(raw)
	if !ok || len(s) == 0 || len(s) > maxIDBytes {
		return "", ReasonInvalidField
	}
	return s, ""
}

// occurredAt parses occurred_at: an RFC 3339 string or integer epoch
// milliseconds. Only the parse is checked here, not the range.
func occurredAt(raw json.RawMessage) (int64, string) {
	if raw == nil || isNull(raw) {
		return 0, ReasonMissingField
	}
	if isIntLiteral(raw) {
		ms, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			// An integer beyond int64 is far outside 2000..2105.
			return 0, ReasonTimestampOutOfRange
		}
		return ms, ""
	}
	s, ok := decodeString(raw)
	if !ok {
		return 0, ReasonInvalidField
	}
	m := rfc3339.FindStringSubmatch(s)
	if m == nil {
		return 0, ReasonInvalidField
	}
	if m[3] != "" && (m[3] > "23" || m[4] > "59") { // offset ±HH:MM
		return 0, ReasonInvalidField
	}
	norm := []byte(s)
	norm[10] = 'T'
	if last := len(norm) - 1; norm[last] == 'z' {
		norm[last] = 'Z'
	}
	t, err := time.Parse(time.RFC3339Nano, string(norm))
	if err != nil {
		return 0, ReasonInvalidField
	}
	// Truncate toward the earlier millisecond: Nanosecond is never negative.
	return t.Unix()*1000 + int64(t.Nanosecond())/1e6, ""
}
