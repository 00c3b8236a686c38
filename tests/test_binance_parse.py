"""Binance parsers on the recorded/doc payloads, against hand-computed values."""

from datetime import UTC, datetime

import pytest

from perpwatch.sources import binance
from perpwatch.sources.base import ParseContext

FETCHED = datetime(2026, 11, 20, tzinfo=UTC)


def ctx(instruments=None):
    return ParseContext(FETCHED, instruments or {})


def test_funding_rate_8h_interval_from_row_spacing(fixture):
    rows = fixture("binance/fapi_v1_fundingRate.json")
    df = binance.parse_funding_rate(rows, {"symbol": "BTCUSDT"}, ctx())["funding_rates"]
    assert df.height == 2
    first = df.row(0, named=True)
    # 1570608000000 ms = 2019-10-09 08:00:00 UTC; next row 8h later -> interval 8
    assert first["funding_time"] == datetime(2019, 10, 9, 8, tzinfo=UTC)
    assert first["interval_hours"] == 8.0
    assert first["funding_rate"] == pytest.approx(-0.0375)
    assert first["rate_8h"] == pytest.approx(-0.0375)
    assert first["rate_annualized"] == pytest.approx(-0.0375 * 3 * 365)
    assert first["asset"] == "BTC"
    assert first["mark_price"] == pytest.approx(34287.54619963)


def test_funding_4h_interval_doubles_rate_8h(fixture):
    # BLZUSDT runs on 4h funding (fundingInfo, as recorded by ccxt). Two settlements 4h apart,
    # with the real API's millisecond jitter on fundingTime.
    info = binance.parse_funding_info(fixture("binance/fapi_v1_fundingInfo.ccxt_comment_4h.json"), {}, ctx())
    assert info["instruments"].row(0, named=True)["funding_interval_hours"] == 4.0
    rows = [{"symbol": "BLZUSDT", "fundingRate": "0.00030000", "fundingTime": 1699992000011},
            {"symbol": "BLZUSDT", "fundingRate": "-0.00010000", "fundingTime": 1700006400004}]
    df = binance.parse_funding_rate(rows, {}, ctx())["funding_rates"]
    r0, r1 = df.rows(named=True)
    assert r0["funding_time"] == datetime(2023, 11, 14, 20, tzinfo=UTC)    # jitter floored to the hour
    assert r1["funding_time"] == datetime(2023, 11, 15, 0, tzinfo=UTC)
    assert r0["interval_hours"] == 4.0
    assert r0["rate_8h"] == pytest.approx(0.0006)            # 0.0003 x 8 / 4
    assert r0["rate_annualized"] == pytest.approx(0.0003 * 6 * 365)
    assert r1["rate_8h"] == pytest.approx(-0.0002)


def test_single_funding_row_uses_known_interval():
    rows = [{"symbol": "BLZUSDT", "fundingRate": "0.0001", "fundingTime": 1700006400000}]
    known = {("binance", "BLZUSDT"): {"funding_interval_hours": 4.0}}
    df = binance.parse_funding_rate(rows, {}, ctx(known))["funding_rates"]
    assert df["interval_hours"][0] == 4.0
    assert df["rate_8h"][0] == pytest.approx(0.0002)
    # and without metadata, a lone row is the 8h default
    df8 = binance.parse_funding_rate(rows, {}, ctx())["funding_rates"]
    assert df8["rate_8h"][0] == pytest.approx(0.0001)


def test_open_interest_hist_units_and_timestamp_types(fixture):
    doc = binance.parse_open_interest_hist(fixture("binance/futures_data_openInterestHist.json"), {}, ctx())
    df = doc["open_interest"]
    r = df.row(0, named=True)
    assert r["ts"] == datetime(2020, 3, 2, 5, 45, tzinfo=UTC)   # "1583127900000" as a string
    assert r["oi_base"] == pytest.approx(20403.637)               # BTC
    assert r["oi_contracts"] == pytest.approx(20403.637)          # USD-M: 1 contract = 1 BTC
    assert r["oi_usd"] == pytest.approx(150570784.07809979)
    real = binance.parse_open_interest_hist(fixture("binance/futures_data_openInterestHist.real_row.json"), {}, ctx())
    rr = real["open_interest"].row(0, named=True)
    assert rr["ts"] == datetime(2021, 3, 22, 18, 45, tzinfo=UTC)  # integer timestamp in the live API
    assert rr["oi_usd"] / rr["oi_base"] == pytest.approx(1927265695.27131325 / 34085, rel=1e-12)   # implied BTC price


def test_long_short_populations(fixture):
    g = binance.PARSERS["/futures/data/globalLongShortAccountRatio"](
        fixture("binance/futures_data_globalLongShortAccountRatio.json"), {}, ctx())["long_short_ratio"]
    assert g["population"].to_list() == ["accounts", "accounts"]
    assert g.row(1, named=True)["ratio"] == pytest.approx(1.9559)
    assert g.row(0, named=True)["long_share"] == pytest.approx(0.6622)
    t = binance.PARSERS["/futures/data/topLongShortPositionRatio"](
        fixture("binance/futures_data_topLongShortPositionRatio.json"), {}, ctx())["long_short_ratio"]
    assert set(t["population"]) == {"top_positions"}
    assert t.row(0, named=True)["ratio"] == pytest.approx(1.4342)
    a = binance.PARSERS["/futures/data/topLongShortAccountRatio"](
        fixture("binance/futures_data_topLongShortAccountRatio.json"), {}, ctx())["long_short_ratio"]
    assert a.row(0, named=True)["short_share"] == pytest.approx(0.3558)


def test_klines_positional_and_closed_only(fixture):
    rows = fixture("binance/fapi_v1_klines.json")
    df = binance.PARSERS["/fapi/v1/klines"](rows, {"symbol": "BTCUSDT", "interval": "1h"}, ctx())["prices"]
    r = df.row(0, named=True)
    assert r["ts"] == datetime(2017, 7, 3, tzinfo=UTC)
    assert (r["open"], r["high"], r["low"], r["close"]) == pytest.approx((0.0163479, 0.8, 0.015758, 0.015771))
    assert r["volume_base"] == pytest.approx(148976.11427815)
    assert r["volume_usd"] == pytest.approx(2434.19055334)
    assert r["kind"] == "perp"
    # a candle whose close time is after the fetch is still forming: dropped
    early = ParseContext(datetime(2017, 7, 5, tzinfo=UTC), {})
    assert binance.PARSERS["/fapi/v1/klines"](rows, {"symbol": "BTCUSDT", "interval": "1h"}, early)["prices"].height == 0
    spot = binance.PARSERS["/api/v3/klines"](fixture("binance/api_v3_klines.json"),
                                              {"symbol": "BTCUSDT", "interval": "1h"}, ctx())["prices"]
    assert spot["kind"][0] == "spot"
    mark = binance.PARSERS["/fapi/v1/markPriceKlines"](rows, {"symbol": "BTCUSDT", "interval": "1h"}, ctx())["prices"]
    assert mark["kind"][0] == "mark" and mark["volume_base"][0] is None


def test_exchange_info_instrument(fixture):
    df = binance.parse_exchange_info(fixture("binance/fapi_v1_exchangeInfo.excerpt.json"), {}, ctx())["instruments"]
    r = df.row(0, named=True)
    assert (r["instrument"], r["asset"], r["margin"], r["kind"], r["contract_unit"]) == \
        ("BLZUSDT", "BLZ", "linear", "perp", "base")
    assert r["status"] == "trading" and r["expiry"] is None


def test_truncated_and_missing_fields_raise_clear_errors():
    with pytest.raises(ValueError, match="missing field"):
        binance.parse_open_interest_hist([{"symbol": "BTCUSDT", "timestamp": 1}], {}, ctx())
    with pytest.raises(ValueError, match="expected a JSON list"):
        binance.parse_funding_rate({"code": -1121, "msg": "Invalid symbol."}, {}, ctx())


def test_names_are_validated_before_use():
    from perpwatch.core.assets import canonical, validate_asset, validate_instrument

    assert validate_instrument("BTC-USDT-SWAP") == "BTC-USDT-SWAP"
    for bad in ["BTC USDT", "../etc/passwd;", "../x", "a/b", "BTC'; DROP TABLE x;--", "", "A" * 41]:
        with pytest.raises(ValueError):
            validate_instrument(bad)
    with pytest.raises(ValueError):
        validate_asset("btc;")
    assert canonical("binance", "1000PEPEUSDT") == ("PEPE", 1000.0)
    assert canonical("hyperliquid", "kPEPE") == ("PEPE", 1000.0)
    assert canonical("okx", "BTC-USDT-SWAP") == ("BTC", 1.0)
    assert canonical("deribit", "BTC-PERPETUAL") == ("BTC", 1.0)
    assert canonical("binance", "BTCUSD_PERP") == ("BTC", 1.0)
    assert canonical("hyperliquid", "xyz:TSLA") == ("TSLA", 1.0)
