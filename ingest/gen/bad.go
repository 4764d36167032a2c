package gen

import (
	"strconv"
	"strings"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/reference"
)

// TooLargeEvery is how often (in bad records) a too_large record comes: the
// first bad record is too_large, then every TooLargeEvery-th. The other
// reasons rotate in between.
const TooLargeEvery = 500

// MaxValueBytes is the largest value Next emits: a too_large record is one
// byte over the contract's 1 MiB limit. Producing it needs a client with
// kgo.ProducerBatchMaxBytes above it and a topic whose max.message.bytes
// admits the (compressed) batch.
const MaxValueBytes = 1<<20 + 1

// badVariant builds one record with exactly one fault. ts is the record's
// Kafka timestamp, for faults relative to it.
type badVariant func(g *Generator, ts int64) (key string, value []byte)

// rotating are the reasons that take turns between too_large records.
var rotating = []string{
	reference.ReasonMalformedJSON,
	reference.ReasonUnsupportedSchemaVersion,
	reference.ReasonMissingField,
	reference.ReasonUnknownType,
	reference.ReasonInvalidField,
	reference.ReasonTimestampOutOfRange,
}

// badRecord queues the next bad record of the rotation.
func (g *Generator) badRecord() {
	reason := reference.ReasonTooLarge
	if g.bad%TooLargeEvery != 0 {
		reason = rotating[g.rot%len(rotating)]
		g.rot++
	}
	g.bad++
	variants := badVariants[reason]
	v := variants[g.variant[reason]%len(variants)]
	g.variant[reason]++
	key, value := v(g, g.clockMs)
	g.push(key, value, reason)
}

// withDoc adapts a change to a valid event of type typ into a badVariant.
func withDoc(typ string, change func(g *Generator, ts int64, d doc) doc) badVariant {
	return func(g *Generator, ts int64) (string, []byte) {
		account, d := g.validEvent(typ)
		return account, change(g, ts, d).bytes()
	}
}

// setField returns a variant where field key of a typ event is raw.
func setField(typ, key, raw string) badVariant {
	return withDoc(typ, func(_ *Generator, _ int64, d doc) doc { return d.set(key, raw) })
}

// dropField returns a variant where field key of a typ event is absent.
func dropField(typ, key string) badVariant {
	return withDoc(typ, func(_ *Generator, _ int64, d doc) doc { return d.without(key) })
}

// withBytes adapts a change to the bytes of a valid login into a badVariant.
func withBytes(change func(b []byte) []byte) badVariant {
	return func(g *Generator, _ int64) (string, []byte) {
		account, d := g.validEvent("login")
		return account, change(d.bytes())
	}
}

// literal returns a variant whose value is s.
func literal(s string) badVariant {
	return func(g *Generator, _ int64) (string, []byte) {
		account, _ := g.validEvent("login")
		return account, []byte(s)
	}
}

// padTo pads d with an unknown string field to exactly n bytes.
func padTo(d doc, n int) []byte {
	const pattern = "usage-telemetry-padding-"
	over := len(d.bytes()) + len(`,"blob":""`)
	pad := strings.Repeat(pattern, (n-over)/len(pattern)+1)[:n-over]
	return d.set("blob", quote(pad)).bytes()
}

// eventDay returns the UTC date (2006-01-02) of a plausible occurred_at, to
// build invalid renderings of it.
func eventDay(g *Generator) string {
	return time.UnixMilli(g.occurredMs()).UTC().Format("2006-01-02")
}

var badVariants = map[string][]badVariant{
	reference.ReasonTooLarge: {
		func(g *Generator, _ int64) (string, []byte) {
			account, d := g.validEvent("login")
			return account, padTo(d, MaxValueBytes)
		},
	},
	reference.ReasonMalformedJSON: {
		literal(""),
		withDoc("login", func(_ *Generator, _ int64, d doc) doc { // invalid UTF-8 inside a string
			return d.set("product", "\"analyt\xffics\"")
		}),
		withBytes(func(b []byte) []byte { return b[:len(b)/2] }),                           // truncated
		withBytes(func(b []byte) []byte { return append(append([]byte("["), b...), ']') }), // an array
		withBytes(func(b []byte) []byte { return append(b, " {}"...) }),                    // trailing data
		literal(`"login"`),
		withBytes(func(b []byte) []byte { // an unquoted key
			return []byte(strings.Replace(string(b), `"event_id"`, `event_id`, 1))
		}),
		withBytes(func(b []byte) []byte { return append(b[:len(b)-1], ",}"...) }), // trailing comma
		literal("null"),
		literal("12345"),
	},
	reference.ReasonUnsupportedSchemaVersion: {
		setField("login", "schema_version", "2"),
		setField("feature_used", "schema_version", "0"),
		setField("login", "schema_version", "-1"),
		setField("seats_purchased", "schema_version", "100"),
	},
	reference.ReasonMissingField: {
		dropField("login", "event_id"),
		dropField("login", "type"),
		dropField("feature_used", "account_id"),
		dropField("login", "user_id"),
		dropField("seat_assigned", "user_id"),
		dropField("feature_used", "feature"),
		dropField("login", "occurred_at"),
		dropField("seats_purchased", "seats"),
		setField("login", "event_id", "null"),
		setField("login", "type", "null"),
		setField("seat_unassigned", "account_id", "null"),
		setField("feature_used", "user_id", "null"),
		setField("feature_used", "feature", "null"),
		setField("seats_purchased", "occurred_at", "null"),
		setField("seats_purchased", "seats", "null"),
	},
	reference.ReasonUnknownType: {
		setField("login", "type", `"logout"`),
		setField("login", "type", `"Login"`),
		setField("login", "type", `"seat_reassigned"`),
		setField("feature_used", "type", `"feature-used"`),
		setField("login", "type", `"page_view"`),
	},
	reference.ReasonInvalidField: {
		setField("login", "event_id", "12345"),
		setField("login", "event_id", `""`),
		setField("login", "event_id", quote(strings.Repeat("e", 129))),
		setField("login", "type", "1"),
		setField("login", "type", `["login"]`),
		setField("feature_used", "account_id", `""`),
		setField("login", "account_id", quote("acct-"+strings.Repeat("x", 124))),
		setField("login", "account_id", quote(strings.Repeat("日", 43))),             // 129 bytes, 43 runes
		setField("login", "account_id", `"edge-`+strings.Repeat(`\u00e9`, 62)+`x"`), // 130 bytes once decoded
		setField("login", "user_id", "true"),
		setField("seat_assigned", "user_id", quote(strings.Repeat("u", 129))),
		setField("feature_used", "feature", "{}"),
		setField("feature_used", "feature", `""`),
		setField("login", "product", quote(strings.Repeat("p", 65))),
		setField("login", "product", "7"),
		withDoc("login", func(g *Generator, _ int64, d doc) doc {
			return d.set("occurred_at", quote(eventDay(g)[:4]+"-02-30T10:00:00Z"))
		}),
		withDoc("login", func(g *Generator, _ int64, d doc) doc {
			return d.set("occurred_at", quote(eventDay(g)+" 10:00:00Z"))
		}),
		withDoc("login", func(g *Generator, _ int64, d doc) doc {
			return d.set("occurred_at", quote(eventDay(g)+"T23:59:60Z")) // a leap second
		}),
		withDoc("login", func(g *Generator, _ int64, d doc) doc {
			return d.set("occurred_at", quote(eventDay(g)+"T10:00:00"))
		}),
		withDoc("login", func(g *Generator, _ int64, d doc) doc {
			return d.set("occurred_at", quote(eventDay(g)+"T10:00:00+0900"))
		}),
		withDoc("feature_used", func(g *Generator, _ int64, d doc) doc {
			return d.set("occurred_at", strconv.FormatInt(g.occurredMs(), 10)+".0")
		}),
		withDoc("feature_used", func(g *Generator, _ int64, d doc) doc {
			return d.set("occurred_at", strconv.FormatInt(g.occurredMs()/1000, 10)+"e3")
		}),
		withDoc("feature_used", func(g *Generator, _ int64, d doc) doc {
			return d.set("occurred_at", quote(strconv.FormatInt(g.occurredMs(), 10)))
		}),
		setField("login", "occurred_at", "true"),
		setField("login", "occurred_at", `"yesterday"`),
		setField("seats_purchased", "seats", "-1"),
		setField("seats_purchased", "seats", "10000001"),
		setField("seats_purchased", "seats", "2.5"),
		setField("seats_purchased", "seats", `"10"`),
		setField("seats_purchased", "seats", "1e3"),
		setField("login", "schema_version", `"1"`),
		setField("login", "schema_version", "1.0"),
		setField("login", "schema_version", "true"),
	},
	reference.ReasonTimestampOutOfRange: {
		setField("login", "occurred_at", `"1999-12-31T23:59:59.999Z"`),
		setField("feature_used", "occurred_at", "946684799999"),
		setField("login", "occurred_at", `"2000-01-01T08:59:59.999+09:00"`),
		withDoc("login", func(_ *Generator, ts int64, d doc) doc { // one millisecond past the skew
			return d.set("occurred_at", strconv.FormatInt(ts+time.Hour.Milliseconds()+1, 10))
		}),
		withDoc("seat_assigned", func(_ *Generator, ts int64, d doc) doc {
			return d.set("occurred_at", quote(time.UnixMilli(ts).Add(2*time.Hour).UTC().Format(time.RFC3339)))
		}),
		setField("login", "occurred_at", `"2105-01-01T00:00:00Z"`),
		setField("login", "occurred_at", "-1"),
		setField("seats_purchased", "occurred_at", `"0001-01-01T00:00:00Z"`),
	},
}
