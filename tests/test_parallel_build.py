"""build_all runs independent marts on two connections at once: the marts equal a one-at-a-time build's, every
mart starts only after the marts it reads committed, and the change records are numbered in commit order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from perpwatch import transforms, warehouse
from perpwatch.bench.gen_warehouse import generate

END = datetime(2026, 11, 20, tzinfo=UTC)
NOW = END   # the build runs as the last generated day (END - 1 day) ends: that day is not complete yet


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    out = {}
    mp = pytest.MonkeyPatch()
    try:
        for workers in (1, 2):
            mp.setenv("PERPWATCH_BUILD_WORKERS", str(workers))
            con = warehouse.connect(root / f"w{workers}.duckdb")
            generate(con, 45, 3, end=END)
            assert transforms.build_workers(con) == workers
            out[workers] = (con, transforms.build_all(con, now=NOW))
    finally:
        mp.undo()
    yield out
    for con, _ in out.values():
        con.close()


def _table(con: duckdb.DuckDBPyConnection, name: str) -> pl.DataFrame:
    df = con.execute(f"SELECT * FROM {name}").pl()
    return df.sort(df.columns, nulls_last=True)


def test_parallel_build_equals_one_at_a_time(built):
    (one, t1), (two, t2) = built[1], built[2]
    assert list(t1) == list(t2)                          # every mart built, reported in dependency order
    for name in t1:
        a, b = _table(one, name), _table(two, name)
        assert a.height > 0 or name.startswith(("marts.etf", "marts.treasury", "marts.cross_market")), name
        assert_frame_equal(a, b, check_exact=False, rel_tol=1e-9, abs_tol=1e-12, check_column_order=True)
    # the build's clock reached the worker threads: at the injected NOW only the last day is incomplete (with
    # the wall clock every day would be)
    got = two.execute("SELECT date, bool_and(complete), bool_or(complete) FROM marts.daily_signals GROUP BY date "
                      "ORDER BY date DESC LIMIT 2").fetchall()
    assert got[0][0] == (END - timedelta(days=1)).date() and got[0][2] is False
    assert got[1][1] is True


def test_changes_are_numbered_in_commit_order_after_their_inputs(built):
    con, timings = built[2]
    rows = con.execute("SELECT seq, table_name FROM meta.mart_changes ORDER BY seq").fetchall()
    seqs = [r[0] for r in rows]
    assert seqs == list(range(1, len(timings) + 1))      # one record per mart, no number twice, no gap
    at = {t: s for s, t in rows}
    assert set(at) == set(timings)
    models = transforms.discover()
    for name in timings:                                  # a mart commits after every mart it reads
        for i in models[name].inputs & set(timings):
            assert at[i] < at[name], (i, name)


def test_heaviest_chain_first():
    models = transforms.discover()
    names = transforms.order(models)
    w = transforms._critical_path(names, models)
    # the heatmap's chain (heatmap -> clusters -> daily_signals -> signal_performance) outweighs a SQL mart's
    assert w["marts.liquidation_heatmap"] > w["marts.reference_close"]
    assert w["marts.signal_performance"] == 3                 # a Python mart nothing reads
    for name in names:
        for i in models[name].inputs:
            if i in w:
                assert w[i] > w[name]


def test_a_failing_mart_fails_the_build(tmp_path, monkeypatch):
    monkeypatch.setenv("PERPWATCH_BUILD_WORKERS", "2")
    con = warehouse.connect(tmp_path / "w.duckdb")
    generate(con, 10, 1, end=END)
    from perpwatch.transforms.marts import signal_performance

    def boom(_con):
        raise RuntimeError("signal_performance exploded")

    monkeypatch.setattr(signal_performance, "build", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        transforms.build_all(con, now=NOW)
    # what committed before it stays; the failed mart left no table and no change record
    assert con.execute("SELECT count(*) FROM marts.reference_close").fetchone()[0] > 0
    assert con.execute("SELECT count(*) FROM meta.mart_changes WHERE table_name = 'marts.signal_performance'"
                       ).fetchone()[0] == 0
    con.close()
