"""Binance COIN-M (inverse, coin-margined) perpetuals and quarterly futures, dapi.binance.com.

Same venue as USD-M ("binance"), its own raw source name ("binance_coinm"): the OI endpoint path
`/futures/data/openInterestHist` is identical on both hosts, so the source name is what tells
`perpwatch replay` which parser reads a landed payload.

Units (docs/venues.md §1, §9) -- inverse contracts are denominated in USD:
- `contractSize` from `/dapi/v1/exchangeInfo` is USD per contract (BTCUSD_PERP 100, most alts 10);
  it is read per symbol, never hard-coded.  instruments: margin inverse, contract_unit usd.
- `/futures/data/openInterestHist` (pair + contractType, period 1h, limit 500, last 30 days only):
  `sumOpenInterest` = **contracts**, `sumOpenInterestValue` = **base coin** (not USD).
  -> oi_contracts = sumOpenInterest, oi_base = sumOpenInterestValue,
     oi_usd = contracts x contractSize (exact: an inverse contract *is* a fixed USD amount).
  Only contractType=PERPETUAL is fetched; its rows carry no symbol, the instrument is `<pair>_PERP`.
  Without a known contract size oi_usd stays null and the pipeline values it as oi_base x perp close.
- `/dapi/v1/klines` rows: index 5 volume = contracts, index 7 = **base coin** volume (USD-M has the
  quote volume there).  -> volume_base = col 7, volume_usd = contracts x contractSize.
  Mark klines by symbol, index klines by pair (rows labelled `<pair>_PERP` so the perp premium and
  the futures basis join on this venue's own index).
- `/dapi/v1/fundingRate`: same shape and paging as USD-M (limit 1000, startTime = last + 1);
  parsed by `sources.binance.batch_funding_rate`.  `/dapi/v1/fundingInfo` lists adjusted symbols.
Budgets: REQUEST_WEIGHT 2400/min (header X-MBX-USED-WEIGHT-1M), /futures/data 1000 req / 5 min,
fundingRate+fundingInfo 500 / 5 min.

Example payload (GET /futures/data/openInterestHist?pair=BTCUSD&contractType=PERPETUAL&period=1h):
    [{"pair":"BTCUSD","contractType":"PERPETUAL","sumOpenInterest":"1234567",
      "sumOpenInterestValue":"1371.74111111","timestamp":1763596800000}]
    -> BTCUSD_PERP: 1,234,567 contracts, 1371.74 BTC, 123,456,700 USD (x 100 USD)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl

from perpwatch.core.assets import canonical
from perpwatch.sources import batch, binance
from perpwatch.sources.base import ParseContext, Parser, Stream, clamp_window, tradable
from perpwatch.sources.http import Fetched, VenueClient
from perpwatch.sources.normalize import UTC_MS, num, ts_ms

SOURCE = "binance_coinm"
VENUE = "binance"
H = timedelta(hours=1)
OI_DEPTH = timedelta(days=30)
OI_LIMIT = 500
FUNDING_LIMIT = 1000
KLINE_LIMIT = 1000            # weight 5 (<= 1000); dapi klines also cap the span at 200 days

KLINE_ENDPOINTS = {
    "perp": "/dapi/v1/klines",
    "future": "/dapi/v1/klines",
    "mark": "/dapi/v1/markPriceKlines",
    "index": "/dapi/v1/indexPriceKlines",
}

UNSUPPORTED = {
    "liquidations": "no public REST history (forceOrders is USER_DATA); only the dstream websocket "
                    "!forceOrder@arr snapshot stream",
    "long_short_ratio": "not extracted for COIN-M (the /futures/data ratio endpoints exist by pair): the "
                        "USD-M ratios (source 'binance') represent the venue",
}


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    s = limits_scale
    return VenueClient(
        SOURCE,
        bases={"": "BINANCE_DAPI"},
        lander=lander,
        budgets=binance.futures_budgets("dapi", s),
        usage_header=("X-MBX-USED-WEIGHT-1M", "weight"),
    )


# --------------------------------------------------------------------------- extraction

def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    return [
        cl.get("/dapi/v1/exchangeInfo", costs={"weight": 1}),
        cl.get("/dapi/v1/fundingInfo", costs={"weight": 1, "funding": 1}),
    ]


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    """Streams for the configured assets' trading COIN-M instruments (inverse, USD-quoted)."""
    out: list[Stream] = []
    for r in tradable(instruments, VENUE, assets, margin="inverse"):
        sym = r["instrument"]
        if r["kind"] == "future":
            out.append(Stream(SOURCE, "prices", "prices/future", sym))
            continue
        pair = sym.rsplit("_", 1)[0]
        out.append(Stream(SOURCE, "funding_rates", "funding_rates", sym, step=8 * H))
        out.append(Stream(SOURCE, "open_interest", "open_interest", sym, history=OI_DEPTH,
                          extra=(("pair", pair),)))
        for kind in ("perp", "mark", "index"):
            out.append(Stream(SOURCE, "prices", f"prices/{kind}", sym, extra=(("pair", pair),)))
    return out


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    """Page forward from `start` to `end` with dapi's real limits (explicit cursor)."""
    sym = stream.instrument
    start = clamp_window(stream, start, end)     # history counted from now, start on the hour grid
    if start >= end:
        return
    if stream.dataset == "funding_rates":
        cursor = _ms(start)
        while cursor <= _ms(end):
            page = cl.get("/dapi/v1/fundingRate", {"symbol": sym, "startTime": cursor, "endTime": _ms(end),
                                                   "limit": FUNDING_LIMIT}, costs={"weight": 1, "funding": 1},
                          stream=stream.name, instrument=sym)
            yield page
            rows = page.json()
            if not isinstance(rows, list) or len(rows) < FUNDING_LIMIT:
                return
            cursor = max(int(r["fundingTime"]) for r in rows) + 1    # rows may come out of order
        return
    if stream.dataset == "open_interest":
        pair = stream.param("pair", sym.rsplit("_", 1)[0])
        cursor = start
        while cursor < end:
            upto = min(cursor + OI_LIMIT * H - H, end)
            yield cl.get("/futures/data/openInterestHist",
                         {"pair": pair, "contractType": "PERPETUAL", "period": "1h", "startTime": _ms(cursor),
                          "endTime": _ms(upto), "limit": OI_LIMIT},
                         costs={"futures_data": 1}, stream=stream.name, instrument=sym)
            cursor = upto + H
        return
    if stream.dataset == "prices":
        kind = stream.name.split("/", 1)[1]
        endpoint = KLINE_ENDPOINTS[kind]
        key, value = ("pair", stream.param("pair", sym.rsplit("_", 1)[0])) if kind == "index" else ("symbol", sym)
        cursor = start
        while cursor < end:
            upto = min(cursor + KLINE_LIMIT * H - H, end)
            yield cl.get(endpoint, {key: value, "interval": "1h", "startTime": _ms(cursor), "endTime": _ms(upto),
                                    "limit": KLINE_LIMIT}, costs={"weight": 5}, stream=stream.name, instrument=sym)
            cursor = upto + H
        return
    raise ValueError(f"binance_coinm: no fetcher for dataset {stream.dataset!r}")


INSTRUMENT_ENDPOINTS = ("/dapi/v1/exchangeInfo", "/dapi/v1/fundingInfo")
DATASETS = ("instruments", "funding_rates", "open_interest", "prices")


# --------------------------------------------------------------------------- parsing

INSTRUMENT_SCHEMA = {"venue": pl.Utf8, "instrument": pl.Utf8, "asset": pl.Utf8, "quote": pl.Utf8,
                     "settle": pl.Utf8, "margin": pl.Utf8, "kind": pl.Utf8, "contract_size": pl.Float64,
                     "contract_unit": pl.Utf8, "multiplier": pl.Float64, "funding_interval_hours": pl.Float64,
                     "expiry": UTC_MS, "status": pl.Utf8, "as_of": UTC_MS}
DELISTED = ("SETTLING", "CLOSE", "DELIVERING", "DELIVERED", "PRE_SETTLE")


def parse_exchange_info(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    if not isinstance(data, dict) or "symbols" not in data:
        raise ValueError(f"dapi exchangeInfo: expected an object with 'symbols', got {str(data)[:120]}")
    rows = []
    for s in data["symbols"]:   # instrument metadata: tens of rows, not a hot path
        ctype = s.get("contractType", "")
        if ctype not in ("PERPETUAL", "CURRENT_QUARTER", "NEXT_QUARTER"):
            continue
        if s.get("contractSize") in (None, ""):
            raise ValueError(f"dapi exchangeInfo: {s.get('symbol')} has no contractSize")
        asset, mult = canonical(VENUE, s["symbol"])
        status = s.get("contractStatus") or s.get("status") or ""
        rows.append({
            "venue": VENUE, "instrument": s["symbol"], "asset": asset, "quote": s.get("quoteAsset", "USD"),
            "settle": s.get("marginAsset"), "margin": "inverse",
            "kind": "perp" if ctype == "PERPETUAL" else "future",
            "contract_size": float(s["contractSize"]), "contract_unit": "usd", "multiplier": mult,
            "funding_interval_hours": None,
            "expiry": datetime.fromtimestamp(int(s["deliveryDate"]) / 1000, UTC)
            if ctype != "PERPETUAL" and s.get("deliveryDate") else None,
            "status": "trading" if status == "TRADING" else ("delisted" if status in DELISTED else status.lower()),
            "as_of": ctx.fetched_at,
        })
    return {"instruments": pl.DataFrame(rows, schema=INSTRUMENT_SCHEMA)}


def batch_funding_rate(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    return binance.batch_funding_rate(pages, ctx, venue=VENUE)


OI_SHAPE = {"pair": pl.Utf8, "contractType": pl.Utf8, "sumOpenInterest": pl.Utf8, "sumOpenInterestValue": pl.Utf8,
            "timestamp": pl.Utf8}


def batch_open_interest_hist(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    """/futures/data/openInterestHist on dapi: sumOpenInterest in contracts, sumOpenInterestValue in
    base coin; only contractType=PERPETUAL rows map to one instrument (a page with others is rejected)."""
    dec = batch.decode(pages, binance._list_rows("dapi openInterestHist rows"), objects=OI_SHAPE)
    df = batch.frame(dec, OI_SHAPE)
    df = batch.require(df, dec.errors, list(OI_SHAPE), "dapi openInterestHist")
    df = batch.reject(df, dec.errors, pl.col("contractType") != "PERPETUAL", lambda r: (
        f"dapi openInterestHist: only contractType=PERPETUAL rows map to one instrument; "
        f"got {r['contractType']!r} for pair {r['pair']}"))
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    pairs = batch.first_per_page(df, "pair")
    syms = [f"{p}_PERP" for p in pairs["pair"].to_list()]
    facts = pairs.select(batch.PAGE).with_columns(
        pl.Series("_sym", syms), pl.Series("_asset", [canonical(VENUE, s)[0] for s in syms]),
        pl.Series("_size", [ctx.instrument(VENUE, s).get("contract_size") or None for s in syms], dtype=pl.Float64))
    df = batch.attach(df, facts)
    contracts = num("sumOpenInterest")
    res.add("open_interest", df.select(
        pl.lit(VENUE).alias("venue"), pl.col("_sym").alias("instrument"), ts_ms("timestamp").alias("ts"),
        pl.col("_asset").alias("asset"), pl.lit("inverse").alias("margin"),
        contracts.alias("oi_contracts"),                                   # contracts
        num("sumOpenInterestValue").alias("oi_base"),                      # base coin (BTC), not USD
        (contracts * pl.col("_size")).alias("oi_usd"),                     # USD per contract (none: null)
        batch.PAGE))
    return res


def _batch_klines(kind: str):
    def parse(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
        dec = batch.decode(pages, binance.kline_rows("dapi klines"))
        df = batch.frame(dec, binance.KLINE_SHAPE, orient="row")
        res = batch.BatchResult(errors=dec.errors)
        if df.height == 0:
            return res
        # index klines are by pair, labelled with the pair's perpetual
        syms = [f"{pages[i].params['pair']}_PERP" if kind == "index" else pages[i].params["symbol"] for i in dec.pages]
        kinds = ["future" if kind == "perp" and not s.endswith("_PERP") else kind for s in syms]
        info = [ctx.instrument(VENUE, s) for s in syms]
        consts = batch.per_page(
            dec, _sym=syms, _kind=kinds, _asset=[canonical(VENUE, s)[0] for s in syms],
            _interval=[pages[i].params.get("interval", "1h") for i in dec.pages],
            _size=pl.Series([m.get("contract_size") or None for m in info], dtype=pl.Float64),
            _vol=[k in ("perp", "future") for k in kinds],
            _expiry=pl.Series([m.get("expiry") for m in info], dtype=UTC_MS),
            _fetched=pl.Series([pages[i].fetched_at for i in dec.pages]).cast(UTC_MS))
        df = batch.attach(df, consts)
        vol = pl.col("_vol")
        out = df.select(
            pl.lit(VENUE).alias("venue"), pl.col("_sym").alias("instrument"), pl.col("_kind").alias("kind"),
            pl.col("_interval").alias("interval"), ts_ms("open_time").alias("ts"), pl.col("_asset").alias("asset"),
            num("open").alias("open"), num("high").alias("high"), num("low").alias("low"), num("close").alias("close"),
            # COIN-M: column 7 is the base-coin volume; column 5 is contracts of contractSize USD
            pl.when(vol).then(num("quote_volume")).otherwise(None).alias("volume_base"),
            pl.when(vol).then(num("volume") * pl.col("_size")).otherwise(None).alias("volume_usd"),
            ts_ms("close_time").alias("_close_time"), pl.col("_expiry").alias("expiry"), batch.PAGE, "_fetched")
        res.add("prices", out.filter(pl.col("_close_time") < pl.col("_fetched")).drop("_close_time", "_fetched"))
        return res
    return parse


parse_funding_rate = batch.single(batch_funding_rate)
parse_open_interest_hist = batch.single(batch_open_interest_hist)


PARSERS = {
    "/dapi/v1/exchangeInfo": Parser(parse_exchange_info),
    "/dapi/v1/fundingInfo": Parser(binance.parse_funding_info),
    "/dapi/v1/fundingRate": Parser(batch=batch_funding_rate),
    "/futures/data/openInterestHist": Parser(batch=batch_open_interest_hist),
    "/dapi/v1/klines": Parser(batch=_batch_klines("perp")),
    "/dapi/v1/markPriceKlines": Parser(batch=_batch_klines("mark")),
    "/dapi/v1/indexPriceKlines": Parser(batch=_batch_klines("index")),
}
