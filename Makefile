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

BI_VENV := .venv-bi
BI_STAMP := $(BI_VENV)/.installed
DUCKDB2_VENV := .venv-bi-2x
DUCKDB2_STAMP := $(DUCKDB2_VENV)/.installed

.PHONY: install system-deps demo test lint bench bench-quick deploy clean bi bi-install bi-2x browser

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(BIN)/python -m perpwatch.demo

# Apache Superset in its own environment (pinned by bi/constraints.txt), never in .venv.
$(BI_STAMP): bi/requirements.txt bi/constraints.txt
	@test -x $(BI_VENV)/bin/python || $(PY) -m venv $(BI_VENV) || python3 -m venv $(BI_VENV)
	@$(BI_VENV)/bin/python -m pip install -q --upgrade pip
	@$(BI_VENV)/bin/python -m pip install -q -c bi/constraints.txt -r bi/requirements.txt
	@touch $(BI_STAMP)

bi-install: $(BI_STAMP)

# A newer DuckDB (2.x, bi/requirements-2x.txt) alone in its own environment: tests/test_bi.py opens the
# serving file written by the pipeline's 1.5.5 with it (docs/bi.md, "Versions").
$(DUCKDB2_STAMP): bi/requirements-2x.txt
	@test -x $(DUCKDB2_VENV)/bin/python || $(PY) -m venv $(DUCKDB2_VENV) || python3 -m venv $(DUCKDB2_VENV)
	@$(DUCKDB2_VENV)/bin/python -m pip install -q -r bi/requirements-2x.txt
	@touch $(DUCKDB2_STAMP)

bi-2x: $(DUCKDB2_STAMP)

# System packages the suite needs, installed here, visibly, once (apt-get; sudo when not root): Chromium
# and chromedriver render the HTML report (tests/test_status_report.py) and the Superset dashboard
# (tests/test_bi.py). Tests never install anything; the suite then runs offline.
system-deps:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing chromium and chromium-driver with apt-get (make system-deps)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }

browser: system-deps

bi: $(STAMP) $(BI_STAMP)
	@$(BIN)/python -m perpwatch.cli bi

test: $(STAMP) $(BI_STAMP) $(DUCKDB2_STAMP) system-deps
	@$(BIN)/lint-imports --no-cache --no-logo   # layer contracts (pyproject [tool.importlinter]): a backward import fails the suite
	@$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

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
	rm -rf $(VENV) $(BI_VENV) $(DUCKDB2_VENV) .prefect data/*.duckdb data/*.wal data/exports data/bi
