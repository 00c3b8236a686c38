"""DuckLake backend on a real PostgreSQL (127.0.0.1:5432, trust auth): one random database per test,
dropped at the end. Skipped with a reason when PostgreSQL or the extension packages are missing."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest

from perpwatch import warehouse
from perpwatch.warehouse import lake, ops
from tests.pglake import lake_database, unavailable

_why = unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture
def lake_url(tmp_path, monkeypatch):
    yield from lake_database(tmp_path, monkeypatch, "pw_test")


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def funding_batch(lo: int, hi: int, rate: float = 1e-4) -> pl.DataFrame:
    """Hours lo..hi-1 of one instrument's funding: key (venue, instrument, funding_time)."""
    n = hi - lo
    return pl.DataFrame({
        "venue": ["binance"] * n, "instrument": ["BTCUSDT"] * n,
        "funding_time": [T0 + timedelta(hours=h) for h in range(lo, hi)],
        "asset": ["BTC"] * n, "funding_rate": [rate * (h + 1) for h in range(lo, hi)],
        "interval_hours": [8.0] * n, "raw_id": [h for h in range(lo, hi)],
    }).with_columns(pl.col("funding_time").cast(pl.Datetime("us", "UTC")))


def _load_windows(url: str, data_path: str, windows: list[tuple[int, int]], tag: str) -> None:
    """Worker process: each window upserted with its watermark in one retried transaction."""
    os.environ["PERPWATCH_DATA_PATH"] = data_path
    con = warehouse.connect(url)
    for lo, hi in windows:
        df = funding_batch(lo, hi)

        def write(df=df):
            res = warehouse.upsert(con, "staging.funding_rates", df)
            warehouse.advance_watermark(con, "binance", "funding", "BTCUSDT", df["funding_time"].max())
            return res
        warehouse.write(con, write, table="staging.funding_rates", batch=f"{tag}:{lo}-{hi}")
    con.close()


def _check_consistent(con, expect_rows: int | None = None) -> None:
    n, distinct, top = con.execute(
        "SELECT count(*), count(DISTINCT (venue, instrument, funding_time)), max(funding_time) "
        "FROM staging.funding_rates").fetchone()
    assert n == distinct, f"{n - distinct} duplicate keys"
    mark = warehouse.get_watermark(con, "binance", "funding", "BTCUSDT")
    assert mark is None or (top is not None and mark <= top), "watermark ahead of its data"
    if expect_rows is not None:
        assert n == expect_rows


def test_schema_tables_columns_comments_match_the_file(lake_url, tmp_path):
    f = warehouse.connect(tmp_path / "w.duckdb")
    lk = warehouse.connect(lake_url)
    q = ("SELECT schema_name, table_name, column_name, data_type, comment FROM duckdb_columns() "
         "WHERE database_name = current_database() AND schema_name IN ('raw','staging','marts','meta','quarantine') "
         "AND table_name NOT IN ('write_tokens', 'maintenance', 'leases') ORDER BY ALL")
    file_cols, lake_cols = f.execute(q).fetchall(), lk.execute(q).fetchall()
    assert len(file_cols) > 100 and file_cols == lake_cols
    tq = ("SELECT schema_name, table_name, comment FROM duckdb_tables() WHERE database_name = current_database() "
          "AND table_name NOT IN ('write_tokens', 'maintenance', 'leases') ORDER BY ALL")
    assert f.execute(tq).fetchall() == lk.execute(tq).fetchall()
    # raw landing works on the lake: ids from the PostgreSQL sequence, body round-trips
    a = warehouse.land(lk, "binance", "/fapi/v1/time", {"x": 1}, 200, b'{"serverTime": 1}')
    b = warehouse.land(lk, "binance", "/fapi/v1/time", {"x": 2}, 200, b'{"serverTime": 2}')
    assert b == a + 1
    body, enc = lk.execute("SELECT body, encoding FROM raw.payloads WHERE raw_id = ?", [b]).fetchone()
    assert warehouse.payload_body(body, enc) == b'{"serverTime": 2}'
    f.close()
    lk.close()


def test_two_processes_overlapping_windows_each_key_once(lake_url, tmp_path):
    warehouse.connect(lake_url).close()        # initialise the catalog once, then attach from workers
    ctx = mp.get_context("spawn")
    # A loads hours 0..99 in windows of 10, B hours 50..149 in windows of 10: overlap 50..99
    a = ctx.Process(target=_load_windows, args=(lake_url, str(tmp_path / "lakedata"),
                                                [(h, h + 10) for h in range(0, 100, 10)], "A"))
    b = ctx.Process(target=_load_windows, args=(lake_url, str(tmp_path / "lakedata"),
                                                [(h, h + 10) for h in range(50, 150, 10)], "B"))
    a.start()
    b.start()
    a.join(180)
    b.join(180)
    assert a.exitcode == 0 and b.exitcode == 0
    con = warehouse.connect(lake_url, read_only=True)
    _check_consistent(con, expect_rows=150)
    assert warehouse.get_watermark(con, "binance", "funding", "BTCUSDT") == T0 + timedelta(hours=149)
    assert con.execute("SELECT sum(funding_rate) FROM staging.funding_rates").fetchone()[0] == \
        pytest.approx(1e-4 * sum(range(1, 151)), rel=1e-12)
    con.close()


def test_conflict_retries_then_names_table_and_batch(lake_url):
    a, b = warehouse.connect(lake_url), warehouse.connect(lake_url)
    calls = []

    def write():
        calls.append(1)
        warehouse.upsert(a, "staging.funding_rates", funding_batch(0, 3))
        # another writer commits to the same table meanwhile: this commit must conflict
        warehouse.write(b, lambda: warehouse.upsert(b, "staging.funding_rates", funding_batch(len(calls) * 10,
                                                                                             len(calls) * 10 + 1)),
                        table="staging.funding_rates", batch="other")
    with pytest.raises(lake.WriteConflict, match=r"staging\.funding_rates: batch run-1/binance still conflicted"):
        warehouse.write(a, write, table="staging.funding_rates", batch="run-1/binance", attempts=3)
    assert len(calls) == 3
    n = b.execute("SELECT count(*) FROM staging.funding_rates").fetchone()[0]
    assert n == 3            # only the three single-row commits of the other writer landed
    a.close()
    b.close()


VICTIM = [(h, h + 25) for h in range(0, 400, 20)]     # overlapping windows covering hours 0..404


def _kill_target(url: str, data_path: str) -> None:
    _load_windows(url, data_path, VICTIM, "victim")


def test_sigkill_mid_commit_leaves_the_lake_consistent_and_a_rerun_heals(lake_url, tmp_path):
    warehouse.connect(lake_url).close()
    ctx = mp.get_context("spawn")
    data = str(tmp_path / "lakedata")
    p = ctx.Process(target=_kill_target, args=(lake_url, data))
    p.start()
    con = warehouse.connect(lake_url, read_only=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:     # kill once some batches committed, mid-stream
        n = con.execute("SELECT count(*) FROM staging.funding_rates").fetchone()[0]
        if n >= 100:
            break
        time.sleep(0.05)
    con.close()
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    con = warehouse.connect(lake_url, read_only=True)
    _check_consistent(con)
    n = con.execute("SELECT count(*) FROM staging.funding_rates").fetchone()[0]
    assert 100 <= n < 405
    con.close()
    _load_windows(lake_url, data, VICTIM, "rerun")   # heal: the same windows again
    con = warehouse.connect(lake_url, read_only=True)
    _check_consistent(con, expect_rows=405)
    assert warehouse.get_watermark(con, "binance", "funding", "BTCUSDT") == T0 + timedelta(hours=404)
    con.close()


def test_time_travel_query_as_of_the_snapshot_before_a_load(lake_url, capsys):
    from perpwatch.cli import main

    con = warehouse.connect(lake_url)
    warehouse.write(con, lambda: warehouse.upsert(con, "staging.funding_rates", funding_batch(0, 2)),
                    table="staging.funding_rates", batch="first")
    before = con.execute(f"SELECT max(snapshot_id) FROM {lake.ALIAS}.snapshots()").fetchone()[0]
    warehouse.write(con, lambda: warehouse.upsert(con, "staging.funding_rates", funding_batch(1, 4, rate=2e-4)),
                    table="staging.funding_rates", batch="second")
    con.close()
    sql = "SELECT funding_rate FROM staging.funding_rates ORDER BY funding_time"
    assert main(["query", sql, "--db", lake_url, "--as-of", str(before), "--format", "json"]) == 0
    assert [r["funding_rate"] for r in json.loads(capsys.readouterr().out)] == [1e-4, 2e-4]
    assert main(["query", sql, "--db", lake_url, "--format", "csv"]) == 0
    # hour 0 kept from the first load; hours 1..3 from the second (rate 2e-4 x (h + 1))
    assert capsys.readouterr().out == f"funding_rate\n{1e-4}\n{2e-4 * 2}\n{2e-4 * 3}\n{2e-4 * 4}\n"
    # the same command on the DuckDB file; --as-of is refused there
    with pytest.raises(ValueError, match="DuckLake"):
        ops.query(sql, db=None, as_of=1)


def test_migrate_round_trip_and_rerun(lake_url, tmp_path, capsys):
    from perpwatch.cli import main

    db = tmp_path / "w.duckdb"
    con = warehouse.connect(db)
    warehouse.land(con, "binance", "/fapi/v1/fundingRate", {"symbol": "BTCUSDT"}, 200, b"[]")
    with warehouse.transaction(con):
        warehouse.upsert(con, "staging.funding_rates", funding_batch(0, 48))
        warehouse.advance_watermark(con, "binance", "funding", "BTCUSDT", T0 + timedelta(hours=47))
    warehouse.start_run(con, "r1", "backfill")
    con.execute("CREATE TABLE marts.daily_x AS SELECT date_trunc('day', funding_time)::DATE AS date, "
                "sum(funding_rate) AS s FROM staging.funding_rates GROUP BY 1")
    con.close()
    assert main(["migrate", "--db", str(db), "--to", lake_url]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["migrate", "--db", str(db), "--to", lake_url]) == 0     # rerun: same result, no doubles
    out = tmp_path / "exp"
    out.mkdir()
    src = duckdb.connect(str(db), read_only=True)
    lk = warehouse.connect(lake_url, read_only=True)
    for t in ("raw.payloads", "staging.funding_rates", "meta.watermarks", "meta.runs", "marts.daily_x"):
        a, b = out / f"f_{t}.csv", out / f"l_{t}.csv"
        src.execute(f"COPY (SELECT * FROM {t} ORDER BY ALL) TO '{a}'")
        lk.execute(f"COPY (SELECT * FROM {t} ORDER BY ALL) TO '{b}'")
        assert a.read_bytes() == b.read_bytes(), t
    assert lk.execute("SELECT count(*) FROM staging.funding_rates").fetchone()[0] == 48
    src.close()
    lk.close()
    # new payloads continue after the migrated ids
    rw = warehouse.connect(lake_url)
    assert warehouse.land(rw, "binance", "/x", {}, 200, b"{}") == 2
    rw.close()


def test_maintenance_compacts_and_status_reports_it(lake_url, capsys):
    from perpwatch.cli import main

    con = warehouse.connect(lake_url)
    con.execute(f"CALL {lake.ALIAS}.set_option('data_inlining_row_limit', 0)")   # every commit writes a file
    for h in range(0, 60, 10):
        warehouse.write(con, lambda h=h: warehouse.upsert(con, "staging.funding_rates", funding_batch(h, h + 10)),
                        table="staging.funding_rates", batch=str(h))
    before = ops._file_count(con)
    con.close()
    assert before >= 6
    res = ops.maintain(lake_url, retention=0)
    assert res["files"] < before and res["snapshots_expired"] > 0
    con = warehouse.connect(lake_url, read_only=True)
    _check_consistent(con, expect_rows=60)
    con.close()
    assert main(["status", "--db", lake_url]) == 0
    text = capsys.readouterr().out
    assert "DuckLake catalog:" in text and f"{res['files']} data files" in text and "last maintenance: 20" in text


def test_incremental_heatmap_on_the_lake_equals_a_full_rebuild_on_the_file(lake_url):
    """The heatmap's daily path (range read of the stored levels, DELETE ... USING of the dead ones, born ones
    inserted, scales rewritten) runs on DuckLake as on the file and ends where a full rebuild does."""
    import numpy as np

    from perpwatch.transforms import heatmap as hm
    from tests.test_heatmap import T0 as H0
    from tests.test_heatmap import warehouse as file_warehouse
    from tests.test_heatmap import write_mart

    src = file_warehouse(24 * 12)
    con = warehouse.connect(lake_url)
    try:
        prev = H0 - timedelta(days=1)
        for i, cut in enumerate([H0 + timedelta(days=d) for d in (8, 9, 10, 12)]):
            for t in ("prices", "open_interest"):
                con.register("__src", src.execute(f"SELECT * FROM staging.{t} WHERE ts >= ? AND ts < ?",
                                                  [prev, cut]).arrow())
                con.execute(f"INSERT INTO staging.{t} SELECT * FROM __src")
                con.unregister("__src")
            if i == 0:
                rows = hm.build_heatmap(con, save=True)   # noqa: F841 (read by DuckDB)
                con.execute(f"CREATE TABLE {hm.TABLE} AS SELECT * FROM rows")
            else:
                assert hm.update_heatmap(con, prev.date())[1].startswith("resumed")
            prev = cut
        write_mart(src)
        q = f"SELECT asset, ts, side, price_low, est_liquidation_usd FROM {hm.TABLE} ORDER BY asset, ts, side, price_low"
        a, b = con.execute(q).pl(), src.execute(q).pl()
        lv = ("SELECT l.asset, l.side, l.price, l.amount * p.scale AS usd FROM meta.heatmap_levels l "
              "JOIN meta.heatmap_progress p USING (asset) ORDER BY 1, 2, 3")
        x, y = con.execute(lv).pl(), src.execute(lv).pl()
    finally:
        con.close()
    assert a.height == b.height > 0 and a["price_low"].equals(b["price_low"])
    np.testing.assert_allclose(a["est_liquidation_usd"].to_numpy(), b["est_liquidation_usd"].to_numpy(), rtol=1e-9)
    assert x.height == y.height > 0 and x["price"].equals(y["price"])
    np.testing.assert_allclose(x["usd"].to_numpy(), y["usd"].to_numpy(), rtol=1e-9)
