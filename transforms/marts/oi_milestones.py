"""marts.oi_milestones [date, asset, milestone_usd]: days an aggregate OI crosses a milestone from below.

Series: each asset's perpetual open interest summed over instruments (marts.open_interest_by_instrument)
and their sum over every tracked asset, stored with asset = 'ALL' (the seed's "$200 B aggregate").
Like for like: each day's series carries a coverage key (the exact instrument set summed); the
"previous days below" look-back only reads days with the same key, so a day on which an instrument
starts (Binance's 30-day history beginning inside a longer backfill) or drops out never crosses a
milestone: it has no comparable previous day. A crossing needs the same instruments before and after.
Milestones: [milestones] oi_usd in perpwatch/core/signals.toml. A milestone m is crossed on day D
when oi_usd(D) >= m and every observed day in the [milestones] rearm_days before D was below
m (prev_max_oi_usd < m): no crossing on a series' first day, and an aggregate hovering around
a level does not cross it again until it has stayed below for rearm_days (rearm_days = 1 is
the plain "previous day below" rule). Causal: day D uses days <= D only.
A Python mart only because the milestone list is a list, which SQL settings cannot carry.
"""

from __future__ import annotations

import duckdb
import polars as pl

from perpwatch.core.settings import signal_settings

TABLE = "marts.oi_milestones"
INPUTS = ["marts.open_interest_by_instrument"]
MARKET = "ALL"

SQL = f"""
WITH inst AS (
    SELECT date, asset, venue || ':' || instrument AS inst, oi_usd
    FROM marts.open_interest_by_instrument WHERE oi_usd IS NOT NULL
),
series AS (
    SELECT date, asset, sum(oi_usd) AS oi_usd, md5(string_agg(inst, ',' ORDER BY inst)) AS coverage_key
    FROM inst GROUP BY date, asset
    UNION ALL
    SELECT date, '{MARKET}', sum(oi_usd), md5(string_agg(asset || '/' || inst, ',' ORDER BY asset, inst))
    FROM inst GROUP BY date
),
lagged AS (
    SELECT date, asset, oi_usd,
           lag(oi_usd) OVER w AS prev_oi_usd, lag(date) OVER w AS prev_date,
           max(oi_usd) OVER (PARTITION BY asset, coverage_key ORDER BY date
                             RANGE BETWEEN INTERVAL (?) DAY PRECEDING AND INTERVAL 1 DAY PRECEDING) AS prev_max_oi_usd
    FROM series
    WINDOW w AS (PARTITION BY asset ORDER BY date)
)
SELECT l.date, l.asset, m.milestone_usd, l.oi_usd, l.prev_oi_usd, l.prev_date, l.prev_max_oi_usd
FROM lagged l
JOIN __milestones m ON l.prev_max_oi_usd < m.milestone_usd AND l.oi_usd >= m.milestone_usd
ORDER BY l.date, l.asset, m.milestone_usd
"""


def milestones() -> list[float]:
    levels = signal_settings()["milestones"]["oi_usd"]
    if not isinstance(levels, list) or not all(isinstance(x, int | float) and x > 0 for x in levels):
        raise ValueError(f"[milestones] oi_usd must be a list of positive numbers, got {levels!r}")
    return sorted({float(x) for x in levels})


def rearm_days() -> int:
    days = signal_settings()["milestones"]["rearm_days"]
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise ValueError(f"[milestones] rearm_days must be an integer >= 1, got {days!r}")
    return days


def build(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    frame = pl.DataFrame({"milestone_usd": milestones()}, schema={"milestone_usd": pl.Float64})
    con.register("__milestones", frame.to_arrow())
    try:
        return con.execute(SQL, [rearm_days()]).pl()
    finally:
        con.unregister("__milestones")
