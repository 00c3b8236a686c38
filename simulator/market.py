"""One deterministic synthetic crypto market shared by every simulated venue.

Everything is a pure function of ``(seed, asset, hour)``: hourly series are generated from
a fixed genesis (2019-01-01T00:00Z) in blocks of ``BLOCK`` hours, each block drawing its
random numbers from ``np.random.default_rng([seed, asset_key, block])``.  All recursive
filters are causal, so extending the horizon never changes earlier values: the same
request yields the same numbers whatever the server clock says.

Conventions (``h`` = hour index since genesis, instant ``GENESIS_MS + h*HOUR_MS``):

* ``px[h]``  index price at the instant ``h`` (point series); hour bar ``h`` opens at
  ``px[h]`` and closes at ``px[h+1]``; ``hi[h]``/``lo[h]`` are the bar extremes of the
  intra-hour minute path (see :meth:`Market.minute_path`).
* ``prem[h]`` average perp premium ratio (perp/index - 1) during bar ``h``; funding is
  derived from it per venue and interval.
* ``oi[h]`` global open interest in base coin at the instant ``h`` (one side).
* ``g/ta/tp[h]`` long share of all accounts / top accounts / top positions at ``h``.
* ``liq_long/liq_short[h]`` USD liquidated during bar ``h`` (all venues together).
* ``vol[h]`` perp traded volume in base coin during bar ``h`` (all venues together).

Regimes: every ``BLOCK`` (240 h = 10 days) contains one market-wide crash (all assets,
asset specific magnitude) and one squeeze per asset (price up fast, OI up, funding high,
account long share high), in opposite halves of the block, so any 30-day window holds
about three of each.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
from scipy.signal import lfilter

GENESIS = datetime(2019, 1, 1, tzinfo=UTC)
GENESIS_MS = int(GENESIS.timestamp() * 1000)
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
DAY_MS = 86_400_000
BLOCK = 240  # hours per regime block
TABLE_BITS = 20
TABLE_SIZE = 1 << TABLE_BITS
TABLE_MASK = TABLE_SIZE - 1

DEFAULT_UNIVERSE = ["BTC", "ETH", "SOL"]

# venue share of global (one-sided) open interest
VENUE_OI_SHARE = {
    "binance": 0.35,
    "binance_cm": 0.05,
    "bybit": 0.25,
    "bybit_inv": 0.03,
    "okx": 0.15,
    "okx_inv": 0.03,
    "hyperliquid": 0.10,
    "deribit": 0.05,
}
VENUE_VOL_SHARE = {
    "binance": 0.38,
    "binance_cm": 0.04,
    "bybit": 0.22,
    "bybit_inv": 0.02,
    "okx": 0.16,
    "okx_inv": 0.02,
    "hyperliquid": 0.12,
    "deribit": 0.04,
    "binance_spot": 0.10,
}
# constant relative price offset per venue (perp)
VENUE_BIAS = {
    "binance": 0.0,
    "binance_cm": 0.00004,
    "bybit": 0.00006,
    "bybit_inv": 0.00008,
    "okx": -0.00004,
    "okx_inv": -0.00002,
    "hyperliquid": 0.00012,
    "deribit": 0.0001,
}
_VENUE_SALT = {name: i + 1 for i, name in enumerate(sorted(set(VENUE_OI_SHARE) | set(VENUE_VOL_SHARE) | {"spot"}))}


@dataclass(frozen=True)
class AssetSpec:
    name: str
    price: float  # centre price level
    vol: float  # hourly log-return volatility
    oi: float  # global one-sided open interest, base coin
    volume: float  # global perp volume per hour, base coin
    long_bias: float  # extra long share of all accounts
    decimals: int  # price decimals for formatting
    qty_decimals: int
    listed_ms: int = GENESIS_MS


SPECS: dict[str, AssetSpec] = {
    "BTC": AssetSpec("BTC", 85_000.0, 0.0055, 290_000.0, 9_000.0, 0.03, 1, 3),
    "ETH": AssetSpec("ETH", 3_000.0, 0.0072, 6_200_000.0, 200_000.0, 0.04, 2, 3),
    "SOL": AssetSpec("SOL", 170.0, 0.0095, 36_000_000.0, 1_300_000.0, 0.05, 3, 2,
                     int(datetime(2020, 9, 14, tzinfo=UTC).timestamp() * 1000)),
    "BNB": AssetSpec("BNB", 650.0, 0.0065, 2_300_000.0, 110_000.0, 0.04, 3, 2),
    "XRP": AssetSpec("XRP", 2.3, 0.0085, 1_500_000_000.0, 120_000_000.0, 0.06, 4, 1),
    "DOGE": AssetSpec("DOGE", 0.2, 0.010, 9_000_000_000.0, 900_000_000.0, 0.07, 5, 0),
    "PEPE": AssetSpec("PEPE", 0.000012, 0.013, 6.0e12, 9.0e11, 0.08, 10, 0,
                      int(datetime(2023, 5, 5, tzinfo=UTC).timestamp() * 1000)),
}


def synthetic(n: int) -> list[str]:
    """Names of ``n`` extra synthetic assets ``S001..Snnn`` (for 200-instrument benchmarks)."""
    return [f"S{i:03d}" for i in range(1, n + 1)]


def asset_key(name: str) -> int:
    return zlib.crc32(name.encode())


def spec_for(name: str) -> AssetSpec:
    if name in SPECS:
        return SPECS[name]
    rng = np.random.default_rng([asset_key(name), 99])
    price = float(10 ** rng.uniform(-1.5, 2.5))
    dec = max(2, int(4 - np.floor(np.log10(price))))
    return AssetSpec(
        name,
        price,
        float(rng.uniform(0.008, 0.016)),
        float(rng.uniform(2e6, 5e7) / price),
        float(rng.uniform(2e5, 5e6) / price),
        float(rng.uniform(0.0, 0.08)),
        dec,
        max(0, min(3, 3 - int(np.floor(np.log10(price))) + 1)),
        int(datetime(2021, 1, 1, tzinfo=UTC).timestamp() * 1000),
    )


def to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def hour_of(ms: int) -> int:
    """Hour index containing instant ``ms`` (floor)."""
    return (int(ms) - GENESIS_MS) // HOUR_MS


def hour_ms(h):
    return GENESIS_MS + np.asarray(h, dtype=np.int64) * HOUR_MS


@lru_cache(maxsize=4096)
def _crash_weights(length: int) -> np.ndarray:
    w = np.exp(-np.arange(length) / 2.5)
    return w / w.sum()


@lru_cache(maxsize=4096)
def _trapezoid(length: int, up: float = 0.3, down: float = 0.25) -> np.ndarray:
    i = np.arange(length, dtype=float) + 0.5
    a = max(1.0, length * up)
    b = max(1.0, length * down)
    return np.clip(np.minimum(i / a, (length - i) / b), 0.0, 1.0)


@dataclass
class AssetData:
    spec: AssetSpec
    n: int  # hours generated
    px: np.ndarray  # n+1 points
    hi: np.ndarray | None
    lo: np.ndarray | None
    prem: np.ndarray
    mark_prem: np.ndarray
    oi: np.ndarray
    g: np.ndarray
    ta: np.ndarray
    tp: np.ndarray
    liq_long: np.ndarray
    liq_short: np.ndarray
    vol: np.ndarray
    basis_ann: np.ndarray
    squeeze: np.ndarray  # bool per hour: inside a squeeze
    crash: np.ndarray  # bool per hour: inside a crash
    extra: dict = field(default_factory=dict)


class Market:
    """Deterministic market for a universe of assets."""

    def __init__(self, seed: int = 7, universe: list[str] | None = None, cache_size: int = 64):
        self.seed = int(seed)
        self.universe = list(universe) if universe else list(DEFAULT_UNIVERSE)
        self._cache: OrderedDict[str, AssetData] = OrderedDict()
        self._cache_size = max(cache_size, min(len(self.universe), 64))
        self._lock = threading.RLock()
        self._asset_locks: dict[str, threading.Lock] = {}
        self._common: dict | None = None
        self._table = np.random.default_rng([self.seed, 0x7AB1E]).standard_normal(TABLE_SIZE)
        self._utable = np.random.default_rng([self.seed, 0x7AB1F]).random(TABLE_SIZE)

    # ------------------------------------------------------------------ helpers
    def spec(self, asset: str) -> AssetSpec:
        return spec_for(asset)

    def noise(self, idx, salt: int) -> np.ndarray:
        """Deterministic N(0,1) noise for integer index array ``idx`` and a salt."""
        i = (np.asarray(idx, dtype=np.int64) * 2654435761 + salt * 40503 + 12345) & TABLE_MASK
        return self._table[i]

    def unoise(self, idx, salt: int) -> np.ndarray:
        i = (np.asarray(idx, dtype=np.int64) * 2246822519 + salt * 97 + 777) & TABLE_MASK
        return self._utable[i]

    def _nblocks_for(self, hour: int) -> int:
        return max(1, hour // BLOCK + 2)

    # ------------------------------------------------------------------ generation
    def _common_blocks(self, nblocks: int) -> dict:
        c = self._common
        if c is not None and c["nblocks"] >= nblocks:
            return c
        nblocks = max(nblocks, c["nblocks"] + 64 if c else nblocks)
        mret = np.empty(nblocks * BLOCK)
        crash_start = np.empty(nblocks, dtype=np.int64)
        crash_len = np.empty(nblocks, dtype=np.int64)
        crash_mag = np.empty(nblocks)
        crash_first = np.empty(nblocks, dtype=bool)
        for b in range(nblocks):
            r = np.random.default_rng([self.seed, 0xA11, b])
            mret[b * BLOCK:(b + 1) * BLOCK] = r.standard_normal(BLOCK)
            first = bool(r.random() < 0.5)
            crash_first[b] = first
            half0 = 0 if first else BLOCK // 2
            crash_len[b] = r.integers(3, 9)
            crash_start[b] = b * BLOCK + half0 + r.integers(8, BLOCK // 2 - 20)
            crash_mag[b] = r.uniform(0.7, 1.5)
        c = dict(nblocks=nblocks, mret=mret, crash_start=crash_start, crash_len=crash_len,
                 crash_mag=crash_mag, crash_first=crash_first)
        self._common = c
        return c

    def _generate(self, asset: str, nblocks: int) -> AssetData:
        sp = spec_for(asset)
        key = asset_key(asset)
        com = self._common_blocks(nblocks)
        n = nblocks * BLOCK
        t = np.arange(n + 1, dtype=float)
        Z = np.empty((10, n))
        ev_ret = np.zeros(n)
        ev_oi = np.zeros(n)
        ev_f = np.zeros(n)
        ev_g = np.zeros(n)
        ev_tp = np.zeros(n)
        sq = np.zeros(n, dtype=bool)
        cr = np.zeros(n, dtype=bool)
        vs = sp.vol / 0.0055  # volatility scale vs BTC
        crash_first = com["crash_first"]
        crash_start = com["crash_start"]
        crash_len = com["crash_len"]
        crash_mag = com["crash_mag"]
        half = BLOCK // 2
        for b in range(nblocks):
            r = np.random.default_rng([self.seed, key, b])
            base = b * BLOCK
            zb = r.standard_normal((10, BLOCK))
            Z[:, base:base + BLOCK] = zb
            u = r.random(12).tolist()
            # --- squeeze (asset specific) in the half without the market crash
            half0 = half if crash_first[b] else 0
            L = 10 + int(u[0] * 21)
            s0 = base + half0 + 4 + int(u[1] * (half - L - 8))
            up = max(2, int(round(L * 0.7)))
            S = (0.035 + u[2] * 0.065) * vs
            ev_ret[s0:s0 + up] += S / up * (1 + 0.3 * zb[9, :up])
            ev_oi[s0:s0 + L] += (0.08 + u[3] * 0.14) / L
            ev_f[s0:s0 + L] += (0.0015 + u[4] * 0.0095) * _trapezoid(L)
            dg = 0.07 + u[5] * 0.09
            gl = min(L + 12, n - s0)
            tz = _trapezoid(gl, 0.25, 0.45)
            ev_g[s0:s0 + gl] += dg * tz
            ev_tp[s0:s0 + gl] += 0.6 * dg * tz
            sq[s0:s0 + L] = True
            # --- crash (market wide timing, asset magnitude)
            c0 = int(crash_start[b])
            Lc = int(crash_len[b])
            C = crash_mag[b] * (0.05 + u[6] * 0.06) * vs
            w = _crash_weights(Lc)
            ev_ret[c0:c0 + Lc] -= C * w
            ev_oi[c0:c0 + Lc] -= (0.10 + u[7] * 0.14) * w
            cl = min(Lc + 6, n - c0)
            ev_f[c0:c0 + cl] -= (0.0002 + u[8] * 0.001) * _trapezoid(cl, 0.2, 0.6)
            gl = min(Lc + 30, n - c0)
            tz = _trapezoid(gl, 0.1, 0.8)
            ev_g[c0:c0 + gl] -= (0.04 + u[9] * 0.06) * tz
            ev_tp[c0:c0 + gl] -= (0.03 + u[10] * 0.05) * tz
            cr[c0:c0 + Lc] = True
            # --- a mild bounce after the crash
            bl = min(24, n - (c0 + Lc))
            ev_ret[c0 + Lc:c0 + Lc + bl] += C * 0.3 / max(bl, 1)

        eps = Z[0] * np.exp(0.3 * Z[9]) * np.exp(-0.09)  # fat tails via stochastic volatility
        eps_oi, eps_f, eps_g, eps_t, eps_p, eps_b, liq_n, vol_n = Z[1:9]
        phase = (key % 1000) / 1000.0 * 2 * np.pi
        anchor = (np.log(sp.price)
                  + 0.20 * np.sin(2 * np.pi * t / (24 * 365 * 1.7) + phase)
                  + 0.08 * np.sin(2 * np.pi * t / (24 * 97) + 2 * phase))
        beta = 0.75 if asset != "BTC" else 1.0
        idio = 0.6 if asset != "BTC" else 0.0
        innov = sp.vol * (beta * com["mret"][:n] + idio * eps) / np.sqrt(beta ** 2 + idio ** 2) + ev_ret
        k = 1.0 / 480.0
        dev = lfilter([1.0], [1.0, -(1.0 - k)], innov)
        x = anchor.copy()
        x[1:] += dev
        px = np.exp(x)
        ret = np.diff(x)  # bar returns, len n

        hi = lo = None  # intra-hour extremes are computed lazily per chunk (see _hilo)

        # open interest
        kz = 1.0 / 168.0
        mom = np.concatenate([[0.0], ret])
        oi_innov = 0.004 * eps_oi + ev_oi + 0.35 * mom[:n]
        oi_dev = lfilter([1.0], [1.0, -(1.0 - kz)], oi_innov)
        oi_pts = np.empty(n + 1)
        oi_pts[0] = 0.0
        oi_pts[1:] = oi_dev
        oi = sp.oi * np.exp(0.15 * np.sin(2 * np.pi * t / (24 * 300) + phase) + oi_pts)

        # 24h momentum at bar h
        xm = np.concatenate([np.full(24, x[0]), x])
        mom24 = x[:n] - xm[:n]
        fnoise = lfilter([1.0], [1.0, -0.9], 0.00005 * eps_f)
        prem = 0.0001 + fnoise + 0.004 * mom24 / vs + ev_f
        prem = np.clip(prem, -0.01, 0.02)
        mark_prem = lfilter([0.3], [1.0, -0.7], prem)

        gn = lfilter([1.0], [1.0, -0.985], 0.0035 * eps_g)
        g_bars = 0.5 + sp.long_bias + gn - 0.25 * mom24 + ev_g
        g = np.clip(np.concatenate([g_bars[:1], g_bars]), 0.28, 0.80)
        tan = lfilter([1.0], [1.0, -0.95], 0.004 * eps_t)
        ta = np.clip(g + 0.015 + np.concatenate([tan[:1], tan]), 0.25, 0.82)
        tpn = lfilter([1.0], [1.0, -0.97], 0.006 * eps_p)
        tpb = 0.5 + 0.55 * (g_bars - 0.5) + tpn + ev_tp
        tp = np.clip(np.concatenate([tpb[:1], tpb]), 0.25, 0.80)

        oi_usd = oi[:n] * px[:n]
        doi = np.diff(oi)
        lv = np.exp(0.8 * liq_n)
        liq_long = oi_usd * (2.5e-5 * lv + 0.10 * np.maximum(0.0, -ret - 0.5 * sp.vol)) \
            + 0.35 * np.maximum(0.0, -doi) * px[:n] * (ret < 0)
        liq_short = oi_usd * (2.0e-5 * lv[::-1] + 0.08 * np.maximum(0.0, ret - 0.5 * sp.vol)) \
            + 0.25 * np.maximum(0.0, -doi) * px[:n] * (ret > 0)
        liq_short = liq_short + oi_usd * 0.004 * ev_oi.clip(0) * sq  # shorts squeezed

        vol = sp.volume * np.exp(0.3 * vol_n - 0.045) * (1.0 + 1.2 * np.abs(ret) / sp.vol)
        vol = vol * (1.0 + 2.0 * cr)

        bn = lfilter([1.0], [1.0, -0.99], 0.002 * eps_b)
        basis_ann = np.clip(0.09 + 0.03 * np.sin(2 * np.pi * t[:n] / (24 * 200) + phase) + bn
                            + 8.0 * (prem - 0.0001), 0.02, 0.30)

        f32 = np.float32  # non-price series: float32 halves the cache footprint
        return AssetData(sp, n, px, hi, lo, prem, mark_prem.astype(f32), oi.astype(f32), g.astype(f32),
                         ta.astype(f32), tp.astype(f32), liq_long.astype(f32), liq_short.astype(f32),
                         vol.astype(f32), basis_ann.astype(f32), sq, cr)

    def _minute_matrix(self, o, c, hours, vol, key, kind_salt=0):
        """Minute closes/highs/lows (shape (len(hours), 60)) of the Brownian bridge from o to c."""
        hours = np.asarray(hours, dtype=np.int64)
        idx = (hours[:, None] * 60 + np.arange(60)[None, :]) + (key & 0xFFFF) * 7919
        z = self.noise(idx, 1)
        w = np.cumsum(z, axis=1)
        frac = np.arange(1, 61) / 60.0
        bridge = w - frac[None, :] * w[:, -1:]
        sig = vol / np.sqrt(60.0) * 0.9
        lo_ = np.log(o)[:, None]
        lc = np.log(c)[:, None]
        path = lo_ + frac[None, :] * (lc - lo_) + sig * bridge
        closes = np.exp(path)
        opens = np.concatenate([np.exp(lo_), closes[:, :-1]], axis=1)
        wick = np.abs(self.noise(idx, 2)) * sig * 0.35
        wick2 = np.abs(self.noise(idx, 3)) * sig * 0.35
        highs = np.maximum(opens, closes) * np.exp(wick)
        lows = np.minimum(opens, closes) * np.exp(-wick2)
        return closes, highs, lows

    HILO_CHUNK = 2048

    def _hilo(self, d: AssetData, asset: str, h: np.ndarray):
        """Bar high/low of the base (index) minute path for hour bars ``h`` (lazy, chunk cached)."""
        h = np.asarray(h, dtype=np.int64)
        out_h = np.empty(h.shape)
        out_l = np.empty(h.shape)
        if h.size == 0:
            return out_h, out_l
        cache = d.extra.setdefault("hilo", {})
        ch = h // self.HILO_CHUNK
        key = asset_key(asset)
        for c in np.unique(ch):
            c = int(c)
            arr = cache.get(c)
            if arr is None:
                a = c * self.HILO_CHUNK
                e = min(d.n, a + self.HILO_CHUNK)
                _, mh, ml = self._minute_matrix(d.px[a:e], d.px[a + 1:e + 1], np.arange(a, e), d.spec.vol, key)
                arr = (mh.max(axis=1), ml.min(axis=1))
                cache[c] = arr
            m = ch == c
            idx = h[m] - c * self.HILO_CHUNK
            out_h[m] = arr[0][idx]
            out_l[m] = arr[1][idx]
        return out_h, out_l

    def data(self, asset: str, upto_hour: int | None = None) -> AssetData:
        """Generated series of ``asset`` covering at least hour ``upto_hour``."""
        need = self._nblocks_for(upto_hour if upto_hour is not None else hour_of(to_ms(datetime.now(UTC))))
        with self._lock:
            d = self._cache.get(asset)
            if d is not None and d.n >= need * BLOCK:
                self._cache.move_to_end(asset)
                return d
            lock = self._asset_locks.setdefault(asset, threading.Lock())
        with lock:
            with self._lock:
                d = self._cache.get(asset)
                if d is not None and d.n >= need * BLOCK:
                    return d
                com = self._common_blocks(need)
                nb = max(need, com["nblocks"])
            d = self._generate(asset, nb)
            with self._lock:
                self._cache[asset] = d
                self._cache.move_to_end(asset)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return d

    # ------------------------------------------------------------------ accessors
    def venue_mult(self, asset: str, venue: str, h) -> np.ndarray:
        """Multiplicative venue offset of the perp price at points ``h``."""
        salt = _VENUE_SALT.get(venue, 50) * 131 + (asset_key(asset) & 0xFFF)
        return 1.0 + VENUE_BIAS.get(venue, 0.0) + 0.00008 * self.noise(h, salt)

    def point_price(self, asset: str, h, kind: str = "perp", venue: str = "binance") -> np.ndarray:
        """Price at instants ``h`` (array of hour indices) for kind perp/mark/index/spot."""
        h = np.asarray(h, dtype=np.int64)
        d = self.data(asset, int(h.max()) + 1 if h.size else 0)
        return d.px[h] * self._mult(d, asset, h, kind, venue)

    def _mult(self, d: AssetData, asset: str, h, kind: str, venue: str) -> np.ndarray:
        h = np.asarray(h, dtype=np.int64)
        hb = np.clip(h, 0, d.n - 1)
        if kind == "index":
            return np.ones(h.shape)
        if kind == "spot":
            salt = _VENUE_SALT["spot"] * 131 + (asset_key(asset) & 0xFFF) + hash_salt(venue)
            return 1.0 + 0.00005 * self.noise(h, salt)
        if kind == "mark":
            return 1.0 + d.mark_prem[hb] + VENUE_BIAS.get(venue, 0.0) * 0.5
        # perp
        return (1.0 + d.prem[hb]) * self.venue_mult(asset, venue, h)

    def hour_bars(self, asset: str, h0: int, h1: int, kind: str = "perp", venue: str = "binance",
                  vol_share: float | None = None):
        """OHLCV of hour bars ``h0 <= h < h1``; returns dict of arrays (volume in base coin)."""
        h = np.arange(h0, h1, dtype=np.int64)
        d = self.data(asset, h1 + 1)
        m0 = self._mult(d, asset, h, kind, venue)
        m1 = self._mult(d, asset, h + 1, kind, venue)
        o = d.px[h] * m0
        c = d.px[h + 1] * m1
        bh, bl = self._hilo(d, asset, h)
        hi = np.maximum(bh * np.maximum(m0, m1), np.maximum(o, c))
        lo = np.minimum(bl * np.minimum(m0, m1), np.minimum(o, c))
        share = VENUE_VOL_SHARE.get(venue, 0.1) if vol_share is None else vol_share
        v = d.vol[h] * share * (1.0 + 0.05 * self.noise(h, 900 + _VENUE_SALT.get(venue, 50)))
        return {"h": h, "o": o, "h_": hi, "l": lo, "c": c, "v": v}

    def minute_bars(self, asset: str, m0: int, m1: int, kind: str = "perp", venue: str = "binance",
                    vol_share: float | None = None):
        """OHLCV of minute bars with minute index (since genesis) in ``[m0, m1)``."""
        if m1 <= m0:
            e = np.zeros(0)
            return {"m": np.zeros(0, dtype=np.int64), "o": e, "h_": e, "l": e, "c": e, "v": e}
        hs = m0 // 60
        he = (m1 - 1) // 60 + 1
        hours = np.arange(hs, he, dtype=np.int64)
        d = self.data(asset, he + 1)
        sp = d.spec
        closes, highs, lows = self._minute_matrix(d.px[hours], d.px[hours + 1], hours, sp.vol, asset_key(asset))
        mult0 = self._mult(d, asset, hours, kind, venue)
        mult1 = self._mult(d, asset, hours + 1, kind, venue)
        frac = np.arange(1, 61) / 60.0
        mult_c = mult0[:, None] + frac[None, :] * (mult1 - mult0)[:, None]
        mult_o = mult0[:, None] + (frac - 1 / 60.0)[None, :] * (mult1 - mult0)[:, None]
        opens = np.concatenate([d.px[hours][:, None], closes[:, :-1]], axis=1)
        o = (opens * mult_o).ravel()
        c = (closes * mult_c).ravel()
        hi = np.maximum(highs * np.maximum(mult_o, mult_c), 0).ravel()
        lo = (lows * np.minimum(mult_o, mult_c)).ravel()
        hi = np.maximum(hi, np.maximum(o, c))
        lo = np.minimum(lo, np.minimum(o, c))
        share = VENUE_VOL_SHARE.get(venue, 0.1) if vol_share is None else vol_share
        mins = (hours[:, None] * 60 + np.arange(60)[None, :]).ravel()
        wv = np.abs(self.noise(mins, 4)) + 0.3
        wv = wv.reshape(len(hours), 60)
        wv = wv / wv.sum(axis=1, keepdims=True)
        v = (d.vol[hours][:, None] * wv).ravel() * share
        sel = slice(m0 - hs * 60, m1 - hs * 60)
        return {"m": mins[sel], "o": o[sel], "h_": hi[sel], "l": lo[sel], "c": c[sel], "v": v[sel]}

    def premium_bars(self, asset: str, h0: int, h1: int, venue: str = "binance"):
        h = np.arange(h0, h1, dtype=np.int64)
        d = self.data(asset, h1 + 1)
        p = d.prem[h]
        pn = d.prem[np.clip(h + 1, 0, d.n - 1)]
        salt = 300 + _VENUE_SALT.get(venue, 50)
        o = p + 0.00003 * self.noise(h, salt)
        c = pn + 0.00003 * self.noise(h + 1, salt)
        spread = np.abs(self.noise(h, salt + 1)) * 0.00008 + 0.00002
        hi = np.maximum(o, c) + spread
        lo = np.minimum(o, c) - spread * 0.8
        return {"h": h, "o": o, "h_": hi, "l": lo, "c": c}

    def open_interest(self, asset: str, t_ms, venue: str = "binance") -> np.ndarray:
        """One-sided OI in base coin at instants ``t_ms`` (interpolated between hours)."""
        return self._interp(asset, "oi", t_ms) * VENUE_OI_SHARE.get(venue, 0.1) * (
            1.0 + 0.01 * self._slow_noise(asset, t_ms, 500 + _VENUE_SALT.get(venue, 50)))

    def _slow_noise(self, asset, t_ms, salt):
        t = np.asarray(t_ms, dtype=np.int64)
        hf = (t - GENESIS_MS) / HOUR_MS / 6.0
        i0 = np.floor(hf).astype(np.int64)
        f = hf - i0
        s = salt * 7 + (asset_key(asset) & 0xFFF)
        return (1 - f) * self.noise(i0, s) + f * self.noise(i0 + 1, s)

    def _interp(self, asset: str, attr: str, t_ms) -> np.ndarray:
        t = np.asarray(t_ms, dtype=np.int64)
        hf = (t - GENESIS_MS) / HOUR_MS
        i0 = np.floor(hf).astype(np.int64)
        d = self.data(asset, int(i0.max()) + 2 if i0.size else 0)
        f = hf - i0
        arr = getattr(d, attr)
        return (1 - f) * arr[i0] + f * arr[i0 + 1]

    def long_share(self, asset: str, t_ms, kind: str = "global", venue: str = "binance") -> np.ndarray:
        """Long share (0..1) at instants ``t_ms``; kind global/top_account/top_position."""
        attr = {"global": "g", "top_account": "ta", "top_position": "tp"}[kind]
        v = self._interp(asset, attr, t_ms)
        salt = 700 + _VENUE_SALT.get(venue, 50) * 3 + {"g": 0, "ta": 1, "tp": 2}[attr]
        t = np.asarray(t_ms, dtype=np.int64)
        v = v + 0.004 * self.noise((t - GENESIS_MS) // 300_000, salt)
        if venue != "binance":
            v = v + 0.02 * self._slow_noise(asset, t_ms, salt)
        return np.clip(v, 0.2, 0.85)

    def price_at(self, asset: str, t_ms, kind: str = "perp", venue: str = "binance") -> np.ndarray:
        """Price at arbitrary instants (linear between hourly points, venue/kind multipliers)."""
        t = np.asarray(t_ms, dtype=np.int64)
        hf = (t - GENESIS_MS) / HOUR_MS
        i0 = np.floor(hf).astype(np.int64)
        f = hf - i0
        d = self.data(asset, int(i0.max()) + 2 if i0.size else 0)
        p0 = d.px[i0] * self._mult(d, asset, i0, kind, venue)
        p1 = d.px[i0 + 1] * self._mult(d, asset, i0 + 1, kind, venue)
        return (1 - f) * p0 + f * p1

    def price_now(self, asset: str, now_ms: int, kind: str = "perp", venue: str = "binance") -> float:
        """Price at the last full minute before ``now_ms`` (from the intra-hour minute path)."""
        m = (int(now_ms) - GENESIS_MS) // MINUTE_MS
        b = self.minute_bars(asset, m - 1, m, kind, venue)
        return float(b["c"][-1])

    def premium(self, asset: str, h0: int, h1: int) -> np.ndarray:
        """Hourly average premium ratio for bars ``h0..h1-1``."""
        d = self.data(asset, h1 + 1)
        return d.prem[h0:h1]

    def funding(self, asset: str, settle_ms, interval_h: int, venue: str = "binance",
                cap: float = 0.02, clamp: float = 0.0005, interest: float = 0.0001) -> np.ndarray:
        """Funding rate per interval settling at ``settle_ms`` (Binance-style formula).

        rate = (avg premium + clamp(interest - avg premium, +-clamp)) * interval/8, where the
        premium is averaged over the ``interval_h`` hours before settlement.
        """
        t = np.asarray(settle_ms, dtype=np.int64)
        if t.size == 0:
            return np.zeros(0)
        he = (t - GENESIS_MS) // HOUR_MS
        d = self.data(asset, int(he.max()) + 1)
        cs = np.concatenate([[0.0], np.cumsum(d.prem)])
        hs = np.maximum(he - interval_h, 0)
        avg = (cs[he] - cs[hs]) / np.maximum(he - hs, 1)
        salt = 800 + _VENUE_SALT.get(venue, 50)
        avg = avg * (1.0 + 0.04 * self.noise(he, salt)) + 0.000004 * self.noise(he, salt + 1)
        rate8 = avg + np.clip(interest - avg, -clamp, clamp)
        return np.clip(rate8, -cap, cap) * interval_h / 8.0

    def basis_ann(self, asset: str, h) -> np.ndarray:
        h = np.asarray(h, dtype=np.int64)
        d = self.data(asset, int(h.max()) + 1 if h.size else 0)
        return d.basis_ann[np.clip(h, 0, d.n - 1)]

    def liquidations_usd(self, asset: str, h0: int, h1: int):
        """Global (long_usd, short_usd) liquidated during bars ``h0..h1-1``."""
        d = self.data(asset, h1 + 1)
        return d.liq_long[h0:h1], d.liq_short[h0:h1]

    def liquidation_events(self, asset: str, h0: int, h1: int, venue: str = "binance",
                           share: float | None = None, max_per_hour: int = 1500, min_per_hour: int = 120):
        """Discrete liquidation orders during bars ``h0..h1-1`` for a venue.

        Returns dict of arrays sorted by time: ``ts`` (ms), ``long`` (bool: a long position was
        liquidated), ``price`` (bankruptcy/order price), ``avg_price``, ``qty`` (base coin),
        ``usd``.
        """
        share = VENUE_OI_SHARE.get(venue, 0.1) if share is None else share
        d = self.data(asset, h1 + 1)
        out = {k: [] for k in ("ts", "long", "price", "avg_price", "qty", "usd")}
        salt = 1000 + _VENUE_SALT.get(venue, 50) * 17 + (asset_key(asset) & 0xFFF)
        for side, arr in ((True, d.liq_long), (False, d.liq_short)):
            usd_h = arr[h0:h1] * share
            hours = np.arange(h0, h1, dtype=np.int64)
            # Rate of a busy market: a typical forced order is a few thousand USD, and a large perp (BTC,
            # ETH, SOL) sees liquidations every minute or so even in a calm hour and several per second in
            # a volatile one. Binance's snapshot stream pushes at most one per symbol per second
            # (3600/h), so the hourly count per side stays between min_per_hour and max_per_hour; the
            # hour's USD total is unchanged (split over the events).
            typical = 2_500.0
            cnt = np.minimum(np.ceil(usd_h / typical * (0.5 + self.unoise(hours, salt + side))), max_per_hour)
            cnt = np.where(usd_h > 0, np.maximum(cnt, min_per_hour), 0).astype(np.int64)
            tot = int(cnt.sum())
            if tot == 0:
                continue
            hh = np.repeat(hours, cnt)
            j = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            key = hh * 1009 + j
            wts = np.exp(1.3 * self.noise(key, salt + 2 + side))
            wsum = np.bincount(hh - h0, weights=wts, minlength=h1 - h0)
            usd = wts / wsum[hh - h0] * usd_h[hh - h0]
            frac = self.unoise(key, salt + 4 + side)
            ts = hour_ms(hh) + (frac * HOUR_MS).astype(np.int64)
            # price along the hour path (linear between open and close) plus noise
            p = d.px[hh] + frac * (d.px[hh + 1] - d.px[hh])
            p = p * (1.0 + 0.0008 * self.noise(key, salt + 6 + side))
            bk = p * (1.0 - 0.004 if side else 1.0 + 0.004)
            out["ts"].append(ts)
            out["long"].append(np.full(tot, side))
            out["price"].append(bk)
            out["avg_price"].append(p)
            out["qty"].append(usd / p)
            out["usd"].append(usd)
        if not out["ts"]:
            z = np.zeros(0)
            return {"ts": np.zeros(0, dtype=np.int64), "long": np.zeros(0, dtype=bool), "price": z,
                    "avg_price": z, "qty": z, "usd": z}
        res = {k: np.concatenate(v) for k, v in out.items()}
        order = np.argsort(res["ts"], kind="stable")
        return {k: v[order] for k, v in res.items()}

    def regimes(self, asset: str, h0: int, h1: int):
        d = self.data(asset, h1 + 1)
        return d.squeeze[h0:h1], d.crash[h0:h1]


def hash_salt(s: str) -> int:
    return zlib.crc32(s.encode()) & 0xFFF
