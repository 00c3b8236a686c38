"""Tests for the venue simulator (simulator/)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from perpwatch.simulator.server import HTTP_ENV, WS_ENV, start

FIX = Path(__file__).resolve().parent / "fixtures"   # venue payload copies (docs/venues.md)
NOW = datetime(2026, 11, 20, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
DAY = 86_400_000
HOUR = 3_600_000


@pytest.fixture(scope="module")
def sim():
    s = start(seed=7, now=NOW, limits_scale=100)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http():
    with requests.Session() as s:
        yield s


def url(sim, env: str, path: str) -> str:
    return sim.env()[env] + path


def get(http, sim, env, path, **params):
    r = http.get(url(sim, env, path), params=params, timeout=30)
    return r


# ------------------------------------------------------------------------------------ shapes


def shape(v):
    """JSON 'type skeleton' of a value: dict keys, list element shape, scalar JSON type."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if v is None:
        return "null"
    return type(v).__name__


def load(rel: str):
    return json.loads((FIX / rel).read_text())


def assert_same_shape(got, fixture, path="$", overrides=None, ignore_extra: bool = False):
    """Same keys and JSON types as the fixture (recursively; first list element only)."""
    overrides = overrides or {}
    if path in overrides:
        assert shape(got) == overrides[path], (path, shape(got))
        return
    if isinstance(fixture, dict):
        assert isinstance(got, dict), (path, type(got))
        if ignore_extra:
            assert set(fixture) <= set(got), (path, set(fixture) - set(got))
        else:
            assert set(got) == set(fixture), (path, set(got) ^ set(fixture))
        for k in fixture:
            # null placeholders in fixtures can be anything in the simulator
            if fixture[k] is None:
                continue
            assert_same_shape(got[k], fixture[k], f"{path}.{k}", overrides, ignore_extra)
    elif isinstance(fixture, list):
        assert isinstance(got, list), (path, type(got))
        if fixture and got:
            assert_same_shape(got[0], fixture[0], f"{path}[]", overrides, ignore_extra)
    else:
        assert shape(got) == shape(fixture), (path, got, fixture)


START_30D = NOW_MS - 30 * DAY + HOUR

SHAPE_CASES = [
    # (fixture, env, path, params, overrides, ignore_extra)
    ("binance/fapi_v1_fundingRate.json", "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/fundingRate",
     {"symbol": "BTCUSDT", "limit": 5}, None, False),
    ("binance/fapi_v1_fundingInfo.json", "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/fundingInfo", {}, None, False),
    ("binance/fapi_v1_klines.json", "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/klines",
     {"symbol": "BTCUSDT", "interval": "1h", "limit": 5}, None, False),
    ("binance/fapi_v1_klines.json", "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/markPriceKlines",
     {"symbol": "BTCUSDT", "interval": "1h", "limit": 5}, None, False),
    ("binance/fapi_v1_klines.json", "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/indexPriceKlines",
     {"pair": "BTCUSDT", "interval": "1h", "limit": 5}, None, False),
    ("binance/fapi_v1_klines.json", "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/premiumIndexKlines",
     {"symbol": "BTCUSDT", "interval": "1h", "limit": 5}, None, False),
    ("binance/api_v3_klines.json", "PERPWATCH_URL_BINANCE_SPOT", "/api/v3/klines",
     {"symbol": "BTCUSDT", "interval": "1d", "limit": 5}, None, False),
    ("binance/fapi_v1_premiumIndex.real.json", "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/premiumIndex",
     {"symbol": "BTCUSDT"}, None, False),
    ("binance/fapi_v1_openInterest.json", "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/openInterest",
     {"symbol": "BTCUSDT"}, None, False),
    # doc examples quote `timestamp`; the live API (and the .real_row fixture) sends an integer
    ("binance/futures_data_openInterestHist.json", "PERPWATCH_URL_BINANCE_FAPI", "/futures/data/openInterestHist",
     {"symbol": "BTCUSDT", "period": "1h", "limit": 5}, {"$[].timestamp": "number"}, False),
    ("binance/futures_data_openInterestHist.real_row.json", "PERPWATCH_URL_BINANCE_FAPI",
     "/futures/data/openInterestHist", {"symbol": "BTCUSDT", "period": "1h", "limit": 5}, None, True),
    ("binance/futures_data_globalLongShortAccountRatio.json", "PERPWATCH_URL_BINANCE_FAPI",
     "/futures/data/globalLongShortAccountRatio", {"symbol": "BTCUSDT", "period": "5m", "limit": 5},
     {"$[].timestamp": "number"}, False),
    ("binance/futures_data_topLongShortAccountRatio.json", "PERPWATCH_URL_BINANCE_FAPI",
     "/futures/data/topLongShortAccountRatio", {"symbol": "BTCUSDT", "period": "5m", "limit": 5},
     {"$[].timestamp": "number"}, False),
    ("binance/futures_data_topLongShortPositionRatio.json", "PERPWATCH_URL_BINANCE_FAPI",
     "/futures/data/topLongShortPositionRatio", {"symbol": "BTCUSDT", "period": "5m", "limit": 5},
     {"$[].timestamp": "number"}, False),
    ("binance/futures_data_takerlongshortRatio.json", "PERPWATCH_URL_BINANCE_FAPI",
     "/futures/data/takerlongshortRatio", {"symbol": "BTCUSDT", "period": "5m", "limit": 5},
     {"$[].timestamp": "number"}, False),
    ("binance/futures_data_basis.json", "PERPWATCH_URL_BINANCE_FAPI", "/futures/data/basis",
     {"pair": "BTCUSDT", "contractType": "PERPETUAL", "period": "1h", "limit": 5}, None, False),
    ("binance/dapi_v1_fundingRate.json", "PERPWATCH_URL_BINANCE_DAPI", "/dapi/v1/fundingRate",
     {"symbol": "BTCUSD_PERP", "limit": 5}, None, False),
    ("binance/dapi_v1_openInterest.json", "PERPWATCH_URL_BINANCE_DAPI", "/dapi/v1/openInterest",
     {"symbol": "BTCUSD_PERP"}, None, False),
    ("binance/dapi_futures_data_openInterestHist.json", "PERPWATCH_URL_BINANCE_DAPI",
     "/futures/data/openInterestHist", {"pair": "BTCUSD", "contractType": "ALL", "period": "1h", "limit": 5},
     None, False),
    ("binance/dapi_futures_data_basis.json", "PERPWATCH_URL_BINANCE_DAPI", "/futures/data/basis",
     {"pair": "BTCUSD", "contractType": "CURRENT_QUARTER", "period": "1h", "limit": 5}, None, False),
    ("binance/fapi_v1_klines.json", "PERPWATCH_URL_BINANCE_DAPI", "/dapi/v1/klines",
     {"symbol": "BTCUSD_PERP", "interval": "1h", "limit": 5}, None, False),
    ("bybit/v5_market_open-interest.json", "PERPWATCH_URL_BYBIT", "/v5/market/open-interest",
     {"category": "inverse", "symbol": "BTCUSD", "intervalTime": "1d", "limit": 5}, None, False),
    ("bybit/v5_market_open-interest.json", "PERPWATCH_URL_BYBIT", "/v5/market/open-interest",
     {"category": "linear", "symbol": "BTCUSDT", "intervalTime": "1h", "limit": 5}, None, False),
    ("bybit/v5_market_funding_history.json", "PERPWATCH_URL_BYBIT", "/v5/market/funding/history",
     {"category": "linear", "symbol": "BTCUSDT", "limit": 5}, None, False),
    ("bybit/v5_market_account-ratio.json", "PERPWATCH_URL_BYBIT", "/v5/market/account-ratio",
     {"category": "linear", "symbol": "BTCUSDT", "period": "1h", "limit": 5}, None, False),
    ("bybit/v5_market_kline.inverse.json", "PERPWATCH_URL_BYBIT", "/v5/market/kline",
     {"category": "inverse", "symbol": "BTCUSD", "interval": "60", "limit": 5}, None, False),
    ("bybit/v5_market_kline.inverse.json", "PERPWATCH_URL_BYBIT", "/v5/market/kline",
     {"category": "linear", "symbol": "BTCUSDT", "interval": "D", "limit": 5}, None, False),
    ("bybit/v5_market_mark-kline.json", "PERPWATCH_URL_BYBIT", "/v5/market/mark-price-kline",
     {"category": "linear", "symbol": "BTCUSDT", "interval": "60", "limit": 5}, None, False),
    ("bybit/v5_market_index-kline.json", "PERPWATCH_URL_BYBIT", "/v5/market/index-price-kline",
     {"category": "inverse", "symbol": "BTCUSD", "interval": "1", "limit": 5}, None, False),
    ("bybit/v5_market_premium-index-kline.json", "PERPWATCH_URL_BYBIT", "/v5/market/premium-index-price-kline",
     {"category": "linear", "symbol": "BTCUSDT", "interval": "D", "limit": 5}, None, False),
    ("bybit/v5_market_tickers.inverse.json", "PERPWATCH_URL_BYBIT", "/v5/market/tickers",
     {"category": "inverse", "symbol": "BTCUSD"}, None, False),
    ("bybit/v5_market_tickers.linear.real_TRUNCATED.json", "PERPWATCH_URL_BYBIT", "/v5/market/tickers",
     {"category": "linear"}, None, True),
    ("bybit/v5_market_instruments-info.linear.json", "PERPWATCH_URL_BYBIT", "/v5/market/instruments-info",
     {"category": "linear"}, None, False),
    ("okx/api_v5_public_open-interest.json", "PERPWATCH_URL_OKX", "/api/v5/public/open-interest",
     {"instType": "SWAP", "instId": "BTC-USDT-SWAP"}, None, False),
    ("okx/api_v5_rubik_stat_contracts_open-interest-history.json", "PERPWATCH_URL_OKX",
     "/api/v5/rubik/stat/contracts/open-interest-history", {"instId": "BTC-USDT-SWAP", "period": "1H"}, None, False),
    ("okx/api_v5_rubik_stat_contracts_open-interest-volume.json", "PERPWATCH_URL_OKX",
     "/api/v5/rubik/stat/contracts/open-interest-volume", {"ccy": "BTC", "period": "1D"}, None, False),
    ("okx/api_v5_rubik_stat_contracts_long-short-account-ratio.json", "PERPWATCH_URL_OKX",
     "/api/v5/rubik/stat/contracts/long-short-account-ratio", {"ccy": "BTC", "period": "1H"}, None, False),
    ("okx/api_v5_rubik_stat_contracts_long-short-account-ratio-contract.json", "PERPWATCH_URL_OKX",
     "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract",
     {"instId": "BTC-USDT-SWAP", "period": "5m"}, None, False),
    ("okx/api_v5_rubik_stat_contracts_long-short-account-ratio-contract-top-trader.json", "PERPWATCH_URL_OKX",
     "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract-top-trader",
     {"instId": "BTC-USDT-SWAP", "period": "5m"}, None, False),
    ("okx/api_v5_rubik_stat_contracts_long-short-position-ratio-contract-top-trader.json", "PERPWATCH_URL_OKX",
     "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader",
     {"instId": "BTC-USDT-SWAP", "period": "5m"}, None, False),
    ("okx/api_v5_public_funding-rate-history.json", "PERPWATCH_URL_OKX", "/api/v5/public/funding-rate-history",
     {"instId": "BTC-USD-SWAP"}, None, False),
    ("okx/api_v5_public_funding-rate.json", "PERPWATCH_URL_OKX", "/api/v5/public/funding-rate",
     {"instId": "BTC-USDT-SWAP"}, None, False),
    ("okx/api_v5_market_candles.json", "PERPWATCH_URL_OKX", "/api/v5/market/candles",
     {"instId": "BTC-USDT-SWAP", "bar": "1H"}, None, False),
    ("okx/api_v5_market_history-candles.json", "PERPWATCH_URL_OKX", "/api/v5/market/history-candles",
     {"instId": "BTC-USD-SWAP", "bar": "1Dutc", "after": str(NOW_MS - 400 * DAY)}, None, False),
    ("okx/api_v5_public_instruments.swap.json", "PERPWATCH_URL_OKX", "/api/v5/public/instruments",
     {"instType": "SWAP"}, None, False),
    ("okx/api_v5_public_mark-price.json", "PERPWATCH_URL_OKX", "/api/v5/public/mark-price",
     {"instType": "SWAP", "instId": "BTC-USDT-SWAP"}, None, False),
    ("okx/api_v5_market_index-tickers.json", "PERPWATCH_URL_OKX", "/api/v5/market/index-tickers",
     {"instId": "BTC-USDT"}, None, False),
    ("okx/api_v5_market_ticker.json", "PERPWATCH_URL_OKX", "/api/v5/market/ticker",
     {"instId": "BTC-USD-SWAP"}, None, False),
    ("deribit/public_get_funding_rate_history.json", "PERPWATCH_URL_DERIBIT",
     "/api/v2/public/get_funding_rate_history",
     {"instrument_name": "BTC-PERPETUAL", "start_timestamp": NOW_MS - DAY, "end_timestamp": NOW_MS}, None, False),
    ("coingecko/api_v3_companies_public_treasury_bitcoin.json", "PERPWATCH_URL_COINGECKO",
     "/api/v3/companies/public_treasury/bitcoin", {}, None, False),
    ("coingecko/api_v3_global.real_2024-05-23.trimmed.json", "PERPWATCH_URL_COINGECKO", "/api/v3/global", {},
     None, True),
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=[f"{c[0]}:{c[2]}" for c in SHAPE_CASES])
def test_shapes_match_fixtures(sim, http, case):
    fixture, env, path, params, overrides, ignore_extra = case
    r = get(http, sim, env, path, **params)
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert_same_shape(body, load(fixture), overrides=overrides, ignore_extra=ignore_extra)
    # non-empty data
    data = body
    for k in ("result", "list", "data"):
        if isinstance(data, dict) and k in data:
            data = data[k]
    if isinstance(data, dict) and "list" in data:
        data = data["list"]
    if isinstance(data, list):
        assert data, f"empty response for {path}"


def test_binance_exchange_info_and_dapi(sim, http):
    info = get(http, sim, "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/exchangeInfo").json()
    fx = load("binance/fapi_v1_exchangeInfo.excerpt.json")
    assert set(fx) <= set(info)
    syms = {s["symbol"]: s for s in info["symbols"]}
    assert {"BTCUSDT", "ETHUSDT", "SOLUSDT"} <= set(syms)
    assert set(fx["symbols"][0]) <= set(syms["BTCUSDT"])
    quarters = [s for s in syms.values() if s["contractType"] in ("CURRENT_QUARTER", "NEXT_QUARTER")]
    assert {s["pair"] for s in quarters} == {"BTCUSDT", "ETHUSDT"}
    assert all(s["deliveryDate"] > NOW_MS and s["status"] == "TRADING" for s in quarters)
    assert all(s["symbol"].startswith(s["pair"] + "_") for s in quarters)
    fi = get(http, sim, "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/fundingInfo").json()
    assert [(x["symbol"], x["fundingIntervalHours"]) for x in fi] == [("SOLUSDT", 4)]
    # SOL settles every 4h now
    rows = get(http, sim, "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/fundingRate", symbol="SOLUSDT", limit=10).json()
    gaps = {(b["fundingTime"] // HOUR - a["fundingTime"] // HOUR) for a, b in zip(rows, rows[1:], strict=False)}
    assert gaps == {4}
    d = get(http, sim, "PERPWATCH_URL_BINANCE_DAPI", "/dapi/v1/exchangeInfo").json()
    fxd = load("binance/dapi_v1_exchangeInfo.excerpt.json")
    cs = {s["symbol"]: s for s in d["symbols"]}
    assert set(fxd["symbols"][0]) <= set(cs["BTCUSD_PERP"])
    assert cs["BTCUSD_PERP"]["contractSize"] == 100
    assert cs["ETHUSD_PERP"]["contractSize"] == 10 and cs["SOLUSD_PERP"]["contractSize"] == 10
    # delivery contracts have no funding
    q = [s for s in cs if s.startswith("BTCUSD_2")][0]
    assert get(http, sim, "PERPWATCH_URL_BINANCE_DAPI", "/dapi/v1/fundingRate", symbol=q).json() == []


def test_hyperliquid_and_deribit_shapes(sim, http):
    h = sim.env()["PERPWATCH_URL_HYPERLIQUID"] + "/info"
    meta, ctxs = http.post(h, json={"type": "metaAndAssetCtxs"}).json()
    fx = load("hyperliquid/info_metaAndAssetCtxs.json")
    assert len(meta["universe"]) == len(ctxs)
    assert set(fx[0]["universe"][0]) <= set(meta["universe"][0])
    assert_same_shape(ctxs, fx[1])
    fh = http.post(h, json={"type": "fundingHistory", "coin": "BTC", "startTime": NOW_MS - 30 * DAY}).json()
    assert_same_shape(fh, load("hyperliquid/info_fundingHistory.json"))
    assert len(fh) == 500  # capped
    assert all(b["time"] > a["time"] for a, b in zip(fh, fh[1:], strict=False))
    req = load("hyperliquid/info_candleSnapshot.request.json")["request"]
    req["req"].update(coin="ETH", startTime=NOW_MS - DAY, endTime=NOW_MS)
    cs = http.post(h, json=req).json()
    assert_same_shape(cs, load("hyperliquid/info_candleSnapshot.json"))
    assert len(cs) == 24
    d = sim.env()["PERPWATCH_URL_DERIBIT"]
    bs = http.get(d + "/api/v2/public/get_book_summary_by_currency", params={"currency": "BTC", "kind": "future"}).json()
    fx = load("deribit/public_get_book_summary_by_currency.future.json")
    perp = [x for x in bs["result"] if x["instrument_name"] == "BTC-PERPETUAL"][0]
    fperp = [x for x in fx["result"] if x["instrument_name"] == "BTC-PERPETUAL"][0]
    assert set(perp) == set(fperp) - {"mark_iv"} or set(perp) == set(fperp)
    dated = [x for x in bs["result"] if x["instrument_name"] != "BTC-PERPETUAL"]
    assert dated and all("funding_8h" not in x for x in dated)
    assert all(x["mark_price"] > perp["mark_price"] for x in dated)  # contango
    tv = http.get(d + "/api/v2/public/get_tradingview_chart_data",
                  params={"instrument_name": "BTC-PERPETUAL", "start_timestamp": NOW_MS - DAY,
                          "end_timestamp": NOW_MS, "resolution": "60"}).json()["result"]
    assert tv["status"] == "ok" and len(tv["ticks"]) == 24 == len(tv["close"])


def test_sosovalue_farside_fred_stooq(sim, http):
    so = http.post(sim.env()["PERPWATCH_URL_SOSOVALUE"] + "/openapi/v2/etf/historicalInflowChart",
                   json={"type": "us-btc-spot"}).json()
    assert_same_shape(so, load("etf_flows/sosovalue_openapi_v2_etf_historicalInflowChart.json"))
    dates = [x["date"] for x in so["data"]["list"]]
    assert dates == sorted(dates, reverse=True) and len(dates) == 300
    html = http.get(sim.env()["PERPWATCH_URL_FARSIDE"] + "/bitcoin-etf-flow-all-data/").text
    assert '<table class="etf">' in html and "<td>11 Jan 2024</td>" in html
    assert "<td>Total</td>" in html and "(" in html and "," in html
    assert "<tr><td>25 Dec 2024</td>" + "<td>-</td>" * 11 + "<td>0.0</td></tr>" in html
    # last SoSo day's total equals the last Farside row total (US$ millions vs USD)
    csv = http.get(sim.env()["PERPWATCH_URL_FRED"] + "/graph/fredgraph.csv", params={"id": "SP500"}).text
    lines = csv.strip().split("\n")
    assert lines[0] == "observation_date,SP500"
    assert "2025-12-25," in lines  # holiday = empty field
    assert all(line.count(",") == 1 for line in lines)
    assert lines[-1] <= "2026-11-19,z"
    for sid in ("NASDAQCOM", "DTWEXBGS"):
        r = http.get(sim.env()["PERPWATCH_URL_FRED"] + "/graph/fredgraph.csv", params={"id": sid})
        assert r.status_code == 200 and r.text.startswith(f"observation_date,{sid}\n")
    st = http.get(sim.env()["PERPWATCH_URL_STOOQ"] + "/q/d/l/", params={"s": "xauusd", "i": "d"}).text
    assert st.startswith("Date,Open,High,Low,Close")
    assert len(st.splitlines()) > 1500


# ------------------------------------------------------------------------------ determinism


def test_same_request_same_bytes(sim, http):
    for env, path, params in [
        ("PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/klines", {"symbol": "ETHUSDT", "interval": "5m", "limit": 1000}),
        ("PERPWATCH_URL_BINANCE_FAPI", "/futures/data/openInterestHist",
         {"symbol": "SOLUSDT", "period": "5m", "limit": 500}),
        ("PERPWATCH_URL_BYBIT", "/v5/market/open-interest",
         {"category": "linear", "symbol": "BTCUSDT", "intervalTime": "5min", "limit": 200}),
        ("PERPWATCH_URL_OKX", "/api/v5/public/funding-rate-history", {"instId": "SOL-USDT-SWAP", "limit": 400}),
    ]:
        a = get(http, sim, env, path, **params)
        b = get(http, sim, env, path, **params)
        assert a.status_code == 200 and a.content == b.content


def test_past_window_independent_of_now(sim, http):
    later = start(seed=7, now=datetime(2027, 2, 3, 5, 17, tzinfo=UTC))
    try:
        cases = [
            ("PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/klines",
             {"symbol": "BTCUSDT", "interval": "1h", "startTime": NOW_MS - 60 * DAY, "endTime": NOW_MS - HOUR}),
            ("PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/klines",
             {"symbol": "SOLUSDT", "interval": "1m", "startTime": NOW_MS - DAY, "endTime": NOW_MS - 1,
              "limit": 1500}),
            ("PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/fundingRate",
             {"symbol": "BTCUSDT", "startTime": NOW_MS - 365 * DAY, "endTime": NOW_MS, "limit": 1000}),
            ("PERPWATCH_URL_BINANCE_SPOT", "/api/v3/klines",
             {"symbol": "ETHUSDT", "interval": "1d", "startTime": NOW_MS - 900 * DAY, "endTime": NOW_MS}),
            ("PERPWATCH_URL_BYBIT", "/v5/market/funding/history",
             {"category": "linear", "symbol": "ETHUSDT", "endTime": NOW_MS}),
            ("PERPWATCH_URL_OKX", "/api/v5/market/history-candles",
             {"instId": "BTC-USDT-SWAP", "bar": "1H", "after": NOW_MS}),
        ]
        for env, path, params in cases:
            a = http.get(sim.env()[env] + path, params=params).content
            b = http.get(later.env()[env] + path, params=params).content
            if env == "PERPWATCH_URL_BYBIT":  # the envelope carries the server time
                a, b = json.loads(a)["result"], json.loads(b)["result"]
            assert a == b, path
        # hyperliquid POST
        body = {"type": "fundingHistory", "coin": "ETH", "startTime": NOW_MS - 10 * DAY, "endTime": NOW_MS}
        a = http.post(sim.env()["PERPWATCH_URL_HYPERLIQUID"] + "/info", json=body).content
        b = http.post(later.env()["PERPWATCH_URL_HYPERLIQUID"] + "/info", json=body).content
        assert a == b
    finally:
        later.stop()


def test_no_data_after_now(sim, http):
    k = get(http, sim, "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/klines", symbol="BTCUSDT", interval="1h",
            startTime=NOW_MS - 5 * HOUR, limit=100).json()
    assert k[-1][6] < NOW_MS and k[-1][0] == NOW_MS - HOUR
    f = get(http, sim, "PERPWATCH_URL_BINANCE_FAPI", "/fapi/v1/fundingRate", symbol="BTCUSDT",
            startTime=NOW_MS - DAY, limit=100).json()
    assert all(x["fundingTime"] <= NOW_MS for x in f)
    oi = get(http, sim, "PERPWATCH_URL_BINANCE_FAPI", "/futures/data/openInterestHist", symbol="BTCUSDT",
             period="5m", limit=500).json()
    assert oi[-1]["timestamp"] == NOW_MS


# ------------------------------------------------------------------------------ paging & depth


def test_open_interest_hist_30_day_depth_and_paging(sim, http):
    env, path = "PERPWATCH_URL_BINANCE_FAPI", "/futures/data/openInterestHist"
    r = get(http, sim, env, path, symbol="BTCUSDT", period="1h", startTime=NOW_MS - 40 * DAY, limit=500)
    assert r.status_code == 400 and r.json()["code"] == -1130
    old = get(http, sim, env, path, symbol="BTCUSDT", period="1h", endTime=NOW_MS - 35 * DAY).json()
    assert old == []
    rows, st = [], NOW_MS - 30 * DAY
    while True:
        page = get(http, sim, env, path, symbol="BTCUSDT", period="1h", startTime=st, limit=500).json()
        assert len(page) <= 500
        rows += page
        if len(page) < 500:
            break
        st = page[-1]["timestamp"] + 1
    ts = [x["timestamp"] for x in rows]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    assert len(rows) == 30 * 24 + 1 and ts[0] == NOW_MS - 30 * DAY and ts[-1] == NOW_MS
    default = get(http, sim, env, path, symbol="BTCUSDT", period="1h").json()
    assert len(default) == 30 and default[-1]["timestamp"] == NOW_MS
    oi = [float(x["sumOpenInterest"]) for x in rows]
    assert 60_000 < min(oi) and max(oi) < 160_000  # Binance-sized BTC OI in BTC


def test_binance_limits_and_order(sim, http):
    env = "PERPWATCH_URL_BINANCE_FAPI"
    k = get(http, sim, env, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", startTime=NOW_MS - 10 * DAY,
            limit=5000).json()
    assert len(k) == 1500 and k[0][0] == NOW_MS - 10 * DAY
    assert all(b[0] - a[0] == 60_000 for a, b in zip(k, k[1:], strict=False))
    assert all(isinstance(x, str) for x in k[0][1:6])
    default = get(http, sim, env, "/fapi/v1/klines", symbol="BTCUSDT", interval="1h").json()
    assert len(default) == 500
    fr = get(http, sim, env, "/fapi/v1/fundingRate", symbol="BTCUSDT", startTime=0, limit=1000).json()
    assert len(fr) == 1000 and fr[0]["fundingTime"] // HOUR * HOUR == 1567958400000  # 2019-09-08 16:00
    assert [x["fundingTime"] for x in fr] == sorted(x["fundingTime"] for x in fr)
    assert any(x["fundingTime"] % 1000 != 0 for x in fr)  # jitter like the live API
    assert len(get(http, sim, env, "/fapi/v1/fundingRate", symbol="BTCUSDT").json()) == 100
    spot = get(http, sim, "PERPWATCH_URL_BINANCE_SPOT", "/api/v3/klines", symbol="BTCUSDT", interval="1m",
               limit=1500).json()
    assert len(spot) == 1000
    bad = get(http, sim, env, "/fapi/v1/klines", symbol="FOOUSDT", interval="1h")
    assert bad.status_code == 400 and bad.json() == {"code": -1121, "msg": "Invalid symbol."}
    assert "X-MBX-USED-WEIGHT-1M" in bad.headers


def test_bybit_okx_newest_first_and_cursors(sim, http):
    env = "PERPWATCH_URL_BYBIT"
    p = {"category": "linear", "symbol": "BTCUSDT", "intervalTime": "1h", "limit": 200}
    first = get(http, sim, env, "/v5/market/open-interest", **p).json()["result"]
    ts = [int(x["timestamp"]) for x in first["list"]]
    assert len(ts) == 200 and ts == sorted(ts, reverse=True) and ts[0] == NOW_MS
    assert float(first["list"][0]["singleOpenInterest"]) * 2 == pytest.approx(float(first["list"][0]["openInterest"]))
    nxt = get(http, sim, env, "/v5/market/open-interest", cursor=first["nextPageCursor"], **p).json()["result"]
    assert int(nxt["list"][0]["timestamp"]) == ts[-1] - HOUR
    fh = get(http, sim, env, "/v5/market/funding/history", category="linear", symbol="BTCUSDT").json()
    assert len(fh["result"]["list"]) == 200
    only_start = get(http, sim, env, "/v5/market/funding/history", category="linear", symbol="BTCUSDT",
                     startTime=NOW_MS - DAY).json()
    assert only_start["retCode"] != 0
    back = get(http, sim, env, "/v5/market/funding/history", category="linear", symbol="BTCUSDT",
               endTime=NOW_MS - 100 * DAY, limit=50).json()["result"]["list"]
    assert len(back) == 50 and int(back[0]["fundingRateTimestamp"]) <= NOW_MS - 100 * DAY
    kl = get(http, sim, env, "/v5/market/kline", category="linear", symbol="BTCUSDT", interval="60",
             limit=1000).json()["result"]["list"]
    assert len(kl) == 1000 and int(kl[0][0]) > int(kl[1][0])
    okx = "PERPWATCH_URL_OKX"
    fr = get(http, sim, okx, "/api/v5/public/funding-rate-history", instId="BTC-USDT-SWAP", limit=400).json()["data"]
    assert len(fr) == 270 or len(fr) == 271  # ~90 days of 8h settlements
    assert int(fr[0]["fundingTime"]) > int(fr[-1]["fundingTime"])
    older = get(http, sim, okx, "/api/v5/public/funding-rate-history", instId="BTC-USDT-SWAP",
                after=fr[-1]["fundingTime"]).json()["data"]
    assert older == []
    oih = get(http, sim, okx, "/api/v5/rubik/stat/contracts/open-interest-history", instId="BTC-USDT-SWAP",
              period="5m").json()["data"]
    assert len(oih) == 100 and int(oih[0][0]) == NOW_MS
    ct, coin = float(oih[0][1]), float(oih[0][2])
    assert coin == pytest.approx(ct * 0.01)  # ctVal 0.01 BTC


# ------------------------------------------------------------------------------ rate limits


def _align(window_s: float) -> None:
    """Sleep to the start of the next wall-clock rate-limit window (windows are aligned like Binance's)."""
    time.sleep(window_s - (time.time() % window_s) + 0.02)


def test_binance_429_retry_after_then_418():
    s = start(seed=7, now=NOW, limits_scale=0.01, window_scale=0.05, ws_port=None)  # 24 weight / 3 s
    try:
        u = s.env()["PERPWATCH_URL_BINANCE_FAPI"] + "/fapi/v1/klines"
        requests.get(u, params={"symbol": "BTCUSDT", "interval": "1h", "limit": 10})  # warm up
        _align(3.0)
        codes = []
        for _ in range(40):
            r = requests.get(u, params={"symbol": "BTCUSDT", "interval": "1h", "limit": 10})
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["code"] == -1003
                assert "X-MBX-USED-WEIGHT-1M" in r.headers
            if r.status_code == 418:
                break
        assert codes[:24] == [200] * 24 and 429 in codes and codes[-1] == 418
        assert s.stats["429"] >= 1 and s.stats["418"] >= 1
        assert s.stats.throttled["binance-fapi"] >= 1
    finally:
        s.stop()


def test_stats_bucket_and_recovery():
    s = start(seed=7, now=NOW, limits_scale=0.005, window_scale=0.01, ws_port=None)  # 5 req / 3 s
    try:
        u = s.env()["PERPWATCH_URL_BINANCE_FAPI"] + "/futures/data/openInterestHist"
        p = {"symbol": "BTCUSDT", "period": "5m"}
        _align(3.0)
        codes = [requests.get(u, params=p).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        r = requests.get(u, params=p)
        time.sleep(int(r.headers["Retry-After"]) + 0.1)
        assert requests.get(u, params=p).status_code == 200
    finally:
        s.stop()


def test_okx_and_bybit_limits():
    s = start(seed=7, now=NOW, limits_scale=0.2, window_scale=1.0, ws_port=None)
    try:
        u = s.env()["PERPWATCH_URL_OKX"] + "/api/v5/rubik/stat/contracts/open-interest-history"
        rs = [requests.get(u, params={"instId": "BTC-USDT-SWAP", "period": "1H"}) for _ in range(4)]
        assert rs[-1].status_code == 429 and rs[-1].json()["code"] == "50011"
        b = s.env()["PERPWATCH_URL_BYBIT"] + "/v5/market/tickers"
        codes = [requests.get(b, params={"category": "linear", "symbol": "BTCUSDT"}).status_code
                 for _ in range(130)]
        assert 403 in codes
    finally:
        s.stop()


# ------------------------------------------------------------------------------ market signals


def test_seed7_signals_in_last_30_days(sim, http):
    env = "PERPWATCH_URL_BINANCE_FAPI"
    fr = get(http, sim, env, "/fapi/v1/fundingRate", symbol="BTCUSDT", startTime=NOW_MS - 30 * DAY,
             limit=1000).json()
    rates = [float(x["fundingRate"]) for x in fr]
    assert len(rates) == 90
    assert max(rates) > 0.005
    assert sum(abs(r - 0.0001) < 1e-12 for r in rates) > len(rates) / 2  # baseline 0.01 %/8h
    ratios = []
    for ep in ("globalLongShortAccountRatio", "topLongShortAccountRatio"):
        rows = get(http, sim, env, f"/futures/data/{ep}", symbol="BTCUSDT", period="1h",
                   startTime=NOW_MS - 30 * DAY, limit=500).json()
        rows += get(http, sim, env, f"/futures/data/{ep}", symbol="BTCUSDT", period="1h",
                    startTime=rows[-1]["timestamp"] + 1, limit=500).json()
        ratios += [float(x["longShortRatio"]) for x in rows]
    assert max(ratios) > 1.5
    # a crash: OI falls sharply while price dumps, for every default asset
    for sym in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        oi = get(http, sim, env, "/futures/data/openInterestHist", symbol=sym, period="1h",
                 startTime=NOW_MS - 30 * DAY, limit=500).json()
        vals = [float(x["sumOpenInterest"]) for x in oi]
        drops = [vals[i + 8] / vals[i] - 1 for i in range(len(vals) - 8)]
        assert min(drops) < -0.07, sym
        kl = get(http, sim, env, "/fapi/v1/klines", symbol=sym, interval="1h", startTime=NOW_MS - 30 * DAY,
                 limit=720).json()
        closes = [float(x[4]) for x in kl]
        moves = [closes[i + 8] / closes[i] - 1 for i in range(len(closes) - 8)]
        assert min(moves) < -0.04 and max(moves) > 0.03, sym


def test_price_levels(sim, http):
    env = "PERPWATCH_URL_BINANCE_FAPI"
    for sym, lo, hi in (("BTCUSDT", 50_000, 130_000), ("ETHUSDT", 1_500, 5_000), ("SOLUSDT", 70, 320)):
        k = get(http, sim, env, "/fapi/v1/klines", symbol=sym, interval="1d", limit=365).json()
        closes = [float(x[4]) for x in k]
        assert lo < min(closes) and max(closes) < hi, (sym, min(closes), max(closes))
    b = get(http, sim, env, "/futures/data/basis", pair="BTCUSDT", contractType="CURRENT_QUARTER", period="1d",
            limit=30).json()
    ann = [float(x["annualizedBasisRate"]) for x in b]
    assert all(0.02 < a < 0.3 for a in ann)


# ------------------------------------------------------------------------------ env / cli


def test_env_names(sim):
    env = sim.env()
    # PERPWATCH_NOW: the simulator's fixed clock, the client's "now" for history depth and bans
    assert set(HTTP_ENV) | set(WS_ENV) | ({"PERPWATCH_NOW"} if sim.fixed_now else set()) == set(env)
    assert env["PERPWATCH_URL_BINANCE_FAPI"] == f"{sim.base_url}/binance-fapi"
    assert env["PERPWATCH_URL_BINANCE_FSTREAM"].startswith("ws://127.0.0.1:")
    assert sim.base_url == f"http://127.0.0.1:{sim.port}"


def test_cli_env(capsys):
    from perpwatch.simulator.server import main

    assert main(["--port", "8123", "--env"]) == 0
    out = capsys.readouterr().out
    assert "export PERPWATCH_URL_BINANCE_FAPI=http://127.0.0.1:8123/binance-fapi" in out
    assert "export PERPWATCH_URL_OKX_WS=ws://127.0.0.1:8124/okx-ws" in out


# ------------------------------------------------------------------------------ websockets


def test_liquidation_streams(sim):
    from websockets.asyncio.client import connect

    env = sim.env()

    async def collect(uri, sub=None, n=3, timeout=20):
        out = []
        async with connect(uri, close_timeout=0.5) as ws:
            if sub is not None:
                await ws.send(json.dumps(sub))
                ack = json.loads(await asyncio.wait_for(ws.recv(), 5))
                out.append(ack)
            while len(out) < n + (1 if sub else 0):
                out.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
        return out

    async def main():
        b = await collect(env["PERPWATCH_URL_BINANCE_FSTREAM"] + "/market/ws/!forceOrder@arr?speed=36000")
        assert_same_shape(b[0], load("binance/ws_forceOrder.json"))
        assert b[0]["o"]["S"] in ("SELL", "BUY") and b[0]["o"]["s"].endswith("USDT")
        y = await collect(env["PERPWATCH_URL_BYBIT_WS"] + "?speed=36000",
                          {"op": "subscribe", "args": ["allLiquidation.BTCUSDT", "allLiquidation.SOLUSDT"]})
        assert y[0]["success"] is True
        assert_same_shape(y[1], load("bybit/ws_allLiquidation.json"))
        o = await collect(env["PERPWATCH_URL_OKX_WS"] + "?speed=36000",
                          {"op": "subscribe", "args": [{"channel": "liquidation-orders", "instType": "SWAP"}]})
        assert o[0]["event"] == "subscribe"
        fx = load("okx/ws_liquidation-orders.json")
        fx.pop("id")
        assert_same_shape(o[1], fx)
        # drop_after closes the connection -> client must reconnect
        got = 0
        with pytest.raises(Exception):  # noqa: B017 - ConnectionClosedError
            async with connect(env["PERPWATCH_URL_BINANCE_FSTREAM"] + "/market/ws/!forceOrder@arr?speed=36000&drop_after=2") as ws:
                while True:
                    await asyncio.wait_for(ws.recv(), 20)
                    got += 1
        assert got == 2
        # the legacy path (retired 2026-04-23) completes the handshake and then never pushes a message
        async with connect(env["PERPWATCH_URL_BINANCE_FSTREAM"] + "/ws/!forceOrder@arr?speed=36000",
                           close_timeout=0.5) as ws:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 1.5)

    asyncio.run(main())


def test_backfill_speed(sim, http):
    """30 days x 3 assets x 8 endpoints (hourly) should take seconds."""
    t0 = time.process_time()     # CPU of this process (client and the in-process simulator), not wall time
    env = "PERPWATCH_URL_BINANCE_FAPI"
    st = NOW_MS - 30 * DAY
    n = 0
    for sym in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        for ep in ("openInterestHist", "globalLongShortAccountRatio", "topLongShortAccountRatio",
                   "topLongShortPositionRatio"):
            for s in (st, st + 500 * HOUR):
                assert get(http, sim, env, f"/futures/data/{ep}", symbol=sym, period="1h", startTime=s,
                           limit=500).status_code == 200
                n += 1
        for ep in ("klines", "markPriceKlines", "premiumIndexKlines"):
            assert get(http, sim, env, f"/fapi/v1/{ep}", symbol=sym, interval="1h", startTime=st,
                       limit=1000).status_code == 200
            n += 1
        assert get(http, sim, env, "/fapi/v1/fundingRate", symbol=sym, startTime=st, limit=1000).status_code == 200
    assert time.process_time() - t0 < 10
