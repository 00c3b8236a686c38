"""Signal engine rules on small hand-built staging frames, with the expected values written out.

Every test builds an in-memory warehouse from warehouse/schema.sql, inserts a few rows, runs
transforms.build_all on the signal marts and reads marts.daily_signals / marts.alerts /
marts.carry. Settings are pinned per test (a copy of perpwatch/core/signals.toml with the values
below) so editing the defaults does not change what is tested. Thresholds are chosen exactly
representable in binary so "exactly at the threshold" really is exact.

Strictness under test (docs/signals.md): funding absolute > ; funding percentile >= (and above
the floor); long/short > and < ; regime band: |move| < band is flat; liquidation surge z >= ;
basis > ; heatmap distance <= ; milestone prev < m <= today; cascade alert >= .
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import tomllib
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest

from perpwatch import warehouse
from perpwatch.core.settings import SIGNALS_FILE
from perpwatch.serving import alerts as delivery
from perpwatch.transforms import build_all

MARTS = [
    "marts.reference_close",
    "marts.open_interest_by_venue",
    "marts.carry",
    "marts.liquidation_heatmap",
    "marts.daily_heatmap_clusters",
    "marts.oi_milestones",
    "marts.daily_signals",
    "marts.alerts",
]
D0 = date(2026, 3, 2)

# Pinned settings for every test here (a test may override a section).
BASE = {
    "funding": {
        "extreme_rate_8h": 0.005,
        "extreme_percentile": 0.5,
        "percentile_window_days": 4,
        "percentile_min_days": 1000,  # percentile rule off unless a test turns it on
        "percentile_floor_8h": 0.0001,
    },
    "long_short": {
        "extreme_ratio": 1.5,
        "extreme_ratio_low": 0.6667,
        "top_accounts_extreme_ratio": 2.0,
        "top_accounts_extreme_ratio_low": 0.5,
        "top_positions_extreme_ratio": 3.0,
        "top_positions_extreme_ratio_low": 0.25,
    },
    "regime": {"min_price_move": 0.0625, "min_oi_move": 0.125},
    "liquidations": {"zscore_window_days": 5, "zscore_min_days": 3, "surge_zscore": 2.0},
    "basis": {"extreme_annualized": 0.2, "min_days_to_expiry": 7},
    "leverage": {"oi_to_mcap_percentile": 0.5, "oi_to_mcap_window_days": 4, "oi_to_mcap_min_days": 3},
    "cascade": {
        "weight_funding": 0.5,
        "weight_long_short": 0.25,
        "weight_oi": 0.25,
        "weight_basis": 0.25,
        "min_components": 2,
        "oi_build_7d": 0.25,
    },
    "milestones": {"oi_usd": [1000, 2000], "rearm_days": 1},
    "alerts": {
        "cascade_risk_warning": 70,
        "cascade_risk_critical": 85,
        "liquidation_critical_zscore": 4.0,
        "heatmap_cluster_distance": 0.02,
        "delivery_max_age_hours": 72,
    },
    "performance": {"horizons_days": [1, 3]},
}


# --------------------------------------------------------------------------- helpers


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def write_settings(path: Path, overrides: dict) -> dict:
    """The real settings file with `overrides` merged per section, written as TOML."""
    with open(SIGNALS_FILE, "rb") as f:
        cfg = tomllib.load(f)
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return cfg


@pytest.fixture
def pin(tmp_path, monkeypatch):
    """pin({"section": {...}}) -> settings in force (BASE merged with the overrides)."""
    count = [0]

    def _pin(overrides: dict | None = None) -> dict:
        merged = {k: dict(v) for k, v in BASE.items()}
        for section, values in (overrides or {}).items():
            merged.setdefault(section, {}).update(values)
        count[0] += 1
        path = tmp_path / f"signals-{count[0]}.toml"
        cfg = write_settings(path, merged)
        monkeypatch.setenv("PERPWATCH_SIGNALS", str(path))
        return cfg

    _pin()
    return _pin


@pytest.fixture
def con():
    c = warehouse.connect(":memory:")
    yield c
    c.close()


def day(i: int) -> date:
    return D0 + timedelta(days=i)


def at(i: int, hour: int = 23) -> datetime:
    return datetime.combine(day(i), time(hour), UTC)


def add_price(con, asset, i, close, *, venue="binance", kind="spot", instrument=None, hour=23, expiry=None):
    con.execute(
        'INSERT INTO staging.prices (venue, instrument, kind, "interval", ts, asset, open, high, low, close, expiry)'
        " VALUES (?, ?, ?, '1h', ?, ?, ?, ?, ?, ?, ?)",
        [venue, instrument or f"{asset}USDT", kind, at(i, hour), asset, close, close, close, close, expiry],
    )


def add_closes(con, asset, closes: list[float], start: int = 0):
    for k, c in enumerate(closes):
        if c is not None:
            add_price(con, asset, start + k, c)


def add_oi(con, asset, i, usd, *, venue="binance", instrument=None, hour=23):
    con.execute(
        "INSERT INTO staging.open_interest (venue, instrument, ts, asset, margin, oi_usd) VALUES (?, ?, ?, ?, 'linear', ?)",
        [venue, instrument or f"{asset}USDT", at(i, hour), asset, usd],
    )


def add_funding(con, asset, i, rates, *, venue="binance", instrument=None, interval_hours=8):
    for k, r in enumerate(rates):
        con.execute(
            "INSERT INTO staging.funding_rates (venue, instrument, funding_time, asset, funding_rate, interval_hours,"
            " rate_8h, rate_annualized) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                venue,
                instrument or f"{asset}USDT",
                at(i, k * interval_hours),
                asset,
                r,
                interval_hours,
                r * 8 / interval_hours,
                r * 24 * 365 / interval_hours,
            ],
        )


def add_ls(con, asset, i, ratio, *, population="accounts", venue="binance", instrument=None, hour=23):
    con.execute(
        "INSERT INTO staging.long_short_ratio (venue, instrument, ts, population, asset, ratio) VALUES (?, ?, ?, ?, ?, ?)",
        [venue, instrument or f"{asset}USDT", at(i, hour), population, asset, ratio],
    )


def add_liq(con, asset, i, side, usd, *, hour=12, price=100.0):
    con.execute(
        "INSERT INTO staging.liquidations (venue, instrument, ts, side, price, qty_base, asset, usd)"
        " VALUES ('binance', ?, ?, ?, ?, ?, ?, ?)",
        [f"{asset}USDT", at(i, hour), side, price, usd / price, asset, usd],
    )


def signals(con, only=MARTS) -> pl.DataFrame:
    build_all(con, only=only)
    return con.sql("SELECT * FROM marts.daily_signals ORDER BY asset, date").pl()


def row(df: pl.DataFrame, asset: str, i: int) -> dict:
    out = df.filter((pl.col("asset") == asset) & (pl.col("date") == day(i)))
    assert out.height == 1, f"expected one row for {asset} day {i}, got {out.height}"
    return out.row(0, named=True)


def alert_rows(con) -> list[tuple]:
    return con.execute(
        "SELECT date, asset, rule, value, threshold, severity, streak_days FROM marts.alerts "
        "ORDER BY ts, asset, rule"
    ).fetchall()


# --------------------------------------------------------------------------- regime and returns


def test_regime_quadrants_flat_band_and_states(con, pin):
    # closes and OI built from exact binary ratios: 17/16 = +0.0625 (= the price band),
    # 9/8 = +0.125 (= the OI band); a move exactly at the band is NOT flat.
    closes, ois = [128.0], [1024.0]
    for price_move, oi_move in [
        (17 / 16, 9 / 8),
        (15 / 16, 7 / 8),
        (17 / 16, 7 / 8),
        (15 / 16, 9 / 8),
        (33 / 32, 3 / 2),
        (3 / 2, 17 / 16),
    ]:
        closes.append(closes[-1] * price_move)  # exact in binary: each ratio has a short mantissa
        ois.append(ois[-1] * oi_move)
    add_closes(con, "BTC", closes)
    for i, v in enumerate(ois):
        add_oi(con, "BTC", i, v)
    df = signals(con)
    expected = [
        (None, None, None, "neutral"),
        (0.0625, 0.125, "rising_oi_rising_price", "healthy_trend"),  # exactly at both bands
        (-0.0625, -0.125, "falling_oi_falling_price", "deleveraging"),
        (0.0625, -0.125, "falling_oi_rising_price", "short_covering"),
        (-0.0625, 0.125, "rising_oi_falling_price", "shorts_building"),
        (None, 0.5, "flat", "neutral"),  # price +3.125 % < 6.25 % band
        (0.5, 0.0625, "flat", "neutral"),  # OI +6.25 % < 12.5 % band
    ]
    for i, (ret, doi, regime, state) in enumerate(expected):
        r = row(df, "BTC", i)
        if ret is not None:
            assert r["return_1d"] == pytest.approx(ret, rel=1e-9)
        if doi is not None:
            assert r["oi_change_1d"] == pytest.approx(doi, rel=1e-12)
        assert r["oi_price_regime"] == regime, i
        assert r["signal_state"] == state, i
    assert row(df, "BTC", 1)["return_1d"] == 0.0625  # exact, so the band test above is a real boundary
    assert row(df, "BTC", 5)["return_1d"] == pytest.approx(0.03125, rel=1e-9)
    # 7-day change needs a value 7 days earlier
    assert row(df, "BTC", 6)["oi_change_7d"] is None


def test_return_is_null_across_a_missing_day_and_oi_change_7d(con, pin):
    add_closes(con, "ETH", [100.0, 110.0, None, 121.0, 100, 100, 100, 100, 100])
    for i in range(9):
        add_oi(con, "ETH", i, 1000.0 + 100 * i)
    df = signals(con)
    assert row(df, "ETH", 1)["return_1d"] == pytest.approx(0.1)
    assert row(df, "ETH", 3)["return_1d"] is None  # day 2 has no close: no 2-day return posing as 1-day
    assert row(df, "ETH", 3)["oi_price_regime"] is None
    assert row(df, "ETH", 8)["oi_change_7d"] == pytest.approx(1800 / 1100 - 1)
    assert row(df, "ETH", 8)["oi_venues"] == 1


# --------------------------------------------------------------------------- funding


def test_funding_absolute_rule_is_strict_and_reads_the_peak_settlement(con, pin):
    add_closes(con, "BTC", [100.0] * 4)
    add_funding(con, "BTC", 0, [0.005, 0.0001, 0.0001])  # peak exactly at 0.5 %: not extreme
    add_funding(con, "BTC", 1, [0.0050001, 0.0, 0.0])  # just above: extreme although the mean is 0.17 %
    add_funding(con, "BTC", 2, [-0.006, 0.0, 0.0])  # below -0.5 %: negative extreme
    add_funding(con, "BTC", 3, [0.004, 0.004, 0.004])
    df = signals(con)
    r0, r1, r2, r3 = (row(df, "BTC", i) for i in range(4))
    assert r0["funding_rate_8h_max"] == 0.005
    assert r0["funding_rate_8h"] == pytest.approx(0.0052 / 3, abs=1e-12)
    assert (r0["funding_extreme"], r0["funding_extreme_direction"]) == (False, 0)
    assert (r1["funding_extreme"], r1["funding_extreme_absolute"], r1["funding_extreme_direction"]) == (
        True,
        True,
        1,
    )
    assert r1["funding_rate_8h"] == pytest.approx(0.0050001 / 3, abs=1e-12)
    assert (r2["funding_extreme"], r2["funding_extreme_direction"]) == (True, -1)
    assert r2["funding_rate_8h_min"] == -0.006
    assert r3["funding_extreme"] is False
    assert r3["funding_annualized"] == pytest.approx(0.004 * 3 * 365)
    assert r3["funding_instruments"] == 1
    # percentile rule is off in BASE (needs 1000 days)
    assert not any(df["funding_extreme_percentile"].to_list())


def test_funding_is_oi_weighted_across_venues(con, pin):
    add_closes(con, "BTC", [100.0])
    add_funding(con, "BTC", 0, [0.0004], venue="binance")
    add_funding(con, "BTC", 0, [0.0001], venue="bybit")
    add_oi(con, "BTC", 0, 3072.0, venue="binance")
    add_oi(con, "BTC", 0, 1024.0, venue="bybit")
    # hyperliquid pays hourly: 0.00001 per hour = 0.00008 per 8h, but has no OI -> left out
    add_funding(con, "BTC", 0, [0.00001] * 24, venue="hyperliquid", instrument="BTC", interval_hours=1)
    r = row(signals(con), "BTC", 0)
    assert r["funding_rate_8h"] == pytest.approx(
        (0.0004 * 3072 + 0.0001 * 1024) / 4096, abs=1e-15
    )  # 0.000325
    assert r["funding_instruments"] == 3
    assert r["oi_usd"] == 4096.0


def test_funding_without_any_oi_is_a_plain_mean(con, pin):
    add_closes(con, "BTC", [100.0])
    add_funding(con, "BTC", 0, [0.0004], venue="binance")
    add_funding(con, "BTC", 0, [0.0001], venue="bybit")
    assert row(signals(con), "BTC", 0)["funding_rate_8h"] == pytest.approx(0.00025, abs=1e-15)


def test_funding_percentile_rule_inclusive_with_floor_and_history(con, pin):
    pin({"funding": {"percentile_min_days": 3, "extreme_percentile": 0.5, "percentile_window_days": 4}})
    add_closes(con, "BTC", [100.0] * 6)
    for i, r in enumerate([0.0002, 0.0004, 0.0003, 0.0003, 0.00029, 0.0001]):
        add_funding(con, "BTC", i, [r])
    add_closes(con, "ETH", [100.0] * 5)
    for i in range(5):  # calm: always the 0.01 % baseline -> never extreme although >= median
        add_funding(con, "ETH", i, [0.0001])
    add_closes(con, "SOL", [100.0] * 4)
    for i, r in enumerate([-0.0001, -0.0003, -0.0002, -0.0002]):
        add_funding(con, "SOL", i, [r])
    df = signals(con)
    btc = [row(df, "BTC", i) for i in range(6)]
    assert [r["funding_history_days"] for r in btc] == [0, 1, 2, 3, 4, 4]
    assert btc[2]["funding_extreme_percentile"] is False  # only 2 days of history (< 3)
    assert btc[3]["funding_pctl_threshold"] == pytest.approx(0.0003)  # median of 0.02, 0.04, 0.03 %
    assert (btc[3]["funding_extreme_percentile"], btc[3]["funding_extreme_direction"]) == (
        True,
        1,
    )  # == median
    assert btc[4]["funding_pctl_threshold"] == pytest.approx(0.0003)  # median of 0.02, 0.04, 0.03, 0.03
    assert btc[4]["funding_extreme"] is False  # 0.029 % < 0.03 %
    assert btc[5]["funding_extreme"] is False
    assert not any(r["funding_extreme"] for r in (row(df, "ETH", i) for i in range(5)))
    sol3 = row(df, "SOL", 3)
    assert sol3["funding_pctl_threshold_low"] == pytest.approx(-0.0002)
    assert (sol3["funding_extreme"], sol3["funding_extreme_direction"]) == (True, -1)


# --------------------------------------------------------------------------- long/short


def test_long_short_extremes_per_population_are_strict(con, pin):
    add_closes(con, "BTC", [100.0] * 4)
    add_ls(con, "BTC", 0, 1.5)  # at threshold: not extreme
    add_ls(con, "BTC", 1, 1.5000001)
    add_ls(con, "BTC", 2, 0.6667)  # at the low threshold: not extreme
    add_ls(con, "BTC", 3, 0.6666)
    add_ls(con, "BTC", 0, 2.0, population="top_accounts")  # top_accounts threshold 2.0 (pinned)
    add_ls(con, "BTC", 1, 2.01, population="top_accounts")
    add_ls(con, "BTC", 2, 0.49, population="top_accounts")
    add_ls(con, "BTC", 0, 2.9, population="top_positions")  # top_positions threshold 3.0 (pinned)
    add_ls(con, "BTC", 1, 3.1, population="top_positions")
    add_ls(con, "BTC", 2, 0.25, population="top_positions")
    add_ls(con, "BTC", 3, 0.2, population="top_positions")
    df = signals(con)
    got = [
        (
            r["ls_extreme"],
            r["ls_extreme_direction"],
            r["ls_extreme_top_accounts"],
            r["ls_extreme_top_positions"],
        )
        for r in (row(df, "BTC", i) for i in range(4))
    ]
    assert got == [
        (False, 0, False, False),
        (True, 1, True, True),
        (False, 0, True, False),
        (True, -1, False, True),
    ]


def test_long_short_last_value_of_day_oi_weighted(con, pin):
    add_closes(con, "BTC", [100.0])
    add_ls(con, "BTC", 0, 9.0, hour=1)  # superseded by the 23:00 value
    add_ls(con, "BTC", 0, 2.0, hour=23)
    add_ls(con, "BTC", 0, 1.0, venue="bybit")
    add_oi(con, "BTC", 0, 3072.0)
    add_oi(con, "BTC", 0, 1024.0, venue="bybit")
    r = row(signals(con), "BTC", 0)
    assert r["ls_ratio"] == 1.75  # (2.0 x 3072 + 1.0 x 1024) / 4096
    assert r["ls_extreme"] is True


# --------------------------------------------------------------------------- overheating and cascade risk


def test_overheating_needs_both_and_cascade_risk_formula(con, pin):
    n = 9
    add_closes(con, "BTC", [100.0] * n)
    for i in range(n):
        add_oi(con, "BTC", i, 1024.0)
    # day 7: OI +12.5 % vs day 0 -> OI component 0.125 / 0.25 = 0.5
    con.execute("UPDATE staging.open_interest SET oi_usd = 1152 WHERE ts = ?", [at(7)])
    add_funding(con, "BTC", 7, [0.006, 0.0, 0.0])  # absolute extreme -> funding component 1
    add_ls(con, "BTC", 7, 1.25)  # (1.25 - 1) / (1.5 - 1) = 0.5; not above 1.5 -> no overheating
    add_funding(con, "BTC", 8, [0.006, 0.0, 0.0])
    add_ls(con, "BTC", 8, 1.6)  # both -> overheating
    add_funding(con, "BTC", 6, [0.005, 0.0, 0.0])  # exactly 0.5 %: not extreme -> no overheating
    add_ls(con, "BTC", 6, 1.6)
    add_ls(con, "BTC", 5, 1.75)  # L/S alone: one component -> no score (min_components 2)
    df = signals(con)
    r5, r6, r7, r8 = (row(df, "BTC", i) for i in (5, 6, 7, 8))
    # day 7: 100 x (0.5 x 1 + 0.25 x 0.5 + 0.25 x 0.5) / (0.5 + 0.25 + 0.25) = 75
    assert (r7["cascade_funding_component"], r7["cascade_ls_component"], r7["cascade_oi_component"]) == (
        1.0,
        0.5,
        0.5,
    )
    assert r7["cascade_basis_component"] is None and r7["cascade_components"] == 3
    assert r7["cascade_risk"] == 75.0
    assert (r7["overheating"], r7["signal_state"]) == (False, "neutral")
    assert (r8["overheating"], r8["signal_state"]) == (True, "overheated")
    # day 8: OI back to 1024 vs 1024 a week earlier -> 0; L/S 1.6 -> 1; funding 1
    assert r8["cascade_risk"] == pytest.approx(100 * (0.5 + 0.25) / 1.0)
    # day 6: funding component = mean / nearest threshold = (0.005 / 3) / 0.005 = 1/3
    assert r6["overheating"] is False
    assert r6["cascade_funding_component"] == pytest.approx(1 / 3)
    # no OI 7 days earlier -> two components, weights 0.5 + 0.25 -> 55.56
    assert r6["cascade_components"] == 2
    assert r6["cascade_risk"] == round(100 * (0.5 / 3 + 0.25 * 1) / 0.75, 2)
    assert (r5["cascade_components"], r5["cascade_risk"]) == (1, None)  # below min_components


def test_cascade_risk_rescales_over_known_components(con, pin):
    add_closes(con, "BTC", [100.0])
    add_funding(con, "BTC", 0, [0.001])  # 0.001 / 0.005 = 0.2
    add_ls(con, "BTC", 0, 1.75)  # clamped to 1
    r = row(signals(con), "BTC", 0)
    assert r["cascade_components"] == 2
    assert r["cascade_risk"] == 46.67  # 100 x (0.5 x 0.2 + 0.25 x 1) / 0.75 = 46.666..


# --------------------------------------------------------------------------- liquidations


def test_liquidation_zscore_surge_inclusive_and_coverage(con, pin):
    add_closes(con, "BTC", [100.0] * 7)  # day 0: before capture started -> NULL, not 0
    for i, (long_, short) in enumerate([(100, 0), (150, 50), (0, 300), (300, 100)], start=1):
        if long_:
            add_liq(con, "BTC", i, "long", long_)
        if short:
            add_liq(con, "BTC", i, "short", short)
    # day 5: no liquidation rows at all -> 0 (capture running); day 6: 2,000 short
    add_liq(con, "BTC", 6, "short", 2000)
    df = signals(con)
    r = [row(df, "BTC", i) for i in range(7)]
    assert r[0]["liquidations_long_usd"] is None and r[0]["liquidation_zscore"] is None
    assert [x["liquidations_usd"] for x in r[1:]] == [100, 200, 300, 400, 0, 2000]
    assert r[3]["liquidation_zscore"] is None  # 2 days of history < 3
    # day 4: history 100, 200, 300 -> mean 200, sd 100 -> z = (400 - 200) / 100 = 2.0 exactly: surge
    assert r[4]["liquidation_zscore"] == pytest.approx(2.0, abs=1e-12)
    assert (r[4]["liquidation_surge"], r[4]["liquidation_dominant_side"]) == (True, "long")
    # day 5: history 100..400 -> mean 250, sd 129.10 -> z = -1.936
    assert r[5]["liquidation_zscore"] == pytest.approx(-250 / math.sqrt(50000 / 3))
    assert (r[5]["liquidation_surge"], r[5]["liquidation_dominant_side"]) == (False, None)
    # day 6: window = days 1..5 (5 days) -> 100, 200, 300, 400, 0
    mean, sd = 200.0, math.sqrt(((100**2) * 2 + 0 + 200**2 * 2) / 4)
    assert r[6]["liquidation_zscore"] == pytest.approx((2000 - mean) / sd)
    assert (r[6]["liquidation_surge"], r[6]["liquidation_dominant_side"]) == (True, "short")


def test_capitulation_and_short_squeeze_states(con, pin):
    closes = [128.0, 128.0, 128.0, 128.0, 120.0, 136.0]
    add_closes(con, "BTC", closes)
    for i, v in enumerate([1024.0, 1024.0, 1024.0, 1024.0, 768.0, 512.0]):
        add_oi(con, "BTC", i, v)
    for i, usd in enumerate([100, 200, 300], start=1):
        add_liq(con, "BTC", i, "long", usd)
    add_liq(con, "BTC", 4, "long", 5000)  # falling OI + falling price + long surge -> capitulation
    add_liq(con, "BTC", 5, "short", 9000)  # falling OI + rising price + short surge -> short squeeze
    df = signals(con)
    assert row(df, "BTC", 4)["signal_state"] == "capitulation"
    assert row(df, "BTC", 5)["signal_state"] == "short_squeeze"
    assert row(df, "BTC", 4)["oi_price_regime"] == "falling_oi_falling_price"


def test_crowded_trend_when_funding_is_extreme_in_a_rally(con, pin):
    add_closes(con, "BTC", [128.0, 136.0])
    add_oi(con, "BTC", 0, 1024.0)
    add_oi(con, "BTC", 1, 1152.0)
    add_funding(con, "BTC", 1, [0.0051])
    r = row(signals(con), "BTC", 1)
    assert (r["oi_price_regime"], r["signal_state"]) == ("rising_oi_rising_price", "crowded_trend")


# --------------------------------------------------------------------------- basis, carry, oi/mcap


def test_basis_and_carry_ranking(con, pin):
    add_closes(con, "BTC", [1024.0])
    bar = at(0, 23)
    add_price(con, "BTC", 0, 1024.0, kind="index", instrument="BTCUSDT")
    expiry = bar + timedelta(hours=1) + timedelta(days=36.5)
    add_price(con, "BTC", 0, 1056.0, kind="future", instrument="BTCUSDT_Q", expiry=expiry)  # +3.125 %
    add_price(
        con, "BTC", 0, 1100.0, kind="future", instrument="BTCUSDT_W", expiry=bar + timedelta(hours=1, days=5)
    )  # 5 days out: left out (< 7)
    add_funding(con, "BTC", 0, [0.0001], venue="binance")  # 10.95 % a year
    add_funding(con, "BTC", 0, [0.0003], venue="bybit")  # 32.85 % a year
    df = signals(con)
    r = row(df, "BTC", 0)
    assert r["basis_annualized"] == pytest.approx(0.03125 * 365 / 36.5)  # 0.3125
    assert r["basis_days_to_expiry"] == pytest.approx(36.5)
    assert r["basis_extreme"] is True
    assert r["cascade_basis_component"] == 1.0
    carry = con.sql(
        "SELECT venue, instrument, kind, carry_annualized, carry_rank, instruments_ranked, carry_spread,"
        " best_instrument, worst_instrument, perp_funding_spread FROM marts.carry ORDER BY carry_rank"
    ).fetchall()
    assert [c[:3] + (c[4],) for c in carry] == [
        ("bybit", "BTCUSDT", "perp", 1),
        ("binance", "BTCUSDT_Q", "future", 2),
        ("binance", "BTCUSDT", "perp", 3),
    ]
    assert carry[0][3] == pytest.approx(0.3285) and carry[1][3] == pytest.approx(0.3125)
    assert carry[0][5] == 3
    assert carry[0][6] == pytest.approx(0.3285 - 0.1095)
    assert (carry[0][7], carry[0][8]) == ("bybit:BTCUSDT", "binance:BTCUSDT")
    assert carry[0][9] == pytest.approx(0.219)


def test_oi_to_mcap_and_its_trailing_percentile(con, pin):
    add_closes(con, "BTC", [100.0] * 5)
    for i, (oi, mcap) in enumerate([(10, 1000), (20, 1000), (30, 1000), (20, 1000), (19, 1000)]):
        add_oi(con, "BTC", i, float(oi))
        con.execute(
            "INSERT INTO staging.market_caps (date, asset, market_cap_usd) VALUES (?, 'BTC', ?)",
            [day(i), mcap],
        )
    df = signals(con)
    r3, r4 = row(df, "BTC", 3), row(df, "BTC", 4)
    assert r3["oi_to_mcap"] == pytest.approx(0.02)
    assert r3["oi_to_mcap_threshold"] == pytest.approx(0.02)  # median of 1 %, 2 %, 3 %
    assert r3["oi_to_mcap_extreme"] is True  # at or above
    assert r4["oi_to_mcap_threshold"] == pytest.approx(0.02)  # median of 1, 2, 3, 2 %
    assert r4["oi_to_mcap_extreme"] is False
    assert row(df, "BTC", 2)["oi_to_mcap_threshold"] is None  # 2 days of history < 3


# --------------------------------------------------------------------------- milestones


def test_oi_milestones_cross_from_below_only(con, pin):
    add_closes(con, "BTC", [100.0] * 5)
    add_closes(con, "ETH", [100.0] * 5)
    for i, v in enumerate([900.0, 1000.0, 1500.0, 999.0, 2500.0]):
        add_oi(con, "BTC", i, v)
        add_oi(con, "ETH", i, 100.0)
    df = signals(con)
    assert [row(df, "BTC", i)["oi_milestone_crossed"] for i in range(5)] == [None, 1000.0, None, None, 2000.0]
    # market = BTC + ETH: 1000 (first day), 1100 (prev 1000 is not below 1000), 1600, 1099, 2600 (crosses 2000)
    assert [row(df, "ETH", i)["market_oi_milestone_crossed"] for i in range(5)] == [
        None,
        None,
        None,
        None,
        2000.0,
    ]
    assert row(df, "ETH", 4)["market_oi_usd"] == 2600.0
    ms = con.execute("SELECT date, asset, milestone_usd FROM marts.oi_milestones ORDER BY ALL").fetchall()
    assert ms == [
        (day(1), "BTC", 1000.0),
        (day(4), "ALL", 2000.0),
        (day(4), "BTC", 1000.0),
        (day(4), "BTC", 2000.0),
    ]
    got = [(a[0], a[1], a[2], a[3], a[4]) for a in alert_rows(con) if a[2] == "oi_milestone"]
    assert got == [
        (day(1), "BTC", "oi_milestone", 1000.0, 1000.0),
        (day(4), "ALL", "oi_milestone", 2600.0, 2000.0),
        (day(4), "BTC", "oi_milestone", 2500.0, 2000.0),
    ]
    # re-arm: with 3 days, day 4 looks back at 1000, 1500, 999 -> 1000 is not crossed again
    pin({"milestones": {"rearm_days": 3}})
    build_all(con, only=["marts.oi_milestones"])
    ms = con.execute(
        "SELECT date, asset, milestone_usd, prev_max_oi_usd FROM marts.oi_milestones ORDER BY ALL"
    ).fetchall()
    assert ms == [
        (day(1), "BTC", 1000.0, 900.0),
        (day(4), "ALL", 2000.0, 1600.0),
        (day(4), "BTC", 2000.0, 1500.0),
    ]


# --------------------------------------------------------------------------- alerts


def test_alerts_rules_values_severity_streak_and_grain(con, pin):
    add_closes(con, "BTC", [100.0] * 4)
    add_funding(con, "BTC", 1, [0.006, 0.0, 0.0])  # absolute -> critical
    add_ls(con, "BTC", 1, 1.6)  # + overheating
    add_ls(con, "BTC", 2, 1.6)  # ls streak day 2
    add_ls(con, "BTC", 3, 1.5)  # at threshold: nothing
    build_all(con, only=MARTS)
    got = alert_rows(con)
    # day 1: cascade 100 x (0.5 x 1 + 0.25 x 1) / 0.75 = 100 -> critical
    assert got == [
        (day(1), "BTC", "cascade_risk", 100.0, 70.0, "critical", 1),
        (day(1), "BTC", "funding_extreme", 0.006, 0.005, "critical", 1),
        (day(1), "BTC", "ls_extreme", 1.6, 1.5, "warning", 1),
        (day(1), "BTC", "overheating", 0.006, 0.005, "critical", 1),
        (day(2), "BTC", "ls_extreme", 1.6, 1.5, "warning", 2),
    ]
    ts, msg = con.execute("SELECT ts, message FROM marts.alerts WHERE rule = 'overheating'").fetchone()
    assert ts == datetime(2026, 3, 4, 0, 0, tzinfo=UTC)  # end of day 1 (2026-03-03)
    assert "BTC overheated: funding 0.6000 %/8h" in msg and "long/short ratio 1.60 above 1.50" in msg
    dup = con.execute(
        "SELECT count(*) FROM (SELECT ts, asset, rule FROM marts.alerts GROUP BY ALL HAVING count(*) > 1)"
    )
    assert dup.fetchone()[0] == 0


def test_heatmap_cluster_alert_is_inclusive(con, pin):
    add_closes(con, "BTC", [100.0] * 3)
    con.execute("""CREATE TABLE marts.daily_heatmap_clusters AS SELECT date::DATE AS date, asset,
        COLUMNS(* EXCLUDE (date, asset))::DOUBLE FROM (VALUES
        (DATE '2026-03-02', 'BTC', 102.0, 5e6, 0.02, 90.0, 1e6, 0.1),
        (DATE '2026-03-03', 'BTC', 102.00001, 5e6, 0.0200001, 99.0, 2e6, 0.01),
        (DATE '2026-03-04', 'BTC', NULL, NULL, NULL, NULL, NULL, NULL))
        t(date, asset, cluster_above_price, cluster_above_usd, cluster_above_distance,
          cluster_below_price, cluster_below_usd, cluster_below_distance)""")
    only = [m for m in MARTS if m not in ("marts.liquidation_heatmap", "marts.daily_heatmap_clusters")]
    df = signals(con, only=only)
    assert row(df, "BTC", 0)["cluster_above_distance"] == 0.02
    got = [a for a in alert_rows(con) if a[2].startswith("heatmap")]
    assert got == [
        (day(0), "BTC", "heatmap_cluster_above", 0.02, 0.02, "info", 1),
        (day(1), "BTC", "heatmap_cluster_below", 0.01, 0.02, "info", 1),
    ]
    msg = con.execute("SELECT message FROM marts.alerts WHERE rule = 'heatmap_cluster_above'").fetchone()[0]
    assert msg == "BTC estimated liquidation cluster $5,000,000 at 102.00, 2.00 % above the close"


def test_liquidation_surge_alert_severity(con, pin):
    add_closes(con, "BTC", [100.0] * 6)
    for i, usd in enumerate([100, 200, 300, 400, 1000], start=0):
        add_liq(con, "BTC", i, "long", usd)
    add_liq(con, "BTC", 5, "long", 100000)
    build_all(con, only=MARTS)
    got = [a for a in alert_rows(con) if a[2] == "liquidation_surge"]
    # day 3: history 100, 200, 300 -> z = 2.0 (warning); day 4: z = (1000 - 250) / 129.1 = 5.8 (critical)
    assert [(a[0], a[5]) for a in got] == [(day(3), "warning"), (day(4), "critical"), (day(5), "critical")]
    assert got[0][3] == pytest.approx(2.0) and got[1][3] == pytest.approx(750 / math.sqrt(50000 / 3))
    assert [a[6] for a in got] == [1, 2, 3]


# --------------------------------------------------------------------------- delivery


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []
    statuses: list[int] = []  # status to answer per request (default 200)

    def do_POST(self):  # noqa: N802 (http.server API)
        n = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(n)))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    _Hook.bodies, _Hook.statuses = [], []
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook/secret-token", _Hook
    srv.shutdown()
    srv.server_close()


def test_delivery_posts_each_alert_once_and_resumes_after_a_failure(con, pin, hook, monkeypatch):
    url, handler = hook
    add_closes(con, "BTC", [100.0] * 4)
    add_ls(con, "BTC", 0, 1.6)
    add_ls(con, "BTC", 2, 1.7)
    add_ls(con, "BTC", 3, 0.5)
    build_all(con, only=MARTS)
    now = datetime(
        2026, 3, 6, 12, tzinfo=UTC
    )  # 72 h back = 2026-03-03 12:00: day 0's alert (ts 03-03 00:00) is too old
    monkeypatch.delenv(delivery.WEBHOOK_ENV, raising=False)
    assert delivery.deliver(con, now=now).enabled is False

    handler.statuses = [200, 500]
    monkeypatch.setenv(delivery.WEBHOOK_ENV, url)
    first = delivery.deliver(con, now=now)
    assert (first.sent, first.pending) == (1, 1)
    assert first.errors == [
        f"alert webhook 127.0.0.1:{url.split(':')[2].split('/')[0]}: HTTP 500 delivering "
        "ls_extreme BTC 2026-03-05"
    ]
    assert "secret-token" not in first.errors[0]
    body = handler.bodies[0]
    assert body["rule"] == "ls_extreme" and body["asset"] == "BTC" and body["date"] == "2026-03-04"
    assert body["ts"] == "2026-03-05T00:00:00Z"
    assert body["value"] == 1.7 and body["threshold"] == 1.5 and body["severity"] == "warning"
    assert body["text"] == "[WARNING] BTC long/short account ratio 1.70 is above 1.50: crowded longs"

    second = delivery.deliver(con, now=now)
    assert (second.sent, second.pending, second.errors) == (1, 0, [])
    assert handler.bodies[-1]["value"] == 0.5 and handler.bodies[-1]["threshold"] == 0.6667
    third = delivery.deliver(con, now=now)
    assert (third.sent, third.pending) == (0, 0)
    assert len(handler.bodies) == 3  # 1 ok + 1 refused + 1 ok: nothing sent twice after a 2xx
    rows = con.execute("SELECT asset, rule, http_status FROM meta.alert_deliveries ORDER BY ts").fetchall()
    assert rows == [("BTC", "ls_extreme", 200), ("BTC", "ls_extreme", 200)]
    # the old day-0 alert is still undelivered, and goes out when the age limit allows it
    late = delivery.deliver(con, now=now, max_age_hours=24 * 30)
    assert late.sent == 1 and handler.bodies[-1]["date"] == "2026-03-02"


def test_delivery_min_severity_filters(con, pin, hook, monkeypatch):
    url, handler = hook
    add_closes(con, "BTC", [100.0])
    add_funding(con, "BTC", 0, [0.006])
    add_ls(con, "BTC", 0, 1.6)
    build_all(con, only=MARTS)
    now = datetime(2026, 3, 3, 1, tzinfo=UTC)
    sent = delivery.deliver(con, url, now=now, min_severity="critical")
    assert sorted(b["rule"] for b in handler.bodies) == ["cascade_risk", "funding_extreme", "overheating"]
    assert sent.sent == 3
    with pytest.raises(ValueError):
        delivery.pending(con, min_severity="loud")
