"""A mart that changed kind between releases (marts.carry_daily was a view, is a table now) becomes its new kind
at the next build, incremental or full, with the same rows; the view over it (marts.carry) keeps working."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
from polars.testing import assert_frame_equal

from perpwatch import transforms, warehouse
from perpwatch.bench.gen_warehouse import generate

END = datetime(2026, 11, 20, tzinfo=UTC)
KEY = ["date", "venue", "instrument"]


def _rows(con, name: str) -> pl.DataFrame:
    return con.execute(f"SELECT * FROM {name}").pl().sort(KEY)


def _as_the_old_release_left_it(con) -> None:
    """marts.carry_daily as a view over the same SQL, as the release before this one built it."""
    model = transforms.discover()["marts.carry_daily"]
    sql = transforms.render_sql(transforms._strip_comments(model.path.read_text()))
    con.execute("DROP TABLE marts.carry_daily")
    con.execute(f"CREATE VIEW marts.carry_daily AS {sql}")
    assert transforms._kind(con, "marts.carry_daily") == "VIEW"


def test_a_mart_built_as_a_view_becomes_a_table(tmp_path):
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        generate(con, 20, 2, end=END)
        transforms.build_all(con, now=END)
        assert transforms._kind(con, "marts.carry_daily") == "BASE TABLE"
        want = _rows(con, "marts.carry_daily")
        assert want.height > 0 and want["kind"].to_list().count("perp") > 0
        ranked = con.execute("SELECT count(*) FROM marts.carry").fetchone()[0]
        assert ranked == want.height

        _as_the_old_release_left_it(con)
        # the daily build: an incremental mart that is not a table yet is planned as a full build (a DELETE from
        # a view would fail), which drops the view
        transforms.build_incremental(con, (END - timedelta(days=1)).date(), now=END)
        assert transforms._kind(con, "marts.carry_daily") == "BASE TABLE"
        assert_frame_equal(_rows(con, "marts.carry_daily"), want)
        assert con.execute("SELECT count(*) FROM marts.carry").fetchone()[0] == ranked

        _as_the_old_release_left_it(con)
        # a full build: CREATE OR REPLACE TABLE cannot replace a view, the build drops it first
        transforms.build_all(con, only=["marts.carry_daily"], now=END)
        assert transforms._kind(con, "marts.carry_daily") == "BASE TABLE"
        assert_frame_equal(_rows(con, "marts.carry_daily"), want)
        assert con.execute("SELECT count(*) FROM marts.carry").fetchone()[0] == ranked
    finally:
        con.close()
