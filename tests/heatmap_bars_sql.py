"""The test oracle for `perpwatch.transforms.heatmap.load_bars`: the same bars as one DuckDB query.

This was the production query until the hour x series grids replaced it (its grouping, window and
join plan grows faster than the rows at 200 assets x 5 years); tests/test_heatmap.py checks that
both give the same bars on staging built to exercise every rule of the definition.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

from perpwatch.transforms.heatmap import _HOUR_US, BAR_COLUMNS, heatmap_settings, str_literal, ts_literal


def load_bars_sql(con: duckdb.DuckDBPyConnection, assets: list[str] | None = None,
                  oi_max_gap_hours: int | None = None, start: datetime | None = None) -> pl.DataFrame:
    """load_bars' definition (see its docstring) as one SQL query, with the same arguments."""
    gap = heatmap_settings()["oi_max_gap_hours"] if oi_max_gap_hours is None else oi_max_gap_hours
    where = ("" if assets is None else f"AND asset IN ({', '.join(str_literal(x.upper()) for x in assets) or 'NULL'})") \
        + ("" if start is None else f" AND ts >= {ts_literal(start)}")
    # Hours as integers (epoch_us // 1 h) all the way: no ICU time-zone arithmetic, cheap keys.
    sql = f"""
    WITH oi_rows AS (   -- last snapshot per instrument-hour
        SELECT venue, instrument, epoch_us(ts) // {_HOUR_US} AS h,
               arg_max(asset, ts) AS asset, arg_max(oi_usd::DOUBLE, ts) AS oi_usd
        FROM staging.open_interest
        WHERE oi_usd IS NOT NULL AND asset IS NOT NULL {where}
        GROUP BY venue, instrument, h
    ), oi_lag AS (
        SELECT *, lag(oi_usd) OVER w AS prev_oi, lag(h) OVER w AS prev_h
        FROM oi_rows WINDOW w AS (PARTITION BY venue, instrument ORDER BY h)
    ), oi_hour AS (
        SELECT asset, h, sum(oi_usd) AS oi_usd,
               sum(CASE WHEN prev_h >= h - {int(gap)} THEN prev_oi ELSE oi_usd END) AS oi_prev_usd
        FROM oi_lag GROUP BY asset, h
    ), venue_oi AS (
        SELECT venue, asset, h, sum(oi_usd) AS oi FROM oi_rows GROUP BY venue, asset, h
    ), perp AS (
        SELECT venue, asset, epoch_us(ts) // {_HOUR_US} AS h, avg(open)::DOUBLE AS open, avg(high)::DOUBLE AS high,
               avg(low)::DOUBLE AS low, avg(close)::DOUBLE AS close
        FROM staging.prices
        WHERE kind = 'perp' AND "interval" = '1h' AND asset IS NOT NULL
          AND open > 0 AND high > 0 AND low > 0 AND close > 0 {where}
        GROUP BY venue, asset, h
    ), price AS (   -- the largest-OI venue's bar; ties and hours without OI: the first venue by name
        SELECT p.asset, p.h, arg_max({{'o': p.open, 'hi': p.high, 'lo': p.low, 'c': p.close}},
                                     (coalesce(v.oi, 0), -r.venue_rank)) AS b
        FROM perp p
        JOIN (SELECT venue, row_number() OVER (ORDER BY venue) AS venue_rank FROM (SELECT DISTINCT venue FROM perp)) r
          USING (venue)
        LEFT JOIN venue_oi v USING (venue, asset, h)
        GROUP BY p.asset, p.h
    )
    SELECT price.asset, price.h * {_HOUR_US} AS ts_us, b.o AS open, b.hi AS high, b.lo AS low, b.c AS close,
           oi_hour.oi_usd, oi_hour.oi_prev_usd
    FROM price LEFT JOIN oi_hour USING (asset, h)
    ORDER BY price.asset, price.h
    """
    df = con.execute(sql).pl()
    return df.select(
        "asset",
        pl.col("ts_us").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("ts"),
        *BAR_COLUMNS[2:6], "oi_usd", "oi_prev_usd",
    )
