// Package decode turns one Kafka record value into a validated event.Event,
// or into an *event.Rejection carrying the contract's reason (contract
// section 2). It is the first step of the ingest hot path and allocates
// nothing for an accepted event.
//
// # Rules beyond the contract table
//
//   - The value must be valid UTF-8 and one JSON text (RFC 8259) whose top
//     level is an object. The package has its own strict, single-pass JSON
//     scanner: it accepts exactly what encoding/json.Valid accepts, including
//     its nesting limit of 10000.
//   - Keys are matched exactly (case-sensitive) after JSON unescaping. When a
//     key occurs more than once, the first occurrence is used and later ones
//     are ignored, even if the first is null.
//   - Strings are unescaped like encoding/json: an invalid UTF-16 surrogate
//     escape (a lone \ud800) becomes U+FFFD. Lengths are of the unescaped
//     UTF-8 bytes.
//   - An integer is a JSON number literal without '.', 'e' or 'E'; 1.0 and
//     1e0 are not integers. schema_version: absent or null means 1; any other
//     integer (whatever its size) is unsupported_schema_version; any other
//     JSON type is invalid_field.
//   - occurred_at is an RFC 3339 string (see ParseRFC3339Ms) or an integer of
//     epoch milliseconds. It must be at or after event.MinOccurredAtMs, at
//     most Config.MaxClockSkew after the record timestamp (compared to the
//     full precision of the string: .0005 past the limit is out, though
//     the millisecond stored is truncated), and before
//     event.MaxOccurredAtMs; an integer beyond int64 is out of range too.
//   - Fields a type does not use (seats on a login, feature on a seat event,
//     user_id on seats_purchased) are ignored like unknown fields: not
//     validated and left empty in the Event. product is optional for every
//     type; "" is allowed.
//   - type is a required string: any string that is not a type name ("" and
//     long ones too: the contract sets type no length) is unknown_type.
//   - Fields are checked in a fixed order — schema_version, event_id, type
//     (a string), account_id, type (a known name), user_id,
//     feature, product, occurred_at, seats — and the first fault found is
//     reported, so a record with several faults always gets the same reason.
//     The order is that of aggregate/reference, so both give the same reason.
//
// # Concurrency
//
// A Decoder is not safe for concurrent use: use one per goroutine. The byte
// slices of an Event it fills borrow the Decoder's memory and are valid only
// until its next Decode call. ParseRFC3339Ms is a pure function.
//
// # Metrics
//
// None; callers count accepted and rejected records.
package decode
