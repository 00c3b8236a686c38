"""`perpwatch import`: vendor and staging-shaped files through land -> parse -> validate -> quarantine -> load."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest

from perpwatch import cli, warehouse
from perpwatch.ingest import pipeline
from perpwatch.ingest.importer import ImportRefused, import_file

DATA = Path(__file__).resolve().parent / "fixtures" / "shared_data"


def imp(db, kind, path, **kw):
    return import_file(kind, path, db=db, **kw)


def q(db, sql, *args):
    with warehouse.session(db) as con:
        return con.execute(sql, list(args)).fetchall()


def test_bad_rows_quarantined_by_row_good_rows_load_reimport_is_noop(tmp_path):
    db = tmp_path / "new" / "w.duckdb"          # does not exist yet: the import creates it
    f = tmp_path / "closes.csv"
    f.write_text("date,series,close\n"
                 "2024-01-02,SPX,4742.83\n"          # row 1
                 "2024-13-45,SPX,4704.81\n"          # row 2: unparseable date
                 "2024-01-04,SPX,4688.68\n"          # row 3: same key as row 4, other value
                 "2024-01-04,SPX,4688.69\n"          # row 4
                 "2024-01-05,SPX,-5\n"               # row 5: absurd (suite: close > 0)
                 "2024-01-08,SPX,abc\n"              # row 6: unparseable number
                 "2024-01-09,SPX,4756.50\n")         # row 7
    rep = imp(db, "macro", f)
    assert db.exists()
    assert (rep.rows, rep.loaded, rep.quarantined, rep.status) == (7, 2, 5, "warning")
    bad = {p["row"]: p["reason"] for p in rep.problems if p["level"] == "bad"}
    assert bad[2] == "unparseable date: '2024-13-45' in date"
    assert bad[3].startswith("duplicate key within the file: (date=2024-01-04, series=SPX)") and "row(s) 4" in bad[3]
    assert bad[4].startswith("duplicate key within the file") and "row(s) 3" in bad[4]
    assert bad[5].startswith("absurd close (expected > 0") and bad[5].endswith("-5.0")
    assert bad[6] == "unparseable number: 'abc' in close"
    assert q(db, "SELECT date, series, close, source FROM staging.macro_closes ORDER BY date") == [
        (date(2024, 1, 2), "SPX", 4742.83, "import"), (date(2024, 1, 9), "SPX", 4756.5, "import")]
    batches = q(db, "SELECT dataset, endpoint, rows, message, sample FROM quarantine.batches ORDER BY rows, message")
    assert [(b[0], b[1], b[2]) for b in batches] == [("macro_closes", "file:macro", 1)] * 3 + \
        [("macro_closes", "file:macro", 2)]
    msgs = " | ".join(b[3] for b in batches)
    assert "row 2: unparseable date" in msgs and "row 5: absurd close" in msgs and "row 3: duplicate key" in msgs
    assert {s["row"] for b in batches for s in json.loads(b[4])} == {2, 3, 4, 5, 6}
    runs = q(db, "SELECT kind, status, rows_loaded, rows_quarantined FROM meta.runs")
    assert runs == [("import", "warning", 2, 5)]

    snapshot = q(db, "SELECT * FROM staging.macro_closes ORDER BY date")
    again = imp(db, "macro", f)
    assert again.reused_payload and (again.loaded, again.duplicate, again.quarantined) == (0, 2, 5)
    assert q(db, "SELECT * FROM staging.macro_closes ORDER BY date") == snapshot
    assert q(db, "SELECT count(*) FROM raw.payloads") == [(1,)]
    assert q(db, "SELECT count(*) FROM quarantine.batches") == [(4,)]
    assert q(db, "SELECT count(*) FROM meta.runs WHERE kind = 'import'") == [(2,)]


def test_real_etf_totals_csv_blank_line_and_no_trailing_newline(tmp_path):
    db = tmp_path / "w.duckdb"
    rep = imp(db, "etf-flows", DATA / "btc_etf_flows.head40.csv")
    assert (rep.rows, rep.loaded, rep.quarantined) == (40, 40, 0)
    assert q(db, "SELECT count(*), round(sum(flow_usd) / 1e6, 1), min(date), max(date) FROM staging.etf_flows "
                 "WHERE ticker = 'TOTAL'") == [(40, 9594.7, date(2024, 1, 11), date(2024, 3, 8))]
    assert q(db, "SELECT flow_usd FROM staging.etf_flows WHERE date = '2024-01-16'") == [(-52_700_000.0,)]
    with warehouse.session(db) as con:
        from perpwatch.transforms import build_all
        build_all(con, only=["marts.etf_flows_daily"])
        last = con.execute("SELECT cumulative_flow_usd, n_tickers, total_basis FROM marts.etf_flows_daily "
                           "ORDER BY date DESC LIMIT 1").fetchone()
    assert last[0] == pytest.approx(9_594_700_000.0) and last[1:] == (0, "reported_total")


def test_real_fred_sp500_slice(tmp_path):
    db = tmp_path / "w.duckdb"
    rep = imp(db, "macro", DATA / "fred_sp500.head40.csv")
    assert (rep.rows, rep.loaded) == (38, 38)                      # 2 holidays are blank: skipped, not 0
    assert any("2 missing-value rows" in p["reason"] for p in rep.problems)
    assert q(db, "SELECT close, source FROM staging.macro_closes WHERE date = '2016-02-12' AND series = 'SPX'") \
        == [(1864.78, "fred:SP500")]
    assert q(db, "SELECT count(*) FROM staging.macro_closes WHERE close = 0 OR date = '2016-02-15'") == [(0,)]


def test_funding_export_local_time_detected_and_derived_columns(tmp_path):
    db = tmp_path / "w.duckdb"
    rep = imp(db, "funding", DATA / "binance_BTC-USDT.head30.csv")     # venue from the file name
    assert rep.loaded == 30 and any("UTC+3" in n for n in rep.notes)
    rows = q(db, "SELECT venue, instrument, asset, funding_time, funding_rate, interval_hours, rate_8h, "
                 "rate_annualized FROM staging.funding_rates ORDER BY funding_time LIMIT 2")
    assert rows[0][:6] == ("binance", "BTCUSDT", "BTC", datetime(2020, 1, 1, 0, tzinfo=UTC), -0.00012359, 8.0)
    assert rows[0][6] == pytest.approx(-0.00012359) and rows[0][7] == pytest.approx(-0.00012359 * 3 * 365)
    assert rows[1][3] == datetime(2020, 1, 1, 8, tzinfo=UTC)
    # 2020-01-02 03:00:00.002 local -> 00:00 UTC (ms jitter floored)
    assert q(db, "SELECT count(*) FROM staging.funding_rates WHERE hour(funding_time) NOT IN (0, 8, 16)") == [(0,)]
    explicit = tmp_path / "w2.duckdb"
    imp(explicit, "funding", DATA / "binance_BTC-USDT.head30.csv", tz_offset="0")
    assert q(explicit, "SELECT min(funding_time) FROM staging.funding_rates") == [(datetime(2020, 1, 1, 3, tzinfo=UTC),)]


def test_daily_prices_feed_reference_close_and_oi_usd_derived(tmp_path):
    db = tmp_path / "w.duckdb"
    rep = imp(db, "prices", DATA / "btc_daily.2024-11-12.csv")          # asset from the file name
    assert rep.loaded == 61
    assert q(db, "SELECT venue, instrument, kind, interval, open, high, low, close, volume_usd FROM staging.prices "
                 "WHERE ts = '2024-12-31 00:00:00+00'") == [
        ("import", "BTCUSD", "spot", "1d", 93429.203125, 93429.203125, 93429.203125, 93429.203125, 43625106843.0)]
    # an hourly perp bar and an OI snapshot without USD value, both staging-shaped (CSV and Parquet)
    bars = tmp_path / "bars.csv"
    bars.write_text("venue,instrument,kind,interval,ts,open,high,low,close\n"
                    "binance,BTCUSDT,perp,1h,2024-12-31T23:00:00Z,93000,93600,92900,93500\n")
    imp(db, "prices", bars)
    oi = tmp_path / "oi.parquet"
    pl.DataFrame({"venue": ["binance"], "instrument": ["BTCUSDT"],
                  "ts": [datetime(2024, 12, 31, 23, 0, tzinfo=UTC)], "oi_base": [80_000.0]}).write_parquet(oi)
    rep = imp(db, "open-interest", oi)
    assert rep.loaded == 1
    # valued at the price AT the snapshot: no bar ends at 23:00 here, so the open of the bar starting at 23:00
    assert q(db, "SELECT asset, oi_base, oi_usd FROM staging.open_interest") == [("BTC", 80_000.0, 80_000.0 * 93000)]
    with warehouse.session(db) as con:
        from perpwatch.transforms import build_all
        build_all(con, only=["marts.reference_close"])
        got = con.execute("SELECT date, close_usd, source_venue FROM marts.reference_close WHERE asset = 'BTC' "
                          "AND date IN ('2024-12-30', '2024-12-31') ORDER BY date").fetchall()
    # the imported daily series covers the day no venue has; the hourly perp wins where it exists
    assert got == [(date(2024, 12, 30), 92643.2109375, "import"), (date(2024, 12, 31), 93500.0, "binance")]


def test_vendor_json_and_html_etf_files(tmp_path):
    db = tmp_path / "w.duckdb"
    src = Path(__file__).resolve().parent / "fixtures" / "etf_flows"
    rep = imp(db, "etf-flows", src / "farside_btc_cells.scraped_excerpt.json")
    assert (rep.loaded, rep.quarantined) == (110, 0)
    html = imp(db, "etf-flows", src / "farside_btc_table.SHAPE_ONLY.htm")
    assert (html.loaded, html.duplicate) == (0, 20)                  # same days, same values: no change
    alpine = imp(db, "etf-flows", src / "btabiado_alpine-data_btc_flows.excerpt.csv")
    bad = [p for p in alpine.problems if p["level"] == "bad"]
    assert [(p["row"], p["reason"]) for p in bad] == [
        (1, "absurd date (before the US spot bitcoin ETFs launched on 2024-01-11): 2024-01-01")]
    assert q(db, "SELECT flow_usd, issuer FROM staging.etf_flows WHERE date = '2024-03-12' AND ticker = 'IBIT'") \
        == [(849_000_000.0, "BlackRock")]
    assert q(db, "SELECT count(*) FROM staging.etf_flows WHERE date IN ('2024-01-15', '2024-11-28')") == [(0,)]


def test_refuses_non_regular_files_and_oversize(tmp_path):
    db = tmp_path / "w.duckdb"
    with pytest.raises(ImportRefused, match="a directory"):
        imp(db, "macro", tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ImportRefused, match="not a regular file"):
        imp(db, "macro", fifo)
    big = tmp_path / "big.csv"
    shutil.copy(DATA / "fred_sp500.head40.csv", big)
    with pytest.raises(ImportRefused, match="above the import cap"):
        imp(db, "macro", big, max_mb=0.0001)
    with pytest.raises(ValueError, match="unknown import kind"):
        imp(db, "bananas", big)
    assert not db.exists()


def test_cli_import_and_replay_reparses_imports(tmp_path, capsys):
    db = tmp_path / "w.duckdb"
    assert cli.main(["import", "macro", str(DATA / "fred_nasdaqcom.head15.csv"), "--db", str(db), "--no-build"]) == 0
    out = capsys.readouterr().out
    assert "FRED CSV" in out and "loaded 14" in out
    assert cli.main(["import", "prices", str(DATA / "btc_daily.2024-11-12.csv"), "--db", str(db), "--no-build"]) == 0
    assert cli.main(["import", "macro", str(tmp_path), "--db", str(db)]) == 2
    before = q(db, "SELECT * EXCLUDE (ingested_at) FROM staging.macro_closes ORDER BY date")
    prices = q(db, "SELECT count(*), sum(close) FROM staging.prices")
    rep = pipeline.replay(db)
    assert rep.status == "success"
    assert q(db, "SELECT * EXCLUDE (ingested_at) FROM staging.macro_closes ORDER BY date") == before
    assert q(db, "SELECT count(*), sum(close) FROM staging.prices") == prices
    assert before[0][:5] == (date(2019, 2, 8), "NDX", 7298.2, "fred:NASDAQCOM", 1)


def test_rows_failing_any_gx_expectation_quarantined_by_row_and_replay_drops_the_same(tmp_path):
    """The instrument-name regex is an expectation the old polars re-implementation skipped: GX's
    own unexpected_index_list now names the row. A row failing two expectations is one problem."""
    db = tmp_path / "w.duckdb"
    f = tmp_path / "instruments.csv"
    f.write_text("venue,instrument,asset,quote,settle,margin,kind,contract_size,contract_unit,status\n"
                 "binance,BTCUSDT,BTC,USDT,USDT,linear,perp,1,base,trading\n"           # row 1
                 "binance,BTC/USDT:PERP,BTC,USDT,USDT,linear,perp,1,base,trading\n"     # row 2: '/' fails the regex
                 "binance,ETHUSDT,ETH,USDT,USDT,linear,perp,1,base,trading\n"           # row 3
                 "binance,SOL USDT,SOL,USDT,USDT,linear,perp,-1,base,trading\n")        # row 4: regex and size > 0
    rep = imp(db, "instruments", f)
    assert (rep.rows, rep.loaded, rep.quarantined, rep.status) == (4, 2, 2, "warning")
    bad = {p["row"]: p["reason"] for p in rep.problems if p["level"] == "bad"}
    assert bad == {
        2: r"instrument does not match ^[A-Za-z0-9_:\-.]{1,40}$ [expect_column_values_to_match_regex]: "
           "'BTC/USDT:PERP'",
        4: "absurd contract_size (expected > 0) [expect_column_values_to_be_between]: -1.0; "
           r"instrument does not match ^[A-Za-z0-9_:\-.]{1,40}$ [expect_column_values_to_match_regex]: 'SOL USDT'"}
    assert q(db, "SELECT instrument FROM staging.instruments ORDER BY instrument") == [("BTCUSDT",), ("ETHUSDT",)]
    batches = q(db, "SELECT rows, message, sample FROM quarantine.batches ORDER BY message")
    assert [(b[0], [s["row"] for s in json.loads(b[2])]) for b in batches] == [(1, [4]), (1, [2])]
    assert "row 2: instrument does not match" in batches[1][1] and "row 4: absurd contract_size" in batches[0][1]

    rep = pipeline.replay(db)                  # the same rows fail again, one validation group per row
    assert q(db, "SELECT instrument FROM staging.instruments ORDER BY instrument") == [("BTCUSDT",), ("ETHUSDT",)]
    assert rep.stat("import", "instruments").quarantined == 2 and rep.stat("import", "instruments").loaded == 2
