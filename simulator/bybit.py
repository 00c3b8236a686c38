"""Bybit v5 public market data (linear USDT perps and inverse USD perps)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote

import numpy as np

from .common import (
    ParamError,
    Request,
    Response,
    Venue,
    WindowLimiter,
    bar_extras,
    bar_opens,
    fmt,
    json_response,
    make_bars,
    p_int,
    price_decimals,
)
from .market import DAY_MS, GENESIS_MS, HOUR_MS, MINUTE_MS, to_ms

LAUNCH = {
    "BTC": to_ms(datetime(2020, 3, 30, tzinfo=UTC)),
    "ETH": to_ms(datetime(2020, 10, 20, tzinfo=UTC)),
    "SOL": to_ms(datetime(2021, 5, 4, tzinfo=UTC)),
}
INV_LAUNCH = to_ms(datetime(2019, 1, 1, tzinfo=UTC))
RATIO_START = to_ms(datetime(2020, 7, 20, tzinfo=UTC))
PERIODS = {"5min": 5 * MINUTE_MS, "15min": 15 * MINUTE_MS, "30min": 30 * MINUTE_MS, "1h": HOUR_MS,
           "4h": 4 * HOUR_MS, "1d": DAY_MS}
KLINE_IV = {"1": MINUTE_MS, "3": 3 * MINUTE_MS, "5": 5 * MINUTE_MS, "15": 15 * MINUTE_MS, "30": 30 * MINUTE_MS,
            "60": HOUR_MS, "120": 2 * HOUR_MS, "240": 4 * HOUR_MS, "360": 6 * HOUR_MS, "720": 12 * HOUR_MS,
            "D": DAY_MS, "W": 7 * DAY_MS, "M": -1}
INVERSE_ASSETS = ("BTC", "ETH", "SOL", "XRP")
FUNDING_HOURS = 8


def fmt_rate(values) -> list[str]:
    out = []
    for v in np.asarray(values, dtype=float).tolist():
        s = f"{v:.8f}".rstrip("0")
        if s.endswith("."):
            s += "0"
        if s in ("0.0", "-0.0"):
            s = "0"
        out.append(s)
    return out


def fmt_share(values) -> list[str]:
    out = []
    for v in np.asarray(values, dtype=float).tolist():
        s = f"{v:.4f}".rstrip("0").rstrip(".")
        out.append(s or "0")
    return out


@dataclass(frozen=True)
class BSym:
    symbol: str
    asset: str
    category: str  # linear / inverse
    launch: int
    scale: float = 1.0

    @property
    def venue(self) -> str:
        return "bybit" if self.category == "linear" else "bybit_inv"


def parse_cursor(c: str | None) -> int | None:
    """Return the `lasttime` (ms) encoded in a nextPageCursor, or None."""
    if not c:
        return None
    for _ in range(3):
        c2 = unquote(c)
        if c2 == c:
            break
        c = c2
    m = re.search(r"lasttime=(\d+)", c)
    if not m:
        raise ParamError("params error: cursor invalid", 10001)
    v = int(m.group(1))
    return v * 1000 if v < 10**11 else v


def make_cursor(ts_ms: int, idx: int) -> str:
    return f"lastid%3D{idx}%26lasttime%3D{ts_ms // 1000}"


def grid_newest_first(step: int, lo: int, hi: int, limit: int, first: int) -> tuple[np.ndarray, bool]:
    """Grid times in [max(lo, first), hi], newest `limit` of them (descending) + whether older exist."""
    lo = max(lo, first)
    a = -((-lo) // step) * step
    b = (hi // step) * step
    if b < a:
        return np.zeros(0, dtype=np.int64), False
    cnt = (b - a) // step + 1
    more = cnt > limit
    if more:
        a = b - (limit - 1) * step
    return np.arange(b, a - 1, -step, dtype=np.int64), more


class Bybit(Venue):
    prefix = "bybit"

    def setup(self) -> None:
        self.ip = WindowLimiter(self.scale(600), self.window(5))
        self.per_path: dict[str, WindowLimiter] = {}
        self.blocked_until = 0.0
        r = self.route
        r("GET", "/v5/market/time", self.server_time)
        r("GET", "/v5/market/open-interest", self.open_interest)
        r("GET", "/v5/market/funding/history", self.funding_history)
        r("GET", "/v5/market/account-ratio", self.account_ratio)
        r("GET", "/v5/market/kline", lambda q: self.kline(q, "perp"))
        r("GET", "/v5/market/mark-price-kline", lambda q: self.kline(q, "mark"))
        r("GET", "/v5/market/index-price-kline", lambda q: self.kline(q, "index"))
        r("GET", "/v5/market/premium-index-price-kline", lambda q: self.kline(q, "premium"))
        r("GET", "/v5/market/tickers", self.tickers)
        r("GET", "/v5/market/instruments-info", self.instruments)

    # envelope ---------------------------------------------------------------
    def ok(self, result) -> Response:
        return json_response({"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {},
                              "time": self.now_ms()})

    def error(self, e: ParamError) -> Response:
        code = e.code if isinstance(e.code, int) else 10001
        return json_response({"retCode": code, "retMsg": e.msg, "result": {}, "retExtInfo": {},
                              "time": self.now_ms()})

    def handle(self, req: Request) -> Response:
        fn = self.find(req)
        if fn is None:
            return self.not_found(req)
        now = time.time()
        # Bybit v5 rate-limit page: over 600 requests / 5 s per IP -> HTTP 403 "access too frequent", and the
        # client must stop every session for at least 10 minutes. No Retry-After header is documented, so none
        # is sent (the client must know the rule, not read it from us).
        if now < self.blocked_until:
            return Response(403, b"access too frequent", "text/plain")
        ok, used, wait = self.ip.try_consume(1, now)
        if not ok:
            self.blocked_until = now + self.window(600)      # 10 minutes, scaled with window_scale for tests
            return Response(403, b"access too frequent", "text/plain")
        lim = self.per_path.get(req.path)
        if lim is None:
            lim = self.per_path.setdefault(req.path, WindowLimiter(self.scale(120), self.window(1)))
        ok2, used2, _ = lim.try_consume(1, now)
        hdr = {"X-Bapi-Limit": str(lim.limit), "X-Bapi-Limit-Status": str(max(0, lim.limit - used2)),
               "X-Bapi-Limit-Reset-Timestamp": str(int((lim.start + lim.window) * 1000))}
        if not ok2:
            resp = json_response({"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {},
                                  "time": self.now_ms()}, 200, hdr)
            resp.status = 200
            self.sim.stats.throttled[self.prefix] += 1
            return resp
        try:
            resp = fn(req)
        except ParamError as e:
            resp = self.error(e)
        resp.headers.update(hdr)
        return resp

    # symbols ------------------------------------------------------------------
    def symbols(self) -> dict[str, BSym]:
        c = getattr(self, "_syms", None)
        if c is None:
            c = {}
            for a in self.market.universe:
                launch = max(LAUNCH.get(a, self.market.spec(a).listed_ms), to_ms(datetime(2020, 3, 30, tzinfo=UTC)))
                name, sc = (("1000PEPEUSDT", 1000.0) if a == "PEPE" else (f"{a}USDT", 1.0))
                c[name] = BSym(name, a, "linear", launch, sc)
                if a in INVERSE_ASSETS:
                    c[f"{a}USD"] = BSym(f"{a}USD", a, "inverse", max(INV_LAUNCH, self.market.spec(a).listed_ms))
            self._syms = c
        return c

    def sym(self, q: dict[str, str], category_required: bool = True) -> BSym:
        cat = q.get("category")
        if category_required and not cat:
            raise ParamError("params error: Category is invalid", 10001)
        cat = cat or "linear"
        if cat not in ("linear", "inverse", "spot", "option"):
            raise ParamError("params error: Category is invalid", 10001)
        s = q.get("symbol")
        if not s:
            raise ParamError("params error: Symbol is invalid", 10001)
        d = self.symbols()
        if s not in d or d[s].category != cat:
            raise ParamError("params error: Symbol is invalid", 10001)
        return d[s]

    def limit(self, q: dict[str, str], default: int, maximum: int) -> int:
        lim = p_int(q, "limit", default, lambda n: ParamError(f"params error: {n} invalid", 10001))
        if lim < 1 or lim > maximum:
            raise ParamError(f"params error: limit must be in [1, {maximum}]", 10001)
        return lim

    def times(self, q: dict[str, str], a: str = "startTime", b: str = "endTime"):
        err = lambda n: ParamError(f"params error: {n} invalid", 10001)  # noqa: E731
        return p_int(q, a, None, err), p_int(q, b, None, err)

    def pdec(self, s: BSym) -> int:
        p = self.market.spec(s.asset).price * s.scale
        return 2 if p > 1000 else price_decimals(p, 6)

    # endpoints -----------------------------------------------------------------
    def server_time(self, req: Request) -> Response:
        now = self.now_ms()
        return self.ok({"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)})

    def _series_window(self, q: dict[str, str], step: int, first: int, max_limit: int, default_limit: int):
        start, end = self.times(q)
        lim = self.limit(q, default_limit, max_limit)
        now = self.now_ms()
        hi = now
        lo = first
        if end is not None:
            hi = min(end, now)
            if start is not None:
                lo = max(start, first)
        # startTime without endTime is ignored by the live API (ccxt#30014)
        cur = parse_cursor(q.get("cursor"))
        if cur is not None:
            hi = min(hi, cur - 1)
        ts, more = grid_newest_first(step, lo, hi, lim, first)
        cursor = make_cursor(int(ts[-1]), int((ts[-1] - GENESIS_MS) // step)) if (more and len(ts)) else ""
        return ts, cursor

    def open_interest(self, req: Request) -> Response:
        q = req.query
        s = self.sym(q)
        iv = q.get("intervalTime")
        if iv not in PERIODS:
            raise ParamError("params error: intervalTime invalid", 10001)
        ts, cursor = self._series_window(q, PERIODS[iv], s.launch, 200, 50)
        oi = self.market.open_interest(s.asset, ts, s.venue) if len(ts) else np.zeros(0)
        if s.category == "inverse":
            px = self.market.price_at(s.asset, ts, "perp", s.venue)
            single = np.round(oi * px)
            both = single * 2
            bs, ss = fmt(both, 8), fmt(single, 0)
        else:
            single = np.round(oi / s.scale, 3)
            both = single * 2
            bs, ss = fmt(both, 8), fmt(single, 3)
        tl = [str(x) for x in ts.tolist()]
        rows = [{"openInterest": bs[i], "singleOpenInterest": ss[i], "timestamp": tl[i]} for i in range(len(tl))]
        return self.ok({"symbol": s.symbol, "category": s.category, "list": rows, "nextPageCursor": cursor})

    def funding_history(self, req: Request) -> Response:
        q = req.query
        s = self.sym(q)
        start, end = self.times(q)
        lim = self.limit(q, 200, 200)
        if start is not None and end is None:
            raise ParamError("params error: startTime and endTime must be passed together or only endTime", 10001)
        now = self.now_ms()
        hi = now if end is None else min(end, now)
        lo = s.launch + 1 if start is None else max(start, s.launch + 1)
        ts, _ = grid_newest_first(FUNDING_HOURS * HOUR_MS, lo, hi, lim, s.launch + 1)
        rates = self.market.funding(s.asset, ts, FUNDING_HOURS, s.venue, cap=0.005)
        rs = fmt_rate(rates)
        rows = [{"symbol": s.symbol, "fundingRate": rs[i], "fundingRateTimestamp": str(t)}
                for i, t in enumerate(ts.tolist())]
        return self.ok({"category": s.category, "list": rows})

    def account_ratio(self, req: Request) -> Response:
        q = req.query
        s = self.sym(q)
        per = q.get("period")
        if per not in PERIODS:
            raise ParamError("params error: period invalid", 10001)
        ts, cursor = self._series_window(q, PERIODS[per], max(s.launch, RATIO_START), 500, 50)
        ls = np.round(self.market.long_share(s.asset, ts, "global", s.venue), 4)
        b, sl = fmt_share(ls), fmt_share(np.round(1 - ls, 4))
        rows = [{"symbol": s.symbol, "buyRatio": b[i], "sellRatio": sl[i], "timestamp": str(t)}
                for i, t in enumerate(ts.tolist())]
        return self.ok({"list": rows, "nextPageCursor": cursor})

    def kline(self, req: Request, kind: str) -> Response:
        q = req.query
        s = self.sym(q, category_required=False)
        iv = q.get("interval")
        if iv not in KLINE_IV:
            raise ParamError("params error: interval invalid", 10001)
        ivm = KLINE_IV[iv]
        start, end = self.times(q, "start", "end")
        lim = self.limit(q, 200, 1000)
        now = self.now_ms()
        opens = bar_opens(ivm, start, end, lim, now, s.launch, newest_first_limit=True)
        premium = kind == "premium"
        b = make_bars(self.market, s.asset, opens, ivm, "perp" if premium else kind, s.venue, premium=premium)
        n = len(opens)
        ol = [str(x) for x in opens.tolist()]
        if premium:
            cols = [fmt(b[k], 6) for k in ("o", "h", "l", "c")]
        else:
            pd = self.pdec(s)
            cols = [fmt(b[k] * s.scale, pd) for k in ("o", "h", "l", "c")]
        if kind == "perp":
            if s.category == "inverse":
                usd = np.round(b["v"] * (b["o"] + b["c"]) / 2)
                vol, turn = fmt(usd, 0), fmt(b["v"], 8)
            else:
                bb = dict(b)
                qv, _, _, _ = bar_extras(self.market, bb, 23)
                vol, turn = fmt(b["v"] / s.scale, 3), fmt(qv, 4)
            rows = [[ol[i], cols[0][i], cols[1][i], cols[2][i], cols[3][i], vol[i], turn[i]] for i in range(n)]
        else:
            rows = [[ol[i], cols[0][i], cols[1][i], cols[2][i], cols[3][i]] for i in range(n)]
        rows.reverse()
        return self.ok({"symbol": s.symbol, "category": s.category, "list": rows})

    def _ticker(self, s: BSym) -> dict:
        m = self.market
        now = self.now_ms()
        last = m.price_now(s.asset, now, "perp", s.venue)
        mark = m.price_now(s.asset, now, "mark", s.venue)
        idx = m.price_now(s.asset, now, "index", s.venue)
        cur_h = (now - GENESIS_MS) // HOUR_MS
        hb = m.hour_bars(s.asset, cur_h - 24, cur_h, "perp", s.venue)
        prev24 = float(hb["o"][0])
        prev1 = float(hb["o"][-1])
        hi24 = max(float(hb["h_"].max()), last)
        lo24 = min(float(hb["l"].min()), last)
        vol24 = float(hb["v"].sum())
        turn24 = float((hb["v"] * (hb["o"] + hb["c"]) / 2).sum())
        oi1 = float(m.open_interest(s.asset, np.array([now]), s.venue)[0])
        step = FUNDING_HOURS * HOUR_MS
        nxt = (now // step + 1) * step
        rate = float(m.funding(s.asset, np.array([GENESIS_MS + cur_h * HOUR_MS]), FUNDING_HOURS, s.venue,
                               cap=0.005)[0])
        pd = self.pdec(s)
        sc = s.scale
        tick = 10 ** -pd
        if s.category == "inverse":
            oi = round(oi1 * mark) * 2
            oi_s, oiv = f"{oi:.0f}", f"{oi / mark:.2f}"
            vol_s, turn_s = f"{turn24:.4f}", f"{vol24:.4f}"
        else:
            oi = oi1 / sc * 2
            oi_s, oiv = f"{oi:.3f}", f"{oi * mark * sc:.2f}"
            vol_s, turn_s = f"{vol24 / sc:.4f}", f"{turn24:.4f}"
        return {
            "symbol": s.symbol, "lastPrice": f"{last * sc:.{pd}f}", "indexPrice": f"{idx * sc:.{pd}f}",
            "markPrice": f"{mark * sc:.{pd}f}", "prevPrice24h": f"{prev24 * sc:.{pd}f}",
            "price24hPcnt": f"{last / prev24 - 1:.6f}", "highPrice24h": f"{hi24 * sc:.{pd}f}",
            "lowPrice24h": f"{lo24 * sc:.{pd}f}", "prevPrice1h": f"{prev1 * sc:.{pd}f}",
            "openInterest": oi_s, "openInterestValue": oiv, "turnover24h": turn_s, "volume24h": vol_s,
            "fundingRate": fmt_rate([rate])[0], "nextFundingTime": str(nxt), "predictedDeliveryPrice": "",
            "basisRate": "", "deliveryFeeRate": "", "deliveryTime": "0", "ask1Size": "12.5",
            "bid1Price": f"{(last - tick) * sc:.{pd}f}", "ask1Price": f"{last * sc:.{pd}f}", "bid1Size": "9.8",
            "basis": "", "preOpenPrice": "", "preQty": "", "curPreListingPhase": "",
            "fundingIntervalHour": str(FUNDING_HOURS), "basisRateYear": "", "fundingCap": "0.005",
        }

    def tickers(self, req: Request) -> Response:
        q = req.query
        cat = q.get("category")
        if cat not in ("linear", "inverse"):
            raise ParamError("params error: Category is invalid", 10001)
        if q.get("symbol"):
            syms = [self.sym(q)]
        else:
            syms = [s for s in self.symbols().values() if s.category == cat and s.launch <= self.now_ms()]
        return self.ok({"category": cat, "list": [self._ticker(s) for s in syms]})

    def instruments(self, req: Request) -> Response:
        q = req.query
        cat = q.get("category")
        if cat not in ("linear", "inverse"):
            raise ParamError("params error: Category is invalid", 10001)
        lim = self.limit(q, 500, 1000)
        # `status` filter (Bybit v5 docs, Get Instruments Info): without it only Trading symbols (plus
        # pre-listing ones) are returned; status=Closed returns the delisted ones. Every simulated symbol is
        # trading, so Closed answers an empty list instead of the trading ones.
        status = q.get("status")
        if status not in (None, "", "Trading", "PreLaunch", "Delivering", "Closed"):
            raise ParamError("params error: status is invalid", 10001)
        syms = [s for s in self.symbols().values() if s.category == cat and s.launch <= self.now_ms()]
        if status in ("PreLaunch", "Delivering", "Closed"):
            syms = []
        if q.get("symbol"):
            syms = [s for s in syms if s.symbol == q["symbol"]]
        start = 0
        cur = q.get("cursor")
        if cur:
            try:
                start = int(unquote(cur).split("=")[-1])
            except ValueError:
                raise ParamError("params error: cursor invalid", 10001) from None
        page = syms[start:start + lim]
        nxt = f"offset%3D{start + lim}" if start + lim < len(syms) else ""
        out = []
        for i, s in enumerate(page):
            pd = self.pdec(s)
            tick = f"{10 ** -pd:.{pd}f}"
            inv = s.category == "inverse"
            out.append({
                "symbol": s.symbol, "symbolId": 5 + i, "contractType": "InversePerpetual" if inv else "LinearPerpetual",
                "status": "Trading", "baseCoin": s.asset if s.scale == 1 else "1000" + s.asset,
                "quoteCoin": "USD" if inv else "USDT", "launchTime": str(s.launch), "deliveryTime": "0",
                "deliveryFeeRate": "", "priceScale": str(pd),
                "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
                "priceFilter": {"minPrice": tick, "maxPrice": "1999999.80", "tickSize": tick},
                "lotSizeFilter": {"maxOrderQty": "1190.000", "minOrderQty": "0.001", "qtyStep": "0.001",
                                  "postOnlyMaxOrderQty": "1190.000", "maxMktOrderQty": "500.000",
                                  "minNotionalValue": "5"} if not inv else
                                 {"maxOrderQty": "1000000", "minOrderQty": "1", "qtyStep": "1",
                                  "postOnlyMaxOrderQty": "1000000", "maxMktOrderQty": "1000000",
                                  "minNotionalValue": "0"},
                "unifiedMarginTrade": True, "fundingInterval": FUNDING_HOURS * 60,
                "settleCoin": s.asset if inv else "USDT", "copyTrading": "both",
                "upperFundingRate": "0.005", "lowerFundingRate": "-0.005", "isPreListing": False,
                "preListingInfo": None,
                "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"}, "symbolType": "",
            })
        return self.ok({"category": cat, "list": out, "nextPageCursor": nxt})


VENUES = [Bybit]
