"""Build marts: one SQL file (or polars module) per table, named after the table it builds.

Build order comes from declared inputs: the schema-qualified names a SQL file reads
(`staging.x`, `marts.y`), or a Python module's INPUTS list. Nothing keeps a hand-made order.
"""

from __future__ import annotations

import contextvars
import importlib
import re
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from graphlib import TopologicalSorter
from pathlib import Path

import polars as pl

from perpwatch import warehouse
from perpwatch.core import memory, tables
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


SECTION = re.compile(r"\{\{([#^])incremental\}\}(.*?)\{\{/incremental\}\}", re.S)
WHOLE = re.compile(r"\{\{\s*whole\s+(staging|marts)\.([a-z_][a-z0-9_]*)\s*\}\}")


def render_sql(text: str, since: date | None = None, catalog: str | None = None) -> str:
    """Substitute {{section.key}} with values from the signal settings file (numbers only).

    `since`: set in an incremental build (the first day it rewrites), None in a full build. It decides
    the incremental-only parts of a mart: `{{#incremental}}...{{/incremental}}` is kept only in an
    incremental build, `{{^incremental}}...{{/incremental}}` only in a full one; `{{build.since}}` is
    that day (a DATE literal). `{{whole staging.x}}` is the input read whole even in an incremental
    build (first-seen facts); `catalog` qualifies it there (quoted so the input cut does not touch it)."""
    cfg = signal_settings()
    text = SECTION.sub(lambda m: m.group(2) if (m.group(1) == "#") == (since is not None) else "", text)

    def whole(m: re.Match) -> str:
        if since is None:
            return f"{m.group(1)}.{m.group(2)}"
        return f'{catalog + "." if catalog else ""}"{m.group(1)}"."{m.group(2)}"'

    text = WHOLE.sub(whole, text)

    def sub(m: re.Match) -> str:
        if m.group(1) == "build" and m.group(2) == "now_us":
            now = build_now()
            return str(int(now.timestamp()) * 1_000_000 + now.microsecond)
        if m.group(1) == "build" and m.group(2) == "since":
            if since is None:
                raise ValueError("{{build.since}} exists only in an incremental build: put it in {{#incremental}}")
            return f"DATE '{since:%Y-%m-%d}'"
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
        with memory.reuse_freed_memory():
            return _build_all(con, only)
    finally:
        BUILD_NOW.reset(token)


def _build_all(con, only: list[str] | None) -> dict[str, float]:
    models = discover()
    wanted = _with_inputs(con, models, only) if only else None
    names = [n for n in order(models) if wanted is None or n in wanted]
    workers = build_workers(con)
    if workers > 1 and len(names) > 1:
        timings = _build_parallel(con, names, models, workers)
    else:
        timings = {name: _build_model(con, name, models[name]) for name in names}
    warehouse.apply_comments(con)
    return timings


def build_workers(con) -> int:
    """Marts a full build runs at once on the DuckDB file: PERPWATCH_BUILD_WORKERS, default 2. One on DuckLake:
    its catalog is the session's `USE`, which a second connection would not have."""
    from perpwatch.core import settings
    from perpwatch.warehouse import lake

    if lake.is_lake(con):
        return 1
    return max(1, settings.get().build_workers)


def _critical_path(names: list[str], models: dict[str, Model]) -> dict[str, int]:
    """Per mart, the heaviest chain of marts that wait for it (itself included): a Python mart (the heatmap,
    signal evaluation) weighs 3, a SQL mart 1. The scheduler starts the heaviest chain first."""
    readers: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for i in models[n].inputs:
            if i in readers:
                readers[i].append(n)
    weight: dict[str, int] = {}
    for n in reversed(names):   # topological order reversed: every reader is weighed before its input
        weight[n] = (3 if models[n].kind == "python" else 1) + max((weight[r] for r in readers[n]), default=0)
    return weight


def _build_parallel(con, names: list[str], models: dict[str, Model], workers: int) -> dict[str, float]:
    """build_all's marts on `workers` threads, each mart on its own connection (cursor) in its own
    transaction, started once every mart it reads has committed; the heaviest chain first. Commits are
    serialised with the change record, whose number is handed out here in commit order (a transaction
    does not see another's uncommitted or later-committed rows, so max(seq) + 1 inside it could repeat)."""
    need = {n: {i for i in models[n].inputs if i in names} for n in names}
    weight = _critical_path(names, models)
    seq = [con.execute("SELECT coalesce(max(seq), 0) FROM meta.mart_changes").fetchone()[0]]
    commit = threading.Lock()
    timings: dict[str, float] = {}
    done: set[str] = set()
    ctx = contextvars.copy_context()    # BUILD_NOW: worker threads do not inherit the caller's context

    def run(name: str) -> float:
        cur = con.cursor()
        try:
            cur.execute("SET TimeZone='UTC'")   # a session setting: warehouse.connect's, per connection
            t0 = time.perf_counter()
            ctx.copy().run(_build_serialised, cur, name, models[name], commit, seq)
            return time.perf_counter() - t0
        finally:
            cur.close()

    with ThreadPoolExecutor(workers) as pool:
        running: dict = {}
        while len(done) < len(names):
            ready = sorted((n for n in names if n not in done and n not in running.values() and need[n] <= done),
                           key=lambda n: (-weight[n], names.index(n)))
            for n in ready[: workers - len(running)]:
                running[pool.submit(run, n)] = n
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                name = running.pop(f)
                timings[name] = f.result()   # a failed mart raises here; the pool waits for the running ones
                done.add(name)
    return {n: timings[n] for n in names}


def _build_model(con, name: str, m: Model, changed_from=None) -> float:
    """(Re)build one mart in full, in its own transaction. Returns seconds. changed_from: the first day whose
    rows can differ (a view with an incremental header in an incremental build), None: any row."""
    t0 = time.perf_counter()
    with warehouse.transaction(con):
        _create(con, name, m)
        warehouse.record_change(con, name, changed_from)   # publishing copies what changed (warehouse/publishing.py)
    return time.perf_counter() - t0


def _kind(con, name: str) -> str | None:
    """What `name` is in the warehouse now: 'VIEW', 'BASE TABLE', or None (absent)."""
    schema, table = name.split(".", 1)
    row = con.execute("SELECT table_type FROM information_schema.tables WHERE table_catalog = current_database() "
                      f"AND table_schema = {_sql_str(schema)} AND table_name = {_sql_str(table)}").fetchone()
    return row[0] if row else None


def _create(con, name: str, m: Model) -> None:
    """CREATE OR REPLACE the mart (a view, a table from its SQL, or a table from its module's frame). A mart that
    changed kind since the warehouse was built (marts.carry_daily was a view) is dropped first: CREATE OR REPLACE
    does not turn a view into a table or back."""
    was = _kind(con, name)
    if was is not None and (was == "VIEW") != (m.kind == "sql" and m.view):
        con.execute(f"DROP {'VIEW' if was == 'VIEW' else 'TABLE'} {name}")
    if m.kind == "sql":
        sql = render_sql(_strip_comments(m.path.read_text()))
        if m.view:
            con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
        else:
            con.execute(f"CREATE OR REPLACE TABLE {name} AS {sql}")
    else:
        mod = importlib.import_module(f"perpwatch.transforms.marts.{m.path.stem}")
        df: pl.DataFrame = mod.build(con)
        con.register("__mart", warehouse.arrow(df))
        con.execute(f"CREATE OR REPLACE TABLE {name} AS {warehouse.select_stored(df, '__mart')}")
        con.unregister("__mart")


def _build_serialised(con, name: str, m: Model, lock: threading.Lock, seq: list[int]) -> None:
    """_build_model's transaction for a parallel build: build, then under `lock` record the change with the next
    number (seq[0] + 1: handed out in commit order) and commit."""
    con.execute("BEGIN TRANSACTION")
    try:
        _create(con, name, m)
        with lock:
            warehouse.record_change(con, name, None, seq[0] + 1)
            con.execute("COMMIT")
            seq[0] += 1
    except BaseException:
        con.execute("ROLLBACK")
        raise


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
# logic) must not opt in as it stands. `build_incremental(con, since)` then recomputes only the
# rows >= since (DELETE + INSERT in one transaction) from its inputs cut at since - lookback
# (each mart its own cut: a mart with a short lookback never reads the long one of another). A
# view with the header passes the cut on to its own inputs. Python marts, views and SQL marts
# without the header are rebuilt in full exactly as build_all does, as is a mart whose table
# does not exist yet or whose columns changed. After editing signals.toml, run build_all.
#
# Long histories without a long lookback (render_sql): a mart may read its OWN stored rows before
# `since` inside `{{#incremental}}...{{/incremental}}` (only rendered in an incremental build;
# `{{^incremental}}...{{/incremental}}` only in a full one; `{{build.since}}` is the day), e.g. the
# day values a trailing window or a streak needs, instead of recomputing them from a year of
# inputs; and `{{whole staging.x}}` reads an input whole in both builds (first-seen facts such as
# the day capture started). The rows must equal a full rebuild's: tests/test_bench_smoke.py.

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
    """What build_incremental(con, since) would do per mart: mode, reason and input cut-offs
    (`inputs_from`: the first day of each input the mart reads, a view with the header followed
    to its own inputs; `__need__`: per input, the earliest day any mart reads)."""
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
            plan[n] = {"mode": "full", "reason": "not a table yet (absent, or built as a view by an older release)"}
        else:
            plan[n] = {"mode": "incremental", "column": spec[0], "lookback": spec[1], "from": since}
    need: dict[str, date] = {}

    def reads(n: str, start: date) -> dict[str, date]:
        """The inputs mart/view `n` reads to produce its rows from `start` on, and from which day."""
        cut = start - timedelta(days=plan[n]["lookback"])
        out: dict[str, date] = {}
        for i in sorted(models[n].inputs):
            if plan.get(i, {}).get("mode") in ("full", "resume", "skip") or \
                    (i not in models and input_time_column(i) is None):
                continue                                      # rebuilt otherwise, or a snapshot: read whole
            out[i] = cut
            need[i] = min(need.get(i, cut), cut)
            if plan.get(i, {}).get("mode") == "view":
                reads(i, cut)
        return out

    for n in names:
        if plan[n]["mode"] == "incremental":
            plan[n]["inputs_from"] = reads(n, since)
    plan["__need__"] = need   # type: ignore[assignment]
    return plan


def build_incremental(con, since, only: list[str] | None = None, now: datetime | None = None) -> dict[str, float]:
    """Recompute opted-in marts from `since` (a date) on; rebuild the rest in full. Seconds per table."""
    _import_arrow_scan_aside()
    token = BUILD_NOW.set(now or datetime.now(UTC))
    try:
        with memory.reuse_freed_memory():
            return _build_incremental(con, since, only)
    finally:
        BUILD_NOW.reset(token)


def _import_arrow_scan_aside() -> None:
    """Import pyarrow.dataset on a thread while the build's first (SQL) marts run. DuckDB imports it at the
    first Arrow frame a Python mart hands over, and it imports pandas: 0.25-0.28 s (python -X importtime) that
    a daily build would otherwise wait for in the heatmap, while the SQL marts before it leave the interpreter
    free (DuckDB releases the GIL)."""
    if "pyarrow.dataset" not in sys.modules:
        threading.Thread(target=importlib.import_module, args=("pyarrow.dataset",), name="perpwatch-import",
                         daemon=True).start()


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _build_incremental(con, since, only: list[str] | None) -> dict[str, float]:
    models = discover()
    plan = incremental_plan(con, since, models)
    plan.pop("__need__")
    catalog = con.execute("SELECT current_database()").fetchone()[0]
    qcat = '"' + catalog.replace('"', '""') + '"'
    timings: dict[str, float] = {}
    views: dict[tuple[str, date], str | None] = {}
    schemas: set[str] = set()
    # literal SQL only below: the first parameterised query of a process makes DuckDB import pandas (~0.2 s)

    def cut_view(ref: str, frm: date) -> str | None:
        """The name of a view of input `ref` from day `frm` on (a view with the header: its SQL over its
        own inputs cut at frm - its lookback), created once per (input, day); None: read it whole."""
        if (ref, frm) in views:
            return views[(ref, frm)]
        schema, name = ref.split(".")
        p = plan.get(ref, {})
        body = None
        if p.get("mode") == "view":
            sub = frm - timedelta(days=p["lookback"])
            cuts = {i: v for i in models[ref].inputs if (v := cut_view(i, sub))}
            body = _rewrite(render_sql(_strip_comments(models[ref].path.read_text()), frm, qcat), cuts, qcat)
        elif ref not in models or p.get("mode") == "incremental":
            col = p["column"] if ref in models else input_time_column(ref)
            if col is not None:
                typ = con.execute(
                    "SELECT data_type FROM information_schema.columns WHERE table_catalog = current_database() "
                    f"AND table_schema = {_sql_str(schema)} AND table_name = {_sql_str(name)} "
                    f"AND column_name = {_sql_str(col)}").fetchone()
                # a TIMESTAMPTZ literal keeps the filter a plain range (zone maps); `>= DATE` would cast every row
                lit = (f"TIMESTAMPTZ '{frm:%Y-%m-%d} 00:00:00+00'" if typ and "TIME ZONE" in typ[0].upper()
                       else f"DATE '{frm:%Y-%m-%d}'")
                body = f'SELECT * FROM {qcat}.{schema}."{name}" WHERE "{col}" >= {lit}'
        # else: rebuilt in full (no promised date column) or a snapshot table: read it whole
        if body is None:
            views[(ref, frm)] = None
            return None
        # one schema per input schema and day; the table name stays, so the SQL's aliases hold
        sch = f"{schema}_{frm:%Y%m%d}"
        if sch not in schemas:
            con.execute(f'CREATE SCHEMA __inc."{sch}"')
            schemas.add(sch)
        views[(ref, frm)] = f'__inc."{sch}"."{name}"'
        con.execute(f"CREATE VIEW {views[(ref, frm)]} AS {body}")
        return views[(ref, frm)]

    con.execute("ATTACH ':memory:' AS __inc")
    try:
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
            frm = since - timedelta(days=p["lookback"])
            cuts = {i: v for i in m.inputs if (v := cut_view(i, frm))}
            sql = _rewrite(render_sql(_strip_comments(m.path.read_text()), since, qcat), cuts)
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


def _rewrite(sql: str, cuts: dict[str, str], qualify_rest: str | None = None) -> str:
    """Point references to cut inputs at their views (`cuts`: input -> view name); inside a view in
    __inc, qualify the other references with the warehouse catalog."""
    def sub(m: re.Match) -> str:
        if m.group(0) in cuts:
            return cuts[m.group(0)]
        return f"{qualify_rest}.{m.group(0)}" if qualify_rest else m.group(0)
    return REF.sub(sub, sql)
