package decode

import (
	"flag"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/usagepipe/usagepipe/schema/event"
)

// DefaultMaxClockSkew is how far occurred_at may be after the Kafka record
// timestamp (contract section 5, USAGEPIPE_MAX_CLOCK_SKEW).
const DefaultMaxClockSkew = time.Hour

// Config configures a Decoder.
type Config struct {
	// MaxClockSkew is how far occurred_at may be after the record timestamp.
	// Zero means DefaultMaxClockSkew.
	MaxClockSkew time.Duration
}

// RegisterFlags registers --max-clock-skew on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.MaxClockSkew, "max-clock-skew", DefaultMaxClockSkew,
		"how far an event's occurred_at may be after its Kafka record timestamp")
}

// Validate reports a negative max clock skew.
func (c Config) Validate() error {
	if c.MaxClockSkew < 0 || c.MaxClockSkew%time.Millisecond != 0 {
		return fmt.Errorf("max clock skew must be whole milliseconds and not negative, got %v", c.MaxClockSkew)
	}
	return nil
}

// Decoder decodes and validates record values. It is not safe for concurrent
// use; the zero Decoder is not usable, call New.
type Decoder struct {
	skew   time.Duration
	skewMs int64
	// buf holds the unescaped strings (those with escapes) of the last
	// accepted record.
	buf []byte
	// keyBuf holds an unescaped key while it is looked up.
	keyBuf []byte
	// stack is skipValue's scratch space.
	stack []bool
	// value and fields locate the first occurrence of each known field of
	// the record being decoded.
	value  []byte
	fields [numFields]span
}

// span locates a field's value in the record: the raw text of a number, the
// content between the quotes of a string.
type span struct {
	start, end int32 // a value is at most event.MaxValueBytes
	kind       kind
	esc        bool // a string with escapes
	isInt      bool // a number without fraction or exponent
}

// New returns a Decoder. cfg should have passed Validate; a non-positive
// MaxClockSkew means DefaultMaxClockSkew.
func New(cfg Config) *Decoder {
	skew := cfg.MaxClockSkew
	if skew <= 0 {
		skew = DefaultMaxClockSkew
	}
	return &Decoder{skew: skew, skewMs: skew.Milliseconds(), buf: make([]byte, 0, 1024), stack: make([]bool, 0, 16)}
}

type field uint8

const (
	fSchemaVersion field = iota
	fEventID
	fType
	fAccountID
	fUserID
	fOccurredAt
	fFeature
	fProduct
	fSeats
	numFields
)

var fieldNames = [numFields]string{"schema_version", "event_id", "type", "account_id", "user_id", "occurred_at", "feature", "product", "seats"}

func lookupField(k []byte) (field, bool) {
	switch string(k) {
	case "schema_version":
		return fSchemaVersion, true
	case "event_id":
		return fEventID, true
	case "type":
		return fType, true
	case "account_id":
		return fAccountID, true
	case "user_id":
		return fUserID, true
	case "occurred_at":
		return fOccurredAt, true
	case "feature":
		return fFeature, true
	case "product":
		return fProduct, true
	case "seats":
		return fSeats, true
	}
	return 0, false
}

// kind is the JSON type of a field's value, read from its raw text.
type kind uint8

const (
	kAbsent kind = iota
	kNull
	kString
	kNumber
	kBool
	kObject
	kArray
)

var kindNames = [...]string{"absent", "null", "a string", "a number", "a boolean", "an object", "an array"}

// Decode parses and validates one Kafka record value (contract section 2).
// recordTsMs is the Kafka record timestamp in epoch ms. On success it fills
// *ev and returns nil; ev's byte slices borrow value (strings without
// escapes) or the decoder's memory (unescaped strings), so they are valid
// only until the next Decode call and while value is unchanged. On failure it returns a
// *event.Rejection with the contract reason and a human sentence naming the
// field, and leaves *ev unchanged.
func (d *Decoder) Decode(value []byte, recordTsMs int64, ev *event.Event) *event.Rejection {
	rej := d.decode(value, recordTsMs, ev)
	d.value = nil // do not keep the caller's buffer alive
	return rej
}

// maxKeep is the most scratch memory a Decoder keeps between records; a rare
// huge record does not pin its size for the Decoder's lifetime.
const maxKeep = 64 << 10

func (d *Decoder) decode(value []byte, recordTsMs int64, ev *event.Event) *event.Rejection {
	if cap(d.buf) > maxKeep {
		d.buf = make([]byte, 0, 1024)
	}
	if cap(d.keyBuf) > maxKeep {
		d.keyBuf = nil
	}
	if len(value) > event.MaxValueBytes {
		return reject(event.ReasonTooLarge, fmt.Sprintf("record value is %d bytes, more than %d", len(value), event.MaxValueBytes))
	}
	if len(value) == 0 {
		return reject(event.ReasonMalformedJSON, "record value is empty")
	}
	if rej := d.scan(value); rej != nil {
		return rej
	}
	d.buf = d.buf[:0]

	// Fields are checked in a fixed order, so a record with several faults
	// always gets the same reason.
	var e event.Event

	// schema_version
	if k, raw := d.raw(fSchemaVersion); k == kNumber {
		if !d.fields[fSchemaVersion].isInt {
			return reject(event.ReasonInvalidField, `field "schema_version" must be an integer, got `+trunc(raw))
		}
		if string(raw) != "1" {
			return reject(event.ReasonUnsupportedSchemaVersion, `field "schema_version" is `+trunc(raw)+"; only 1 is supported")
		}
	} else if k != kAbsent && k != kNull {
		return wrongType(fSchemaVersion, "an integer", k)
	}

	var rej *event.Rejection
	if e.EventID, rej = d.id(fEventID, event.MaxIDBytes); rej != nil {
		return rej
	}
	// type: any string (empty or long is unknown_type, not a length fault:
	// the contract gives type no length rule).
	k, typ := d.str(fType)
	if k != kString {
		return missingOrWrongType(fType, "a string", k)
	}
	if e.AccountID, rej = d.id(fAccountID, event.MaxIDBytes); rej != nil {
		return rej
	}
	t, ok := event.ParseType(typ)
	if !ok {
		return reject(event.ReasonUnknownType, `field "type" is `+quote(typ)+", not one of login, feature_used, seat_assigned, seat_unassigned, seats_purchased")
	}
	e.Type = t
	if t != event.SeatsPurchased {
		if e.UserID, rej = d.id(fUserID, event.MaxIDBytes); rej != nil {
			return rej
		}
	}
	if t == event.FeatureUsed {
		if e.Feature, rej = d.id(fFeature, event.MaxIDBytes); rej != nil {
			return rej
		}
	}

	switch k, s := d.str(fProduct); k {
	case kAbsent, kNull:
	case kString:
		if len(s) > event.MaxProductBytes {
			return reject(event.ReasonInvalidField, fmt.Sprintf(`field "product" must be at most %d bytes, got %d`, event.MaxProductBytes, len(s)))
		}
		e.Product = s
	default:
		return wrongType(fProduct, "a string", k)
	}

	if e.OccurredAtMs, rej = d.occurredAt(recordTsMs); rej != nil {
		return rej
	}

	if t == event.SeatsPurchased {
		k, raw := d.raw(fSeats)
		if k != kNumber {
			return missingOrWrongType(fSeats, "an integer", k)
		}
		n, ok := parseInt(raw)
		if !ok || n < 0 || n > event.MaxSeats {
			return reject(event.ReasonInvalidField, fmt.Sprintf(`field "seats" must be an integer from 0 to %d, got %s`, event.MaxSeats, trunc(raw)))
		}
		e.Seats = n
	}

	*ev = e
	return nil
}

// scan checks that b is one valid JSON object and records in d.fields where
// the first occurrence of each known field's value is.
func (d *Decoder) scan(b []byte) *event.Rejection {
	d.value = b
	d.fields = [numFields]span{}
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return d.notObject(b, i)
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		i++
	} else {
		for {
			if i >= len(b) || b[i] != '"' {
				return invalidJSON(b, i)
			}
			ke, esc, ok := scanString(b, i+1)
			if !ok {
				return invalidJSON(b, ke)
			}
			key := b[i+1 : ke]
			if esc {
				d.keyBuf = appendUnescaped(d.keyBuf[:0], key)
				key = d.keyBuf
			}
			i = skipWS(b, ke+1)
			if i >= len(b) || b[i] != ':' {
				return invalidJSON(b, i)
			}
			i = skipWS(b, i+1)
			if f, known := lookupField(key); known && d.fields[f].kind == kAbsent {
				i, ok = d.scanField(b, i, f)
			} else {
				i, ok, d.stack = skipValue(b, i, 1, d.stack)
			}
			if !ok {
				// (The dead-letter sentence names the field, as the
				// contract asks of usagepipe.error.)
				r := invalidJSON(b, i)
				r.Msg += " (in the value of field " + quote(key) + ")"
				return r
			}
			i = skipWS(b, i)
			if i < len(b) && b[i] == ',' {
				i = skipWS(b, i+1)
				continue
			}
			if i < len(b) && b[i] == '}' {
				i++
				break
			}
			return invalidJSON(b, i)
		}
	}
	if i = skipWS(b, i); i < len(b) {
		return invalidJSON(b, i)
	}
	return nil
}

// scanField scans the value of known field f at b[i] and records its span.
func (d *Decoder) scanField(b []byte, i int, f field) (int, bool) {
	if i >= len(b) {
		return i, false
	}
	sp := &d.fields[f]
	start := i
	var ok bool
	switch b[i] {
	case '"':
		sp.kind, start = kString, i+1
		i, sp.esc, ok = scanString(b, i+1)
		sp.start, sp.end = int32(start), int32(i)
		if !ok {
			// At the offending byte, for the error; for a bad escape the
			// byte after its backslash (the end: "ends early").
			if i < len(b) && b[i] == '\\' {
				i++
			}
			return i, false
		}
		return i + 1, true
	case '{':
		sp.kind = kObject
		i, ok, d.stack = skipValue(b, i, 1, d.stack)
	case '[':
		sp.kind = kArray
		i, ok, d.stack = skipValue(b, i, 1, d.stack)
	case 't', 'f':
		sp.kind = kBool
		i, ok = scanLiteral(b, i)
	case 'n':
		sp.kind = kNull
		i, ok = scanLiteral(b, i)
	default:
		sp.kind = kNumber
		i, sp.isInt, ok = scanNumber(b, i)
	}
	sp.start, sp.end = int32(start), int32(i)
	return i, ok
}

// notObject is the rejection for a value whose first byte (at i) does not
// open an object.
func (d *Decoder) notObject(b []byte, i int) *event.Rejection {
	if i >= len(b) {
		return reject(event.ReasonMalformedJSON, "record value is not valid JSON: it holds only whitespace")
	}
	end, ok, stack := skipValue(b, i, 0, d.stack)
	d.stack = stack
	if !ok {
		return invalidJSON(b, end)
	}
	if end = skipWS(b, end); end < len(b) {
		return invalidJSON(b, end)
	}
	var k kind
	switch b[i] {
	case '"':
		k = kString
	case '[':
		k = kArray
	case 't', 'f':
		k = kBool
	case 'n':
		k = kNull
	default:
		k = kNumber
	}
	return reject(event.ReasonMalformedJSON, "record value is "+kindNames[k]+", not a JSON object")
}

func invalidJSON(b []byte, i int) *event.Rejection {
	if i >= len(b) {
		return reject(event.ReasonMalformedJSON, "record value is not valid JSON: it ends early")
	}
	r, size := utf8.DecodeRune(b[i:])
	if r == utf8.RuneError && size == 1 {
		return reject(event.ReasonMalformedJSON, fmt.Sprintf("record value is not valid UTF-8 at byte %d", i))
	}
	return reject(event.ReasonMalformedJSON, fmt.Sprintf("record value is not valid JSON: unexpected %q at byte %d", r, i))
}

// occurredAt parses and range-checks occurred_at.
func (d *Decoder) occurredAt(recordTsMs int64) (int64, *event.Rejection) {
	k, b := d.raw(fOccurredAt)
	if d.fields[fOccurredAt].esc {
		k, b = d.str(fOccurredAt)
	}
	var ms int64
	var ok, sub bool // sub: the instant is after ms (a fraction finer than a millisecond)
	switch k {
	case kString:
		ms, sub, ok = parseRFC3339(b)
	case kNumber:
		if ms, ok = parseInt(b); !ok && d.fields[fOccurredAt].isInt {
			// An integer beyond int64 parses, but is far out of range.
			side := "after the record timestamp"
			if b[0] == '-' {
				side = "before 2000-01-01T00:00:00Z"
			}
			return 0, reject(event.ReasonTimestampOutOfRange, `field "occurred_at" is `+trunc(b)+" ms, "+side)
		}
	default:
		return 0, missingOrWrongType(fOccurredAt, "an RFC 3339 timestamp or integer epoch milliseconds", k)
	}
	if !ok {
		return 0, reject(event.ReasonInvalidField, `field "occurred_at" must be an RFC 3339 timestamp or integer epoch milliseconds, got `+quoteKind(k, b))
	}
	if ms < event.MinOccurredAtMs {
		return 0, reject(event.ReasonTimestampOutOfRange, `field "occurred_at" is `+fmtMs(ms)+", before 2000-01-01T00:00:00Z")
	}
	limit := recordTsMs + d.skewMs
	if recordTsMs > math.MaxInt64-d.skewMs {
		limit = math.MaxInt64
	}
	if ms == limit && sub {
		return 0, reject(event.ReasonTimestampOutOfRange, fmt.Sprintf(`field "occurred_at" is less than a millisecond more than the max clock skew (%v) after the record timestamp`, d.skew))
	}
	if ms > limit {
		return 0, reject(event.ReasonTimestampOutOfRange, fmt.Sprintf(`field "occurred_at" is %s after the record timestamp (max clock skew %v)`, fmtAfter(ms, recordTsMs), d.skew))
	}
	if ms >= event.MaxOccurredAtMs {
		return 0, reject(event.ReasonTimestampOutOfRange, `field "occurred_at" is `+fmtMs(ms)+", not before 2105-01-01T00:00:00Z, the end of storable time")
	}
	return ms, nil
}

// id returns a required string field of 1 to maxBytes unescaped bytes.
func (d *Decoder) id(f field, maxBytes int) ([]byte, *event.Rejection) {
	k, s := d.str(f)
	if k != kString {
		return nil, missingOrWrongType(f, "a string", k)
	}
	if len(s) == 0 || len(s) > maxBytes {
		return nil, reject(event.ReasonInvalidField, fmt.Sprintf(`field %q must be 1 to %d bytes, got %d`, fieldNames[f], maxBytes, len(s)))
	}
	return s, nil
}

// raw returns the kind of field f and its raw text: a number's literal, a
// string's content still escaped; it borrows the record value.
func (d *Decoder) raw(f field) (kind, []byte) {
	sp := d.fields[f]
	return sp.kind, d.value[sp.start:sp.end]
}

// str is raw, with a string with escapes unescaped into d.buf (one without
// is returned in place: the common case copies nothing).
func (d *Decoder) str(f field) (kind, []byte) {
	sp := d.fields[f]
	if sp.kind != kString || !sp.esc {
		return sp.kind, d.value[sp.start:sp.end:sp.end]
	}
	start := len(d.buf)
	d.buf = appendUnescaped(d.buf, d.value[sp.start:sp.end])
	return kString, d.buf[start:len(d.buf):len(d.buf)]
}

// parseInt parses a JSON integer literal; ok is false for a fraction, an
// exponent or a value that does not fit int64.
func parseInt(raw []byte) (int64, bool) {
	neg := raw[0] == '-'
	digits := raw
	if neg {
		digits = raw[1:]
	}
	var n uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (math.MaxUint64-9)/10 {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	if neg {
		if n > 1<<63 {
			return 0, false
		}
		return -int64(n), true // for n == 1<<63 this wraps to math.MinInt64, as it should
	}
	if n > math.MaxInt64 {
		return 0, false
	}
	return int64(n), true
}

func reject(r event.Reason, msg string) *event.Rejection {
	return &event.Rejection{Reason: r, Msg: msg}
}

// missingOrWrongType is the rejection for a required field of kind k.
func missingOrWrongType(f field, want string, k kind) *event.Rejection {
	switch k {
	case kAbsent:
		return reject(event.ReasonMissingField, fmt.Sprintf("field %q is missing", fieldNames[f]))
	case kNull:
		return reject(event.ReasonMissingField, fmt.Sprintf("field %q is null", fieldNames[f]))
	}
	return wrongType(f, want, k)
}

func wrongType(f field, want string, k kind) *event.Rejection {
	return reject(event.ReasonInvalidField, fmt.Sprintf("field %q must be %s, got %s", fieldNames[f], want, kindNames[k]))
}

// maxEcho is how much of a value a rejection message repeats.
const maxEcho = 64

// echoLen is how many bytes of b a message repeats: all of it, or about
// maxEcho cut on a rune boundary.
func echoLen(b []byte) int {
	if len(b) <= maxEcho {
		return len(b)
	}
	n := maxEcho
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return n
}

// trunc returns b as a string, cut to about maxEcho bytes.
func trunc(b []byte) string {
	if n := echoLen(b); n < len(b) {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// quote returns b quoted and cut to about maxEcho bytes.
func quote(b []byte) string {
	if n := echoLen(b); n < len(b) {
		return strconv.Quote(string(b[:n])) + "…"
	}
	return strconv.Quote(string(b))
}

// quoteKind echoes a decoded string quoted and anything else as raw JSON.
func quoteKind(k kind, b []byte) string {
	if k == kString {
		return quote(b)
	}
	return trunc(b)
}

func fmtMs(ms int64) string {
	return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
}

// fmtAfter formats how far ms is after recordTsMs (ms > recordTsMs).
func fmtAfter(ms, recordTsMs int64) string {
	diff := uint64(ms) - uint64(recordTsMs)
	if diff > math.MaxInt64/uint64(time.Millisecond) {
		return strconv.FormatUint(diff, 10) + "ms"
	}
	return (time.Duration(diff) * time.Millisecond).String()
}
