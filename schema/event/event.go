// Package event is usagepipe's event schema: the decoded form of one usage
// event (contract section 2), its types, and the reasons a record is rejected.
//
// It holds plain data only: no goroutines, no metrics. Values are safe to
// share once built; an Event filled by a decoder borrows the decoder's memory
// (see ingest/decode) and must not be retained after the next Decode call.
package event

import "fmt"

// Limits from contract section 2.
const (
	MaxValueBytes   = 1 << 20 // a record value larger than this is too_large
	MaxIDBytes      = 128     // event_id, account_id, user_id, feature
	MaxProductBytes = 64
	MaxSeats        = 10_000_000
	MinOccurredAtMs = 946684800000 // 2000-01-01T00:00:00Z
	SchemaVersion   = 1
	// MaxOccurredAtMs is the first instant usagepipe cannot store: ClickHouse
	// DateTime ends in February 2106 and a quarter must end before that, so
	// occurred_at must be before 2105-01-01T00:00:00Z (contract gap, see docs).
	MaxOccurredAtMs = 4260211200000
)

// Type is an event type.
type Type uint8

// The five event types. The zero Type is invalid.
const (
	Login Type = iota + 1
	FeatureUsed
	SeatAssigned
	SeatUnassigned
	SeatsPurchased
)

var typeNames = [...]string{"", "login", "feature_used", "seat_assigned", "seat_unassigned", "seats_purchased"}

// Types lists every valid type, in label order.
var Types = []Type{Login, FeatureUsed, SeatAssigned, SeatUnassigned, SeatsPurchased}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// ParseType maps the wire name to a Type; ok is false for unknown names.
// It does not allocate.
func ParseType(b []byte) (Type, bool) {
	switch string(b) {
	case "login":
		return Login, true
	case "feature_used":
		return FeatureUsed, true
	case "seat_assigned":
		return SeatAssigned, true
	case "seat_unassigned":
		return SeatUnassigned, true
	case "seats_purchased":
		return SeatsPurchased, true
	}
	return 0, false
}

// Event is one accepted usage event. Byte slices may borrow a decoder's
// buffer; copy them to keep them.
type Event struct {
	EventID      []byte
	Type         Type
	AccountID    []byte
	UserID       []byte // empty for SeatsPurchased
	Feature      []byte // set for FeatureUsed only
	Product      []byte // optional
	OccurredAtMs int64  // UTC epoch milliseconds
	Seats        int64  // SeatsPurchased only
}

// Reason is why a record was rejected (contract section 2). The zero Reason
// means "not rejected".
type Reason uint8

// Rejection reasons, in contract order.
const (
	ReasonNone Reason = iota
	ReasonTooLarge
	ReasonMalformedJSON
	ReasonUnsupportedSchemaVersion
	ReasonMissingField
	ReasonUnknownType
	ReasonInvalidField
	ReasonTimestampOutOfRange
)

var reasonNames = [...]string{"", "too_large", "malformed_json", "unsupported_schema_version", "missing_field", "unknown_type", "invalid_field", "timestamp_out_of_range"}

// Reasons lists every rejection reason, in contract order.
var Reasons = []Reason{ReasonTooLarge, ReasonMalformedJSON, ReasonUnsupportedSchemaVersion, ReasonMissingField, ReasonUnknownType, ReasonInvalidField, ReasonTimestampOutOfRange}

// String returns the contract's name, the value of the usagepipe.reason header.
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Rejection is the error a decoder returns for a record that must go to the
// dead-letter topic. Msg is the human sentence of the usagepipe.error header
// and names the field.
type Rejection struct {
	Reason Reason
	Msg    string
}

func (r *Rejection) Error() string { return r.Reason.String() + ": " + r.Msg }
