"""The warehouse file's storage format (warehouse.STORAGE_VERSION): a new file is created in it, so its text
columns are written with DICT_FSST; a file created before keeps its own format and keeps working; the
serving snapshot BI tools open stays in DuckDB's default format, for readers older than 1.3; and a plain
duckdb.connect() of the warehouse in the same process still works (no per-connection configuration)."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import polars as pl

from perpwatch import warehouse


def _version(con, name: str) -> str:
    return con.execute("SELECT tags['storage_version'] FROM duckdb_databases() WHERE database_name = ?",
                       [name]).fetchone()[0]


def _text_compression(con, table: str, column: str) -> set[str]:
    return {r[0] for r in con.execute(
        f"SELECT DISTINCT compression FROM pragma_storage_info('{table}') "
        f"WHERE column_name = '{column}' AND segment_type = 'VARCHAR'").fetchall()}


def _oi(n: int) -> pl.DataFrame:
    """n open-interest rows of 50 instruments, one per instrument-hour."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    i = pl.int_range(n, eager=True)
    return pl.DataFrame({"i": i}).select(
        pl.lit("binance").alias("venue"), pl.format("S{}USDT", pl.col("i") % 50).alias("instrument"),
        (pl.lit(t0) + pl.duration(hours=pl.col("i") // 50)).alias("ts"),
        pl.format("S{}", pl.col("i") % 50).alias("asset"), pl.lit("linear").alias("margin"),
        pl.col("i").cast(pl.Float64).alias("oi_contracts"), pl.col("i").cast(pl.Float64).alias("oi_base"),
        (2.0 * pl.col("i")).alias("oi_usd"), pl.lit(1, pl.Int64).alias("raw_id"), pl.lit(t0).alias("ingested_at"))


def _load(con, df: pl.DataFrame) -> int:
    with warehouse.transaction(con):
        res = warehouse.upsert(con, "staging.open_interest", df)
    con.execute("CHECKPOINT")
    return res.loaded


def test_a_new_warehouse_is_created_in_the_storage_version_and_writes_text_as_dict_fsst(tmp_path):
    db = tmp_path / "w.duckdb"
    con = warehouse.connect(db)
    try:
        assert _version(con, "w") == warehouse.STORAGE_VERSION + "+"
        assert _load(con, _oi(150_000)) == 150_000
        assert _text_compression(con, "staging.open_interest", "instrument") == {"DICT_FSST"}
        # a plain connection in the same process shares the instance (no second configuration to refuse)
        plain = duckdb.connect(str(db))
        assert plain.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0] == 150_000
        plain.close()
    finally:
        con.close()
    # reopened later, still the same format
    con = warehouse.connect(db, read_only=True)
    try:
        assert _version(con, "w") == warehouse.STORAGE_VERSION + "+"
    finally:
        con.close()


def test_a_file_created_before_keeps_its_format_and_loads(tmp_path):
    db = tmp_path / "old.duckdb"
    duckdb.connect(str(db)).close()            # an empty file in DuckDB's default format, as before
    con = warehouse.connect(db)
    try:
        before = _version(con, "old")
        assert before != warehouse.STORAGE_VERSION + "+"
        assert _load(con, _oi(150_000)) == 150_000
        assert "DICT_FSST" not in _text_compression(con, "staging.open_interest", "instrument")
        assert _version(con, "old") == before
    finally:
        con.close()


def test_the_serving_snapshot_stays_in_the_default_format(tmp_path):
    db, serving = tmp_path / "w.duckdb", tmp_path / "serving.duckdb"
    with warehouse.session(db) as con:
        _load(con, _oi(1_000))
    warehouse.publish(db=db, serving=serving, exports=tmp_path / "exports")
    snap = duckdb.connect(str(serving), read_only=True)
    try:
        name = snap.execute("SELECT current_database()").fetchone()[0]
        got = _version(snap, name)
        assert got != warehouse.STORAGE_VERSION + "+" and got.startswith("v1.0"), got
        assert snap.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0] == 1_000
    finally:
        snap.close()
