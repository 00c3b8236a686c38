"""marts.liquidation_heatmap [asset, ts, side, price_low]: estimated liquidation USD per price bin.

Columns: price_high, est_liquidation_usd, plus price_mid, price_bin (bin index k: the bin
covers [(1+bin_pct)^k, (1+bin_pct)^(k+1))) and close (the hour's perp close used by the
model). Time column ts: the hourly bar's open time (UTC); a row at ts uses bars <= ts only.
Stored hours: every hour of the newest [heatmap] hourly_days days, the last usable hour of each
day before; per hour and side the top_bins largest bins. Model and settings: docs/heatmap.md;
code: transforms/heatmap.py (mart), transforms/heatmap_core.py (vectorised fold).

Incremental (INCREMENTAL = "resume"): build_since folds only the days after the state stored by the
last build (meta.heatmap_levels); transforms.build_incremental calls it.
"""

from __future__ import annotations

from datetime import date

import duckdb
import polars as pl

from perpwatch.transforms.heatmap import build_heatmap, update_heatmap

TABLE = "marts.liquidation_heatmap"
INPUTS = ["staging.prices", "staging.open_interest"]
INCREMENTAL = "resume"


def build(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The whole table, rebuilt from staging with the [heatmap] signal settings (stores the fold's state).
    asset and side come as pl.Enum; the build stores them as VARCHAR (warehouse.select_stored)."""
    return build_heatmap(con, save=True, dictionary=True)


def build_since(con: duckdb.DuckDBPyConnection, since: date) -> date | None:
    """Update the table in place from the stored state (a full rebuild when staging changed before it).
    Returns the first day rewritten (None: the whole table)."""
    return update_heatmap(con, since)[0]
