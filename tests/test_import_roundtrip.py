"""`perpwatch import` takes back what DuckDB exports: `COPY staging.<t> TO 'x.csv'` (times printed like
`2026-11-20 00:00:00+00`) and `TO 'x.parquet'` of every staging table load into an empty warehouse with
the same rows (provenance columns raw_id / ingested_at aside)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest

from perpwatch import jobs, warehouse
from perpwatch.core import tables
from perpwatch.ingest import importer
from perpwatch.simulator.server import start
from perpwatch.sources import imports

NOW = datetime(2026, 11, 20, tzinfo=UTC)
KIND = {t: k for k, t in imports.KINDS.items()}


@pytest.fixture(scope="module")
def source_db(tmp_path_factory):
    """Every staging table filled from the simulator: two days of every venue and provider for BTC, plus
    three seconds of the liquidation websockets."""
    db = tmp_path_factory.mktemp("rt") / "src.duckdb"
    sim = start(port=0, seed=7, now=NOW)
    old = {k: os.environ.get(k) for k in sim.env()}
    os.environ.update(sim.env())
    try:
        r = jobs.run(kind="backfill", start=NOW - timedelta(days=2), end=NOW, assets=["BTC"], db=db, build=False)
        assert r.status == "success", r.errors + r.warnings
        from perpwatch.ingest.collector import collect
        cap = collect(db=db, seconds=3, flush_every_s=1, progress=lambda _m: None)
        assert cap.loaded > 0
    finally:
        sim.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return db


def rows(db, table: str) -> pl.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        df = con.sql(f"SELECT * EXCLUDE (raw_id, ingested_at) FROM staging.{table}").pl()
    finally:
        con.close()
    return df.sort(df.columns, nulls_last=True)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("table", [t.name for t in tables.STAGING])
def test_duckdb_export_imports_unchanged(source_db, tmp_path, table, fmt):
    want = rows(source_db, table)
    assert want.height > 0, table
    out = tmp_path / f"{table}.{fmt}"
    con = duckdb.connect(str(source_db), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"COPY staging.{table} TO '{out}' (FORMAT {fmt})")
    finally:
        con.close()
    if fmt == "csv" and any(isinstance(t, pl.Datetime) for t in want.schema.values()):
        assert "+00" in out.read_text().splitlines()[1]        # DuckDB's own TIMESTAMPTZ text form
    db = tmp_path / "empty.duckdb"
    rep = importer.import_file(KIND[table], str(out), db=db)
    assert rep.status == "success", (rep.errors, rep.problems[:5])
    assert (rep.loaded, rep.quarantined) == (want.height, 0)
    got = rows(db, table)
    assert got.schema == want.schema
    assert got.equals(want), table
    with warehouse.session(db, read_only=True) as c:
        assert c.execute("SELECT status FROM meta.runs").fetchone()[0] == "success"


def test_every_iso_8601_form_a_database_writes():
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    forms = {
        "2020-01-01 00:00:00+00": t0, "2020-01-01 00:00:00+00:00": t0, "2020-01-01T00:00:00Z": t0,
        "2020-01-01T00:00:00z": t0, "2020-01-01 00:00:00 UTC": t0, "2020-01-01T00:00:00+0000": t0,
        "2020-01-01 03:00:00+03": t0, "2019-12-31 19:00:00-05:00": t0, "2020-01-01T00:00:00.250+00": t0 + timedelta(milliseconds=250),
        "2020-01-01 00:00:00.5Z": t0 + timedelta(milliseconds=500), "2020-01-01 00:00": t0,
        "2020-01-01T00:00:00": t0, "2020-01-01": t0, " 2020-01-01 00:00:00+00 ": t0,
    }
    vals, naive = imports.conv_time(pl.Series(list(forms)))
    assert vals.to_list() == list(forms.values())
    # no offset = UTC, flagged so the importer can say so; every offset form is aware
    assert naive.to_list() == [False] * 10 + [True] * 3 + [False]
    bad, _ = imports.conv_time(pl.Series(["2020-13-01 00:00:00+00", "yesterday"]))
    assert bad.to_list() == [None, None]          # still unparseable: quarantined with row and reason
    assert imports.conv_date(pl.Series(["2020-01-01", "2020-01-01 00:00:00+00"])).to_list() == [t0.date()] * 2


def test_naive_times_are_utc_with_a_note(tmp_path):
    f = tmp_path / "oi.csv"
    f.write_text("venue,instrument,ts,oi_base,oi_usd\nbinance,BTCUSDT,2026-11-19 10:00:00,100,9000000\n"
                 "binance,BTCUSDT,2026-11-19T11:00:00+00,101,9090000\n")
    rep = importer.import_file("open-interest", str(f), db=tmp_path / "w.duckdb")
    assert rep.loaded == 2, (rep.errors, rep.problems)
    assert any(n.startswith("ts: 1 value(s) without a UTC offset read as UTC") for n in rep.notes), rep.notes
    with warehouse.session(tmp_path / "w.duckdb", read_only=True) as con:
        assert [r[0] for r in con.execute("SELECT ts FROM staging.open_interest ORDER BY ts").fetchall()] == \
            [datetime(2026, 11, 19, 10, tzinfo=UTC), datetime(2026, 11, 19, 11, tzinfo=UTC)]
