"""BI without lock fights: warehouse.publish() swaps the serving snapshot and the Parquet exports in
atomically. Readers in other processes see the old snapshot or the new one, never an error or a
half-built table, while the pipeline loads, builds and publishes twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from perpwatch import jobs, transforms, warehouse

NOW = datetime(2026, 11, 20, tzinfo=UTC)

# A BI client: one long-lived read-only connection ("hold") or a fresh connection per query ("reconnect").
# Each observation: row counts of a staging table and a mart, plus the mart's distinct grain keys
# (equal to its row count in any complete snapshot) and the number of runs the snapshot knows.
READER = r"""
import json, sys, time, os, duckdb
path, mode, stop = sys.argv[1], sys.argv[2], sys.argv[3]
Q = '''SELECT (SELECT count(*) FROM staging.prices), (SELECT count(*) FROM marts.daily_signals),
              (SELECT count(DISTINCT (date, asset)) FROM marts.daily_signals), (SELECT count(*) FROM meta.runs)'''
held = duckdb.connect(path, read_only=True) if mode == "hold" else None
print(json.dumps({"ready": True}), flush=True)
n = 0
while not os.path.exists(stop) or n < 3:
    try:
        con = held or duckdb.connect(path, read_only=True)
        row = con.execute(Q).fetchone()
        if held is None:
            con.close()
        print(json.dumps({"obs": list(row)}), flush=True)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    n += 1
    time.sleep(0.05)
"""


def counts(db: Path) -> list[int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return list(con.execute("""SELECT (SELECT count(*) FROM staging.prices), (SELECT count(*) FROM marts.daily_signals),
                                          (SELECT count(DISTINCT (date, asset)) FROM marts.daily_signals),
                                          (SELECT count(*) FROM meta.runs)""").fetchone())
    finally:
        con.close()


@pytest.fixture(scope="module")
def sim():
    from perpwatch.simulator.server import start

    s = start(port=0, seed=7, now=NOW)
    old = {k: os.environ.get(k) for k in s.env()}
    os.environ.update(s.env())
    yield s
    s.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def start_reader(serving: Path, mode: str, stop: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", READER, str(serving), mode, str(stop)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert json.loads(p.stdout.readline()) == {"ready": True}, p.stderr.read()
    return p


@pytest.mark.slow
def test_readers_see_old_or_new_snapshot_never_an_error(sim, tmp_path):
    db, serving, exports = tmp_path / "w.duckdb", tmp_path / "serving.duckdb", tmp_path / "exports"
    run = dict(venues=["binance"], assets=["BTC"], db=db, build=True, publish=False)
    jobs.run(kind="backfill", start=NOW - timedelta(days=10), end=NOW - timedelta(days=4), **run)
    warehouse.publish(db=db, serving=serving, exports=exports)
    v1 = counts(serving)
    assert v1 == counts(db) and v1[1] == v1[2] == 7        # BTC signals for 2026-11-10 .. 2026-11-16
    stop = tmp_path / "stop"
    readers = {"hold": start_reader(serving, "hold", stop), "reconnect": start_reader(serving, "reconnect", stop)}
    try:
        time.sleep(0.5)
        # the pipeline loads more while the readers query, then builds and publishes; then publishes again
        jobs.run(kind="backfill", start=NOW - timedelta(days=4), end=NOW, **run)
        with warehouse.session(db) as con:
            transforms.build_all(con)
        warehouse.publish(db=db, serving=serving, exports=exports)
        time.sleep(0.5)
        warehouse.publish(db=db, serving=serving, exports=exports)
        v2 = counts(db)
        time.sleep(0.5)
    finally:
        stop.touch()
        outs = {m: p.communicate(timeout=30) for m, p in readers.items()}
    assert v2[0] > v1[0] and v2[1] == v2[2] == 10   # .. 2026-11-19
    assert counts(serving) == v2
    for mode, (out, err) in outs.items():
        lines = [json.loads(x) for x in out.splitlines() if x.strip()]
        errors = [x["error"] for x in lines if "error" in x]
        assert errors == [], (mode, errors[:3], err[-500:])
        seen = [x["obs"] for x in lines]
        assert len(seen) >= 20, mode
        assert all(o in (v1, v2) for o in seen), (mode, [o for o in seen if o not in (v1, v2)][:3])
        if mode == "hold":
            # a connection kept open keeps reading the file it opened: the old snapshot, consistently
            assert all(o == v1 for o in seen)
        else:
            # a new connection opens whatever snapshot is current: old first, new after the swap, never back
            assert seen[0] == v1 and seen[-1] == v2
            first_new = seen.index(v2)
            assert all(o == v2 for o in seen[first_new:])
    # nothing temporary left beside the snapshot or the exports
    assert sorted(p.name for p in tmp_path.glob(".serving*")) == []
    assert sorted(p.name for p in exports.glob(".*")) == []


def test_parquet_exports_equal_the_marts(sim, tmp_path):
    db, serving, exports = tmp_path / "w.duckdb", tmp_path / "serving.duckdb", tmp_path / "exports"
    jobs.run(kind="backfill", start=NOW - timedelta(days=5), end=NOW, venues=["binance"], assets=["BTC"],
                 db=db, build=True, publish=False)
    written = warehouse.publish(db=db, serving=serving, exports=exports)
    con = warehouse.connect(db, read_only=True)      # TimeZone UTC, like the exports
    try:
        marts = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema='marts' ORDER BY 1").fetchall()]
        assert {"daily_signals", "liquidation_heatmap", "open_interest_by_venue"} <= set(marts)
        assert sorted(p.name for p in exports.iterdir() if p.is_dir()) == marts
        for name in marts:
            assert written[f"marts.{name}"] == str(exports / name)
            mart = con.sql(f"SELECT * FROM marts.{name}").pl()
            files = sorted((exports / name).glob("**/*.parquet"))
            # partitioned by month of the mart's date/ts column (issue 16); marts without one, or empty: one file
            assert [f.relative_to(exports / name).as_posix() for f in files] in (
                ["year=2026/month=11/data.parquet"], ["data.parquet"]), (name, files)
            exp = pl.read_parquet(files, hive_partitioning=False)
            assert exp.columns == mart.columns, name
            assert exp.height == mart.height, name
            assert exp.sort(exp.columns).equals(mart.sort(mart.columns)), name
        n_signals = con.execute("SELECT count(*) FROM marts.daily_signals").fetchone()[0]
    finally:
        con.close()
    assert n_signals == 5       # 2026-11-15 .. 2026-11-19 for BTC
    # the snapshot holds the same tables (views materialised), and is a separate, readable file
    snap = duckdb.connect(str(serving), read_only=True)
    try:
        tables = {f"{s}.{t}" for s, t in snap.execute("SELECT table_schema, table_name FROM information_schema.tables"
                                                      ).fetchall()}
        assert {"staging.prices", "marts.daily_signals", "meta.runs", "quarantine.batches"} <= tables
        assert not any(t.startswith("raw.") for t in tables)    # raw payloads stay in the warehouse
        assert snap.execute("SELECT count(*) FROM marts.daily_signals").fetchone()[0] == n_signals
    finally:
        snap.close()


def test_publish_rewrites_only_what_changed(tmp_path):
    """A daily incremental build changes the newest days: the next publish updates the other serving copy in
    place with those rows only, rewrites only the exports' current month, and the snapshot equals the warehouse."""
    from datetime import date

    from perpwatch.bench.gen_warehouse import append_day, generate

    db, serving, exports = tmp_path / "w.duckdb", tmp_path / "serving.duckdb", tmp_path / "exports"
    end = datetime(2026, 1, 20, tzinfo=UTC)
    with warehouse.session(db) as con:
        generate(con, 40, 2, end=end)            # 2025-12-11 .. 2026-01-19: two export months
        transforms.build_all(con)
    first = warehouse.publish(db=db, serving=serving, exports=exports)
    assert first["serving_mode"] == "full copy" and serving.is_symlink()
    old_year = exports / "daily_signals" / "year=2025" / "month=12" / "data.parquet"
    new_year = exports / "daily_signals" / "year=2026" / "month=01" / "data.parquet"
    mtimes = {p: p.stat().st_mtime_ns for p in (old_year, new_year)}
    second = warehouse.publish(db=db, serving=serving, exports=exports)   # nothing changed: the other copy
    assert second["serving_mode"] == "full copy" and serving.resolve().name.endswith(".b")
    with warehouse.session(db) as con:
        assert append_day(con, end) > 0
        transforms.build_incremental(con, date(2026, 1, 20), now=end + timedelta(hours=30))
    time.sleep(0.01)
    got = warehouse.publish(db=db, serving=serving, exports=exports)
    assert got["serving_mode"] == "changed tables" and serving.resolve().name.endswith(".a")
    changed = dict(x.split(": ", 1) for x in got["serving_changed"].split("; "))
    assert changed["marts.daily_signals"] == "from 2026-01-20" and changed["staging.prices"].endswith(" rows")
    # resumed after the stored day (01-18), and 01-13 left the 7-day hourly window: thinned to one hour
    assert changed["marts.liquidation_heatmap"] == "from 2026-01-13"
    assert "marts.etf_flows_daily" not in changed or changed["marts.etf_flows_daily"] == "full"
    assert old_year.stat().st_mtime_ns == mtimes[old_year]          # December untouched
    assert new_year.stat().st_mtime_ns > mtimes[new_year]
    # the serving copy equals the warehouse, table by table
    with warehouse.session(db) as con:
        con.execute(f"ATTACH '{serving}' AS s (READ_ONLY)")
        tables = con.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                             "WHERE table_catalog = 's' AND table_schema <> 'meta'").fetchall()
        assert len(tables) > 20
        for (t,) in tables:
            sch, name = t.split(".")
            diff = con.execute(f'SELECT count(*) FROM (SELECT * FROM {sch}."{name}" EXCEPT ALL '
                               f'SELECT * FROM s.{sch}."{name}")').fetchone()[0]
            back = con.execute(f'SELECT count(*) FROM (SELECT * FROM s.{sch}."{name}" EXCEPT ALL '
                               f'SELECT * FROM {sch}."{name}")').fetchone()[0]
            assert (diff, back) == (0, 0), t
        assert con.execute("SELECT count(*) FROM s.marts.daily_signals WHERE date = DATE '2026-01-20'").fetchone()[0] == 2
        con.execute("DETACH s")
        # each month's export holds exactly that UTC month's rows, across the turn of the year (a date and a
        # TIMESTAMPTZ mart, and a view over a table); together they are the mart
        assert changed["marts.carry"] == "from 2026-01-20"
        for name, col in (("daily_signals", "date"), ("liquidation_heatmap", "ts"), ("carry", "date")):
            day = f"timezone('UTC', {col})" if col == "ts" else col
            for y, mo in ((2025, 12), (2026, 1)):
                f = exports / name / f"year={y}" / f"month={mo:02d}" / "data.parquet"
                want = con.execute(f"SELECT count(*) FROM marts.{name} WHERE year({day}) = {y} AND month({day}) = {mo}"
                                   ).fetchone()[0]
                assert want > 0 and pl.read_parquet(f).height == want, (name, y, mo)
            whole = pl.read_parquet(sorted((exports / name).glob("year=*/month=*/data.parquet")), hive_partitioning=False)
            mart = con.sql(f"SELECT * FROM marts.{name}").pl()
            assert whole.sort(whole.columns).equals(mart.sort(mart.columns)), name
