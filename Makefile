# Targets the README uses verbatim. CI runs `make test` (.ci/run).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_LEVEL ?= WARNING
export PREFECT_TASKS_DEFAULT_NO_CACHE ?= true
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: install demo test lint bench bench-quick deploy clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(BIN)/python -m perpwatch.demo

test: $(STAMP)
	@$(BIN)/lint-imports --no-cache   # layer contracts (pyproject [tool.importlinter]): a backward import fails the suite
	@$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	@$(BIN)/ruff check .

bench: $(STAMP)
	@$(BIN)/python -m perpwatch.bench

# developers: every workload at its smallest size (< 3 min), report in data/bench/BENCHMARKS-tiny.md
bench-quick: $(STAMP)
	@$(BIN)/python -m perpwatch.bench --size tiny

deploy: $(STAMP)
	@$(BIN)/python -m perpwatch.deploy

clean:
	rm -rf $(VENV) .prefect data/*.duckdb data/*.wal data/exports
