"""Point-in-time proof: a day's signals and alerts never change when later data is removed.

One warehouse is backfilled from the in-process simulator (Binance, 30 days to the fixed
now 2026-11-20), plus synthetic liquidations (with surges) and market caps so that every
rolling window of marts.daily_signals is exercised; the windows are pinned short so the
percentile, z-score and oi/mcap rules fire inside 30 days. For several days D, staging is
copied with every row after the end of D deleted (ts / funding_time >= D + 1 00:00 UTC,
date > D), the signal marts are rebuilt on the copy, and D's rows of marts.daily_signals and
marts.alerts must equal those of the full build. Floats are compared to 1e-9 relative: the
same inputs in a shorter window partition may be summed in another order by DuckDB.
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
from perpwatch.core.settings import SIGNALS_FILE
from perpwatch.transforms import build_all

NOW = datetime(2026, 11, 20, tzinfo=UTC)
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
DAYS = [date(2026, 10, 28), date(2026, 11, 4), date(2026, 11, 12), date(2026, 11, 19)]
PINNED = {  # short windows so every rule has history inside the 30 simulated days
    "funding": {"percentile_window_days": 10, "percentile_min_days": 5},
    "liquidations": {"zscore_window_days": 10, "zscore_min_days": 3},
    "leverage": {"oi_to_mcap_window_days": 10, "oi_to_mcap_min_days": 5},
    "milestones": {"oi_usd": [5_000_000_000, 10_000_000_000, 20_000_000_000]},
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
    "staging.etf_flows": "date",
    "staging.macro_closes": "date",
    "staging.treasury_holdings": "as_of",
}


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
        build_all(con, only=MARTS)
        signals = con.sql("SELECT * FROM marts.daily_signals").pl()
        alerts = con.sql("SELECT * FROM marts.alerts").pl()
        con.close()
        yield {"db": db, "signals": signals, "alerts": alerts, "settings": settings_file}


def truncated_build(full_db, d: date, mp) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Staging of full_db cut at the end of day d, rebuilt: (daily_signals, alerts, max times)."""
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
            else:  # instruments: metadata, no time axis
                where, arg = "TRUE", []
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM src.{name} WHERE {where}", arg)
            if name in TS_COLUMN:
                latest[name] = con.execute(f"SELECT max({TS_COLUMN[name]}) FROM {name}").fetchone()[0]
        con.execute("DETACH src")
        build_all(con, only=MARTS)
        return (
            con.sql("SELECT * FROM marts.daily_signals").pl(),
            con.sql("SELECT * FROM marts.alerts").pl(),
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
    cut_signals, cut_alerts, latest = truncated_build(full["db"], d, monkeypatch)
    end = datetime.combine(d + timedelta(days=1), time(0), UTC)
    assert all(v is None or v < end for v in latest.values()), latest  # truncation really happened
    assert cut_signals["date"].max() == d
    assert full["signals"].filter(pl.col("date") > d).height > 0 or d == DAYS[-1]

    full_d = full["signals"].filter(pl.col("date") == d)
    assert full_d.height == 3  # BTC, ETH, SOL
    assert_rows_equal(full_d, cut_signals.filter(pl.col("date") == d), ["asset"], f"daily_signals {d}")
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
    assert full["signals"]["liquidation_surge"].any()
    assert full["alerts"].filter(pl.col("date").is_in(DAYS)).height > 0
