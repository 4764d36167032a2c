// Package gen generates deterministic synthetic usage telemetry (contract
// section 2) for tests, benchmarks, the demo and `usagepipe gen`: realistic
// JSON events, a chosen share of bad records rotating through every reject
// reason, re-sent duplicates, and optionally a fixed set of hard edge cases.
// The accounts are alike by default (PopulationUniform, what the benchmarks
// measure) or look like a customer base (PopulationRealistic, population.go:
// sizes from a handful to thousands of seats, under-assigned, low-activation,
// growing and shrinking accounts, new customers).
//
// The same Config (Seed included) always yields the same records, byte for
// byte, with the same record timestamps. Each Record carries the reject
// reason a validator with the contract's default settings (1h clock skew,
// 24h dedup window) must give it; package reference computes the exact
// expected rollups from the produced records.
//
// Concurrency: a Generator is not safe for concurrent use; use one per
// goroutine. Produce drives one Generator and one kgo.Client from the calling
// goroutine and returns once every record is acknowledged or failed; it
// starts no goroutine of its own that outlives the call.
//
// Metrics: none.
package gen
