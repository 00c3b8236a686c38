"""End to end against the simulator: counts, idempotency, replay, bad input, no look-ahead."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest

from perpwatch import jobs, transforms, warehouse
from perpwatch.ingest import pipeline
from perpwatch.simulator.server import start
from tests.faultproxy import FaultProxy

NOW = datetime(2026, 11, 20, tzinfo=UTC)
START = NOW - timedelta(days=3)
ASSETS = ["BTC", "SOL"]


@pytest.fixture(scope="module")
def sim():
    s = start(port=0, seed=7, now=NOW)
    yield s
    s.stop()


@pytest.fixture
def env(sim, monkeypatch):
    for k, v in sim.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PERPWATCH_PROVIDERS", "")
    return sim


def counts(db) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM staging.{t}").fetchone()[0]
                for t in ("instruments", "prices", "open_interest", "funding_rates", "long_short_ratio")}
    finally:
        con.close()


def table(db, name: str, drop=("ingested_at", "raw_id", "as_of")) -> pl.DataFrame:
    con = duckdb.connect(str(db), read_only=True)
    try:
        df = con.sql(f"SELECT * FROM {name}").pl()
    finally:
        con.close()
    df = df.drop([c for c in drop if c in df.columns])
    return df.sort(df.columns)


def backfill(db, **kw):
    return jobs.run(kind="backfill", start=START, end=NOW, venues=["binance"], assets=ASSETS, db=db, **kw)


def test_backfill_counts_rerun_and_replay(env, tmp_path):
    db = tmp_path / "w.duckdb"
    r1 = backfill(db)
    assert r1.status == "success", r1.errors + r1.warnings
    c1 = counts(db)
    # 72 closed hourly bars per (instrument, kind): perp, mark, index, spot for BTCUSDT and SOLUSDT,
    # plus two BTC quarterlies; OI and ratios are snapshots at both window edges (73 hours);
    # BTC funds every 8h (9 settlements in 3 days), SOL every 4h in the simulator (18).
    assert c1["prices"] == 72 * 4 * 2 + 72 * 2
    assert c1["open_interest"] == 73 * 2
    assert c1["long_short_ratio"] == 73 * 3 * 2
    assert c1["funding_rates"] == 9 + 18
    t = r1.totals()
    assert t["fetched"] == t["loaded"] + t["quarantined"] + t["duplicate"]
    signals1 = table(db, "marts.daily_signals")
    assert signals1.height == 3 * 2        # 3 full days x 2 assets (the OI row at NOW adds no price day)
    sol = table(db, "staging.funding_rates").filter(pl.col("instrument") == "SOLUSDT")
    assert set(sol["interval_hours"]) == {4.0}
    assert (sol["rate_8h"] - sol["funding_rate"] * 2).abs().max() < 1e-15

    # a second run over the same window changes nothing
    r2 = backfill(db)
    assert r2.status == "success"
    assert counts(db) == c1
    assert r2.totals()["loaded"] == 0
    assert r2.totals()["duplicate"] == t["fetched"]
    assert table(db, "marts.daily_signals").equals(signals1)

    # replay on an emptied staging rebuilds identical tables from raw.payloads alone
    before = {name: table(db, f"staging.{name}") for name in c1}
    with warehouse.session(db) as con:
        for name in c1:
            con.execute(f"DELETE FROM staging.{name}")
    rr = pipeline.replay(db)
    assert rr.status == "success", rr.errors + rr.warnings
    for name, df in before.items():
        assert table(db, f"staging.{name}").equals(df), name


def test_watermarks_move_only_with_loaded_data(env, tmp_path):
    db = tmp_path / "w.duckdb"
    backfill(db, build=False)
    con = duckdb.connect(str(db), read_only=True)
    marks = dict(con.execute("SELECT dataset || ' ' || instrument, last_ts FROM meta.watermarks").fetchall())
    data_max = con.execute("SELECT max(funding_time) FROM staging.funding_rates WHERE instrument='BTCUSDT'").fetchone()[0]
    con.close()
    assert marks["funding_rates BTCUSDT"] == data_max
    assert marks["prices/perp BTCUSDT"] == NOW - timedelta(hours=1)
    assert marks["open_interest SOLUSDT"] == NOW


def test_bad_input_is_quarantined_and_the_rest_loads(env, tmp_path, monkeypatch):
    proxy = FaultProxy(env.base_url)
    try:
        monkeypatch.setenv("PERPWATCH_URL_BINANCE_FAPI", proxy.base_url + "/binance-fapi")
        proxy.add("/fapi/v1/fundingRate", "truncate", symbol="SOLUSDT")
        proxy.add("/futures/data/openInterestHist", "drop_field:sumOpenInterest", symbol="SOLUSDT")
        proxy.add("/futures/data/globalLongShortAccountRatio", "set:longShortRatio=-3", symbol="SOLUSDT")
        proxy.add("/fapi/v1/markPriceKlines", "status:500", times=2, symbol="BTCUSDT")
        proxy.add("/futures/data/topLongShortPositionRatio", "status:429:1", times=1, symbol="BTCUSDT")
        db = tmp_path / "w.duckdb"
        t0 = time.monotonic()
        report = backfill(db)
        elapsed = time.monotonic() - t0
    finally:
        proxy.stop()
    assert report.status == "warning", report.errors
    con = duckdb.connect(str(db), read_only=True)
    q = con.execute("SELECT dataset, endpoint, instrument, failed_expectations, message, raw_id "
                    "FROM quarantine.batches ORDER BY dataset").fetchall()
    by = {row[0]: row for row in q}
    assert set(by) == {"funding_rates", "open_interest", "long_short_ratio"}
    # each message names source, endpoint, instrument and what was wrong
    assert "binance /fapi/v1/fundingRate [SOLUSDT]" in by["funding_rates"][4]
    assert "not valid JSON" in by["funding_rates"][4]
    assert "missing field(s) ['sumOpenInterest']" in by["open_interest"][4]
    assert "/futures/data/globalLongShortAccountRatio" in by["long_short_ratio"][4]
    assert "expect_column_values_to_be_between on ratio" in by["long_short_ratio"][4]
    # the raw payload stays landed: the truncated body is there byte for byte
    raw = con.execute("SELECT body, encoding, http_status FROM raw.payloads WHERE raw_id = ?",
                      [by["funding_rates"][5]]).fetchone()
    body = warehouse.payload_body(raw[0], raw[1])
    assert raw[2] == 200 and body.startswith(b"[") and not body.rstrip().endswith(b"]")
    # unreadable payloads are out whole; of the SOL ratios only the 73 bad account rows (ratio -3) are out,
    # the positions and top-trader populations of the same instrument load
    assert con.execute("SELECT count(*) FROM staging.funding_rates WHERE instrument='SOLUSDT'").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM staging.open_interest WHERE instrument='SOLUSDT'").fetchone()[0] == 0
    assert set(con.execute("SELECT population, count(*) FROM staging.long_short_ratio WHERE instrument='SOLUSDT' "
                       "GROUP BY 1").fetchall()) == {("top_positions", 73), ("top_accounts", 73)}
    refs = json.loads(con.execute("SELECT row_refs FROM quarantine.batches WHERE dataset = 'long_short_ratio'"
                                  ).fetchone()[0])
    assert sum(len(r["rows"]) for r in refs) == 73           # every bad row named by raw_id and row number
    # the good instruments still load, including after HTTP 500 x2 and a 429 with Retry-After
    assert con.execute("SELECT count(*) FROM staging.funding_rates WHERE instrument='BTCUSDT'").fetchone()[0] == 9
    assert con.execute("SELECT count(*) FROM staging.prices WHERE instrument='BTCUSDT' AND kind='mark'").fetchone()[0] == 72
    assert con.execute("SELECT count(*) FROM staging.long_short_ratio WHERE instrument='BTCUSDT'").fetchone()[0] == 73 * 3
    assert con.execute("SELECT count(*) FROM staging.prices WHERE instrument='SOLUSDT'").fetchone()[0] == 72 * 4
    statuses = [c for p, c in proxy.log]
    assert statuses.count(500) == 2 and statuses.count(429) == 1
    assert elapsed >= 1.0                                     # Retry-After was honoured
    run = con.execute("SELECT status, rows_quarantined, message FROM meta.runs").fetchone()
    assert run[0] == "warning" and run[1] == 73 and "SOLUSDT" in run[2]       # exactly the bad ratio rows
    # watermarks of quarantined streams did not move, so the next clean run fetches them
    assert con.execute("SELECT count(*) FROM meta.watermarks WHERE instrument='SOLUSDT' "
                       "AND dataset IN ('funding_rates','open_interest','long_short_ratio/accounts')").fetchone()[0] == 0
    con.close()
    monkeypatch.setenv("PERPWATCH_URL_BINANCE_FAPI", env.env()["PERPWATCH_URL_BINANCE_FAPI"])
    clean = jobs.run(kind="run", end=NOW, venues=["binance"], assets=ASSETS, db=db, build=False)
    assert clean.status == "success", clean.errors
    assert counts(db)["funding_rates"] >= 9 + 18


def test_absurd_funding_is_quarantined(env, tmp_path, monkeypatch):
    proxy = FaultProxy(env.base_url)
    try:
        monkeypatch.setenv("PERPWATCH_URL_BINANCE_FAPI", proxy.base_url + "/binance-fapi")
        proxy.add("/fapi/v1/fundingRate", "set:fundingRate=5.0", symbol="SOLUSDT")
        db = tmp_path / "w.duckdb"
        report = backfill(db, build=False)
    finally:
        proxy.stop()
    assert report.status == "warning"
    msg = " ".join(report.warnings)
    assert "binance /fapi/v1/fundingRate [SOLUSDT] funding_rates: failed validation" in msg
    assert "expect_column_values_to_be_between on funding_rate" in msg
    c = counts(db)
    assert c["funding_rates"] == 9          # BTC only


def test_daily_row_uses_no_later_data(env, tmp_path):
    """The mart row for day D computed on data truncated at the end of D equals the row on all data."""
    db = tmp_path / "w.duckdb"
    backfill(db)
    full = table(db, "marts.daily_signals")
    for day in (datetime(2026, 11, 18, tzinfo=UTC), datetime(2026, 11, 19, tzinfo=UTC)):
        cut = tmp_path / f"cut{day:%d}.duckdb"
        cut.write_bytes(db.read_bytes())
        end = day + timedelta(days=1)
        with warehouse.session(cut) as con:
            for t, col in (("prices", "ts"), ("open_interest", "ts"), ("long_short_ratio", "ts"),
                           ("funding_rates", "funding_time"), ("liquidations", "ts")):
                con.execute(f"DELETE FROM staging.{t} WHERE {col} >= ?", [end])
            con.execute("DELETE FROM staging.prices WHERE ts + INTERVAL 1 HOUR > ?", [end])
            transforms.build_all(con)
        truncated = table(cut, "marts.daily_signals").filter(pl.col("date") == day.date())
        assert truncated.height == 2
        assert truncated.equals(full.filter(pl.col("date") == day.date()))
    os.environ.pop("PERPWATCH_DB", None)


def test_instrument_refresh_failure_falls_back_to_stored_instruments(env, tmp_path, monkeypatch):
    db = tmp_path / "w.duckdb"
    first = jobs.run(kind="backfill", start=NOW - timedelta(days=1), end=NOW, venues=["bybit"], assets=["BTC"],
                         db=db, build=False)
    assert first.status == "success", first.errors
    proxy = FaultProxy(env.base_url)
    try:
        monkeypatch.setenv("PERPWATCH_URL_BYBIT", proxy.base_url + "/bybit")
        proxy.add("/v5/market/instruments-info", "truncate")
        second = jobs.run(kind="backfill", start=NOW - timedelta(days=2), end=NOW, venues=["bybit"],
                              assets=["BTC"], db=db, build=False)
    finally:
        proxy.stop()
    # the listing could not be read: a warning naming it, and the run still extends the stored history
    assert second.status == "warning", second.errors
    assert any("instruments not refreshed" in w and "/v5/market/instruments-info" in w for w in second.warnings)
    assert second.totals()["loaded"] > 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT min(ts) FROM staging.open_interest").fetchone()[0] == NOW - timedelta(days=2)
    finally:
        con.close()


BAD_TIME = datetime(2026, 11, 18, 16, tzinfo=UTC)     # one BTCUSDT settlement inside the window


def _quarantined_keys(con, run_id):
    """(instrument, funding_time) of the funding rows a run quarantined, from the batches' samples."""
    out = []
    for sample, refs in con.execute("SELECT sample, row_refs FROM quarantine.batches WHERE run_id = ? "
                                    "AND dataset = 'funding_rates'", [run_id]).fetchall():
        rows = json.loads(sample)
        assert refs is not None and sum(len(r["rows"]) for r in json.loads(refs)) == len(rows)
        out += [(r["instrument"], datetime.fromisoformat(r["funding_time"]).astimezone(UTC)) for r in rows]
    return sorted(out)


def test_one_absurd_row_costs_exactly_that_row(env, tmp_path, monkeypatch):
    """A funding rate of 5.0 (500 % per settlement) on one BTCUSDT settlement: the run, the next live run
    (the venue serves the same row again) and a replay each lose that row alone; the rest of the stream
    loads and its watermark moves on."""
    ms = str(int(BAD_TIME.timestamp()))           # epoch seconds: a prefix of the jittered fundingTime ms
    db = tmp_path / "w.duckdb"
    proxy = FaultProxy(env.base_url)
    try:
        monkeypatch.setenv("PERPWATCH_URL_BINANCE_FAPI", proxy.base_url + "/binance-fapi")
        proxy.add("/fapi/v1/fundingRate", f"set_at:fundingTime={ms}:fundingRate=5.0", symbol="BTCUSDT")
        first = jobs.run(kind="backfill", start=START, end=NOW, venues=["binance"], assets=["BTC"], db=db,
                         build=False)
    finally:
        proxy.stop()
    assert first.status == "warning" and first.totals()["quarantined"] == 1, first.errors
    assert first.totals()["payloads_quarantined"] == 0
    con = duckdb.connect(str(db), read_only=True)
    times = [r[0] for r in con.execute("SELECT funding_time FROM staging.funding_rates WHERE instrument='BTCUSDT' "
                                       "ORDER BY 1").fetchall()]
    assert len(times) == 8 and BAD_TIME not in times                  # 9 settlements in 3 days, less one
    assert _quarantined_keys(con, first.run_id) == [("BTCUSDT", BAD_TIME)]
    mark = con.execute("SELECT last_ts FROM meta.watermarks WHERE source='binance' AND dataset='funding_rates' "
                       "AND instrument='BTCUSDT'").fetchone()[0]
    assert mark == times[-1] and mark > BAD_TIME                      # moved past the bad row
    con.close()

    # the next live run, a day later: the venue serves the bad row again (re-read for the open gap)
    later = NOW + timedelta(days=1)
    sim2 = start(port=0, seed=7, now=later)
    proxy = FaultProxy(sim2.base_url)
    try:
        for k, v in sim2.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("PERPWATCH_URL_BINANCE_FAPI", proxy.base_url + "/binance-fapi")
        proxy.add("/fapi/v1/fundingRate", f"set_at:fundingTime={ms}:fundingRate=5.0", symbol="BTCUSDT")
        second = jobs.run(kind="run", end=later, venues=["binance"], assets=["BTC"], db=db, build=False)
    finally:
        proxy.stop()
        sim2.stop()
    assert second.status == "warning", second.errors
    con = duckdb.connect(str(db), read_only=True)
    assert _quarantined_keys(con, second.run_id) == [("BTCUSDT", BAD_TIME)]
    after = [r[0] for r in con.execute("SELECT funding_time FROM staging.funding_rates WHERE instrument='BTCUSDT' "
                                       "ORDER BY 1").fetchall()]
    assert after[:8] == times and len(after) == 8 + 3 and BAD_TIME not in after   # 3 new settlements loaded
    mark2 = con.execute("SELECT last_ts FROM meta.watermarks WHERE source='binance' AND dataset='funding_rates' "
                        "AND instrument='BTCUSDT'").fetchone()[0]
    assert mark2 == after[-1] > mark
    before = {t: table(db, f"staging.{t}", drop=("ingested_at", "raw_id")) for t in ("funding_rates", "prices")}
    con.close()

    # replay: every good row exactly as before (values; raw_id is the newest copy on replay, the first one
    # loaded live); only copies of the bad row are quarantined
    rr = pipeline.replay(db)
    assert rr.status == "warning" and rr.totals()["payloads_quarantined"] == 0, rr.errors
    for t, df in before.items():
        assert table(db, f"staging.{t}", drop=("ingested_at", "raw_id")).equals(df), t
    con = duckdb.connect(str(db), read_only=True)
    keys = _quarantined_keys(con, rr.run_id)
    con.close()
    assert keys and set(keys) == {("BTCUSDT", BAD_TIME)}     # one copy per run that fetched it, nothing else


def test_replay_degrades_per_payload(env, tmp_path):
    """Hand-inserted payloads: a corrupt zlib body, a plain body inserted without `encoding`, and a plain
    body whose newer copy of a stored settlement is absurd. Replay quarantines the corrupt one by raw_id,
    reads the plain one as stored, and keeps the older good row for the absurd key."""
    db = tmp_path / "w.duckdb"
    assert jobs.run(kind="backfill", start=START, end=NOW, venues=["binance"], assets=["BTC"], db=db,
                    build=False).status == "success"
    import orjson
    with warehouse.session(db) as con:
        raw_id, params, body, enc = con.execute(
            "SELECT raw_id, params, body, encoding FROM raw.payloads WHERE endpoint = '/fapi/v1/fundingRate' "
            "ORDER BY raw_id LIMIT 1").fetchone()
        rows = orjson.loads(warehouse.payload_body(body, enc))
        assert len(rows) == 9 and enc == "zlib"
        changed = [dict(r) for r in rows]
        changed[0]["fundingRate"] = "0.00012345"       # a valid correction: the plain body must be read
        absurd = [dict(rows[1], fundingRate="5.0")]     # newer than the stored good row for that key
        ins = ("INSERT INTO raw.payloads (raw_id, source, endpoint, params, fetched_at, http_status, body, sha256{}) "
               "VALUES (nextval('raw.payload_id_seq'), 'binance', '/fapi/v1/fundingRate', ?, now(), 200, ?, 'x'{}) "
               "RETURNING raw_id")
        bad_id = con.execute(ins.format(", encoding", ", 'zlib'"), [params, b"this is not zlib"]).fetchone()[0]
        plain_id = con.execute(ins.format("", ""), [params, orjson.dumps(changed)]).fetchone()[0]
        absurd_id = con.execute(ins.format("", ""), [params, orjson.dumps(absurd)]).fetchone()[0]
        assert con.execute("SELECT encoding FROM raw.payloads WHERE raw_id = ?", [plain_id]).fetchone()[0] == "identity"
    before = table(db, "staging.prices", drop=("ingested_at",))
    funding_before = table(db, "staging.funding_rates", drop=("ingested_at",))
    rr = pipeline.replay(db)
    assert rr.status == "warning" and not rr.errors, rr.errors
    assert rr.totals()["payloads_quarantined"] == 1 and rr.totals()["quarantined"] == 1
    assert table(db, "staging.prices", drop=("ingested_at",)).equals(before)
    con = duckdb.connect(str(db), read_only=True)
    try:
        q = con.execute("SELECT raw_id, rows, message, row_refs FROM quarantine.batches WHERE run_id = ? "
                        "ORDER BY raw_id", [rr.run_id]).fetchall()
        assert [(r[0], r[1]) for r in q] == [(bad_id, 0), (absurd_id, 1)]
        assert f"raw_id={bad_id}" in q[0][2] and "not zlib data" in q[0][2] and q[0][3] is None
        assert json.loads(q[1][3]) == [{"raw_id": absurd_id, "rows": [0]}]
        got = con.sql("SELECT funding_time, funding_rate, raw_id FROM staging.funding_rates ORDER BY 1").pl()
    finally:
        con.close()
    assert got.height == 9
    assert got["funding_rate"][0] == 0.00012345 and got["raw_id"][0] == plain_id       # read as stored
    # the absurd key falls back to the hand copy's older candidates: plain_id (newest good) wins it
    assert got["raw_id"][1] == plain_id and got["funding_rate"][1] == float(rows[1]["fundingRate"])
    # every other settlement is the stored row, value for value
    keep = funding_before.filter(pl.col("funding_time") > got["funding_time"][1]).drop("raw_id")
    assert table(db, "staging.funding_rates", drop=("ingested_at",)).filter(
        pl.col("funding_time") > got["funding_time"][1]).drop("raw_id").equals(keep)
