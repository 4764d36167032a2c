// Package chaos is usagepipe's chaos suite. It has no library code: the
// suite is TestChaos (run it with `make chaos-ci` or `make chaos`, or
// `go test ./benchmarks/chaos -run TestChaos -chaos.size=ci|full`).
//
// TestChaos runs real `usagepipe run` processes against a private
// ClickHouse server (or, with -chaos.clickhouse=cluster, a 3-node
// replicated and sharded cluster) and a Kafka broker (kfake in process,
// then a real Apache Kafka broker), produces generated events while it
// SIGKILLs, SIGTERMs, starts, pauses (SIGSTOP past the session timeout)
// and resumes instances, stops ClickHouse (on a cluster: a replica, then
// a whole shard) for several seconds and, on kfake, injects broker
// faults. At the end one `usagepipe run --until-caught-up` drains the
// topic and the rollups must equal aggregate/reference computed over
// every produced record, while a deliberately non-idempotent reader over
// the same rows must not. README.md says what each step proves.
package chaos
