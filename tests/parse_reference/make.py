"""Regenerate the stored parse reference (tests/test_batch_parse.py compares the batch parsers with it).

The reference in this folder was written by the per-page parsers as they were before issue 16
(commit 8f00198, `pipeline.parse_all` calling `PARSERS[endpoint](data, params, ctx)` once per page).
Re-running this script with the batch parsers would only compare them with themselves: run it only
to extend the reference on a checkout of that commit.

    python -m tests.parse_reference.make

Writes:
  payloads.parquet   the raw.payloads landed by a 3-day simulator backfill (every venue, BTC + SOL)
  staging/<t>.parquet  staging after `perpwatch replay` of those payloads (no ingested_at)
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOW = datetime(2026, 11, 20, tzinfo=UTC)
TABLES = ("instruments", "prices", "open_interest", "funding_rates", "long_short_ratio")


def main() -> None:
    import duckdb

    from perpwatch import jobs
    from perpwatch.ingest import pipeline
    from perpwatch.simulator.server import start

    sim = start(port=0, seed=7, now=NOW)
    try:
        os.environ.update(sim.env())
        os.environ["PERPWATCH_PROVIDERS"] = ""
        with tempfile.TemporaryDirectory() as d:
            db = Path(d) / "ref.duckdb"
            jobs.run(kind="backfill", start=NOW - timedelta(days=3), end=NOW, assets=["BTC", "SOL"], db=db,
                     build=False)
            pipeline.replay(db)
            con = duckdb.connect(str(db))
            con.execute(f"COPY (SELECT raw_id, source, endpoint, params, fetched_at, http_status, body, sha256, "
                        f"run_id, encoding FROM raw.payloads ORDER BY raw_id) TO '{HERE / 'payloads.parquet'}' "
                        "(FORMAT parquet, COMPRESSION zstd)")
            (HERE / "staging").mkdir(exist_ok=True)
            for t in TABLES:
                con.execute(f"COPY (SELECT * EXCLUDE (ingested_at) FROM staging.{t}) TO "
                            f"'{HERE / 'staging' / (t + '.parquet')}' (FORMAT parquet, COMPRESSION zstd)")
            con.close()
    finally:
        sim.stop()



def fixtures() -> None:
    """Per-page parse output of every case in cases.py, as a run's parse_all produces it."""
    import json
    from datetime import datetime

    import orjson

    from perpwatch import warehouse
    from perpwatch.ingest import pipeline
    from perpwatch.sources.http import Fetched
    from tests.parse_reference.cases import CASES, params_of

    fix = HERE.parent / "fixtures"
    load = lambda p: json.loads((fix / p).read_text())  # noqa: E731
    out = HERE / "fixtures"
    out.mkdir(exist_ok=True)
    at = datetime(2026, 11, 20, tzinfo=UTC)
    con = warehouse.connect(":memory:")
    for name, source, endpoint, params, path, inst in CASES:
        p = params_of(params, load)
        body = orjson.dumps(load(path))
        f = Fetched(1, source, endpoint, p, 200, body, "x", None, at)
        report = pipeline.RunReport("ref", "ref")
        parsed = pipeline.parse_all(con, report, [f], inst)
        assert not report.warnings, (name, report.warnings)
        assert parsed.frames, name
        for table, frames in parsed.frames.items():
            import polars as pl
            pl.concat(frames, how="diagonal_relaxed").write_parquet(out / f"{name}.{table}.parquet")
    con.close()


if __name__ == "__main__":
    import sys
    fixtures() if sys.argv[1:] == ["fixtures"] else main()
