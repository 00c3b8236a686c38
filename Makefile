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

.PHONY: install system-deps demo test lint bench deploy clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(BIN)/python -m perpwatch.demo

# System packages the suite needs (Chromium renders the HTML report in tests/test_status_report.py):
# installed here, visibly, once (needs the network and apt); the suite itself then runs offline.
system-deps:
	@command -v chromium >/dev/null || (echo "installing chromium (apt-get) for the report rendering test" && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(STAMP) system-deps
	@$(BIN)/lint-imports --no-cache   # layer contracts (pyproject [tool.importlinter]): a backward import fails the suite
	@$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	@$(BIN)/ruff check .

bench: $(STAMP)
	@$(BIN)/python -m perpwatch.bench

deploy: $(STAMP)
	@$(BIN)/python -m perpwatch.deploy

clean:
	rm -rf $(VENV) .prefect data/*.duckdb data/*.wal data/exports
