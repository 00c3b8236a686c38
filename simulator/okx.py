"""OKX v5 public market data (USDT-margined and coin-margined perpetual swaps)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from .common import (
    ParamError,
    Request,
    Response,
    Venue,
    WindowLimiter,
    bar_opens,
    fmt,
    json_response,
    make_bars,
    p_int,
    price_decimals,
)
from .market import DAY_MS, GENESIS_MS, HOUR_MS, MINUTE_MS, to_ms

LIST_TIME = {"BTC": to_ms(datetime(2019, 11, 12, tzinfo=UTC)),
             "ETH": to_ms(datetime(2019, 11, 12, tzinfo=UTC)),
             "SOL": to_ms(datetime(2020, 9, 15, tzinfo=UTC))}
LINEAR_CTVAL = {"BTC": 0.01, "ETH": 0.1, "SOL": 1.0, "BNB": 0.01, "XRP": 100.0, "DOGE": 1000.0, "PEPE": 10_000_000.0}
INVERSE_ASSETS = ("BTC", "ETH", "SOL")
RUBIK_START = to_ms(datetime(2024, 2, 1, tzinfo=UTC))
RUBIK_START_1D = to_ms(datetime(2024, 1, 1, tzinfo=UTC))
FUNDING_DEPTH = 90 * DAY_MS
FUNDING_HOURS = 8
_BASE_BARS = {"1m": MINUTE_MS, "3m": 3 * MINUTE_MS, "5m": 5 * MINUTE_MS, "15m": 15 * MINUTE_MS,
              "30m": 30 * MINUTE_MS, "1H": HOUR_MS, "2H": 2 * HOUR_MS, "4H": 4 * HOUR_MS, "6H": 6 * HOUR_MS,
              "12H": 12 * HOUR_MS, "1D": DAY_MS, "2D": 2 * DAY_MS, "3D": 3 * DAY_MS, "1W": 7 * DAY_MS, "1M": -1}
_WEEK_OFF = 4 * DAY_MS


def bar_spec(bar: str) -> tuple[int, int] | None:
    """(interval_ms, grid offset ms) for an OKX bar/period; long bars align to UTC+8 unless `...utc`."""
    utc = bar.endswith("utc")
    base = bar[:-3] if utc else bar
    if base not in _BASE_BARS:
        return None
    iv = _BASE_BARS[base]
    if iv == -1:
        return -1, 0
    off = _WEEK_OFF if iv == 7 * DAY_MS else 0
    if iv >= 6 * HOUR_MS and not utc:
        off = (off - 8 * HOUR_MS) % iv
    elif utc and iv < 6 * HOUR_MS:
        return None
    return iv, off


@dataclass(frozen=True)
class OInst:
    inst_id: str
    asset: str
    inverse: bool
    ct_val: float
    list_time: int

    @property
    def venue(self) -> str:
        return "okx_inv" if self.inverse else "okx"

    @property
    def family(self) -> str:
        return f"{self.asset}-USD" if self.inverse else f"{self.asset}-USDT"


def s_(x: float, dec: int) -> str:
    s = f"{x:.{dec}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s or "0"


def strs(values, dec: int) -> list[str]:
    return [s_(v, dec) for v in np.asarray(values, dtype=float).tolist()]


class Okx(Venue):
    prefix = "okx"
    LIMITS = {  # requests per 2 s
        "/api/v5/public/instruments": 20, "/api/v5/public/open-interest": 20,
        "/api/v5/public/funding-rate": 10, "/api/v5/public/funding-rate-history": 10,
        "/api/v5/public/mark-price": 10,
        "/api/v5/rubik/stat/contracts/open-interest-history": 10,
        "/api/v5/rubik/stat/contracts/open-interest-volume": 5,
        "/api/v5/rubik/stat/contracts/long-short-account-ratio": 5,
        "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract": 5,
        "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract-top-trader": 5,
        "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader": 5,
        "/api/v5/market/candles": 40, "/api/v5/market/history-candles": 20,
        "/api/v5/market/mark-price-candles": 20, "/api/v5/market/history-mark-price-candles": 10,
        "/api/v5/market/index-candles": 20, "/api/v5/market/history-index-candles": 10,
        "/api/v5/market/ticker": 20, "/api/v5/market/tickers": 20, "/api/v5/market/index-tickers": 20,
    }

    def setup(self) -> None:
        self.limiters = {p: WindowLimiter(self.scale(n), self.window(2)) for p, n in self.LIMITS.items()}
        r = self.route
        r("GET", "/api/v5/public/time", lambda q: self.ok([{"ts": str(self.now_ms())}]))
        r("GET", "/api/v5/public/instruments", self.instruments)
        r("GET", "/api/v5/public/open-interest", self.open_interest)
        r("GET", "/api/v5/public/funding-rate", self.funding_rate)
        r("GET", "/api/v5/public/funding-rate-history", self.funding_history)
        r("GET", "/api/v5/public/mark-price", self.mark_price)
        r("GET", "/api/v5/rubik/stat/contracts/open-interest-history", self.oi_history)
        r("GET", "/api/v5/rubik/stat/contracts/open-interest-volume", self.oi_volume)
        r("GET", "/api/v5/rubik/stat/contracts/long-short-account-ratio", self.ls_ccy)
        r("GET", "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract",
          lambda q: self.ls_contract(q, "global"))
        r("GET", "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract-top-trader",
          lambda q: self.ls_contract(q, "top_account"))
        r("GET", "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader",
          lambda q: self.ls_contract(q, "top_position"))
        r("GET", "/api/v5/market/candles", lambda q: self.candles(q, "perp", 300, recent=True))
        r("GET", "/api/v5/market/history-candles", lambda q: self.candles(q, "perp", 300))
        r("GET", "/api/v5/market/mark-price-candles", lambda q: self.candles(q, "mark", 100, recent=True))
        r("GET", "/api/v5/market/history-mark-price-candles", lambda q: self.candles(q, "mark", 100))
        r("GET", "/api/v5/market/index-candles", lambda q: self.candles(q, "index", 100, recent=True))
        r("GET", "/api/v5/market/history-index-candles", lambda q: self.candles(q, "index", 100))
        r("GET", "/api/v5/market/ticker", self.ticker)
        r("GET", "/api/v5/market/index-tickers", self.index_tickers)

    # envelope -------------------------------------------------------------------
    def ok(self, data) -> Response:
        return json_response({"code": "0", "msg": "", "data": data})

    def error(self, e: ParamError) -> Response:
        return json_response({"code": str(e.code or "51000"), "msg": e.msg, "data": []}, e.status)

    def not_found(self, req: Request) -> Response:
        return json_response({"msg": "Not Found", "code": "404"}, 404)

    def handle(self, req: Request) -> Response:
        fn = self.find(req)
        if fn is None:
            return self.not_found(req)
        lim = self.limiters.get(req.path.rstrip("/"))
        if lim is not None:
            ok, _, wait = lim.try_consume(1, time.time())
            if not ok:
                return json_response({"msg": "Too Many Requests", "code": "50011", "data": []}, 429,
                                     {"Retry-After": str(max(1, int(np.ceil(wait))))})
        try:
            return fn(req)
        except ParamError as e:
            return self.error(e)

    # instruments -------------------------------------------------------------------
    def insts(self) -> dict[str, OInst]:
        c = getattr(self, "_insts", None)
        if c is None:
            c = {}
            for a in self.market.universe:
                lt = max(LIST_TIME.get(a, self.market.spec(a).listed_ms), to_ms(datetime(2019, 11, 12, tzinfo=UTC)))
                ctv = LINEAR_CTVAL.get(a)
                if ctv is None:
                    ctv = float(10 ** round(np.log10(100.0 / self.market.spec(a).price)))
                c[f"{a}-USDT-SWAP"] = OInst(f"{a}-USDT-SWAP", a, False, ctv, lt)
                if a in INVERSE_ASSETS:
                    c[f"{a}-USD-SWAP"] = OInst(f"{a}-USD-SWAP", a, True, 100.0 if a == "BTC" else 10.0, lt)
            self._insts = c
        return c

    def inst(self, q: dict[str, str], name: str = "instId") -> OInst:
        v = q.get(name)
        if not v:
            raise ParamError(f"Parameter {name} can not be empty", "50014")
        d = self.insts()
        if v not in d or d[v].list_time > self.now_ms():
            raise ParamError("Instrument ID does not exist", "51001")
        return d[v]

    def ccy_insts(self, q: dict[str, str]) -> tuple[str, list[OInst]]:
        ccy = q.get("ccy")
        if not ccy:
            raise ParamError("Parameter ccy can not be empty", "50014")
        lst = [i for i in self.insts().values() if i.asset == ccy]
        if not lst:
            raise ParamError("Parameter ccy error", "51000")
        return ccy, lst

    def pdec(self, i: OInst) -> int:
        p = self.market.spec(i.asset).price
        return 1 if p > 1000 else price_decimals(p, 5)

    def instruments(self, req: Request) -> Response:
        q = req.query
        it = q.get("instType")
        if not it:
            raise ParamError("Parameter instType can not be empty", "50014")
        if it != "SWAP":
            return self.ok([])
        lst = [i for i in self.insts().values() if i.list_time <= self.now_ms()]
        if q.get("instId"):
            lst = [i for i in lst if i.inst_id == q["instId"]]
        if q.get("instFamily"):
            lst = [i for i in lst if i.family == q["instFamily"]]
        out = []
        for n, i in enumerate(lst):
            pd = self.pdec(i)
            out.append({
                "alias": "", "auctionEndTime": "", "baseCcy": "", "category": "1", "contTdSwTime": str(i.list_time),
                "ctMult": "1", "ctType": "inverse" if i.inverse else "linear",
                "ctVal": s_(i.ct_val, 8), "ctValCcy": "USD" if i.inverse else i.asset, "expTime": "",
                "floatPxLmtPct": "0.005", "freq": "", "futureSettlement": False, "groupId": "4",
                "initPxLmtPct": "0.02", "instCategory": "1", "instFamily": i.family, "instId": i.inst_id,
                "instIdCode": 10459 + n, "instType": "SWAP", "lever": "100", "listTime": str(i.list_time),
                "longPosRemainingQuota": "", "lotSz": "1" if i.inverse else "0.01",
                "maxIcebergSz": "100000000.0000000000000000", "maxLmtAmt": "20000000", "maxLmtSz": "100000000",
                "maxMktAmt": "", "maxMktSz": "35000", "maxPlatOICoinLmt": "", "maxPlatOILmt": "",
                "maxPxLmtPct": "0.01", "maxStopSz": "35000", "maxTriggerSz": "100000000.0000000000000000",
                "maxTwapSz": "100000000.0000000000000000", "method": "", "minSz": "1" if i.inverse else "0.01",
                "openType": "call_auction", "optType": "", "posLmtAmt": "250000", "posLmtPct": "30",
                "preMktSwTime": "", "quoteCcy": "", "rpiMinLevel": "3", "rpiMinPxBand": "20",
                "ruleType": "normal", "seriesId": "", "settleCcy": i.asset if i.inverse else "USDT",
                "shortPosRemainingQuota": "", "state": "live", "stk": "", "tickSz": s_(10 ** -pd, pd),
                "tradeQuoteCcyList": [], "uly": i.family, "upcChg": [],
            })
        return self.ok(out)

    # open interest --------------------------------------------------------------------
    def _oi(self, i: OInst, ts: np.ndarray):
        """(contracts, coin, usd) one-sided OI of instrument at instants ts."""
        base = self.market.open_interest(i.asset, ts, i.venue)
        px = self.market.price_at(i.asset, ts, "mark", i.venue)
        if i.inverse:
            ct = np.round(base * px / i.ct_val)
            coin = ct * i.ct_val / px
        else:
            ct = np.round(base / i.ct_val)
            coin = ct * i.ct_val
        return ct, coin, coin * px

    def open_interest(self, req: Request) -> Response:
        q = req.query
        it = q.get("instType")
        if not it:
            raise ParamError("Parameter instType can not be empty", "50014")
        if it != "SWAP":
            return self.ok([])
        if q.get("instId"):
            lst = [self.inst(q)]
        else:
            lst = [i for i in self.insts().values() if i.list_time <= self.now_ms()]
            if q.get("instFamily"):
                lst = [i for i in lst if i.family == q["instFamily"]]
        now = self.now_ms()
        out = []
        for i in lst:
            ct, coin, usd = self._oi(i, np.array([now]))
            out.append({"instType": "SWAP", "instId": i.inst_id, "oi": s_(ct[0], 0), "oiCcy": s_(coin[0], 8),
                        "oiUsd": s_(usd[0], 4), "ts": str(now)})
        return self.ok(out)

    # rubik helpers -------------------------------------------------------------------
    def _rubik_grid(self, q: dict[str, str], default_period: str = "5m", limit_max: int = 100,
                    use_limit: bool = True, depth_rows: int = 1440):
        period = q.get("period", default_period)
        sp = bar_spec(period)
        if sp is None or sp[0] == -1:
            raise ParamError("Parameter period error", "51000")
        iv, off = sp
        err = lambda n: ParamError(f"Parameter {n} error", "51000")  # noqa: E731
        begin, end = p_int(q, "begin", None, err), p_int(q, "end", None, err)
        lim = p_int(q, "limit", limit_max, err) if use_limit else 10**9
        if lim < 1 or (use_limit and lim > limit_max):
            raise ParamError("Parameter limit error", "51000")
        now = self.now_ms()
        last = ((now - off) // iv) * iv + off
        oldest = last - (depth_rows - 1) * iv
        oldest = max(oldest, RUBIK_START_1D if iv >= DAY_MS else RUBIK_START)
        # begin/end are exclusive: "begin: return records newer than the requested ts", "end: return records
        # earlier than the requested ts" (OKX v5 docs, Trading Statistics pages).
        hi = last if end is None else min(end - 1, last)
        lo = oldest if begin is None else max(begin + 1, oldest)
        a = -((-(lo - off)) // iv) * iv + off
        b = ((hi - off) // iv) * iv + off
        if b < a:
            return np.zeros(0, dtype=np.int64)
        cnt = (b - a) // iv + 1
        if cnt > lim:
            a = b - (lim - 1) * iv
        return np.arange(b, a - 1, -iv, dtype=np.int64)

    def oi_history(self, req: Request) -> Response:
        i = self.inst(req.query)
        ts = self._rubik_grid(req.query)
        if len(ts) == 0:
            return self.ok([])
        ct, coin, usd = self._oi(i, ts)
        a, b, c = strs(ct, 0), strs(coin, 8), strs(usd, 4)
        return self.ok([[str(t), a[k], b[k], c[k]] for k, t in enumerate(ts.tolist())])

    def oi_volume(self, req: Request) -> Response:
        q = req.query
        _, lst = self.ccy_insts(q)
        per = q.get("period", "5m")
        depth = {"5m": 2 * 288, "1H": 30 * 24, "1D": 180}.get(per)
        if depth is None:
            raise ParamError("Parameter period error", "51000")
        ts = self._rubik_grid(q, per, use_limit=False, depth_rows=depth)
        if len(ts) == 0:
            return self.ok([])
        iv = bar_spec(per)[0]
        oi_usd = np.zeros(len(ts))
        vol_usd = np.zeros(len(ts))
        for i in lst:
            oi_usd += self._oi(i, ts)[2]
            h = (ts - GENESIS_MS) // HOUR_MS
            d = self.market.data(i.asset, int(h.max()) + 2)
            share = 0.16 if not i.inverse else 0.02
            vol_usd += d.vol[h] * share * d.px[h] * iv / HOUR_MS
        a, b = strs(oi_usd, 4), strs(vol_usd, 4)
        return self.ok([[str(t), a[k], b[k]] for k, t in enumerate(ts.tolist())])

    def ls_ccy(self, req: Request) -> Response:
        q = req.query
        ccy, lst = self.ccy_insts(q)
        per = q.get("period", "5m")
        depth = {"5m": 2 * 288, "1H": 30 * 24, "1D": 180}.get(per)
        if depth is None:
            raise ParamError("Parameter period error", "51000")
        ts = self._rubik_grid(q, per, use_limit=False, depth_rows=depth)
        ls = self.market.long_share(ccy, ts, "global", "okx") if len(ts) else np.zeros(0)
        r = strs(np.round(ls / (1 - ls), 2), 2)
        return self.ok([[str(t), r[k]] for k, t in enumerate(ts.tolist())])

    def ls_contract(self, req: Request, kind: str) -> Response:
        i = self.inst(req.query)
        ts = self._rubik_grid(req.query)
        if len(ts) == 0:
            return self.ok([])
        ls = self.market.long_share(i.asset, ts, kind, i.venue)
        r = strs(np.round(ls / (1 - ls), 4), 4)
        return self.ok([[str(t), r[k]] for k, t in enumerate(ts.tolist())])

    # funding --------------------------------------------------------------------------
    def _rates(self, i: OInst, ts: np.ndarray) -> np.ndarray:
        return self.market.funding(i.asset, ts, FUNDING_HOURS, i.venue, cap=0.0075)

    def funding_history(self, req: Request) -> Response:
        q = req.query
        i = self.inst(q)
        err = lambda n: ParamError(f"Parameter {n} error", "51000")  # noqa: E731
        before, after = p_int(q, "before", None, err), p_int(q, "after", None, err)
        lim = p_int(q, "limit", 100, err)
        if lim < 1 or lim > 400:
            raise ParamError("Parameter limit error", "51000")
        now = self.now_ms()
        step = FUNDING_HOURS * HOUR_MS
        oldest = max(now - FUNDING_DEPTH, i.list_time + 1)
        hi = now if after is None else min(now, after - 1)
        lo = oldest if before is None else max(oldest, before + 1)
        a = -((-lo) // step) * step
        b = (hi // step) * step
        if b < a:
            return self.ok([])
        if (b - a) // step + 1 > lim:
            a = b - (lim - 1) * step
        ts = np.arange(b, a - 1, -step, dtype=np.int64)
        rates = self._rates(i, ts)
        realized = rates * (1 - 0.00004 * np.abs(self.market.noise((ts - GENESIS_MS) // HOUR_MS, 77)))
        fr, rr = fmt(rates, 16), fmt(realized, 16)
        return self.ok([{"formulaType": "noRate", "fundingRate": fr[k].rstrip("0"), "fundingTime": str(t),
                         "instId": i.inst_id, "instType": "SWAP", "method": "next_period",
                         "realizedRate": rr[k].rstrip("0")} for k, t in enumerate(ts.tolist())])

    def funding_rate(self, req: Request) -> Response:
        # instId=ANY returns every swap's snapshot (OKX v5 changelog 2025: "instId ... ANY to return the
        # funding rate info of all swap symbols"); the client's main path depends on it.
        if req.query.get("instId") == "ANY":
            now = self.now_ms()
            return self.ok([self._funding_now(i) for i in self.insts().values() if i.list_time <= now])
        return self.ok([self._funding_now(self.inst(req.query))])

    def _funding_now(self, i) -> dict:
        now = self.now_ms()
        step = FUNDING_HOURS * HOUR_MS
        nxt = (now // step + 1) * step
        last = nxt - step
        cur_h = (now - GENESIS_MS) // HOUR_MS
        pred = float(self._rates(i, np.array([GENESIS_MS + cur_h * HOUR_MS]))[0])
        sett = float(self._rates(i, np.array([last]))[0]) if last > i.list_time else 0.0
        prem = float(self.market.premium(i.asset, cur_h - 1, cur_h)[0]) if cur_h > 0 else 0.0
        return {"formulaType": "noRate", "fundingRate": s_(pred, 16), "fundingTime": str(nxt),
                "impactValue": "", "instId": i.inst_id, "instType": "SWAP", "interestRate": "",
                "maxFundingRate": "0.0075", "method": "current_period", "minFundingRate": "-0.0075",
                "nextFundingRate": "", "nextFundingTime": str(nxt + step), "premium": s_(prem, 16),
                "settFundingRate": s_(sett, 16), "settState": "settled", "ts": str(now)}

    def mark_price(self, req: Request) -> Response:
        q = req.query
        if q.get("instType", "SWAP") != "SWAP":
            return self.ok([])
        lst = [self.inst(q)] if q.get("instId") else list(self.insts().values())
        now = self.now_ms()
        return self.ok([{"instType": "SWAP", "instId": i.inst_id,
                         "markPx": s_(self.market.price_now(i.asset, now, "mark", i.venue), self.pdec(i)),
                         "ts": str(now)} for i in lst])

    # candles ---------------------------------------------------------------------------
    def candles(self, req: Request, kind: str, max_limit: int, recent: bool = False) -> Response:
        q = req.query
        if kind == "index":
            v = q.get("instId", "")
            parts = v.split("-")
            if len(parts) != 2 or parts[1] not in ("USDT", "USD") or parts[0] not in self.market.universe:
                raise ParamError("Instrument ID does not exist", "51001")
            i = OInst(v, parts[0], parts[1] == "USD", 1.0, GENESIS_MS)
        else:
            i = self.inst(q)
        bar = q.get("bar", "1m")
        sp = bar_spec(bar)
        if sp is None:
            raise ParamError("Parameter bar error", "51000")
        iv, off = sp
        err = lambda n: ParamError(f"Parameter {n} error", "51000")  # noqa: E731
        after, before = p_int(q, "after", None, err), p_int(q, "before", None, err)
        lim = p_int(q, "limit", 100, err)
        if lim < 1:
            raise ParamError("Parameter limit error", "51000")
        lim = min(lim, max_limit)
        now = self.now_ms()
        first = i.list_time
        if recent and iv != -1:
            first = max(first, now - 1440 * iv)
        end = None if after is None else after - 1
        start = None if before is None else before + 1
        opens = bar_opens(iv, start, end, lim, now, first, newest_first_limit=True, offset_ms=off)
        b = make_bars(self.market, i.asset, opens, iv, kind, i.venue)
        pd = self.pdec(i)
        o, h, lo, c = (strs(b[k], pd) for k in ("o", "h", "l", "c"))
        ol = [str(x) for x in opens.tolist()]
        n = len(ol)
        if kind == "perp":
            coin = b["v"]
            px = (b["o"] + b["c"]) / 2
            if i.inverse:
                cts = np.round(coin * px / i.ct_val)
                coin = cts * i.ct_val / px
                quote = cts * i.ct_val
            else:
                cts = np.round(coin / i.ct_val)
                coin = cts * i.ct_val
                quote = coin * px
            vc, vcc, vq = strs(cts, 0), strs(coin, 8), strs(quote, 4)
            rows = [[ol[k], o[k], h[k], lo[k], c[k], vc[k], vcc[k], vq[k], "1"] for k in range(n)]
        else:
            rows = [[ol[k], o[k], h[k], lo[k], c[k], "1"] for k in range(n)]
        rows.reverse()
        return self.ok(rows)

    def ticker(self, req: Request) -> Response:
        i = self.inst(req.query)
        now = self.now_ms()
        m = self.market
        last = m.price_now(i.asset, now, "perp", i.venue)
        cur_h = (now - GENESIS_MS) // HOUR_MS
        hb = m.hour_bars(i.asset, cur_h - 24, cur_h, "perp", i.venue)
        pd = self.pdec(i)
        vol = float(hb["v"].sum())
        day0 = (now // DAY_MS) * DAY_MS
        day8 = ((now + 8 * HOUR_MS) // DAY_MS) * DAY_MS - 8 * HOUR_MS
        return self.ok([{"instType": "SWAP", "instId": i.inst_id, "last": s_(last, pd), "lastSz": "1",
                         "askPx": s_(last + 10 ** -pd, pd), "askSz": "120", "bidPx": s_(last, pd), "bidSz": "98",
                         "open24h": s_(hb["o"][0], pd), "high24h": s_(max(hb["h_"].max(), last), pd),
                         "low24h": s_(min(hb["l"].min(), last), pd),
                         "volCcy24h": s_(vol, 4),
                         "vol24h": s_(vol * (last if i.inverse else 1) / i.ct_val, 0),
                         "sodUtc0": s_(m.price_at(i.asset, [day0], "perp", i.venue)[0], pd),
                         "sodUtc8": s_(m.price_at(i.asset, [day8], "perp", i.venue)[0], pd), "ts": str(now)}])

    def index_tickers(self, req: Request) -> Response:
        q = req.query
        v = q.get("instId", "")
        parts = v.split("-")
        if len(parts) != 2 or parts[0] not in self.market.universe:
            raise ParamError("Instrument ID does not exist", "51001")
        a = parts[0]
        now = self.now_ms()
        m = self.market
        cur_h = (now - GENESIS_MS) // HOUR_MS
        hb = m.hour_bars(a, cur_h - 24, cur_h, "index", "okx")
        px = m.price_now(a, now, "index", "okx")
        i = OInst(v, a, False, 1.0, GENESIS_MS)
        pd = self.pdec(i)
        day0 = (now // DAY_MS) * DAY_MS
        day8 = ((now + 8 * HOUR_MS) // DAY_MS) * DAY_MS - 8 * HOUR_MS
        return self.ok([{"instId": v, "idxPx": s_(px, pd), "high24h": s_(max(hb["h_"].max(), px), pd),
                         "sodUtc0": s_(m.price_at(a, [day0], "index")[0], pd), "open24h": s_(hb["o"][0], pd),
                         "low24h": s_(min(hb["l"].min(), px), pd),
                         "sodUtc8": s_(m.price_at(a, [day8], "index")[0], pd), "ts": str(now)}])


VENUES = [Okx]
