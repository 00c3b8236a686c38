"""Shared plumbing for the simulated venues: requests/responses, rate limits, bars."""

from __future__ import annotations

import calendar
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from .market import DAY_MS, GENESIS_MS, HOUR_MS, MINUTE_MS

# --------------------------------------------------------------------------- HTTP objects


@dataclass
class Request:
    method: str
    path: str  # path below the venue prefix, e.g. /fapi/v1/klines
    query: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    client: str = "127.0.0.1"

    _json: Any = None

    def json(self) -> Any:
        if self._json is None:
            self._json = orjson.loads(self.body) if self.body else {}
        return self._json


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY), "application/json",
                    dict(headers or {}))


def text_response(text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8",
                  headers: dict[str, str] | None = None) -> Response:
    return Response(status, text.encode(), content_type, dict(headers or {}))


class ParamError(Exception):
    """Raised by handlers for invalid parameters; venues turn it into their error shape."""

    def __init__(self, msg: str, code: Any = None, status: int = 400):
        super().__init__(msg)
        self.msg = msg
        self.code = code
        self.status = status


Handler = Callable[[Request], Response]

# --------------------------------------------------------------------------- rate limiting


class WindowLimiter:
    """Fixed (wall-clock aligned) window counter, like the exchanges' per-minute weights."""

    def __init__(self, limit: float, window_s: float):
        self.limit = max(1, int(round(limit)))
        self.window = float(window_s)
        self.start = 0.0
        self.used = 0
        self.lock = threading.Lock()

    def _roll(self, now: float) -> None:
        ws = math.floor(now / self.window) * self.window
        if ws != self.start:
            self.start = ws
            self.used = 0

    def try_consume(self, weight: int, now: float | None = None) -> tuple[bool, int, float]:
        """Return (ok, used_after, retry_after_seconds)."""
        now = time.time() if now is None else now
        with self.lock:
            self._roll(now)
            if self.used + weight > self.limit:
                return False, self.used, max(0.001, self.start + self.window - now)
            self.used += weight
            return True, self.used, 0.0

    def peek(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self.lock:
            self._roll(now)
            return self.used


class BanState:
    """Tracks clients that keep hammering after a 429 (-> 418 ban)."""

    def __init__(self, strikes_to_ban: int = 10, ban_seconds: float = 120.0):
        self.backoff_until = 0.0
        self.banned_until = 0.0
        self.strikes = 0
        self.strikes_to_ban = strikes_to_ban
        self.ban_seconds = ban_seconds
        self.lock = threading.Lock()

    def check(self, now: float) -> tuple[str, float]:
        """'ok', 'backoff' (still told to wait: counts a strike) or 'banned'."""
        with self.lock:
            if now < self.banned_until:
                return "banned", self.banned_until - now
            if now < self.backoff_until:
                self.strikes += 1
                if self.strikes >= self.strikes_to_ban:
                    self.banned_until = now + self.ban_seconds
                    self.strikes = 0
                    return "banned", self.ban_seconds
                return "backoff", self.backoff_until - now
            if self.backoff_until and now >= self.backoff_until:
                self.strikes = 0
            return "ok", 0.0

    def told_to_wait(self, now: float, seconds: float) -> None:
        with self.lock:
            self.backoff_until = max(self.backoff_until, now + seconds)


# --------------------------------------------------------------------------- params


def p_int(q: dict[str, str], name: str, default: int | None = None, err: Callable[[str], Exception] | None = None):
    v = q.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        try:
            f = float(v)
            if f.is_integer():
                return int(f)
        except ValueError:
            pass
        raise (err(name) if err else ParamError(f"Illegal characters found in parameter '{name}'")) from None


# --------------------------------------------------------------------------- formatting


def fmt(values, decimals: int) -> list[str]:
    f = f"{{:.{int(decimals)}f}}"
    return [f.format(v) for v in np.asarray(values, dtype=float).tolist()]


def price_decimals(price: float, sig: int = 6) -> int:
    if price <= 0:
        return 2
    return max(0, min(10, sig - 1 - int(math.floor(math.log10(price)))))


# --------------------------------------------------------------------------- bars

INTERVAL_MS = {
    "1m": MINUTE_MS, "3m": 3 * MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS, "1h": HOUR_MS, "2h": 2 * HOUR_MS, "4h": 4 * HOUR_MS,
    "6h": 6 * HOUR_MS, "8h": 8 * HOUR_MS, "12h": 12 * HOUR_MS, "1d": DAY_MS,
    "3d": 3 * DAY_MS, "1w": 7 * DAY_MS, "1M": -1,
}
WEEK_OFFSET_MS = 4 * DAY_MS  # 1970-01-01 was a Thursday; weeks open on Monday


def _month_start(ms: int, add: int = 0) -> int:
    d = datetime.fromtimestamp(ms / 1000, tz=UTC)
    y, m = d.year, d.month - 1 + add
    y += m // 12
    m = m % 12 + 1
    return calendar.timegm((y, m, 1, 0, 0, 0)) * 1000


def bar_opens(interval_ms: int, start: int | None, end: int | None, limit: int, now_ms: int,
              first_ms: int, completed_only: bool = True, newest_first_limit: bool | None = None,
              offset_ms: int | None = None) -> np.ndarray:
    """Open times of bars in the window, honouring Binance-like paging rules.

    Bars must open at/after ``first_ms`` and (if ``completed_only``) close at/before
    ``now_ms``. With ``start`` the first ``limit`` bars from start are returned, otherwise the
    last ``limit`` bars up to ``end``. ``interval_ms == -1`` means calendar months.
    Returned ascending.
    """
    if newest_first_limit is None:
        newest_first_limit = start is None
    if interval_ms == -1:
        lo = max(first_ms, start if start is not None else first_ms)
        m = _month_start(lo)
        if m < lo:
            m = _month_start(lo, 1)
        opens = []
        hi = now_ms if end is None else min(end, now_ms)
        while m <= hi:
            nxt = _month_start(m, 1)
            if completed_only and nxt > now_ms:
                break
            opens.append(m)
            m = nxt
        arr = np.array(opens, dtype=np.int64)
        return arr[-limit:] if newest_first_limit else arr[:limit]
    off = (WEEK_OFFSET_MS if interval_ms == 7 * DAY_MS else 0) if offset_ms is None else offset_ms
    last_ok = (now_ms - interval_ms) if completed_only else now_ms
    hi = last_ok if end is None else min(end, last_ok)
    lo = first_ms if start is None else max(start, first_ms)
    a = -((-(lo - off)) // interval_ms) * interval_ms + off  # ceil-align
    b = ((hi - off) // interval_ms) * interval_ms + off
    if b < a:
        return np.zeros(0, dtype=np.int64)
    count = (b - a) // interval_ms + 1
    if count > limit:
        if newest_first_limit:
            a = b - (limit - 1) * interval_ms
        else:
            b = a + (limit - 1) * interval_ms
    return np.arange(a, b + 1, interval_ms, dtype=np.int64)


def make_bars(market, asset: str, opens: np.ndarray, interval_ms: int, kind: str = "perp",
              venue: str = "binance", premium: bool = False, vol_share: float | None = None,
              price_mult: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Aggregate market OHLCV into bars opening at ``opens`` (ms, ascending).

    Returns dict open, close_ms, o, h, l, c, v (base coin volume)."""
    n = len(opens)
    if n == 0:
        z = np.zeros(0)
        return {"open": opens, "close_ms": opens, "o": z, "h": z, "l": z, "c": z, "v": z}
    if interval_ms == -1:
        ends = np.array([_month_start(int(x), 1) for x in opens], dtype=np.int64)
    else:
        ends = opens + interval_ms
    if interval_ms != -1 and interval_ms < HOUR_MS:
        m0 = int((opens[0] - GENESIS_MS) // MINUTE_MS)
        m1 = int((ends[-1] - GENESIS_MS) // MINUTE_MS)
        if premium:
            hb = market.premium_bars(asset, m0 // 60, (m1 - 1) // 60 + 1, venue)
            # premium: spread hour values over minutes (flat with small noise)
            mins = np.arange(m0, m1, dtype=np.int64)
            hh = mins // 60 - m0 // 60
            frac = (mins % 60) / 60.0
            base = hb["o"][hh] + frac * (hb["c"][hh] - hb["o"][hh])
            nz = market.noise(mins, 4242) * 0.00002
            o = base + nz
            c = np.concatenate([o[1:], [hb["c"][hh[-1]]]])
            hi = np.maximum(o, c) + np.abs(market.noise(mins, 4243)) * 0.00002
            lo = np.minimum(o, c) - np.abs(market.noise(mins, 4244)) * 0.00002
            b = {"o": o, "h_": hi, "l": lo, "c": c, "v": np.zeros(len(mins))}
        else:
            b = market.minute_bars(asset, m0, m1, kind, venue, vol_share)
        step = interval_ms // MINUTE_MS
        idx = ((opens - GENESIS_MS) // MINUTE_MS - m0).astype(np.int64)
        last = idx + step - 1
    else:
        h0 = int((opens[0] - GENESIS_MS) // HOUR_MS)
        h1 = int((ends[-1] - GENESIS_MS) // HOUR_MS)
        if premium:
            b = market.premium_bars(asset, h0, h1, venue)
            b["v"] = np.zeros(h1 - h0)
        else:
            b = market.hour_bars(asset, h0, h1, kind, venue, vol_share)
        idx = ((opens - GENESIS_MS) // HOUR_MS - h0).astype(np.int64)
        last = ((ends - GENESIS_MS) // HOUR_MS - h0 - 1).astype(np.int64)
    o = b["o"][idx]
    c = b["c"][last]
    hi = np.maximum.reduceat(b["h_"], idx)[:n] if n else b["h_"][:0]
    lo = np.minimum.reduceat(b["l"], idx)[:n]
    v = np.add.reduceat(b["v"], idx)[:n]
    # reduceat runs to the next index; the last bar runs to the end of the array which is its end
    if price_mult is not None:
        mlt = price_mult(opens)
        mlc = price_mult(ends)
        o = o * mlt
        c = c * mlc
        hi = hi * np.maximum(mlt, mlc)
        lo = lo * np.minimum(mlt, mlc)
    return {"open": opens, "close_ms": ends - 1, "o": o, "h": hi, "l": lo, "c": c, "v": v}


def bar_extras(market, bars: dict[str, np.ndarray], salt: int, trade_usd: float = 9000.0):
    """Quote volume, trade count and taker-buy volume for bars (deterministic)."""
    v = bars["v"]
    avg = (bars["o"] + bars["h"] + bars["l"] + bars["c"]) / 4.0
    qv = v * avg
    key = (bars["open"] // MINUTE_MS).astype(np.int64)
    trades = np.maximum(0, np.round(qv / trade_usd * (1 + 0.1 * market.noise(key, salt)))).astype(np.int64)
    ret = np.log(np.maximum(bars["c"], 1e-300) / np.maximum(bars["o"], 1e-300))
    share = np.clip(0.5 + 8.0 * ret + 0.03 * market.noise(key, salt + 1), 0.05, 0.95)
    return qv, trades, v * share, qv * share


# --------------------------------------------------------------------------- venue base


class Venue:
    """Base class: a route table under one path prefix."""

    prefix = ""
    stats_name = ""

    def __init__(self, sim):
        self.sim = sim
        self.market = sim.market
        self.routes: dict[tuple[str, str], Handler] = {}
        self.setup()

    def setup(self) -> None:  # pragma: no cover - overridden
        pass

    def route(self, method: str, path: str, fn: Handler) -> None:
        self.routes[(method, path)] = fn

    def now_ms(self) -> int:
        return self.sim.now_ms()

    def scale(self, limit: float) -> int:
        return max(1, int(round(limit * self.sim.limits_scale)))

    def window(self, seconds: float) -> float:
        return seconds * self.sim.window_scale

    def find(self, req: Request) -> Handler | None:
        fn = self.routes.get((req.method, req.path))
        if fn is None and req.path.endswith("/") and len(req.path) > 1:
            fn = self.routes.get((req.method, req.path.rstrip("/")))
        elif fn is None:
            fn = self.routes.get((req.method, req.path + "/"))
        return fn

    def handle(self, req: Request) -> Response:
        fn = self.find(req)
        if fn is None:
            return self.not_found(req)
        try:
            return fn(req)
        except ParamError as e:
            return self.error(e)

    def not_found(self, req: Request) -> Response:
        return text_response("Not Found", 404)

    def error(self, e: ParamError) -> Response:
        return json_response({"error": e.msg}, e.status)
