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
Incremental (INCREMENTAL = "resume"): build_since(con, since) replaces the rows from `since` on,
reading marts.open_interest_by_instrument from since - rearm_days only. That is exact: a crossing on
day D needs an observed day with the same coverage key inside [D - rearm_days, D - 1], so D's
previous observed day (prev_date, prev_oi_usd, whatever its key) is inside the cut too; a day
without one crosses nothing whatever lies before the cut.
"""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import polars as pl

from perpwatch import warehouse
from perpwatch.core.settings import signal_settings

TABLE = "marts.oi_milestones"
INPUTS = ["marts.open_interest_by_instrument"]
MARKET = "ALL"
INCREMENTAL = "resume"

SQL = """
WITH inst AS (
    SELECT date, asset, venue || ':' || instrument AS inst, oi_usd
    FROM marts.open_interest_by_instrument WHERE oi_usd IS NOT NULL{cut}
),
series AS (
    SELECT date, asset, sum(oi_usd) AS oi_usd, md5(array_to_string(list_sort(list(inst)), ',')) AS coverage_key
    FROM inst GROUP BY date, asset
    UNION ALL
    SELECT date, '{market}', sum(oi_usd), md5(string_agg(asset || '/' || inst, ',' ORDER BY asset, inst))
    FROM inst GROUP BY date
),
lagged AS (
    SELECT date, asset, oi_usd,
           lag(oi_usd) OVER w AS prev_oi_usd, lag(date) OVER w AS prev_date,
           max(oi_usd) OVER (PARTITION BY asset, coverage_key ORDER BY date
                             RANGE BETWEEN INTERVAL ({rearm}) DAY PRECEDING AND INTERVAL 1 DAY PRECEDING) AS prev_max_oi_usd
    FROM series
    WINDOW w AS (PARTITION BY asset ORDER BY date)
)
SELECT l.date, l.asset, m.milestone_usd, l.oi_usd, l.prev_oi_usd, l.prev_date, l.prev_max_oi_usd
FROM lagged l
JOIN (VALUES {levels}) m(milestone_usd) ON l.prev_max_oi_usd < m.milestone_usd AND l.oi_usd >= m.milestone_usd
{keep}ORDER BY l.date, l.asset, m.milestone_usd
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


def sql(since: date | None = None) -> str:
    """The mart's rows (from `since` on, reading inputs from since - rearm_days; None: all of them).
    Settings are inlined as literals: no parameters (a first parameterised query imports pandas)."""
    rearm = rearm_days()
    levels = ", ".join(f"({x!r}::DOUBLE)" for x in milestones())
    if since is None:
        return SQL.format(cut="", market=MARKET, rearm=rearm, levels=levels, keep="")
    cut = since - timedelta(days=rearm)
    return SQL.format(cut=f" AND date >= DATE '{cut:%Y-%m-%d}'", market=MARKET, rearm=rearm, levels=levels,
                      keep=f"WHERE l.date >= DATE '{since:%Y-%m-%d}'\n")


def build(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return con.execute(sql()).pl()


def build_since(con: duckdb.DuckDBPyConnection, since: date) -> date | None:
    """Replace the rows from `since` on (see the module doc). Returns since (None: rebuilt whole,
    when the stored table's columns are not the mart's)."""
    q = sql(since)
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM ({q}) LIMIT 0").fetchall()]
    if cols != warehouse.table_columns(con, TABLE):
        con.execute(f"CREATE OR REPLACE TABLE {TABLE} AS {sql()}")
        return None
    con.execute(f"DELETE FROM {TABLE} WHERE date >= DATE '{since:%Y-%m-%d}'")
    con.execute(f"INSERT INTO {TABLE} {q}")
    return since
