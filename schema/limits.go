package schema

// Month indexes a fact may carry: from 2000-01 (the earliest occurred_at
// the contract accepts) through 2104-12 (event.MaxOccurredAtMs is
// 2105-01-01). ClickHouse 18.16 silently turns Dates outside 1970–2105 into
// 0000-00-00, so the store refuses anything else rather than write it.
const (
	MinMonth int32 = 2000 * 12
	MaxMonth int32 = 2104*12 + 11
)
