"""Build marts: one SQL file (or polars module) per table, named after the table it builds.

Build order comes from declared inputs: the schema-qualified names a SQL file reads
(`staging.x`, `marts.y`), or a Python module's INPUTS list. Nothing keeps a hand-made order.
"""

from __future__ import annotations

import contextvars
import importlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from graphlib import TopologicalSorter
from pathlib import Path

import polars as pl

from perpwatch import warehouse
from perpwatch.core import tables
from perpwatch.core.settings import signal_settings

HERE = Path(__file__).resolve().parent
REF = re.compile(r"\b(staging|marts)\.([a-z_][a-z0-9_]*)\b")
PARAM = re.compile(r"\{\{\s*([a-z_]+)\.([a-z_0-9]+)\s*\}\}")
# The build's clock: `{{build.now_us}}` in a SQL mart is this instant (epoch microseconds, UTC).
# build_all/build_incremental set it from their `now` argument (tests inject e.g. 03:00 UTC);
# it decides which days are complete (docs/signals.md, "Completeness").
BUILD_NOW: contextvars.ContextVar[datetime | None] = contextvars.ContextVar("build_now", default=None)


def build_now() -> datetime:
    return (BUILD_NOW.get() or datetime.now(UTC)).astimezone(UTC)


@dataclass
class Model:
    table: str
    path: Path
    inputs: set[str]
    kind: str  # "sql" | "python"
    view: bool = False


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def discover() -> dict[str, Model]:
    models: dict[str, Model] = {}
    for path in sorted((HERE / "marts").glob("*.sql")):
        table = f"marts.{path.stem}"
        body = _strip_comments(path.read_text())
        inputs = {f"{s}.{t}" for s, t in REF.findall(body)} - {table}
        view = path.read_text().lstrip().lower().startswith("-- view")
        models[table] = Model(table, path, inputs, "sql", view)
    for path in sorted((HERE / "marts").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        mod = importlib.import_module(f"perpwatch.transforms.marts.{path.stem}")
        models[mod.TABLE] = Model(mod.TABLE, path, set(mod.INPUTS), "python")
    return models


def order(models: dict[str, Model]) -> list[str]:
    graph = {name: {i for i in m.inputs if i in models} for name, m in models.items()}
    return list(TopologicalSorter(graph).static_order())


def _with_inputs(con, models: dict[str, Model], only: list[str]) -> set[str]:
    """`only` plus every mart it reads (transitively) that does not exist yet."""
    existing = {f"{s}.{t}" for s, t in con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() UNION ALL "
        "SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = current_database()").fetchall()}
    todo, seen = list(only), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in models:
            continue
        if name in only or name not in existing:
            seen.add(name)
            todo.extend(models[name].inputs)
    return seen


def render_sql(text: str) -> str:
    """Substitute {{section.key}} with values from the signal settings file (numbers only)."""
    cfg = signal_settings()

    def sub(m: re.Match) -> str:
        if m.group(1) == "build" and m.group(2) == "now_us":
            now = build_now()
            return str(int(now.timestamp()) * 1_000_000 + now.microsecond)
        value = cfg[m.group(1)][m.group(2)]
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"setting {m.group(1)}.{m.group(2)} must be a number, got {value!r}")
        return repr(float(value))

    return PARAM.sub(sub, text)


def build_all(con, only: list[str] | None = None, now: datetime | None = None) -> dict[str, float]:
    """Rebuild every mart (or `only` and what they need), in dependency order. Returns seconds per table.
    `now`: the build's clock (default: the wall clock), which decides the `complete` flags."""
    token = BUILD_NOW.set(now or datetime.now(UTC))
    try:
        return _build_all(con, only)
    finally:
        BUILD_NOW.reset(token)


def _build_all(con, only: list[str] | None) -> dict[str, float]:
    models = discover()
    timings: dict[str, float] = {}
    wanted = _with_inputs(con, models, only) if only else None
    for name in order(models):
        if wanted is not None and name not in wanted:
            continue
        timings[name] = _build_model(con, name, models[name])
    warehouse.apply_comments(con)
    return timings


def _build_model(con, name: str, m: Model, changed_from=None) -> float:
    """(Re)build one mart in full, in its own transaction. Returns seconds. changed_from: the first day whose
    rows can differ (a view with an incremental header in an incremental build), None: any row."""
    t0 = time.perf_counter()
    with warehouse.transaction(con):
        if m.kind == "sql":
            sql = render_sql(_strip_comments(m.path.read_text()))
            if m.view:
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
            else:
                con.execute(f"CREATE OR REPLACE TABLE {name} AS {sql}")
        else:
            mod = importlib.import_module(f"perpwatch.transforms.marts.{m.path.stem}")
            df: pl.DataFrame = mod.build(con)
            con.register("__mart", df.to_arrow())
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM __mart")
            con.unregister("__mart")
        warehouse.record_change(con, name, changed_from)   # publishing copies what changed (warehouse/publishing.py)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- incremental builds
#
# A SQL mart opts in with a header line in its leading comment block:
#
#     -- incremental: <date column> [lookback <days: a SQL expression, {{section.key}} allowed>]
#
# e.g. `-- incremental: date lookback greatest({{funding.percentile_window_days}}, 30) + 8`.
# It promises: the mart's rows with <date column> >= D depend only on input rows timestamped
# >= D - lookback days (rolling windows, lags, "last value of the day" all fit inside it). A
# mart whose rows depend on all history (running totals since the first row, first-seen
# logic) must not opt in. `build_incremental(con, since)` then recomputes only the rows
# >= since (DELETE + INSERT in one transaction) from inputs cut at since - lookback. A view
# with the header passes the cut on to its own inputs. Python marts, views and SQL marts
# without the header are rebuilt in full exactly as build_all does, as is a mart whose table
# does not exist yet or whose columns changed. After editing signals.toml, run build_all.

INCREMENTAL = re.compile(r"^--\s*incremental:\s*([a-z_][a-z0-9_]*)(?:\s+lookback\s+(.+?))?\s*$", re.I)


def input_time_column(ref: str) -> str | None:
    """Column an incremental build cuts an input table on: a staging table's registry time column
    (None for snapshot tables such as instruments, read whole); other inputs default to ts."""
    schema, name = ref.split(".", 1)
    if schema == "staging" and name in tables.BY_NAME:
        t = tables.BY_NAME[name]
        return None if t.snapshot else t.time_column
    return "ts"


def incremental_spec(con, model: Model) -> tuple[str, int] | None:
    """(date column, lookback days) from a SQL mart's `-- incremental:` header, else None."""
    if model.kind != "sql":
        return None
    for line in model.path.read_text().splitlines():
        if not line.strip():
            continue
        if not line.lstrip().startswith("--"):
            break
        m = INCREMENTAL.match(line.strip())
        if m:
            days = con.execute(f"SELECT CAST(ceil({render_sql(m.group(2))}) AS BIGINT)").fetchone()[0] \
                if m.group(2) else 0
            if days is None or days < 0:
                raise ValueError(f"{model.path.name}: incremental lookback must be >= 0 days, got {days}")
            return m.group(1), int(days)
    return None


def incremental_plan(con, since, models: dict[str, Model] | None = None) -> dict[str, dict]:
    """What build_incremental(con, since) would do per mart: mode, reason and input cut-offs."""
    from datetime import timedelta

    models = models or discover()
    names = order(models)
    existing = {f"marts.{r[0]}": r[1] for r in con.execute(
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'marts' "
        "AND table_catalog = current_database()").fetchall()}
    specs = {n: incremental_spec(con, models[n]) for n in names}
    plan: dict[str, dict] = {}
    for n in names:
        m, spec = models[n], specs[n]
        py_mode = getattr(importlib.import_module(f"perpwatch.transforms.marts.{m.path.stem}"), "INCREMENTAL",
                          None) if m.kind == "python" else None
        if py_mode == "skip":
            plan[n] = {"mode": "skip", "reason": "evaluation over all history: refreshed by full builds only"}
        elif py_mode == "resume" and existing.get(n) == "BASE TABLE":
            # the module's build_since(con, since) updates the table in place (e.g. from stored model state)
            plan[n] = {"mode": "resume", "reason": "python mart: build_since resumes from stored state"}
        elif spec is None:
            plan[n] = {"mode": "full", "reason": "python mart" if m.kind == "python" else
                       ("view" if m.view else "no incremental header")}
        elif m.view:
            plan[n] = {"mode": "view", "reason": "view with incremental header", "column": spec[0],
                       "lookback": spec[1]}
        elif existing.get(n) != "BASE TABLE":
            plan[n] = {"mode": "full", "reason": "table does not exist yet"}
        else:
            plan[n] = {"mode": "incremental", "column": spec[0], "lookback": spec[1], "from": since}
    # how far back each input must be readable: consumers' cut-offs, passed through views
    need: dict[str, object] = {}
    for n in reversed(names):
        p = plan[n]
        if p["mode"] == "incremental":
            start = since
        elif p["mode"] == "view" and n in need:
            start = need[n]
        else:
            continue
        cut = start - timedelta(days=p["lookback"])
        for i in models[n].inputs:
            need[i] = min(need.get(i, cut), cut)
    for n, p in plan.items():
        p["inputs_from"] = {i: need[i] for i in sorted(models[n].inputs) if i in need}
    plan["__need__"] = need   # type: ignore[assignment]
    return plan


def build_incremental(con, since, only: list[str] | None = None, now: datetime | None = None) -> dict[str, float]:
    """Recompute opted-in marts from `since` (a date) on; rebuild the rest in full. Seconds per table."""
    token = BUILD_NOW.set(now or datetime.now(UTC))
    try:
        return _build_incremental(con, since, only)
    finally:
        BUILD_NOW.reset(token)


def _build_incremental(con, since, only: list[str] | None) -> dict[str, float]:
    models = discover()
    plan = incremental_plan(con, since, models)
    need = plan.pop("__need__")
    catalog = con.execute("SELECT current_database()").fetchone()[0]
    qcat = '"' + catalog.replace('"', '""') + '"'
    timings: dict[str, float] = {}
    cut: set[str] = set()

    def cut_view(ref: str) -> None:
        """Create __inc.<ref>: the input from need[ref] on (a view with the header: its SQL over cut inputs)."""
        if ref in cut or ref not in need:
            return
        schema, name = ref.split(".")
        p = plan.get(ref, {})
        if p.get("mode") == "view":
            for i in models[ref].inputs:
                cut_view(i)
            body = _rewrite(render_sql(_strip_comments(models[ref].path.read_text())), cut, qcat)
        elif ref in models and p.get("mode") != "incremental":
            return                      # rebuilt in full: no promised date column, read it whole
        else:
            col = p["column"] if ref in models else input_time_column(ref)
            if col is None:
                return
            typ = con.execute("SELECT data_type FROM information_schema.columns WHERE table_catalog = current_database() "
                              "AND table_schema = ? AND table_name = ? AND column_name = ?", [schema, name, col]).fetchone()
            # a TIMESTAMPTZ literal keeps the filter a plain range (zone maps); `>= DATE` would cast every row
            lit = (f"TIMESTAMPTZ '{need[ref]:%Y-%m-%d} 00:00:00+00'" if typ and "TIME ZONE" in typ[0].upper()
                   else f"DATE '{need[ref]:%Y-%m-%d}'")
            body = f"SELECT * FROM {qcat}.{schema}.\"{name}\" WHERE \"{col}\" >= {lit}"
        con.execute(f"CREATE OR REPLACE VIEW __inc.{ref} AS {body}")
        cut.add(ref)

    con.execute("ATTACH ':memory:' AS __inc")
    try:
        con.execute("CREATE SCHEMA __inc.staging; CREATE SCHEMA __inc.marts")
        for name in order(models):
            if only and name not in only:
                continue
            m, p = models[name], plan[name]
            if p["mode"] == "skip":
                continue
            if p["mode"] == "resume":
                t0 = time.perf_counter()
                mod = importlib.import_module(f"perpwatch.transforms.marts.{m.path.stem}")
                with warehouse.transaction(con):
                    changed = mod.build_since(con, since)   # the first day it rewrote, None: all of it
                    warehouse.record_change(con, name, changed)
                timings[name] = time.perf_counter() - t0
                continue
            if p["mode"] != "incremental":
                # a view with the header promises rows before `since` read only inputs before it: unchanged
                timings[name] = _build_model(con, name, m, since if p["mode"] == "view" else None)
                continue
            t0 = time.perf_counter()
            for i in m.inputs:
                cut_view(i)
            sql = _rewrite(render_sql(_strip_comments(m.path.read_text())), cut)
            cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM ({sql}) LIMIT 0").fetchall()]
            if cols != warehouse.table_columns(con, name):
                timings[name] = _build_model(con, name, m)      # the SQL changed shape: rebuild whole
                continue
            day = f"DATE '{since:%Y-%m-%d}'"
            with warehouse.transaction(con):
                con.execute(f'DELETE FROM {name} WHERE "{p["column"]}" >= {day}')
                con.execute(f'INSERT INTO {name} SELECT * FROM ({sql}) WHERE "{p["column"]}" >= {day}')
                warehouse.record_change(con, name, since)
            timings[name] = time.perf_counter() - t0
    finally:
        con.execute("DETACH __inc")
    warehouse.apply_comments(con)
    return timings


def _rewrite(sql: str, cut: set[str], qualify_rest: str | None = None) -> str:
    """Point references to cut inputs at their __inc views (same table names, so aliases hold);
    inside an __inc view, qualify the other references with the warehouse catalog."""
    def sub(m: re.Match) -> str:
        if m.group(0) in cut:
            return f"__inc.{m.group(0)}"
        return f"{qualify_rest}.{m.group(0)}" if qualify_rest else m.group(0)
    return REF.sub(sub, sql)
