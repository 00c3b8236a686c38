"""marts.cross_market_correlation [date, asset, benchmark, window_days]: rolling Pearson correlation
of daily log returns of each crypto asset against traditional benchmarks (SPX, NDX, GOLD, DXY).

Alignment (a 24/7 market against exchange calendars):
- the benchmark's trading days are the dates it has a close in staging.macro_closes (holidays and
  weekends have none); one row per benchmark trading day;
- the crypto price of a trading day D is its reference close (marts.reference_close: the close of the
  UTC day D, i.e. 00:00 UTC of D+1 — after the US close at 20:00/21:00 UTC of D);
- both returns run between consecutive benchmark trading days: r = ln(P_D / P_prev). Weekend and
  holiday crypto moves therefore fold into the next trading day's return (Friday -> Monday);
- a benchmark return is NULL when the previous trading day is more than `max_gap_days` calendar days
  back (a hole in the data, not a weekend) or came from a different `source` (two underlying series,
  e.g. Stooq spot gold and the PAXG token, never make one return); a crypto return is NULL when
  either close is missing.
Publication time: each row's available_at is when its inputs were known: the latest of the benchmark
closes' staging.macro_closes.available_at (else date + the series' [availability] lag in signals.toml:
the dollar index about a week) up to and including D, and the crypto close (end of day D). A running
maximum, so it never decreases with date: a close published late delays every later row whose window
could read it. marts.daily_institutional joins on it.
Window: the last `window_days` benchmark trading days up to and including D (rows, not calendar days),
so a row uses nothing after D. `n_obs` = days in the window with both returns; `correlation` is NULL
when n_obs < ceil(min_coverage x window_days) (default 80 %) or a series is flat.
Settings: the [cross_market] section of perpwatch/core/signals.toml (windows, coverage, gap, benchmarks,
regime thresholds; each with where its value comes from).
"""

from __future__ import annotations

import math

import polars as pl

from perpwatch.core.settings import default_signal_settings, signal_settings

TABLE = "marts.cross_market_correlation"
INPUTS = ["marts.reference_close", "staging.macro_closes"]
# The project defaults ([cross_market] of perpwatch/core/signals.toml): windows, min_coverage,
# max_gap_days, benchmarks; coupled (correlation above: coupled, "risk-on coupled" for equity
# benchmarks), decoupled (|correlation| below), inverse (correlation below).
DEFAULTS = dict(default_signal_settings()["cross_market"])
EQUITY = ("SPX", "NDX")
SCHEMA = {"date": pl.Date, "asset": pl.Utf8, "benchmark": pl.Utf8, "window_days": pl.Int32,
          "correlation": pl.Float64, "n_obs": pl.Int64, "min_obs": pl.Int64, "regime": pl.Utf8,
          "available_at": pl.Datetime("us", "UTC")}
# [availability] key of each series' publication lag (hours after the date's 00:00 UTC)
LAG_KEYS = {"SPX": "equity_lag_hours", "NDX": "equity_lag_hours", "NASDAQCOM": "equity_lag_hours",
            "GOLD": "gold_lag_hours", "DXY": "dxy_lag_hours"}


def macro_available_sql(avail: dict, alias: str = "m") -> str:
    """SQL for when a staging.macro_closes row became known (its available_at, else date + lag)."""
    default = float(avail.get("macro_default_lag_hours", 37))
    cases = " ".join(f"WHEN '{s}' THEN {float(avail.get(k, default))!r}" for s, k in LAG_KEYS.items())
    return (f"coalesce({alias}.available_at, to_timestamp(({alias}.date - DATE '1970-01-01') * 86400 "
            f"+ 3600 * CASE {alias}.series {cases} ELSE {default!r} END))")


def settings() -> dict:
    """The [cross_market] signal settings in force (PERPWATCH_SIGNALS overlays the defaults), with the
    [availability] publication lags the marts join on."""
    return {**signal_settings()["cross_market"], "availability": signal_settings().get("availability", {})}


def regime_sql(cfg: dict, col: str = "correlation") -> str:
    c, d, i = float(cfg["coupled"]), float(cfg["decoupled"]), float(cfg["inverse"])
    equity = ", ".join(f"'{b}'" for b in EQUITY)
    return f"""CASE WHEN {col} IS NULL THEN 'insufficient data'
                    WHEN {col} > {c!r} THEN CASE WHEN benchmark IN ({equity}) THEN 'risk-on coupled' ELSE 'coupled' END
                    WHEN {col} < {i!r} THEN 'inverse'
                    WHEN abs({col}) < {d!r} THEN 'decoupled'
                    WHEN {col} > 0 THEN 'loosely coupled'
                    ELSE 'loosely inverse' END"""


def aligned_returns_sql(cfg: dict) -> str:
    """Per (benchmark trading day, asset): the benchmark's and the asset's log return since the
    previous benchmark trading day."""
    bench = ", ".join("'" + str(b).replace("'", "") + "'" for b in cfg["benchmarks"])
    gap = int(cfg["max_gap_days"])
    avail = cfg.get("availability", {})
    return f"""
    WITH b AS (
        SELECT date, series AS benchmark, close, source,
               max(greatest({macro_available_sql(avail)}, to_timestamp((date - DATE '1970-01-01' + 1) * 86400)))
                   OVER (w ROWS UNBOUNDED PRECEDING) AS available_at,
               lag(date) OVER w AS prev_date, lag(close) OVER w AS prev_close, lag(source) OVER w AS prev_source
        FROM staging.macro_closes m
        WHERE series IN ({bench}) AND close > 0
        WINDOW w AS (PARTITION BY series ORDER BY date)
    ),
    assets AS (
        SELECT asset, min(date) AS first_date, max(date) AS last_date FROM marts.reference_close GROUP BY asset
    )
    SELECT b.date, a.asset, b.benchmark, b.available_at,
           CASE WHEN b.prev_source IS NOT DISTINCT FROM b.source AND b.date - b.prev_date <= {gap}
                THEN ln(b.close / b.prev_close) END AS r_bench,
           ln(c1.close_usd / c0.close_usd) AS r_asset
    FROM b
    JOIN assets a ON b.date BETWEEN a.first_date AND a.last_date
    LEFT JOIN marts.reference_close c1 ON c1.asset = a.asset AND c1.date = b.date
    LEFT JOIN marts.reference_close c0 ON c0.asset = a.asset AND c0.date = b.prev_date AND c0.close_usd > 0
    """


def build_sql(cfg: dict) -> str:
    parts = []
    for w in cfg["windows"]:
        w = int(w)
        need = math.ceil(float(cfg["min_coverage"]) * w - 1e-9)
        frame = f"(PARTITION BY asset, benchmark ORDER BY date ROWS BETWEEN {w - 1} PRECEDING AND CURRENT ROW)"
        parts.append(f"""
        SELECT date, asset, benchmark, available_at, CAST({w} AS INTEGER) AS window_days,
               corr(r_asset, r_bench) OVER {frame} AS c,
               count(r_asset * r_bench) OVER {frame} AS n_obs,
               CAST({need} AS BIGINT) AS min_obs
        FROM aligned""")
    return f"""
    WITH aligned AS ({aligned_returns_sql(cfg)}),
    rolled AS ({" UNION ALL ".join(parts)}),
    masked AS (
        SELECT date, asset, benchmark, window_days, available_at,
               CASE WHEN n_obs >= min_obs AND isfinite(c) THEN c END AS correlation, n_obs, min_obs
        FROM rolled
    )
    SELECT *, {regime_sql(cfg)} AS regime FROM masked
    ORDER BY asset, benchmark, window_days, date"""


def build(con) -> pl.DataFrame:
    cfg = settings()
    df = con.sql(build_sql(cfg)).pl()
    if df.height == 0:
        return pl.DataFrame(schema=SCHEMA)
    return df.select([pl.col(c).cast(t) for c, t in SCHEMA.items()])
