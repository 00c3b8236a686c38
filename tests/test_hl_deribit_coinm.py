"""Hyperliquid, Deribit and Binance COIN-M: parsers on the recorded/doc payloads against hand-computed
values, then end-to-end against the simulator (fixed `now`, 3 days, BTC only)."""

import json
import os
from datetime import UTC, datetime, timedelta

import orjson
import polars as pl
import pytest

from perpwatch import jobs
from perpwatch.sources import binance, binance_coinm, deribit, hyperliquid
from perpwatch.sources.base import ParseContext, Stream

FETCHED = datetime(2026, 11, 20, tzinfo=UTC)


def ctx(instruments=None, fetched=FETCHED):
    return ParseContext(fetched, instruments or {})


def hl(data, body, c=None):
    return hyperliquid.PARSERS["/info"](data, body, c or ctx())


# --------------------------------------------------------------------------- Hyperliquid

def test_hl_funding_8h_regime_rows(fixture):
    # Real rows from May 2023: 8 hours apart, 8h-sized rates, ms jitter on `time`.
    rows = fixture("hyperliquid/info_fundingHistory.json")
    body = fixture("hyperliquid/info_fundingHistory.request.json")["request"]
    df = hl(rows, body)["funding_rates"]
    assert df.height == 34
    r = df.row(0, named=True)
    assert r["funding_time"] == datetime(2023, 5, 12, tzinfo=UTC)        # 1683849600048 floored
    assert (r["venue"], r["instrument"], r["asset"]) == ("hyperliquid", "BTC", "BTC")
    assert r["interval_hours"] == 8.0
    assert r["funding_rate"] == pytest.approx(-0.00061334)
    assert r["rate_8h"] == pytest.approx(-0.00061334)                     # an 8h rate already
    assert r["rate_annualized"] == pytest.approx(-0.6716073)              # x 3 x 365
    assert set(df["interval_hours"]) == {8.0}


def test_hl_funding_8h_to_1h_switch(fixture):
    rows = fixture("hyperliquid/info_fundingHistory.excerpt_8h_to_1h_switch.json")
    df = hl(rows, {"type": "fundingHistory", "coin": "BTC", "startTime": 1686096000000})["funding_rates"]
    assert df.height == 12
    by_time = {r["funding_time"]: r for r in df.iter_rows(named=True)}
    # 2023-06-08 00:00 is still an 8h settlement (0.0001, 8h after 16:00): rate_8h = rate
    last8 = by_time[datetime(2023, 6, 8, 0, tzinfo=UTC)]
    assert last8["interval_hours"] == 8.0
    assert last8["rate_8h"] == pytest.approx(0.0001)
    assert last8["rate_annualized"] == pytest.approx(0.1095)              # 0.0001 x 3 x 365
    # from 01:00 hourly rows with hourly rates: 0.0000125 x 8 = 0.0001 per 8h
    first1 = by_time[datetime(2023, 6, 8, 1, tzinfo=UTC)]
    assert first1["interval_hours"] == 1.0
    assert first1["funding_rate"] == pytest.approx(0.0000125)
    assert first1["rate_8h"] == pytest.approx(0.0001)
    assert first1["rate_annualized"] == pytest.approx(0.1095)             # 0.0000125 x 24 x 365
    assert df["interval_hours"].to_list() == [8.0] * 4 + [1.0] * 8
    # the same annualised 10.95 % on both sides (a naive x24x365 would give 0.876 for the 8h rows)
    assert df["rate_annualized"].to_list() == pytest.approx([0.1095] * 12)


def test_hl_funding_interval_at_page_edges_and_gaps():
    body = {"type": "fundingHistory", "coin": "BTC", "startTime": 0}
    # a page whose first row is the last 8h settlement: no previous row, the regime decides
    one = hl([{"coin": "BTC", "fundingRate": "0.0001", "time": 1686182400254}], body)["funding_rates"]
    assert one["interval_hours"].to_list() == [8.0]
    # hourly regime with a missing hour (2h gap) and a long outage (8h gap): still hourly rows
    t = 1700000000000 // 3_600_000 * 3_600_000
    rows = [{"coin": "BTC", "fundingRate": "0.0000125", "time": t + k * 3_600_000 + 7} for k in (0, 2, 10)]
    df = hl(rows, body)["funding_rates"]
    assert df["interval_hours"].to_list() == [1.0, 1.0, 1.0]
    assert df["rate_8h"].to_list() == pytest.approx([0.0001] * 3)


def test_hl_meta_and_asset_ctxs_instruments_and_oi_snapshot(fixture):
    data = fixture("hyperliquid/info_metaAndAssetCtxs.json")
    fetched = datetime(2026, 11, 20, 13, 42, 7, tzinfo=UTC)
    out = hl(data, {"type": "metaAndAssetCtxs"}, ctx(fetched=fetched))
    inst = out["instruments"]
    assert inst["instrument"].to_list() == ["BTC", "ETH", "HPOS"]
    b = inst.row(0, named=True)
    assert (b["margin"], b["contract_size"], b["contract_unit"], b["settle"], b["kind"]) == \
        ("linear", 1.0, "base", "USDC", "perp")
    assert b["funding_interval_hours"] == 1.0 and b["status"] == "trading" and b["multiplier"] == 1.0
    oi = out["open_interest"]
    assert oi.height == 3
    btc = oi.row(0, named=True)
    assert btc["ts"] == datetime(2026, 11, 20, 13, tzinfo=UTC)            # fetch time floored to the hour
    assert btc["oi_base"] == pytest.approx(688.11)                        # coins
    assert btc["oi_contracts"] == pytest.approx(688.11)
    assert btc["oi_usd"] == pytest.approx(9853.7352)                      # 688.11 x oraclePx 14.32
    assert oi.row(1, named=True)["oi_usd"] == pytest.approx(11381.332535)  # 1882.55 x 6.0457
    assert set(oi["margin"]) == {"linear"}


def test_hl_oi_falls_back_to_mark_and_skips_delisted():
    meta = {"universe": [{"name": "kPEPE", "szDecimals": 0}, {"name": "OLD", "szDecimals": 0, "isDelisted": True}]}
    ctxs = [{"openInterest": "2000000", "oraclePx": None, "markPx": "0.0125"},
            {"openInterest": "0.0", "oraclePx": "1.0", "markPx": "1.0"}]
    out = hl([meta, ctxs], {"type": "metaAndAssetCtxs"})
    inst = {r["instrument"]: r for r in out["instruments"].iter_rows(named=True)}
    assert inst["kPEPE"]["asset"] == "PEPE" and inst["kPEPE"]["multiplier"] == 1000.0
    assert inst["OLD"]["status"] == "delisted"
    oi = out["open_interest"]
    assert oi["instrument"].to_list() == ["kPEPE"]
    r = oi.row(0, named=True)
    assert r["oi_contracts"] == pytest.approx(2_000_000)                  # kPEPE units
    assert r["oi_base"] == pytest.approx(2_000_000_000)                   # PEPE = x 1000
    assert r["oi_usd"] == pytest.approx(25_000)                           # 2e6 kPEPE x 0.0125 USD/kPEPE


def test_hl_hip3_dex_coin_mapping(fixture):
    out = hl(fixture("hyperliquid/info_metaAndAssetCtxs.hip3_dex.json"), {"type": "metaAndAssetCtxs"})
    inst = out["instruments"]
    assert inst.select("instrument", "asset").rows() == [("xyz:XYZ100", "XYZ100"), ("xyz:TSLA", "TSLA"),
                                                         ("xyz:NVDA", "NVDA")]
    oi = {r["instrument"]: r for r in out["open_interest"].iter_rows(named=True)}
    assert oi["xyz:TSLA"]["oi_usd"] == pytest.approx(5503.12224)          # 12.208 x 450.78
    assert oi["xyz:XYZ100"]["oi_usd"] == pytest.approx(2166.7688)         # 0.0854 x 25372.0


def test_hl_misaligned_ctxs_and_unknown_type_raise():
    with pytest.raises(ValueError, match="align by index"):
        hl([{"universe": [{"name": "BTC"}]}, []], {"type": "metaAndAssetCtxs"})
    with pytest.raises(ValueError, match="no parser for request type 'l2Book'"):
        hl({}, {"type": "l2Book"})


def test_hl_candles_kpepe_and_forming_candle(fixture):
    rows = fixture("hyperliquid/info_candleSnapshot.json")
    body = fixture("hyperliquid/info_candleSnapshot.request.json")["request"]
    df = hl(rows, body)["prices"]
    assert df.height == 24
    r = df.row(0, named=True)
    assert r["ts"] == datetime(2023, 5, 21, 20, tzinfo=UTC)
    assert (r["instrument"], r["asset"], r["kind"], r["interval"]) == ("kPEPE", "PEPE", "perp", "1h")
    assert (r["open"], r["high"], r["low"], r["close"]) == pytest.approx((0.001601, 0.001616, 0.001601, 0.001604))
    assert r["volume_base"] == pytest.approx(520665683.0) and r["volume_usd"] is None
    # fetched at the request's endTime: the last candle (T = ...5599999) was still forming
    at_end = ctx(fetched=datetime.fromtimestamp(body["req"]["endTime"] / 1000, UTC))
    assert hl(rows, body, at_end)["prices"].height == 23


# --------------------------------------------------------------------------- Deribit

def test_deribit_funding_interest_1h_is_the_rate(fixture):
    data = fixture("deribit/public_get_funding_rate_history.json")
    df = deribit.parse_funding_history(data, {"instrument_name": "BTC-PERPETUAL"}, ctx())["funding_rates"]
    assert df.height == 4
    r = df.row(0, named=True)
    assert r["funding_time"] == datetime(2019, 10, 1, 1, tzinfo=UTC)
    assert (r["asset"], r["interval_hours"]) == ("BTC", 1.0)
    assert r["funding_rate"] == pytest.approx(-4.739622041017375e-07)          # interest_1h
    assert r["rate_8h"] == pytest.approx(-3.7916976328139e-06)                 # x 8
    assert r["rate_annualized"] == pytest.approx(-0.004151908907931221)        # x 24 x 365
    # interest_8h is NOT 8 x interest_1h in the documented payload (-9.23e-05 vs -3.79e-06):
    # it is the 8h-scaled / trailing-8h rate, not what was paid per hour, so it is not stored.
    i8 = [x["interest_8h"] for x in data["result"]]
    assert df["rate_8h"].to_list() != pytest.approx(i8, rel=0.5)
    assert r["rate_8h"] / i8[0] == pytest.approx(0.04106, rel=1e-3)


def test_deribit_book_summary_inverse_oi_in_usd(fixture):
    data = fixture("deribit/public_get_book_summary_by_currency.future.json")
    known = {("deribit", "BTC-PERPETUAL"): {"margin": "inverse", "contract_size": 10.0}}
    oi = deribit.parse_book_summary(data, {"currency": "BTC", "kind": "future"}, ctx(known))["open_interest"]
    rows = {r["instrument"]: r for r in oi.iter_rows(named=True)}
    p = rows["BTC-PERPETUAL"]
    assert p["ts"] == datetime(2019, 2, 15, 11, tzinfo=UTC)         # creation_timestamp 1550230036440 floored
    assert p["margin"] == "inverse"
    assert p["oi_usd"] == pytest.approx(183180)                     # open_interest is USD for inverse
    assert p["oi_base"] == pytest.approx(51.17145706519766)         # 183180 / mark 3579.73
    assert p["oi_contracts"] == pytest.approx(18318)                # / 10 USD per contract
    d = rows["BTC-22FEB19"]                                         # dated future, no OI
    assert (d["oi_usd"], d["oi_base"]) == (0.0, 0.0) and d["oi_contracts"] is None   # size unknown


def test_deribit_instruments_and_expiry():
    # Row shaped like the docs.deribit.com get_instruments example (BTC-29SEP23) plus the perpetual.
    doc = {"jsonrpc": "2.0", "id": 1, "result": [
        {"tick_size": 2.5, "settlement_period": "month", "settlement_currency": "BTC", "quote_currency": "USD",
         "price_index": "btc_usd", "min_trade_amount": 10, "kind": "future", "is_active": True,
         "instrument_name": "BTC-29SEP23", "instrument_type": "reversed", "expiration_timestamp": 1695974400000,
         "creation_timestamp": 1664524802000, "counter_currency": "USD", "contract_size": 10, "base_currency": "BTC"},
        {"settlement_period": "perpetual", "settlement_currency": "BTC", "quote_currency": "USD", "kind": "future",
         "is_active": True, "instrument_name": "BTC-PERPETUAL", "instrument_type": "reversed",
         "expiration_timestamp": 32503708800000, "contract_size": 10, "base_currency": "BTC"}]}
    df = deribit.parse_instruments(doc, {"currency": "BTC", "kind": "future"}, ctx())["instruments"]
    rows = {r["instrument"]: r for r in df.iter_rows(named=True)}
    f, p = rows["BTC-29SEP23"], rows["BTC-PERPETUAL"]
    assert f["expiry"] == datetime(2023, 9, 29, 8, tzinfo=UTC) == deribit.expiry_from_name("BTC-29SEP23")
    assert (f["kind"], f["margin"], f["contract_unit"], f["contract_size"]) == ("future", "inverse", "usd", 10.0)
    assert (p["kind"], p["expiry"], p["funding_interval_hours"], p["asset"]) == ("perp", None, 1.0, "BTC")
    assert deribit.expiry_from_name("BTC-27DEC26") == datetime(2026, 12, 27, 8, tzinfo=UTC)
    assert deribit.expiry_from_name("BTC-PERPETUAL") is None


def test_deribit_chart_columnar_and_error_envelope():
    data = {"jsonrpc": "2.0", "result": {"status": "ok", "ticks": [1795086000000, 1795089600000],
                                         "open": [90000.0, 90100.0], "high": [90200.0, 90300.0],
                                         "low": [89900.0, 90000.0], "close": [90100.0, 90250.0],
                                         "volume": [12.5, 3.0], "cost": [1126000.0, 270700.0]}}
    params = {"instrument_name": "BTC-25DEC26", "resolution": "60"}
    known = {("deribit", "BTC-25DEC26"): {"expiry": datetime(2026, 12, 25, 8, tzinfo=UTC)}}
    fetched = datetime(2026, 11, 19, 13, 30, tzinfo=UTC)       # second bar (12:00-13:00) closed, fine
    df = deribit.parse_chart(data, params, ctx(known, fetched))["prices"]
    assert df.height == 2
    r = df.row(0, named=True)
    assert (r["kind"], r["ts"], r["expiry"]) == ("future", datetime(2026, 11, 19, 11, tzinfo=UTC),
                                                 datetime(2026, 12, 25, 8, tzinfo=UTC))
    assert (r["volume_base"], r["volume_usd"]) == (12.5, 1126000.0)
    early = ctx(known, datetime(2026, 11, 19, 12, 59, tzinfo=UTC))
    assert deribit.parse_chart(data, params, early)["prices"].height == 1     # forming bar dropped
    err = {"jsonrpc": "2.0", "error": {"message": "Invalid params", "code": -32602,
                                       "data": {"reason": "instrument not found", "param": "instrument_name"}}}
    with pytest.raises(ValueError, match=r"get_funding_rate_history \[BTC-XYZ\]: error -32602: Invalid params"):
        deribit.parse_funding_history(err, {"instrument_name": "BTC-XYZ"}, ctx())


# --------------------------------------------------------------------------- Binance COIN-M

COINM_CTX = {("binance", "BTCUSD_PERP"): {"contract_size": 100.0, "margin": "inverse"}}


def test_coinm_exchange_info_contract_size_in_usd(fixture):
    df = binance_coinm.parse_exchange_info(fixture("binance_coinm/dapi_v1_exchangeInfo.excerpt.json"), {},
                                           ctx())["instruments"]
    r = df.row(0, named=True)
    assert (r["venue"], r["instrument"], r["asset"], r["kind"]) == ("binance", "BTCUSD_PERP", "BTC", "perp")
    assert (r["margin"], r["contract_size"], r["contract_unit"], r["settle"]) == ("inverse", 100.0, "usd", "BTC")
    assert r["status"] == "trading" and r["expiry"] is None


def test_coinm_funding_reuses_usdm_parser(fixture):
    df = binance_coinm.PARSERS["/dapi/v1/fundingRate"](fixture("binance_coinm/dapi_v1_fundingRate.json"), {},
                                                       ctx())["funding_rates"]
    r = df.row(0, named=True)
    assert (r["venue"], r["instrument"], r["asset"]) == ("binance", "BTCUSD_PERP", "BTC")
    assert r["funding_time"] == datetime(2020, 7, 29, 16, tzinfo=UTC)
    assert r["interval_hours"] == 8.0
    assert r["rate_8h"] == pytest.approx(-0.003)
    assert r["rate_annualized"] == pytest.approx(-0.003 * 3 * 365)


def test_coinm_open_interest_contracts_to_usd_and_base(fixture):
    rows = fixture("binance_coinm/dapi_futures_data_openInterestHist.perpetual.simulator.json")
    oi = binance_coinm.parse_open_interest_hist(rows, {"pair": "BTCUSD"}, ctx(COINM_CTX))["open_interest"]
    r = oi.row(0, named=True)
    assert (r["instrument"], r["margin"], r["ts"]) == ("BTCUSD_PERP", "inverse", datetime(2026, 11, 19, 11, tzinfo=UTC))
    assert r["oi_contracts"] == pytest.approx(8929380)          # sumOpenInterest = contracts
    assert r["oi_base"] == pytest.approx(9881.01360677)         # sumOpenInterestValue = BTC, not USD
    assert r["oi_usd"] == pytest.approx(892_938_000)            # 8,929,380 x 100 USD
    # consistency: USD / BTC is the perp price of that hour (bar 10:00-11:00 closed at 90369.1)
    kl = binance_coinm.PARSERS["/dapi/v1/klines"](fixture("binance_coinm/dapi_v1_klines.simulator.json"),
                                                  {"symbol": "BTCUSD_PERP", "interval": "1h"}, ctx(COINM_CTX))["prices"]
    close = kl.filter(pl.col("ts") == datetime(2026, 11, 19, 10, tzinfo=UTC))["close"][0]
    assert close == pytest.approx(90369.1)
    assert r["oi_usd"] / r["oi_base"] == pytest.approx(close, rel=1e-6)
    # without a known contract size, USD is left for the pipeline to value (oi_base x perp close)
    bare = binance_coinm.parse_open_interest_hist(rows, {}, ctx())["open_interest"]
    assert bare["oi_usd"].null_count() == 3
    # the documented doc payload is CURRENT_QUARTER: no single instrument -> a clear error
    with pytest.raises(ValueError, match="only contractType=PERPETUAL"):
        binance_coinm.parse_open_interest_hist(fixture("binance_coinm/dapi_futures_data_openInterestHist.json"),
                                               {}, ctx(COINM_CTX))


def test_coinm_klines_volume_columns_and_index_label(fixture):
    kl = binance_coinm.PARSERS["/dapi/v1/klines"](fixture("binance_coinm/dapi_v1_klines.simulator.json"),
                                                  {"symbol": "BTCUSD_PERP", "interval": "1h"}, ctx(COINM_CTX))["prices"]
    r = kl.row(0, named=True)
    assert (r["kind"], r["ts"]) == ("perp", datetime(2026, 11, 19, 10, tzinfo=UTC))
    assert r["volume_base"] == pytest.approx(391.49969007)     # column 7: base coin on COIN-M
    assert r["volume_usd"] == pytest.approx(35_356_700)        # 353,567 contracts x 100 USD
    ix = binance_coinm.PARSERS["/dapi/v1/indexPriceKlines"](
        fixture("binance_coinm/dapi_v1_indexPriceKlines.simulator.json"), {"pair": "BTCUSD", "interval": "1h"},
        ctx(COINM_CTX))["prices"]
    assert set(ix["instrument"]) == {"BTCUSD_PERP"} and set(ix["kind"]) == {"index"}
    assert ix["volume_base"].null_count() == ix.height


def test_coinm_replay_routes_same_path_by_source(fixture):
    from perpwatch.ingest.pipeline import parse_payload

    body = (json.dumps(fixture("binance_coinm/dapi_futures_data_openInterestHist.perpetual.simulator.json"))
            .encode())
    out = parse_payload("binance_coinm", "/futures/data/openInterestHist", {"pair": "BTCUSD"}, body, FETCHED,
                        COINM_CTX)["open_interest"]
    assert out["oi_usd"][0] == pytest.approx(892_938_000)
    with pytest.raises(ValueError, match="missing field"):       # the USD-M parser would misread it
        parse_payload("binance", "/futures/data/openInterestHist", {}, body, FETCHED, COINM_CTX)


def test_plans_split_linear_and_inverse():
    inst = pl.DataFrame([
        {"venue": "binance", "instrument": "BTCUSDT", "asset": "BTC", "kind": "perp", "margin": "linear",
         "quote": "USDT", "status": "trading"},
        {"venue": "binance", "instrument": "BTCUSD_PERP", "asset": "BTC", "kind": "perp", "margin": "inverse",
         "quote": "USD", "status": "trading"},
        {"venue": "binance", "instrument": "BTCUSD_261225", "asset": "BTC", "kind": "future", "margin": "inverse",
         "quote": "USD", "status": "trading"},
        {"venue": "binance", "instrument": "ETHUSD_PERP", "asset": "ETH", "kind": "perp", "margin": "inverse",
         "quote": "USD", "status": "trading"},
    ])
    usdm = {s.instrument for s in binance.plan(inst, ["BTC"])}
    coinm = binance_coinm.plan(inst, ["BTC"])
    assert usdm == {"BTCUSDT"}
    assert {s.instrument for s in coinm} == {"BTCUSD_PERP", "BTCUSD_261225"}
    assert {s.name for s in coinm if s.instrument == "BTCUSD_261225"} == {"prices/future"}
    assert {s.name for s in coinm if s.instrument == "BTCUSD_PERP"} == \
        {"funding_rates", "open_interest", "prices/perp", "prices/mark", "prices/index"}


def test_unsupported_declared():
    assert set(hyperliquid.UNSUPPORTED) == {"liquidations", "long_short_ratio"}
    assert "long_short_ratio" in deribit.UNSUPPORTED
    assert "liquidations" in binance_coinm.UNSUPPORTED


# --------------------------------------------------------------------------- end to end (simulator)

NOW = datetime(2026, 11, 20, tzinfo=UTC)
VENUES = ["hyperliquid", "deribit", "binance_coinm"]
# 3 days of BTC, window [now-3d, now]: hourly series have 72 closed bars; OI hist and Deribit's
# hourly funding include the end hour; COIN-M funding is 8-hourly (the 00:00 settlement at `now`
# carries ms jitter past the window end).
EXPECTED = {
    ("hyperliquid", "instruments"): 3, ("hyperliquid", "funding_rates"): 72, ("hyperliquid", "prices"): 72,
    ("hyperliquid", "open_interest"): 3,               # one snapshot row per listed coin (BTC, ETH, SOL)
    ("deribit", "instruments"): 4,                     # BTC-PERPETUAL + 3 quarterlies (PERPWATCH_ASSETS=BTC)
    ("deribit", "funding_rates"): 73, ("deribit", "prices"): 4 * 72, ("deribit", "open_interest"): 4,
    ("binance_coinm", "instruments"): 7, ("binance_coinm", "funding_rates"): 9,
    ("binance_coinm", "open_interest"): 73, ("binance_coinm", "prices"): 5 * 72,   # perp, mark, index, 2 quarterlies
}


@pytest.fixture
def sim(monkeypatch):
    from perpwatch.simulator.server import start

    s = start(port=0, seed=7, now=NOW)
    for k, v in s.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PERPWATCH_ASSETS", "BTC")
    yield s
    s.stop()


def test_end_to_end_against_simulator(sim, tmp_path):
    from perpwatch import warehouse
    from perpwatch.ingest import pipeline

    db = tmp_path / "w.duckdb"
    first = jobs.run(kind="backfill", start=NOW - timedelta(days=3), end=NOW, venues=VENUES,
                         assets=["BTC"], db=db, build=True)
    assert first.status == "success", first.errors + first.warnings
    loaded = {k: s.loaded for k, s in first.stats.items()}
    for key, n in EXPECTED.items():
        assert loaded.get(key) == n, (key, loaded.get(key))
    con = warehouse.connect(db)
    try:
        # units landed as decided: Deribit inverse OI in USD, COIN-M USD = contracts x 100
        d = con.execute("""SELECT oi_usd, oi_base, oi_contracts FROM staging.open_interest
                           WHERE venue='deribit' AND instrument='BTC-PERPETUAL'""").fetchone()
        assert d[2] == pytest.approx(d[0] / 10)
        c = con.execute("""SELECT o.oi_usd, o.oi_contracts, o.oi_usd / (o.oi_base * p.close)
                           FROM staging.open_interest o JOIN staging.prices p ON p.venue = o.venue
                             AND p.instrument = o.instrument AND p.kind = 'perp' AND p.ts = o.ts - INTERVAL 1 HOUR
                           WHERE o.instrument = 'BTCUSD_PERP' ORDER BY o.ts LIMIT 1""").fetchone()
        assert c[0] == pytest.approx(c[1] * 100) and c[2] == pytest.approx(1.0, rel=1e-4)
        # COIN-M quarterlies + COIN-M index give a basis in the daily mart
        basis = con.execute("SELECT count(basis_annualized) FROM marts.daily_signals WHERE asset='BTC'").fetchone()[0]
        assert basis >= 2
        staged = dict(con.execute("SELECT venue || '/' || instrument, count(*) FROM staging.prices GROUP BY 1").fetchall())
    finally:
        con.close()
    assert staged["hyperliquid/BTC"] == 72 and staged["deribit/BTC-PERPETUAL"] == 72

    again = jobs.run(kind="backfill", start=NOW - timedelta(days=3), end=NOW, venues=VENUES,
                         assets=["BTC"], db=db, build=False)
    assert again.status == "success", again.errors + again.warnings
    assert again.totals()["loaded"] == 0
    assert again.totals()["duplicate"] == first.totals()["fetched"]

    rep = pipeline.replay(db=db)
    assert rep.status == "success", rep.errors + rep.warnings
    con = warehouse.connect(db)
    try:
        counts = dict(con.execute("""SELECT 'open_interest/' || venue, count(*) FROM staging.open_interest GROUP BY 1
                                     UNION ALL SELECT 'funding_rates/' || venue, count(*) FROM staging.funding_rates GROUP BY 1
                                     UNION ALL SELECT 'prices/' || venue, count(*) FROM staging.prices GROUP BY 1
                                     """).fetchall())
    finally:
        con.close()
    assert counts["funding_rates/hyperliquid"] == 72 and counts["funding_rates/deribit"] == 73
    assert counts["prices/deribit"] == 288 and counts["prices/hyperliquid"] == 72
    assert counts["open_interest/hyperliquid"] == 3 and counts["open_interest/deribit"] == 4
    assert counts["prices/binance"] == 360 and counts["open_interest/binance"] == 73


def test_deribit_error_envelope_names_method_and_instrument(sim):
    from perpwatch.sources.http import BadRequest

    cl = deribit.make_client(None)
    with pytest.raises(BadRequest, match=r"get_funding_rate_history \[BTC-25DEC26\]: error -32602: Invalid params"):
        # a dated future has no funding: the venue answers HTTP 400 with a JSON-RPC error object
        list(deribit.fetch(cl, Stream("deribit", "funding_rates", "funding_rates", "BTC-25DEC26"),
                           NOW - timedelta(hours=3), NOW))
    page = deribit._get(cl, deribit.FUNDING, {"instrument_name": "BTC-PERPETUAL",
                                              "start_timestamp": int((NOW - timedelta(hours=2)).timestamp() * 1000),
                                              "end_timestamp": int(NOW.timestamp() * 1000)})
    rows = orjson.loads(page.body)["result"]
    assert len(rows) == 3
    assert os.environ["PERPWATCH_URL_DERIBIT"].endswith("/deribit")
