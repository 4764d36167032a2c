// Package e2e is usagepipe's end-to-end benchmark. It is a Go test so that
// it can use the project's Kafka harness (ingest/kafkatest: in-process kfake
// and a real Apache Kafka broker) and a private ClickHouse server
// (schema/chserver); benchmarks/run.sh runs all of it and
// benchmarks/README.md explains the results:
//
//		go test ./benchmarks/e2e -run TestE2E -v -timeout 60m -bench.events=2000000 -bench.brokers=kfake,apache
//
//	  - TestE2E puts N gen records (gen defaults: 10k accounts, 300k users,
//	    zstd batches keyed by account) on a fresh topic, runs `usagepipe run
//	    --until-caught-up` as a separate OS process into a fresh ClickHouse
//	    database, then the peer — ClickHouse 18.16's own Kafka engine landing
//	    the same topic into a MergeTree (peer_test.go) — and checks the
//	    rollups against aggregate/reference over every record read back.
//	  - TestLatency: `usagepipe run` while a paced producer sends 100k
//	    records/s stamped with the wall clock; event-delay quantiles from the
//	    usagepipe_event_delay_seconds buckets.
//	  - TestMemory: peak RSS with the defaults and with GOMEMLIMIT; RSS and
//	    Go heap after N and after 2N events of the same population.
//	  - TestScale: 1 and 2 instances sharing a group, 4 and 12 partitions.
//	  - TestProfile runs the pipeline in this process (ingest.New + Run) under
//	    runtime/pprof, its goroutines labelled pipeline=usagepipe so that the
//	    in-process kfake broker can be told apart, and writes CPU and heap
//	    profiles to -bench.profile-dir.
//	  - TestInsertOrder: ClickHouse's CPU per inserted row for the same fact
//	    rows in random order, as two sorted runs and in ORDER BY order.
//
// Measured per run: wall time, the pipeline process's CPU (user+sys from
// wait4's rusage) per event, its peak RSS (largest VmHWM sampled from /proc;
// not ru_maxrss, which Linux inflates with the parent's RSS at exec), the
// broker's and ClickHouse's CPU over the same interval, and the 1-minute
// load average at start and end (the machine is shared).
//
// Results go to the test log and, with -bench.out, one JSON object per line
// (benchmarks/tabulate turns them into the README tables).
//
// Concurrency: tests run one at a time (no t.Parallel): each one measures
// the whole machine. Metrics: none exported.
package e2e
