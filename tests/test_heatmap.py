"""Estimated liquidation heatmap: hand-checked levels, causality, incremental fold, clusters, PNG."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import matplotlib
import numpy as np
import polars as pl
import pytest

from perpwatch.serving.render import COLORMAP, render
from perpwatch.transforms.heatmap import (
    OUTPUT_SCHEMA,
    build_heatmap,
    clusters_of,
    clusters_of_bins,
    daily_clusters,
    estimate_levels,
    heatmap_settings,
    last_hour_bins,
    load_bars,
    nearest_clusters,
    new_state,
    read_heatmap,
    step,
    update_heatmap,
)
from perpwatch.transforms.marts import liquidation_heatmap as transform
from perpwatch.warehouse import select_stored
from tests.heatmap_bars_sql import load_bars_sql

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 3, 1, tzinfo=UTC)
ONE_TIER = {"leverage": [10], "weights": [1.0], "maintenance_margin": 0.004, "bin_pct": 0.0001}


def bar(h: int, o: float, hi: float, lo: float, c: float, oi: float, asset: str = "BTC") -> dict:
    return {
        "asset": asset,
        "ts": T0 + timedelta(hours=h),
        "open": o,
        "high": hi,
        "low": lo,
        "close": c,
        "oi_usd": oi,
    }


def bars_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema_overrides={"ts": pl.Datetime("us", "UTC")})


def random_bars(hours: int, seed: int = 7) -> pl.DataFrame:
    """Random-walk hourly bars for three assets with OI drifting up and down."""
    rng = np.random.default_rng(seed)
    frames = []
    for asset, p0, oi0 in (("BTC", 60_000.0, 1e10), ("ETH", 3_000.0, 5e9), ("SOL", 150.0, 1e9)):
        close = p0 * np.exp(np.cumsum(rng.normal(0, 0.006, hours)))
        open_ = np.r_[p0, close[:-1]]
        high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.003, hours)))
        low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.003, hours)))
        oi = oi0 * np.exp(np.cumsum(rng.normal(0.0005, 0.01, hours)))
        ts = [T0 + timedelta(hours=i) for i in range(hours)]
        frames.append(
            pl.DataFrame(
                {
                    "asset": asset,
                    "ts": ts,
                    "open": open_,
                    "high": high,
                    "low": low,
                    "close": close,
                    "oi_usd": oi,
                }
            )
        )
    return pl.concat(frames).with_columns(pl.col("ts").dt.replace_time_zone("UTC"))


def rows_at(heatmap: pl.DataFrame, h: int) -> pl.DataFrame:
    return heatmap.filter(pl.col("ts") == T0 + timedelta(hours=h))


def side_usd(heatmap: pl.DataFrame, side: str) -> float:
    return heatmap.filter(pl.col("side") == side)["est_liquidation_usd"].sum()


# --------------------------------------------------------------------------- the model by hand


def test_one_oi_increase_trade_through_and_oi_decrease():
    entry = 100.0  # typical price (102 + 98 + 100) / 3
    long_level, short_level = entry * (1 - 0.1 + 0.004), entry * (1 + 0.1 - 0.004)
    rows = [
        bar(0, 100, 100.5, 99.5, 100, 10_000_000),  # first hour: OI baseline only
        bar(1, 99, 102, 98, 100, 11_000_000),  # up bar, +$1M at 100 -> 60 % long / 40 % short
    ]
    state, hm = step(new_state(ONE_TIER), bars_frame(rows))
    assert rows_at(hm, 0).height == 0

    levels = state.levels().sort("side")
    assert levels["side"].to_list() == ["long", "short"]
    assert levels["price"].to_list() == [pytest.approx(90.4, abs=1e-12), pytest.approx(109.6, abs=1e-12)]
    assert levels["price"].to_list() == [
        pytest.approx(long_level, rel=1e-15),
        pytest.approx(short_level, rel=1e-15),
    ]
    assert levels["usd"].to_list() == [pytest.approx(600_000), pytest.approx(400_000)]

    h1 = rows_at(hm, 1)
    assert h1.height == 2
    for side, level, usd in (("long", long_level, 600_000), ("short", short_level, 400_000)):
        r = h1.filter(pl.col("side") == side).row(0, named=True)
        assert r["price_low"] <= level < r["price_high"]
        assert r["price_high"] / r["price_low"] == pytest.approx(1.0001)
        assert r["est_liquidation_usd"] == pytest.approx(usd)
        assert r["close"] == 100

    # a bar whose low touches the long level removes it; the short level (high 101) survives
    state, hm2 = step(state, bars_frame([bar(2, 100, 101, long_level, 95, 11_000_000)]))
    assert hm2["side"].to_list() == ["short"]
    assert hm2["est_liquidation_usd"].to_list() == [pytest.approx(400_000)]

    # OI falls 50 %: the surviving level halves
    state, hm3 = step(state, bars_frame([bar(3, 95, 105, 94, 96, 5_500_000)]))
    assert hm3["side"].to_list() == ["short"]
    assert hm3["est_liquidation_usd"].to_list() == [pytest.approx(200_000)]
    assert state.levels()["usd"].to_list() == [pytest.approx(200_000)]

    # the short level dies when a high reaches it
    state, hm4 = step(state, bars_frame([bar(4, 96, short_level, 95, 100, 5_500_000)]))
    assert hm4.height == 0 and state.levels().height == 0


def test_split_rule_down_and_flat_bars():
    rows = [
        bar(0, 100, 101, 99, 100, 1_000_000),
        bar(1, 101, 102, 98, 100, 2_000_000),  # down bar: 40 % long / 60 % short
        bar(2, 100, 102, 98, 100, 3_000_000),  # flat bar: 50 / 50
    ]
    hm = estimate_levels(bars_frame(rows), ONE_TIER)
    assert side_usd(rows_at(hm, 1), "long") == pytest.approx(400_000)
    assert side_usd(rows_at(hm, 1), "short") == pytest.approx(600_000)
    assert side_usd(rows_at(hm, 2), "long") == pytest.approx(900_000)
    assert side_usd(rows_at(hm, 2), "short") == pytest.approx(1_100_000)


def test_leverage_tiers_and_weights():
    settings = {"leverage": [5, 100], "weights": [3, 1], "maintenance_margin": 0.004, "bin_pct": 0.001}
    rows = [bar(0, 100, 101, 99, 100, 1e6), bar(1, 99, 102, 98, 100, 2e6)]
    levels = step(new_state(settings), bars_frame(rows))[0].levels()
    got = {(r["side"], round(r["price"], 9)): r["usd"] for r in levels.iter_rows(named=True)}
    assert got == {
        ("long", 80.4): pytest.approx(0.6 * 0.75e6),
        ("long", 99.4): pytest.approx(0.6 * 0.25e6),
        ("short", 119.6): pytest.approx(0.4 * 0.75e6),
        ("short", 100.6): pytest.approx(0.4 * 0.25e6),
    }


def test_settings_are_validated():
    with pytest.raises(ValueError, match="maintenance_margin"):
        new_state({**ONE_TIER, "leverage": [300]})
    with pytest.raises(ValueError, match="equal length"):
        new_state({**ONE_TIER, "weights": [0.5, 0.5]})


def test_project_settings_load():
    prm = new_state(heatmap_settings()).params
    assert sum(prm.weights) == pytest.approx(1.0)
    assert len(prm.leverage) == len(prm.weights)


# --------------------------------------------------------------------------- causality and the fold


def test_no_look_ahead():
    bars = random_bars(24 * 4)
    full = estimate_levels(bars, heatmap_settings())
    for h in (0, 5, 30, 61, 95):
        t = T0 + timedelta(hours=h)
        truncated = estimate_levels(bars.filter(pl.col("ts") <= t), heatmap_settings())
        assert truncated.filter(pl.col("ts") == t).equals(full.filter(pl.col("ts") == t))
        assert truncated.filter(pl.col("ts") == t).height > 0 or h == 0


def test_hour_by_hour_fold_equals_one_call():
    bars = random_bars(24 * 3, seed=11)
    one_state, one = step(new_state(heatmap_settings()), bars)
    state, parts = new_state(heatmap_settings()), []
    for chunk in bars.sort("ts").partition_by("ts", maintain_order=True):
        before = state.levels()
        new, rows = step(state, chunk)
        assert state.levels().equals(before)  # the input state is never modified
        state = new
        parts.append(rows)
    assert pl.concat(parts).sort("asset", "ts", "side", "price_low").equals(one)
    assert state.levels().equals(one_state.levels())
    # hours already folded in are skipped, so a repeated delivery changes nothing
    again, rows = step(state, bars.tail(5))
    assert rows.height == 0 and again.levels().equals(state.levels())


def test_bars_in_any_order_give_the_same_rows_and_a_repeated_hour_is_refused():
    bars = random_bars(24 * 2, seed=5)  # three assets
    one = estimate_levels(bars, heatmap_settings())
    shuffled = bars.sample(fraction=1.0, shuffle=True, seed=1)
    assert estimate_levels(shuffled, heatmap_settings()).equals(one)
    twin = pl.concat([shuffled, shuffled.slice(7, 1)])
    with pytest.raises(ValueError, match="more than one row per"):
        estimate_levels(twin, heatmap_settings())


def test_output_grain_and_schema():
    hm = estimate_levels(random_bars(48), heatmap_settings())
    assert dict(hm.schema) == OUTPUT_SCHEMA
    assert not hm.select(pl.struct("asset", "ts", "side", "price_low").is_duplicated().any()).item()
    assert hm["est_liquidation_usd"].min() > 0
    assert (hm["price_high"] > hm["price_low"]).all()
    assert ((hm["price_mid"] / hm["close"] - 1).abs().max()) <= 0.30 + 0.0025


def test_thirty_days_three_assets_is_fast():
    bars = random_bars(24 * 30)
    settings = heatmap_settings()
    estimate_levels(bars.head(10), settings)  # warm-up
    best = min(_timed(lambda: estimate_levels(bars, settings)) for _ in range(3))
    # CPU seconds of this process (all threads, so up to 2x wall time on 2 cores): what the estimate costs,
    # not how busy the machine is
    assert best < 2.0, f"30 days x 3 assets took {best:.2f} CPU s"


def _timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


# --------------------------------------------------------------------------- clusters


def hour_rows(
    bins: list[tuple[str, float, float]], close: float, h: int = 0, asset: str = "BTC"
) -> list[dict]:
    """Heatmap rows for one hour: (side, price_low, usd); bins 1 wide."""
    return [
        {
            "asset": asset,
            "ts": T0 + timedelta(hours=h),
            "side": side,
            "price_low": low,
            "price_high": low + 1,
            "est_liquidation_usd": usd,
            "close": close,
        }
        for side, low, usd in bins
    ]


def test_nearest_clusters():
    bins = [
        ("long", 90, 50),
        ("long", 95, 10),
        ("long", 97, 40),
        ("short", 103, 5),
        ("short", 105, 45),
        ("short", 110, 60),
    ]
    hm = bars_frame(hour_rows(bins, 100))
    got = nearest_clusters(hm, 100.0, percentile=0.5)  # large: usd >= median 42.5 -> 50, 45, 60
    assert got == {
        "cluster_above_price": 105.5,
        "cluster_above_usd": 45,
        "cluster_above_distance": pytest.approx(0.055),
        "cluster_below_price": 90.5,
        "cluster_below_usd": 50,
        "cluster_below_distance": pytest.approx(0.095),
    }
    # both sides of a bin count together; the latest hour is used
    later = hour_rows([("long", 97, 40), ("short", 97, 40), ("long", 90, 50)], 100, h=1)
    got = nearest_clusters(bars_frame(hour_rows(bins, 100) + later), 100.0, percentile=0.5)
    assert got["cluster_below_price"] == 97.5 and got["cluster_below_usd"] == 80
    assert got["cluster_above_price"] is None
    assert nearest_clusters(hm.clear(), 100.0)["cluster_above_usd"] is None


def test_daily_clusters_use_each_days_last_hour():
    day1_early = hour_rows([("long", 80, 999), ("short", 120, 999)], 100, h=3)
    day1_last = hour_rows(
        [("long", 90, 50), ("long", 95, 10), ("short", 105, 45), ("short", 110, 60)], 100, h=23
    )
    day2_last = hour_rows([("long", 190, 70), ("short", 210, 20)], 200, h=47)
    hm = bars_frame(day1_early + day1_last + day2_last)
    got = daily_clusters(hm, percentile=0.5)
    assert got.columns == [
        "date",
        "asset",
        "cluster_above_price",
        "cluster_above_usd",
        "cluster_above_distance",
        "cluster_below_price",
        "cluster_below_usd",
        "cluster_below_distance",
    ]
    assert got["date"].to_list() == [T0.date(), T0.date() + timedelta(days=1)]
    day1, day2 = got.rows(named=True)
    assert (day1["cluster_above_price"], day1["cluster_above_usd"]) == (110.5, 60)
    assert (day1["cluster_below_price"], day1["cluster_below_usd"]) == (90.5, 50)
    assert (day2["cluster_below_price"], day2["cluster_below_usd"]) == (190.5, 70)
    assert day2["cluster_above_price"] is None  # 20 is below the median of (70, 20)
    assert day2["cluster_below_distance"] == pytest.approx(1 - 190.5 / 200)


# --------------------------------------------------------------------------- warehouse and PNG


def warehouse(hours: int = 24 * 9, bars: pl.DataFrame | None = None) -> duckdb.DuckDBPyConnection:
    """In-memory warehouse with the real schema and two venues of synthetic BTC/ETH data (or of `bars`)."""
    con = duckdb.connect(":memory:")
    con.execute((ROOT / "warehouse" / "schema.sql").read_text())
    if bars is None:
        bars = random_bars(hours, seed=3).filter(pl.col("asset") != "SOL")
    prices, oi = [], []
    for venue, instrument, price_mult, oi_share in (
        ("binance", "{a}USDT", 1.0, 0.6),
        ("bybit", "{a}USDT", 1.0005, 0.4),
    ):
        v = bars.with_columns(
            pl.lit(venue).alias("venue"), (pl.col("asset") + instrument[3:]).alias("instrument")
        )
        prices.append(
            v.select(
                "venue",
                "instrument",
                pl.lit("perp").alias("kind"),
                pl.lit("1h").alias("interval"),
                "ts",
                "asset",
                *[(pl.col(c) * price_mult).alias(c) for c in ("open", "high", "low", "close")],
            )
        )
        oi.append(
            v.select("venue", "instrument", "ts", "asset", (pl.col("oi_usd") * oi_share).alias("oi_usd"))
        )
    prices_df, oi_df = pl.concat(prices), pl.concat(oi)  # noqa: F841 (read by DuckDB)
    con.execute("INSERT INTO staging.prices BY NAME SELECT * FROM prices_df")
    con.execute("INSERT INTO staging.open_interest BY NAME SELECT * FROM oi_df")
    return con


def assert_same_rows(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Same non-empty rows in the same order: floats to 1e-9, everything else exactly."""
    assert a.height == b.height > 0
    for c in a.columns:
        if a.schema[c] == pl.Float64:
            np.testing.assert_allclose(a[c].to_numpy(), b[c].to_numpy(), rtol=1e-9, atol=1e-9)
        else:
            assert a[c].equals(b[c]), c


def write_mart(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    frame = transform.build(con)
    con.execute(f"CREATE OR REPLACE TABLE {transform.TABLE} AS {select_stored(frame, 'frame')}")
    return frame


def test_transform_declares_table_and_inputs():
    assert transform.TABLE == "marts.liquidation_heatmap"
    assert transform.INPUTS == ["staging.prices", "staging.open_interest"]


def test_load_bars_sums_oi_and_ignores_a_late_venue():
    con = duckdb.connect(":memory:")
    con.execute((ROOT / "warehouse" / "schema.sql").read_text())
    con.execute(
        """
        INSERT INTO staging.prices (venue, instrument, kind, "interval", ts, asset, open, high, low, close)
        SELECT v, 'BTCUSDT', 'perp', '1h', TIMESTAMPTZ '2024-03-01 00:00:00+00' + to_hours(h), 'BTC',
               p, p + 1, p - 1, p
        FROM range(4) t(h), (VALUES ('binance', 100.0), ('bybit', 200.0)) v(v, p);
        INSERT INTO staging.prices (venue, instrument, kind, "interval", ts, asset, open, high, low, close)
        VALUES ('binance', 'BTCUSDT', 'spot', '1h', TIMESTAMPTZ '2024-03-01 00:00:00+00', 'BTC', 1, 1, 1, 1);
        -- binance from hour 0, bybit only from hour 2 and bigger from then on
        INSERT INTO staging.open_interest (venue, instrument, ts, asset, oi_usd) VALUES
        ('binance', 'BTCUSDT', '2024-03-01 00:00:00+00', 'BTC', 1000),
        ('binance', 'BTCUSDT', '2024-03-01 01:00:00+00', 'BTC', 1100),
        ('binance', 'BTCUSDT', '2024-03-01 02:00:00+00', 'BTC', 1200),
        ('binance', 'BTCUSDT', '2024-03-01 03:00:00+00', 'BTC', 1200),
        ('bybit', 'BTCUSDT', '2024-03-01 02:00:00+00', 'BTC', 5000),
        ('bybit', 'BTCUSDT', '2024-03-01 03:00:00+00', 'BTC', 4500);
        """
    )
    bars = load_bars(con)
    assert bars["close"].to_list() == [100, 100, 200, 200]  # largest-OI venue's perp bar each hour
    assert bars["oi_usd"].to_list() == [1000, 1100, 6200, 5700]
    assert bars["oi_prev_usd"].to_list() == [1000, 1000, 6100, 6200]  # bybit's arrival is no flow
    assert bars.schema["ts"] == pl.Datetime("us", "UTC")
    hm = estimate_levels(bars, ONE_TIER)
    # hour 2 adds only binance's +$100 (at ~200); hour 1's short level (109.6) was traded
    # through by the jump and its long level (90.4) is outside the ±30 % output window
    h2 = rows_at(hm, 2)
    assert h2["est_liquidation_usd"].sum() == pytest.approx(100)
    assert ((h2["price_mid"] / 200 - 1).abs() < 0.1).all()
    assert rows_at(hm, 3)["est_liquidation_usd"].sum() == pytest.approx(100 * 5700 / 6200)


def _messy_staging(seed: int) -> duckdb.DuckDBPyConnection:
    """Staging that exercises every rule of the bars' definition: sub-hour snapshots (the last wins), two
    perp instruments on one venue (averaged, OI summed), gaps longer and shorter than oi_max_gap_hours,
    venues that start late or stop, hours with a bar and no OI, OI and no bar, equal venue OI (first venue
    by name), spot and 8h rows and non-positive prices (ignored), an asset with no perp at all."""
    rng = np.random.default_rng(seed)
    con = duckdb.connect(":memory:")
    con.execute((ROOT / "warehouse" / "schema.sql").read_text())
    oi, px = [], []
    venues = ("binance", "bybit", "okx")
    for asset in ("BTC", "ETH", "SOL", "XRP"):
        for venue in venues:
            insts = [asset + "USDT"] + ([asset + "USDC"] if venue == "binance" and asset != "SOL" else [])
            for inst in insts:
                first, last = int(rng.integers(0, 20)), int(rng.integers(40, 60))
                for h in range(first, last):
                    if rng.random() < 0.15:  # a gap hour
                        continue
                    if rng.random() < 0.05:  # a long gap (> 6 h)
                        continue
                    ts = T0 + timedelta(hours=h)
                    for m in sorted(rng.choice(60, size=int(rng.integers(1, 4)), replace=False)):
                        # every 7th hour the venues tie: 5,000 USD per venue, split over its instruments
                        usd = 5000.0 / len(insts) if h % 7 == 0 else float(rng.uniform(1e3, 1e4))
                        oi.append((venue, inst, ts + timedelta(minutes=int(m)), asset, usd))
                    if asset == "XRP":
                        continue  # OI, no perp bar
                    if rng.random() < 0.1:
                        continue  # OI, no bar this hour
                    p = float(rng.uniform(90, 110))
                    bad = rng.random() < 0.03
                    px.append((venue, inst, "perp", "1h", ts, asset, p, p * 1.01, 0.0 if bad else p * 0.99, p * 1.002))
                    px.append((venue, inst, "spot", "1h", ts, asset, 1.0, 1.0, 1.0, 1.0))
                    px.append((venue, inst, "perp", "8h", ts, asset, 2.0, 2.0, 2.0, 2.0))
    con.executemany("INSERT INTO staging.open_interest (venue, instrument, ts, asset, oi_usd) VALUES (?, ?, ?, ?, ?)", oi)
    con.executemany('INSERT INTO staging.prices (venue, instrument, kind, "interval", ts, asset, open, high, low, close) '
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", px)
    con.execute("DELETE FROM staging.open_interest WHERE venue = 'binance' AND instrument = 'BTCUSDT' "
                "AND ts >= TIMESTAMPTZ '2024-03-01 20:00:00+00' AND ts < TIMESTAMPTZ '2024-03-02 06:00:00+00'")
    con.execute("INSERT INTO staging.prices (venue, instrument, kind, \"interval\", ts, asset, open, high, low, close) "
                "SELECT 'bybit', 'BTCUSDT', 'perp', '1h', TIMESTAMPTZ '2024-03-05 10:00:00+00', 'BTC', 1, 1, 1, 1")  # bar, no OI
    # perp bars that fail the price filter only: an asset whose every bar does (ADA: no row), and a bar of
    # a kept series hours before any other row (load_bars finds its series without the filter: no row either)
    con.execute("INSERT INTO staging.prices (venue, instrument, kind, \"interval\", ts, asset, open, high, low, close) "
                "SELECT 'okx', 'ADA-USDT-SWAP', 'perp', '1h', TIMESTAMPTZ '2024-02-29 12:00:00+00' + h * INTERVAL 1 HOUR, "
                "'ADA', 1, 1, 1, 0 FROM range(30) r(h) UNION ALL "
                "SELECT 'okx', 'BTC-USDT-SWAP', 'perp', '1h', TIMESTAMPTZ '2024-02-28 00:00:00+00', 'BTC', 1, -1, 1, 1")
    return con


def assert_bars_equal(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.columns == b.columns and a.schema == b.schema
    assert a.height == b.height > 0
    for c in a.columns:
        if a.schema[c] == pl.Float64:
            assert a[c].is_null().to_list() == b[c].is_null().to_list(), c
            np.testing.assert_allclose(a[c].fill_null(0).to_numpy(), b[c].fill_null(0).to_numpy(), rtol=1e-12, err_msg=c)
        else:
            assert a[c].to_list() == b[c].to_list(), c


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_load_bars_equals_its_sql_definition(seed):
    con = _messy_staging(seed)
    assert_bars_equal(load_bars(con, oi_max_gap_hours=6), load_bars_sql(con, oi_max_gap_hours=6))
    for gap in (0, 1, 2):
        assert_bars_equal(load_bars(con, oi_max_gap_hours=gap), load_bars_sql(con, oi_max_gap_hours=gap))
    start = T0 + timedelta(hours=25)
    assert_bars_equal(load_bars(con, ["eth", "btc"], 6, start), load_bars_sql(con, ["eth", "btc"], 6, start))
    bars = load_bars(con, oi_max_gap_hours=6)
    assert "XRP" not in bars["asset"].to_list()  # no perp bar, no row
    assert "ADA" not in bars["asset"].to_list()  # no usable perp bar, no row
    assert bars["ts"].min() >= T0  # the unusable early bar starts no row
    assert bars["oi_usd"].null_count() > 0  # hours with a bar and no OI stay NULL
    assert load_bars(con, ["DOGE"]).height == 0
    # the rebuild's grids (dense=True) hold exactly the rows' values, where heatmap_core.dense puts them
    from perpwatch.transforms import heatmap_core
    from perpwatch.transforms.heatmap import _bars_numpy

    for args in ((None, 6), (None, 0), (["eth", "btc"], 6, start)):
        want = heatmap_core.dense(*_bars_numpy(load_bars(con, *args)))
        got = load_bars(con, *args, dense=True)
        assert got.assets == want.assets and got.t0_us == want.t0_us and got.hours == want.hours > 0
        for f in ("open", "high", "low", "close", "oi", "oi_prev", "usable"):
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
    assert load_bars(con, ["DOGE"], dense=True).assets == []


def test_build_and_daily_clusters_from_warehouse():
    con = warehouse(24 * 4)
    frame = write_mart(con)
    # the mart's build gathers asset and side by index (pl.Enum); the rows are build_heatmap's text rows, and the
    # table stores text
    assert frame.schema["asset"] == pl.Enum(["BTC", "ETH"]) and frame.schema["side"] == pl.Enum(["long", "short"])
    text = build_heatmap(con)
    assert text.schema == pl.Schema(OUTPUT_SCHEMA)
    assert frame.with_columns(pl.col("asset", "side").cast(pl.String)).equals(text)
    assert dict(con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'marts' "
                            "AND table_name = 'liquidation_heatmap' AND column_name IN ('asset', 'side')").fetchall()) == {
        "asset": "VARCHAR", "side": "VARCHAR"}
    assert set(frame["asset"].unique()) == {"BTC", "ETH"}
    assert {"price_high", "est_liquidation_usd"} <= set(frame.columns)
    assert not frame.select(pl.struct("asset", "ts", "side", "price_low").is_duplicated().any()).item()
    stored = con.execute(
        "SELECT count(*), count(DISTINCT (asset, ts, side, price_low)) FROM marts.liquidation_heatmap"
    )
    assert stored.fetchone() == (frame.height, frame.height)
    clusters = daily_clusters(con)
    assert clusters.height == 2 * 4
    assert clusters.select(pl.struct("date", "asset").is_duplicated().any()).item() is False
    assert (clusters["cluster_above_distance"].drop_nulls() >= 0).all()
    assert (clusters["cluster_below_distance"].drop_nulls() > 0).all()


def test_daily_clusters_from_the_warehouse_equal_the_in_memory_rule():
    con = warehouse(24 * 12)  # 12 days: daily snapshots before the 7-day hourly window, every hour in it
    write_mart(con)
    q = heatmap_settings()["cluster_percentile"]
    from_sql = daily_clusters(con)  # DuckDB picks each day's last hour and sums the sides
    in_memory = clusters_of(read_heatmap(con), q)
    assert from_sql.height == 2 * 12
    assert from_sql.equals(in_memory)
    later = last_hour_bins(con, (T0 + timedelta(days=9)).date())
    assert later["date"].min() == (T0 + timedelta(days=9)).date() and later["date"].n_unique() == 3
    assert clusters_of_bins(later, q).equals(in_memory.filter(pl.col("date") >= (T0 + timedelta(days=9)).date()))


def test_last_hour_bins_sums_the_sides_of_a_bin_at_each_days_last_hour():
    """Hand-made stored rows: the day's earlier hour is ignored, a bin holding both sides is their sum, a bin
    with one side keeps its USD, and each day is picked separately."""
    con = duckdb.connect()
    con.execute("CREATE SCHEMA marts")
    t = [datetime(2026, 1, 1, 10, tzinfo=UTC), datetime(2026, 1, 1, 23, tzinfo=UTC), datetime(2026, 1, 2, 5, tzinfo=UTC)]
    rows = pl.DataFrame(
        [("BTC", t[0], "long", 90.0, 91.0, 7.0, 100.0),       # not the day's last hour
         ("BTC", t[1], "long", 90.0, 91.0, 3.0, 100.0),       # one side only
         ("BTC", t[1], "long", 95.0, 96.0, 4.0, 100.0),       # both sides: 4 + 6
         ("BTC", t[1], "short", 95.0, 96.0, 6.0, 100.0),
         ("BTC", t[1], "short", 110.0, 111.0, 5.0, 100.0),    # one side only
         ("BTC", t[2], "short", 101.0, 102.0, 2.0, 99.0)],    # the next day
        schema=["asset", "ts", "side", "price_low", "price_high", "est_liquidation_usd", "close"], orient="row")
    con.register("__rows", rows.to_arrow())
    con.execute("CREATE TABLE marts.liquidation_heatmap AS SELECT * FROM __rows")
    got = last_hour_bins(con).sort("ts", "price_low")
    assert got.select("ts", "price_low", "usd", "close").rows() == [
        (t[1], 90.0, 3.0, 100.0), (t[1], 95.0, 10.0, 100.0), (t[1], 110.0, 5.0, 100.0), (t[2], 101.0, 2.0, 99.0)]
    assert got["price_high"].to_list() == [91.0, 96.0, 111.0, 102.0]
    assert got["date"].to_list() == [t[1].date()] * 3 + [t[2].date()]
    assert last_hour_bins(con, t[2].date()).select("ts", "usd").rows() == [(t[2], 2.0)]


def test_render_png(tmp_path):
    con = warehouse()
    write_mart(con)
    out = render(con, "btc", 7, tmp_path / "sub" / "heatmap.png")
    assert out == tmp_path / "sub" / "heatmap.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    img = matplotlib.image.imread(out)[..., :3]
    assert img.shape[:2] == (600, 1200)
    assert img.std() > 0.15  # not blank

    cmap = matplotlib.colormaps[COLORMAP]
    low, high = np.asarray(cmap(0.0)[:3]), np.asarray(cmap(1.0)[:3])
    assert low[0] + low[2] > low[1]  # purple-ish: blue + red > green
    assert high[0] + high[1] > high[2]  # yellow-ish: red + green > blue
    # both ends of the colormap are really drawn (empty cells and the colorbar's top)
    for colour in (low, high):
        assert (np.abs(img - colour).max(axis=2) < 0.02).sum() > 500


def test_render_errors_clearly_without_rows(tmp_path):
    con = warehouse(24)
    with pytest.raises(ValueError, match="does not exist"):
        render(con, "BTC", 7, tmp_path / "x.png")
    write_mart(con)
    with pytest.raises(ValueError, match="no heatmap rows for asset 'DOGE'"):
        render(con, "DOGE", 7, tmp_path / "x.png")


def test_a_traded_through_level_is_removed_once_not_also_scaled_off():
    """Issue 13: the hour that trades through the long level and shows the OI drop it caused."""
    entry = 100.0
    long_level = entry * (1 - 0.1 + 0.004)  # 90.4, $600k; short level 109.6, $400k
    rows = [bar(0, 100, 100.5, 99.5, 100, 10_000_000), bar(1, 99, 102, 98, 100, 11_000_000)]
    state, _ = step(new_state(ONE_TIER), bars_frame(rows))
    # price falls through 90.4 and OI drops by exactly the $600k liquidated: 11.0M -> 10.4M
    state, hm = step(state, bars_frame([bar(2, 100, 101, long_level, 95, 10_400_000)]))
    # the short level keeps its $400k: survivors stand for 11.0M - 0.6M = 10.4M of OI, all still open.
    # (Scaling them by the full drop as well, 10.4 / 11.0, would have left $378,182: double counting.)
    assert hm["est_liquidation_usd"].to_list() == [pytest.approx(400_000)]
    # a drop beyond the liquidations (to 5.2M) scales survivors by 5.2 / 10.4 = 0.5 only
    state, hm = step(state, bars_frame([bar(3, 95, 105, 94, 96, 5_200_000)]))
    assert hm["est_liquidation_usd"].to_list() == [pytest.approx(200_000)]


# --------------------------------------------------------------------------- the mart at scale (issue 16)


def _core_rows(bars: pl.DataFrame, settings: dict, **kw) -> pl.DataFrame:
    from perpwatch.transforms.heatmap import Params, fold_rows

    return fold_rows(bars, Params.from_settings(settings), **kw)[0].sort("asset", "ts", "side", "price_low")


def _assert_same_rows(got: pl.DataFrame, want: pl.DataFrame) -> None:
    keys = ["asset", "ts", "side", "price_low"]
    assert got.select(keys).equals(want.select(keys))
    assert got["close"].equals(want["close"])
    np.testing.assert_allclose(got["est_liquidation_usd"].to_numpy(), want["est_liquidation_usd"].to_numpy(),
                               rtol=1e-9, atol=0)


@pytest.mark.parametrize("seed,chunked", [(11, False), (12, False), (13, True)])
def test_vectorised_core_equals_the_fold_at_every_hour(seed, chunked, monkeypatch):
    """heatmap_core (death hours, one scale per asset, interval sums) gives step's rows to 1e-9. chunked: the
    death-hour search one asset per chunk on two threads, as at scale (a rebuild's chunks are ~10 assets)."""
    from perpwatch.transforms import heatmap_core

    if chunked:
        monkeypatch.setattr(heatmap_core, "_TABLE_BYTES", 1)
        monkeypatch.setattr(heatmap_core, "_THREADED_LEVELS", 0)
    bars = random_bars(24 * 20, seed=seed)
    want = estimate_levels(bars, heatmap_settings())
    got = _core_rows(bars, heatmap_settings())
    assert want.height > 10_000
    _assert_same_rows(got, want)


def test_vectorised_core_on_the_hand_cases():
    rows = [
        bar(0, 100, 100.5, 99.5, 100, 10_000_000),
        bar(1, 99, 102, 98, 100, 11_000_000),
        bar(2, 100, 101, 90.4, 95, 10_400_000),   # trades through the long level, OI falls by what it held
        bar(3, 95, 105, 94, 96, 5_200_000),       # OI halves beyond that
        bar(4, 96, 96.5, 95.5, 96, 0),             # OI to zero: every level goes
        bar(5, 96, 97, 95, 97, 1_000_000),         # OI from zero is no flow (prev <= 0)
        bar(6, 97, 98, 96, 97.5, 2_000_000),
    ]
    want = estimate_levels(bars_frame(rows), ONE_TIER)
    got = _core_rows(bars_frame(rows), ONE_TIER)
    _assert_same_rows(got, want)
    assert rows_at(got, 2)["est_liquidation_usd"].to_list() == [pytest.approx(400_000)]
    assert rows_at(got, 4).height == 0 and rows_at(got, 6).height == 2


def test_stored_rows_daily_snapshots_and_top_bins():
    """Before the hourly window one hour per asset-day (its last), and at most top_bins bins per side."""
    bars = random_bars(24 * 6, seed=5)
    every = estimate_levels(bars, heatmap_settings())
    newest = (T0 + timedelta(days=5)).date()
    got = _core_rows(bars, heatmap_settings(), hourly_from=(newest - datetime(1970, 1, 1).date()).days - 1,
                     top_bins=8)
    hours = got.group_by("asset", pl.col("ts").dt.date().alias("d")).agg(pl.col("ts").n_unique().alias("n"))
    assert set(hours.filter(pl.col("d") < newest - timedelta(days=1))["n"]) == {1}
    assert set(hours.filter(pl.col("d") >= newest - timedelta(days=1))["n"]) == {24}
    assert got.group_by("asset", "ts", "side").len()["len"].max() == 8
    # the kept bins are each hour's largest, with the fold's values
    t = T0 + timedelta(days=2, hours=23)
    for side in ("long", "short"):
        want = every.filter((pl.col("ts") == t) & (pl.col("asset") == "BTC") & (pl.col("side") == side)) \
            .sort("est_liquidation_usd", descending=True).head(8).sort("price_low")
        _assert_same_rows(got.filter((pl.col("ts") == t) & (pl.col("asset") == "BTC") & (pl.col("side") == side)),
                          want)


def test_incremental_heatmap_equals_a_full_rebuild():
    """Staging arrives in five slices (one mid-day); each build after the first resumes from the stored state."""
    from datetime import date as _date

    from perpwatch import transforms
    from perpwatch.transforms.marts import daily_heatmap_clusters as clusters_mart

    full_con = warehouse(24 * 12)
    inc_con = duckdb.connect(":memory:")
    inc_con.execute((ROOT / "warehouse" / "schema.sql").read_text())
    cuts = [T0 + timedelta(days=d, hours=h) for d, h in ((8, 0), (9, 0), (9, 13), (10, 0), (12, 0))]
    modes = []
    prev = T0 - timedelta(days=1)
    for i, cut in enumerate(cuts):
        for t in ("prices", "open_interest"):
            inc_con.register("__src", full_con.execute(
                f"SELECT * FROM staging.{t} WHERE ts >= ? AND ts < ?", [prev, cut]).arrow())
            inc_con.execute(f"INSERT INTO staging.{t} SELECT * FROM __src")
        if i == 0:
            write_mart(inc_con)
            inc_con.register("__c", clusters_mart.build(inc_con).to_arrow())
            inc_con.execute(f"CREATE TABLE {clusters_mart.TABLE} AS SELECT * FROM __c")
        else:
            since = prev.date()   # the first day the new staging rows touch
            modes.append(update_heatmap(inc_con, since)[1])
            clusters_mart.build_since(inc_con, since)
        prev = cut
    assert modes[0].startswith("resumed from") and all(m.startswith("resumed") for m in modes)
    write_mart(full_con)   # the full rebuild over the same staging (all 12 days)
    for table, keys in ((transform.TABLE, "asset, ts, side, price_low"), (clusters_mart.TABLE, "date, asset")):
        if table == clusters_mart.TABLE:
            full_con.register("__c", clusters_mart.build(full_con).to_arrow())
            full_con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM __c")
        a = inc_con.execute(f"SELECT * FROM {table} ORDER BY {keys}").pl()
        b = full_con.execute(f"SELECT * FROM {table} ORDER BY {keys}").pl()
        assert_same_rows(a, b)
    # a change at or before the stored day makes the next build a full one
    assert update_heatmap(inc_con, _date(2024, 3, 2))[1].startswith("full")
    assert transform.build_since(inc_con, _date(2024, 3, 20)) == _date(2024, 3, 12)
    assert transforms.incremental_plan(inc_con, _date(2024, 3, 12))[transform.TABLE]["mode"] == "resume"


def _stored_levels(con) -> pl.DataFrame:
    return con.execute("SELECT l.asset, l.side, l.price, l.amount * p.scale AS usd FROM meta.heatmap_levels l "
                       "JOIN meta.heatmap_progress p USING (asset) ORDER BY l.asset, l.side, l.price").pl()


def test_incremental_reads_only_reachable_levels_and_survives_a_clear_and_rescaling(monkeypatch):
    """A 40-day history in daily slices: a rally leaves old long levels far below the price (the daily build
    must not read them, yet they must survive with the right USD), one asset's OI falls to zero (every level
    dies, far ones included), and the stored scale is folded into the amounts after every decline. The
    incremental mart and stored levels equal a full rebuild's."""
    from perpwatch.transforms import heatmap as hm

    hours = 24 * 40
    base = random_bars(hours, seed=11).filter(pl.col("asset") != "SOL")
    trend = np.r_[np.linspace(0, 1.2, hours // 2), np.full(hours - hours // 2, 1.2)]   # +230 % then flat
    h_idx = pl.Series("h", np.tile(np.arange(hours), 2))
    bars = base.with_columns(h_idx).with_columns(
        *[(pl.col(c) * pl.col("h").map_elements(lambda i: float(np.exp(trend[i])), return_dtype=pl.Float64))
          for c in ("open", "high", "low", "close")],
        # ETH: OI to zero on day 25 at 05:00, back the next hour
        pl.when((pl.col("asset") == "ETH") & (pl.col("h") == 24 * 25 + 5)).then(0.0).otherwise(pl.col("oi_usd"))
        .alias("oi_usd"),
    ).drop("h")
    full_con = warehouse(bars=bars)
    inc_con = duckdb.connect(":memory:")
    inc_con.execute((ROOT / "warehouse" / "schema.sql").read_text())
    monkeypatch.setattr(hm, "_RESCALE_BELOW", 0.9999)        # fold the scale into the amounts after each decline
    seen: list[tuple[int, int]] = []
    real_load = hm.load_levels

    def counting(con, progress, ranges=None):
        out = real_load(con, progress, ranges)
        seen.append((sum(v.long_price.size + v.short_price.size for v in out.values()),
                     con.execute("SELECT count(*) FROM meta.heatmap_levels").fetchone()[0]))
        return out

    monkeypatch.setattr(hm, "load_levels", counting)
    prev = T0 - timedelta(days=1)
    for i, cut in enumerate([T0 + timedelta(days=d) for d in range(10, 41)]):
        for t in ("prices", "open_interest"):
            inc_con.register("__src", full_con.execute(
                f"SELECT * FROM staging.{t} WHERE ts >= ? AND ts < ?", [prev, cut]).arrow())
            inc_con.execute(f"INSERT INTO staging.{t} SELECT * FROM __src")
        if i == 0:
            write_mart(inc_con)
        else:
            assert update_heatmap(inc_con, prev.date())[1].startswith("resumed")
        prev = cut
    write_mart(full_con)
    assert any(loaded < stored for loaded, stored in seen[-10:])       # far levels were left unread
    a = inc_con.execute(f"SELECT * FROM {transform.TABLE} ORDER BY asset, ts, side, price_low").pl()
    b = full_con.execute(f"SELECT * FROM {transform.TABLE} ORDER BY asset, ts, side, price_low").pl()
    assert_same_rows(a, b)
    x, y = _stored_levels(inc_con), _stored_levels(full_con)
    assert x.height == y.height > 0
    assert x["price"].equals(y["price"]) and x["side"].equals(y["side"])
    np.testing.assert_allclose(x["usd"].to_numpy(), y["usd"].to_numpy(), rtol=1e-9)
    eth_born_after_clear = full_con.execute(
        "SELECT count(*) FROM meta.heatmap_levels WHERE asset = 'ETH'").fetchone()[0]
    assert eth_born_after_clear > 0


def test_a_warehouse_with_the_old_level_table_is_upgraded_and_rebuilds_in_full():
    """Before amount x scale, meta.heatmap_levels had a usd column: connecting remakes the table (it is only a
    resume point) and the next build is a full one, after which the daily path resumes."""
    from perpwatch import warehouse as wh

    con = warehouse(24 * 10)
    con.execute("DROP TABLE meta.heatmap_levels")
    con.execute("CREATE TABLE meta.heatmap_levels (asset VARCHAR NOT NULL, side VARCHAR NOT NULL, "
                "price DOUBLE NOT NULL, usd DOUBLE NOT NULL)")
    con.execute("INSERT INTO meta.heatmap_levels VALUES ('BTC', 'long', 50000.0, 1e6)")
    con.execute("CREATE TABLE marts.liquidation_heatmap AS SELECT 1 AS x")
    wh.upgrade_heatmap_levels(con)
    cols = [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE schema_name = 'meta' "
                                      "AND table_name = 'heatmap_levels' ORDER BY column_index").fetchall()]
    assert cols == ["asset", "side", "price", "amount"]
    assert con.execute("SELECT count(*) FROM meta.heatmap_levels").fetchone()[0] == 0
    assert update_heatmap(con, (T0 + timedelta(days=9)).date())[1] == "full: no stored state for these settings"
    assert update_heatmap(con, (T0 + timedelta(days=9)).date())[1].startswith("resumed from")


def test_bars_read_ahead_keeps_order_raises_and_stops():
    """load_bars reads DuckDB's next batch on a worker thread (heatmap._ahead): items arrive in order, an
    error in the producer reaches the consumer, and a consumer that stops early does not leave it blocked."""
    import threading

    from perpwatch.transforms.heatmap import _ahead

    assert list(_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("batch 2 is bad")

    got = []
    with pytest.raises(ValueError, match="batch 2 is bad"):
        for x in _ahead(failing()):
            got.append(x)
    assert got == [1]
    before = threading.active_count()
    gen = _ahead(iter(range(1000)), depth=1)
    assert next(gen) == 0
    gen.close()
    assert threading.active_count() == before


def test_born_order_is_the_stable_asset_order_of_the_levels():
    from perpwatch.transforms.heatmap_core import asset_order, born_order

    rng = np.random.default_rng(7)
    for n_assets, cells, k in ((1, 5, 3), (4, 1000, 6), (300, 20_000, 4)):
        cell_asset = rng.integers(0, n_assets, cells)
        level_asset = np.repeat(cell_asset, k)  # level j of cell c at c * k + j
        order, counts = born_order(cell_asset, k, n_assets)
        np.testing.assert_array_equal(order, asset_order(level_asset, n_assets))
        np.testing.assert_array_equal(counts, np.bincount(level_asset, minlength=n_assets))
