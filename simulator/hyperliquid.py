"""Hyperliquid POST /info (meta, metaAndAssetCtxs, fundingHistory, candleSnapshot)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np

from .common import (
    INTERVAL_MS,
    ParamError,
    Request,
    Response,
    Venue,
    WindowLimiter,
    bar_opens,
    json_response,
    make_bars,
)
from .market import GENESIS_MS, HOUR_MS, MINUTE_MS, to_ms

LISTED = {"BTC": to_ms(datetime(2023, 3, 1, tzinfo=UTC)),
          "ETH": to_ms(datetime(2023, 3, 1, tzinfo=UTC)),
          "SOL": to_ms(datetime(2023, 5, 1, tzinfo=UTC)),
          "PEPE": to_ms(datetime(2023, 5, 20, tzinfo=UTC))}
HOURLY_FROM = to_ms(datetime(2023, 6, 8, tzinfo=UTC))
SZ_DEC = {"BTC": 5, "ETH": 4, "SOL": 2, "BNB": 3, "XRP": 0, "DOGE": 0, "PEPE": 0}
HL_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "8h", "12h", "1d", "3d", "1w", "1M")
MAX_FUNDING_ROWS = 500
MAX_CANDLES = 5000


def sig(v: float, digits: int = 5) -> str:
    """Hyperliquid-style price: at most `digits` significant figures, no trailing zeros."""
    if v == 0:
        return "0.0"
    d = max(0, digits - 1 - int(np.floor(np.log10(abs(v)))))
    s = f"{v:.{d}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s if "." in s else s + ".0"


def dec(v: float, d: int) -> str:
    s = f"{v:.{d}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


class Hyperliquid(Venue):
    prefix = "hyperliquid"

    def setup(self) -> None:
        self.weight = WindowLimiter(self.scale(1200), self.window(60))
        self.route("POST", "/info", self.info)

    def not_found(self, req: Request) -> Response:
        return Response(404, b"", "text/plain")

    def error(self, e: ParamError) -> Response:
        return Response(e.status, f"Failed to deserialize the JSON body into the target type: {e.msg}".encode(),
                        "text/plain; charset=utf-8")

    def coins(self) -> dict[str, str]:
        """HL coin name -> asset."""
        out = {}
        for a in self.market.universe:
            out["kPEPE" if a == "PEPE" else a] = a
        return out

    def listed(self, a: str) -> int:
        return max(LISTED.get(a, self.market.spec(a).listed_ms), LISTED["BTC"])

    def handle(self, req: Request) -> Response:
        fn = self.find(req)
        if fn is None:
            return self.not_found(req)
        try:
            body = req.json()
        except Exception:  # noqa: BLE001
            return Response(422, b"Failed to deserialize the JSON body into the target type", "text/plain")
        if not isinstance(body, dict) or "type" not in body:
            return Response(422, b"Failed to deserialize the JSON body into the target type: missing field `type`",
                            "text/plain")
        w = 20
        if body.get("type") in ("l2Book", "allMids", "clearinghouseState", "orderStatus"):
            w = 2
        ok, _, wait = self.weight.try_consume(w, time.time())
        if not ok:
            return Response(429, b"null", "application/json", {"Retry-After": str(max(1, int(np.ceil(wait))))})
        try:
            resp = fn(req)
        except ParamError as e:
            return self.error(e)
        extra = getattr(resp, "_extra_weight", 0)
        if extra:
            self.weight.try_consume(extra, time.time())
        return resp

    # ---------------------------------------------------------------------------
    def info(self, req: Request) -> Response:
        body = req.json()
        t = body.get("type")
        if t == "meta":
            return json_response(self._meta())
        if t == "metaAndAssetCtxs":
            return json_response([self._meta(), self._ctxs()])
        if t == "allMids":
            now = self.now_ms()
            return json_response({c: sig(self.market.price_now(a, now, "perp", "hyperliquid") * self._k(a))
                                  for c, a in self.coins().items() if self.listed(a) <= now})
        if t == "fundingHistory":
            return self._funding(body)
        if t == "candleSnapshot":
            return self._candles(body)
        raise ParamError(f"unknown variant `{t}`", status=422)

    def _k(self, a: str) -> float:
        return 1000.0 if a == "PEPE" else 1.0

    def _meta(self) -> dict:
        now = self.now_ms()
        uni = [{"szDecimals": SZ_DEC.get(a, 1), "name": c, "maxLeverage": 40 if a == "BTC" else 25,
                "marginTableId": 50}
               for c, a in self.coins().items() if self.listed(a) <= now]
        return {"universe": uni,
                "marginTables": [[50, {"description": "", "marginTiers": [{"lowerBound": "0.0", "maxLeverage": 50}]}]],
                "collateralToken": 0}

    def _ctxs(self) -> list[dict]:
        now = self.now_ms()
        m = self.market
        out = []
        cur_h = (now - GENESIS_MS) // HOUR_MS
        for _c, a in self.coins().items():
            if self.listed(a) > now:
                continue
            k = self._k(a)
            mark = m.price_now(a, now, "mark", "hyperliquid") * k
            oracle = m.price_now(a, now, "index", "hyperliquid") * k
            mid = m.price_now(a, now, "perp", "hyperliquid") * k
            hb = m.hour_bars(a, cur_h - 24, cur_h, "perp", "hyperliquid")
            fund = float(m.funding(a, np.array([GENESIS_MS + cur_h * HOUR_MS]), 1, "hyperliquid", cap=0.04 * 8)[0])
            prem = float(m.premium(a, cur_h - 1, cur_h)[0])
            oi = float(m.open_interest(a, np.array([now]), "hyperliquid")[0]) / k
            out.append({"dayNtlVlm": dec(float((hb["v"] * hb["c"]).sum()), 6), "funding": dec(fund, 10),
                        "impactPxs": [sig(mid * 0.99995), sig(mid * 1.00005)], "markPx": sig(mark),
                        "midPx": sig(mid), "openInterest": dec(oi, SZ_DEC.get(a, 2)), "oraclePx": sig(oracle),
                        "premium": dec(prem, 8), "prevDayPx": sig(float(hb["o"][0]) * k)})
        return out

    def _coin(self, coin) -> str:
        c = self.coins()
        if coin not in c:
            raise ParamError(f"unknown coin {coin!r}", status=500)
        return c[coin]

    def _funding(self, body: dict) -> Response:
        a = self._coin(body.get("coin"))
        start = body.get("startTime")
        if not isinstance(start, int):
            raise ParamError("missing field `startTime`", status=422)
        end = body.get("endTime")
        now = self.now_ms()
        hi = now if end is None else min(int(end), now)
        lo = max(start, self.listed(a) + 1)
        # 8h rows before HOURLY_FROM, then hourly
        times, ivs = [], []
        if lo < HOURLY_FROM:
            step = 8 * HOUR_MS
            t0 = -((-lo) // step) * step
            t8 = np.arange(t0, min(hi, HOURLY_FROM - 1) + 1, step, dtype=np.int64)[: MAX_FUNDING_ROWS + 1]
            times.append(t8)
            ivs.append(np.full(len(t8), 8))
        lo1 = max(lo, HOURLY_FROM)
        if hi >= lo1:
            t0 = -((-lo1) // HOUR_MS) * HOUR_MS
            t1 = np.arange(t0, min(hi, t0 + (MAX_FUNDING_ROWS + 1) * HOUR_MS) + 1, HOUR_MS, dtype=np.int64)
            times.append(t1)
            ivs.append(np.full(len(t1), 1))
        if not times:
            return json_response([])
        t = np.concatenate(times)
        iv = np.concatenate(ivs)
        jitter = (self.market.unoise((t - GENESIS_MS) // HOUR_MS, 91) * 450).astype(np.int64)
        tj = t + jitter
        keep = (tj >= start) & (tj <= hi)
        t, iv, tj = t[keep][:MAX_FUNDING_ROWS], iv[keep][:MAX_FUNDING_ROWS], tj[keep][:MAX_FUNDING_ROWS]
        rates = np.empty(len(t))
        prem = np.empty(len(t))
        for hours in (1, 8):
            msk = iv == hours
            if msk.any():
                rates[msk] = self.market.funding(a, t[msk], hours, "hyperliquid", cap=0.04 * 8)
                h = (t[msk] - GENESIS_MS) // HOUR_MS
                d = self.market.data(a, int(h.max()) + 1)
                prem[msk] = d.prem[h - 1] * 1.0
        coin = body.get("coin")
        rows = [{"coin": coin, "fundingRate": dec(float(rates[i]), 10), "premium": dec(float(prem[i]), 8),
                 "time": int(tj[i])} for i in range(len(t))]
        resp = json_response(rows)
        resp._extra_weight = len(rows) // 20  # type: ignore[attr-defined]
        return resp

    def _candles(self, body: dict) -> Response:
        req = body.get("req")
        if not isinstance(req, dict):
            raise ParamError("missing field `req`", status=422)
        coin = req.get("coin")
        a = self._coin(coin)
        iv = req.get("interval")
        if iv not in HL_INTERVALS:
            raise ParamError(f"unknown variant `{iv}`", status=422)
        start, end = req.get("startTime"), req.get("endTime")
        if not isinstance(start, int):
            raise ParamError("missing field `startTime`", status=422)
        ivm = INTERVAL_MS[iv]
        now = self.now_ms()
        first = self.listed(a)
        if ivm > 0:
            first = max(first, now - MAX_CANDLES * ivm)
        opens = bar_opens(ivm, start, end, MAX_CANDLES, now, first, newest_first_limit=False)
        b = make_bars(self.market, a, opens, ivm, "perp", "hyperliquid")
        k = self._k(a)
        sd = SZ_DEC.get(a, 2)
        key = (opens // MINUTE_MS).astype(np.int64)
        n_tr = np.maximum(1, np.round(b["v"] * b["c"] / 12000 * (1 + 0.1 * self.market.noise(key, 55)))).astype(int)
        rows = [{"t": int(opens[i]), "T": int(b["close_ms"][i]), "s": coin, "i": iv, "o": sig(b["o"][i] * k),
                 "c": sig(b["c"][i] * k), "h": sig(b["h"][i] * k), "l": sig(b["l"][i] * k),
                 "v": dec(float(b["v"][i] / k), sd), "n": int(n_tr[i])} for i in range(len(opens))]
        resp = json_response(rows)
        resp._extra_weight = len(rows) // 60  # type: ignore[attr-defined]
        return resp


VENUES = [Hyperliquid]
