# ruff: noqa: F811  (pytest fixtures con, pin imported from tests/test_signals.py)
"""Point-in-time proof: a day's signals and alerts never change when later data is removed.

One warehouse is backfilled from the in-process simulator (Binance, 30 days to the fixed
now 2026-11-20), plus synthetic liquidations (with surges) and market caps so that every
rolling window of marts.daily_signals is exercised; the windows are pinned short so the
percentile, z-score and oi/mcap rules fire inside 30 days. For several days D, staging is
copied with every row after the end of D deleted (ts / funding_time >= D + 1 00:00 UTC,
date > D), the signal marts are rebuilt on the copy, and D's rows of marts.daily_signals and
marts.alerts must equal those of the full build. Floats are compared to 1e-9 relative: the
same inputs in a shorter window partition may be summed in another order by DuckDB.

Provider data is cut by publication, not by date: the warehouse also holds macro closes (SPX, NDX,
GOLD without available_at, i.e. the [availability] lags; the dollar index with FRED's weekly release,
Monday 21:15 UTC for the week before) and US spot ETF flows (published the next US morning), and the
truncated copy keeps only the rows known by the end of D (available_at, else date + lag, <= D + 1
00:00). A mart joining them by date label would show in the full build a value the truncated one
cannot know (marts.daily_institutional is compared too). The hand-computed cases are at the end.
"""

from __future__ import annotations

import json
import math
import tomllib
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import polars as pl
import pytest

from perpwatch import jobs, warehouse
from perpwatch.core.settings import SIGNALS_FILE, signal_settings
from perpwatch.transforms import build_all
from perpwatch.transforms.marts.cross_market_correlation import macro_available_sql
from tests.test_signals import MARTS as SIGNAL_MARTS
from tests.test_signals import add_closes, at, con, day, pin, row  # noqa: F401 - fixtures

NOW = datetime(2026, 11, 20, tzinfo=UTC)
MARTS = [
    "marts.reference_close",
    "marts.open_interest_by_venue",
    "marts.carry",
    "marts.liquidation_heatmap",
    "marts.daily_heatmap_clusters",
    "marts.oi_milestones",
    "marts.etf_flows_daily",
    "marts.cross_market_correlation",
    "marts.daily_institutional",
    "marts.daily_signals",
    "marts.alerts",
]
DAYS = [date(2026, 10, 28), date(2026, 11, 4), date(2026, 11, 12), date(2026, 11, 19)]
PINNED = {  # short windows so every rule has history inside the 30 simulated days
    "funding": {"percentile_window_days": 10, "percentile_min_days": 5},
    "liquidations": {"zscore_window_days": 10, "zscore_min_days": 3},
    "leverage": {"oi_to_mcap_window_days": 10, "oi_to_mcap_min_days": 5},
    "milestones": {"oi_usd": [5_000_000_000, 10_000_000_000, 20_000_000_000]},
    "cross_market": {"min_coverage": 0.3},   # 9 returns of a 30-row window (about 2 weeks of trading)
}
TS_COLUMN = {
    "staging.prices": "ts",
    "staging.open_interest": "ts",
    "staging.long_short_ratio": "ts",
    "staging.liquidations": "ts",
    "staging.funding_rates": "funding_time",
}
DATE_COLUMN = {
    "staging.market_caps": "date",
    "staging.treasury_holdings": "as_of",
}
# provider rows: known from available_at, else from date + the [availability] lag (? = end of D)
PUBLISHED = {
    "staging.etf_flows": "coalesce(m.available_at, m.date + INTERVAL (CAST({lag} AS DOUBLE)) HOUR) <= ?",
    "staging.macro_closes": "{macro} <= ?",
}


def published_where(name: str) -> str:
    avail = signal_settings().get("availability", {})
    return PUBLISHED[name].format(lag=avail.get("etf_flow_lag_hours", 38), macro=macro_available_sql(avail))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v) if isinstance(v, str) else repr(v)


def pinned_settings(path) -> None:
    with open(SIGNALS_FILE, "rb") as f:
        cfg = tomllib.load(f)
    for section, values in PINNED.items():
        cfg.setdefault(section, {}).update(values)
    lines = []
    for section, values in cfg.items():
        lines += [f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items()), ""]
    path.write_text("\n".join(lines))


def synthetic_liquidations(con) -> None:
    """A few liquidations every hour with surges on chosen days (deterministic)."""
    rng = np.random.default_rng(11)
    closes = con.sql(
        "SELECT asset, ts, close FROM staging.prices WHERE kind = 'perp' AND \"interval\" = '1h'"
    ).pl()
    rows = closes.sort("asset", "ts").sample(fraction=0.5, seed=3)
    rows = rows.with_columns(
        pl.lit("binance").alias("venue"),
        (pl.col("asset") + "USDT").alias("instrument"),
        (pl.col("ts") + pl.duration(minutes=17)).alias("ts"),
        pl.Series("side", rng.choice(["long", "short"], rows.height)),
        pl.col("close").alias("price"),
    )
    qty = rng.lognormal(0.0, 1.0, rows.height) * 20_000 / rows["price"].to_numpy()
    surge = rows["ts"].dt.date().is_in([date(2026, 11, 3), date(2026, 11, 12), date(2026, 11, 16)]).to_numpy()
    rows = rows.with_columns(pl.Series("qty_base", np.where(surge, qty * 25, qty)))
    rows = rows.with_columns((pl.col("price") * pl.col("qty_base")).alias("usd")).drop("close")
    con.register("__liq", rows.to_arrow())
    con.execute("INSERT INTO staging.liquidations BY NAME SELECT * FROM __liq")
    con.unregister("__liq")


def synthetic_market_caps(con) -> None:
    con.execute("""
        INSERT INTO staging.market_caps (date, asset, market_cap_usd, source)
        SELECT date, asset, close_usd * CASE asset WHEN 'BTC' THEN 19.9e6 WHEN 'ETH' THEN 120.7e6 ELSE 5.6e8 END,
               'synthetic'
        FROM marts.reference_close""")


def synthetic_provider_data(con) -> None:
    """Weekday macro closes and ETF flows over the simulated window (deterministic random walks)."""
    rng = np.random.default_rng(5)
    days = [NOW.date() - timedelta(days=k) for k in range(31, -1, -1)]
    weekdays = [d for d in days if d.weekday() < 5]
    for series, level in (("SPX", 6000.0), ("NDX", 21000.0), ("GOLD", 2600.0), ("DXY", 120.0)):
        closes = level * np.exp(np.cumsum(rng.normal(0, 0.01, len(weekdays))))
        for d, c in zip(weekdays, closes, strict=True):
            # FRED H.10: the dollar index of a week is released on the next Monday, 16:15 New York
            monday = d + timedelta(days=7 - d.weekday())
            published = datetime.combine(monday, time(21, 15), UTC) if series == "DXY" else None
            con.execute("INSERT INTO staging.macro_closes (date, series, close, source, available_at)"
                        " VALUES (?, ?, ?, 'synthetic', ?)", [d, series, float(c), published])
    for d in weekdays:
        for ticker in ("IBIT", "FBTC"):
            con.execute("INSERT INTO staging.etf_flows (date, ticker, flow_usd, source) VALUES (?, ?, ?, 'synthetic')",
                        [d, ticker, float(rng.normal(50e6, 200e6))])


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from perpwatch.simulator.server import start

    tmp = tmp_path_factory.mktemp("pit")
    db = tmp / "full.duckdb"
    settings_file = tmp / "signals.toml"
    pinned_settings(settings_file)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERPWATCH_SIGNALS", str(settings_file))
        sim = start(port=0, seed=7, now=NOW)
        try:
            for k, v in sim.env().items():
                mp.setenv(k, v)
            report = jobs.run(
                kind="backfill",
                start=NOW - timedelta(days=30),
                end=NOW,
                venues=["binance"],
                assets=["BTC", "ETH", "SOL"],
                db=db,
                build=False,
            )
        finally:
            sim.stop()
        assert report.status in ("success", "warning"), report.errors
        con = warehouse.connect(db)
        build_all(con, only=["marts.reference_close"])
        synthetic_market_caps(con)
        synthetic_liquidations(con)
        synthetic_provider_data(con)
        build_all(con, only=MARTS)
        signals = con.sql("SELECT * FROM marts.daily_signals").pl()
        alerts = con.sql("SELECT * FROM marts.alerts").pl()
        institutional = con.sql("SELECT * FROM marts.daily_institutional").pl()
        con.close()
        yield {"db": db, "signals": signals, "alerts": alerts, "institutional": institutional,
               "settings": settings_file}


def truncated_build(full_db, d: date, mp) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    """Staging of full_db cut at the end of day d (provider rows: as published by then), rebuilt:
    (daily_signals, alerts, daily_institutional, max times)."""
    end = datetime.combine(d + timedelta(days=1), time(0), UTC)
    con = warehouse.connect(":memory:")
    try:
        con.execute(f"ATTACH '{full_db}' AS src (READ_ONLY)")
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'src' AND table_schema = 'staging'"
            ).fetchall()
        ]
        latest = {}
        for t in tables:
            name = f"staging.{t}"
            if name in TS_COLUMN:
                where, arg = f"{TS_COLUMN[name]} < ?", [end]
            elif name in DATE_COLUMN:
                where, arg = f"{DATE_COLUMN[name]} <= ?", [d]
            elif name in PUBLISHED:
                where, arg = published_where(name), [end]
            else:  # instruments: metadata, no time axis
                where, arg = "TRUE", []
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM src.{name} m WHERE {where}", arg)
            if name in TS_COLUMN:
                latest[name] = con.execute(f"SELECT max({TS_COLUMN[name]}) FROM {name}").fetchone()[0]
        con.execute("DETACH src")
        build_all(con, only=MARTS)
        return (
            con.sql("SELECT * FROM marts.daily_signals").pl(),
            con.sql("SELECT * FROM marts.alerts").pl(),
            con.sql("SELECT * FROM marts.daily_institutional").pl(),
            latest,
        )
    finally:
        con.close()


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def assert_rows_equal(full_rows: pl.DataFrame, cut_rows: pl.DataFrame, keys: list[str], what: str) -> None:
    assert full_rows.columns == cut_rows.columns
    f = full_rows.sort(keys).to_dicts()
    c = cut_rows.sort(keys).to_dicts()
    assert [tuple(r[k] for k in keys) for r in f] == [tuple(r[k] for k in keys) for r in c], (
        f"{what}: keys differ"
    )
    for rf, rc in zip(f, c, strict=True):
        diff = {k: (rf[k], rc[k]) for k in rf if not _same(rf[k], rc[k])}
        assert not diff, f"{what} {[rf[k] for k in keys]}: full vs truncated differ in {diff}"


@pytest.mark.parametrize("d", DAYS, ids=str)
def test_signals_and_alerts_for_day_d_do_not_depend_on_later_data(full, d, monkeypatch):
    monkeypatch.setenv("PERPWATCH_SIGNALS", str(full["settings"]))
    cut_signals, cut_alerts, cut_institutional, latest = truncated_build(full["db"], d, monkeypatch)
    end = datetime.combine(d + timedelta(days=1), time(0), UTC)
    assert all(v is None or v < end for v in latest.values()), latest  # truncation really happened
    assert cut_signals["date"].max() == d
    assert full["signals"].filter(pl.col("date") > d).height > 0 or d == DAYS[-1]

    full_d = full["signals"].filter(pl.col("date") == d)
    assert full_d.height == 3  # BTC, ETH, SOL
    assert_rows_equal(full_d, cut_signals.filter(pl.col("date") == d), ["asset"], f"daily_signals {d}")
    assert_rows_equal(
        full["institutional"].filter(pl.col("date") == d),
        cut_institutional.filter(pl.col("date") == d),
        ["asset"],
        f"daily_institutional {d}",
    )
    assert_rows_equal(
        full["alerts"].filter(pl.col("date") == d),
        cut_alerts.filter(pl.col("date") == d),
        ["asset", "rule"],
        f"alerts {d}",
    )


def test_the_compared_days_exercise_every_window(full):
    """Guards the proof's strength: on the later days every rolling rule has its history."""
    late = full["signals"].filter(pl.col("date").is_in(DAYS[1:]))
    for col in (
        "funding_pctl_threshold",
        "liquidation_zscore",
        "oi_to_mcap_threshold",
        "cluster_above_price",
        "ls_ratio",
        "oi_change_7d",
        "cascade_risk",
    ):
        assert late[col].null_count() == 0, col
    assert late.filter(pl.col("asset") != "SOL")["basis_annualized"].null_count() == 0  # SOL has no futures
    # the provider joins are exercised too: correlations (the dollar index a week late) and ETF flows
    for col in ("corr_spx_30d", "corr_ndx_30d", "corr_gold_30d"):
        assert late[col].null_count() == 0, col
    assert full["signals"].filter(pl.col("date") == DAYS[-1])["corr_dxy_30d"].null_count() == 0
    assert late.filter(pl.col("asset") == "BTC")["etf_flow_usd"].null_count() == 0
    assert full["signals"]["liquidation_surge"].any()
    assert full["alerts"].filter(pl.col("date").is_in(DAYS)).height > 0


# --------------------------------------------------------------------------- publication time, by hand
# Provider rows join by when they were published (available_at, else the [availability] lag of
# perpwatch/core/signals.toml), not by their date label. Hand-built: BTC closes every calendar day
# from Monday 2026-03-02 (day 0); the dollar index (DXY) on weekdays with, in week 1, log returns
# +a, -a, +a, -a (a = ln 1.01) that BTC doubles exactly (correlation 1), and in week 2 returns
# +a, -a, +a, -a, 0 that BTC mirrors (-2a, 2a, ..., 0): over all nine returns sum(x) = sum(y) = 0 and
# sum(xy) = 4(2a^2) - 4(2a^2) = 0, so the correlation dated Friday day 11 is exactly 0.
# FRED publishes DTWEXBGS weekly (H.10, Monday afternoon for the week before): week 1 (days 0-4) at
# day 7 21:15 UTC, week 2 (days 7-11) at day 14 21:15 UTC.

PUBLICATION_MARTS = ["marts.etf_flows_daily", "marts.cross_market_correlation", "marts.daily_institutional",
                     *SIGNAL_MARTS]
DXY = {0: 100.0, 1: 101.0, 2: 100.0, 3: 101.0, 4: 100.0, 7: 101.0, 8: 100.0, 9: 101.0, 10: 100.0, 11: 100.0}
BTC = {1: 102.01, 3: 102.01, 7: 100 / 1.0201, 9: 100 / 1.0201}   # every other day 100


def _publication_fixture(con, dxy_published: str) -> None:
    add_closes(con, "BTC", [BTC.get(i, 100.0) for i in range(19)])
    for i, close in DXY.items():
        released = {"weekly": at(7 if i < 7 else 14, 21).replace(minute=15), "null": None}[dxy_published]
        con.execute("INSERT INTO staging.macro_closes (date, series, close, source, available_at)"
                    " VALUES (?, 'DXY', ?, 'fred', ?)", [day(i), close, released])
    # US spot ETF flows on weekdays: day i's net flow is (i + 1) million. No available_at (Farside, next
    # US morning: date + 38 h) except Wednesday day 9's, corrected and published late on day 11 15:00.
    for i in (0, 1, 2, 3, 4, 7, 8, 9, 10, 11):
        con.execute("INSERT INTO staging.etf_flows (date, ticker, issuer, flow_usd, source, available_at)"
                    " VALUES (?, 'IBIT', 'BlackRock', ?, 'farside', ?)",
                    [day(i), (i + 1) * 1e6, at(11, 15) if i == 9 else None])


def _institutional(con) -> dict:
    rows = con.sql("SELECT * FROM marts.daily_institutional WHERE asset = 'BTC' ORDER BY date").pl()
    return {(d - day(0)).days: r for d, r in zip(rows["date"], rows.iter_rows(named=True), strict=True)}


def test_a_dollar_index_published_a_week_late_is_not_in_day_d_row(con, pin):
    pin({"cross_market": {"min_coverage": 0.1}})       # 30-row window: 3 returns suffice, 90-row: 9
    _publication_fixture(con, "weekly")
    build_all(con, only=PUBLICATION_MARTS)
    corr = con.execute("SELECT date, correlation, available_at FROM marts.cross_market_correlation WHERE asset = 'BTC'"
                       " AND benchmark = 'DXY' AND window_days = 30 AND date IN (?, ?) ORDER BY date",
                       [day(4), day(11)]).fetchall()
    assert corr[0][0] == day(4) and corr[0][1] == pytest.approx(1.0, abs=1e-9)
    assert corr[1][0] == day(11) and corr[1][1] == pytest.approx(0.0, abs=1e-9)
    assert [c[2] for c in corr] == [at(7, 21).replace(minute=15), at(14, 21).replace(minute=15)]
    inst = _institutional(con)
    # nothing of week 1 is known before Monday day 7 21:15; from then its Friday (not its Monday:
    # five rows share one publication time) until week 2 is released on day 14
    assert [inst[i]["corr_dxy_30d"] for i in range(7)] == [None] * 7
    for i in range(7, 14):
        assert inst[i]["corr_dxy_30d"] == pytest.approx(1.0, abs=1e-9), i
    assert inst[14]["corr_dxy_30d"] == pytest.approx(0.0, abs=1e-9)
    assert inst[14]["corr_dxy_90d"] == pytest.approx(0.0, abs=1e-9)      # 9 returns by day 11
    assert inst[13]["corr_dxy_90d"] is None                              # 4 returns by day 4 < 9
    sig = con.sql("SELECT * FROM marts.daily_signals ORDER BY date").pl()
    # day 11's row: the correlation dated day 11 is 0, but it is published on day 14
    assert row(sig, "BTC", 11)["corr_dxy_30d"] == pytest.approx(1.0, abs=1e-9)
    assert row(sig, "BTC", 14)["corr_dxy_30d"] == pytest.approx(0.0, abs=1e-9)


def test_a_dollar_index_without_available_at_waits_the_default_lag(con, pin):
    """NULL available_at: date + [availability] dxy_lag_hours (192 h = 8 days): row D sees DXY dates
    <= D - 7. Day 11 -> day 4 (correlation 1); day 17 -> days 1-4 and 7-10: sum(xy) = 0 -> 0."""
    pin({"cross_market": {"min_coverage": 0.1}})
    _publication_fixture(con, "null")
    build_all(con, only=PUBLICATION_MARTS)
    inst = _institutional(con)
    assert [inst[i]["corr_dxy_30d"] for i in range(10)] == [None] * 10     # 3rd return (day 3) known at day 11 00:00
    assert inst[10]["corr_dxy_30d"] == pytest.approx(1.0, abs=1e-9)       # dates <= 3: returns +a, -a, +a
    assert inst[11]["corr_dxy_30d"] == pytest.approx(1.0, abs=1e-9)
    assert inst[17]["corr_dxy_30d"] == pytest.approx(0.0, abs=1e-9)
    assert inst[18]["corr_dxy_30d"] == pytest.approx(0.0, abs=1e-9)


def test_day_d_etf_flow_appears_only_from_the_next_day_row(con, pin):
    pin({"cross_market": {"min_coverage": 0.1}})
    _publication_fixture(con, "weekly")
    build_all(con, only=PUBLICATION_MARTS)
    inst = _institutional(con)
    # (as-of day, flow in millions) per row 0..14, written out from "known by D + 1 00:00":
    # D's flow at D + 38 h, so row D shows the last ETF day <= D - 1; the weekend and Monday show Friday;
    # Wednesday day 9, published on day 11 15:00, is missing from row 10 (row 10 shows Tuesday day 8)
    # and holds back Thursday day 10 (its 5-day average reads day 9) until then: row 11 shows day 10.
    expected = [None, 0, 1, 2, 3, 4, 4, 4, 7, 8, 8, 10, 11, 11, 11]
    got = [None if inst[i]["etf_flows_as_of"] is None else (inst[i]["etf_flows_as_of"] - day(0)).days
           for i in range(15)]
    assert got == expected
    assert [inst[i]["etf_flow_usd"] for i in range(15)] == [None if e is None else (e + 1) * 1e6 for e in expected]
    assert inst[5]["etf_flow_5d_avg_usd"] == 3e6                                # days 0-4: (1+2+3+4+5)/5
    sig = con.sql("SELECT * FROM marts.daily_signals ORDER BY date").pl()
    assert row(sig, "BTC", 8)["etf_flow_usd"] == 8e6       # day 8's own flow (9 M) is not known yet
    assert row(sig, "BTC", 9)["etf_flow_usd"] == 9e6

