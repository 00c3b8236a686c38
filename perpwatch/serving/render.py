"""The liquidation heatmap as a picture: `perpwatch heatmap ASSET -o FILE.png`, the report and the
Prefect build artifacts draw marts.liquidation_heatmap here (the model is transforms/heatmap.py)."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from perpwatch.transforms.heatmap import TABLE, read_heatmap

COLORMAP = "plasma"  # purple (low) -> yellow (high)


def _usd(value: float, _pos=None) -> str:
    if abs(value) >= 1000:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:,.4f}"


def _usd_compact(value: float, _pos=None) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= div:
            return f"${value / div:,.1f}{suffix}"
    return f"${value:,.0f}"


def render(con: duckdb.DuckDBPyConnection, asset: str, days: int, out: Path) -> Path:
    """Draw the last `days` days of an asset's heatmap as a 1200x600 PNG at `out`.

    Time on x, price on y (bins within ±12 % of the window's close range), long + short
    USD per bin in the plasma colormap (purple = none, yellow = the window's 99th
    percentile and above), the hourly close as a white line. Raises ValueError when the
    asset has no heatmap rows.
    """
    import matplotlib
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    if days < 1:
        raise ValueError("days must be >= 1")
    asset = asset.upper()
    hm = read_heatmap(con, asset)
    if hm.height == 0:
        raise ValueError(f"no heatmap rows for asset {asset!r} in {TABLE}")
    end = hm["ts"].max()
    start = end - timedelta(hours=24 * days - 1)
    hm = hm.filter(pl.col("ts") >= start)

    log_step = float(np.median(np.log(hm["price_high"].to_numpy() / hm["price_low"].to_numpy())))
    hm = hm.with_columns(
        (pl.col("price_low").log() / log_step).round().cast(pl.Int64).alias("k"),
        ((pl.col("ts") - start).dt.total_hours()).cast(pl.Int64).alias("h"),
    )
    n_hours = 24 * days
    price = hm.group_by("h").agg(pl.col("close").first()).sort("h")
    pad = 0.12
    y_lo, y_hi = price["close"].min() * (1 - pad), price["close"].max() * (1 + pad)
    k_lo, k_hi = math.floor(math.log(y_lo) / log_step), math.ceil(math.log(y_hi) / log_step)
    cells = (
        hm.filter(pl.col("k").is_between(k_lo, k_hi - 1))
        .group_by("h", "k")
        .agg(pl.col("est_liquidation_usd").sum())
    )
    grid = np.zeros((k_hi - k_lo, n_hours))
    grid[cells["k"].to_numpy() - k_lo, cells["h"].to_numpy()] = cells["est_liquidation_usd"].to_numpy()
    nonzero = grid[grid > 0]
    vmax = float(np.quantile(nonzero, 0.99)) if nonzero.size else 1.0

    t0 = mdates.date2num(start)
    x_edges = t0 + np.arange(n_hours + 1) / 24.0
    y_edges = np.exp(np.arange(k_lo, k_hi + 1) * log_step)

    fig = Figure(figsize=(12, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(x_edges, y_edges, grid, cmap=COLORMAP, norm=Normalize(0, vmax), shading="flat")
    ax.set_facecolor(matplotlib.colormaps[COLORMAP](0.0))
    ax.plot(
        t0 + (price["h"].to_numpy() + 1) / 24.0,
        price["close"].to_numpy(),
        color="white",
        lw=1.2,
        label="close",
    )
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_ylim(y_lo, y_hi)
    ax.yaxis.set_major_formatter(FuncFormatter(_usd))
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel("price")
    ax.set_title(f"Estimated liquidation levels — {asset}, last {days} day{'s' if days != 1 else ''}")
    cbar = fig.colorbar(mesh, ax=ax, extend="max", format=FuncFormatter(_usd_compact))
    cbar.set_label("estimated liquidations per bin (USD)")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, format="png")
    return out
