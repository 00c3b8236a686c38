"""marts.daily_heatmap_clusters [date, asset]: nearest large liquidation clusters around the close.

At each UTC day's last heatmap hour (marts.liquidation_heatmap, model in docs/heatmap.md) the
nearest "large" price bin above and below that hour's close: a bin whose long + short
estimated liquidation USD is at or above the [heatmap] cluster_percentile of that hour's
bins. Columns cluster_{above,below}_{price,usd,distance}: the bin's mid price, its USD and
its distance as a positive fraction of the close; NULL when no large bin on that side.
Causal: the row for day D uses heatmap hours of D only, which use bars up to that hour.
"""

from __future__ import annotations

import duckdb
import polars as pl

from perpwatch.transforms.heatmap import daily_clusters

TABLE = "marts.daily_heatmap_clusters"
INPUTS = ["marts.liquidation_heatmap"]


def build(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """One row per (date, asset) with heatmap rows; see perpwatch.transforms.heatmap.daily_clusters."""
    return daily_clusters(con)
