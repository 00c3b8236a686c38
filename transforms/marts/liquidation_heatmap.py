"""marts.liquidation_heatmap [asset, ts, side, price_low]: estimated liquidation USD per price bin.

Columns: price_high, est_liquidation_usd, plus price_mid, price_bin (bin index k: the bin
covers [(1+bin_pct)^k, (1+bin_pct)^(k+1))) and close (the hour's perp close used by the
model). Time column ts: the hourly bar's open time (UTC); a row at ts uses bars <= ts only.
Model and settings: docs/heatmap.md; code: transforms/heatmap.py.
"""

from __future__ import annotations

import duckdb
import polars as pl

from perpwatch.transforms.heatmap import build_heatmap

TABLE = "marts.liquidation_heatmap"
INPUTS = ["staging.prices", "staging.open_interest"]


def build(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The whole table, rebuilt from staging with the [heatmap] signal settings."""
    return build_heatmap(con)
