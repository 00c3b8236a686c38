"""Build marts: one SQL file (or polars module) per table, named after the table it builds.

Build order comes from declared inputs: the schema-qualified names a SQL file reads
(`staging.x`, `marts.y`), or a Python module's INPUTS list. Nothing keeps a hand-made order.
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path

import polars as pl

import warehouse
from perpwatch.settings import signal_settings

HERE = Path(__file__).resolve().parent
REF = re.compile(r"\b(staging|marts)\.([a-z_][a-z0-9_]*)\b")
PARAM = re.compile(r"\{\{\s*([a-z_]+)\.([a-z_0-9]+)\s*\}\}")


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
        mod = importlib.import_module(f"transforms.marts.{path.stem}")
        models[mod.TABLE] = Model(mod.TABLE, path, set(mod.INPUTS), "python")
    return models


def order(models: dict[str, Model]) -> list[str]:
    graph = {name: {i for i in m.inputs if i in models} for name, m in models.items()}
    return list(TopologicalSorter(graph).static_order())


def render_sql(text: str) -> str:
    """Substitute {{section.key}} with values from the signal settings file (numbers only)."""
    cfg = signal_settings()

    def sub(m: re.Match) -> str:
        value = cfg[m.group(1)][m.group(2)]
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"setting {m.group(1)}.{m.group(2)} must be a number, got {value!r}")
        return repr(float(value))

    return PARAM.sub(sub, text)


def build_all(con, only: list[str] | None = None) -> dict[str, float]:
    """Rebuild every mart (or `only` and what they need), in dependency order. Returns seconds per table."""
    models = discover()
    timings: dict[str, float] = {}
    for name in order(models):
        if only and name not in only:
            continue
        m = models[name]
        t0 = time.perf_counter()
        with warehouse.transaction(con):
            if m.kind == "sql":
                sql = render_sql(_strip_comments(m.path.read_text()))
                if m.view:
                    con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
                else:
                    con.execute(f"CREATE OR REPLACE TABLE {name} AS {sql}")
            else:
                mod = importlib.import_module(f"transforms.marts.{m.path.stem}")
                df: pl.DataFrame = mod.build(con)
                con.register("__mart", df.to_arrow())
                con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM __mart")
                con.unregister("__mart")
        timings[name] = time.perf_counter() - t0
    warehouse.apply_comments(con)
    return timings
