# usagepipe — every CI step is a target here. `make help` lists them.
SHELL := /bin/bash
GO    ?= go
BIN   := bin/usagepipe
# benchmarks/e2e and benchmarks/chaos are drivers with their own targets (bench, chaos).
PKGS  := $(shell $(GO) list ./... | grep -v -e /benchmarks/e2e -e /benchmarks/chaos)
# A count, not a duration: a duration -fuzztime races Go's fuzz coordinator at
# its deadline and can fail with a bare "context deadline exceeded" and no
# crasher on a loaded machine (go.dev/issue/75804, fixed in Go 1.27). 800k
# executions take 15–35 s per target on 2 cores.
FUZZTIME ?= 800000x

.PHONY: help deps build demo test test-go fuzz lint bench chaos chaos-ci chaos-ci-cluster deploy-check clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

deps: ## install what builds and tests need (ClickHouse from Debian, chDB from PyPI, Go modules)
	bash .ci/deps.sh

build: ## build bin/usagepipe
	$(GO) build -o $(BIN) ./cmd/usagepipe

demo: deps build ## in-process Kafka + private ClickHouse + synthetic data → rollup table
	./$(BIN) demo

test: deps test-go fuzz ## the whole suite: unit, integration (kfake + real ClickHouse, Apache Kafka), chDB, short fuzz
	@echo "make test: all green"

test-go:
	USAGEPIPE_TEST_APACHE_KAFKA=$${USAGEPIPE_TEST_APACHE_KAFKA:-1} $(GO) test -count=1 -timeout 30m $(PKGS)

fuzz: ## short fuzz runs of the decoder, the timestamp parser and the dedup archive's row decoder
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./ingest/decode
	$(GO) test -run '^$$' -fuzz '^FuzzParseRFC3339$$' -fuzztime $(FUZZTIME) ./ingest/decode
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeArchive$$' -fuzztime 100000x ./schema

lint: ## gofmt, go vet, golangci-lint (when installable)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if command -v golangci-lint >/dev/null 2>&1; then golangci-lint run; else echo "golangci-lint not installed: skipped (go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@latest)"; fi

bench: deps build ## microbenchmarks + end-to-end benchmark vs ClickHouse's Kafka engine (see benchmarks/README.md)
	bash benchmarks/run.sh

chaos: deps build ## chaos suite: SIGKILLs, rebalances, ClickHouse restarts, zombie, fault injection
	$(GO) test -count=1 -timeout 60m -run 'TestChaos' -v ./benchmarks/chaos -chaos.size=full

chaos-ci: deps build
	$(GO) test -count=1 -timeout 30m -run 'TestChaos' -v ./benchmarks/chaos -chaos.size=ci

# The chaos suite on a 3-node ClickHouse cluster (replica and shard outages), kfake only.
chaos-ci-cluster: deps build
	$(GO) test -count=1 -timeout 30m -run 'TestChaos' -v ./benchmarks/chaos -chaos.size=ci -chaos.clickhouse=cluster -chaos.brokers=kfake

deploy-check: ## validate deploy/ with promtool, helm, kubernetes-validate, docker-compose
	bash deploy/validate.sh

clean:
	rm -rf bin .demo
