"""Institutional and macro sources: Farside ETF flows (HTML), SoSoValue, CoinGecko, FRED, Stooq.

All series are daily and deterministic; traditional markets are mildly correlated with BTC daily
returns (SP500 ~0.3, NASDAQ ~0.35, dollar index ~-0.15, gold ~0.15) and ETF flows follow BTC
returns.
"""

from __future__ import annotations

import calendar
import threading
import time
from datetime import UTC, date, datetime, timedelta

import numpy as np

from .common import ParamError, Request, Response, Venue, WindowLimiter, json_response, text_response
from .market import DAY_MS, GENESIS, GENESIS_MS, HOUR_MS, asset_key

US_CLOSE_H = 21  # 16:00 New York ~ 21:00 UTC
ETF_START = date(2024, 1, 11)
ETH_ETF_START = date(2024, 7, 23)


# ---------------------------------------------------------------------------- calendar


def _easter(y: int) -> date:
    a = y % 19
    b, c = divmod(y, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    day = (h + l_ - 7 * m + 114) % 31 + 1
    return date(y, month, day)


def _nth_weekday(y: int, m: int, wd: int, n: int) -> date:
    d = date(y, m, 1)
    d += timedelta(days=(wd - d.weekday()) % 7)
    return d + timedelta(weeks=n - 1)


def _last_weekday(y: int, m: int, wd: int) -> date:
    d = date(y, m, calendar.monthrange(y, m)[1])
    return d - timedelta(days=(d.weekday() - wd) % 7)


def _observed(d: date) -> date:
    if d.weekday() == 5:
        return d - timedelta(days=1)
    if d.weekday() == 6:
        return d + timedelta(days=1)
    return d


_HOL_CACHE: dict[int, set[date]] = {}


def us_holidays(y: int) -> set[date]:
    """NYSE full-day holidays of year y."""
    h = _HOL_CACHE.get(y)
    if h is not None:
        return h
    h = {
        _observed(date(y, 1, 1)) if date(y, 1, 1).weekday() != 5 else date(y, 1, 1),
        _nth_weekday(y, 1, 0, 3), _nth_weekday(y, 2, 0, 3), _easter(y) - timedelta(days=2),
        _last_weekday(y, 5, 0), _observed(date(y, 7, 4)), _nth_weekday(y, 9, 0, 1),
        _nth_weekday(y, 11, 3, 4), _observed(date(y, 12, 25)),
    }
    if y >= 2022:
        h.add(_observed(date(y, 6, 19)))
    if y == 2025:
        h.add(date(2025, 1, 9))  # national day of mourning
    _HOL_CACHE[y] = h
    return h


def is_trading_day(d: date) -> bool:
    return d.weekday() < 5 and d not in us_holidays(d.year)


def day_ms(d: date) -> int:
    return calendar.timegm(d.timetuple()) * 1000


def weekdays(start: date, end: date) -> list[date]:
    out = []
    d = start
    while d <= end:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


# ---------------------------------------------------------------------------- daily model


class DailyModel:
    """Daily macro/ETF series derived from the market (cached per seed)."""

    # name: (start level, end-2026 target level, daily idio vol, beta to BTC daily log return)
    MACRO = {
        "SP500": (2510.0, 6800.0, 0.0100, 0.12),
        "NASDAQCOM": (6665.0, 23000.0, 0.0130, 0.17),
        "DTWEXBGS": (115.5, 121.0, 0.0030, -0.018),
        "GOLD": (1282.0, 4050.0, 0.0090, 0.055),
    }

    def __init__(self, market):
        self.market = market
        self.lock = threading.Lock()
        self._days: list[date] = []
        self._series: dict[str, np.ndarray] = {}
        self._btc: np.ndarray | None = None

    def _ensure(self, until: date) -> None:
        with self.lock:
            if self._days and self._days[-1] >= until:
                return
            end = date(until.year + 1, 12, 31)
            days = []
            d = GENESIS.date()
            while d <= end:
                days.append(d)
                d += timedelta(days=1)
            self._days = days
            n = len(days)
            ms = np.array([day_ms(x) + US_CLOSE_H * HOUR_MS for x in days], dtype=np.int64)
            h = (ms - GENESIS_MS) // HOUR_MS
            d_ = self.market.data("BTC", int(h.max()) + 1) if "BTC" in self.market.universe or True else None
            btc = d_.px[h]
            self._btc = btc
            r_btc = np.diff(np.log(btc), prepend=np.log(btc[0]))
            years = (n - 1) / 365.25 if n > 1 else 1
            t_years = (2026.9 - 2019.0)
            for k, (name, (s0, s1, vol, beta)) in enumerate(self.MACRO.items()):
                rng_parts = []
                for blk in range(n // 365 + 1):
                    r = np.random.default_rng([self.market.seed, 0xD41, k, blk])
                    rng_parts.append(r.standard_normal(365))
                z = np.concatenate(rng_parts)[:n]
                mu = np.log(s1 / s0) / (t_years * 365.25)
                lr = mu + vol * z + beta * r_btc
                # gentle pull toward the target path so levels stay realistic
                target = np.log(s0) + mu * np.arange(n)
                x = np.empty(n)
                x[0] = np.log(s0)
                for i in range(1, n):
                    x[i] = x[i - 1] + lr[i] - 0.01 * (x[i - 1] - target[i - 1])
                self._series[name] = np.exp(x)
            _ = years

    def idx(self, d: date) -> int:
        return (d - GENESIS.date()).days

    def value(self, name: str, d: date) -> float:
        self._ensure(d)
        return float(self._series[name][self.idx(d)])

    def values(self, name: str, ds: list[date]) -> np.ndarray:
        if not ds:
            return np.zeros(0)
        self._ensure(ds[-1])
        return self._series[name][[self.idx(x) for x in ds]]

    def btc_close(self, ds: list[date]) -> np.ndarray:
        self._ensure(ds[-1])
        return self._btc[[self.idx(x) for x in ds]]

    def ohlc(self, name: str, ds: list[date], salt: int):
        c = self.values(name, ds)
        prev = self.values(name, [d - timedelta(days=1) for d in ds])
        key = np.array([self.idx(x) for x in ds], dtype=np.int64)
        o = prev * (1 + 0.002 * self.market.noise(key, salt))
        hi = np.maximum(o, c) * (1 + np.abs(self.market.noise(key, salt + 1)) * 0.004)
        lo = np.minimum(o, c) * (1 - np.abs(self.market.noise(key, salt + 2)) * 0.004)
        return o, hi, lo, c

    # ETF flows -------------------------------------------------------------------
    BTC_FUNDS = [  # ticker, share of flows, idio sd (US$m), start
        ("IBIT", 0.48, 90.0, ETF_START), ("FBTC", 0.22, 45.0, ETF_START), ("BITB", 0.06, 12.0, ETF_START),
        ("ARKB", 0.08, 20.0, ETF_START), ("BTCO", 0.015, 4.0, ETF_START), ("EZBC", 0.012, 3.0, ETF_START),
        ("BRRR", 0.01, 3.0, ETF_START), ("HODL", 0.02, 5.0, ETF_START), ("BTCW", 0.005, 1.5, ETF_START),
        ("GBTC", 0.04, 35.0, ETF_START), ("BTC", 0.03, 6.0, date(2024, 7, 31)),
    ]
    ETH_FUNDS = [("ETHA", 0.6, 40.0, ETH_ETF_START), ("FETH", 0.2, 15.0, ETH_ETF_START),
                 ("ETHE", 0.05, 20.0, ETH_ETF_START), ("ETH", 0.1, 6.0, ETH_ETF_START),
                 ("ETHW", 0.05, 4.0, ETH_ETF_START)]

    def flows(self, asset: str, ds: list[date]) -> np.ndarray:
        """Per-fund daily flows in US$ millions (rounded to 0.1); NaN where the fund is not trading."""
        funds = self.BTC_FUNDS if asset == "BTC" else self.ETH_FUNDS
        out = np.full((len(ds), len(funds)), np.nan)
        if not ds:
            return out
        self._ensure(ds[-1])
        a_ms = np.array([day_ms(d) + US_CLOSE_H * HOUR_MS for d in ds], dtype=np.int64)
        h = (a_ms - GENESIS_MS) // HOUR_MS
        px = self.market.data(asset, int(h.max()) + 1).px
        ret1 = np.log(px[h] / px[h - 24])
        ret5 = np.log(px[h] / px[h - 24 * 5])
        key = np.array([self.idx(x) for x in ds], dtype=np.int64)
        scale = 1.0 if asset == "BTC" else 0.25
        total = scale * (140.0 + 4500.0 * ret1 + 2500.0 * ret5 + 260.0 * self.market.noise(key, 4100 + asset_key(asset) % 97))
        for j, (_t, share, sd, start) in enumerate(funds):
            live = np.array([d >= start for d in ds])
            v = share * total + sd * scale * self.market.noise(key, 4200 + j * 7 + asset_key(asset) % 13)
            if _t in ("GBTC", "ETHE"):
                age = np.array([(d - start).days for d in ds])
                v = v - 120.0 * scale * np.exp(-age / 120.0)
            small = np.abs(v) < sd * scale * 0.35
            v = np.where(small, 0.0, v)
            out[:, j] = np.where(live, np.round(v, 1), np.nan)
        return out


_MODELS: dict[int, DailyModel] = {}
_MODELS_LOCK = threading.Lock()


def model_for(market) -> DailyModel:
    with _MODELS_LOCK:
        m = _MODELS.get(id(market))
        if m is None or m.market is not market:
            m = DailyModel(market)
            _MODELS[id(market)] = m
        return m


def today_of(now_ms: int) -> date:
    return datetime.fromtimestamp(now_ms / 1000, tz=UTC).date()


def last_published_day(now_ms: int, publish_hour: int = US_CLOSE_H + 1) -> date:
    """Last calendar day whose US close data is published at now."""
    d = today_of(now_ms)
    if now_ms < day_ms(d) + publish_hour * HOUR_MS:
        d -= timedelta(days=1)
    return d


class _Daily(Venue):
    @property
    def model(self) -> DailyModel:
        return model_for(self.market)


# ---------------------------------------------------------------------------- Farside


def farside_cell(v: float) -> str:
    if np.isnan(v):
        return "-"
    s = f"{abs(v):,.1f}"
    return f"({s})" if v < 0 else s


class Farside(_Daily):
    prefix = "farside"

    def setup(self) -> None:
        self.route("GET", "/bitcoin-etf-flow-all-data/", lambda r: self.page(r, "BTC", True))
        self.route("GET", "/btc/", lambda r: self.page(r, "BTC", False))
        self.route("GET", "/ethereum-etf-flow-all-data/", lambda r: self.page(r, "ETH", True))
        self.route("GET", "/eth/", lambda r: self.page(r, "ETH", False))

    def page(self, req: Request, asset: str, full: bool) -> Response:
        now = self.now_ms()
        last = last_published_day(now, US_CLOSE_H + 2)
        start = ETF_START if asset == "BTC" else ETH_ETF_START
        if last < start:
            days = []
        else:
            days = weekdays(start, last)
        if not full:
            days = days[-25:]
        funds = self.model.BTC_FUNDS if asset == "BTC" else self.model.ETH_FUNDS
        fl = self.model.flows(asset, days)
        head = "".join(f"<th>{t}</th>" for t, *_ in funds)
        rows = []
        traded = []
        for i, d in enumerate(days):
            label = f"{d.day:02d} {d.strftime('%b %Y')}"
            if not is_trading_day(d):
                cells = "".join("<td>-</td>" for _ in funds)
                rows.append(f"    <tr><td>{label}</td>{cells}<td>0.0</td></tr>")
                continue
            vals = fl[i]
            tot = float(np.nansum(vals))
            traded.append(np.r_[vals, tot])
            cells = "".join(f"<td>{farside_cell(v)}</td>" for v in vals)
            rows.append(f"    <tr><td>{label}</td>{cells}<td>{farside_cell(round(tot, 1))}</td></tr>")
        if traded:
            arr = np.array(traded)
            summ = {"Total": np.nansum(arr, axis=0), "Average": np.nanmean(arr, axis=0),
                    "Maximum": np.nanmax(arr, axis=0), "Minimum": np.nanmin(arr, axis=0)}
            for name, v in summ.items():
                cells = "".join(f"<td>{farside_cell(round(float(x), 1))}</td>" for x in v)
                rows.append(f"    <tr><td>{name}</td>{cells}</tr>")
        title = "Bitcoin" if asset == "BTC" else "Ethereum"
        html = (
            "<!DOCTYPE html>\n<html lang=\"en-GB\">\n<head>\n<meta charset=\"UTF-8\">\n"
            f"<title>{title} ETF Flow – All Data – Farside Investors</title>\n</head>\n<body>\n"
            f"<h1>{title} ETF Flow (US$m)</h1>\n"
            "<p>All data in US$ millions. Source: Farside Investors (simulated).</p>\n"
            "<table class=\"etf\">\n  <thead>\n"
            f"    <tr><th>Date</th>{head}<th>Total</th></tr>\n  </thead>\n  <tbody>\n"
            + "\n".join(rows) + "\n  </tbody>\n</table>\n</body>\n</html>\n")
        return text_response(html, 200, "text/html; charset=UTF-8")


# ---------------------------------------------------------------------------- SoSoValue


class SoSoValue(_Daily):
    prefix = "sosovalue"

    def setup(self) -> None:
        self.route("POST", "/openapi/v2/etf/historicalInflowChart", self.inflow)

    def error(self, e: ParamError) -> Response:
        return json_response({"code": e.code or 40000, "msg": e.msg, "data": None}, 200)

    def inflow(self, req: Request) -> Response:
        try:
            body = req.json()
        except Exception:  # noqa: BLE001
            raise ParamError("request body invalid", 40000) from None
        typ = body.get("type") if isinstance(body, dict) else None
        if typ not in ("us-btc-spot", "us-eth-spot"):
            raise ParamError("type invalid", 40000)
        asset = "BTC" if typ == "us-btc-spot" else "ETH"
        start = ETF_START if asset == "BTC" else ETH_ETF_START
        last = last_published_day(self.now_ms(), US_CLOSE_H + 3)
        if last < start:
            return json_response({"code": 0, "msg": None, "data": {"list": []}})
        days = [d for d in weekdays(start, last) if is_trading_day(d)]
        fl = self.model.flows(asset, days)
        tot = np.nansum(fl, axis=1) * 1e6
        cum = np.cumsum(tot) + (0.0 if asset == "BTC" else 0.0)
        px = self.model.market.price_at(asset, np.array([day_ms(d) + US_CLOSE_H * HOUR_MS for d in days]), "index")
        held = np.cumsum(tot / px) + (620_000.0 if asset == "BTC" else 2_900_000.0)  # GBTC/ETHE seed holdings
        assets = held * px
        key = np.array([(d - GENESIS.date()).days for d in days], dtype=np.int64)
        traded = np.abs(self.market.noise(key, 4301)) * 1.5e9 + 1.2e9 + np.abs(tot) * 3
        if asset == "ETH":
            traded = traded * 0.25
        rows = [{"date": d.isoformat(), "totalNetInflow": round(float(tot[i]), 1),
                 "totalValueTraded": round(float(traded[i]), 1), "totalNetAssets": round(float(assets[i]), 1),
                 "cumNetInflow": round(float(cum[i]), 3)} for i, d in enumerate(days)]
        rows = rows[::-1][:300]
        return json_response({"code": 0, "msg": None, "data": {"list": rows}})


# ---------------------------------------------------------------------------- CoinGecko

COINS = {"bitcoin": "BTC", "ethereum": "ETH", "solana": "SOL", "binancecoin": "BNB", "ripple": "XRP",
         "dogecoin": "DOGE", "pepe": "PEPE"}
STABLES = {"tether": 120e9, "usd-coin": 45e9}
SUPPLY = {"BTC": 19_950_000.0, "ETH": 120_700_000.0, "SOL": 540_000_000.0, "BNB": 140_000_000.0,
          "XRP": 59_000_000_000.0, "DOGE": 150_000_000_000.0, "PEPE": 420_690_000_000_000.0}
TREASURY_BTC = [  # name, symbol, country, holdings at 2026-11, holdings at genesis 2019
    ("Strategy", "MSTR.US", "US", 655_000.0, 0.0), ("MARA Holdings", "MARA.US", "US", 53_000.0, 0.0),
    ("XXI", "XXI.US", "US", 43_514.0, 0.0), ("Metaplanet", "3350.T", "JP", 30_823.0, 0.0),
    ("Bitcoin Standard Treasury Co.", "CEPO.US", "US", 30_021.0, 0.0),
    ("Bullish", "BLSH.US", "US", 24_000.0, 0.0), ("Riot Platforms", "RIOT.US", "US", 19_287.0, 0.0),
    ("Coinbase Global", "COIN.US", "US", 14_548.0, 0.0), ("Trump Media & Technology Group", "DJT.US", "US", 11_542.0, 0.0),
    ("CleanSpark", "CLSK.US", "US", 13_011.0, 0.0), ("Hut 8", "HUT.US", "US", 10_667.0, 0.0),
    ("Tesla", "TSLA.US", "US", 11_509.0, 0.0), ("Block", "XYZ.US", "US", 8_692.0, 8_027.0),
    ("Galaxy Digital", "GLXY.US", "US", 6_894.0, 0.0), ("Semler Scientific", "SMLR.US", "US", 5_048.0, 0.0),
]
TREASURY_ETH = [
    ("BitMine Immersion Technologies", "BMNR.US", "US", 3_500_000.0, 0.0),
    ("SharpLink Gaming", "SBET.US", "US", 860_000.0, 0.0), ("The Ether Machine", "ETHM.US", "US", 496_712.0, 0.0),
    ("Bit Digital", "BTBT.US", "US", 150_244.0, 0.0), ("Coinbase Global", "COIN.US", "US", 137_334.0, 0.0),
]


class CoinGecko(_Daily):
    prefix = "coingecko"

    def setup(self) -> None:
        self.limiter = WindowLimiter(self.scale(30), self.window(60))
        self.route("GET", "/api/v3/ping", lambda r: json_response({"gecko_says": "(V3) To the Moon!"}))
        self.route("GET", "/api/v3/global", self.global_)
        self.route("GET", "/api/v3/companies/public_treasury/bitcoin", lambda r: self.treasury(r, "BTC"))
        self.route("GET", "/api/v3/companies/public_treasury/ethereum", lambda r: self.treasury(r, "ETH"))

    def handle(self, req: Request) -> Response:
        ok, _, wait = self.limiter.try_consume(1, time.time())
        if not ok:
            return json_response({"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit. "
                                             "Please visit https://www.coingecko.com/en/api/pricing to subscribe to "
                                             "our API plans for higher rate limits."}}, 429,
                                 {"Retry-After": str(max(1, int(np.ceil(wait))))})
        parts = req.path.strip("/").split("/")
        try:
            if len(parts) == 5 and parts[:3] == ["api", "v3", "coins"] and parts[4] == "market_chart":
                return self.market_chart(req, parts[3])
            return super().handle(req)
        except ParamError as e:
            return self.error(e)

    def error(self, e: ParamError) -> Response:
        return json_response({"error": e.msg}, e.status)

    def not_found(self, req: Request) -> Response:
        return json_response({"error": "Not Found"}, 404)

    # helpers -----------------------------------------------------------------
    def _price(self, coin: str, t_ms) -> np.ndarray:
        t = np.asarray(t_ms, dtype=np.int64)
        if coin in STABLES:
            return 1.0 + 0.0004 * self.market.noise((t - GENESIS_MS) // 300_000, 4400 + asset_key(coin) % 50)
        a = COINS[coin]
        return self.market.price_at(a, t, "index", "coingecko")

    def _mcap(self, coin: str, t_ms, price) -> np.ndarray:
        t = np.asarray(t_ms, dtype=np.int64)
        yrs = (t - GENESIS_MS) / (365.25 * DAY_MS)
        if coin in STABLES:
            supply = STABLES[coin] * np.exp(0.16 * (yrs - 7.9)) * (1 + 0.002 * np.sin(yrs * 9))
        else:
            a = COINS[coin]
            infl = {"BTC": 0.017, "ETH": 0.0, "SOL": 0.05}.get(a, 0.02)
            supply = SUPPLY[a] * np.exp(infl * (yrs - 7.9))
        return price * supply

    def _vol(self, coin: str, t_ms, price) -> np.ndarray:
        t = np.asarray(t_ms, dtype=np.int64)
        k = (t - GENESIS_MS) // HOUR_MS
        base = {"bitcoin": 0.035, "ethereum": 0.06, "solana": 0.05, "tether": 0.7, "usd-coin": 0.25}.get(coin, 0.05)
        return self._mcap(coin, t, price) * base * (1 + 0.3 * self.market.noise(k, 4500 + asset_key(coin) % 50))

    def market_chart(self, req: Request, coin: str) -> Response:
        q = req.query
        if coin not in COINS and coin not in STABLES:
            return json_response({"error": "coin not found"}, 404)
        if coin in COINS and COINS[coin] not in self.market.universe and coin not in ("bitcoin",):
            return json_response({"error": "coin not found"}, 404)
        if q.get("vs_currency", "").lower() != "usd":
            raise ParamError("invalid vs_currency")
        days_s = q.get("days")
        if not days_s:
            raise ParamError("Missing parameter days")
        now = self.now_ms()
        if days_s == "max":
            days = (now - GENESIS_MS) / DAY_MS
        else:
            try:
                days = float(days_s)
            except ValueError:
                raise ParamError("invalid days") from None
        days = min(days, (now - GENESIS_MS) / DAY_MS)
        start = now - int(days * DAY_MS)
        if days <= 1:
            step = 5 * 60_000
        elif days <= 90:
            step = HOUR_MS
        else:
            step = DAY_MS
        first = -((-start) // step) * step
        ts = np.arange(first, now, step, dtype=np.int64)
        ts = np.append(ts, now) if (len(ts) == 0 or ts[-1] != now) else ts
        p = self._price(coin, ts)
        mc = self._mcap(coin, ts, p)
        vol = self._vol(coin, ts, p)
        tl = ts.tolist()
        return json_response({"prices": [[tl[i], float(p[i])] for i in range(len(tl))],
                              "market_caps": [[tl[i], float(mc[i])] for i in range(len(tl))],
                              "total_volumes": [[tl[i], float(vol[i])] for i in range(len(tl))]})

    def global_(self, req: Request) -> Response:
        now = self.now_ms()
        t = np.array([now, now - DAY_MS])
        caps = {}
        vols = {}
        for coin in ("bitcoin", "ethereum", "solana", "tether", "usd-coin"):
            p = self._price(coin, t)
            caps[coin] = self._mcap(coin, t, p)
            vols[coin] = float(self._vol(coin, t[:1], p[:1])[0])
        other_share = 0.22
        total = sum(v[0] for v in caps.values()) / (1 - other_share)
        total_prev = sum(v[1] for v in caps.values()) / (1 - other_share)
        btc_px = float(self._price("bitcoin", t[:1])[0])
        eth_px = float(self._price("ethereum", t[:1])[0])
        tv = sum(vols.values()) * 1.6
        pct = {"btc": caps["bitcoin"][0] / total * 100, "eth": caps["ethereum"][0] / total * 100,
               "usdt": caps["tether"][0] / total * 100, "sol": caps["solana"][0] / total * 100,
               "usdc": caps["usd-coin"][0] / total * 100}
        for k, (base, salt) in {"bnb": (3.2, 1), "xrp": (3.6, 2), "steth": (1.2, 3), "doge": (0.9, 4),
                                "ton": (0.3, 5)}.items():
            pct[k] = base * (1 + 0.05 * float(self.market.noise(np.array([now // HOUR_MS]), 4800 + salt)[0]))
        return json_response({"data": {
            "active_cryptocurrencies": 17800, "upcoming_icos": 0, "ongoing_icos": 49, "ended_icos": 3376,
            "markets": 1290,
            "total_market_cap": {"btc": total / btc_px, "eth": total / eth_px, "usd": total, "eur": total * 0.92,
                                 "sats": total / btc_px * 1e8},
            "total_volume": {"btc": tv / btc_px, "eth": tv / eth_px, "usd": tv, "eur": tv * 0.92,
                             "sats": tv / btc_px * 1e8},
            "market_cap_percentage": {k: float(v) for k, v in pct.items()},
            "market_cap_change_percentage_24h_usd": float((total / total_prev - 1) * 100),
            "updated_at": int(now // 1000)}})

    def treasury(self, req: Request, asset: str) -> Response:
        now = self.now_ms()
        yrs = (now - GENESIS_MS) / (365.25 * DAY_MS)
        frac = np.clip(yrs / 7.9, 0, 1.2)
        px = float(self.market.price_at(asset, np.array([now]), "index", "coingecko")[0])
        rows = []
        for i, (name, sym, ctry, h1, h0) in enumerate(TREASURY_BTC if asset == "BTC" else TREASURY_ETH):
            # accumulation path: slow start, steps every ~2 weeks
            step_days = int(((now - GENESIS_MS) // DAY_MS) // 14) * 14
            f = np.clip((step_days / 365.25 / 7.9), 0, 1.2) ** 3 if i == 0 else frac ** 2
            hold = round(h0 + (h1 - h0) * float(min(f, 1.15)) * (1 + 0.01 * (i % 3)), 0)
            if hold <= 0:
                continue
            entry = hold * px * (0.55 + 0.05 * (i % 5)) if sym != "XXI.US" else 0.0
            rows.append({"name": name, "symbol": sym, "country": ctry, "total_holdings": float(hold),
                         "total_entry_value_usd": float(round(entry)), "total_current_value_usd": hold * px,
                         "percentage_of_total_supply": round(hold / (21_000_000 if asset == "BTC" else 120_700_000)
                                                             * 100, 3)})
        rows.sort(key=lambda r: -r["total_holdings"])
        # per_page (max 250) and page (1-based) as documented for /{entity}/public_treasury/{coin_id}
        per_page = min(int(req.query.get("per_page", 250) or 250), 250)
        page = max(1, int(req.query.get("page", 1) or 1))
        rows = rows[(page - 1) * per_page:page * per_page]
        th = sum(r["total_holdings"] for r in rows)
        mcap = px * SUPPLY[asset]
        return json_response({"total_holdings": th, "total_value_usd": th * px,
                              "market_cap_dominance": round(th * px / mcap * 100, 2), "companies": rows})


# ---------------------------------------------------------------------------- FRED

FRED_FMT = {"SP500": 2, "NASDAQCOM": 3, "DTWEXBGS": 4}
FRED_START = {"SP500": date(2019, 1, 2), "NASDAQCOM": date(2019, 1, 2), "DTWEXBGS": date(2019, 1, 2)}


class Fred(_Daily):
    prefix = "fred"

    def setup(self) -> None:
        self.route("GET", "/graph/fredgraph.csv", self.csv)

    def error(self, e: ParamError) -> Response:
        return text_response(e.msg, e.status)

    def csv(self, req: Request) -> Response:
        q = req.query
        ids = [x.strip() for x in (q.get("id") or "").split(",") if x.strip()]
        if not ids:
            raise ParamError("Error: missing id", 400)
        for i in ids:
            if i not in FRED_FMT:
                return text_response(f"Error: series '{i}' does not exist.", 404, "text/html; charset=UTF-8")
        now = self.now_ms()
        last = last_published_day(now, US_CLOSE_H + 3)
        # FRED publishes H.10 (DTWEXBGS) weekly with a lag; equities next morning
        start = min(FRED_START[i] for i in ids)
        if q.get("cosd"):
            try:
                start = max(start, date.fromisoformat(q["cosd"]))
            except ValueError:
                raise ParamError("Error: bad cosd", 400) from None
        end = last
        if q.get("coed"):
            try:
                end = min(end, date.fromisoformat(q["coed"]))
            except ValueError:
                raise ParamError("Error: bad coed", 400) from None
        days = weekdays(start, end)
        cols = []
        for i in ids:
            v = self.model.values("SP500" if i == "SP500" else i, days) if days else np.zeros(0)
            d_ = FRED_FMT[i]
            lag_end = end - timedelta(days=7) if i == "DTWEXBGS" else end
            col = []
            for k, d in enumerate(days):
                if not is_trading_day(d) or d > lag_end or d < FRED_START[i]:
                    col.append("")
                else:
                    col.append(f"{v[k]:.{d_}f}")
            cols.append(col)
        lines = ["observation_date," + ",".join(ids)]
        for k, d in enumerate(days):
            row = [c[k] for c in cols]
            if all(x == "" for x in row) and d > end - timedelta(days=7) and "DTWEXBGS" in ids and len(ids) == 1:
                continue
            lines.append(d.isoformat() + "," + ",".join(row))
        return text_response("\n".join(lines) + "\n", 200, "text/csv")


# ---------------------------------------------------------------------------- Stooq

STOOQ = {"xauusd": ("GOLD", False, 2), "^spx": ("SP500", True, 2), "^ndq": ("NASDAQCOM", True, 2),
         "^ndx": ("NASDAQCOM", True, 2)}


class Stooq(_Daily):
    prefix = "stooq"

    def setup(self) -> None:
        self.route("GET", "/q/d/l/", self.csv)

    def csv(self, req: Request) -> Response:
        q = req.query
        s = (q.get("s") or "").lower()
        if s not in STOOQ:
            return text_response("No data", 200)
        if q.get("i", "d") != "d":
            return text_response("No data", 200)
        name, has_vol, dec = STOOQ[s]
        now = self.now_ms()
        last = last_published_day(now, US_CLOSE_H + 1)
        start = date(2019, 1, 2)
        if q.get("d1"):
            try:
                start = max(start, datetime.strptime(q["d1"], "%Y%m%d").date())
            except ValueError:
                return text_response("No data", 200)
        end = last
        if q.get("d2"):
            try:
                end = min(end, datetime.strptime(q["d2"], "%Y%m%d").date())
            except ValueError:
                return text_response("No data", 200)
        if name == "GOLD":
            days = [d for d in weekdays(start, end) if (d.month, d.day) not in ((12, 25), (1, 1))]
        else:
            days = [d for d in weekdays(start, end) if is_trading_day(d)]
        if not days:
            return text_response("No data", 200)
        o, h, lo, c = self.model.ohlc(name, days, 4600 + len(name))
        key = np.array([(d - GENESIS.date()).days for d in days], dtype=np.int64)
        lines = ["Date,Open,High,Low,Close" + (",Volume" if has_vol else "")]
        for k, d in enumerate(days):
            row = f"{d.isoformat()},{o[k]:.{dec}f},{h[k]:.{dec}f},{lo[k]:.{dec}f},{c[k]:.{dec}f}"
            if has_vol:
                row += f",{int(2.2e9 * (1 + 0.2 * self.market.noise(key[k:k + 1], 4700)[0]))}"
            lines.append(row)
        return text_response("\r\n".join(lines) + "\r\n", 200, "text/csv")


VENUES = [Farside, SoSoValue, CoinGecko, Fred, Stooq]
