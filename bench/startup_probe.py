"""Start-up costs measured in a fresh process: `python -m perpwatch.bench.startup_probe prefect|gx` prints JSON.

prefect: `import prefect`, then the first and second run of a trivial flow (PREFECT_HOME is whatever
the caller set: a fresh empty folder means the first run pays the database migrations).
gx: `import great_expectations`, then an ephemeral context, then perpwatch.ingest.validate's first call
(suite load + 1 k-row validation of staging.open_interest)."""

from __future__ import annotations

import json
import sys
import time


def prefect_probe() -> dict:
    t0 = time.perf_counter()
    from prefect import flow
    t_import = time.perf_counter() - t0

    @flow(name="bench-hello")
    def hello(x: int) -> int:
        return x + 1

    t0 = time.perf_counter()
    hello(1)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    hello(2)
    second = time.perf_counter() - t0
    return {"import_s": t_import, "first_flow_s": first, "second_flow_s": second}


def gx_probe() -> dict:
    t0 = time.perf_counter()
    import great_expectations as gx
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    ctx = gx.get_context(mode="ephemeral")
    t_ctx = time.perf_counter() - t0
    del ctx
    from datetime import UTC, datetime

    import polars as pl

    from perpwatch.ingest.validate import validate
    df = pl.DataFrame({"venue": ["binance"] * 1000, "instrument": ["BTCUSDT"] * 1000,
                       "ts": [datetime(2026, 1, 1, tzinfo=UTC)] * 1000, "asset": ["BTC"] * 1000,
                       "margin": ["linear"] * 1000, "oi_contracts": [1.0] * 1000, "oi_base": [1.0] * 1000,
                       "oi_usd": [2.0] * 1000}).with_columns(
        pl.col("ts") + pl.duration(hours=pl.int_range(1000)))
    t0 = time.perf_counter()
    ok = validate("open_interest", df).success
    t_first = time.perf_counter() - t0
    return {"import_s": t_import, "context_s": t_ctx, "first_validate_1k_s": t_first, "ok": ok}


if __name__ == "__main__":
    print(json.dumps(prefect_probe() if sys.argv[1] == "prefect" else gx_probe()))
