"""Bybit v5 and OKX v5 parsers on the recorded/doc payloads (hand-computed values, units first),
their error envelopes, the pipeline's OI valuation, and an end-to-end run against the simulator."""

from __future__ import annotations

import copy
import time
from datetime import UTC, datetime, timedelta

import duckdb
import orjson
import polars as pl
import pytest
import requests

from perpwatch import jobs, warehouse
from perpwatch.ingest import pipeline
from perpwatch.sources import bybit, okx
from perpwatch.sources.base import ParseContext, Stream
from perpwatch.sources.http import BadRequest, Fetched, RateLimited

FETCHED = datetime(2026, 11, 20, tzinfo=UTC)


def ctx(instruments=None, fetched_at=FETCHED):
    return ParseContext(fetched_at, instruments or {})


def as_ctx(df: pl.DataFrame) -> dict:
    return {(r["venue"], r["instrument"]): r for r in df.iter_rows(named=True)}


# =========================================================================== Bybit

def test_bybit_instruments_funding_interval_minutes_to_hours(fixture):
    df = bybit.parse_instruments(fixture("bybit/v5_market_instruments-info.linear.json"),
                                 {"category": "linear"}, ctx())["instruments"]
    r = df.row(0, named=True)
    assert (r["instrument"], r["asset"], r["quote"], r["settle"]) == ("BTCUSDT", "BTC", "USDT", "USDT")
    assert (r["margin"], r["kind"], r["contract_size"], r["contract_unit"]) == ("linear", "perp", 1.0, "base")
    assert r["funding_interval_hours"] == 8.0            # fundingInterval 480 minutes
    assert r["status"] == "trading" and r["expiry"] is None
    # an inverse listing: 1 contract = 1 USD; a closed symbol is delisted
    inv = copy.deepcopy(fixture("bybit/v5_market_instruments-info.linear.json"))
    row = inv["result"]["list"][0]
    row.update(symbol="BTCUSD", contractType="InversePerpetual", quoteCoin="USD", settleCoin="BTC",
               fundingInterval=240, status="Closed")
    inv["result"]["category"] = "inverse"
    r = bybit.parse_instruments(inv, {"category": "inverse", "status": "Closed"}, ctx())["instruments"].row(0, named=True)
    assert (r["margin"], r["contract_unit"], r["contract_size"], r["funding_interval_hours"]) == ("inverse", "usd", 1.0, 4.0)
    assert r["status"] == "delisted"


def test_bybit_listing_wins_over_an_old_closed_entry(fixture):
    listed = fixture("bybit/v5_market_instruments-info.linear.json")
    closed = copy.deepcopy(listed)
    closed["result"]["list"][0]["status"] = "Closed"                 # BTCUSDT once closed, now relisted
    cl = FakeClient("bybit", [closed, listed, {**closed, "result": {"category": "inverse", "list": []}},
                              {**listed, "result": {"category": "inverse", "list": []}}])
    pages = bybit.fetch_instruments(cl)
    assert [p.get("status") for _, p in cl.calls] == ["Closed", None, "Closed", None]
    frames = [bybit.parse_instruments(orjson.loads(p.body), p.params, ctx())["instruments"] for p in pages]
    merged = pipeline.merge_instruments(pl.concat(frames, how="diagonal_relaxed"))
    assert merged.row(0, named=True)["status"] == "trading"


def test_bybit_plan_follows_trading_usdt_linear_and_usd_inverse_only():
    rows = [("BTCUSDT", "linear", "USDT", "trading"), ("BTCUSD", "inverse", "USD", "trading"),
            ("BTCPERP", "linear", "USDC", "trading"), ("ETHUSDT", "linear", "USDT", "delisted"),
            ("SOLUSDT", "linear", "USDT", "trading")]
    inst = pl.DataFrame([{"venue": "bybit", "instrument": i, "asset": i[:3], "margin": m, "quote": q, "status": s,
                          "kind": "perp", "funding_interval_hours": 8.0, "expiry": None} for i, m, q, s in rows])
    streams = bybit.plan(inst, ["BTC", "ETH"])
    assert {s.instrument for s in streams} == {"BTCUSDT", "BTCUSD"}
    assert {s.name for s in streams if s.instrument == "BTCUSD"} == {
        "funding_rates", "open_interest", "long_short_ratio/accounts", "prices/perp", "prices/mark", "prices/index"}
    assert all(s.param("category") == ("inverse" if s.instrument == "BTCUSD" else "linear") for s in streams)


@pytest.mark.parametrize("venue", ["bybit", "okx"])
def test_a_dated_future_is_planned_on_the_runs_clock(venue, monkeypatch):
    """A future that expired after the run's clock (PERPWATCH_NOW) but before the wall clock is still
    planned on that run: a pinned backfill or replay sees the listings of its own time."""
    mod = {"bybit": bybit, "okx": okx}[venue]
    name, margin, quote = {"bybit": ("BTCUSDT-28NOV26", "linear", "USDT"),
                           "okx": ("BTC-USD-261127", "inverse", "USD")}[venue]
    inst = pl.DataFrame([{"venue": venue, "instrument": name, "asset": "BTC", "margin": margin, "quote": quote,
                          "status": "trading", "kind": "future", "funding_interval_hours": None,
                          "expiry": datetime(2026, 11, 27, 8, tzinfo=UTC)}])
    def planned() -> set:
        return {s.instrument for s in mod.plan(inst, ["BTC"])}

    monkeypatch.setenv("PERPWATCH_NOW", "2026-11-20T00:00:00Z")
    assert planned() == {name}
    monkeypatch.setenv("PERPWATCH_NOW", "2026-11-28T00:00:00Z")
    assert planned() == set()


def test_bybit_inverse_open_interest_is_usd_one_side(fixture):
    data = fixture("bybit/v5_market_open-interest.json")
    df = bybit.parse_open_interest(data, {"category": "inverse", "symbol": "BTCUSD", "intervalTime": "1d"},
                                   ctx())["open_interest"]
    assert df.height == 5
    assert df["ts"].is_sorted()                                     # newest first on the wire
    last = df.row(-1, named=True)
    assert last["ts"] == datetime(2026, 6, 9, tzinfo=UTC)            # 1780963200000
    assert (last["margin"], last["asset"]) == ("inverse", "BTC")
    assert last["oi_usd"] == 31955346.0                              # singleOpenInterest, not 63,910,691
    assert last["oi_contracts"] == 31955346.0                        # 1 contract = 1 USD
    assert last["oi_base"] is None                                   # valued from the perp price by the pipeline
    assert df.row(0, named=True)["oi_usd"] == 31971156.0
    # before June 2026 there was no singleOpenInterest: half of the documented both-sides sum
    for row in data["result"]["list"]:
        row.pop("singleOpenInterest")
    old = bybit.parse_open_interest(data, {"category": "inverse", "symbol": "BTCUSD"}, ctx())["open_interest"]
    assert old.row(-1, named=True)["oi_usd"] == pytest.approx(63910691 / 2)   # 31,955,345.5


def test_bybit_linear_open_interest_is_base_coin_halved():
    data = {"retCode": 0, "retMsg": "OK", "result": {"symbol": "BTCUSDT", "category": "linear", "list": [
        {"openInterest": "117659.562", "timestamp": "1780560000000"},
        {"openInterest": "117520.500", "singleOpenInterest": "", "timestamp": "1780556400000"}],
        "nextPageCursor": ""}}
    df = bybit.parse_open_interest(data, {"category": "linear", "symbol": "BTCUSDT"}, ctx())["open_interest"]
    r0, r1 = df.rows(named=True)
    assert r0["ts"] == datetime(2026, 6, 4, 7, tzinfo=UTC) and r1["ts"] == datetime(2026, 6, 4, 8, tzinfo=UTC)
    assert r0["oi_base"] == pytest.approx(58760.25)                 # 117520.5 / 2 (empty single -> halve)
    assert r1["oi_base"] == pytest.approx(58829.781)                 # = tickers' real openInterest 58829.781
    assert r1["oi_contracts"] == pytest.approx(58829.781) and r1["oi_usd"] is None
    # 1000PEPEUSDT counts thousands of PEPE
    pepe = {"retCode": 0, "result": {"symbol": "1000PEPEUSDT", "category": "linear",
                                     "list": [{"openInterest": "20", "singleOpenInterest": "10", "timestamp": "0"}]}}
    p = bybit.parse_open_interest(pepe, {}, ctx())["open_interest"].row(0, named=True)
    assert (p["asset"], p["oi_contracts"], p["oi_base"]) == ("PEPE", 10.0, 10000.0)


def test_bybit_account_ratio_computed_from_shares(fixture):
    df = bybit.parse_account_ratio(fixture("bybit/v5_market_account-ratio.json"),
                                   {"category": "linear", "symbol": "BTCUSDT", "period": "1h"}, ctx())["long_short_ratio"]
    r0, r1 = df.rows(named=True)
    assert r0["ts"] == datetime(2023, 10, 2, 15, tzinfo=UTC)        # sorted: the older row first
    assert (r0["long_share"], r0["short_share"]) == (0.4927, 0.5073)
    assert r0["ratio"] == pytest.approx(0.4927 / 0.5073)             # 0.97122...
    assert r1["ratio"] == pytest.approx(0.49 / 0.51)                 # 0.96078...
    assert set(df["population"]) == {"accounts"}


def test_bybit_funding_8h_from_instruments(fixture):
    inst = bybit.parse_instruments(fixture("bybit/v5_market_instruments-info.linear.json"),
                                   {"category": "linear"}, ctx())["instruments"]
    known = as_ctx(inst.with_columns(pl.lit("ETHPERP").alias("instrument"), pl.lit("ETH").alias("asset")))   # 480 min
    df = bybit.parse_funding_history(fixture("bybit/v5_market_funding_history.json"), {}, ctx(known))["funding_rates"]
    r = df.row(0, named=True)
    assert r["funding_time"] == datetime(2022, 12, 26, 8, tzinfo=UTC)
    assert (r["instrument"], r["asset"]) == ("ETHPERP", "ETH")
    assert r["interval_hours"] == 8.0
    assert r["rate_8h"] == pytest.approx(0.0001)
    assert r["rate_annualized"] == pytest.approx(0.0001 * 3 * 365)


def test_bybit_funding_4h_and_1h_intervals():
    def page(sym, rows):
        return {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": [
            {"symbol": sym, "fundingRate": r, "fundingRateTimestamp": str(t)} for r, t in rows]}}
    t0 = 1780560000000                                               # 2026-06-04 08:00
    four = page("SOLUSDT", [("0.0003", t0 + 8 * 3600_000), ("-0.0001", t0 + 4 * 3600_000), ("0.0002", t0)])
    df = bybit.parse_funding_history(four, {}, ctx())["funding_rates"]   # spacing says 4h (no metadata)
    assert df["interval_hours"].to_list() == [4.0, 4.0, 4.0]
    assert df["rate_8h"].to_list() == pytest.approx([0.0004, -0.0002, 0.0006])
    one = page("XUSDT", [("0.00005", t0)])                          # lone row: the instrument's 60 minutes
    known = {("bybit", "XUSDT"): {"funding_interval_hours": 1.0}}
    r = bybit.parse_funding_history(one, {}, ctx(known))["funding_rates"].row(0, named=True)
    assert (r["interval_hours"], r["rate_8h"]) == (1.0, pytest.approx(0.0004))
    assert r["rate_annualized"] == pytest.approx(0.00005 * 24 * 365)


def test_bybit_klines_newest_first_units_and_forming_bar(fixture):
    data = fixture("bybit/v5_market_kline.inverse.json")
    params = {"category": "inverse", "symbol": "BTCUSD", "interval": "60"}
    df = bybit.PARSERS["/v5/market/kline"](data, params, ctx())["prices"]
    assert df["ts"].to_list() == [datetime(2022, 12, 9, h, tzinfo=UTC) for h in (16, 17, 18)]
    last = df.row(-1, named=True)
    assert (last["open"], last["high"], last["low"], last["close"]) == (17071.0, 17073.0, 17027.0, 17055.5)
    assert last["volume_usd"] == 268611.0                           # inverse: volume is USD
    assert last["volume_base"] == pytest.approx(15.74462667)         # inverse: turnover is BTC
    assert 17000 < last["volume_usd"] / last["volume_base"] < 17100  # implied price, sanity of the swap
    assert (last["kind"], last["interval"], last["asset"]) == ("perp", "1h", "BTC")
    # fetched at 18:30 the 18:00 bar is still forming: dropped
    early = bybit.PARSERS["/v5/market/kline"](data, params, ctx(fetched_at=datetime(2022, 12, 9, 18, 30, tzinfo=UTC)))
    assert early["prices"]["ts"].max() == datetime(2022, 12, 9, 17, tzinfo=UTC)
    # linear: volume is base coin, turnover is quote
    lin = {"retCode": 0, "result": {"symbol": "BTCUSDT", "category": "linear",
                                    "list": [["1670608800000", "1", "2", "0.5", "1.5", "10.5", "15.75"]]}}
    r = bybit.PARSERS["/v5/market/kline"](lin, {"symbol": "BTCUSDT", "interval": "60"}, ctx())["prices"].row(0, named=True)
    assert (r["volume_base"], r["volume_usd"]) == (10.5, 15.75)
    mark = bybit.PARSERS["/v5/market/mark-price-kline"](fixture("bybit/v5_market_mark-kline.json"),
                                                         {"category": "linear", "symbol": "BTCUSDT", "interval": "60"},
                                                         ctx())["prices"].row(0, named=True)
    assert (mark["kind"], mark["close"], mark["volume_base"]) == ("mark", 17131.64, None)
    idx = bybit.PARSERS["/v5/market/index-price-kline"](fixture("bybit/v5_market_index-kline.json"),
                                                         {"category": "inverse", "symbol": "BTCUSDZ22", "interval": "60"},
                                                         ctx())["prices"]
    assert idx["kind"].to_list() == ["index", "index"] and idx["close"].to_list() == [17167.00, 17163.07]
    with pytest.raises(ValueError, match="unsupported interval"):       # the doc request was interval=1
        bybit.PARSERS["/v5/market/index-price-kline"](fixture("bybit/v5_market_index-kline.json"),
                                                       {"symbol": "BTCUSDZ22", "interval": "1"}, ctx())


def test_bybit_error_envelope_raises_clearly():
    err = {"retCode": 10001, "retMsg": "params error: Symbol is invalid", "result": {}, "time": 1}
    with pytest.raises(ValueError, match=r"open-interest \[BTCUSDX\]: retCode 10001 'params error: Symbol is invalid'"):
        bybit.parse_open_interest(err, {"symbol": "BTCUSDX", "category": "linear"}, ctx())
    # a rate-limited reply (retried at fetch time) parses to nothing on replay
    limited = {"retCode": 10006, "retMsg": "Too many visits!", "result": {}}
    assert bybit.parse_funding_history(limited, {"symbol": "BTCUSDT"}, ctx())["funding_rates"].height == 0
    with pytest.raises(ValueError, match="retCode"):
        bybit.parse_account_ratio([], {}, ctx())


class FakeClient:
    """Returns canned bodies in order, like VenueClient.get (landing aside)."""

    def __init__(self, source, bodies):
        self.source, self.bodies, self.calls, self.budgets = source, [orjson.dumps(b) for b in bodies], [], {}
        self.stats = {"rate_limited": 0}

    def _count(self, key):
        self.stats[key] += 1

    def get(self, endpoint, params=None, **kw):
        self.calls.append((endpoint, dict(params or {})))
        return Fetched(len(self.calls), self.source, endpoint, dict(params or {}), 200, self.bodies.pop(0))


def test_bybit_rate_limit_code_retries_then_other_codes_raise(monkeypatch):
    monkeypatch.setattr(bybit.time, "sleep", lambda s: None)
    ok = {"retCode": 0, "retMsg": "OK", "result": {"list": []}}
    cl = FakeClient("bybit", [{"retCode": 10006, "retMsg": "Too many visits!"}, ok])
    page = bybit._get(cl, "/v5/market/account-ratio", {"symbol": "BTCUSDT"})
    assert page.raw_id == 2 and cl.stats["rate_limited"] == 1
    cl = FakeClient("bybit", [{"retCode": 10001, "retMsg": "params error: Symbol is invalid"}])
    with pytest.raises(BadRequest, match=r"bybit /v5/market/kline \[BTCUSDX\]: retCode 10001"):
        bybit._get(cl, "/v5/market/kline", {"symbol": "BTCUSDX"})
    cl = FakeClient("bybit", [{"retCode": 10006, "retMsg": "Too many visits!"}] * (bybit.MAX_RATE_RETRIES + 1))
    with pytest.raises(RateLimited, match="retCode 10006"):
        bybit._get(cl, "/v5/market/kline", {"symbol": "BTCUSDT"})


def test_bybit_funding_pages_backward_with_end_time():
    t = 1780560000000
    full = {"retCode": 0, "result": {"list": [{"symbol": "BTCUSDT", "fundingRate": "0.0001",
                                               "fundingRateTimestamp": str(t - i * 8 * 3600_000)} for i in range(200)]}}
    rest = {"retCode": 0, "result": {"list": []}}
    cl = FakeClient("bybit", [full, rest])
    s = Stream("bybit", "funding_rates", "funding_rates", "BTCUSDT", extra=(("category", "linear"),))
    start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime.fromtimestamp(t / 1000, UTC)
    assert len(list(bybit.fetch(cl, s, start, end))) == 2
    (_, p1), (_, p2) = cl.calls
    assert p1["endTime"] == t and p1["startTime"] == int(start.timestamp() * 1000)   # never startTime alone
    assert p2["endTime"] == t - 199 * 8 * 3600_000 - 1


# =========================================================================== OKX

def okx_instruments(fixture) -> pl.DataFrame:
    return okx.parse_instruments(fixture("okx/api_v5_public_instruments.swap.json"), {"instType": "SWAP"},
                                 ctx())["instruments"]


def test_okx_instruments_contract_values(fixture):
    df = okx_instruments(fixture)
    by = {r["instrument"]: r for r in df.iter_rows(named=True)}
    btc, eth, inv = by["BTC-USDT-SWAP"], by["ETH-USDT-SWAP"], by["BTC-USD-SWAP"]
    assert (btc["contract_size"], btc["contract_unit"], btc["margin"], btc["quote"], btc["settle"]) == \
        (0.01, "base", "linear", "USDT", "USDT")
    assert (eth["contract_size"], eth["asset"]) == (0.1, "ETH")
    assert (inv["contract_size"], inv["contract_unit"], inv["margin"], inv["quote"], inv["settle"]) == \
        (100.0, "usd", "inverse", "USD", "BTC")
    assert set(df["status"]) == {"trading"} and set(df["kind"]) == {"perp"}
    spot = okx.parse_instruments(fixture("okx/api_v5_public_instruments.spot_doc_example.json"),
                                 {"instType": "SPOT"}, ctx())["instruments"]
    assert spot.height == 0                                          # spot pairs are not instruments here


def test_okx_instrument_missing_from_listing_is_delisted(fixture):
    known = as_ctx(okx_instruments(fixture))
    gone = dict(known[("okx", "ETH-USDT-SWAP")], instrument="XRP-USDT-SWAP", asset="XRP")
    known[("okx", "XRP-USDT-SWAP")] = gone
    known[("okx", "BTC-USD-261226")] = dict(gone, instrument="BTC-USD-261226", kind="future")
    df = okx.parse_instruments(fixture("okx/api_v5_public_instruments.swap.json"), {"instType": "SWAP"},
                               ctx(known))["instruments"]
    status = dict(zip(df["instrument"], df["status"], strict=True))
    assert status["XRP-USDT-SWAP"] == "delisted" and status["BTC-USDT-SWAP"] == "trading"
    assert "BTC-USD-261226" not in status                          # a FUTURES listing decides futures
    assert df.filter(pl.col("instrument") == "XRP-USDT-SWAP")["contract_size"][0] == 0.1   # full row kept
    merged = pipeline.merge_instruments(df)
    plan = okx.plan(merged, ["BTC", "ETH", "XRP"])
    assert "XRP-USDT-SWAP" not in {s.instrument for s in plan}
    assert {s.instrument for s in plan} == {"BTC-USDT-SWAP", "ETH-USDT-SWAP", "BTC-USD-SWAP"}


def test_okx_funding_interval_from_next_minus_current(fixture):
    df = okx.parse_funding_now(fixture("okx/api_v5_public_funding-rate.json"), {"instId": "ANY"}, ctx())["instruments"]
    assert df.row(0, named=True) == {"venue": "okx", "instrument": "BTC-USDT-SWAP", "funding_interval_hours": 8.0}
    four = copy.deepcopy(fixture("okx/api_v5_public_funding-rate.json"))
    four["data"][0].update(instId="SOL-USDT-SWAP", nextFundingTime=str(1743609600000 + 4 * 3600_000))
    assert okx.parse_funding_now(four, {}, ctx())["instruments"]["funding_interval_hours"][0] == 4.0


def test_okx_funding_history_realized_rate_and_intervals(fixture):
    df = okx.parse_funding_history(fixture("okx/api_v5_public_funding-rate-history.json"),
                                   {"instId": "BTC-USD-SWAP"}, ctx())["funding_rates"]
    r0, r1 = df.rows(named=True)
    assert (r0["funding_time"], r1["funding_time"]) == (datetime(2023, 12, 20, 0, tzinfo=UTC),
                                                        datetime(2023, 12, 20, 8, tzinfo=UTC))
    assert r1["funding_rate"] == pytest.approx(0.0000746572360545)     # realizedRate, not fundingRate
    assert r0["funding_rate"] == pytest.approx(0.0002279755647389)
    assert (r0["interval_hours"], r1["interval_hours"]) == (8.0, 8.0)
    assert r1["rate_8h"] == pytest.approx(0.0000746572360545)
    # 4h funding (nextFundingTime - fundingTime = 4h): rate_8h is twice the rate
    known = {("okx", "SOL-USDT-SWAP"): {"funding_interval_hours": 4.0}}
    lone = {"code": "0", "msg": "", "data": [{"instId": "SOL-USDT-SWAP", "fundingRate": "0.0003",
                                              "realizedRate": "", "fundingTime": "1703059200000"}]}
    r = okx.parse_funding_history(lone, {}, ctx(known))["funding_rates"].row(0, named=True)
    assert (r["funding_rate"], r["interval_hours"]) == (0.0003, 4.0)     # empty realizedRate -> fundingRate
    assert r["rate_8h"] == pytest.approx(0.0006)
    assert r["rate_annualized"] == pytest.approx(0.0003 * 6 * 365)


def test_okx_open_interest_units_agree_with_ct_val(fixture):
    known = as_ctx(okx_instruments(fixture))
    real = fixture("okx/api_v5_public_open-interest.real_2022-09-24.json")["data"][0]
    ts = "1664002800000"
    page = {"code": "0", "msg": "", "data": [[ts, real["oi"], real["oiCcy"], ""]]}
    r = okx.parse_oi_history(page, {"instId": "BTC-USDT-SWAP"}, ctx(known))["open_interest"].row(0, named=True)
    assert r["oi_contracts"] == 2125419.0
    assert r["oi_base"] == pytest.approx(21254.19) == pytest.approx(2125419 * 0.01)   # ctVal 0.01 BTC
    assert r["oi_usd"] is None and r["margin"] == "linear"
    # without oiCcy the contract size gives the same coins
    page = {"code": "0", "msg": "", "data": [[ts, real["oi"]]]}
    assert okx.parse_oi_history(page, {"instId": "BTC-USDT-SWAP"}, ctx(known))["open_interest"]["oi_base"][0] == \
        pytest.approx(21254.19)
    # real 2024 row: NEIRO-USDT-SWAP, ctVal 1000 NEIRO: oiCcy = oi x 1000, oiUsd as reported
    neiro = fixture("okx/api_v5_public_open-interest.real_2024-10-12.json")["data"][0]
    kn = {("okx", "NEIRO-USDT-SWAP"): {"contract_size": 1000.0, "contract_unit": "base", "margin": "linear"}}
    page = {"code": "0", "msg": "", "data": [[neiro["ts"], neiro["oi"], neiro["oiCcy"], neiro["oiUsd"]]]}
    r = okx.parse_oi_history(page, {"instId": "NEIRO-USDT-SWAP"}, ctx(kn))["open_interest"].row(0, named=True)
    assert (r["oi_base"], r["oi_usd"]) == (14546007000.0, pytest.approx(30921319.84032))
    # inverse BTC-USD-SWAP: 100 USD contracts -> oi_usd = contracts x 100, coins as reported
    page = {"code": "0", "msg": "", "data": [["1701417600000", "6507344", "7268.95535", "650734400"],
                                             ["1701414000000", "6534747"]]}
    df = okx.parse_oi_history(page, {"instId": "BTC-USD-SWAP"}, ctx(known))["open_interest"]
    older, newer = df.rows(named=True)
    assert (newer["oi_usd"], newer["oi_base"], newer["margin"]) == (650734400.0, 7268.95535, "inverse")
    assert (older["oi_usd"], older["oi_base"]) == (653474700.0, None)      # oi_base valued by the pipeline


def test_okx_open_interest_unit_disagreement_is_refused(fixture):
    doc = fixture("okx/api_v5_rubik_stat_contracts_open-interest-history.json")
    # the doc example's placeholders: 731377.575 contracts of 0.01 BTC are 7313.78 BTC, not oiCcy 111
    with pytest.raises(ValueError, match=r"oiCcy=111.0 disagrees with contracts x contract size = 7313.77"):
        okx.parse_oi_history(doc, {"instId": "BTC-USDT-SWAP"}, ctx(as_ctx(okx_instruments(fixture))))
    # unknown instrument (no ctVal): the reported values are taken as they are
    df = okx.parse_oi_history(doc, {"instId": "BTC-USDT-SWAP"}, ctx())["open_interest"]
    assert df["ts"].to_list() == [datetime(2023, 12, 1, 7, 58, 20, tzinfo=UTC), datetime(2023, 12, 1, 8, tzinfo=UTC)]
    assert df.row(1, named=True)["oi_usd"] == 8888888.0 and df.row(1, named=True)["oi_base"] == 111.0


@pytest.mark.parametrize("name,endpoint,population", [
    ("long-short-account-ratio-contract", okx.RATIO_ENDPOINTS["accounts"], "accounts"),
    ("long-short-account-ratio-contract-top-trader", okx.RATIO_ENDPOINTS["top_accounts"], "top_accounts"),
    ("long-short-position-ratio-contract-top-trader", okx.RATIO_ENDPOINTS["top_positions"], "top_positions"),
])
def test_okx_long_short_shares_from_ratio(fixture, name, endpoint, population):
    df = okx.PARSERS[endpoint](fixture(f"okx/api_v5_rubik_stat_contracts_{name}.json"),
                               {"instId": "BTC-USDT-SWAP", "period": "1H"}, ctx())["long_short_ratio"]
    r = df.row(0, named=True)
    assert r["ts"] == datetime(2023, 12, 1, 8, tzinfo=UTC) and r["population"] == population
    assert r["ratio"] == 1.1739
    assert r["long_share"] == pytest.approx(1.1739 / 2.1739)        # 0.54000...
    assert r["short_share"] == pytest.approx(1 / 2.1739)
    assert df.row(1, named=True)["long_share"] == pytest.approx(0.1236 / 1.1236)


def test_okx_candles_confirm_order_and_units(fixture):
    df = okx.PARSERS["/api/v5/market/candles"](fixture("okx/api_v5_market_candles.json"),
                                               {"instId": "BTC-USDT-SWAP", "bar": "1H"}, ctx())["prices"]
    assert df.height == 1                                            # confirm "0" (forming) dropped
    r = df.row(0, named=True)
    assert (r["open"], r["high"], r["low"], r["close"]) == (3.731, 3.799, 3.494, 3.72)
    assert r["volume_base"] == pytest.approx(67632347.24399722)      # volCcy (coin), not vol (contracts)
    assert r["volume_usd"] == pytest.approx(37632347.24399722)       # volCcyQuote
    hist = okx.PARSERS["/api/v5/market/history-candles"](fixture("okx/api_v5_market_history-candles.json"),
                                                         {"instId": "BTC-USDT-SWAP", "bar": "1H"}, ctx())["prices"]
    assert hist.height == 2
    page = {"code": "0", "msg": "", "data": [["1701421200000", "2", "2", "2", "2", "1"],
                                             ["1701417600000", "1", "1", "1", "1", "1"]]}
    idx = okx.PARSERS["/api/v5/market/index-candles"](page, {"instId": "BTC-USDT", "bar": "1H"}, ctx())["prices"]
    assert idx["ts"].to_list() == [datetime(2023, 12, 1, 8, tzinfo=UTC), datetime(2023, 12, 1, 9, tzinfo=UTC)]
    assert idx["close"].to_list() == [1.0, 2.0]
    assert set(idx["instrument"]) == {"BTC-USDT-SWAP"} and set(idx["kind"]) == {"index"}   # joins the perp
    # inverse swap without volCcyQuote: contracts x 100 USD
    known = as_ctx(okx_instruments(fixture))
    inv = {"code": "0", "data": [["1701417600000", "1", "1", "1", "40000", "50", "0.125", "", "1"]]}
    r = okx.PARSERS["/api/v5/market/history-candles"](inv, {"instId": "BTC-USD-SWAP", "bar": "1H"},
                                                       ctx(known))["prices"].row(0, named=True)
    assert (r["volume_base"], r["volume_usd"]) == (0.125, 5000.0)
    with pytest.raises(ValueError, match="unsupported bar '1D'"):     # UTC+8 daily bars are never stored
        okx.PARSERS["/api/v5/market/candles"](fixture("okx/api_v5_market_candles.json"), {"instId": "X", "bar": "1D"}, ctx())


def test_okx_error_envelopes():
    err = {"code": "51001", "msg": "Instrument ID does not exist", "data": []}
    with pytest.raises(ValueError, match=r"okx /api/v5/rubik/stat/contracts/open-interest-history \[BTC-USDX-SWAP\]: "
                                         r"code 51001 'Instrument ID does not exist'"):
        okx.parse_oi_history(err, {"instId": "BTC-USDX-SWAP"}, ctx())
    limited = {"code": "50011", "msg": "Too Many Requests", "data": []}
    assert okx.parse_funding_history(limited, {"instId": "BTC-USDT-SWAP"}, ctx())["funding_rates"].height == 0


def test_okx_50011_backs_off_and_retries(monkeypatch):
    monkeypatch.setattr(okx.time, "sleep", lambda s: None)
    cl = FakeClient("okx", [{"code": "50011", "msg": "Too Many Requests", "data": []},
                            {"code": "0", "msg": "", "data": []}])
    assert okx._get(cl, okx.FUNDING_HISTORY, {"instId": "BTC-USDT-SWAP"}).raw_id == 2
    assert cl.stats["rate_limited"] == 1
    cl = FakeClient("okx", [{"code": "51000", "msg": "Parameter limit error", "data": []}])
    with pytest.raises(BadRequest, match=r"okx /api/v5/public/funding-rate-history \[BTC-USDT-SWAP\]: code 51000"):
        okx._get(cl, okx.FUNDING_HISTORY, {"instId": "BTC-USDT-SWAP"})


# =========================================================================== pipeline valuation

def test_value_open_interest_fills_the_missing_side_from_the_perp_price(tmp_path, fixture):
    con = warehouse.connect(tmp_path / "v.duckdb")
    try:
        bars = pl.DataFrame({"venue": "bybit", "instrument": "BTCUSD", "kind": "perp", "interval": "1h",
                             "ts": [datetime(2026, 6, 8, 23, tzinfo=UTC), datetime(2026, 6, 9, 0, tzinfo=UTC)],
                             "asset": "BTC", "open": [99000.0, 100000.0], "close": [100000.0, 101000.0]})
        inst = pl.DataFrame({"venue": "bybit", "instrument": ["BTCUSD"], "asset": "BTC", "multiplier": 1.0})
        with warehouse.transaction(con):
            warehouse.upsert(con, "staging.prices", bars)
            warehouse.upsert(con, "staging.instruments", inst)
        oi = bybit.parse_open_interest(fixture("bybit/v5_market_open-interest.json"),
                                       {"category": "inverse", "symbol": "BTCUSD"}, ctx())["open_interest"]
        out = pl.concat(pipeline.value_open_interest(con, [oi]))
        r = out.filter(pl.col("ts") == datetime(2026, 6, 9, tzinfo=UTC)).row(0, named=True)
        # the price at 00:00 is the close of the 23:00 bar (it ends at 00:00): 100,000 USD/BTC
        assert r["oi_base"] == pytest.approx(31955346 / 100000.0)
        assert r["oi_usd"] == 31955346.0
        assert out.filter(pl.col("ts") < datetime(2026, 6, 8, tzinfo=UTC))["oi_base"].is_null().all()   # no price
    finally:
        con.close()


# =========================================================================== end to end (simulator)

NOW = datetime(2026, 11, 20, tzinfo=UTC)
START = NOW - timedelta(days=3)


@pytest.fixture(scope="module")
def sim():
    from perpwatch.simulator.server import start
    s = start(port=0, seed=7, now=NOW, ws_port=None)
    yield s
    s.stop()


@pytest.fixture
def env(sim, monkeypatch):
    for k, v in sim.env().items():
        monkeypatch.setenv(k, v)
    return sim


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def staging_counts(db, venue: str) -> dict[tuple[str, str], int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for t in ("open_interest", "funding_rates", "long_short_ratio", "prices"):
            extra = ", population" if t == "long_short_ratio" else ", kind" if t == "prices" else ""
            for row in con.execute(f"SELECT instrument{extra}, count(*) FROM staging.{t} WHERE venue = ? "
                                   f"GROUP BY ALL", [venue]).fetchall():
                out[(t, *row[:-1])] = row[-1]
        return out
    finally:
        con.close()


def run_twice(db, venue):
    r1 = jobs.run(kind="backfill", start=START, end=NOW, venues=[venue], assets=["BTC"], db=db, build=False)
    assert r1.status == "success", r1.errors + r1.warnings
    c1 = staging_counts(db, venue)
    r2 = jobs.run(kind="backfill", start=START, end=NOW, venues=[venue], assets=["BTC"], db=db, build=False)
    assert r2.status == "success", r2.errors + r2.warnings
    assert r2.totals()["loaded"] == 0 and r2.totals()["fetched"] == r1.totals()["fetched"]
    assert staging_counts(db, venue) == c1
    return r1, c1


def test_bybit_end_to_end_counts_rerun_and_units(env, tmp_path):
    base = env.env()["PERPWATCH_URL_BYBIT"]
    db = tmp_path / "bybit.duckdb"
    r1, got = run_twice(db, "bybit")
    expected = {}
    for sym, cat in (("BTCUSDT", "linear"), ("BTCUSD", "inverse")):
        q = {"category": cat, "symbol": sym}
        def n(path, q=q, **p):
            body = requests.get(base + path, params={**q, **p}, timeout=10).json()
            assert body["retCode"] == 0, body
            return len(body["result"]["list"])
        expected[("open_interest", sym)] = n("/v5/market/open-interest", intervalTime="1h", startTime=ms(START),
                                             endTime=ms(NOW), limit=200)
        expected[("long_short_ratio", sym, "accounts")] = n("/v5/market/account-ratio", period="1h",
                                                            startTime=ms(START), endTime=ms(NOW), limit=500)
        expected[("funding_rates", sym)] = n("/v5/market/funding/history", startTime=ms(START), endTime=ms(NOW),
                                             limit=200)
        for kind, path in (("perp", "/v5/market/kline"), ("mark", "/v5/market/mark-price-kline"),
                           ("index", "/v5/market/index-price-kline")):
            expected[("prices", sym, kind)] = n(path, interval="60", start=ms(START), end=ms(NOW), limit=1000)
    assert got == expected
    assert expected[("open_interest", "BTCUSD")] == 73 and expected[("prices", "BTCUSD", "perp")] == 72
    assert expected[("funding_rates", "BTCUSDT")] == 10                   # 8h settlements, both window edges
    # units: linear (coins, halved) and inverse (USD -> coins at the perp price) both match the model's OI
    con = duckdb.connect(str(db), read_only=True)
    oi = con.sql("SELECT instrument, epoch_ms(ts) AS t, oi_base, oi_usd FROM staging.open_interest "
                 "ORDER BY instrument, ts").pl()
    con.close()
    assert oi["oi_base"].null_count() == 0 and oi["oi_usd"].null_count() == 0
    for inst, model_venue in (("BTCUSDT", "bybit"), ("BTCUSD", "bybit_inv")):
        d = oi.filter(pl.col("instrument") == inst)
        truth = env.market.open_interest("BTC", d["t"].to_numpy(), model_venue)
        assert abs(d["oi_base"].to_numpy() / truth - 1).max() < 1e-4, inst


def test_okx_end_to_end_counts_rerun_and_units(env, tmp_path):
    base = env.env()["PERPWATCH_URL_OKX"]
    db = tmp_path / "okx.duckdb"
    r1, got = run_twice(db, "okx")
    expected = {}

    def n(path, **p):
        for _ in range(40):   # the test's own requests share the simulator's 5-per-2s limit: wait it out
            resp = requests.get(base + path, params=p, timeout=10)
            body = resp.json()
            if resp.status_code != 429 and body.get("code") != "50011":
                break
            time.sleep(0.25)
        assert body["code"] == "0", body
        return len([r for r in body["data"] if not (isinstance(r, list) and r[-1] == "0" and "candles" in path)])
    for inst in ("BTC-USDT-SWAP", "BTC-USD-SWAP"):
        # rubik begin/end are exclusive (OKX docs): [START, NOW] is asked as begin=START-1, end=NOW+1
        win = {"instId": inst, "period": "1H", "begin": ms(START) - 1, "end": ms(NOW) + 1, "limit": 100}
        expected[("open_interest", inst)] = n(okx.OI_HISTORY, **win)
        for pop, ep in okx.RATIO_ENDPOINTS.items():
            expected[("long_short_ratio", inst, pop)] = n(ep, **win)
        expected[("funding_rates", inst)] = n(okx.FUNDING_HISTORY, instId=inst, before=ms(START) - 1,
                                              after=ms(NOW) + 1, limit=400)
        for kind, path, iid in (("perp", "/api/v5/market/candles", inst),
                                ("mark", "/api/v5/market/mark-price-candles", inst),
                                ("index", "/api/v5/market/index-candles", okx.index_id(inst))):
            expected[("prices", inst, kind)] = n(path, instId=iid, bar="1H", before=ms(START) - 1,
                                                 after=ms(NOW) + 1, limit=100)
    assert got == expected
    assert expected[("open_interest", "BTC-USD-SWAP")] == 73 and expected[("prices", "BTC-USD-SWAP", "perp")] == 72
    con = duckdb.connect(str(db), read_only=True)
    oi = con.sql("SELECT o.instrument, o.oi_contracts, o.oi_base, o.oi_usd, i.contract_size, i.contract_unit "
                 "FROM staging.open_interest o JOIN staging.instruments i USING (venue, instrument)").pl()
    fi = con.sql("SELECT DISTINCT instrument, funding_interval_hours FROM staging.instruments").pl()
    con.close()
    lin = oi.filter(pl.col("contract_unit") == "base")
    inv = oi.filter(pl.col("contract_unit") == "usd")
    assert lin.height == inv.height == 73
    assert ((lin["oi_base"] - lin["oi_contracts"] * 0.01).abs() < 1e-6).all()          # ctVal 0.01 BTC
    assert ((inv["oi_usd"] - inv["oi_contracts"] * 100.0).abs() < 1e-6).all()          # 100 USD contracts
    assert set(fi["funding_interval_hours"]) == {8.0}
