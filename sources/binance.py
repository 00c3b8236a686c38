"""Binance USD-M perpetuals (+ spot klines for basis).

Endpoints (fapi.binance.com unless noted), limits and quirks from docs/venues.md §1:
- /fapi/v1/exchangeInfo, /fapi/v1/fundingInfo (only adjusted symbols; absent = 8h)
- /fapi/v1/fundingRate: limit 1000, ascending, page forward with startTime = last + 1;
  the rate is for *that symbol's* interval; fundingTime carries ms jitter -> floor to the hour.
- /futures/data/openInterestHist and the three long/short ratio endpoints: limit 500,
  only the last 30 days exist; 1000 requests / 5 min, weight 0.
- /fapi/v1/klines, markPriceKlines, indexPriceKlines (by pair): limit 1500; spot /api/v3/klines limit 1000.
Budgets: REQUEST_WEIGHT 2400/min (header X-MBX-USED-WEIGHT-1M), fundingRate+fundingInfo 500 / 5 min.

Example payload (GET /futures/data/openInterestHist?symbol=BTCUSDT&period=1h):
    [{"symbol":"BTCUSDT","sumOpenInterest":"20403.637","sumOpenInterestValue":"150570784.07",
      "timestamp":1583127900000}]   -> oi_base 20403.637 BTC, oi_usd 150,570,784.07
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl

from perpwatch.core.assets import canonical
from perpwatch.sources.base import ParseContext, Parser, Stream, clamp_window, tradable
from perpwatch.sources.http import Budget, Fetched, VenueClient
from perpwatch.sources.normalize import UTC_MS, funding_derived, interval_from_spacing, num, ts_ms

SOURCE = "binance"
VENUE = "binance"
H = timedelta(hours=1)
RATIO_DEPTH = timedelta(days=30)

RATIO_ENDPOINTS = {
    "accounts": "/futures/data/globalLongShortAccountRatio",
    "top_accounts": "/futures/data/topLongShortAccountRatio",
    "top_positions": "/futures/data/topLongShortPositionRatio",
}
KLINE_ENDPOINTS = {
    "perp": "/fapi/v1/klines",
    "future": "/fapi/v1/klines",
    "mark": "/fapi/v1/markPriceKlines",
    "index": "/fapi/v1/indexPriceKlines",
    "spot": "/api/v3/klines",
}
KLINE_LIMIT = {"spot": 1000}
DEFAULT_KLINE_LIMIT = 1000   # weight 5 (>1000 costs 10 for 50 % more rows)

UNSUPPORTED = {
    "liquidations": "REST history removed 2021-04-27; captured by the websocket collector (!forceOrder@arr)",
}


SPOT_UNSUPPORTED = ("spot klines are not fetched for 1000-prefixed perps (1000PEPEUSDT, 1000SHIBUSDT, ...): "
                    "the spot market lists the coin itself (PEPEUSDT) at 1/1000 of the perp's price, so the "
                    "perp symbol answers HTTP 400 on /api/v3/klines and the spot series would not share the "
                    "perp's units; basis for these assets comes from the perp's index klines instead")


def has_spot_pair(row: dict) -> bool:
    """A USD-M perp whose symbol is also a spot symbol: not the 1000-prefixed ones (multiplier != 1)."""
    mult = row.get("multiplier") or canonical(VENUE, row["instrument"])[1]
    return float(mult) == 1.0


def futures_budgets(host: str, s: float = 1.0) -> dict[str, Budget]:
    """Binance futures limits (fapi and dapi alike), kept 5-10 % under the published ones."""
    return {
        "weight": Budget(f"binance {host} weight/min", 2400 * 0.9 * s, 60.0),
        "futures_data": Budget(f"binance {host} futures/data per 5 min", 1000 * 0.95 * s, 300.0),
        "funding": Budget(f"binance {host} fundingRate per 5 min", 500 * 0.95 * s, 300.0),
    }


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    s = limits_scale
    return VenueClient(
        SOURCE,
        bases={"": "BINANCE_FAPI", "/api/": "BINANCE_SPOT"},
        lander=lander,
        budgets={**futures_budgets("fapi", s),
                 "spot_weight": Budget("binance spot weight/min", 6000 * 0.9 * s, 60.0)},
        # Each host reports its own IP weight in X-MBX-USED-WEIGHT-1M: spot's (6000/min) must not fill
        # the futures budget (2400/min), nor the other way round.
        usage_header={"": ("X-MBX-USED-WEIGHT-1M", "weight"), "/api/": ("X-MBX-USED-WEIGHT-1M", "spot_weight")},
    )


# --------------------------------------------------------------------------- extraction

def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    return [
        cl.get("/fapi/v1/exchangeInfo", costs={"weight": 1}),
        cl.get("/fapi/v1/fundingInfo", costs={"weight": 1, "funding": 1}),
    ]


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    """Streams for the configured assets' trading instruments."""
    out: list[Stream] = []
    for r in tradable(instruments, VENUE, assets, margin="linear", quote="USDT"):
        sym = r["instrument"]
        if r["kind"] == "future":
            out.append(Stream(SOURCE, "prices", "prices/future", sym))
            continue
        out.append(Stream(SOURCE, "funding_rates", "funding_rates", sym, step=8 * H))
        out.append(Stream(SOURCE, "open_interest", "open_interest", sym, history=RATIO_DEPTH))
        for pop in RATIO_ENDPOINTS:
            out.append(Stream(SOURCE, "long_short_ratio", f"long_short_ratio/{pop}", sym, history=RATIO_DEPTH))
        for kind in ("perp", "mark", "index", "spot"):
            if kind == "spot" and not has_spot_pair(r):
                continue        # see SPOT_UNSUPPORTED: no request is sent
            out.append(Stream(SOURCE, "prices", f"prices/{kind}", sym))
    return out


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    """Page forward from `start` to `end` with the endpoint's real limits (explicit cursor)."""
    sym = stream.instrument
    start = clamp_window(stream, start, end)     # history counted from now, start on the hour grid
    if start >= end:
        return
    if stream.dataset == "funding_rates":
        cursor = _ms(start)
        while cursor <= _ms(end):
            page = cl.get("/fapi/v1/fundingRate", {"symbol": sym, "startTime": cursor, "endTime": _ms(end),
                                                   "limit": 1000}, costs={"weight": 1, "funding": 1},
                          stream=stream.name, instrument=sym)
            yield page
            rows = page.json()
            if len(rows) < 1000:
                return
            cursor = max(int(r["fundingTime"]) for r in rows) + 1    # rows may come out of order
        return
    if stream.dataset in ("open_interest", "long_short_ratio"):
        endpoint = ("/futures/data/openInterestHist" if stream.dataset == "open_interest"
                    else RATIO_ENDPOINTS[stream.name.split("/", 1)[1]])
        window = 500 * H
        cursor = start
        while cursor < end:
            upto = min(cursor + window - H, end)
            yield cl.get(endpoint, {"symbol": sym, "period": "1h", "startTime": _ms(cursor),
                                    "endTime": _ms(upto), "limit": 500},
                         costs={"futures_data": 1}, stream=stream.name, instrument=sym)
            cursor = upto + H
        return
    if stream.dataset == "prices":
        kind = stream.name.split("/", 1)[1]
        endpoint = KLINE_ENDPOINTS[kind]
        limit = KLINE_LIMIT.get(kind, DEFAULT_KLINE_LIMIT)
        key = "pair" if kind == "index" else "symbol"
        costs = {"spot_weight": 2} if kind == "spot" else {"weight": 5}
        cursor = start
        while cursor < end:
            upto = min(cursor + limit * H - H, end)
            yield cl.get(endpoint, {key: sym, "interval": "1h", "startTime": _ms(cursor), "endTime": _ms(upto),
                                    "limit": limit}, costs=costs, stream=stream.name, instrument=sym)
            cursor = upto + H
        return
    raise ValueError(f"binance: no fetcher for dataset {stream.dataset!r}")


INSTRUMENT_ENDPOINTS = ("/fapi/v1/exchangeInfo", "/fapi/v1/fundingInfo")
DATASETS = ("instruments", "funding_rates", "open_interest", "long_short_ratio", "prices")


# --------------------------------------------------------------------------- parsing

def _frame(rows: list, what: str) -> pl.DataFrame:
    if not isinstance(rows, list):
        raise ValueError(f"expected a JSON list of {what}, got {type(rows).__name__}: {str(rows)[:120]}")
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def _require(df: pl.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing field(s) {missing}; got {sorted(df.columns)}")


def parse_exchange_info(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    symbols = data["symbols"]
    rows = []
    for s in symbols:   # instrument metadata: a few hundred rows, not a hot path
        ctype = s.get("contractType", "")
        if ctype not in ("PERPETUAL", "CURRENT_QUARTER", "NEXT_QUARTER"):
            continue
        asset, mult = canonical(VENUE, s.get("baseAsset", s["symbol"]) + s.get("quoteAsset", ""))
        status = s.get("status", "")
        rows.append({
            "venue": VENUE, "instrument": s["symbol"], "asset": asset, "quote": s.get("quoteAsset"),
            "settle": s.get("marginAsset"), "margin": "linear",
            "kind": "perp" if ctype == "PERPETUAL" else "future",
            "contract_size": 1.0, "contract_unit": "base", "multiplier": mult,
            "funding_interval_hours": None,
            "expiry": datetime.fromtimestamp(int(s["deliveryDate"]) / 1000, UTC)
            if ctype != "PERPETUAL" and s.get("deliveryDate") else None,
            "status": "trading" if status == "TRADING" else ("delisted" if status in ("SETTLING", "CLOSE", "DELIVERED") else status.lower()),
            "as_of": ctx.fetched_at,
        })
    schema = {"venue": pl.Utf8, "instrument": pl.Utf8, "asset": pl.Utf8, "quote": pl.Utf8, "settle": pl.Utf8,
              "margin": pl.Utf8, "kind": pl.Utf8, "contract_size": pl.Float64, "contract_unit": pl.Utf8,
              "multiplier": pl.Float64, "funding_interval_hours": pl.Float64, "expiry": UTC_MS,
              "status": pl.Utf8, "as_of": UTC_MS}
    return {"instruments": pl.DataFrame(rows, schema=schema)}


def parse_funding_info(data: list, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    df = _frame(data, "fundingInfo rows")
    if df.height == 0:
        return {"instruments": pl.DataFrame()}
    _require(df, ["symbol", "fundingIntervalHours"], "fundingInfo")
    return {"instruments": df.select(
        pl.lit(VENUE).alias("venue"), pl.col("symbol").alias("instrument"),
        num("fundingIntervalHours").alias("funding_interval_hours"))}


def parse_funding_rate(data: list, params: dict, ctx: ParseContext, venue: str = VENUE) -> dict[str, pl.DataFrame]:
    df = _frame(data, "fundingRate rows")
    if df.height == 0:
        return {"funding_rates": pl.DataFrame()}
    _require(df, ["symbol", "fundingRate", "fundingTime"], "fundingRate")
    sym = df["symbol"][0]
    known = ctx.instrument(venue, sym).get("funding_interval_hours") or 8.0
    df = df.with_columns(ts_ms("fundingTime").dt.truncate("1h").alias("funding_time"),
                         num("fundingRate").alias("funding_rate"),
                         (num("markPrice") if "markPrice" in df.columns else pl.lit(None, pl.Float64)).alias("mark_price"))
    df = df.with_columns(interval_from_spacing(df, "funding_time", "symbol", pl.lit(float(known))).alias("interval_hours"))
    out = df.select(
        pl.lit(venue).alias("venue"), pl.col("symbol").alias("instrument"), "funding_time",
        pl.lit(canonical(venue, sym)[0]).alias("asset"),
        "funding_rate", "interval_hours", *funding_derived(pl.col("funding_rate"), pl.col("interval_hours")),
        "mark_price")
    return {"funding_rates": out}


def parse_open_interest_hist(data: list, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    df = _frame(data, "openInterestHist rows")
    if df.height == 0:
        return {"open_interest": pl.DataFrame()}
    _require(df, ["symbol", "sumOpenInterest", "sumOpenInterestValue", "timestamp"], "openInterestHist")
    sym = df["symbol"][0]
    meta = ctx.instrument(VENUE, sym)
    size = meta.get("contract_size") or 1.0
    mult = meta.get("multiplier") or canonical(VENUE, sym)[1]     # 1000PEPEUSDT: 1 unit = 1000 PEPE
    out = df.select(*_oi_columns(pl.lit(canonical(VENUE, sym)[0]), size, mult))
    return {"open_interest": out}


def _oi_columns(asset: pl.Expr, size: pl.Expr | float, mult: pl.Expr | float = 1.0) -> list[pl.Expr]:
    return [
        pl.lit(VENUE).alias("venue"), pl.col("symbol").alias("instrument"), ts_ms("timestamp").alias("ts"),
        asset.alias("asset"), pl.lit("linear").alias("margin"),
        (num("sumOpenInterest") / size).alias("oi_contracts"),      # USD-M: base coin, 1 contract = 1 coin
        (num("sumOpenInterest") * mult).alias("oi_base"),
        num("sumOpenInterestValue").alias("oi_usd")]


def _parse_ratio(population: str):
    def parse(data: list, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
        df = _frame(data, f"{population} long/short rows")
        if df.height == 0:
            return {"long_short_ratio": pl.DataFrame()}
        long_col = "longAccount" if "longAccount" in df.columns else "longPosition"
        short_col = "shortAccount" if "shortAccount" in df.columns else "shortPosition"
        _require(df, ["symbol", long_col, short_col, "longShortRatio", "timestamp"], f"long/short {population}")
        sym = df["symbol"][0]
        out = df.select(
            pl.lit(VENUE).alias("venue"), pl.col("symbol").alias("instrument"), ts_ms("timestamp").alias("ts"),
            pl.lit(population).alias("population"), pl.lit(canonical(VENUE, sym)[0]).alias("asset"),
            num(long_col).alias("long_share"), num(short_col).alias("short_share"),
            num("longShortRatio").alias("ratio"))
        return {"long_short_ratio": out}
    return parse


KLINE_COLS = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
              "trades", "taker_base", "taker_quote", "ignore"]


def _parse_klines(kind: str):
    def parse(data: list, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
        if not isinstance(data, list):
            raise ValueError(f"klines: expected a list of arrays, got {str(data)[:120]}")
        sym = params.get("symbol") or params.get("pair")
        if not data:
            return {"prices": pl.DataFrame()}
        if any(len(r) < 8 for r in data[:1]):
            raise ValueError(f"klines: rows have {len(data[0])} fields, expected 12")
        df = pl.DataFrame([[str(x) for x in r[:12]] for r in data], schema=KLINE_COLS[: len(data[0])], orient="row")
        k = "future" if kind == "perp" and "_" in sym else kind
        has_vol = kind in ("perp", "spot", "future")
        out = df.select(
            pl.lit(VENUE).alias("venue"), pl.lit(sym).alias("instrument"), pl.lit(k).alias("kind"),
            pl.lit(params.get("interval", "1h")).alias("interval"), ts_ms("open_time").alias("ts"),
            pl.lit(canonical(VENUE, sym)[0]).alias("asset"),
            num("open").alias("open"), num("high").alias("high"), num("low").alias("low"), num("close").alias("close"),
            (num("volume") if has_vol else pl.lit(None, pl.Float64)).alias("volume_base"),
            (num("quote_volume") if has_vol else pl.lit(None, pl.Float64)).alias("volume_usd"),
            ts_ms("close_time").alias("_close_time"))
        # Only closed candles: a candle still forming when fetched would change later.
        out = out.filter(pl.col("_close_time") < pl.lit(ctx.fetched_at).cast(UTC_MS)).drop("_close_time")
        expiry = ctx.instrument(VENUE, sym).get("expiry")
        return {"prices": out.with_columns(pl.lit(expiry, UTC_MS).alias("expiry"))}
    return parse


PARSERS = {
    "/fapi/v1/exchangeInfo": Parser(parse_exchange_info),
    "/fapi/v1/fundingInfo": Parser(parse_funding_info),
    "/fapi/v1/fundingRate": Parser(parse_funding_rate),
    "/futures/data/openInterestHist": Parser(parse_open_interest_hist),
    **{ep: Parser(_parse_ratio(pop)) for pop, ep in RATIO_ENDPOINTS.items()},
    "/fapi/v1/klines": Parser(_parse_klines("perp")),
    "/fapi/v1/markPriceKlines": Parser(_parse_klines("mark")),
    "/fapi/v1/indexPriceKlines": Parser(_parse_klines("index")),
    "/api/v3/klines": Parser(_parse_klines("spot")),
}
