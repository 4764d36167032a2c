#!/usr/bin/env bash
# benchmarks/run.sh — reproduces the results tables of benchmarks/README.md
# (`make bench` runs it after `make deps build`). About 15 minutes on a
# 2-core machine (20 at most under other load; TestRead takes ~5). Everything goes to $BENCH_OUT (default
# benchmarks/results/<UTC date-time>); the tables are printed at the end and
# written to $BENCH_OUT/tables.md.
#
# Knobs (environment):
#   BENCH_EVENTS=2000000   records per end-to-end run
#   BENCH_BROKERS=kfake,apache   brokers of the end-to-end + peer comparison
#   BENCH_HISTORY=1        also measure the decoder and aggregator the lead replaced
#                          (needs github.com/valyala/fastjson in the module cache or the proxy)
#   BENCH_LATENCY=45s      how long the 100k/s paced run lasts
#   BENCH_READ_SCALES=events:accounts:users,...   histories of TestRead (default 4M, 16M, 48M events)
#   BENCH_REV=<git rev>    measure that commit (with this benchmarks/ folder laid over
#                          it) instead of the working tree, e.g. BENCH_REV=HEAD while
#                          others have uncommitted changes in progress
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tmpdirs=()
trap 'rm -rf "${tmpdirs[@]}"' EXIT
REV=${BENCH_REV:-}
if [ -n "$REV" ]; then
	src=$(mktemp -d)
	tmpdirs+=("$src")
	git archive "$REV" | tar -xf - -C "$src"
	rm -rf "$src/benchmarks"
	tar --exclude=./benchmarks/results -cf - ./benchmarks | tar -xf - -C "$src"
	cd "$src"
fi

EVENTS=${BENCH_EVENTS:-2000000}
BROKERS=${BENCH_BROKERS:-kfake,apache}
HISTORY=${BENCH_HISTORY:-1}
LATENCY=${BENCH_LATENCY:-45s}
OUT=${BENCH_OUT:-$root/benchmarks/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
results=$OUT/results.jsonl
: >"$results"

log() { printf '\n== %s (load %s)\n' "$*" "$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/run.log"; }

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	if [ -n "$REV" ]; then
		echo "code: $(git -C "$root" rev-parse --short "$REV") ($REV) + this benchmarks/ folder"
	else
		echo "code: working tree at $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- . ':!benchmarks' || echo ' + uncommitted changes:' $(git -C "$root" diff --name-only HEAD -- . ':!benchmarks'))"
	fi
	echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
	echo "kernel: $(uname -r); $(go version)"
	echo "clickhouse-server: $(dpkg-query -W -f '${Version}' clickhouse-server 2>/dev/null || echo '?')"
	echo "load at start: $(cat /proc/loadavg)"
} | tee "$OUT/machine.txt"

log "build"
go build -o "$OUT/usagepipe" ./cmd/usagepipe
go test -c -o "$OUT/micro.test" ./benchmarks
go test -c -o "$OUT/e2e.test" ./benchmarks/e2e

log "microbenchmarks"
(cd benchmarks && "$OUT/micro.test" -test.run '^$' -test.bench '^BenchmarkDecodeValidateAggregate$' -test.benchtime 3000000x \
	-test.cpuprofile "$OUT/micro.cpu.pprof") | tee "$OUT/micro.txt"
go test -run '^$' -bench '^BenchmarkDecode$' -count 1 ./ingest/decode | tee -a "$OUT/micro.txt"
go test -run '^$' -bench '^BenchmarkArchiveWrite$' -benchtime 4x ./schema/store | tee -a "$OUT/micro.txt"
go test -run '^$' -bench '^BenchmarkClusterReads$' -benchtime 5x ./schema | tee -a "$OUT/micro.txt"
go tool pprof -top -tagfocus=phase=timed -nodecount 30 "$OUT/micro.test" "$OUT/micro.cpu.pprof" >"$OUT/micro.cpu.top.txt" 2>/dev/null || true

: >"$OUT/history.txt"
if [ "$HISTORY" = 1 ]; then
	log "history: earlier versions of the hot path, same benchmark, interleaved"
	# v0: fastjson decoder (benchmarks/history/decode_fastjson.go.txt, the
	#     version before a47b978) + the aggregator before cda092a;
	# v1: own scanner (a47b978) + the aggregator before cda092a;
	# v2: e461e99 (users map aggregator, Go-map dedup set);
	# v3: the code measured (per-account logs, open-addressing dedup, prefetch).
	# v0–v2 are e461e99's tree (with its own micro_test.go, which drives the
	# API of that time) with files swapped; the repository is only read.
	hist=$(mktemp -d)
	tmpdirs+=("$hist")
	ok=1
	for v in v0 v1 v2; do
		mkdir -p "$hist/$v"
		git -C "$root" archive e461e99 | tar -xf - -C "$hist/$v"
	done
	for v in v0 v1; do
		git -C "$root" show a47b978:aggregate/aggregate.go >"$hist/$v/aggregate/aggregate.go"
	done
	(
		cd "$hist/v0"
		rm -f ingest/decode/scan.go ingest/decode/scan_test.go ingest/decode/decode_test.go ingest/decode/fuzz_test.go
		cp "$root/benchmarks/history/decode_fastjson.go.txt" ingest/decode/decode.go
		go mod edit -require=github.com/valyala/fastjson@v1.6.10
		git -C "$root" show 9574428:go.sum | grep 'valyala/fastjson' >>go.sum
		GOFLAGS=-mod=mod go test -c -o "$OUT/micro-v0.test" ./benchmarks &&
			GOFLAGS=-mod=mod go test -c -o "$OUT/decode-v0.test" ./ingest/decode
	) || { echo "history: v0 (fastjson) does not build here; skipped"; ok=0; }
	(cd "$hist/v1" && go test -c -o "$OUT/micro-v1.test" ./benchmarks)
	(cd "$hist/v2" && go test -c -o "$OUT/micro-v2.test" ./benchmarks && go test -c -o "$OUT/decode-v2.test" ./ingest/decode)
	go test -c -o "$OUT/decode-v3.test" ./ingest/decode
	for round in 1 2; do
		for v in v0 v1 v2 v3; do
			bin=$OUT/micro-$v.test
			[ "$v" = v3 ] && bin=$OUT/micro.test
			[ -x "$bin" ] || continue
			(cd benchmarks && "$bin" -test.run '^$' -test.bench '^BenchmarkDecodeValidateAggregate$' -test.benchtime 2000000x) |
				grep '^Benchmark' | sed "s/^/$v /" | tee -a "$OUT/history.txt"
		done
		for v in v0 v2 v3; do
			[ -x "$OUT/decode-$v.test" ] || continue
			"$OUT/decode-$v.test" -test.run '^$' -test.bench '^BenchmarkDecode$' | grep '^Benchmark' | sed "s/^/$v /" | tee -a "$OUT/history.txt"
		done
	done
	[ "$ok" = 1 ] || echo "history: v0 missing from the table"
fi

log "state size per account / user / event ID"
(cd benchmarks && "$OUT/micro.test" -test.run '^$' -test.bench '^BenchmarkStateSize$' -test.benchtime 1x -test.v \
	-state.heap "$OUT/state.heap.pprof") | tee "$OUT/state.txt"

# A failing test (say, a pipeline that hangs: -bench.run-timeout stops it and
# keeps its log with a goroutine dump) does not stop the others; run.sh
# exits non-zero at the end.
failed=()
e2e() {
	if ! (cd benchmarks/e2e && "$OUT/e2e.test" -test.v -test.timeout 60m -bench.bin "$OUT/usagepipe" -bench.out "$results" "$@") | tee -a "$OUT/e2e.log"; then
		failed+=("$*")
	fi
}

log "end to end + peer, brokers $BROKERS"
e2e -test.run '^TestE2E$' -bench.events "$EVENTS" -bench.brokers "$BROKERS"

log "event delay at 100k/s for $LATENCY"
e2e -test.run '^TestLatency$' -bench.brokers "$BROKERS" -bench.rate 100000 -bench.duration "$LATENCY"

log "memory: defaults vs GOMEMLIMIT=800MiB; ${EVENTS} then 2×${EVENTS} events"
e2e -test.run '^TestMemory$' -bench.brokers kfake -bench.events "$EVENTS"

log "reads of the served rollups vs a plain table, 18.16 and chDB: ${BENCH_READ_SCALES:-4M, 16M, 48M events}"
e2e -test.run '^TestRead$' ${BENCH_READ_SCALES:+-bench.read-scales "$BENCH_READ_SCALES"}

log "scaling: 4 and 12 partitions, 1 and 2 instances"
e2e -test.run '^TestScale$' -bench.brokers kfake -bench.events "$EVENTS"

log "ClickHouse insert cost by row order"
e2e -test.run '^TestInsertOrder$'

log "profile (in process, kfake)"
e2e -test.run '^TestProfile$' -bench.brokers kfake -bench.events "$EVENTS" -bench.profile-dir "$OUT/profile"
go tool pprof -top -tagfocus=pipeline=usagepipe -nodecount 40 "$OUT/e2e.test" "$OUT/profile/cpu.pprof" >"$OUT/profile/cpu.top.txt" 2>/dev/null || true
go tool pprof -top -cum -nodecount 60 "$OUT/e2e.test" "$OUT/profile/cpu.pprof" >"$OUT/profile/cpu.cum.txt" 2>/dev/null || true
go tool pprof -top -sample_index=inuse_space -nodecount 30 "$OUT/e2e.test" "$OUT/profile/heap.pprof" >"$OUT/profile/heap.top.txt" 2>/dev/null || true

log "tables"
echo "load at end: $(cat /proc/loadavg)" | tee -a "$OUT/machine.txt"
go run ./benchmarks/tabulate -results "$results" -micro "$OUT/micro.txt" -history "$OUT/history.txt" -state "$OUT/state.txt" | tee "$OUT/tables.md"
echo "results in $OUT"
if [ ${#failed[@]} -gt 0 ]; then
	printf 'FAILED: %s\n' "${failed[@]}" >&2
	exit 1
fi
