"""Great Expectations validation: one suite per staging table (expectations/<table>.json).

Validation runs per dataset per run on the pandas path (GX's DuckDB/SQLAlchemy path is
broken upstream, see docs/stack.md). Row-level failures are traced back to the rows
(unexpected_index_list) so only the failing (source, instrument) batches are quarantined.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from pathlib import Path

import polars as pl

from perpwatch.core import settings

SUITES_DIR: Path | None = None   # an override (benchmarks); else settings.expectations_dir()
FUTURE_TOLERANCE = timedelta(minutes=5)
_lock = threading.Lock()
LAST_RESULTS: dict = {}   # table -> this process's latest GX result (flows/artifacts.py renders Data Docs)


@dataclass
class Failure:
    expectation: str
    column: str | None
    unexpected_count: int
    sample: list
    table_level: bool = False
    rows: list[int] = field(default_factory=list)     # positions of the failing rows (unexpected_index_list)
    kwargs: dict = field(default_factory=dict)        # the expectation's configuration (column, bounds, ...)

    def describe(self) -> str:
        col = f" on {self.column}" if self.column else ""
        return f"{self.expectation}{col} ({self.unexpected_count} rows, e.g. {self.sample[:3]})"


@dataclass
class Outcome:
    table: str
    success: bool
    evaluated: int
    failures: list[Failure] = field(default_factory=list)
    bad_rows: set[int] = field(default_factory=set)   # row positions in the validated frame

    @property
    def table_level_failed(self) -> bool:
        return any(f.table_level for f in self.failures)


def suite_definition(table: str) -> dict:
    with open((SUITES_DIR or settings.expectations_dir()) / f"{table}.json") as f:
        return json.load(f)


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx  # 2-3 s import: only when something is validated

    # GX configures its loggers on import; quiet them afterwards (an INFO line per ephemeral context)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("great_expectations").setLevel(logging.ERROR)

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = {"globally": False}
    ds = ctx.data_sources.add_pandas("perpwatch")
    return gx, ctx, ds


@cache
def _suite_and_batchdef(table: str):
    gx, ctx, ds = _context()
    spec = suite_definition(table)
    suite = gx.ExpectationSuite(**spec)
    if len(suite.expectations) != len(spec["expectations"]):
        # GX drops a misspelled expectation type with only a log line; refuse instead.
        raise ValueError(f"expectations/{table}.json: {len(spec['expectations'])} expectations in the file, "
                         f"{len(suite.expectations)} understood by Great Expectations")
    asset = ds.add_dataframe_asset(name=table)
    return suite, asset.add_batch_definition_whole_dataframe(f"{table}_batch")


def _epoch_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _to_pandas(df: pl.DataFrame):
    """Times go to GX as epoch milliseconds (Int64): GX checks a between-expectation on a datetime
    column row by row in Python (~3 s per million rows), on integers vectorised. Dates: midnight UTC."""
    conv = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.Datetime):
            col = pl.col(name) if dtype.time_zone else pl.col(name).dt.replace_time_zone("UTC")
            conv.append(col.dt.epoch("ms"))
        elif dtype == pl.Date:
            conv.append(pl.col(name).cast(pl.Datetime("ms")).dt.epoch("ms"))
    return (df.with_columns(conv) if conv else df).to_pandas()


def validate(table: str, df: pl.DataFrame, now: datetime | None = None) -> Outcome:
    """Validate one dataset's batch against expectations/<table>.json."""
    now = (now or datetime.now(UTC)) + FUTURE_TOLERANCE
    with _lock:
        suite, bd = _suite_and_batchdef(table)
        batch = bd.get_batch(batch_parameters={"dataframe": _to_pandas(df)})
        res = batch.validate(suite, result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5},
                             expectation_parameters={"now": _epoch_ms(now)})
        LAST_RESULTS[table] = res
    out = Outcome(table=table, success=bool(res.success), evaluated=len(res.results))
    for r in res.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kw = cfg.kwargs
        col = kw.get("column") or ",".join(kw.get("column_list", []) or [kw.get("column_A", ""), kw.get("column_B", "")])
        result = r.result or {}
        idx = result.get("unexpected_index_list")
        exc = (r.exception_info or {}).get("exception_message") if r.exception_info else None
        table_level = idx is None
        if idx:
            out.bad_rows.update(int(i) for i in idx)
        sample = result.get("partial_unexpected_list") or ([exc] if exc else [result.get("observed_value")])
        out.failures.append(Failure(cfg.type, col or None, int(result.get("unexpected_count") or 0),
                                    [str(s) for s in sample], table_level, sorted(int(i) for i in idx or ()),
                                    dict(kw)))
    return out
