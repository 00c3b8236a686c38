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
  parsed by `sources.binance.parse_funding_rate`.  `/dapi/v1/fundingInfo` lists adjusted symbols.
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
from perpwatch.sources import binance
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


def parse_funding_rate(data: list, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    return binance.parse_funding_rate(data, params, ctx, venue=VENUE)


def parse_open_interest_hist(data: list, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    df = binance._frame(data, "dapi openInterestHist rows")
    if df.height == 0:
        return {"open_interest": pl.DataFrame()}
    binance._require(df, ["pair", "contractType", "sumOpenInterest", "sumOpenInterestValue", "timestamp"],
                     "dapi openInterestHist")
    types = set(df["contractType"].unique().to_list())
    if types != {"PERPETUAL"}:
        raise ValueError(f"dapi openInterestHist: only contractType=PERPETUAL rows map to one instrument; "
                         f"got {sorted(types)} for pair {df['pair'][0]}")
    pair = df["pair"][0]
    sym = f"{pair}_PERP"
    size = ctx.instrument(VENUE, sym).get("contract_size")
    contracts = num("sumOpenInterest")
    out = df.select(
        pl.lit(VENUE).alias("venue"), pl.lit(sym).alias("instrument"), ts_ms("timestamp").alias("ts"),
        pl.lit(canonical(VENUE, sym)[0]).alias("asset"), pl.lit("inverse").alias("margin"),
        contracts.alias("oi_contracts"),                                   # contracts
        num("sumOpenInterestValue").alias("oi_base"),                      # base coin (BTC), not USD
        (contracts * size if size else pl.lit(None, pl.Float64)).alias("oi_usd"))   # USD per contract
    return {"open_interest": out}


def _parse_klines(kind: str):
    def parse(data: list, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
        if not isinstance(data, list):
            raise ValueError(f"dapi klines: expected a list of arrays, got {str(data)[:120]}")
        if not data:
            return {"prices": pl.DataFrame()}
        if len(data[0]) < 8:
            raise ValueError(f"dapi klines: rows have {len(data[0])} fields, expected 12")
        if kind == "index":
            sym = f"{params['pair']}_PERP"          # the pair's index, labelled with its perpetual
        else:
            sym = params["symbol"]
        k = "future" if kind == "perp" and not sym.endswith("_PERP") else kind
        info = ctx.instrument(VENUE, sym)
        size = info.get("contract_size")
        df = pl.DataFrame([[str(x) for x in r[:12]] for r in data], schema=binance.KLINE_COLS[: min(len(data[0]), 12)],
                          orient="row")
        has_vol = k in ("perp", "future")
        out = df.select(
            pl.lit(VENUE).alias("venue"), pl.lit(sym).alias("instrument"), pl.lit(k).alias("kind"),
            pl.lit(params.get("interval", "1h")).alias("interval"), ts_ms("open_time").alias("ts"),
            pl.lit(canonical(VENUE, sym)[0]).alias("asset"),
            num("open").alias("open"), num("high").alias("high"), num("low").alias("low"), num("close").alias("close"),
            # COIN-M: column 7 is the base-coin volume; column 5 is contracts of contractSize USD
            (num("quote_volume") if has_vol else pl.lit(None, pl.Float64)).alias("volume_base"),
            ((num("volume") * size) if has_vol and size else pl.lit(None, pl.Float64)).alias("volume_usd"),
            ts_ms("close_time").alias("_close_time"))
        out = out.filter(pl.col("_close_time") < pl.lit(ctx.fetched_at).cast(UTC_MS)).drop("_close_time")
        return {"prices": out.with_columns(pl.lit(info.get("expiry"), UTC_MS).alias("expiry"))}
    return parse


PARSERS = {
    "/dapi/v1/exchangeInfo": Parser(parse_exchange_info),
    "/dapi/v1/fundingInfo": Parser(binance.parse_funding_info),
    "/dapi/v1/fundingRate": Parser(parse_funding_rate),
    "/futures/data/openInterestHist": Parser(parse_open_interest_hist),
    "/dapi/v1/klines": Parser(_parse_klines("perp")),
    "/dapi/v1/markPriceKlines": Parser(_parse_klines("mark")),
    "/dapi/v1/indexPriceKlines": Parser(_parse_klines("index")),
}
