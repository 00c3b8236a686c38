"""marts.daily_heatmap_clusters [date, asset]: nearest large liquidation clusters around the close.

At each UTC day's last heatmap hour (marts.liquidation_heatmap, model in docs/heatmap.md) the
nearest "large" price bin above and below that hour's close: a bin whose long + short
estimated liquidation USD is at or above the [heatmap] cluster_percentile of that hour's
stored bins (the mart keeps the top_bins largest per side). Columns cluster_{above,below}_{price,usd,distance}:
the bin's mid price, its USD and its distance as a positive fraction of the close; NULL when no large bin on
that side. Causal: the row for day D uses heatmap hours of D only, which use bars up to that hour.

Incremental (INCREMENTAL = "resume"): build_since recomputes the days the heatmap's last build rewrote
(meta.heatmap_progress.rebuilt_from) and every day from `since` on.
"""

from __future__ import annotations

from datetime import date

import duckdb
import polars as pl

from perpwatch.transforms.heatmap import (
    PROGRESS_TABLE,
    clusters_of_bins,
    daily_clusters,
    heatmap_settings,
    last_hour_bins,
)

TABLE = "marts.daily_heatmap_clusters"
INPUTS = ["marts.liquidation_heatmap"]
INCREMENTAL = "resume"


def build(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """One row per (date, asset) with heatmap rows; see perpwatch.transforms.heatmap.daily_clusters."""
    return daily_clusters(con)


def build_since(con: duckdb.DuckDBPyConnection, since: date) -> date | None:
    """Replace the rows from min(since, the heatmap's rebuilt_from) on (all rows after a full heatmap build).
    Returns the first day rewritten (None: the whole table)."""
    got = con.execute(f"SELECT min(rebuilt_from), count(*), count(rebuilt_from) FROM {PROGRESS_TABLE}").fetchone()
    if got[1] == 0 or got[2] < got[1]:       # the heatmap was rebuilt in full: so is this
        con.register("__hc", build(con).to_arrow())
        con.execute(f"CREATE OR REPLACE TABLE {TABLE} AS SELECT * FROM __hc")
        con.unregister("__hc")
        return None
    start = min(since, got[0])
    rows = clusters_of_bins(last_hour_bins(con, start), float(heatmap_settings()["cluster_percentile"])).filter(pl.col("date") >= start)
    con.execute(f"DELETE FROM {TABLE} WHERE date >= DATE '{start.isoformat()}'")
    con.register("__hc", rows.to_arrow())
    con.execute(f"INSERT INTO {TABLE} SELECT * FROM __hc")
    con.unregister("__hc")
    return start
