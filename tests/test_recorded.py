"""Real venue responses (tests/fixtures/recorded, provenance in its README) through our parsers,
compared with values computed by hand from the bodies."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from perpwatch.sources import binance, coingecko, deribit, hyperliquid, liquidations, okx
from perpwatch.sources.base import ParseContext

R = Path(__file__).parent / "fixtures" / "recorded"
CTX = ParseContext(datetime(2026, 11, 20, tzinfo=UTC), {})


def load(rel: str):
    return json.loads((R / rel).read_text())


def test_binance_open_interest_hist_real_row():
    (r,) = binance.PARSERS["/futures/data/openInterestHist"](
        load("binance/futures_data_openInterestHist.real_row.json"), {}, CTX)["open_interest"].to_dicts()
    assert r["ts"] == datetime(2021, 3, 22, 18, 45, tzinfo=UTC)           # 1616438700000 ms
    assert r["oi_base"] == 34085.0 and r["oi_contracts"] == 34085.0       # USD-M: coins, 1 contract = 1 BTC
    assert r["oi_usd"] == pytest.approx(1927265695.27131325, rel=1e-15)
    assert r["oi_usd"] / r["oi_base"] == pytest.approx(56542.93, abs=0.01)   # implied BTC price that day


def test_binance_force_order_real_events():
    rows = liquidations.parse_binance_force_order(load("binance/ws_forceOrder.real_2022-04-25.json"), {},
                                                  CTX)["liquidations"].to_dicts()
    assert [(r["side"], r["price"], r["qty_base"]) for r in rows] == [("long", 39021.0, 0.288), ("long", 38986.5, 0.004)]
    assert rows[0]["usd"] == pytest.approx(0.288 * 39021.0) == pytest.approx(11238.048)   # ap (average), not p
    assert rows[1]["usd"] == pytest.approx(155.946)
    assert rows[0]["ts"] == datetime(2022, 4, 25, 14, 52, 9, 196000, tzinfo=UTC)       # T, not E


def test_okx_swap_instruments_recorded_contract_values():
    rows = okx.PARSERS[okx.INSTRUMENTS](load("okx/api_v5_public_instruments.swap.json"), {"instType": "SWAP"},
                                        CTX)["instruments"]
    got = {r["instrument"]: (r["margin"], r["contract_size"], r["contract_unit"]) for r in rows.to_dicts()}
    assert got == {"BTC-USDT-SWAP": ("linear", 0.01, "base"), "ETH-USDT-SWAP": ("linear", 0.1, "base"),
                   "BTC-USD-SWAP": ("inverse", 100.0, "usd")}


def test_hyperliquid_funding_history_before_the_hourly_switch():
    req = load("hyperliquid/info_fundingHistory.request.json")["request"]
    df = hyperliquid.PARSERS["/info"](load("hyperliquid/info_fundingHistory.json"), req, CTX)["funding_rates"]
    assert df.height == 34                                   # 8-hourly rows, May 2023
    first = df.row(0, named=True)
    assert first["funding_time"] == datetime(2023, 5, 12, 0, 0, tzinfo=UTC)     # 1683849600048 floored
    assert first["interval_hours"] == 8.0                    # hourly only from 2023-06-08
    assert first["funding_rate"] == -0.00061334 and first["rate_8h"] == pytest.approx(-0.00061334)
    assert first["rate_annualized"] == pytest.approx(-0.00061334 * 3 * 365)      # = -0.6716073


def test_hyperliquid_candles_kpepe():
    req = load("hyperliquid/info_candleSnapshot.request.json")["request"]
    df = hyperliquid.PARSERS["/info"](load("hyperliquid/info_candleSnapshot.json"), req, CTX)["prices"]
    first = df.row(0, named=True)
    assert (first["instrument"], first["asset"], first["kind"]) == ("kPEPE", "PEPE", "perp")
    assert first["ts"] == datetime(2023, 5, 21, 20, tzinfo=UTC)                 # t = 1684699200000
    assert (first["open"], first["high"], first["low"], first["close"]) == (0.001601, 0.001616, 0.001601, 0.001604)
    assert df.height == 24


def test_coingecko_global_real():
    df = coingecko.PARSERS[coingecko.GLOBAL](load("coingecko/api_v3_global.real_2024-05-23.trimmed.json"), {},
                                              CTX)["market_caps"]
    by = {r["asset"]: r for r in df.to_dicts()}
    assert by["TOTAL"]["date"] == date(2024, 5, 23)           # updated_at 1716476680 is SECONDS
    assert by["TOTAL"]["market_cap_usd"] == 2670750179056.94
    assert by["BTC"]["market_cap_usd"] == pytest.approx(2670750179056.94 * 50.0719280890582 / 100)


def test_deribit_book_summary_real_example_usd_open_interest():
    df = deribit.PARSERS[deribit.BOOK_SUMMARY](load("deribit/public_get_book_summary_by_currency.future.json"),
                                                {"currency": "BTC", "kind": "future"}, CTX)["open_interest"]
    perp = df.filter(df["instrument"] == "BTC-PERPETUAL").row(0, named=True)
    assert perp["oi_usd"] == 183180.0                        # inverse: open_interest is USD
    assert perp["oi_base"] == pytest.approx(183180 / 3579.73)   # / mark price = 51.1715 BTC
    assert perp["ts"] == datetime(2019, 2, 15, 11, tzinfo=UTC)
