"""The liquidation-heatmap model vectorised over assets x hours, evaluated at chosen snapshot hours.

Same model as `perpwatch.transforms.heatmap.step` (docs/heatmap.md), computed differently so that
200 assets x 5 years fit in seconds:

1. A level's *death hour* does not depend on USD: a long level at price p born at hour h dies at the
   first usable hour t > h with low_t <= p (a short level: high_t >= p). It is found for every level
   at once by binary lifting over a sparse table of range minima of the lows (maxima of the highs).
2. Every survivor of an asset is scaled by the same factor when OI falls, so a level's USD at hour t
   is a * S_t with a = u0 / S_h (u0: its USD at birth) and S_t the product of the asset's decline
   ratios. The ratio at t needs the USD liquidated at t, S_{t-1} * sum(a of levels dying at t): the
   only sequential part, one loop over hours with vector operations over assets.
3. At the snapshot hours the binned USD is an interval sum (a level counts from its birth to its
   death) computed per asset on a dense snapshot x bin grid: births and deaths as +a / -a events,
   cumulated within blocks of snapshots (values in the block's own scale, so old and new levels of
   very different `a` never cancel each other) and carried from block to block in USD; a live-level
   count per cell makes emptied bins exactly 0.

`tests/test_heatmap.py` checks that with every hour a snapshot the rows equal `step`'s to 1e-9.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl

_HOUR_US = 3_600_000_000
_BLOCK = 32  # snapshots per cumulation block
_SLICE = 1 << 22  # levels per slice of the death-hour search
_THREADED_LEVELS = 1_000_000  # levels from which fold() searches the death hours on two threads
_TABLE_BYTES = 64 << 20  # range tables per chunk of assets in the death-hour search
_THREADED_SNAPSHOTS = 50_000  # snapshot hours (all assets) from which snapshots() uses a thread per core


@dataclass
class Dense:
    """Hourly bars on a dense asset x hour grid (hour index 0 = t0_us)."""

    assets: list[str]
    t0_us: int
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    oi: np.ndarray
    oi_prev: np.ndarray  # NaN where the bars carry no oi_prev_usd
    usable: np.ndarray  # bool: the hour has a usable price (else the model skips it)

    @property
    def hours(self) -> int:
        return self.close.shape[1]


def dense(frame: pl.DataFrame, has_prev: bool) -> Dense:
    """frame: asset, ts_us, open, high, low, close, oi_usd[, oi_prev_usd], sorted, unique per (asset, ts_us)."""
    if frame.height == 0:
        return on_grids([], 0, np.empty(0, np.int64), np.empty(0, np.int64), {})
    assets = frame["asset"].unique(maintain_order=True).to_list()
    ts = frame["ts_us"].to_numpy()
    t0 = int(ts.min())
    if ((ts - t0) % _HOUR_US).any():
        raise ValueError("bars.ts must be whole hours")
    hi = (ts - t0) // _HOUR_US
    ai = frame["asset"].cast(pl.Enum(assets)).to_physical().to_numpy().astype(np.int64)
    cols = {"open": "open", "high": "high", "low": "low", "close": "close", "oi": "oi_usd"}
    if has_prev:
        cols["oi_prev"] = "oi_prev_usd"
    return on_grids(assets, t0, ai, hi, {k: frame[c].to_numpy() for k, c in cols.items()})


def on_grids(assets: list[str], t0_us: int, row: np.ndarray, hour: np.ndarray, values: dict[str, np.ndarray]) -> Dense:
    """Bars as Dense: values["open"|"high"|"low"|"close"|"oi"|"oi_prev"] of bar i at (row[i], hour[i]) (hour 0 =
    t0_us); NaN where a cell has no bar or a field is missing (no oi_prev: like-for-like flow is not known)."""
    shape = (len(assets), int(hour.max()) + 1 if hour.size else 0)
    at = row * shape[1] + hour  # flat cell of each bar, once: np.put on it is ~2x a 2-D fancy-index scatter

    def grid(name: str) -> np.ndarray:
        g = np.full(shape, np.nan)
        if name in values:
            np.put(g, at, values[name])
        return g

    o, h, lo, c = (grid(k) for k in ("open", "high", "low", "close"))
    with np.errstate(invalid="ignore"):
        usable = (c > 0) & (h >= lo) & (lo > 0) & (o > 0)
    return Dense(assets, t0_us, o, h, lo, c, grid("oi"), grid("oi_prev"), usable)


def _first_hit(table: list[np.ndarray], row: np.ndarray, start: np.ndarray, p: np.ndarray) -> np.ndarray:
    """First hour >= start where table[0][row, hour] <= p; the last column (a +inf sentinel) when none.
    table[j] holds minima over 2^j hours (_sparse_min). In-place integer steps over flat indices: every
    jump is clamped to the row's sentinel, so no bounds test is needed."""
    width = table[0].shape[1]
    flat = [t.ravel() for t in table]
    out = np.empty(row.size, dtype=np.int64)
    n = min(row.size, _SLICE)
    base, end, idx, cand, jump = (np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64),
                                  np.empty(n), np.empty(n, dtype=np.int64))
    for lo in range(0, row.size, _SLICE):  # in slices: the temporaries stay small and are reused
        k = min(_SLICE, row.size - lo)
        b, e, i, c, jmp = base[:k], end[:k], idx[:k], cand[:k], jump[:k]
        np.multiply(row[lo:lo + k], width, out=b, casting="unsafe")
        np.add(b, width - 1, out=e)
        np.add(b, start[lo:lo + k], out=i, casting="unsafe")
        np.minimum(i, e, out=i)
        for j in range(len(flat) - 1, -1, -1):
            np.take(flat[j], i, out=c)
            np.greater(c, p[lo:lo + k], out=jmp, casting="unsafe")  # no hit in [pos, pos + 2^j): skip it
            jmp <<= j
            i += jmp
            np.minimum(i, e, out=i)
        np.subtract(i, b, out=out[lo:lo + k])
    return out


def _sparse_min(x: np.ndarray) -> list[np.ndarray]:
    """Range-minimum tables along axis 1 of x padded with one +inf column: out[j][:, i] = min(x[:, i : i + 2^j])
    (+inf past the end)."""
    n = x.shape[1] + 1
    first = np.empty((x.shape[0], n))
    first[:, :-1] = x
    first[:, -1] = np.inf
    levels = int(np.ceil(np.log2(n + 1)))  # jumps 2^(levels-1) + ... + 1 >= n
    out = [first]
    for j in range(1, levels):
        prev, s = out[-1], 1 << (j - 1)
        if s >= n:
            out.append(prev)
            continue
        nxt = np.empty_like(prev)
        np.minimum(prev[:, : n - s], prev[:, s:], out=nxt[:, : n - s])
        nxt[:, n - s:] = prev[:, n - s:]  # past the end only +inf follows, so the shorter range's minimum stands
        out.append(nxt)
    return out


@dataclass
class Levels:
    """Every level of a fold: asset index, side (0 long, 1 short), price, birth hour (-1: from the initial
    state), death hour (hours: alive at the end), u0 (USD at birth)."""

    asset: np.ndarray
    side: np.ndarray
    price: np.ndarray
    birth: np.ndarray
    death: np.ndarray
    u0: np.ndarray
    cleared: list[tuple[int, int]] = field(default_factory=list)  # (asset index, hour): OI fell to 0, all died
    by_asset: np.ndarray | None = None  # level indices sorted by asset, level order kept within an asset
    per_asset: np.ndarray | None = None  # levels per asset index (by_asset's slices), with by_asset


def asset_order(asset: np.ndarray, n_assets: int) -> np.ndarray:
    """Indices of `asset` sorted by asset, stable: on 16-bit keys, which numpy's stable sort orders by radix
    (O(n); numpy's `sort` docs), not by timsort as it does 32-bit ones."""
    key = asset.astype(np.int16, copy=False) if n_assets <= np.iinfo(np.int16).max else asset
    return np.argsort(key, kind="stable")


def born_order(cell_asset: np.ndarray, k: int, n_assets: int) -> tuple[np.ndarray, np.ndarray]:
    """asset_order of levels born k per cell (level j of cell c at index c * k + j; cell_asset: each cell's asset),
    and the levels per asset: the stable order of the cells, each expanded to its k levels. The same permutation
    as sorting the levels, from a sort k times smaller."""
    cells = asset_order(cell_asset, n_assets)
    return (cells[:, None] * k + np.arange(k)).ravel(), np.bincount(cell_asset, minlength=n_assets) * k


def fold(d: Dense, prm, init: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float | None]]
         ) -> tuple[Levels, np.ndarray, np.ndarray, np.ndarray]:
    """Run the model over the whole grid. init: asset index -> (long_price, long_usd, short_price, short_usd,
    last_oi) at the start. Returns (levels, S[asset, hour] after each hour, a-per-level, last_oi per asset)."""
    n_a, n_t = d.close.shape
    # ---- OI change per hour (like-for-like oi_prev_usd, else the previous folded hour's OI)
    oi_ok = d.usable & ~np.isnan(d.oi)
    init_oi = np.array([np.nan if (i not in init or init[i][4] is None) else init[i][4] for i in range(n_a)])
    idx = np.where(oi_ok, np.arange(n_t)[None, :], -1)
    last_idx = np.maximum.accumulate(idx, axis=1)
    prev_idx = np.concatenate([np.full((n_a, 1), -1), last_idx[:, :-1]], axis=1)
    last_oi_before = np.where(prev_idx >= 0, np.take_along_axis(d.oi, np.maximum(prev_idx, 0), 1), init_oi[:, None])
    prev = np.where(~np.isnan(d.oi_prev), d.oi_prev, last_oi_before)
    with np.errstate(invalid="ignore"):
        valid = oi_ok & (prev > 0)
        dd = np.where(valid, d.oi - prev, 0.0)
    dpos, dneg = valid & (dd > 0), valid & (dd < 0)
    end_oi = np.where(last_idx[:, -1] >= 0, d.oi[np.arange(n_a), np.maximum(last_idx[:, -1], 0)], init_oi) \
        if n_t else init_oi
    # ---- births, in (hour, asset) order (the loop below takes them hour by hour), after the initial state;
    #      per born cell its long tiers, then its short tiers
    share = np.where(d.close > d.open, prm.long_share_up, np.where(d.close < d.open, 1.0 - prm.long_share_up, 0.5))
    t_i, a_i = np.nonzero(dpos.T)
    k_l, k_s = prm.long_mult.size, prm.short_mult.size
    k = k_l + k_s
    e = (d.high[a_i, t_i] + d.low[a_i, t_i] + d.close[a_i, t_i]) / 3.0
    flow, sh = dd[a_i, t_i], share[a_i, t_i]
    n_init = sum(v[0].size + v[2].size for v in init.values())
    n = n_init + t_i.size * k
    asset, side = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int8)
    price, birth, u0 = np.empty(n), np.empty(n, dtype=np.int32), np.empty(n)
    at = 0
    for i in sorted(init):
        lp, lu, sp, su, _ = init[i]
        for sd, pr, us in ((0, lp, lu), (1, sp, su)):
            asset[at:at + pr.size], side[at:at + pr.size], birth[at:at + pr.size] = i, sd, -1
            price[at:at + pr.size], u0[at:at + pr.size] = pr, us
            at += pr.size
    # per born cell k consecutive levels, written in place (broadcast, no repeated temporaries)
    asset[at:].reshape(-1, k)[:] = a_i[:, None]
    birth[at:].reshape(-1, k)[:] = t_i[:, None]
    side[at:].reshape(-1, k)[:] = np.r_[np.zeros(k_l, np.int8), np.ones(k_s, np.int8)]
    cell = price[at:].reshape(-1, k)
    np.multiply(e[:, None], prm.long_mult, out=cell[:, :k_l])
    np.multiply(e[:, None], prm.short_mult, out=cell[:, k_l:])
    cell = u0[at:].reshape(-1, k)
    np.multiply((flow * sh)[:, None], prm.long_w, out=cell[:, :k_l])
    np.multiply((flow * (1.0 - sh))[:, None], prm.short_w, out=cell[:, k_l:])
    filtered = not (u0[at:] > 0).all()
    if filtered:  # a side with no share (long_share_up 0 or 1) opens no level
        keep = np.r_[np.ones(at, bool), u0[at:] > 0]
        asset, side, price, birth, u0 = asset[keep], side[keep], price[keep], birth[keep], u0[keep]
    # ---- death hours: long dies at the first later usable hour with low <= price, short with high >= price
    #      (a short level searches -price in -high). In chunks of assets: a chunk's range tables and its levels'
    #      temporaries are small and reused (fresh memory is what a rebuild at scale pays for most: notes above).
    death = np.full(asset.size, n_t, dtype=np.int32)
    if at == 0 and not filtered:  # a rebuild: every level is born, k per born cell
        order, counts = born_order(a_i, k, n_a)
    else:
        order, counts = asset_order(asset, n_a), np.bincount(asset, minlength=n_a)
    cuts = np.r_[0, np.cumsum(counts)]
    rows = max(1, _TABLE_BYTES // (8 * (n_t + 1) * max(1, int(np.ceil(np.log2(n_t + 2))))))
    jobs = [(sd, r0, min(r0 + rows, n_a)) for r0 in range(0, n_a, rows) for sd in (0, 1)]

    def deaths(job: tuple[int, int, int]) -> None:
        sd, r0, r1 = job
        sel = order[cuts[r0]:cuts[r1]]
        m = sel[side[sel] == sd]
        if not m.size:
            return
        x = np.where(d.usable[r0:r1], d.low[r0:r1], np.inf) if sd == 0 else np.where(d.usable[r0:r1], -d.high[r0:r1], np.inf)
        p = price[m] if sd == 0 else -price[m]
        row = asset[m] - r0
        # a level above its asset's minimum over every hour is never hit: only the others are searched
        # (most of a daily pass's stored levels lie outside the day's range)
        reach = ~(x.min(axis=1)[row] > p)
        m, p, row = m[reach], p[reach], row[reach]
        death[m] = _first_hit(_sparse_min(x), row, birth[m] + 1, p)

    if n_t:
        # the chunks are independent: at scale on two threads (each writes its own levels' death hours)
        if asset.size >= _THREADED_LEVELS and (os.cpu_count() or 1) > 1:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(deaths, jobs))
        else:
            for job in jobs:
                deaths(job)
    # ---- the sequential part: decline ratios need the USD liquidated each hour
    # hours of birth's own dtype: mixed dtypes would make searchsorted copy all of `birth` as int64 first
    bounds = np.searchsorted(birth, np.arange(-1, n_t + 1, dtype=birth.dtype))
    A = np.zeros((n_a, n_t + 1))
    S = np.ones(n_a)
    S_hist = np.ones((n_a, n_t))
    a = np.empty_like(u0)
    cleared: list[tuple[int, int]] = []
    lo_, hi_ = bounds[0], bounds[1]
    a[lo_:hi_] = u0[lo_:hi_]  # initial state: S = 1
    np.add.at(A, (asset[lo_:hi_], death[lo_:hi_]), u0[lo_:hi_])
    neg_any = dneg.any(axis=0)
    for t in range(n_t):
        if neg_any[t]:
            m = dneg[:, t]
            rest = prev[m, t] - S[m] * A[m, t]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(rest > 0, np.minimum(np.maximum(d.oi[m, t], 0.0) / rest, 1.0), 0.0)
            if (ratio <= 0).any():
                for i in np.flatnonzero(m)[ratio <= 0]:
                    cleared.append((int(i), t))
                    A[i, t + 1:] = 0.0
                ratio = np.where(ratio > 0, ratio, 1.0)  # the levels die at t (death set below); the scale goes on
            S[m] *= ratio
            if (S[m] < 1e-250).any():
                raise ValueError("heatmap: cumulative OI decline beyond floating-point range")
        lo_, hi_ = bounds[t + 1], bounds[t + 2]
        if hi_ > lo_:
            ai = asset[lo_:hi_]
            a[lo_:hi_] = u0[lo_:hi_] / S[ai]
            np.add.at(A, (ai, death[lo_:hi_]), a[lo_:hi_])
        S_hist[:, t] = S
    for i, c in cleared:  # a clear kills every level alive at that hour
        m = (asset == i) & (birth < c) & (death > c)
        death[m] = c
    return Levels(asset, side, price, birth, death, u0, cleared, order, counts), S_hist, a, end_oi


def snapshots(d: Dense, prm, lv: Levels, S_hist: np.ndarray, a: np.ndarray, snap: list[np.ndarray],
              top_bins: int | None, workers: int | None = None) -> dict[str, np.ndarray]:
    """Binned USD per (asset, snapshot hour, side, bin) inside the distance window of the close, USD > 0,
    at most `top_bins` largest bins per (asset, hour, side). snap[i]: sorted usable hour indices of asset i.
    Assets are independent: they run on `workers` threads (default: one per core when there are at least
    _THREADED_SNAPSHOTS snapshot hours, i.e. a rebuild, else one), results in asset order."""
    inv = 1.0 / prm.log_step
    if lv.by_asset is not None and lv.per_asset is not None:
        order, counts = lv.by_asset, lv.per_asset
    else:   # (bincount takes intp: it copies an int32 asset column of 44 M levels first; fold() has the counts)
        order, counts = asset_order(lv.asset, len(d.assets)), np.bincount(lv.asset, minlength=len(d.assets))
    cuts = np.r_[0, np.cumsum(counts)]  # each asset's slice of `order`

    def one(i: int) -> list[tuple[np.ndarray, ...]]:
        hs = snap[i]
        if hs.size == 0:
            return []
        sel = order[cuts[i]:cuts[i + 1]]
        # per hour 0..hours, the first snapshot at or after it: a lookup instead of a binary search per level
        pos = np.searchsorted(hs, np.arange(d.hours + 1), "left")
        return [_asset_side(d.close[i, hs], hs, pos, S_hist[i, hs], lv, a, sel[lv.side[sel] == side], side, i,
                            prm, inv, top_bins) for side in (0, 1)]

    if workers is None:
        small = sum(h.size for h in snap) < _THREADED_SNAPSHOTS
        workers = 1 if small else min(len(d.assets), os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            got = [p for parts in pool.map(one, range(len(d.assets))) for p in parts if p is not None]
    else:
        got = [p for i in range(len(d.assets)) for p in one(i) if p is not None]
    keys = ("asset", "hour", "side", "bin", "usd")
    return {k: (np.concatenate([g[j] for g in got]) if got else np.empty(0)) for j, k in enumerate(keys)}


def _asset_side(c: np.ndarray, hs: np.ndarray, pos: np.ndarray, s_scale: np.ndarray, lv: Levels, a: np.ndarray,
                m: np.ndarray, side: int, i: int, prm, inv: float, top_bins: int | None
                ) -> tuple[np.ndarray, ...] | None:
    """snapshots() for one asset and side: m are the indices of its levels, hs its snapshot hours."""
    k_lo = np.floor(np.log(c * (1.0 - prm.max_distance_pct)) * inv).astype(np.int64)
    k_hi = np.floor(np.log(c * (1.0 + prm.max_distance_pct)) * inv).astype(np.int64)
    n_s = hs.size
    s0 = pos[np.maximum(lv.birth[m], 0)]  # first snapshot at/after birth (an initial level, birth -1: the first)
    s1 = pos[lv.death[m]]  # first snapshot at/after death (death = hours: none)
    keep = s1 > s0
    m, s0, s1 = m[keep], s0[keep], s1[keep]
    if m.size == 0:
        return None
    b = np.floor(np.log(lv.price[m]) * inv).astype(np.int64)  # only the levels that reach a snapshot
    b_min = min(int(b.min()), int(k_lo.min()))
    b_max = max(int(b.max()), int(k_hi.max()))
    nb = b_max - b_min + 1
    col = b - b_min
    n_blk = -(-n_s // _BLOCK)
    rows = n_blk * _BLOCK
    blk_start = np.minimum(np.arange(n_blk) * _BLOCK, n_s - 1)
    base = s_scale[blk_start]  # the scale at each block's first snapshot
    av = a[m]
    dead = s1 < n_s
    at_birth, at_death = s0 * nb + col, s1[dead] * nb + col[dead]
    size = (rows + 1) * nb
    ev = np.zeros(size)
    np.add.at(ev, at_birth, av * base[s0 // _BLOCK])
    np.add.at(ev, at_death, -av[dead] * base[s1[dead] // _BLOCK])
    cnt = np.bincount(at_birth, minlength=size)
    cnt -= np.bincount(at_death, minlength=size)  # in place: no third grid of fresh memory
    ev = ev[: rows * nb].reshape(n_blk, _BLOCK, nb)
    live = _cumsum_rows(cnt[: n_s * nb].reshape(n_s, nb)) > 0
    part = _cumsum_rows(ev)
    carry = np.zeros(nb)
    grid = np.empty((n_blk, _BLOCK, nb))
    for blk in range(n_blk):
        g = part[blk] + carry
        grid[blk] = g
        nxt = min((blk + 1) * _BLOCK, n_s - 1)
        last = min((blk + 1) * _BLOCK - 1, n_s - 1)
        # USD at the next block's first snapshot of what was alive at this block's last one
        carry = np.where(live[last], g[last - blk * _BLOCK], 0.0) * (s_scale[nxt] / base[blk])
    # the window: bins k_lo..k_hi of each snapshot's close. Taken from the block-scaled grid first, then scaled to
    # USD and masked by the live count on the window's cells only (the same products as on the whole grid)
    width = int((k_hi - k_lo).max()) + 1
    cols = (k_lo - b_min)[:, None] + np.arange(width)[None, :]
    inside = cols <= (k_hi - b_min)[:, None]
    at = np.minimum(cols, nb - 1)
    inside &= np.take_along_axis(live, at, 1)
    win = np.take_along_axis(grid.reshape(rows, nb)[:n_s], at, 1)
    win *= (s_scale / base[np.arange(n_s) // _BLOCK])[:, None]
    win = np.where(inside, win, 0.0)
    if top_bins is not None and top_bins < width:
        kth = width - top_bins
        part_idx = np.argpartition(win, kth, axis=1)[:, kth:]
        top = np.zeros_like(win, dtype=bool)
        np.put_along_axis(top, part_idx, True, 1)
        win = np.where(top, win, 0.0)
    r, cc = np.nonzero(win > 0)
    return (np.full(r.size, i), hs[r], np.full(r.size, side, dtype=np.int8), cols[r, cc] + b_min, win[r, cc])


def _cumsum_rows(x: np.ndarray) -> np.ndarray:
    """np.cumsum(x, axis=-2) in place, one row at a time: the same additions in the same order, each over a
    contiguous row of bins. x: C-contiguous, 2-D or (blocks, rows, bins)."""
    for r in range(1, x.shape[-2]):
        np.add(x[..., r - 1, :], x[..., r, :], out=x[..., r, :])
    return x


def end_levels(lv: Levels, S_hist: np.ndarray, a: np.ndarray, hour: int) -> dict[int, list[np.ndarray]]:
    """Per asset index, the levels alive after `hour` (exact prices, sorted; ties in level order) as the
    fold's state: [long_price, long_usd, short_price, short_usd]. The live levels in asset order (lv.by_asset
    keeps level order within an asset), then one small sort per asset, not a scan of all levels per asset.
    An asset with no live level is absent."""
    order = lv.by_asset if lv.by_asset is not None else asset_order(lv.asset, int(lv.asset.max(initial=-1)) + 1)
    live = (lv.birth <= hour) & (lv.death > hour)
    idx = order[live[order]]
    asset = lv.asset[idx]
    out = {}
    starts = np.flatnonzero(np.r_[True, asset[1:] != asset[:-1]]) if idx.size else np.empty(0, np.int64)
    ends = np.r_[starts[1:], idx.size]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        sub = idx[lo:hi]
        # lexsort is stable and sub ascends: equal prices keep level order
        sub = sub[np.lexsort((lv.price[sub], lv.side[sub]))]
        side = lv.side[sub]
        price, usd = lv.price[sub], a[sub] * S_hist[asset[lo], hour]
        mid = int(np.searchsorted(side, 1, "left"))
        out[int(asset[lo])] = [price[:mid], usd[:mid], price[mid:], usd[mid:]]
    return out
