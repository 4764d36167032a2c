// Package reference is usagepipe's test oracle: an independent, deliberately
// naive computation of what the pipeline must write to ClickHouse for a given
// set of Kafka records (contract sections 2–4).
//
// It shares no code with the pipeline: it validates events with
// encoding/json and time.Parse, does its own duplicate detection and its own
// fiscal-quarter arithmetic, and depends only on package schema for the row
// types it returns. Tests compare the pipeline's output with Compute's.
// Readability is preferred over speed; Compute still handles a few million
// records in seconds.
//
// Concurrency: Compute is a pure function of its arguments; it keeps no
// state between calls, does not modify its input and is safe to call
// concurrently. Internally it processes up to GOMAXPROCS partitions at once
// and has joined every goroutine it started before it returns.
//
// Metrics: none.
package reference
