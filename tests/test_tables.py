"""The table registry (perpwatch/core/tables.py) is the one home of every staging-table fact."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from perpwatch import sources, warehouse
from perpwatch.core import tables
from perpwatch.core.settings import expectations_dir
from perpwatch.ingest import gaps
from perpwatch.serving import status

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    with warehouse.session(tmp_path_factory.mktemp("reg") / "w.duckdb") as c:
        yield c


def test_every_loadable_table_is_registered(con):
    in_schema = {t for (t,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'staging' AND database_name = current_database()"
    ).fetchall()}
    assert in_schema == set(tables.LOAD_ORDER)
    for name, module in sources.available().items():
        missing = set(module.DATASETS) - set(tables.LOAD_ORDER)
        assert not missing, f"{name} loads tables missing from the registry: {missing}"


def test_registry_facts_match_the_warehouse(con):
    for t in tables.STAGING:
        cols = {c for (c,) in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'staging' AND table_name = ? "
            "AND database_name = current_database()", [t.name]).fetchall()}
        assert set(t.key) <= cols, (t.name, set(t.key) - cols)
        assert t.time_column in cols, (t.name, t.time_column)
        assert (expectations_dir() / f"{t.suite}.json").exists(), t.suite
        assert t.max_lag.total_seconds() > 0


def test_readers_take_their_facts_from_the_registry():
    assert warehouse.KEYS["staging.liquidations"] == ["venue", "instrument", "ts", "side", "price", "qty_base"]
    assert status.STAGING == list(tables.LOAD_ORDER)
    assert set(gaps.grid()) == {"prices", "open_interest", "funding_rates", "long_short_ratio"}
    assert tables.LOAD_ORDER.index("instruments") == 0
    assert tables.LOAD_ORDER.index("prices") < tables.LOAD_ORDER.index("open_interest")
    with pytest.raises(KeyError, match="not a loadable table"):
        tables.table("staging.nope")


def _literal_table_lists(path: Path) -> list[int]:
    """Line numbers of literal lists/tuples/sets naming three or more staging tables (a source's own
    DATASETS — what it extracts — is a fact about the source, not about the tables)."""
    names = set(tables.LOAD_ORDER) | {f"staging.{n}" for n in tables.LOAD_ORDER}
    tree = ast.parse(path.read_text())
    own = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
           and any(isinstance(t, ast.Name) and t.id == "DATASETS" for t in n.targets)}
    hits = []
    for node in ast.walk(tree):
        elems = node.elts if isinstance(node, ast.List | ast.Tuple | ast.Set) and id(node) not in own else None
        if not elems:
            continue
        found = {e.value for e in elems if isinstance(e, ast.Constant) and e.value in names}
        if len(found) >= 3:
            hits.append(node.lineno)
    return hits


def test_no_module_restates_the_table_list():
    """A literal list of staging tables outside the registry is a second copy waiting to disagree."""
    registry = ROOT / "perpwatch" / "core" / "tables.py"
    offenders = {}
    for folder in ("perpwatch", "sources", "warehouse", "transforms", "flows"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.resolve() == registry.resolve() or path.is_symlink():
                continue
            lines = _literal_table_lists(path)
            if lines:
                offenders[str(path.relative_to(ROOT))] = lines
    assert not offenders, f"table lists outside perpwatch/core/tables.py: {offenders}"
