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
from perpwatch.sources import batch
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


def _list_rows(what: str):
    """Binance /fapi, /dapi and /futures/data reply with a bare JSON list; anything else (an error
    object {"code": -1130, "msg": ...}) rejects the page."""
    def rows_of(data, params: dict):
        if not isinstance(data, list):
            raise ValueError(f"expected a JSON list of {what}, got {type(data).__name__}: {str(data)[:120]}")
        return data, None
    return rows_of


def _page_symbols(df: pl.DataFrame, col: str) -> pl.DataFrame:
    """The first row's symbol of each page: the page's instrument (one symbol per request)."""
    return batch.first_per_page(df, col).rename({col: "_sym"})


def _instrument_facts(syms: pl.DataFrame, venue: str, ctx: ParseContext, **fields) -> pl.DataFrame:
    """Per page: canonical asset and the given instrument facts (name -> fn(meta, sym))."""
    names = syms["_sym"].to_list()
    per_symbol = {s: (canonical(venue, s)[0], *(fn(ctx.instrument(venue, s), s) for fn in fields.values()))
                  for s in dict.fromkeys(names)}    # once per symbol, not per page
    got = [per_symbol[s] for s in names]
    cols = {"_asset": [g[0] for g in got]}
    for k, name in enumerate(fields, start=1):
        cols[name] = [g[k] for g in got]
    return syms.with_columns(**{k: pl.Series(v, dtype=pl.Float64 if k != "_asset" else pl.Utf8, strict=False)
                                for k, v in cols.items()})


FUNDING_SHAPE = {"symbol": pl.Utf8, "fundingRate": pl.Utf8, "fundingTime": pl.Utf8, "markPrice": pl.Utf8}


def batch_funding_rate(pages: list[batch.Page], ctx: ParseContext, venue: str = VENUE) -> batch.BatchResult:
    """/fapi/v1/fundingRate (and /dapi): the rate is for the symbol's own interval, read from the
    spacing of consecutive settlements on the page (fallback: fundingInfo, else 8h)."""
    dec = batch.decode(pages, _list_rows("fundingRate rows"), objects=FUNDING_SHAPE)
    df = batch.frame(dec, FUNDING_SHAPE)
    df = batch.require(df, dec.errors, ["symbol", "fundingRate", "fundingTime"], "fundingRate")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    facts = _instrument_facts(_page_symbols(df, "symbol"), venue, ctx,
                              _known=lambda m, s: float(m.get("funding_interval_hours") or 8.0))
    df = batch.attach(df, facts).with_columns(ts_ms("fundingTime").dt.truncate("1h").alias("funding_time"),
                                              num("fundingRate").alias("funding_rate"),
                                              num("markPrice").alias("mark_price"))
    df = df.with_columns(interval_from_spacing(df, "funding_time", [batch.PAGE, "symbol"], pl.col("_known"))
                         .alias("interval_hours"))
    res.add("funding_rates", df.select(
        pl.lit(venue).alias("venue"), pl.col("symbol").alias("instrument"), "funding_time",
        pl.col("_asset").alias("asset"),
        "funding_rate", "interval_hours", *funding_derived(pl.col("funding_rate"), pl.col("interval_hours")),
        "mark_price", batch.PAGE))
    return res


OI_SHAPE = {"symbol": pl.Utf8, "sumOpenInterest": pl.Utf8, "sumOpenInterestValue": pl.Utf8, "timestamp": pl.Utf8}


def batch_open_interest_hist(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    """/futures/data/openInterestHist (USD-M): sumOpenInterest in base coin (of the symbol's unit:
    1000PEPEUSDT counts thousands), sumOpenInterestValue in USD."""
    dec = batch.decode(pages, _list_rows("openInterestHist rows"), objects=OI_SHAPE)
    df = batch.frame(dec, OI_SHAPE)
    df = batch.require(df, dec.errors, list(OI_SHAPE), "openInterestHist")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    facts = _instrument_facts(_page_symbols(df, "symbol"), VENUE, ctx,
                              _size=lambda m, s: m.get("contract_size") or 1.0,
                              _mult=lambda m, s: m.get("multiplier") or canonical(VENUE, s)[1])
    df = batch.numbers(batch.attach(df, facts), {"timestamp": pl.Int64, "sumOpenInterest": pl.Float64,
                                                 "sumOpenInterestValue": pl.Float64})
    res.add("open_interest", df.select(*_oi_columns(pl.col("_asset"), pl.col("_size"), pl.col("_mult")), batch.PAGE))
    return res


def _oi_columns(asset: pl.Expr, size: pl.Expr | float, mult: pl.Expr | float = 1.0) -> list[pl.Expr]:
    """The staging columns of openInterestHist rows whose numbers are already numeric (batch.numbers)."""
    return [
        pl.lit(VENUE).alias("venue"), pl.col("symbol").alias("instrument"), pl.col("timestamp").cast(UTC_MS).alias("ts"),
        asset.alias("asset"), pl.lit("linear").alias("margin"),
        (pl.col("sumOpenInterest") / size).alias("oi_contracts"),      # USD-M: base coin, 1 contract = 1 coin
        (pl.col("sumOpenInterest") * mult).alias("oi_base"),
        pl.col("sumOpenInterestValue").alias("oi_usd")]


RATIO_SHAPE = {"symbol": pl.Utf8, "longAccount": pl.Utf8, "shortAccount": pl.Utf8, "longPosition": pl.Utf8,
               "shortPosition": pl.Utf8, "longShortRatio": pl.Utf8, "timestamp": pl.Utf8}


def _batch_ratio(population: str):
    """The three long/short ratio endpoints: accounts (longAccount/shortAccount) or positions."""
    def parse(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
        dec = batch.decode(pages, _list_rows(f"{population} long/short rows"), objects=RATIO_SHAPE)
        df = batch.frame(dec, RATIO_SHAPE).with_columns(
            pl.coalesce("longAccount", "longPosition").alias("_long"),
            pl.coalesce("shortAccount", "shortPosition").alias("_short"))
        df = batch.require(df, dec.errors, ["symbol", "_long", "_short", "longShortRatio", "timestamp"],
                           f"long/short {population}")
        res = batch.BatchResult(errors=dec.errors)
        if df.height == 0:
            return res
        df = batch.attach(df, _instrument_facts(_page_symbols(df, "symbol"), VENUE, ctx))
        res.add("long_short_ratio", df.select(
            pl.lit(VENUE).alias("venue"), pl.col("symbol").alias("instrument"), ts_ms("timestamp").alias("ts"),
            pl.lit(population).alias("population"), pl.col("_asset").alias("asset"),
            num("_long").alias("long_share"), num("_short").alias("short_share"),
            num("longShortRatio").alias("ratio"), batch.PAGE))
        return res
    return parse


KLINE_COLS = ["open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
              "trades", "taker_base", "taker_quote", "ignore"]
KLINE_SHAPE = {c: pl.Utf8 for c in KLINE_COLS}


def kline_rows(what: str):
    """Kline pages: a list of 12-field arrays (>= 8 accepted: the fields used are the first 8)."""
    def rows_of(data, params: dict):
        if not isinstance(data, list):
            raise ValueError(f"{what}: expected a list of arrays, got {str(data)[:120]}")
        if not data:
            return data, None
        width = len(data[0])
        if width < 8:
            raise ValueError(f"{what}: rows have {width} fields, expected 12")
        if width != 12:
            data = [list(r[:12]) + [None] * (12 - len(r[:12])) for r in data]
        return data, None
    return rows_of


def _page_params(dec: batch.Decoded, pages: list[batch.Page], **fns) -> dict[str, list]:
    return {k: [fn(pages[i]) for i in dec.pages] for k, fn in fns.items()}


def _batch_klines(kind: str):
    def parse(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
        dec = batch.decode(pages, kline_rows("klines"))
        df = batch.frame(dec, KLINE_SHAPE, orient="row")
        res = batch.BatchResult(errors=dec.errors)
        if df.height == 0:
            return res
        p = _page_params(dec, pages, _sym=lambda pg: pg.params.get("symbol") or pg.params.get("pair"),
                         _interval=lambda pg: pg.params.get("interval", "1h"), _fetched=lambda pg: pg.fetched_at)
        syms = p["_sym"]
        consts = batch.per_page(
            dec, **p, _kind=["future" if kind == "perp" and "_" in s else kind for s in syms],
            _asset=[canonical(VENUE, s)[0] for s in syms],
            _expiry=pl.Series([ctx.instrument(VENUE, s).get("expiry") for s in syms], dtype=UTC_MS))
        df = batch.attach(df, consts.with_columns(pl.col("_fetched").cast(UTC_MS)))
        has_vol = kind in ("perp", "spot", "future")
        out = df.select(
            pl.lit(VENUE).alias("venue"), pl.col("_sym").alias("instrument"), pl.col("_kind").alias("kind"),
            pl.col("_interval").alias("interval"), ts_ms("open_time").alias("ts"), pl.col("_asset").alias("asset"),
            num("open").alias("open"), num("high").alias("high"), num("low").alias("low"), num("close").alias("close"),
            (num("volume") if has_vol else pl.lit(None, pl.Float64)).alias("volume_base"),
            (num("quote_volume") if has_vol else pl.lit(None, pl.Float64)).alias("volume_usd"),
            # Only closed candles: a candle still forming when fetched would change later.
            pl.col("_expiry").alias("expiry"), batch.PAGE, ts_ms("close_time").alias("_close_time"), "_fetched")
        res.add("prices", out.filter(pl.col("_close_time") < pl.col("_fetched")).drop("_close_time", "_fetched"))
        return res
    return parse


parse_funding_rate = batch.single(batch_funding_rate)
parse_open_interest_hist = batch.single(batch_open_interest_hist)


PARSERS = {
    "/fapi/v1/exchangeInfo": Parser(parse_exchange_info),
    "/fapi/v1/fundingInfo": Parser(parse_funding_info),
    "/fapi/v1/fundingRate": Parser(batch=batch_funding_rate),
    "/futures/data/openInterestHist": Parser(batch=batch_open_interest_hist),
    **{ep: Parser(batch=_batch_ratio(pop)) for pop, ep in RATIO_ENDPOINTS.items()},
    "/fapi/v1/klines": Parser(batch=_batch_klines("perp")),
    "/fapi/v1/markPriceKlines": Parser(batch=_batch_klines("mark")),
    "/fapi/v1/indexPriceKlines": Parser(batch=_batch_klines("index")),
    "/api/v3/klines": Parser(batch=_batch_klines("spot")),
}
