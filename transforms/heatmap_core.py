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

from dataclasses import dataclass, field

import numpy as np
import polars as pl

_HOUR_US = 3_600_000_000
_BLOCK = 32  # snapshots per cumulation block


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
    assets = frame["asset"].unique(maintain_order=True).to_list()
    if frame.height == 0:
        z = np.zeros((0, 0))
        return Dense([], 0, z, z, z, z, z, z, z.astype(bool))
    ts = frame["ts_us"].to_numpy()
    t0 = int(ts.min())
    if ((ts - t0) % _HOUR_US).any():
        raise ValueError("bars.ts must be whole hours")
    hi = (ts - t0) // _HOUR_US
    ai = frame["asset"].cast(pl.Enum(assets)).to_physical().to_numpy().astype(np.int64)
    shape = (len(assets), int(hi.max()) + 1)

    def grid(col: str | None) -> np.ndarray:
        g = np.full(shape, np.nan)
        if col is not None:
            g[ai, hi] = frame[col].to_numpy()
        return g

    o, h, lo, c = (grid(k) for k in ("open", "high", "low", "close"))
    with np.errstate(invalid="ignore"):
        usable = (c > 0) & (h >= lo) & (lo > 0) & (o > 0)
    return Dense(assets, t0, o, h, lo, c, grid("oi_usd"), grid("oi_prev_usd" if has_prev else None), usable)


def _first_hit(table: list[np.ndarray], row: np.ndarray, start: np.ndarray, p: np.ndarray, hours: int) -> np.ndarray:
    """First hour >= start where table[0][row, hour] <= p (hours if none). table[j] holds minima over 2^j hours,
    padded with +inf; rows are flattened as row * width + hour."""
    width = table[0].shape[1]
    pos = start.astype(np.int64)
    base = row.astype(np.int64) * width
    for j in range(len(table) - 1, -1, -1):
        flat = table[j].ravel()
        inside = pos < width
        cand = np.where(inside, flat[base + np.minimum(pos, width - 1)], np.inf)
        pos = np.where(cand > p, pos + (1 << j), pos)   # no hit in [pos, pos + 2^j): skip it
    return np.minimum(pos, hours)


def _sparse_min(x: np.ndarray) -> list[np.ndarray]:
    """Range-minimum tables along axis 1: out[j][:, i] = min(x[:, i : i + 2^j]) (+inf past the end)."""
    n = x.shape[1]
    levels = int(np.ceil(np.log2(n + 1)))  # jumps 2^(levels-1) + ... + 1 >= n
    out = [x]
    for j in range(1, levels):
        prev, s = out[-1], 1 << (j - 1)
        if s >= n:
            out.append(prev)
            continue
        nxt = prev.copy()  # past the end only +inf follows, so the shorter range's minimum stands
        np.minimum(prev[:, : n - s], prev[:, s:], out=nxt[:, : n - s])
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
    # ---- births
    share = np.where(d.close > d.open, prm.long_share_up, np.where(d.close < d.open, 1.0 - prm.long_share_up, 0.5))
    entry = (d.high + d.low + d.close) / 3.0
    parts = []
    for side, mult, w, sh in ((0, prm.long_mult, prm.long_w, share), (1, prm.short_mult, prm.short_w, 1.0 - share)):
        born = dpos & (sh > 0)
        a_i, t_i = np.nonzero(born)
        k = mult.size
        parts.append((np.repeat(a_i, k), np.full(a_i.size * k, side), (entry[a_i, t_i][:, None] * mult).ravel(),
                      np.repeat(t_i, k), (dd[a_i, t_i] * sh[a_i, t_i])[:, None] * w))
    for i, (lp, lu, sp, su, _) in init.items():
        for side, p, u in ((0, lp, lu), (1, sp, su)):
            parts.append((np.full(p.size, i), np.full(p.size, side), np.asarray(p, float), np.full(p.size, -1),
                          np.asarray(u, float)))
    asset = np.concatenate([p[0] for p in parts]).astype(np.int64)
    side = np.concatenate([p[1] for p in parts]).astype(np.int8)
    price = np.concatenate([p[2] for p in parts])
    birth = np.concatenate([p[3] for p in parts]).astype(np.int64)
    u0 = np.concatenate([np.ravel(p[4]) for p in parts])
    # ---- death hours: long dies at the first later usable hour with low <= price, short with high >= price
    death = np.full(asset.size, n_t, dtype=np.int64)
    if n_t:
        for s, series in ((0, np.where(d.usable, d.low, np.inf)), (1, np.where(d.usable, -d.high, np.inf))):
            m = side == s
            if m.any():
                tab = _sparse_min(series)
                death[m] = _first_hit(tab, asset[m], birth[m] + 1, price[m] if s == 0 else -price[m], n_t)
    # ---- the sequential part: decline ratios need the USD liquidated each hour
    order = np.lexsort((asset, birth))
    birth_o, asset_o, death_o, u0_o = birth[order], asset[order], death[order], u0[order]
    bounds = np.searchsorted(birth_o, np.arange(-1, n_t + 1))
    A = np.zeros((n_a, n_t + 1))
    S = np.ones(n_a)
    S_hist = np.ones((n_a, n_t))
    a_o = np.empty_like(u0_o)
    cleared: list[tuple[int, int]] = []
    lo_, hi_ = bounds[0], bounds[1]
    a_o[lo_:hi_] = u0_o[lo_:hi_]  # initial state: S = 1
    np.add.at(A, (asset_o[lo_:hi_], death_o[lo_:hi_]), u0_o[lo_:hi_])
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
            ai = asset_o[lo_:hi_]
            a_o[lo_:hi_] = u0_o[lo_:hi_] / S[ai]
            np.add.at(A, (ai, death_o[lo_:hi_]), a_o[lo_:hi_])
        S_hist[:, t] = S
    a = np.empty_like(a_o)
    a[order] = a_o
    for i, c in cleared:  # a clear kills every level alive at that hour
        m = (asset == i) & (birth < c) & (death > c)
        death[m] = c
    return Levels(asset, side, price, birth, death, u0, cleared), S_hist, a, end_oi


def snapshots(d: Dense, prm, lv: Levels, S_hist: np.ndarray, a: np.ndarray, snap: list[np.ndarray],
              top_bins: int | None) -> dict[str, np.ndarray]:
    """Binned USD per (asset, snapshot hour, side, bin) inside the distance window of the close, USD > 0,
    at most `top_bins` largest bins per (asset, hour, side). snap[i]: sorted usable hour indices of asset i."""
    inv = 1.0 / prm.log_step
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("asset", "hour", "side", "bin", "usd")}
    bin_all = np.floor(np.log(lv.price) * inv).astype(np.int64)
    order = np.argsort(lv.asset, kind="stable")
    cuts = np.searchsorted(lv.asset[order], np.arange(len(d.assets) + 1))
    for i in range(len(d.assets)):
        hs = snap[i]
        if hs.size == 0:
            continue
        sel = order[cuts[i]:cuts[i + 1]]
        c = d.close[i, hs]
        k_lo = np.floor(np.log(c * (1.0 - prm.max_distance_pct)) * inv).astype(np.int64)
        k_hi = np.floor(np.log(c * (1.0 + prm.max_distance_pct)) * inv).astype(np.int64)
        n_s = hs.size
        s_scale = S_hist[i, hs]
        for side in (0, 1):
            m = sel[lv.side[sel] == side]
            s0 = np.searchsorted(hs, np.maximum(lv.birth[m], 0), "left")  # first snapshot at/after birth
            s0 = np.where(lv.birth[m] < 0, 0, s0)
            s1 = np.searchsorted(hs, lv.death[m], "left")  # first snapshot at/after death
            keep = s1 > s0
            m, s0, s1 = m[keep], s0[keep], s1[keep]
            if m.size == 0:
                continue
            b = bin_all[m]
            b_min = min(int(b.min()), int(k_lo.min()))
            b_max = max(int(b.max()), int(k_hi.max()))
            nb = b_max - b_min + 1
            col = b - b_min
            n_blk = -(-n_s // _BLOCK)
            rows = n_blk * _BLOCK
            blk_start = np.minimum(np.arange(n_blk) * _BLOCK, n_s - 1)
            base = s_scale[blk_start]  # the scale at each block's first snapshot
            ev = np.zeros((rows + 1) * nb)
            cnt = np.zeros((rows + 1) * nb, dtype=np.int64)
            av = a[m]
            np.add.at(ev, s0 * nb + col, av * base[s0 // _BLOCK])
            np.add.at(cnt, s0 * nb + col, 1)
            dead = s1 < n_s
            np.add.at(ev, s1[dead] * nb + col[dead], -av[dead] * base[s1[dead] // _BLOCK])
            np.add.at(cnt, s1[dead] * nb + col[dead], -1)
            ev = ev[: rows * nb].reshape(n_blk, _BLOCK, nb)
            live = np.cumsum(cnt[: rows * nb].reshape(rows, nb), axis=0)[:n_s] > 0
            part = np.cumsum(ev, axis=1)
            carry = np.zeros(nb)
            grid = np.empty((n_blk, _BLOCK, nb))
            for blk in range(n_blk):
                g = part[blk] + carry
                grid[blk] = g
                nxt = min((blk + 1) * _BLOCK, n_s - 1)
                last = min((blk + 1) * _BLOCK - 1, n_s - 1)
                # USD at the next block's first snapshot of what was alive at this block's last one
                carry = np.where(live[last], g[last - blk * _BLOCK], 0.0) * (s_scale[nxt] / base[blk])
            usd = grid.reshape(rows, nb)[:n_s] * (s_scale / base[np.arange(n_s) // _BLOCK])[:, None]
            usd = np.where(live, usd, 0.0)
            # the window: bins k_lo..k_hi of each snapshot's close
            width = int((k_hi - k_lo).max()) + 1
            cols = (k_lo - b_min)[:, None] + np.arange(width)[None, :]
            inside = cols <= (k_hi - b_min)[:, None]
            win = np.where(inside, np.take_along_axis(usd, np.minimum(cols, nb - 1), 1), 0.0)
            if top_bins is not None and top_bins < width:
                kth = width - top_bins
                part_idx = np.argpartition(win, kth, axis=1)[:, kth:]
                top = np.zeros_like(win, dtype=bool)
                np.put_along_axis(top, part_idx, True, 1)
                win = np.where(top, win, 0.0)
            r, cc = np.nonzero(win > 0)
            out["asset"].append(np.full(r.size, i))
            out["hour"].append(hs[r])
            out["side"].append(np.full(r.size, side, dtype=np.int8))
            out["bin"].append(cols[r, cc] + b_min)
            out["usd"].append(win[r, cc])
    return {k: (np.concatenate(v) if v else np.empty(0)) for k, v in out.items()}


def end_levels(lv: Levels, S_hist: np.ndarray, a: np.ndarray, hour: int) -> dict[int, list[np.ndarray]]:
    """Per asset index, the levels alive after `hour` (exact prices, sorted; ties in level order) as the
    fold's state: [long_price, long_usd, short_price, short_usd]. One sort over every asset's levels, not a
    scan of all levels per asset. An asset with no live level is absent."""
    idx = np.flatnonzero((lv.birth <= hour) & (lv.death > hour))
    idx = idx[np.lexsort((idx, lv.price[idx], lv.side[idx], lv.asset[idx]))]
    asset, side = lv.asset[idx], lv.side[idx]
    price, usd = lv.price[idx], a[idx] * S_hist[asset, hour]
    out = {}
    starts = np.flatnonzero(np.r_[True, asset[1:] != asset[:-1]]) if idx.size else np.empty(0, np.int64)
    for k, lo in enumerate(starts.tolist()):
        hi = int(starts[k + 1]) if k + 1 < starts.size else idx.size
        mid = lo + int(np.searchsorted(side[lo:hi], 1, "left"))
        out[int(asset[lo])] = [price[lo:mid], usd[lo:mid], price[mid:hi], usd[mid:hi]]
    return out
