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

    # GX fingerprints every pandas batch (a hash over all its rows, only a "batch marker" in the result, not
    # used by any expectation) when it is under HASH_THRESHOLD bytes: ~30 % of validating a 1M-row batch.
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0
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


@cache
def suite_columns(table: str) -> frozenset[str] | None:
    """The columns the suite's expectations read (only those go to pandas); None: all of them (a table-level
    expectation on the columns themselves, or no column named at all)."""
    cols: set[str] = set()
    for e in suite_definition(table)["expectations"]:
        if e["type"].startswith("expect_table_column"):
            return None
        kw = e.get("kwargs", {})
        for k in ("column", "column_A", "column_B"):
            if isinstance(kw.get(k), str):
                cols.add(kw[k])
        for k in ("column_list", "column_set"):
            cols.update(c for c in kw.get(k) or () if isinstance(c, str))
    return frozenset(cols) or None


@cache
def key_text_columns(table: str) -> frozenset[str]:
    """Text columns of the suite's compound-uniqueness expectations that no regex expectation reads: they go to
    pandas as categoricals, so pandas' duplicated() factorizes small integer codes instead of hashing a string
    per row (about 40 % of that expectation on 1 M open-interest rows); every expectation gives the same result."""
    keys: set[str] = set()
    regex: set[str] = set()
    for e in suite_definition(table)["expectations"]:
        kw = e.get("kwargs", {})
        if e["type"] == "expect_compound_columns_to_be_unique":
            keys.update(kw.get("column_list") or ())
        elif "regex" in e["type"] and isinstance(kw.get("column"), str):
            regex.add(kw["column"])
    return frozenset(keys - regex)


def _to_pandas(df: pl.DataFrame, columns: frozenset[str] | None = None, categorical: frozenset[str] = frozenset()):
    """Times go to GX as epoch milliseconds (Int64): GX checks a between-expectation on a datetime
    column row by row in Python (~3 s per million rows), on integers vectorised. Dates: midnight UTC.
    columns: only these (the suite's), in the frame's order; row positions stay the index.
    categorical: text columns handed over as pandas categoricals (key_text_columns)."""
    if columns is not None:
        df = df.select([c for c in df.columns if c in columns])
    conv = []
    for name, dtype in df.schema.items():
        if isinstance(dtype, pl.Datetime):
            col = pl.col(name) if dtype.time_zone else pl.col(name).dt.replace_time_zone("UTC")
            conv.append(col.dt.epoch("ms"))
        elif dtype == pl.Date:
            conv.append(pl.col(name).cast(pl.Datetime("ms")).dt.epoch("ms"))
        elif name in categorical and dtype == pl.Utf8:
            conv.append(pl.col(name).cast(pl.Categorical))
    return (df.with_columns(conv) if conv else df).to_pandas()


def validate(table: str, df: pl.DataFrame, now: datetime | None = None) -> Outcome:
    """Validate one dataset's batch against expectations/<table>.json."""
    now = (now or datetime.now(UTC)) + FUTURE_TOLERANCE
    with _lock:
        suite, bd = _suite_and_batchdef(table)
        batch = bd.get_batch(batch_parameters={"dataframe": _to_pandas(df, suite_columns(table), key_text_columns(table))})
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
