"""Issue 14: the pipeline against the venues' documented rules (bans, history depth, page edges, symbols).

Every test runs against the simulator at a fixed time; PERPWATCH_NOW (from sim.env()) is the client's clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import duckdb
import polars as pl
import pytest
import requests

from perpwatch import jobs, warehouse
from perpwatch.jobs import chunks
from perpwatch.serving import status
from perpwatch.simulator.common import Response
from perpwatch.simulator.server import start
from perpwatch.sources import binance, liquidations, okx
from perpwatch.sources.base import ParseContext, Stream, clamp_window, history_floor
from perpwatch.sources.http import Banned, Budget

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


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
    monkeypatch.setenv("PERPWATCH_MAX_BAN_WAIT", "600")
    return sim


def test_sim_env_carries_its_clock(sim):
    assert sim.env()["PERPWATCH_NOW"] == "2026-11-20T12:00:00+00:00"


# --------------------------------------------------------------------------- bans

def test_418_with_a_3_day_retry_after_skips_the_venue_and_later_runs_until_the_ban_ends(env, tmp_path, monkeypatch):
    """Binance 418 + Retry-After 259200 (3 days, the documented maximum): the client does not wait (cap 600 s),
    raises Banned for binance only, the run stores banned_until = now + 3 days and loads OKX; the next run
    skips binance without a request; once the clock passes banned_until binance is fetched again."""
    sim = env
    fapi = sim.venues["binance-fapi"]
    calls = []
    orig = fapi.handle

    def banned(req):
        calls.append(req.path)
        return Response(418, b'{"code":-1003,"msg":"Way too many requests; IP banned until 1764000000000."}',
                        "application/json", {"Retry-After": "259200"})

    monkeypatch.setattr(fapi, "handle", banned)
    db = tmp_path / "w.duckdb"
    t0 = datetime.now(UTC)
    r1 = jobs.run(kind="run", start=NOW - 6 * H, end=NOW, venues=["binance", "okx"], assets=["BTC"], db=db,
                      build=False)
    assert (datetime.now(UTC) - t0).total_seconds() < 60          # no 3-day (nor 600 s) sleep
    assert r1.status == "warning", r1.errors
    assert len(calls) == 1                       # exchangeInfo answered 418; nothing else was sent to binance
    assert set(r1.bans) == {"binance"} and r1.bans["binance"][0] == NOW + timedelta(seconds=259200)
    assert any(w.startswith("binance: banned by the venue, skipped until 2026-11-23 12:00:00 UTC") for w in r1.warnings)
    assert r1.stats[("okx", "prices")].loaded > 0                # the other venue loaded
    with warehouse.session(db) as con:
        assert con.execute("SELECT source, banned_until FROM meta.venue_bans").fetchall() == \
            [("binance", NOW + timedelta(days=3))]
        st = status.collect(con, now=NOW)
    assert [b["source"] for b in st["bans"]] == ["binance"]

    # next run, one day later: binance is skipped without a request (the ban would only get longer)
    monkeypatch.setenv("PERPWATCH_NOW", (NOW + timedelta(days=1)).isoformat())
    r2 = jobs.run(kind="run", start=NOW - 6 * H, end=NOW, venues=["binance", "okx"], assets=["BTC"], db=db,
                      build=False)
    assert len(calls) == 1
    assert any(w.startswith("binance: skipped, banned until 2026-11-23 12:00:00 UTC") for w in r2.warnings)
    assert r2.status == "warning" and not r2.errors

    # after the ban: binance is asked again (and answers normally)
    monkeypatch.setattr(fapi, "handle", orig)
    monkeypatch.setenv("PERPWATCH_NOW", (NOW + timedelta(days=3, seconds=1)).isoformat())
    r3 = jobs.run(kind="run", start=NOW - 6 * H, end=NOW, venues=["binance"], assets=["BTC"], db=db,
                      build=False)
    assert r3.status == "success", r3.errors + r3.warnings
    assert r3.stats[("binance", "prices")].loaded > 0


def test_short_retry_after_is_waited_and_retried(env, monkeypatch):
    """A 429 with Retry-After 1 s (within the cap) is waited out and retried, not a ban."""
    sim = env
    fapi = sim.venues["binance-fapi"]
    orig, seen = fapi.handle, []

    def once(req):
        seen.append(req.path)
        if len(seen) == 1:
            return Response(429, b'{"code":-1003,"msg":"Too many requests"}', "application/json", {"Retry-After": "1"})
        return orig(req)

    monkeypatch.setattr(fapi, "handle", once)
    cl = binance.make_client(None)
    page = cl.get("/fapi/v1/exchangeInfo", costs={"weight": 1})
    assert page.status == 200 and len(seen) == 2 and cl.banned is None


def test_bybit_403_access_too_frequent_stops_for_ten_minutes_without_retrying(env, monkeypatch):
    """Bybit's rate-limit page: HTTP 403 "access too frequent" = stop every session >= 10 minutes; no
    Retry-After is documented (the simulator sends none). One request, then Banned until now + 600 s."""
    from perpwatch.sources import bybit

    sim = env
    v = sim.venues["bybit"]
    seen = []

    def blocked(req):
        seen.append(req.path)
        return Response(403, b"access too frequent", "text/plain")

    monkeypatch.setattr(v, "handle", blocked)
    cl = bybit.make_client(None)
    got = []
    cl.on_ban = lambda src, until, why: got.append((src, until))
    with pytest.raises(Banned) as exc:
        cl.get("/v5/market/instruments-info", {"category": "linear"})
    assert exc.value.until == NOW + timedelta(minutes=10) and got == [("bybit", NOW + timedelta(minutes=10))]
    with pytest.raises(Banned):          # the client is done with bybit: nothing more is sent
        cl.get("/v5/market/tickers", {"category": "linear"})
    assert len(seen) == 1


def test_deribit_10028_is_a_rate_limit_whatever_the_status(env, monkeypatch):
    """Deribit answers error 10028 too_many_requests (docs.deribit.com Errors / Rate Limits) with no
    Retry-After; the client backs off and, past the cap, gives Deribit up for the run."""
    from perpwatch.sources import deribit

    monkeypatch.setenv("PERPWATCH_MAX_BAN_WAIT", "1")
    sim = env
    v = sim.venues["deribit"]
    seen = []

    def too_many(req):
        seen.append(req.path)
        return Response(400, b'{"jsonrpc":"2.0","error":{"message":"too_many_requests","code":10028},"id":1}',
                        "application/json")

    monkeypatch.setattr(v, "handle", too_many)
    cl = deribit.make_client(None)
    with pytest.raises(Banned):
        cl.get("/api/v2/public/get_instruments", {"currency": "BTC", "kind": "future"})
    assert 1 <= len(seen) <= 2        # one backoff of 2 s would exceed the 1 s cap: no retry storm


def test_simulator_deribit_rate_limit_answer(env):
    """The simulator's own Deribit limiter answers 10028 in a JSON-RPC error, with no Retry-After."""
    sim = env
    from perpwatch.simulator.common import Request

    v = sim.venues["deribit"]
    t = time.time()
    while v.burst.try_consume(1, t)[0]:          # empty the credit pool
        pass
    req = Request("GET", "/api/v2/public/get_time", {}, b"", {})
    resp = v.handle(req)
    assert resp.status == 429 and b'"code":10028' in resp.body and "Retry-After" not in (resp.headers or {})


def test_spot_usage_header_feeds_the_spot_budget_only():
    """Binance spot's X-MBX-USED-WEIGHT-1M counts the spot limit (6000/min): it must not fill the futures
    weight budget (2400/min), and the fapi header must not fill the spot one."""
    cl = binance.make_client(None)

    class R:
        def __init__(self, used):
            self.status_code, self.content, self.headers = 200, b"[]", {"X-MBX-USED-WEIGHT-1M": str(used)}

    answers = iter([R(5000), R(700)])
    cl.session.request = lambda *a, **k: next(answers)
    cl.get("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1h"})
    assert cl.budgets["spot_weight"]._used == 5000 and cl.budgets["weight"]._used == 0
    cl.get("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1h"})
    assert cl.budgets["weight"]._used == 700 and cl.budgets["spot_weight"]._used == 5000


def test_okx_funding_rate_budget_is_10_per_2s():
    cl = okx.make_client(None)
    b: Budget = cl.budgets[okx.FUNDING_NOW]
    assert b.window_s == 2.0 and b.capacity == 10 * 0.8


# --------------------------------------------------------------------------- history depth and page edges

def test_history_floor_counts_from_now_not_from_the_chunk_end(monkeypatch):
    monkeypatch.setenv("PERPWATCH_NOW", "2026-11-20T12:34:56+00:00")
    s = Stream("binance", "open_interest", "open_interest", "BTCUSDT", history=timedelta(days=30))
    # now - 30 d = 2026-10-21 12:34:56 -> on the hour grid, one step inside: 13:00
    assert history_floor(s) == datetime(2026, 10, 21, 13, 0, tzinfo=UTC)
    chunk_end = datetime(2026, 11, 5, tzinfo=UTC)          # a backfill chunk ending 15 days ago
    assert clamp_window(s, datetime(2026, 10, 6, tzinfo=UTC), chunk_end) == datetime(2026, 10, 21, 13, 0, tzinfo=UTC)
    # a start inside the window is only floored to the hour
    assert clamp_window(s, datetime(2026, 11, 1, 7, 30, tzinfo=UTC), chunk_end) == datetime(2026, 11, 1, 7, tzinfo=UTC)


def test_simulator_answers_binance_minus_1130_for_a_start_older_than_30_days(env):
    url = env.env()["PERPWATCH_URL_BINANCE_FAPI"] + "/futures/data/openInterestHist"
    old = int((NOW - timedelta(days=30, hours=1)).timestamp() * 1000)
    r = requests.get(url, params={"symbol": "BTCUSDT", "period": "1h", "startTime": old,
                                  "endTime": old + 3600_000 * 10}, timeout=10)
    assert r.status_code == 400 and r.json() == {"code": -1130, "msg": "parameter 'startTime' is invalid."}


def test_45_day_backfill_in_30_day_chunks_succeeds_with_no_http_400(env, tmp_path):
    """`perpwatch backfill --start <45 days ago> --venues okx,binance --assets BTC` cuts the window in 30-day
    chunks (flows/backfill.chunks); the first chunk ends 15 days ago and used to ask Binance for
    startTime = chunk end - 30 d (45 days ago): HTTP 400 -1130. Now every chunk succeeds and Binance OI
    covers exactly the last 30 days from now."""
    db = tmp_path / "w.duckdb"
    start = NOW - timedelta(days=45)
    reports = [jobs.run(kind="backfill", start=s, end=e, venues=["okx", "binance"], assets=["BTC"], db=db,
                            build=False) for s, e in chunks(start, NOW, 30)]
    assert len(reports) == 2
    for r in reports:
        assert r.status == "success", r.errors + r.warnings
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM raw.payloads WHERE http_status = 400").fetchone()[0] == 0
        lo, hi, n = con.execute("""SELECT min(ts), max(ts), count(*) FROM staging.open_interest
                                   WHERE venue = 'binance' AND instrument = 'BTCUSDT'""").fetchone()
    finally:
        con.close()
    # floor: now - 30 d + 1 h = 2026-10-21 13:00; the last hour: NOW; one row per hour, no hole
    assert lo == NOW - timedelta(days=30) + H and hi == NOW
    assert n == 30 * 24


def test_first_backfill_has_no_hole_at_500_hour_page_edges(env, tmp_path):
    """A 30-day backfill starting at hh:37 spans two 500-row pages; every hour is loaded the first time."""
    db = tmp_path / "w.duckdb"
    start = NOW - timedelta(days=29, minutes=23)            # 2026-10-22 11:37
    r = jobs.run(kind="backfill", start=start, end=NOW, venues=["binance"], assets=["BTC"], db=db, build=False)
    assert r.status == "success", r.errors + r.warnings
    con = duckdb.connect(str(db), read_only=True)
    try:
        ts = con.execute("""SELECT ts FROM staging.long_short_ratio WHERE venue = 'binance'
                            AND instrument = 'BTCUSDT' AND population = 'accounts' ORDER BY ts""").pl()["ts"]
        pages = con.execute("""SELECT count(*) FROM raw.payloads
                               WHERE endpoint = '/futures/data/globalLongShortAccountRatio'""").fetchone()[0]
    finally:
        con.close()
    assert pages == 2
    expected = pl.datetime_range(datetime(2026, 10, 22, 11, tzinfo=UTC), NOW, "1h", eager=True, time_zone="UTC")
    assert ts.len() == expected.len() == 29 * 24 + 2      # 11:00 .. 12:00 inclusive, 29 days later
    assert ts.to_list() == expected.to_list()


# --------------------------------------------------------------------------- symbols

def test_1000pepe_spot_is_declared_unsupported_and_never_requested():
    inst = pl.DataFrame([
        {"venue": "binance", "instrument": "1000PEPEUSDT", "asset": "PEPE", "quote": "USDT", "margin": "linear",
         "kind": "perp", "status": "trading", "multiplier": 1000.0},
        {"venue": "binance", "instrument": "BTCUSDT", "asset": "BTC", "quote": "USDT", "margin": "linear",
         "kind": "perp", "status": "trading", "multiplier": 1.0}])
    names = {(s.instrument, s.name) for s in binance.plan(inst, ["PEPE", "BTC"])}
    assert ("1000PEPEUSDT", "prices/perp") in names and ("1000PEPEUSDT", "prices/spot") not in names
    assert ("BTCUSDT", "prices/spot") in names
    assert "1000-prefixed" in binance.SPOT_UNSUPPORTED


def test_1000pepe_liquidation_quantity_is_in_coins():
    """Binance 1000PEPEUSDT forceOrder: q = 2500 (units of 1000 PEPE) at 0.01234 USDT per 1000 PEPE
    -> qty_base 2,500,000 PEPE at 0.00001234 USD per PEPE; usd = 2500 x 0.01234 = 30.85 either way."""
    ev = {"e": "forceOrder", "E": 1700000000100, "o": {"s": "1000PEPEUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC",
                                                       "q": "2500", "p": "0.01234", "ap": "0.01234", "X": "FILLED",
                                                       "l": "2500", "z": "2500", "T": 1700000000000}}
    ctx = ParseContext(datetime(2026, 11, 20, tzinfo=UTC), {})
    (r,) = liquidations.parse_binance_force_order([ev], {}, ctx)["liquidations"].to_dicts()
    assert r["asset"] == "PEPE" and r["qty_base"] == 2_500_000 and abs(r["price"] - 0.00001234) < 1e-18
    assert abs(r["usd"] - 30.85) < 1e-9
    by = {"topic": "allLiquidation.1000PEPEUSDT", "type": "snapshot", "ts": 1700000000500,
          "data": [{"T": 1700000000400, "s": "1000PEPEUSDT", "S": "Buy", "v": "120", "p": "0.0125"}]}
    (b,) = liquidations.parse_bybit_all_liquidation([by], {}, ctx)["liquidations"].to_dicts()
    assert b["side"] == "long" and b["qty_base"] == 120_000 and abs(b["usd"] - 1.5) < 1e-12


# --------------------------------------------------------------------------- simulator rules

def test_okx_funding_rate_any_answers_every_swap(env):
    url = env.env()["PERPWATCH_URL_OKX"] + "/api/v5/public/funding-rate"
    data = requests.get(url, params={"instId": "ANY"}, timeout=10).json()["data"]
    ids = {d["instId"] for d in data}
    assert {"BTC-USDT-SWAP", "BTC-USD-SWAP", "ETH-USDT-SWAP"} <= ids and all(i.endswith("-SWAP") for i in ids)
    one = requests.get(url, params={"instId": "BTC-USDT-SWAP"}, timeout=10).json()["data"]
    assert [d for d in data if d["instId"] == "BTC-USDT-SWAP"] == one


def test_okx_instruments_take_the_any_path_with_no_per_instrument_fallback(env):
    cl = okx.make_client(None)
    pages = okx.fetch_instruments(cl)
    assert [p.params for p in pages if p.endpoint == okx.FUNDING_NOW] == [{"instId": "ANY"}]


def test_okx_rubik_begin_and_end_are_exclusive(env):
    url = env.env()["PERPWATCH_URL_OKX"] + "/api/v5/rubik/stat/contracts/open-interest-history"
    t1 = int((NOW - 10 * H).timestamp() * 1000)
    t2 = int((NOW - 5 * H).timestamp() * 1000)
    rows = requests.get(url, params={"instId": "BTC-USDT-SWAP", "period": "1H", "begin": t1, "end": t2},
                        timeout=10).json()["data"]
    assert [int(r[0]) for r in rows] == [t2 - k * 3600_000 for k in range(1, 5)]     # 4 rows: t1, t2 excluded


def test_bybit_instruments_info_honours_status(env):
    url = env.env()["PERPWATCH_URL_BYBIT"] + "/v5/market/instruments-info"
    trading = requests.get(url, params={"category": "linear"}, timeout=10).json()["result"]["list"]
    closed = requests.get(url, params={"category": "linear", "status": "Closed"}, timeout=10).json()["result"]["list"]
    assert trading and all(r["status"] == "Trading" for r in trading)
    assert closed == []


def test_coingecko_treasuries_are_paged_beyond_one_page(env, monkeypatch):
    """per_page is capped at 250 by CoinGecko; the client pages on with `page` until a short page. With a
    page size of 3 the simulator's list comes in ceil(n/3) pages and the union is the whole list."""
    from perpwatch.sources import coingecko

    url = env.env()["PERPWATCH_URL_COINGECKO"] + coingecko.TREASURY
    everything = [c["name"] for c in requests.get(url, params={"per_page": 250}, timeout=10).json()["companies"]]
    assert len(everything) > 3
    monkeypatch.setattr(coingecko, "TREASURY_PER_PAGE", 3)
    s = Stream("coingecko", "treasury_holdings", "treasury_holdings", "bitcoin", step=timedelta(days=1))
    pages = list(coingecko.fetch(coingecko.make_client(None), s, NOW - timedelta(days=1), NOW))
    assert [p.params["page"] for p in pages] == list(range(1, len(everything) // 3 + 2))
    got = [c["name"] for p in pages for c in p.json()["companies"]]
    assert got == everything
