"""Deribit API v2 public market data (inverse BTC/ETH perpetuals and quarterly futures)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import numpy as np

from .binance import quarter_expiries
from .common import (
    ParamError,
    Request,
    Response,
    Venue,
    WindowLimiter,
    bar_opens,
    json_response,
    make_bars,
    p_int,
)
from .market import DAY_MS, GENESIS_MS, HOUR_MS, MINUTE_MS

CURRENCIES = ("BTC", "ETH")
YEAR_MS = 365 * DAY_MS
RESOLUTIONS = {"1": MINUTE_MS, "3": 3 * MINUTE_MS, "5": 5 * MINUTE_MS, "10": 10 * MINUTE_MS,
               "15": 15 * MINUTE_MS, "30": 30 * MINUTE_MS, "60": HOUR_MS, "120": 2 * HOUR_MS,
               "180": 3 * HOUR_MS, "360": 6 * HOUR_MS, "720": 12 * HOUR_MS, "1D": DAY_MS}
MAX_FUNDING_ROWS = 744
MAX_CHART_POINTS = 5000


def dated_name(asset: str, exp_ms: int) -> str:
    d = datetime.fromtimestamp(exp_ms / 1000, tz=UTC)
    return f"{asset}-{d.day}{d.strftime('%b').upper()}{d.strftime('%y')}"


def r(v: float, d: int = 2) -> float:
    return round(float(v), d)


class Deribit(Venue):
    prefix = "deribit"

    def setup(self) -> None:
        self.burst = WindowLimiter(self.scale(100), self.window(1))
        self.route("GET", "/api/v2/public/get_book_summary_by_currency", self.book_summary)
        self.route("GET", "/api/v2/public/get_funding_rate_history", self.funding_history)
        self.route("GET", "/api/v2/public/get_tradingview_chart_data", self.chart)
        self.route("GET", "/api/v2/public/get_instruments", self.instruments)
        self.route("GET", "/api/v2/public/get_time", lambda q: self.ok(q, self.now_ms()))

    def _id(self, req: Request):
        v = req.query.get("id")
        if v is None:
            return 1
        try:
            return int(v)
        except ValueError:
            return v

    def ok(self, req: Request, result) -> Response:
        return json_response({"jsonrpc": "2.0", "id": self._id(req), "result": result})

    def error(self, e: ParamError) -> Response:
        return json_response({"jsonrpc": "2.0", "error": {"message": "Invalid params",
                                                          "data": {"reason": e.msg, "param": e.code or ""},
                                                          "code": -32602}}, 400)

    def handle(self, req: Request) -> Response:
        fn = self.find(req)
        if fn is None:
            return json_response({"jsonrpc": "2.0", "error": {"message": "Method not found", "code": -32601}}, 400)
        ok, _, wait = self.burst.try_consume(1, time.time())
        if not ok:
            # Deribit rate limits (support.deribit.com "Rate Limits", docs.deribit.com Errors): no credits left
            # -> JSON-RPC error 10028 "too_many_requests", no Retry-After (wait for the credit refill). The
            # docs do not state the HTTP status of that answer over HTTP; 429 is what client libraries map
            # it to, and sources/http.py recognises 10028 in the body whatever the status.
            return json_response({"jsonrpc": "2.0", "id": self._id(req), "usIn": int(time.time() * 1e6),
                                  "error": {"message": "too_many_requests", "code": 10028}}, 429)
        try:
            return fn(req)
        except ParamError as e:
            return self.error(e)

    # instruments ---------------------------------------------------------------
    def insts(self, currency: str) -> list[dict]:
        now = self.now_ms()
        out = [{"name": f"{currency}-PERPETUAL", "asset": currency, "expiry": None, "created": 1534377600000}]
        for exp in quarter_expiries(now, 3):
            out.append({"name": dated_name(currency, exp), "asset": currency, "expiry": exp,
                        "created": exp - 40 * 7 * DAY_MS})
        return out

    def find_inst(self, name: str | None) -> dict:
        if not name:
            raise ParamError("value is required", "instrument_name")
        cur = name.split("-")[0]
        if cur in CURRENCIES and cur in self.market.universe:
            for i in self.insts(cur):
                if i["name"] == name:
                    return i
        raise ParamError("instrument not found", "instrument_name")

    def _currency(self, q) -> str:
        c = q.get("currency")
        if c not in CURRENCIES or c not in self.market.universe:
            raise ParamError("must be one of the supported currencies", "currency")
        return c

    def _fut_mult(self, i: dict, ts: np.ndarray) -> np.ndarray:
        if i["expiry"] is None:
            return np.ones(len(ts))
        h = (ts - GENESIS_MS) // HOUR_MS
        tau = np.maximum(i["expiry"] - ts, 0) / YEAR_MS
        return 1.0 + self.market.basis_ann(i["asset"], h) * tau

    def instruments(self, req: Request) -> Response:
        c = self._currency(req.query)
        out = []
        for i in self.insts(c):
            out.append({"instrument_name": i["name"], "kind": "future", "base_currency": c, "quote_currency": "USD",
                        "settlement_currency": c, "counter_currency": "USD", "contract_size": 10.0 if c == "BTC" else 1.0,
                        "tick_size": 0.5 if c == "BTC" else 0.05, "min_trade_amount": 10.0 if c == "BTC" else 1.0,
                        "is_active": True, "creation_timestamp": i["created"],
                        "expiration_timestamp": i["expiry"] or 32503708800000,
                        "settlement_period": "perpetual" if i["expiry"] is None else "month",
                        "instrument_type": "reversed", "future_type": "reversed"})
        return self.ok(req, out)

    def book_summary(self, req: Request) -> Response:
        q = req.query
        c = self._currency(q)
        if q.get("kind", "future") != "future":
            return self.ok(req, [])
        now = self.now_ms()
        m = self.market
        cur_h = (now - GENESIS_MS) // HOUR_MS
        idx = m.price_now(c, now, "index", "deribit")
        hb = m.hour_bars(c, cur_h - 24, cur_h, "perp", "deribit")
        oi_total = float(m.open_interest(c, np.array([now]), "deribit")[0]) * idx
        out = []
        for n, i in enumerate(self.insts(c)):
            mult = float(self._fut_mult(i, np.array([now]))[0])
            mark = m.price_now(c, now, "mark", "deribit") * mult
            last = m.price_now(c, now, "perp", "deribit") * mult
            share = 0.75 if i["expiry"] is None else 0.25 / (n * 1.5)
            vol = float(hb["v"].sum()) * share
            tick = 0.5 if c == "BTC" else 0.05
            oi = round(oi_total * share / 10) * 10
            row = {"volume_usd": r(vol * idx, 0), "volume": r(vol, 2), "quote_currency": "USD",
                   "price_change": r((last / (float(hb["o"][0]) * mult) - 1) * 100, 7), "open_interest": oi,
                   "mid_price": r(round(last / tick) * tick + tick / 2, 2), "mark_price": r(mark, 2),
                   "low": r(float(hb["l"].min()) * mult, 1), "last": r(round(last / tick) * tick, 2),
                   "instrument_name": i["name"], "high": r(float(hb["h_"].max()) * mult, 1),
                   "estimated_delivery_price": r(idx, 2), "creation_timestamp": now,
                   "bid_price": r(round(last / tick) * tick, 2), "base_currency": c,
                   "ask_price": r(round(last / tick) * tick + tick, 2)}
            if i["expiry"] is None:
                rate8 = float(m.funding(c, np.array([GENESIS_MS + cur_h * HOUR_MS]), 8, "deribit", clamp=0.00025,
                                        interest=0.0)[0])
                row["funding_8h"] = r(rate8, 7)
                row["current_funding"] = r(rate8 / 8 * 0.5, 8)
            out.append(row)
        return self.ok(req, out)

    def funding_history(self, req: Request) -> Response:
        q = req.query
        i = self.find_inst(q.get("instrument_name"))
        if i["expiry"] is not None:
            raise ParamError("instrument is not a perpetual", "instrument_name")
        start = p_int(q, "start_timestamp", None, lambda n: ParamError("must be an integer", n))
        end = p_int(q, "end_timestamp", None, lambda n: ParamError("must be an integer", n))
        if start is None:
            raise ParamError("value is required", "start_timestamp")
        if end is None:
            raise ParamError("value is required", "end_timestamp")
        now = self.now_ms()
        hi = min(end, now)
        lo = max(start, GENESIS_MS + HOUR_MS)
        a = -((-lo) // HOUR_MS) * HOUR_MS
        b = (hi // HOUR_MS) * HOUR_MS
        if b < a:
            return self.ok(req, [])
        if (b - a) // HOUR_MS + 1 > MAX_FUNDING_ROWS:
            b = a + (MAX_FUNDING_ROWS - 1) * HOUR_MS
        ts = np.arange(a, b + 1, HOUR_MS, dtype=np.int64)
        c = i["asset"]
        i8 = self.market.funding(c, ts, 8, "deribit", clamp=0.00025, interest=0.0)
        i1 = i8 / 8.0 + 2e-7 * self.market.noise((ts - GENESIS_MS) // HOUR_MS, 313)
        px = self.market.price_at(c, ts, "index", "deribit")
        prev = self.market.price_at(c, ts - HOUR_MS, "index", "deribit")
        return self.ok(req, [{"timestamp": int(ts[k]), "index_price": r(px[k], 2), "prev_index_price": r(prev[k], 2),
                              "interest_8h": float(i8[k]), "interest_1h": float(i1[k])} for k in range(len(ts))])

    def chart(self, req: Request) -> Response:
        q = req.query
        i = self.find_inst(q.get("instrument_name"))
        res = q.get("resolution")
        if res not in RESOLUTIONS:
            raise ParamError("must be one of the supported resolutions", "resolution")
        start = p_int(q, "start_timestamp", None, lambda n: ParamError("must be an integer", n))
        end = p_int(q, "end_timestamp", None, lambda n: ParamError("must be an integer", n))
        if start is None or end is None:
            raise ParamError("value is required", "start_timestamp" if start is None else "end_timestamp")
        iv = RESOLUTIONS[res]
        now = self.now_ms()
        opens = bar_opens(iv, start, end, MAX_CHART_POINTS, now, max(i["created"], GENESIS_MS),
                          newest_first_limit=True)
        if len(opens) == 0:
            return self.ok(req, {"status": "no_data", "ticks": [], "open": [], "high": [], "low": [], "close": [],
                                 "volume": [], "cost": []})
        share = 0.05 if i["expiry"] is None else 0.01
        b = make_bars(self.market, i["asset"], opens, iv, "perp" if i["expiry"] is None else "index", "deribit",
                      vol_share=share, price_mult=None if i["expiry"] is None else (lambda ms: self._fut_mult(i, ms)))
        cost = np.round(b["v"] * (b["o"] + b["c"]) / 2 / 10) * 10
        return self.ok(req, {"status": "ok", "ticks": opens.tolist(),
                             "open": np.round(b["o"], 2).tolist(), "high": np.round(b["h"], 2).tolist(),
                             "low": np.round(b["l"], 2).tolist(), "close": np.round(b["c"], 2).tolist(),
                             "volume": np.round(b["v"], 4).tolist(), "cost": cost.tolist()})


VENUES = [Deribit]
