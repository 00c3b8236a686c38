"""Binance USD-M futures (fapi), COIN-M futures (dapi) and spot (api/v3) market data."""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from .common import (
    INTERVAL_MS,
    BanState,
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

PERP_DELIVERY = 4133404800000
YEAR_MS = 365 * DAY_MS
FAPI_LAUNCH = to_ms(datetime(2019, 9, 8, 8, tzinfo=UTC))
DAPI_LAUNCH = to_ms(datetime(2020, 8, 10, 8, tzinfo=UTC))
ONBOARD = {
    "BTC": FAPI_LAUNCH,
    "ETH": to_ms(datetime(2019, 11, 27, 8, tzinfo=UTC)),
    "SOL": to_ms(datetime(2020, 9, 14, 8, tzinfo=UTC)),
    "BNB": to_ms(datetime(2020, 2, 10, 8, tzinfo=UTC)),
    "XRP": to_ms(datetime(2020, 1, 6, 8, tzinfo=UTC)),
    "DOGE": to_ms(datetime(2020, 7, 10, 8, tzinfo=UTC)),
    "PEPE": to_ms(datetime(2023, 5, 5, 8, tzinfo=UTC)),
}
# (from_ms, hours) funding interval schedule on USD-M; default 8h
FUNDING_SCHEDULE = {
    "SOL": [(0, 8), (to_ms(datetime(2024, 6, 1, tzinfo=UTC)), 4)],
}
DATED_ASSETS = ("BTC", "ETH")
CM_ASSETS = ("BTC", "ETH", "SOL", "BNB", "XRP", "DOGE")
CIRC_SUPPLY = {"BTC": 19_950_000.0, "ETH": 120_700_000.0, "SOL": 540_000_000.0, "BNB": 140_000_000.0,
               "XRP": 59_000_000_000.0, "DOGE": 150_000_000_000.0, "PEPE": 420_690_000_000_000.0}
PERIOD_MS = {"5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS, "30m": 30 * MINUTE_MS, "1h": HOUR_MS,
             "2h": 2 * HOUR_MS, "4h": 4 * HOUR_MS, "6h": 6 * HOUR_MS, "12h": 12 * HOUR_MS, "1d": DAY_MS}
STATS_DEPTH_MS = 30 * DAY_MS


def last_friday(y: int, m: int) -> int:
    last = calendar.monthrange(y, m)[1]
    wd = calendar.weekday(y, m, last)
    day = last - ((wd - 4) % 7)
    return calendar.timegm((y, m, day, 8, 0, 0)) * 1000


def quarter_expiries(now_ms: int, n: int = 2) -> list[int]:
    d = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    y, m = d.year, d.month
    out: list[int] = []
    while len(out) < n:
        if m % 3 == 0:
            e = last_friday(y, m)
            if e > now_ms:
                out.append(e)
        m += 1
        if m > 12:
            y, m = y + 1, 1
    return out


def yymmdd(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%y%m%d")


def settlements(schedule: list[tuple[int, int]], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Settlement instants in [lo, hi] (ms, on the UTC grid) and their interval hours."""
    times, ivs = [], []
    for i, (frm, hours) in enumerate(schedule):
        to = schedule[i + 1][0] if i + 1 < len(schedule) else None
        a = max(lo, frm)
        b = hi if to is None else min(hi, to - 1)
        if b < a:
            continue
        step = hours * HOUR_MS
        first = -((-a) // step) * step
        if first > b:
            continue
        t = np.arange(first, b + 1, step, dtype=np.int64)
        times.append(t)
        ivs.append(np.full(len(t), hours, dtype=np.int64))
    if not times:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(times), np.concatenate(ivs)


@dataclass(frozen=True)
class Sym:
    symbol: str
    asset: str
    pair: str
    contract_type: str  # PERPETUAL / CURRENT_QUARTER / NEXT_QUARTER
    delivery: int
    onboard: int
    scale: float = 1.0  # 1000 for 1000PEPE-style contracts
    contract_size: int = 0  # COIN-M: USD per contract

    @property
    def perp(self) -> bool:
        return self.contract_type == "PERPETUAL"


class BinanceBase(Venue):
    """Binance error shapes, weights and rate limits."""

    weight_limit = 2400
    weight_header = "X-MBX-USED-WEIGHT-1M"
    market_venue = "binance"

    def setup(self) -> None:
        self.weight = WindowLimiter(self.scale(self.weight_limit), self.window(60))
        self.buckets: dict[str, WindowLimiter] = {"weight": self.weight}
        self.bans: dict[str, BanState] = {}
        self.ban_all = BanState(10**9, self.window(120))
        self.extra_buckets()
        for k in self.buckets:
            self.bans[k] = BanState(10, self.window(120))
        self.weights: dict[str, object] = {}
        self.bucket_of: dict[str, str] = {}
        self._sym_cache: dict[int, dict[str, Sym]] = {}
        self.routes_setup()

    def extra_buckets(self) -> None:
        pass

    def routes_setup(self) -> None:  # pragma: no cover
        pass

    def add(self, path: str, fn, weight=1, bucket: str = "weight") -> None:
        self.route("GET", path, fn)
        self.weights[path] = weight
        self.bucket_of[path] = bucket

    # errors --------------------------------------------------------------
    def error(self, e: ParamError) -> Response:
        return json_response({"code": e.code if e.code is not None else -1100, "msg": e.msg}, e.status,
                             self._hdr())

    def not_found(self, req: Request) -> Response:
        return Response(404, b"", "text/html", self._hdr())

    def _hdr(self) -> dict[str, str]:
        return {self.weight_header: str(self.weight.peek())}

    # rate limiting ---------------------------------------------------------
    def handle(self, req: Request) -> Response:
        fn = self.find(req)
        if fn is None:
            return self.not_found(req)
        path = req.path.rstrip("/") if (req.method, req.path) not in self.routes else req.path
        w = self.weights.get(path, 1)
        if callable(w):
            try:
                w = w(req)
            except ParamError:
                w = 1
        bname = self.bucket_of.get(path, "weight")
        now = time.time()
        state, wait = self.ban_all.check(now)
        if state == "ok":
            state, wait = self.bans[bname].check(now)
            if state == "banned":
                self.ban_all.banned_until = now + wait
        if state == "banned":
            until = int((now + wait) * 1000)
            return json_response({"code": -1003, "msg": f"Way too many requests; IP(127.0.0.1) banned until {until}."
                                  " Please use the websocket for live updates to avoid bans."}, 418,
                                 {**self._hdr(), "Retry-After": str(max(1, int(np.ceil(wait))))})
        if state == "ok":
            ok = True
            if bname != "weight":
                ok, _, wait = self.buckets[bname].try_consume(1, now)
            if ok and w:
                ok, _, wait = self.weight.try_consume(int(w), now)
        else:
            ok = False
        if not ok:
            self.bans[bname].told_to_wait(now, wait)
            lim = self.buckets[bname].limit
            return json_response({"code": -1003, "msg": f"Too many requests; current limit of IP(127.0.0.1) is "
                                  f"{lim} requests per minute. Please use the websocket for live updates to avoid "
                                  "polling the API."}, 429,
                                 {**self._hdr(), "Retry-After": str(max(1, int(np.ceil(wait))))})
        try:
            resp = fn(req)
        except ParamError as e:
            resp = self.error(e)
        resp.headers.update(self._hdr())
        return resp

    # params ----------------------------------------------------------------
    @staticmethod
    def _bad(name: str) -> ParamError:
        return ParamError(f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
                          -1100)

    def ints(self, q: dict[str, str], *names: str):
        return [p_int(q, n, None, self._bad) for n in names]

    def limit(self, q: dict[str, str], default: int, maximum: int) -> int:
        lim = p_int(q, "limit", default, self._bad)
        if lim <= 0:
            raise ParamError("Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.", -1100)
        return min(lim, maximum)

    @staticmethod
    def mandatory(q: dict[str, str], name: str) -> str:
        v = q.get(name)
        if not v:
            raise ParamError(f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.", -1102)
        return v

    # symbols -----------------------------------------------------------------
    def symbols(self) -> dict[str, Sym]:
        raise NotImplementedError

    def sym(self, q: dict[str, str], name: str = "symbol") -> Sym:
        s = self.mandatory(q, name)
        d = self.symbols()
        if s not in d:
            raise ParamError("Invalid symbol.", -1121)
        return d[s]

    # shared bar logic ------------------------------------------------------------
    def kline_rows(self, req: Request, kind: str, max_limit: int, by_pair: bool = False, spot: bool = False,
                   premium: bool = False, price_only: bool = False) -> list[list]:
        q = req.query
        if by_pair:
            pair = self.mandatory(q, "pair")
            perps = [s for s in self.symbols().values() if s.pair == pair and s.perp]
            if not perps:
                raise ParamError("Invalid symbol.", -1121)
            s = perps[0]
        else:
            s = self.sym(q)
        interval = self.mandatory(q, "interval")
        if interval not in INTERVAL_MS:
            raise ParamError("Invalid interval.", -1120)
        start, end = self.ints(q, "startTime", "endTime")
        lim = self.limit(q, 500, max_limit)
        iv = INTERVAL_MS[interval]
        now = self.now_ms()
        if start is not None and end is not None and start > end:
            raise ParamError("startTime and endTime are invalid.", -1130) if False else ParamError(
                "Start time is greater than end time.", -1128)
        opens = bar_opens(iv, start, end, lim, now, s.onboard)
        venue = self.market_venue
        mult = None
        if not s.perp and kind == "perp":
            kind_eff = "index"
            mult = self._dated_mult(s)
        else:
            kind_eff = kind
        b = make_bars(self.market, s.asset, opens, iv, kind_eff, venue if not spot else "binance_spot",
                      premium=premium, vol_share=self._vol_share(s, spot), price_mult=mult)
        return self.format_klines(s, b, kind, spot, premium, price_only)

    def _vol_share(self, s: Sym, spot: bool) -> float | None:
        if spot:
            return 0.10
        if not s.perp:
            return 0.01
        return None

    def _dated_mult(self, s: Sym):
        m = self.market
        asset = s.asset
        exp = s.delivery

        def f(ms: np.ndarray) -> np.ndarray:
            h = (ms - GENESIS_MS) // HOUR_MS
            tau = np.maximum(exp - ms, 0) / YEAR_MS
            return 1.0 + m.basis_ann(asset, h) * tau
        return f

    def price_dec(self, s: Sym) -> int:
        p = self.market.spec(s.asset).price * s.scale
        return max(1, price_decimals(p, 7)) if p < 1000 else 2

    def qty_dec(self, s: Sym) -> int:
        return self.market.spec(s.asset).qty_decimals

    def format_klines(self, s: Sym, b, kind: str, spot: bool, premium: bool, price_only: bool) -> list[list]:
        n = len(b["open"])
        if n == 0:
            return []
        if premium:
            pd = 8
            o, h, lo, c = (fmt(b[k], pd) for k in ("o", "h", "l", "c"))
        else:
            pd = 8 if spot else self.price_dec(s)
            sc = s.scale
            o, h, lo, c = (fmt(b[k] * sc, pd) for k in ("o", "h", "l", "c"))
        opens = b["open"].tolist()
        closes = b["close_ms"].tolist()
        if price_only or premium:
            cnt = ((b["close_ms"] + 1 - b["open"]) // MINUTE_MS).tolist()
            return [[opens[i], o[i], h[i], lo[i], c[i], "0", closes[i], "0", int(cnt[i]), "0", "0", "0"]
                    for i in range(n)]
        vol = b["v"] / s.scale
        bb = dict(b)
        bb["v"] = vol
        if s.scale != 1.0:
            for k in ("o", "h", "l", "c"):
                bb[k] = b[k] * s.scale
        qv, trades, tb, tq = bar_extras(self.market, bb, 17 if spot else 19)
        if s.contract_size:
            # COIN-M: volume in contracts, "quote" volume in base coin
            cv = np.round(b["v"] * (b["o"] + b["c"]) / 2 / s.contract_size)
            vd = fmt(cv, 0)
            qd = fmt(b["v"], 8)
            tbd = fmt(np.round(cv * tb / np.maximum(vol, 1e-12)), 0)
            tqd = fmt(tb, 8)
        else:
            qdec = 8 if spot else self.qty_dec(s)
            vd = fmt(vol, qdec)
            qd = fmt(qv, 8 if spot else 4)
            tbd = fmt(tb, qdec)
            tqd = fmt(tq, 8 if spot else 4)
        tr = trades.tolist()
        return [[opens[i], o[i], h[i], lo[i], c[i], vd[i], closes[i], qd[i], tr[i], tbd[i], tqd[i], "0"]
                for i in range(n)]

    # window selection for /futures/data ------------------------------------------
    def stats_times(self, q: dict[str, str], default_limit: int = 30, max_limit: int = 500) -> np.ndarray:
        period = self.mandatory(q, "period")
        if period not in PERIOD_MS:
            raise ParamError("Invalid period.", -1120)
        pm = PERIOD_MS[period]
        start, end = self.ints(q, "startTime", "endTime")
        lim = self.limit(q, default_limit, max_limit)
        now = self.now_ms()
        oldest = now - STATS_DEPTH_MS
        if start is not None and start < oldest:
            raise ParamError("parameter 'startTime' is invalid.", -1130)
        if end is not None and end < oldest:
            return np.zeros(0, dtype=np.int64)
        if start is not None and end is not None and start > end:
            raise ParamError("parameter 'startTime' is invalid.", -1130)
        last = (now // pm) * pm
        hi = last if end is None else min(end, last)
        lo = oldest if start is None else max(start, oldest)
        a = -((-lo) // pm) * pm
        b = (hi // pm) * pm
        if b < a:
            return np.zeros(0, dtype=np.int64)
        cnt = (b - a) // pm + 1
        if cnt > lim:
            if start is not None:
                b = a + (lim - 1) * pm
            else:
                a = b - (lim - 1) * pm
        return np.arange(a, b + 1, pm, dtype=np.int64)

    def ratio_rows(self, s: Sym, ts: np.ndarray, kind: str, position_fields: bool = False,
                   key_name: str = "symbol", key_value: str | None = None) -> list[dict]:
        ls = self.market.long_share(s.asset, ts, kind, self.market_venue)
        ls = np.round(ls, 4)
        ss = np.round(1.0 - ls, 4)
        ratio = ls / ss
        la, sa, ra = fmt(ls, 4), fmt(ss, 4), fmt(ratio, 4)
        lk, sk = ("longPosition", "shortPosition") if position_fields else ("longAccount", "shortAccount")
        kv = key_value or s.symbol
        tl = ts.tolist()
        return [{key_name: kv, "longShortRatio": ra[i], lk: la[i], sk: sa[i], "timestamp": tl[i]}
                for i in range(len(tl))]


# ============================================================================ USD-M


class BinanceFapi(BinanceBase):
    prefix = "binance-fapi"
    funding_mark = True  # fundingRate rows carry markPrice (USD-M only)

    def extra_buckets(self) -> None:
        self.buckets["stats"] = WindowLimiter(self.scale(1000), self.window(300))
        self.buckets["funding"] = WindowLimiter(self.scale(500), self.window(300))

    def routes_setup(self) -> None:
        kw = self._kline_weight
        self.add("/fapi/v1/ping", lambda r: json_response({}), 1)
        self.add("/fapi/v1/time", lambda r: json_response({"serverTime": self.now_ms()}), 1)
        self.add("/fapi/v1/exchangeInfo", self.exchange_info, 1)
        self.add("/fapi/v1/fundingInfo", self.funding_info, 0, "funding")
        self.add("/fapi/v1/fundingRate", self.funding_rate, 0, "funding")
        self.add("/fapi/v1/klines", lambda r: json_response(self.kline_rows(r, "perp", 1500)), kw)
        self.add("/fapi/v1/continuousKlines", self.continuous_klines, kw)
        self.add("/fapi/v1/markPriceKlines",
                 lambda r: json_response(self.kline_rows(r, "mark", 1500, price_only=True)), kw)
        self.add("/fapi/v1/indexPriceKlines",
                 lambda r: json_response(self.kline_rows(r, "index", 1500, by_pair=True, price_only=True)), kw)
        self.add("/fapi/v1/premiumIndexKlines",
                 lambda r: json_response(self.kline_rows(r, "perp", 1500, premium=True)), kw)
        self.add("/fapi/v1/premiumIndex", self.premium_index,
                 lambda r: 1 if r.query.get("symbol") else 10)
        self.add("/fapi/v1/openInterest", self.open_interest, 1)
        self.add("/futures/data/openInterestHist", self.oi_hist, 0, "stats")
        self.add("/futures/data/globalLongShortAccountRatio",
                 lambda r: self.ratio(r, "global"), 0, "stats")
        self.add("/futures/data/topLongShortAccountRatio",
                 lambda r: self.ratio(r, "top_account"), 0, "stats")
        self.add("/futures/data/topLongShortPositionRatio",
                 lambda r: self.ratio(r, "top_position"), 0, "stats")
        self.add("/futures/data/takerlongshortRatio", self.taker_ratio, 0, "stats")
        self.add("/futures/data/basis", self.basis, 0, "stats")

    @staticmethod
    def _kline_weight(r: Request) -> int:
        lim = p_int(r.query, "limit", 500, lambda n: ParamError(n))
        if lim < 100:
            return 1
        if lim < 500:
            return 2
        if lim <= 1000:
            return 5
        return 10

    # symbols ------------------------------------------------------------------
    def perp_name(self, asset: str) -> tuple[str, float]:
        if asset == "PEPE":
            return "1000PEPEUSDT", 1000.0
        return f"{asset}USDT", 1.0

    def symbols(self) -> dict[str, Sym]:
        now = self.now_ms()
        key = now // HOUR_MS
        c = self._sym_cache.get(key)
        if c is not None:
            return c
        out: dict[str, Sym] = {}
        for a in self.market.universe:
            name, sc = self.perp_name(a)
            ob = max(ONBOARD.get(a, self.market.spec(a).listed_ms), FAPI_LAUNCH)
            out[name] = Sym(name, a, name, "PERPETUAL", PERP_DELIVERY, ob, sc)
        for a in DATED_ASSETS:
            if a not in self.market.universe:
                continue
            for ct, exp in zip(("CURRENT_QUARTER", "NEXT_QUARTER"), quarter_expiries(now), strict=False):
                name = f"{a}USDT_{yymmdd(exp)}"
                out[name] = Sym(name, a, f"{a}USDT", ct, exp, exp - 26 * 7 * DAY_MS)
        if len(self._sym_cache) > 16:
            self._sym_cache.clear()
        self._sym_cache[key] = out
        return out

    def funding_schedule(self, s: Sym) -> list[tuple[int, int]]:
        return FUNDING_SCHEDULE.get(s.asset, [(0, 8)])

    def current_interval(self, s: Sym) -> int:
        sch = self.funding_schedule(s)
        now = self.now_ms()
        hrs = 8
        for frm, h in sch:
            if frm <= now:
                hrs = h
        return hrs

    # endpoints ----------------------------------------------------------------
    def exchange_info(self, req: Request) -> Response:
        now = self.now_ms()
        syms = []
        for s in self.symbols().values():
            if s.onboard > now:
                continue
            spec = self.market.spec(s.asset)
            pd = self.price_dec(s)
            tick = f"{10 ** -pd:.{pd}f}" if pd else "1"
            qd = spec.qty_decimals
            step = f"{10 ** -qd:.{qd}f}" if qd else "1"
            base = ("1000" + s.asset) if s.scale == 1000 else s.asset
            syms.append({
                "symbol": s.symbol, "pair": s.pair, "contractType": s.contract_type,
                "deliveryDate": s.delivery, "onboardDate": s.onboard, "status": "TRADING",
                "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
                "baseAsset": base, "quoteAsset": "USDT", "marginAsset": "USDT",
                "pricePrecision": pd, "quantityPrecision": qd, "baseAssetPrecision": 8, "quotePrecision": 8,
                "underlyingType": "COIN", "underlyingSubType": ["Layer-1"] if s.asset in ("BTC", "ETH", "SOL") else [],
                "settlePlan": 0, "triggerProtect": "0.0500",
                "filters": [
                    {"filterType": "PRICE_FILTER", "maxPrice": "4529764", "minPrice": tick, "tickSize": tick},
                    {"filterType": "LOT_SIZE", "maxQty": "1000", "minQty": step, "stepSize": step},
                    {"filterType": "MARKET_LOT_SIZE", "maxQty": "120", "minQty": step, "stepSize": step},
                    {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                    {"filterType": "MIN_NOTIONAL", "notional": "100"},
                    {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
                     "multiplierDecimal": "4"},
                ],
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                               "TRAILING_STOP_MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
                "liquidationFee": "0.012500", "marketTakeBound": "0.05",
            })
        return json_response({
            "timezone": "UTC", "serverTime": now,
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": self.buckets["weight"].limit},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"},
                       {"asset": "BTC", "marginAvailable": True, "autoAssetExchange": "-0.10000000"}],
            "symbols": syms,
        })

    def funding_info(self, req: Request) -> Response:
        out = []
        for s in self.symbols().values():
            if s.perp and self.current_interval(s) != 8:
                out.append({"symbol": s.symbol, "adjustedFundingRateCap": "0.02000000",
                            "adjustedFundingRateFloor": "-0.02000000",
                            "fundingIntervalHours": self.current_interval(s), "disclaimer": False})
        return json_response(out)

    def funding_rows(self, s: Sym, lo: int, hi: int):
        """All funding rows of symbol with jittered fundingTime in [lo, hi]; returns arrays."""
        sched = self.funding_schedule(s)
        t, iv = settlements(sched, max(lo - 20, s.onboard + 1), hi)
        if len(t) == 0:
            return t, t, np.zeros(0), np.zeros(0)
        jitter = (self.market.unoise((t - GENESIS_MS) // HOUR_MS, 31) * 14).astype(np.int64) + 1
        tj = t + jitter
        keep = (tj >= lo) & (tj <= hi)
        t, iv, tj = t[keep], iv[keep], tj[keep]
        rates = np.empty(len(t))
        for hours in np.unique(iv):
            m = iv == hours
            rates[m] = self.market.funding(s.asset, t[m], int(hours), self.market_venue)
        mark = self.market.price_at(s.asset, t, "mark", self.market_venue) * s.scale
        return t, tj, rates, mark

    def funding_rate(self, req: Request) -> Response:
        q = req.query
        start, end = self.ints(q, "startTime", "endTime")
        lim = self.limit(q, 100, 1000)
        now = self.now_ms()
        hi = now if end is None else min(end, now)
        syms = [self.sym(q)] if q.get("symbol") else [s for s in self.symbols().values() if s.perp]
        if not syms[0].perp:
            return json_response([])
        rows = []
        for s in syms:
            if start is not None:
                lo = max(start, s.onboard)
                # enough rows for `lim` settlements
                span_hi = min(hi, lo + (lim + 2) * 8 * HOUR_MS)
            else:
                span_hi = hi
                lo = max(s.onboard, hi - (lim + 2) * 8 * HOUR_MS)
            t, tj, r, mk = self.funding_rows(s, lo, span_hi)
            if start is None:
                t, tj, r, mk = t[-lim:], tj[-lim:], r[-lim:], mk[-lim:]
            else:
                t, tj, r, mk = t[:lim], tj[:lim], r[:lim], mk[:lim]
            rs = fmt(r, 8)
            ms = fmt(mk, 8)
            for i, ft in enumerate(tj.tolist()):
                if self.funding_mark:
                    rows.append({"symbol": s.symbol, "fundingTime": ft, "fundingRate": rs[i], "markPrice": ms[i]})
                else:
                    rows.append({"symbol": s.symbol, "fundingTime": ft, "fundingRate": rs[i]})
        if len(syms) > 1:
            rows.sort(key=lambda x: (x["fundingTime"], x["symbol"]))
            rows = rows[:lim] if start is not None else rows[-lim:]
        return json_response(rows)

    def continuous_klines(self, req: Request) -> Response:
        q = dict(req.query)
        pair = self.mandatory(q, "pair")
        ct = self.mandatory(q, "contractType")
        match = [s for s in self.symbols().values() if s.pair == pair and s.contract_type == ct]
        if not match:
            raise ParamError("Invalid symbol.", -1121)
        q["symbol"] = match[0].symbol
        return json_response(self.kline_rows(Request("GET", req.path, q), "perp", 1500))

    def _snapshot(self, s: Sym) -> dict:
        now = self.now_ms()
        m = self.market
        mark = m.price_now(s.asset, now, "mark", self.market_venue) * s.scale
        idx = m.price_now(s.asset, now, "index", self.market_venue) * s.scale
        hours = self.current_interval(s)
        step = hours * HOUR_MS
        nxt = (now // step + 1) * step
        cur_h = (now - GENESIS_MS) // HOUR_MS
        last_rate = float(m.funding(s.asset, np.array([GENESIS_MS + cur_h * HOUR_MS]), hours, self.market_venue)[0])
        if not s.perp:
            return {"symbol": s.symbol, "markPrice": f"{mark * self._dated_mult(s)(np.array([now]))[0]:.8f}",
                    "indexPrice": f"{idx:.8f}", "estimatedSettlePrice": f"{idx:.8f}", "lastFundingRate": "",
                    "interestRate": "", "nextFundingTime": 0, "time": now}
        return {"symbol": s.symbol, "markPrice": f"{mark:.8f}", "indexPrice": f"{idx:.8f}",
                "estimatedSettlePrice": f"{idx * (1 + 0.00002):.8f}", "lastFundingRate": f"{last_rate:.8f}",
                "interestRate": "0.00010000", "nextFundingTime": int(nxt), "time": now}

    def premium_index(self, req: Request) -> Response:
        if req.query.get("symbol"):
            return json_response(self._snapshot(self.sym(req.query)))
        return json_response([self._snapshot(s) for s in self.symbols().values()])

    def open_interest(self, req: Request) -> Response:
        s = self.sym(req.query)
        now = self.now_ms()
        oi = float(self.market.open_interest(s.asset, np.array([now]), self.market_venue)[0])
        if not s.perp:
            oi *= 0.01
        return json_response({"openInterest": f"{oi / s.scale:.{self.qty_dec(s)}f}", "symbol": s.symbol,
                              "time": now})

    def oi_hist(self, req: Request) -> Response:
        s = self.sym(req.query)
        ts = self.stats_times(req.query)
        if len(ts) == 0:
            return json_response([])
        oi = self.market.open_interest(s.asset, ts, self.market_venue)
        if not s.perp:
            oi = oi * 0.01
        px = self.market.price_at(s.asset, ts, "perp", self.market_venue)
        oib = fmt(oi / s.scale, 8)
        val = fmt(oi * px, 8)
        circ = CIRC_SUPPLY.get(s.asset, 1e9) * (1 + 0.0000001 * ((ts - GENESIS_MS) // DAY_MS))
        cs = fmt(circ / s.scale, 3)
        tl = ts.tolist()
        return json_response([{"symbol": s.symbol, "sumOpenInterest": oib[i], "sumOpenInterestValue": val[i],
                               "CMCCirculatingSupply": cs[i], "timestamp": tl[i]} for i in range(len(tl))])

    def ratio(self, req: Request, kind: str) -> Response:
        s = self.sym(req.query)
        ts = self.stats_times(req.query)
        return json_response(self.ratio_rows(s, ts, kind))

    def taker_ratio(self, req: Request) -> Response:
        s = self.sym(req.query)
        period = req.query.get("period", "")
        ts = self.stats_times(req.query)
        if len(ts) == 0:
            return json_response([])
        pm = PERIOD_MS[period]
        h = (ts - GENESIS_MS) // HOUR_MS
        d = self.market.data(s.asset, int(h.max()) + 2)
        vol = d.vol[h] * 0.38 * pm / HOUR_MS / s.scale
        r = d.px[h + 1] / d.px[h] - 1
        share = np.clip(0.5 + 6 * r + 0.04 * self.market.noise((ts - GENESIS_MS) // 300_000, 61), 0.1, 0.9)
        buy, sell = vol * share, vol * (1 - share)
        b, sl, ra = fmt(buy, 4), fmt(sell, 4), fmt(buy / sell, 4)
        tl = ts.tolist()
        return json_response([{"buySellRatio": ra[i], "buyVol": b[i], "sellVol": sl[i], "timestamp": tl[i]}
                              for i in range(len(tl))])

    def basis(self, req: Request) -> Response:
        q = req.query
        pair = self.mandatory(q, "pair")
        ct = self.mandatory(q, "contractType")
        match = [s for s in self.symbols().values() if s.pair == pair and s.contract_type == ct]
        if not match:
            raise ParamError("Invalid symbol.", -1121)
        s = match[0]
        ts = self.stats_times(q)
        if len(ts) == 0:
            return json_response([])
        idx = self.market.price_at(s.asset, ts, "index", self.market_venue) * s.scale
        if s.perp:
            fut = self.market.price_at(s.asset, ts, "perp", self.market_venue) * s.scale
        else:
            fut = idx * self._dated_mult(s)(ts)
        basis = fut - idx
        rate = basis / idx
        days = np.maximum((s.delivery - ts) / DAY_MS, 1e-9)
        ann = rate * 365 / days
        pd = self.price_dec(s)
        fi, ii, bs, br = fmt(fut, pd), fmt(idx, 8), fmt(basis, 8), fmt(rate, 4)
        an = fmt(ann, 4)
        tl = ts.tolist()
        return json_response([{"indexPrice": ii[i], "contractType": ct, "basisRate": br[i], "futuresPrice": fi[i],
                               "annualizedBasisRate": "" if s.perp else an[i], "basis": bs[i], "pair": pair,
                               "timestamp": tl[i]} for i in range(len(tl))])


# ============================================================================ spot


class BinanceSpot(BinanceBase):
    prefix = "binance-spot"
    weight_limit = 6000
    market_venue = "binance_spot"

    def routes_setup(self) -> None:
        self.add("/api/v3/ping", lambda r: json_response({}), 1)
        self.add("/api/v3/time", lambda r: json_response({"serverTime": self.now_ms()}), 1)
        self.add("/api/v3/klines", lambda r: json_response(self.kline_rows(r, "spot", 1000, spot=True)), 2)
        self.add("/api/v3/uiKlines", lambda r: json_response(self.kline_rows(r, "spot", 1000, spot=True)), 2)
        self.add("/api/v3/exchangeInfo", self.exchange_info, 20)
        self.add("/api/v3/ticker/price", self.ticker_price, lambda r: 2 if r.query.get("symbol") else 4)

    def symbols(self) -> dict[str, Sym]:
        c = self._sym_cache.get(0)
        if c is None:
            c = {}
            for a in self.market.universe:
                name = f"{a}USDT"
                c[name] = Sym(name, a, name, "PERPETUAL", PERP_DELIVERY,
                              max(self.market.spec(a).listed_ms, GENESIS_MS))
            self._sym_cache[0] = c
        return c

    def price_dec(self, s: Sym) -> int:
        return 8

    def exchange_info(self, req: Request) -> Response:
        syms = [{"symbol": s.symbol, "status": "TRADING", "baseAsset": s.asset, "baseAssetPrecision": 8,
                 "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8}
                for s in self.symbols().values()]
        return json_response({"timezone": "UTC", "serverTime": self.now_ms(),
                              "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                                              "intervalNum": 1, "limit": self.weight.limit}],
                              "exchangeFilters": [], "symbols": syms})

    def ticker_price(self, req: Request) -> Response:
        now = self.now_ms()

        def one(s: Sym) -> dict:
            p = self.market.price_now(s.asset, now, "spot", self.market_venue)
            return {"symbol": s.symbol, "price": f"{p:.8f}"}
        if req.query.get("symbol"):
            return json_response(one(self.sym(req.query)))
        return json_response([one(s) for s in self.symbols().values()])


# ============================================================================ COIN-M


class BinanceDapi(BinanceFapi):
    prefix = "binance-dapi"
    market_venue = "binance_cm"
    funding_mark = False

    def routes_setup(self) -> None:
        kw = self._kline_weight
        self.add("/dapi/v1/ping", lambda r: json_response({}), 1)
        self.add("/dapi/v1/time", lambda r: json_response({"serverTime": self.now_ms()}), 1)
        self.add("/dapi/v1/exchangeInfo", self.exchange_info, 1)
        self.add("/dapi/v1/fundingRate", self.funding_rate, 0, "funding")
        self.add("/dapi/v1/fundingInfo", self.funding_info, 0, "funding")
        self.add("/dapi/v1/klines", lambda r: json_response(self.kline_rows(r, "perp", 1500)), kw)
        self.add("/dapi/v1/continuousKlines", self.continuous_klines, kw)
        self.add("/dapi/v1/markPriceKlines",
                 lambda r: json_response(self.kline_rows(r, "mark", 1500, price_only=True)), kw)
        self.add("/dapi/v1/indexPriceKlines",
                 lambda r: json_response(self.kline_rows(r, "index", 1500, by_pair=True, price_only=True)), kw)
        self.add("/dapi/v1/premiumIndexKlines",
                 lambda r: json_response(self.kline_rows(r, "perp", 1500, premium=True)), kw)
        self.add("/dapi/v1/premiumIndex", self.premium_index, 10)
        self.add("/dapi/v1/openInterest", self.open_interest, 1)
        self.add("/futures/data/openInterestHist", self.oi_hist, 0, "stats")
        self.add("/futures/data/globalLongShortAccountRatio", lambda r: self.ratio(r, "global"), 0, "stats")
        self.add("/futures/data/topLongShortAccountRatio", lambda r: self.ratio(r, "top_account"), 0, "stats")
        self.add("/futures/data/topLongShortPositionRatio", lambda r: self.ratio(r, "top_position"), 0, "stats")
        self.add("/futures/data/basis", self.basis, 0, "stats")

    CT_SHARE = {"PERPETUAL": 0.8, "CURRENT_QUARTER": 0.13, "NEXT_QUARTER": 0.07}

    def symbols(self) -> dict[str, Sym]:
        now = self.now_ms()
        key = now // HOUR_MS
        c = self._sym_cache.get(key)
        if c is not None:
            return c
        out: dict[str, Sym] = {}
        for a in self.market.universe:
            if a not in CM_ASSETS and not a.startswith("S"):
                continue
            cs = 100 if a == "BTC" else 10
            ob = max(ONBOARD.get(a, self.market.spec(a).listed_ms), DAPI_LAUNCH)
            out[f"{a}USD_PERP"] = Sym(f"{a}USD_PERP", a, f"{a}USD", "PERPETUAL", PERP_DELIVERY, ob, 1.0, cs)
            if a in DATED_ASSETS:
                for ct, exp in zip(("CURRENT_QUARTER", "NEXT_QUARTER"), quarter_expiries(now), strict=False):
                    name = f"{a}USD_{yymmdd(exp)}"
                    out[name] = Sym(name, a, f"{a}USD", ct, exp, exp - 26 * 7 * DAY_MS, 1.0, cs)
        if len(self._sym_cache) > 16:
            self._sym_cache.clear()
        self._sym_cache[key] = out
        return out

    def funding_schedule(self, s: Sym) -> list[tuple[int, int]]:
        return [(0, 8)]

    def price_dec(self, s: Sym) -> int:
        p = self.market.spec(s.asset).price
        return 1 if p > 1000 else max(2, price_decimals(p, 5))

    def exchange_info(self, req: Request) -> Response:
        now = self.now_ms()
        syms = []
        for s in self.symbols().values():
            if s.onboard > now:
                continue
            pd = self.price_dec(s)
            tick = f"{10 ** -pd:.{pd}f}" if pd else "1"
            syms.append({
                "symbol": s.symbol, "pair": s.pair, "contractType": s.contract_type,
                "deliveryDate": s.delivery, "onboardDate": s.onboard, "contractStatus": "TRADING",
                "contractSize": s.contract_size, "marginAsset": s.asset,
                "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
                "baseAsset": s.asset, "quoteAsset": "USD", "pricePrecision": pd, "quantityPrecision": 0,
                "baseAssetPrecision": 8, "quotePrecision": 8, "equalQtyPrecision": 4,
                "filters": [
                    {"minPrice": tick, "maxPrice": "4520958", "filterType": "PRICE_FILTER", "tickSize": tick},
                    {"stepSize": "1", "filterType": "LOT_SIZE", "maxQty": "1000000", "minQty": "1"},
                    {"stepSize": "1", "filterType": "MARKET_LOT_SIZE", "maxQty": "60000", "minQty": "1"},
                    {"limit": 200, "filterType": "MAX_NUM_ORDERS"},
                    {"multiplierDown": "0.9500", "multiplierUp": "1.0500", "multiplierDecimal": "4",
                     "filterType": "PERCENT_PRICE"},
                ],
                "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                               "TRAILING_STOP_MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
            })
        return json_response({
            "timezone": "UTC", "serverTime": now,
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": self.buckets["weight"].limit},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            ],
            "exchangeFilters": [], "symbols": syms,
        })

    def funding_info(self, req: Request) -> Response:
        return json_response([])

    def _oi_contracts(self, s: Sym, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(contracts, base coin value) of one COIN-M contract at instants ``ts``."""
        oi_base = self.market.open_interest(s.asset, ts, self.market_venue) * self.CT_SHARE[s.contract_type]
        px = self.market.price_at(s.asset, ts, "perp", self.market_venue)
        if not s.perp:
            px = px * self._dated_mult(s)(ts)
        contracts = np.round(oi_base * px / s.contract_size)
        return contracts, contracts * s.contract_size / px

    def open_interest(self, req: Request) -> Response:
        s = self.sym(req.query)
        now = self.now_ms()
        c, _ = self._oi_contracts(s, np.array([now]))
        return json_response({"symbol": s.symbol, "pair": s.pair, "openInterest": f"{c[0]:.0f}",
                              "contractType": s.contract_type, "time": now})

    def _pair_syms(self, q: dict[str, str], contract_type: str | None) -> list[Sym]:
        pair = self.mandatory(q, "pair")
        syms = [s for s in self.symbols().values() if s.pair == pair]
        if not syms:
            raise ParamError("Invalid pair.", -1121)
        if contract_type and contract_type != "ALL":
            syms = [s for s in syms if s.contract_type == contract_type]
            if not syms:
                raise ParamError("Invalid contractType.", -1121) if contract_type not in self.CT_SHARE else \
                    ParamError("Invalid symbol.", -1121)
        return syms

    def oi_hist(self, req: Request) -> Response:
        q = req.query
        ct = self.mandatory(q, "contractType")
        if ct not in ("ALL", *self.CT_SHARE):
            raise ParamError("Invalid contractType.", -1130)
        syms = self._pair_syms(q, ct)
        ts = self.stats_times(q)
        if len(ts) == 0:
            return json_response([])
        tot_c = np.zeros(len(ts))
        tot_v = np.zeros(len(ts))
        for s in syms:
            c, v = self._oi_contracts(s, ts)
            tot_c += c
            tot_v += v
        cs, vs = fmt(tot_c, 0), fmt(tot_v, 8)
        tl = ts.tolist()
        pair = syms[0].pair
        return json_response([{"pair": pair, "contractType": ct, "sumOpenInterest": cs[i],
                               "sumOpenInterestValue": vs[i], "timestamp": tl[i]} for i in range(len(tl))])

    def ratio(self, req: Request, kind: str) -> Response:
        syms = self._pair_syms(req.query, None)
        s = [x for x in syms if x.perp][0]
        ts = self.stats_times(req.query)
        return json_response(self.ratio_rows(s, ts, kind, position_fields=(kind == "top_position"),
                                             key_name="pair", key_value=s.pair))

    def sym(self, q: dict[str, str], name: str = "symbol") -> Sym:
        return super().sym(q, name)


VENUES = [BinanceFapi, BinanceDapi, BinanceSpot]
