"""Estimated liquidation heatmap: the level model, the daily clusters and the PNG.

Model (docs/heatmap.md has the full write-up): each hour an open-interest increase is
taken as new positions opened at the bar's typical price (H+L+C)/3, split long/short by
the bar's direction and spread over leverage tiers; each tier's liquidation price becomes
a *level*. A long level dies when a later bar's low trades through it (a short level when a
later high does), and every surviving level shrinks pro rata when OI falls. Each hour the
surviving USD is summed into fixed log-spaced price bins.

Everything here is causal: the output at hour t depends only on bars with ts <= t, and the
whole history is a fold of `step` over the hours, so it can also run one hour at a time.

    state = new_state(settings)
    state, rows = step(state, bars)        # bars: asset, ts, open, high, low, close, oi_usd
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import duckdb
import numpy as np
import polars as pl

from perpwatch import warehouse
from perpwatch.core.settings import default_signal_settings, signal_settings
from perpwatch.transforms import heatmap_core as core

TABLE = "marts.liquidation_heatmap"

SIDES = ("long", "short")
_SIDE_ENUM = pl.Series(SIDES, dtype=pl.Enum(SIDES))  # side by index (fold_rows(dictionary=True))
BAR_COLUMNS = ("asset", "ts", "open", "high", "low", "close", "oi_usd")
OUTPUT_SCHEMA = {
    "asset": pl.String,
    "ts": pl.Datetime("us", "UTC"),
    "side": pl.String,
    "price_low": pl.Float64,
    "price_high": pl.Float64,
    "price_mid": pl.Float64,
    "price_bin": pl.Int64,
    "est_liquidation_usd": pl.Float64,
    "close": pl.Float64,
}
CLUSTER_SCHEMA = {
    "date": pl.Date,
    "asset": pl.String,
    "cluster_above_price": pl.Float64,
    "cluster_above_usd": pl.Float64,
    "cluster_above_distance": pl.Float64,
    "cluster_below_price": pl.Float64,
    "cluster_below_usd": pl.Float64,
    "cluster_below_distance": pl.Float64,
}

# Keys a settings mapping may leave out (new_state({...}) in tests, notebooks): they take the
# project's values from [heatmap] in perpwatch/core/signals.toml. The tier keys are required.
OPTIONAL = ("long_share_up", "max_distance_pct", "cluster_percentile", "oi_max_gap_hours", "hourly_days", "top_bins")

_HOUR_US = 3_600_000_000
_BATCH = 1 << 20  # rows per Arrow batch when load_bars streams staging

# Seconds per stage of the last build_heatmap in this process (bars, fold, snapshots, rows, state): what the
# benchmark reports as where the heatmap's time goes (bench/marts_child.py).
STAGES: dict[str, float] = {}


@contextmanager
def _stage(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        STAGES[name] = STAGES.get(name, 0.0) + time.perf_counter() - t0


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Params:
    """The [heatmap] settings, validated, with the per-tier multipliers precomputed."""

    leverage: tuple[float, ...]
    weights: tuple[float, ...]  # normalised to sum to 1
    maintenance_margin: float
    bin_pct: float
    long_share_up: float
    max_distance_pct: float
    cluster_percentile: float
    oi_max_gap_hours: int
    hourly_days: int  # the mart keeps every hour of the newest `hourly_days` days, one snapshot per day before
    top_bins: int  # the mart keeps the `top_bins` largest bins per (asset, hour, side); 0 = every bin
    # liquidation price / entry for each tier, sorted ascending, with the matching weights
    long_mult: np.ndarray = field(repr=False, compare=False)
    long_w: np.ndarray = field(repr=False, compare=False)
    short_mult: np.ndarray = field(repr=False, compare=False)
    short_w: np.ndarray = field(repr=False, compare=False)

    @property
    def log_step(self) -> float:
        """Width of one price bin in log space: bin k covers [(1+b)^k, (1+b)^(k+1))."""
        return math.log1p(self.bin_pct)

    @classmethod
    def from_settings(cls, settings: Mapping) -> Params:
        project = default_signal_settings()["heatmap"]
        s = {**{k: project[k] for k in OPTIONAL}, **settings}
        missing = [k for k in ("leverage", "weights", "maintenance_margin", "bin_pct") if k not in s]
        if missing:
            raise ValueError(f"[heatmap] settings miss {missing}")
        lev = np.asarray(s["leverage"], dtype=float)
        w = np.asarray(s["weights"], dtype=float)
        mmr = float(s["maintenance_margin"])
        if lev.ndim != 1 or lev.size == 0 or lev.shape != w.shape:
            raise ValueError("[heatmap] leverage and weights must be non-empty lists of equal length")
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("[heatmap] weights must be >= 0 with a positive sum")
        if not 0 <= mmr or (1.0 / lev <= mmr).any():
            raise ValueError("[heatmap] every leverage tier needs 1/leverage > maintenance_margin >= 0")
        if not 0 < float(s["bin_pct"]) < 1:
            raise ValueError("[heatmap] bin_pct must be in (0, 1)")
        if not 0 <= float(s["long_share_up"]) <= 1:
            raise ValueError("[heatmap] long_share_up must be in [0, 1]")
        if not 0 < float(s["max_distance_pct"]) < 1:
            raise ValueError("[heatmap] max_distance_pct must be in (0, 1)")
        if not 0 <= float(s["cluster_percentile"]) <= 1:
            raise ValueError("[heatmap] cluster_percentile must be in [0, 1]")
        if int(s["hourly_days"]) < 0 or int(s["top_bins"]) < 0:
            raise ValueError("[heatmap] hourly_days and top_bins must be >= 0")
        w = w / w.sum()
        keep = w > 0
        lev_k, w_k = lev[keep], w[keep]
        long_mult = 1.0 - 1.0 / lev_k + mmr
        short_mult = 1.0 + 1.0 / lev_k - mmr
        lo, so = np.argsort(long_mult, kind="stable"), np.argsort(short_mult, kind="stable")
        return cls(
            leverage=tuple(lev.tolist()),
            weights=tuple(w.tolist()),
            maintenance_margin=mmr,
            bin_pct=float(s["bin_pct"]),
            long_share_up=float(s["long_share_up"]),
            max_distance_pct=float(s["max_distance_pct"]),
            cluster_percentile=float(s["cluster_percentile"]),
            oi_max_gap_hours=int(s["oi_max_gap_hours"]),
            hourly_days=int(s["hourly_days"]),
            top_bins=int(s["top_bins"]),
            long_mult=long_mult[lo],
            long_w=w_k[lo],
            short_mult=short_mult[so],
            short_w=w_k[so],
        )


def heatmap_settings() -> dict:
    """The [heatmap] section of perpwatch/core/signals.toml (PERPWATCH_SIGNALS overlays it)."""
    return dict(signal_settings()["heatmap"])


# --------------------------------------------------------------------------- state


_EMPTY = np.empty(0, dtype=float)
_EMPTY.setflags(write=False)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = a.view()
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class AssetLevels:
    """Surviving levels of one asset (read-only arrays). Prices sorted ascending; usd matches."""

    long_price: np.ndarray = field(default_factory=lambda: _EMPTY)
    long_usd: np.ndarray = field(default_factory=lambda: _EMPTY)
    short_price: np.ndarray = field(default_factory=lambda: _EMPTY)
    short_usd: np.ndarray = field(default_factory=lambda: _EMPTY)
    last_ts_us: int | None = None  # last hour folded in (µs since epoch, UTC)
    last_oi_usd: float | None = None  # OI at that hour (used when bars carry no oi_prev_usd)


@dataclass(frozen=True)
class HeatmapState:
    """Immutable model state: the parameters and, per asset, the surviving levels."""

    params: Params
    assets: Mapping[str, AssetLevels] = field(default_factory=dict)

    def levels(self) -> pl.DataFrame:
        """Every surviving level, exact price (not binned): asset, side, price, usd."""
        parts = []
        for asset, lv in sorted(self.assets.items()):
            for side, p, u in (("long", lv.long_price, lv.long_usd), ("short", lv.short_price, lv.short_usd)):
                if p.size:
                    parts.append(pl.DataFrame({"asset": asset, "side": side, "price": p, "usd": u}))
        if not parts:
            return pl.DataFrame(
                schema={"asset": pl.String, "side": pl.String, "price": pl.Float64, "usd": pl.Float64}
            )
        return pl.concat(parts)


def new_state(settings: Mapping) -> HeatmapState:
    """An empty state bound to the [heatmap] settings (validated here)."""
    return HeatmapState(Params.from_settings(settings))


# --------------------------------------------------------------------------- the fold


def _bars_numpy(bars: pl.DataFrame) -> tuple[pl.DataFrame, bool]:
    missing = [c for c in BAR_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars miss columns {missing}")
    has_prev = "oi_prev_usd" in bars.columns
    ts = pl.col("ts")
    dtype = bars.schema["ts"]
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        ts = ts.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    elif not isinstance(dtype, pl.Datetime):
        raise ValueError(f"bars.ts must be a datetime column, got {dtype}")
    cols = ["open", "high", "low", "close", "oi_usd"] + (["oi_prev_usd"] if has_prev else [])
    out = bars.select(
        pl.col("asset").cast(pl.String),
        ts.dt.cast_time_unit("us").cast(pl.Int64).alias("ts_us"),
        *[pl.col(c).cast(pl.Float64).fill_null(float("nan")) for c in cols],
    )
    same, prev_a, prev_t = pl.col("asset") == pl.col("asset").shift(1), pl.col("asset").shift(1), pl.col("ts_us").shift(1)
    if out.select(((pl.col("asset") < prev_a) | (same & (pl.col("ts_us") < prev_t))).any()).item():
        out = out.sort("asset", "ts_us")  # load_bars' rows come sorted: no sort of 10^7 rows then
    if out.select((same & (pl.col("ts_us") == prev_t)).any()).item():  # sorted: a repeat is next to its twin
        raise ValueError("bars have more than one row per (asset, ts)")
    return out, has_prev


def step(state: HeatmapState, bars: pl.DataFrame) -> tuple[HeatmapState, pl.DataFrame]:
    """Fold hourly bars into the state; return the new state and the heatmap rows of those hours.

    bars: one row per (asset, ts) with open, high, low, close, oi_usd (USD, summed over
    venues) and optionally oi_prev_usd: the previous-hour OI of the same instruments that
    make up this hour's oi_usd (lets a venue that starts reporting late count as no change).
    Without it the change is oi_usd minus the previous folded hour's oi_usd. Rows at or
    before the state's last hour for that asset are already folded in and are skipped.
    The input state is not modified. Rows: see OUTPUT_SCHEMA; only bins with USD > 0.
    """
    prm = state.params
    frame, has_prev = _bars_numpy(bars)
    assets = dict(state.assets)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("asset", "ts", "side", "bin", "usd", "close")}
    names: list[str] = []
    inv_step = 1.0 / prm.log_step
    win_lo, win_hi = 1.0 - prm.max_distance_pct, 1.0 + prm.max_distance_pct
    up, down = prm.long_share_up, 1.0 - prm.long_share_up
    pad_lo, pad_hi = 1.0 / (1.0 + 2 * prm.bin_pct), 1.0 + 2 * prm.bin_pct  # a slice wider than the edge bins

    for (asset,), g in frame.group_by("asset", maintain_order=True):
        lv = assets.get(asset, AssetLevels())
        if lv.last_ts_us is not None:
            g = g.filter(pl.col("ts_us") > lv.last_ts_us)
        if g.height == 0:
            continue
        ts_a = g["ts_us"].to_numpy()
        o_a, h_a, l_a, c_a = (g[c].to_numpy() for c in ("open", "high", "low", "close"))
        oi_a = g["oi_usd"].to_numpy()
        prev_a = g["oi_prev_usd"].to_numpy() if has_prev else None
        lp, lu, sp, su = lv.long_price, lv.long_usd, lv.short_price, lv.short_usd
        last_oi = lv.last_oi_usd
        hours, counts, bins, usds = [], [], [], []

        for i in range(ts_a.size):
            o, h, lo, c, oi = o_a[i], h_a[i], l_a[i], c_a[i], oi_a[i]
            if not (c > 0 and h >= lo > 0 and o > 0):  # no usable price this hour (NaN or bad)
                continue
            # 1. price trades through levels opened in earlier hours
            lp_keep = np.searchsorted(lp, lo, "left")  # long dies when low <= level
            sp_drop = np.searchsorted(sp, h, "right")  # short dies when high >= level
            removed = float(lu[lp_keep:].sum() + su[:sp_drop].sum())  # USD liquidated by the move
            lp, lu = lp[:lp_keep], lu[:lp_keep]
            sp, su = sp[sp_drop:], su[sp_drop:]
            # 2. open-interest change
            if oi == oi:  # not NaN
                prev = prev_a[i] if prev_a is not None and prev_a[i] == prev_a[i] else last_oi
                if prev is not None and prev > 0:
                    d = oi - prev
                    if d < 0:
                        # the traded-through levels above already account for `removed` of the drop:
                        # survivors stand for prev - removed of OI and are scaled to what is left
                        # (never up), so a liquidated level is not removed AND scaled off again
                        rest = prev - removed
                        ratio = min(max(oi, 0.0) / rest, 1.0) if rest > 0 else 0.0
                        if ratio > 0:
                            lu, su = lu * ratio, su * ratio
                        else:
                            lp, lu, sp, su = _EMPTY, _EMPTY, _EMPTY, _EMPTY
                    elif d > 0:
                        entry = (h + lo + c) / 3.0
                        share = up if c > o else down if c < o else 0.5
                        if share > 0:
                            lp, lu = _insert(lp, lu, entry * prm.long_mult, d * share * prm.long_w)
                        if share < 1:
                            sp, su = _insert(sp, su, entry * prm.short_mult, d * (1 - share) * prm.short_w)
                last_oi = oi
            # 3. snapshot: the bins from the one holding close * (1 - max_distance_pct) to the one holding
            #    close * (1 + max_distance_pct), edge bins whole (bins, not prices, decide: same as heatmap_core)
            hours.append(i)
            k_lo = math.floor(math.log(c * win_lo) * inv_step)
            k_hi = math.floor(math.log(c * win_hi) * inv_step)
            for p, u in ((lp, lu), (sp, su)):
                a, b = np.searchsorted(p, c * win_lo * pad_lo, "left"), np.searchsorted(p, c * win_hi * pad_hi, "right")
                k = np.floor(np.log(p[a:b]) * inv_step).astype(np.int64)
                a, b = a + int(np.searchsorted(k, k_lo, "left")), a + int(np.searchsorted(k, k_hi, "right"))
                k = np.floor(np.log(p[a:b]) * inv_step).astype(np.int64)
                if a == b:
                    counts.append(0)
                    continue
                change = np.ones(k.size, dtype=bool)
                np.not_equal(k[1:], k[:-1], out=change[1:])
                starts = np.flatnonzero(change)
                bins.append(k[starts])
                usds.append(np.add.reduceat(u[a:b], starts))
                counts.append(starts.size)

        assets[asset] = AssetLevels(*map(_frozen, (lp, lu, sp, su)), int(ts_a[-1]), last_oi)
        if hours:
            idx = np.asarray(hours)
            n = np.asarray(counts).reshape(-1, 2)
            out["ts"].append(np.repeat(ts_a[idx], n.sum(axis=1)))
            out["close"].append(np.repeat(c_a[idx], n.sum(axis=1)))
            out["side"].append(np.repeat(np.tile([0, 1], idx.size), n.ravel()))
            out["bin"].extend(bins)
            out["usd"].extend(usds)
            out["asset"].append(np.full(int(n.sum()), len(names)))
            names.append(asset)

    return HeatmapState(prm, assets), _rows_frame(out, names, prm)


def _insert(p: np.ndarray, u: np.ndarray, new_p: np.ndarray, new_u: np.ndarray):
    pos = np.searchsorted(p, new_p)  # new_p is sorted ascending
    return np.insert(p, pos, new_p), np.insert(u, pos, new_u)


def _rows_frame(out: dict[str, list[np.ndarray]], names: list[str], prm: Params) -> pl.DataFrame:
    if not names:
        return pl.DataFrame(schema=OUTPUT_SCHEMA)
    cat = {k: np.concatenate(v) if v else np.empty(0) for k, v in out.items()}
    frame = pl.DataFrame(
        {
            "asset": pl.Series(names, dtype=pl.String).gather(cat["asset"].astype(np.int64)),
            "ts": pl.Series(cat["ts"].astype(np.int64)).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            "side": pl.Series(cat["side"].astype(np.int8)),
            "price_bin": pl.Series(cat["bin"].astype(np.int64)),
            "est_liquidation_usd": pl.Series(cat["usd"].astype(float)),
            "close": pl.Series(cat["close"].astype(float)),
        }
    )
    return _finish_rows(frame, prm).sort("asset", "ts", "side", "price_low")


def estimate_levels(bars: pl.DataFrame, settings: Mapping) -> pl.DataFrame:
    """The whole heatmap for `bars` from an empty state (a fold of `step` over every hour)."""
    return step(new_state(settings), bars)[1]


# --------------------------------------------------------------------------- warehouse


def load_bars(
    con: duckdb.DuckDBPyConnection, assets: list[str] | None = None, oi_max_gap_hours: int | None = None,
    start: datetime | None = None, *, dense: bool = False,
) -> pl.DataFrame:
    """Hourly bars per asset from staging: perp OHLC and OI summed over venues.

    Price: the 1h perp bar of the venue with the largest OI that hour (mean over that
    venue's perp instruments; ties and hours without OI fall back to the first venue by
    name). oi_usd: OI summed over every instrument reporting that hour (OI rows are
    floored to the hour, last snapshot wins). oi_prev_usd: the same instruments' previous
    snapshot if it is at most `oi_max_gap_hours` old, else their current value, so an
    instrument whose history starts later (or resumes after a long gap) adds no fake flow.
    An instrument counts for the asset of its newest OI row. Only hours with a perp bar are returned.
    Default oi_max_gap_hours: [heatmap] oi_max_gap_hours of the signal settings. start: only bars from
    then on; oi_prev_usd of the first hours is right when start is oi_max_gap_hours + 1 hours earlier than
    the first hour the caller keeps (the incremental build does that). dense: the same bars as
    `heatmap_core.Dense` (asset x hour grids, what `fold_rows` folds), without the row frame in between.

    DuckDB streams the rows (integer series ids, integer hours: no strings cross into Python, no
    time-zone arithmetic); numpy does the rest on dense hour x series grids. The same definition as one
    SQL query is the test oracle (tests/heatmap_bars_sql.py); docs/heatmap.md "Inputs" says why it left.
    """
    if oi_max_gap_hours is None:
        oi_max_gap_hours = heatmap_settings()["oi_max_gap_hours"]
    # literals, not parameters: a process's first parameterised DuckDB query imports pandas (~0.2 s).
    # Every query reads its staging table as `t`.
    where = "" if assets is None else f"AND t.asset IN ({', '.join(str_literal(a.upper()) for a in assets) or 'NULL'})"
    if start is not None:
        where += f" AND t.ts >= {ts_literal(start)}"
    oi_where = f"t.oi_usd IS NOT NULL AND t.asset IS NOT NULL {where}"
    series_where = f"t.kind = 'perp' AND t.\"interval\" = '1h' AND t.asset IS NOT NULL {where}"
    px_where = f"{series_where} AND t.open > 0 AND t.high > 0 AND t.low > 0 AND t.close > 0"
    # series: OI per (venue, instrument) sorted by (asset, venue), so every asset and venue is a column range;
    # perp bars per (asset, venue). With each series' first and last hour.
    # (epoch_us of min(ts), not min of epoch_us(ts): one conversion per series, not per row.) The perp series
    # are every (asset, venue) with a 1h perp bar; the bar filter (positive prices) is applied where the bars
    # are read, so a series whose bars all fail it only adds an empty column, and it costs the scan 4 columns.
    oi_series = con.execute(f"""SELECT arg_max(asset, ts), venue, instrument, epoch_us(min(ts)) // {_HOUR_US},
        epoch_us(max(ts)) // {_HOUR_US} FROM staging.open_interest t WHERE {oi_where}
        GROUP BY venue, instrument ORDER BY 1, 2, 3""").fetchall()
    px_series = con.execute(f"""SELECT asset, venue, epoch_us(min(ts)) // {_HOUR_US}, epoch_us(max(ts)) // {_HOUR_US}
        FROM staging.prices t WHERE {series_where} GROUP BY asset, venue ORDER BY 1, 2""").fetchall()
    if not px_series:
        if dense:
            return _no_dense_bars()
        return pl.DataFrame(schema={"asset": pl.String, "ts": pl.Datetime("us", "UTC"), **dict.fromkeys(
            ("open", "high", "low", "close", "oi_usd", "oi_prev_usd"), pl.Float64)})
    spans = [s[-2:] for s in oi_series + px_series]
    h0 = min(s[0] for s in spans)
    nh = max(s[1] for s in spans) - h0 + 1
    names = sorted({s[0] for s in oi_series} | {s[0] for s in px_series})
    a_of = {a: i for i, a in enumerate(names)}

    def batches(table: str, series: list[tuple], keys: dict[str, int], cols: dict[str, str], cond: str):
        """Rows of `table` in Arrow batches: cell (flat index into an hour x series grid: hour * len(series)
        + series) and `cols`. Streamed, so the result is never materialised whole. keys: the join columns and
        their positions in a series tuple."""
        ids = ", ".join(f"({', '.join(str_literal(s[k]) for k in keys.values())}, {i})" for i, s in enumerate(series))
        on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
        reader = con.execute(f"""SELECT ((epoch_us(t.ts) // {_HOUR_US} - {h0}) * {len(series)} + s.sid)::INTEGER AS cell,
            {', '.join(f'{v} AS {k}' for k, v in cols.items())}
            FROM {table} t JOIN (VALUES {ids}) s({', '.join(keys)}, sid) ON {on} WHERE {cond}""").to_arrow_reader(_BATCH)
        yield from _ahead((_numpy(batch.column(0)), {k: _numpy(batch.column(k)) for k in cols}) for batch in reader)

    # ---- perp bars: mean over each (asset, venue)'s instruments per hour
    npx = len(px_series)
    px_cols = {"o": "t.open::DOUBLE", "hi": "t.high::DOUBLE", "lo": "t.low::DOUBLE", "c": "t.close::DOUBLE"}
    # only the close needs a NaN fill (it marks the cells with a bar); open/high/low are read only where it has one
    ohlc = {k: np.full(nh * npx, np.nan) if k == "c" else np.empty(nh * npx) for k in px_cols}
    n_rows = 0
    for cell, got in batches("staging.prices", px_series, {"asset": 0, "venue": 1}, px_cols, px_where):
        n_rows += cell.size
        for k, v in got.items():
            ohlc[k][cell] = v
    if np.count_nonzero(~np.isnan(ohlc["c"])) != n_rows:  # several instruments in a cell: their mean
        cnt = np.zeros(nh * npx, dtype=np.int64)
        ohlc = {k: np.zeros(nh * npx) for k in px_cols}
        for cell, got in batches("staging.prices", px_series, {"asset": 0, "venue": 1}, px_cols, px_where):
            np.add.at(cnt, cell, 1)
            for k, v in got.items():
                np.add.at(ohlc[k], cell, v)
        with np.errstate(invalid="ignore", divide="ignore"):
            ohlc = {k: v / cnt for k, v in ohlc.items()}
    ohlc = {k: v.reshape(nh, npx) for k, v in ohlc.items()}
    has_px = ~np.isnan(ohlc["c"])

    # ---- OI: last snapshot per instrument-hour, the previous one if within the gap, sums per asset and venue
    n_a = len(names)
    oi_asset, prev_asset = np.zeros((nh, n_a)), np.zeros((nh, n_a))
    has_oi = np.zeros((nh, n_a), dtype=bool)
    key = None  # per perp (asset, venue) column: the OI of that venue's instruments (then -inf where no bar)
    if oi_series:
        ns = len(oi_series)
        keys = {"venue": 1, "instrument": 2}
        grid = np.full(nh * ns, np.nan)
        n_rows = 0
        for cell, got in batches("staging.open_interest", oi_series, keys, {"oi": "t.oi_usd::DOUBLE"}, oi_where):
            n_rows += cell.size
            grid[cell] = got["oi"]
        if np.count_nonzero(~np.isnan(grid)) != n_rows:  # several snapshots in an hour: the last one wins
            cols = {"us": f"epoch_us(t.ts) % {_HOUR_US}", "oi": "t.oi_usd::DOUBLE"}
            newest = np.full(nh * ns, -1, dtype=np.int64)
            for cell, got in batches("staging.open_interest", oi_series, keys, cols, oi_where):
                np.maximum.at(newest, cell, got["us"])
            for cell, got in batches("staging.open_interest", oi_series, keys, cols, oi_where):
                last = got["us"] == newest[cell]
                grid[cell[last]] = got["oi"][last]
        grid = grid.reshape(nh, ns)
        valid = ~np.isnan(grid)
        # previous snapshot: the hour before in the common case; where that hour has none, the newest of the
        # oi_max_gap_hours before it, else the current value (no flow from a series that starts or resumes)
        prev = np.empty_like(grid)
        prev[0] = grid[0]
        prev[1:] = grid[:-1] if oi_max_gap_hours >= 1 else grid[1:]
        t, c = np.nonzero(valid[1:] & ~valid[:-1])
        t += 1
        found = np.zeros(t.size, dtype=bool)
        for back in range(2, int(oi_max_gap_hours) + 1):
            at = t - back
            hit = ~found & (at >= 0)
            hit[hit] = valid[at[hit], c[hit]]
            prev[t[hit], c[hit]] = grid[at[hit], c[hit]]
            found |= hit
        prev[t[~found], c[~found]] = grid[t[~found], c[~found]]
        np.copyto(prev, 0.0, where=~valid)
        cur = np.nan_to_num(grid, copy=False, nan=0.0)
        del grid
        asset_col = np.array([a_of[s[0]] for s in oi_series])
        starts = np.flatnonzero(np.r_[True, asset_col[1:] != asset_col[:-1]])
        oi_asset[:, asset_col[starts]] = np.add.reduceat(cur, starts, axis=1)
        prev_asset[:, asset_col[starts]] = np.add.reduceat(prev, starts, axis=1)
        has_oi[:, asset_col[starts]] = np.logical_or.reduceat(valid, starts, axis=1)
        del prev, valid
        av = [s[:2] for s in oi_series]
        vstarts = [i for i in range(ns) if i == 0 or av[i] != av[i - 1]]
        v_sum = np.add.reduceat(cur, vstarts, axis=1)
        del cur
        v_col = {av[i]: k for k, i in enumerate(vstarts)}
        pick = np.array([v_col.get(s[:2], -1) for s in px_series])
        key = v_sum[:, np.maximum(pick, 0)]
        key[:, pick < 0] = 0.0  # a venue without OI series
        del v_sum

    # ---- per asset-hour the bar of the largest-OI venue; ties: the first venue by name (strict > keeps it)
    p_asset = np.array([a_of[s[0]] for s in px_series])
    p_starts = np.flatnonzero(np.r_[True, p_asset[1:] != p_asset[:-1]])
    p_ends = np.r_[p_starts[1:], npx]
    if key is None:
        key = np.zeros((nh, npx))
    np.copyto(key, -np.inf, where=~has_px)
    best_key = key[:, p_starts].copy()
    best = np.broadcast_to(p_starts, (nh, p_starts.size)).copy()
    for k in range(1, int((p_ends - p_starts).max())):
        inside = p_starts + k < p_ends
        cols = np.where(inside, p_starts + k, p_starts)
        better = inside & (key[:, cols] > best_key)
        best = np.where(better, cols, best)
        best_key = np.where(better, key[:, cols], best_key)
    del key
    ai, ti = np.nonzero(np.isfinite(best_key).T)  # asset-major: rows sorted by asset, then hour
    ga = p_asset[p_starts][ai]
    # the bars' cells as flat indices, computed once: np.take on a flat index is ~2x a 2-D fancy index per gather
    at_px = ti * npx + best[ti, ai]
    at_a = ti * n_a + ga
    px = {k: ohlc[k].ravel().take(at_px) for k in ("o", "hi", "lo", "c")}
    del ohlc, at_px
    ok = has_oi.ravel().take(at_a)
    oi = np.where(ok, oi_asset.ravel().take(at_a), np.nan)
    oi_prev = np.where(ok, prev_asset.ravel().take(at_a), np.nan)
    if dense:
        return _dense_bars(names, h0, ai, ti, ga, px, oi, oi_prev)
    return pl.DataFrame({
        "asset": pl.Series(names, dtype=pl.String).gather(ga),
        "ts": pl.Series((h0 + ti.astype(np.int64)) * _HOUR_US).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        **{name: px[k] for name, k in (("open", "o"), ("high", "hi"), ("low", "lo"), ("close", "c"))},
        "oi_usd": pl.Series(oi, nan_to_null=True),
        "oi_prev_usd": pl.Series(oi_prev, nan_to_null=True),
    })


_NUMPY_OF_ARROW = {"int32": np.int32, "int64": np.int64, "uint8": np.uint8, "uint32": np.uint32, "uint64": np.uint64,
                   "double": np.float64}


def _numpy(col) -> np.ndarray:
    """A fixed-width Arrow array without nulls as numpy, zero-copy over its buffer. Not pyarrow's to_numpy: its
    first call in a process imports pandas (0.17-0.23 s measured), which a daily build pays for nothing else."""
    dtype = _NUMPY_OF_ARROW.get(str(col.type))
    if dtype is None or col.null_count:
        return col.to_numpy(zero_copy_only=False)
    return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col), offset=col.offset * np.dtype(dtype).itemsize)


def _no_dense_bars():
    return core.on_grids([], 0, np.empty(0, np.int64), np.empty(0, np.int64), {})


def _dense_bars(names: list[str], h0: int, ai: np.ndarray, ti: np.ndarray, ga: np.ndarray, px: dict[str, np.ndarray],
                oi: np.ndarray, oi_prev: np.ndarray):
    """load_bars' rows (asset-major: ai/ga ascending, then hour ti) on `heatmap_core.Dense` grids, as
    `heatmap_core.dense` puts the row frame: the assets that have a bar, hours from the first bar to the last."""
    if ti.size == 0:
        return _no_dense_bars()
    # ai ascends (asset-major): its runs are the groups, no sort (np.unique sorts: 0.8 s on 8.8 M bars where
    # numpy has no SIMD sort)
    starts = np.flatnonzero(np.r_[True, ai[1:] != ai[:-1]])
    row = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, ai.size]))
    first = int(ti.min())
    gi = ga[starts]  # each group's asset index into names
    return core.on_grids([names[i] for i in gi.tolist()], (h0 + first) * _HOUR_US, row, ti - first,
                         {"open": px["o"], "high": px["hi"], "low": px["lo"], "close": px["c"], "oi": oi,
                          "oi_prev": oi_prev})


def _ahead(items: Iterator, depth: int = 2) -> Iterator:
    """`items` produced on a worker thread, up to `depth` ahead of the consumer: DuckDB fills the next Arrow
    batch (it releases the GIL) while numpy places the current one on the grids."""
    q: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the consumer)
            q.put(exc)

    worker = threading.Thread(target=produce, name="heatmap-bars", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():      # unblock a producer waiting on a full queue, then let it finish
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.05)


# --------------------------------------------------------------------------- the mart at scale
#
# The mart does not run `step` hour by hour: heatmap_core computes the same model vectorised over
# assets x hours and evaluates it only at the hours the mart stores (Params.hourly_days, top_bins).
# The state at the end of the newest complete day goes to meta.heatmap_levels / meta.heatmap_progress,
# so the daily build resumes from it and folds only the days after it (update_heatmap).

_DAY_US = 86_400_000_000
LEVELS_TABLE, PROGRESS_TABLE = "meta.heatmap_levels", "meta.heatmap_progress"


def str_literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def ts_literal(ts: datetime) -> str:
    """A TIMESTAMPTZ literal (UTC): keeps a `ts >=` filter a plain range the zone maps can prune."""
    return f"TIMESTAMPTZ '{ts.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"


def _epoch_day(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def _day(epoch_day: int) -> date:
    return date(1970, 1, 1) + timedelta(days=int(epoch_day))


def fold_rows(
    bars: pl.DataFrame | core.Dense, prm: Params, *, init: Mapping[str, AssetLevels] | None = None,
    hourly_from: int | None = None, through: int | None = None, top_bins: int | None = None,
    changes: dict | None = None, dictionary: bool = False,
) -> tuple[pl.DataFrame, dict[str, AssetLevels]]:
    """Heatmap rows of `bars` (all hours after `init`'s) at the snapshot hours, and the state after day `through`.
    bars: a frame as load_bars returns it, or load_bars(dense=True)'s grids (no `init` then).

    Snapshot hours per asset: every usable hour of epoch days >= hourly_from (None: every hour), and the
    last usable hour of each earlier day. top_bins: keep that many largest bins per (asset, hour, side)
    (None or 0: all). through: an epoch day; the returned state is the levels alive at its end (assets
    without bars keep their `init` state). Rows equal `step`'s at those hours (to rounding: ~1e-12).
    changes: a dict to fill with what the fold did to the levels up to the end of `through`, per asset
    folded that far (what save_changes stores): {"scale": {asset: S}} (every survivor's USD multiplied by
    S), {"cleared": {asset}} (OI fell to zero: every level died), "died" (asset, side, price of `init`
    levels that died) and "born" (asset, side, price, usd_over_scale: levels born and alive at the end,
    USD / S).
    dictionary: asset and side as pl.Enum (categories: the assets folded; long, short) instead of pl.String, gathered
    by index with no string per row (a rebuild's ~10^7 rows: cheaper to build and to write); the same values.
    """
    init = dict(init or {})
    if changes is not None:
        changes.update(scale={}, cleared=set(), died=pl.DataFrame(schema=_DIED), born=pl.DataFrame(schema=_BORN))
    if isinstance(bars, core.Dense):  # load_bars(dense=True): a rebuild's bars, already on grids
        if init:
            raise ValueError("fold_rows: bars on grids (heatmap_core.Dense) fold from an empty state only")
        d = bars
    else:
        frame, has_prev = _bars_numpy(bars)
        if init:  # hours already folded into the state are skipped, as in `step`
            last = pl.DataFrame({"asset": list(init), "__last": [lv.last_ts_us for lv in init.values()]},
                                schema={"asset": pl.String, "__last": pl.Int64})
            frame = frame.join(last, on="asset", how="left").filter(
                pl.col("__last").is_null() | (pl.col("ts_us") > pl.col("__last"))).drop("__last")
        d = core.dense(frame, has_prev)
    idx = {a: i for i, a in enumerate(d.assets)}
    init_i = {idx[a]: (lv.long_price, lv.long_usd, lv.short_price, lv.short_usd, lv.last_oi_usd)
              for a, lv in init.items() if a in idx}
    state = dict(init)
    if not d.assets:
        return pl.DataFrame(schema=OUTPUT_SCHEMA), state
    with _stage("fold"):
        lv, S, a, _ = core.fold(d, prm, init_i)
    hours = np.arange(d.hours)
    day_of = (d.t0_us + hours * _HOUR_US) // _DAY_US
    snap = []
    for i in range(len(d.assets)):
        u = hours[d.usable[i]]
        if hourly_from is not None:
            du = day_of[u]
            last_of_day = np.r_[du[1:] != du[:-1], True] if u.size else np.zeros(0, bool)
            u = u[(du >= hourly_from) | last_of_day]
        snap.append(u)
    with _stage("snapshots"):
        got = core.snapshots(d, prm, lv, S, a, snap, top_bins or None)
    names = pl.Series(d.assets, dtype=pl.Enum(d.assets) if dictionary else pl.String)
    # copy=False: snapshots() returns these dtypes already (an empty result: float zeros), so no 10^7-row copies
    ai, hi = got["asset"].astype(np.int64, copy=False), got["hour"].astype(np.int64, copy=False)
    raw = pl.DataFrame({
        "asset": names.gather(ai),
        "ts": pl.Series(d.t0_us + hi * _HOUR_US).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "side": (_SIDE_ENUM.gather(got["side"].astype(np.int64, copy=False)) if dictionary
                 else pl.Series(got["side"].astype(np.int8, copy=False))),
        "price_bin": pl.Series(got["bin"].astype(np.int64, copy=False)),
        "est_liquidation_usd": pl.Series(got["usd"].astype(float, copy=False)),
        "close": pl.Series(d.close[ai, hi] if ai.size else np.empty(0)),
    })
    rows = _finish_rows(raw, prm)
    if through is not None:
        end = ((through + 1) * _DAY_US - d.t0_us) // _HOUR_US - 1  # last hour index of day `through`
        if end >= 0:
            end = min(end, d.hours - 1)
            alive = core.end_levels(lv, S, a, end)
            for asset, i in idx.items():
                usable_to = np.flatnonzero(d.usable[i, : end + 1])
                if usable_to.size == 0:
                    continue  # nothing folded for this asset up to `through`: its init state stands
                lp, lu, sp, su = alive.get(i) or [_EMPTY] * 4
                oi_ok = np.flatnonzero(d.usable[i, : end + 1] & ~np.isnan(d.oi[i, : end + 1]))
                last_oi = float(d.oi[i, oi_ok[-1]]) if oi_ok.size else (init[asset].last_oi_usd if asset in init else None)
                state[asset] = AssetLevels(*map(_frozen, (lp, lu, sp, su)), int(d.t0_us + usable_to[-1] * _HOUR_US),
                                           last_oi)
                if changes is not None:
                    changes["scale"][asset] = float(S[i, end])
            if changes is not None:
                _level_changes(changes, d, lv, a, end)
    return rows, state


_DIED = {"asset": pl.String, "side": pl.String, "price": pl.Float64}
_BORN = {**_DIED, "usd_over_scale": pl.Float64}


def _level_changes(changes: dict, d, lv, a: np.ndarray, end: int) -> None:
    """Fill `changes` (see fold_rows) for the assets in changes["scale"] at hour index `end`."""
    names = np.asarray(d.assets, dtype=object)
    idx = {x: i for i, x in enumerate(d.assets)}
    folded = np.zeros(len(d.assets), dtype=bool)
    folded[[idx[x] for x in changes["scale"]]] = True
    changes["cleared"] = {d.assets[i] for i, t in lv.cleared if t <= end and folded[i]}
    sel = folded[lv.asset]
    died = sel & (lv.birth < 0) & (lv.death <= end)
    born = sel & (lv.birth >= 0) & (lv.birth <= end) & (lv.death > end)
    side = np.asarray(SIDES, dtype=object)
    changes["died"] = pl.DataFrame({"asset": names[lv.asset[died]], "side": side[lv.side[died]],
                                    "price": lv.price[died]}, schema=_DIED)
    changes["born"] = pl.DataFrame({"asset": names[lv.asset[born]], "side": side[lv.side[born]],
                                    "price": lv.price[born], "usd_over_scale": a[born]}, schema=_BORN)


def _finish_rows(frame: pl.DataFrame, prm: Params) -> pl.DataFrame:
    """Rows in OUTPUT_SCHEMA (unsorted: the mart's order does not matter, sorting 10^8 rows does)."""
    step_ = prm.log_step
    side = pl.col("side")
    if frame.schema["side"] != _SIDE_ENUM.dtype:   # 0/1 codes (fold_rows without dictionary)
        side = pl.when(side == 0).then(pl.lit("long")).otherwise(pl.lit("short"))
    return (
        frame.filter(pl.col("est_liquidation_usd") > 0)
        .with_columns(
            side.alias("side"),
            (pl.col("price_bin") * step_).exp().alias("price_low"),
            ((pl.col("price_bin") + 1) * step_).exp().alias("price_high"),
        )
        .with_columns(((pl.col("price_low") + pl.col("price_high")) / 2).alias("price_mid"))
        .select(list(OUTPUT_SCHEMA))
    )


def _settings_key(prm: Params) -> str:
    keys = ("leverage", "weights", "maintenance_margin", "bin_pct", "long_share_up", "max_distance_pct",
            "oi_max_gap_hours", "hourly_days", "top_bins")
    return hashlib.sha256(json.dumps({k: getattr(prm, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def _newest_day(bars: pl.DataFrame | core.Dense) -> int | None:
    if isinstance(bars, core.Dense):
        return None if not bars.assets else (bars.t0_us + (bars.hours - 1) * _HOUR_US) // _DAY_US
    if bars.height == 0:
        return None
    ts = bars["ts"].max()
    return _epoch_day(ts.astimezone(UTC).date())


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    schema, name = table.split(".")
    return {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                      f"{str_literal(schema)} AND table_name = {str_literal(name)}").fetchall()}


def _write_progress(con: duckdb.DuckDBPyConnection, state: Mapping[str, AssetLevels], scale: Mapping[str, float],
                    prm: Params, *, through: int, newest: int, rebuilt_from: int | None) -> None:
    names = sorted(state)
    progress = pl.DataFrame({
        "asset": names,
        "through": [_day(through)] * len(names),
        "newest": [_day(newest)] * len(names),
        "last_ts": [state[a].last_ts_us for a in names],
        "last_oi_usd": [state[a].last_oi_usd for a in names],
        "settings": [_settings_key(prm)] * len(names),
        "rebuilt_from": [None if rebuilt_from is None else _day(rebuilt_from)] * len(names),
        "scale": [float(scale.get(a, 1.0)) for a in names],
    }, schema={"asset": pl.String, "through": pl.Date, "newest": pl.Date, "last_ts": pl.Int64,
               "last_oi_usd": pl.Float64, "settings": pl.String, "rebuilt_from": pl.Date, "scale": pl.Float64})
    progress = progress.with_columns(pl.col("last_ts").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    con.execute(f"DELETE FROM {PROGRESS_TABLE}")
    con.register("__hm_progress", progress.to_arrow())
    con.execute(f"INSERT INTO {PROGRESS_TABLE} BY NAME SELECT * FROM __hm_progress")
    con.unregister("__hm_progress")


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def save_state(con: duckdb.DuckDBPyConnection, state: Mapping[str, AssetLevels], prm: Params, *,
               through: int, newest: int, rebuilt_from: int | None) -> None:
    """Replace meta.heatmap_levels / meta.heatmap_progress with `state` (the levels after day `through`),
    every asset at scale 1 (amount = USD)."""
    # asset and side dictionary-encoded (pl.Enum, gathered by index), stored as VARCHAR (select_stored): millions of
    # strings are not built in polars and parsed again by DuckDB
    names = sorted(state)
    code, side, price, amount = [], [], [], []
    for i, asset in enumerate(names):
        lv = state[asset]
        for sd, p, u in ((0, lv.long_price, lv.long_usd), (1, lv.short_price, lv.short_usd)):
            code.append(np.full(p.size, i, np.int64))
            side.append(np.full(p.size, sd, np.int64))
            price.append(p)
            amount.append(u)
    levels = pl.DataFrame({"asset": pl.Series(names, dtype=pl.Enum(names)).gather(_concat(code, np.int64)),
                           "side": _SIDE_ENUM.gather(_concat(side, np.int64)),
                           "price": _concat(price, float), "amount": _concat(amount, float)})
    con.execute(f"DELETE FROM {LEVELS_TABLE}")
    con.register("__hm_levels", warehouse.arrow(levels))
    con.execute(f"INSERT INTO {LEVELS_TABLE} BY NAME {warehouse.select_stored(levels, '__hm_levels')}")
    con.unregister("__hm_levels")
    _write_progress(con, state, {}, prm, through=through, newest=newest, rebuilt_from=rebuilt_from)


# amount x scale keeps USD; a scale this far from 1 is folded into the amounts (one UPDATE of that asset)
_RESCALE_BELOW, _RESCALE_ABOVE = 1e-100, 1e100


def save_changes(con: duckdb.DuckDBPyConnection, state: Mapping[str, AssetLevels], changes: dict,
                 scale: Mapping[str, float], prm: Params, *, through: int, newest: int, rebuilt_from: int | None
                 ) -> None:
    """Store what one incremental fold changed (fold_rows(changes=...)): delete the levels that died, insert
    the ones born, multiply the folded assets' scales. Rows untouched by the fold are not rewritten, so a
    daily build writes what one day changed, not every surviving level of the history."""
    new_scale = dict(scale)
    for asset, s in changes["scale"].items():
        new_scale[asset] = scale.get(asset, 1.0) * s
    if changes["cleared"]:
        con.execute(f"DELETE FROM {LEVELS_TABLE} WHERE asset IN ({', '.join(map(str_literal, sorted(changes['cleared'])))})")
    if changes["died"].height:
        con.register("__hm_died", changes["died"].to_arrow())
        con.execute(f"DELETE FROM {LEVELS_TABLE} l USING __hm_died d "
                    "WHERE l.asset = d.asset AND l.side = d.side AND l.price = d.price")
        con.unregister("__hm_died")
    born = changes["born"]
    if born.height:
        old = pl.DataFrame({"asset": list(scale), "__s": [float(v) for v in scale.values()]},
                           schema={"asset": pl.String, "__s": pl.Float64})
        born = born.join(old, on="asset", how="left").select(
            "asset", "side", "price", (pl.col("usd_over_scale") / pl.col("__s").fill_null(1.0)).alias("amount"))
        con.register("__hm_born", born.to_arrow())
        con.execute(f"INSERT INTO {LEVELS_TABLE} BY NAME SELECT * FROM __hm_born")
        con.unregister("__hm_born")
    for asset, s in sorted(new_scale.items()):
        if not _RESCALE_BELOW < s < _RESCALE_ABOVE:
            con.execute(f"UPDATE {LEVELS_TABLE} SET amount = amount * {float(s)!r} WHERE asset = {str_literal(asset)}")
            new_scale[asset] = 1.0
    _write_progress(con, state, new_scale, prm, through=through, newest=newest, rebuilt_from=rebuilt_from)


def load_progress(con: duckdb.DuckDBPyConnection, prm: Params) -> dict | None:
    """What the last build stored (meta.heatmap_progress), or None when there is no usable state for these
    settings: {"through", "newest" (epoch days), "assets": {asset: (last_ts_us, last_oi_usd, scale)}}."""
    if "amount" not in _columns(con, LEVELS_TABLE) or "scale" not in _columns(con, PROGRESS_TABLE):
        return None
    prog = con.execute(f"SELECT asset, through, newest, epoch_us(last_ts), last_oi_usd, settings, scale "
                       f"FROM {PROGRESS_TABLE}").fetchall()
    if not prog or any(r[5] != _settings_key(prm) or r[6] is None for r in prog) \
            or len({(r[1], r[2]) for r in prog}) != 1:
        return None
    return {"through": _epoch_day(prog[0][1]), "newest": _epoch_day(prog[0][2]),
            "assets": {r[0]: (None if r[3] is None else int(r[3]), r[4], float(r[6])) for r in prog}}


def load_levels(con: duckdb.DuckDBPyConnection, progress: dict, ranges: pl.DataFrame | None = None
                ) -> dict[str, AssetLevels]:
    """The stored levels as fold state (USD = amount x scale), for every asset of `progress`.
    ranges (asset, lo, hi): only long levels at or above lo and short levels at or below hi (the ones the
    hours being folded can trade through or show in their distance window); assets not in ranges get none."""
    assets = pl.DataFrame({"asset": list(progress["assets"])}, schema={"asset": pl.String}).with_row_index("i")
    where = "TRUE"
    if ranges is not None:
        assets = assets.join(ranges.select("asset", "lo", "hi"), on="asset", how="inner", maintain_order="left")
        where = "(l.side = 'long' AND l.price >= r.lo) OR (l.side = 'short' AND l.price <= r.hi)"
    # numbers only (asset index, side 0 long / 1 short): no string per level crosses into Python. The assets
    # (a few hundred rows) as SQL literals, not a registered Arrow frame: DuckDB's first Arrow scan in a process
    # imports pyarrow.dataset and with it pandas (~0.3 s)
    if assets.height:
        values = ", ".join(f"({str_literal(asset)}, {i}{''.join(', ' + _double_literal(v) for v in rng)})"
                           for i, asset, *rng in assets.iter_rows())
        got = con.execute(f"""SELECT r.i AS a, (l.side = 'short')::UTINYINT AS s, l.price, l.amount
            FROM {LEVELS_TABLE} l JOIN (VALUES {values}) r(asset, i{', lo, hi' if ranges is not None else ''})
            ON l.asset = r.asset WHERE {where} ORDER BY a, s, l.price""").to_arrow_table()
        got = {k: _numpy(got.column(k).combine_chunks()) for k in got.column_names}
    else:
        got = {"a": np.empty(0, np.int64), "s": np.empty(0, np.uint8), "price": _EMPTY, "amount": _EMPTY}
    key = got["a"].astype(np.int64) * 2 + got["s"]
    price, amount = got["price"], got["amount"]
    cut = np.searchsorted(key, np.arange(2 * len(progress["assets"]) + 1))   # key is sorted: one slice per (asset, side)
    state = {}
    for i, (asset, (last_ts, last_oi, scale)) in enumerate(progress["assets"].items()):
        arrs = []
        for k in (2 * i, 2 * i + 1):
            lo, hi = cut[k], cut[k + 1]
            arrs += [_frozen(price[lo:hi].copy()), _frozen(amount[lo:hi] * scale)] if hi > lo else [_EMPTY, _EMPTY]
        state[asset] = AssetLevels(*arrs, last_ts, last_oi)
    return state


def _double_literal(v: float | None) -> str:
    return "NULL" if v is None else f"'{float(v)!r}'::DOUBLE"   # repr round-trips; 'inf' and 'nan' parse too


def load_state(con: duckdb.DuckDBPyConnection, prm: Params) -> tuple[dict[str, AssetLevels], int, int] | None:
    """(every stored level as fold state, through, newest), or None when there is none for these settings."""
    progress = load_progress(con, prm)
    if progress is None:
        return None
    return load_levels(con, progress), progress["through"], progress["newest"]


def build_heatmap(con: duckdb.DuckDBPyConnection, settings: Mapping | None = None, *,
                  save: bool = False, dictionary: bool = False) -> pl.DataFrame:
    """The whole marts.liquidation_heatmap table (stored rows: Params.hourly_days / top_bins) from staging.
    save: also store the state after the newest complete day (the mart's build does; read-only callers don't).
    dictionary: asset and side as pl.Enum (see fold_rows), for a caller that writes the rows straight to the
    table (warehouse.select_stored stores them as VARCHAR)."""
    settings = heatmap_settings() if settings is None else settings
    prm = Params.from_settings(settings)
    STAGES.clear()
    with _stage("bars"):
        bars = load_bars(con, oi_max_gap_hours=prm.oi_max_gap_hours, dense=True)
    newest = _newest_day(bars)
    if newest is None:
        if save:
            save_state(con, {}, prm, through=0, newest=0, rebuilt_from=None)
        return pl.DataFrame(schema=OUTPUT_SCHEMA)
    t0 = time.perf_counter()
    rows, state = fold_rows(bars, prm, hourly_from=newest - prm.hourly_days + 1, through=newest - 1,
                            top_bins=prm.top_bins, dictionary=dictionary)
    STAGES["rows"] = time.perf_counter() - t0 - STAGES.get("fold", 0.0) - STAGES.get("snapshots", 0.0)
    if save:
        with _stage("state"):
            save_state(con, state, prm, through=newest - 1, newest=newest, rebuilt_from=None)
    return rows


def update_heatmap(con: duckdb.DuckDBPyConnection, since: date, settings: Mapping | None = None
                   ) -> tuple[date | None, str]:
    """Bring marts.liquidation_heatmap up to date from the stored state: fold the days after the state's
    day only, replace the rows from that day on, thin the day(s) that left the hourly window. A full
    rebuild instead when there is no usable state (first build, other settings) or staging changed at or
    before the state's day (`since` <= it). Returns (first day rewritten, None after a full rebuild; and
    "resumed from YYYY-MM-DD" or "full: <why>").

    The fold reads only the stored levels the new hours can trade through or show (long levels at or
    above the lowest low or distance-window edge of those hours, short levels at or below the highest):
    every other level survives them untouched but for the asset's OI scale, which meta.heatmap_progress
    carries. It writes only the levels that died or were born (save_changes)."""
    settings = heatmap_settings() if settings is None else settings
    prm = Params.from_settings(settings)
    STAGES.clear()
    progress = load_progress(con, prm) if _table_exists(con, TABLE) else None
    why = None if progress is not None else "no stored state for these settings"
    if progress is not None and since <= _day(progress["through"]):
        why = f"staging changed on {since} <= state day {_day(progress['through'])}"
    if why is not None:
        rows = build_heatmap(con, settings, save=True, dictionary=True)
        con.register("__hm_rows", warehouse.arrow(rows))
        con.execute(f"CREATE OR REPLACE TABLE {TABLE} AS {warehouse.select_stored(rows, '__hm_rows')}")
        con.unregister("__hm_rows")
        return None, f"full: {why}"
    through, old_newest = progress["through"], progress["newest"]
    resume = through + 1
    start = datetime.combine(_day(resume), datetime.min.time(), UTC)
    with _stage("bars"):
        bars = load_bars(con, oi_max_gap_hours=prm.oi_max_gap_hours,
                         start=start - timedelta(hours=prm.oi_max_gap_hours + 1))
        bars = bars.filter(pl.col("ts") >= start)
    newest = _newest_day(bars)
    if newest is None:
        return _day(resume), f"resumed from {_day(resume)}: no new bars"
    with _stage("levels"):
        state = load_levels(con, progress, _reach(bars, progress, prm))
    hourly_from = newest - prm.hourly_days + 1
    changes: dict = {}
    rows, new_state_ = fold_rows(bars, prm, init=state, hourly_from=hourly_from, through=newest - 1,
                                 top_bins=prm.top_bins, changes=changes)
    with _stage("write"):
        con.execute(f"DELETE FROM {TABLE} WHERE ts >= {ts_literal(start)}")
        con.register("__hm_rows", warehouse.arrow(rows))
        con.execute(f"INSERT INTO {TABLE} SELECT * FROM __hm_rows")
        con.unregister("__hm_rows")
    # days before `resume` that left the hourly window keep only their last usable hour
    thin_from, thin_to = old_newest - prm.hourly_days + 1, min(hourly_from, resume)
    changed = _day(resume)
    if thin_to > thin_from:
        with _stage("thin"):
            changed = _day(thin_from)
            lo = datetime.combine(_day(thin_from), datetime.min.time(), UTC)
            hi = datetime.combine(_day(thin_to), datetime.min.time(), UTC)
            old = load_bars(con, oi_max_gap_hours=prm.oi_max_gap_hours, start=lo).filter(pl.col("ts") < hi)
            frame, _ = _bars_numpy(old)
            usable = frame.filter((pl.col("close") > 0) & (pl.col("high") >= pl.col("low")) & (pl.col("low") > 0)
                                  & (pl.col("open") > 0))
            keep = usable.group_by("asset", pl.col("ts_us") // _DAY_US).agg(pl.col("ts_us").max().alias("keep_us"))
            con.register("__hm_keep", keep.select("asset", "keep_us").to_arrow())
            con.execute(f"""DELETE FROM {TABLE} WHERE ts >= {ts_literal(lo)} AND ts < {ts_literal(hi)} AND NOT EXISTS (
                SELECT 1 FROM __hm_keep k WHERE k.asset = {TABLE}.asset AND k.keep_us = epoch_us({TABLE}.ts))""")
            con.unregister("__hm_keep")
    scale = {asset: v[2] for asset, v in progress["assets"].items()}
    with _stage("state"):
        save_changes(con, new_state_, changes, scale, prm, through=newest - 1, newest=newest,
                     rebuilt_from=_epoch_day(changed))
    return changed, f"resumed from {_day(resume)}"


def _reach(bars: pl.DataFrame, progress: dict, prm: Params) -> pl.DataFrame:
    """Per asset, the price range the hours still to fold can act on: lo = the lowest low or lower window
    edge (a long level at or above it can die or be shown), hi = the highest high or upper window edge,
    each one bin and a relative 1e-9 wider (edge bins count whole: the same padding as snapshots use)."""
    frame, _ = _bars_numpy(bars)
    last = pl.DataFrame({"asset": list(progress["assets"]), "__last": [v[0] for v in progress["assets"].values()]},
                        schema={"asset": pl.String, "__last": pl.Int64})
    pad = (1.0 + 2 * prm.bin_pct) * (1.0 + 1e-9)
    return (
        frame.join(last, on="asset", how="left")
        .filter(pl.col("__last").is_null() | (pl.col("ts_us") > pl.col("__last")))
        .filter((pl.col("close") > 0) & (pl.col("high") >= pl.col("low")) & (pl.col("low") > 0) & (pl.col("open") > 0))
        .group_by("asset")
        .agg(pl.min_horizontal(pl.col("low").min(), pl.col("close").min() * (1.0 - prm.max_distance_pct)).alias("lo"),
             pl.max_horizontal(pl.col("high").max(), pl.col("close").max() * (1.0 + prm.max_distance_pct)).alias("hi"))
        .with_columns(pl.col("lo") / pad, pl.col("hi") * pad)
    )


def _table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    schema, name = table.split(".")
    q = f"SELECT count(*) FROM information_schema.tables WHERE table_schema = {str_literal(schema)} AND table_name = {str_literal(name)}"
    return con.execute(q).fetchone()[0] > 0


def read_heatmap(con: duckdb.DuckDBPyConnection, asset: str | None = None) -> pl.DataFrame:
    """Rows of marts.liquidation_heatmap (ts in UTC), optionally for one asset."""
    if not _table_exists(con, TABLE):
        raise ValueError(f"{TABLE} does not exist: build the marts first (`perpwatch build`)")
    where, params = ("WHERE asset = ?", [asset.upper()]) if asset else ("", [])
    df = con.execute(
        f"SELECT asset, ts, side, price_low, price_high, est_liquidation_usd, close FROM {TABLE} {where}",
        params,
    ).pl()
    return df.with_columns(pl.col("ts").dt.convert_time_zone("UTC"))


# --------------------------------------------------------------------------- clusters


def _clusters(bins: pl.DataFrame, percentile: float) -> pl.DataFrame:
    """Nearest large bin above and below `close` per (date, asset, ts).

    bins: date, asset, ts, price_low, price_high, est_liquidation_usd, close (both sides
    of a bin are summed). A bin is large when its USD is at or above the `percentile`
    quantile (linear) of that hour's bins. Distances are positive fractions of close.
    """
    keys = ["date", "asset", "ts"]
    if "usd" not in bins.columns:  # not summed per bin yet (last_hour_bins hands them summed)
        bins = bins.group_by([*keys, "price_low"]).agg(
            pl.col("price_high").first(),
            pl.col("close").first(),
            pl.col("est_liquidation_usd").sum().alias("usd"),
        )
    per_bin = (
        bins
        .with_columns(((pl.col("price_low") + pl.col("price_high")) / 2).alias("mid"))
        .with_columns(pl.col("usd").quantile(percentile, "linear").over(keys).alias("threshold"))
        .filter(pl.col("usd") >= pl.col("threshold"))
    )
    above = (
        per_bin.filter(pl.col("mid") >= pl.col("close"))
        .sort("mid")
        .group_by(keys, maintain_order=True)
        .first()
        .select(
            *keys,
            pl.col("mid").alias("cluster_above_price"),
            pl.col("usd").alias("cluster_above_usd"),
            (pl.col("mid") / pl.col("close") - 1).alias("cluster_above_distance"),
        )
    )
    below = (
        per_bin.filter(pl.col("mid") < pl.col("close"))
        .sort("mid", descending=True)
        .group_by(keys, maintain_order=True)
        .first()
        .select(
            *keys,
            pl.col("mid").alias("cluster_below_price"),
            pl.col("usd").alias("cluster_below_usd"),
            (1 - pl.col("mid") / pl.col("close")).alias("cluster_below_distance"),
        )
    )
    # every hour keeps its largest bin in per_bin (a quantile is at most the maximum), so per_bin's hours are all
    # of them, found in its ~1/10 of the rows; a NaN (never stored, but a caller's frame may hold one) fails every
    # comparison, and then the hours come from all bins
    hours = (bins if bins["usd"].is_nan().any() else per_bin).select(keys).unique()
    return hours.join(above, on=keys, how="left").join(below, on=keys, how="left").sort("asset", "ts")


def nearest_clusters(heatmap: pl.DataFrame, price: float, *, percentile: float | None = None) -> dict:
    """Nearest large cluster above and below `price` in one asset's heatmap hour.

    heatmap: rows of marts.liquidation_heatmap (or `step` output) for a single asset; if it
    spans several hours the latest is used. Long and short USD of a bin are summed. A bin is
    "large" at or above the `percentile` quantile of that hour's bins (default: settings'
    cluster_percentile, 0.9). Returns cluster_{above,below}_{price,usd,distance}: price is
    the bin's mid price, distance a positive fraction of `price` (0.02 = 2 %); None when
    there is no large bin on that side.
    """
    q = (
        heatmap_settings()["cluster_percentile"]
        if percentile is None
        else percentile
    )
    keys = [k for k in CLUSTER_SCHEMA if k not in ("date", "asset")]
    empty = dict.fromkeys(keys)
    if heatmap.height == 0:
        return empty
    if heatmap["asset"].n_unique() > 1:
        raise ValueError("nearest_clusters takes one asset's heatmap; filter by asset first")
    last = heatmap.filter(pl.col("ts") == pl.col("ts").max())
    bins = last.select(
        pl.col("ts").dt.date().alias("date"),
        "asset",
        "ts",
        "price_low",
        "price_high",
        "est_liquidation_usd",
        pl.lit(float(price)).alias("close"),
    )
    row = _clusters(bins, float(q)).row(0, named=True)
    return {k: row[k] for k in keys}


def daily_clusters(
    source: duckdb.DuckDBPyConnection | pl.DataFrame, *, percentile: float | None = None
) -> pl.DataFrame:
    """Nearest large clusters above/below the close at each UTC day's last heatmap hour.

    source: a DuckDB connection (reads marts.liquidation_heatmap, or builds it from staging
    when the table does not exist yet) or a heatmap frame with a `close` column.
    Columns: see CLUSTER_SCHEMA, one row per (date, asset) that has heatmap rows.
    """
    q = (
        heatmap_settings()["cluster_percentile"]
        if percentile is None
        else percentile
    )
    if isinstance(source, pl.DataFrame):
        return clusters_of(source, q)
    if not _table_exists(source, TABLE):
        return clusters_of(build_heatmap(source), q)
    return clusters_of_bins(last_hour_bins(source), q)


def clusters_of_bins(bins: pl.DataFrame, q: float) -> pl.DataFrame:
    """daily_clusters of last_hour_bins' rows at percentile q."""
    if bins.height == 0:
        return pl.DataFrame(schema=CLUSTER_SCHEMA)
    return _clusters(bins, float(q)).select(list(CLUSTER_SCHEMA)).sort("date", "asset")


def last_hour_bins(con: duckdb.DuckDBPyConnection, start: date | None = None) -> pl.DataFrame:
    """The stored bins of each (asset, UTC day)'s last heatmap hour, long and short summed per bin, from
    day `start` on: date, asset, ts, price_low, price_high, close, usd. DuckDB picks the hours and sums
    the sides, so only those rows reach polars (what clusters_of does to the whole table in memory).
    The sides are summed by a full outer join of the long rows with the short rows on (asset, ts, bin), not
    a GROUP BY: a bin rarely holds both sides (long levels sit below the price, short ones above), so the
    aggregate would build one group per row; the join hashes one side and probes with the other."""
    where = "" if start is None else f"WHERE ts >= {ts_literal(datetime.combine(start, datetime.min.time(), UTC))}"
    side = f"SELECT * FROM {TABLE} SEMI JOIN last USING (asset, ts) WHERE side = "
    df = con.execute(f"""
        WITH last AS (SELECT asset, max(ts) AS ts FROM {TABLE} {where} GROUP BY asset, epoch_us(ts) // {_DAY_US})
        SELECT coalesce(l.asset, s.asset) AS asset, epoch_us(coalesce(l.ts, s.ts)) AS ts_us,
               coalesce(l.price_low, s.price_low) AS price_low, coalesce(l.price_high, s.price_high) AS price_high,
               coalesce(l.close, s.close) AS close,
               coalesce(l.est_liquidation_usd, 0) + coalesce(s.est_liquidation_usd, 0) AS usd
        FROM ({side}'long') l FULL OUTER JOIN ({side}'short') s
          ON l.asset = s.asset AND l.ts = s.ts AND l.price_low = s.price_low""").pl()
    ts = pl.col("ts_us").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    return df.select(ts.dt.date().alias("date"), "asset", ts.alias("ts"), "price_low", "price_high", "close", "usd")


def clusters_of(heatmap: pl.DataFrame, q: float) -> pl.DataFrame:
    """daily_clusters of a heatmap frame at percentile q."""
    if heatmap.height == 0:
        return pl.DataFrame(schema=CLUSTER_SCHEMA)
    hm = heatmap.with_columns(pl.col("ts").dt.date().alias("date"))
    last = hm.filter(pl.col("ts") == pl.col("ts").max().over("asset", "date"))
    return _clusters(last, float(q)).select(list(CLUSTER_SCHEMA)).sort("date", "asset")


# --------------------------------------------------------------------------- rendering
