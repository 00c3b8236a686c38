"""Liquidation websocket messages -> staging.liquidations (Binance, Bybit, OKX): the parsers.

REST liquidation history is gone on Binance (2021-04-27) and OKX (April 2023), so
`perpwatch collect` (perpwatch/ingest/collector.py, with the venue table in sources/streams.py)
captures the public websocket streams and lands each flushed batch of messages as one raw.payloads row:

    source      binance_ws | bybit_ws | okx_ws
    endpoint    !forceOrder@arr | allLiquidation | liquidation-orders   (the PARSERS keys)
    params      {"symbols": [...]}   the instruments the collector was capturing
    body        a JSON array of the websocket messages exactly as received

`perpwatch replay` re-parses those rows with the same pure functions below
(sources.get("binance_ws") etc. resolve to this module). Rows whose instrument is not in
params["symbols"] are dropped, so a batch is re-parsed exactly as it was loaded.

Side is always the side of the *position* that was liquidated:
- Binance `o.S` is the side of the forced order: SELL closes a long -> "long", BUY -> "short".
- Bybit `S` is the position side: Buy -> "long", Sell -> "short" (opposite convention to Binance).
- OKX `posSide` long/short is the position; with posSide "net" the order `side` decides:
  buy closes a short -> "short", sell -> "long".

Quantities go to base coin: Binance USD-M `q`/`z` and Bybit linear `v` already are (1000-prefixed
symbols such as 1000PEPEUSDT count thousands of coins and quote per thousand: qty x 1000, price / 1000); Binance
COIN-M `q` and Bybit inverse `v` are USD contracts (qty_base = contracts x contract_size / price);
OKX `sz` is contracts (linear: x ctVal; inverse: x ctVal / price) with ctVal taken from
staging.instruments through the ParseContext. An instrument whose contract size is unknown yields
qty_base = null, which validation quarantines (the raw batch stays; replay after the instruments
are known loads it). usd = price x qty_base.

Example messages (tests/fixtures/liquidations/, docs/venues.md §10):
    {"e":"forceOrder","E":1568014460893,"o":{"s":"BTCUSDT","S":"SELL","q":"0.014","p":"9910",
     "ap":"9910","X":"FILLED","z":"0.014","T":1568014460893}}
        -> binance BTCUSDT long 0.014 BTC @ 9910 = 138.74 USD
    {"topic":"allLiquidation.ROSEUSDT","data":[{"T":1739502302929,"s":"ROSEUSDT","S":"Sell",
     "v":"20000","p":"0.04499"}]}   -> bybit ROSEUSDT short 20000 ROSE @ 0.04499 = 899.8 USD
    {"arg":{"channel":"liquidation-orders","instType":"SWAP"},"data":[{"instId":"IOST-USDT-SWAP",
     "details":[{"posSide":"short","side":"buy","sz":"13","bkPx":"0.007831","ts":"1692266434010"}]}]}
        -> okx IOST-USDT-SWAP short 13 x ctVal IOST @ 0.007831
"""

from __future__ import annotations

import re

import polars as pl

from perpwatch.core.assets import canonical
from perpwatch.sources.base import ParseContext, Parser
from perpwatch.sources.normalize import UTC_MS, num, ts_ms

SOURCE = "binance_ws"       # the module parses all three sources of sources.streams.WS_VENUES
VENUE = None
INSTRUMENT_ENDPOINTS = ()
DATASETS = ("liquidations",)
UNSUPPORTED: dict[str, str] = {}

BYBIT_INVERSE = re.compile(r"[A-Z0-9]+USD([FGHJKMNQUVXZ]\d{2})?")     # BTCUSD, BTCUSDH25
OUTPUT_SCHEMA = {"venue": pl.Utf8, "instrument": pl.Utf8, "ts": UTC_MS, "side": pl.Utf8, "price": pl.Float64,
                 "qty_base": pl.Float64, "asset": pl.Utf8, "usd": pl.Float64}


def _empty() -> dict[str, pl.DataFrame]:
    return {"liquidations": pl.DataFrame(schema=OUTPUT_SCHEMA)}


def _messages(data) -> list:
    """The landed body is a JSON array of messages; a single message is accepted too."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        return [data]
    raise ValueError(f"expected a JSON array of websocket messages, got {type(data).__name__}: {str(data)[:120]}")


def _require(df: pl.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing field(s) {missing}; got {sorted(df.columns)}")


def _str(df: pl.DataFrame, col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Utf8) if col in df.columns else pl.lit(None, pl.Utf8)


def _finish(df: pl.DataFrame, venue: str, params: dict) -> dict[str, pl.DataFrame]:
    """Common tail: symbol filter from params, asset, usd, column order."""
    wanted = params.get("symbols") if isinstance(params, dict) else None
    if wanted:
        df = df.filter(pl.col("instrument").is_in(list(wanted)))
    if df.height == 0:
        return _empty()
    insts = df["instrument"].unique().to_list()
    assets = {i: canonical(venue, i)[0] for i in insts}
    out = df.with_columns(
        pl.lit(venue).alias("venue"),
        pl.col("instrument").replace_strict(assets, return_dtype=pl.Utf8).alias("asset"),
        (pl.col("price") * pl.col("qty_base")).alias("usd"))
    return {"liquidations": out.select(list(OUTPUT_SCHEMA))}


def _per_coin(df: pl.DataFrame, ctx: ParseContext, venue: str) -> pl.DataFrame:
    """1000-prefixed linear perps (Binance/Bybit 1000PEPEUSDT, 1000SHIBUSDT, ...) quote price per 1000 coins
    and size in units of 1000 coins: qty_base = size x 1000 and price = price / 1000, so qty_base is in
    coins and usd = price x qty_base is unchanged. The multiplier comes from staging.instruments, else the
    symbol's prefix (perpwatch.core.assets.canonical)."""
    mult = {}
    for i in df["instrument"].unique().to_list():
        m = ctx.instrument(venue, i).get("multiplier") or canonical(venue, i)[1]
        mult[i] = float(m or 1.0)
    if all(m == 1.0 for m in mult.values()):
        return df
    m = pl.col("instrument").replace_strict(mult, return_dtype=pl.Float64)
    return df.with_columns((pl.col("price") / m).alias("price"), (pl.col("qty_base") * m).alias("qty_base"))


def _contract_info(ctx: ParseContext, venue: str, insts: list[str], inverse_default) -> tuple[dict, dict]:
    """(contract size, is-inverse) per instrument from staging.instruments (None size = unknown)."""
    size, inverse = {}, {}
    for i in insts:
        row = ctx.instrument(venue, i)
        margin = row.get("margin")
        unit = (row.get("contract_unit") or "").lower()
        if margin or unit:
            inverse[i] = margin == "inverse" or unit in ("usd", "quote")
        else:
            inverse[i] = inverse_default(i)
        cs = row.get("contract_size")
        size[i] = float(cs) if cs is not None else None
    return size, inverse


# --------------------------------------------------------------------------- Binance !forceOrder@arr

def _binance_orders(messages: list) -> list[dict]:
    out = []
    for m in messages:      # unwrap envelopes only; field conversion is vectorised below
        if isinstance(m, list):
            out += _binance_orders(m)
            continue
        if not isinstance(m, dict):
            continue
        if "stream" in m and isinstance(m.get("data"), (dict, list)):    # combined-stream envelope
            out += _binance_orders([m["data"]])
            continue
        if m.get("e") == "forceOrder":
            if not isinstance(m.get("o"), dict):
                raise ValueError(f"forceOrder event without an order object: {str(m)[:160]}")
            out.append(m["o"])
    return out


def parse_binance_force_order(data, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    """Binance `!forceOrder@arr` / `<symbol>@forceOrder` events (USD-M fstream, COIN-M dstream)."""
    orders = _binance_orders(_messages(data))
    if not orders:
        return _empty()
    df = pl.DataFrame(orders, infer_schema_length=None)
    _require(df, ["s", "S", "q", "p", "T"], "forceOrder order")
    # Average fill price when the venue gives one, else the order price; filled qty, else order qty.
    price = pl.when(num(_str(df, "ap")) > 0).then(num(_str(df, "ap"))).otherwise(num("p"))
    qty = pl.when(num(_str(df, "z")) > 0).then(num(_str(df, "z"))).otherwise(num("q"))
    df = df.select(pl.col("s").cast(pl.Utf8).alias("instrument"), ts_ms("T").alias("ts"),
                   pl.col("S").cast(pl.Utf8).str.to_uppercase().alias("_S"), price.alias("price"),
                   qty.alias("_qty"))
    bad = df.filter(~pl.col("_S").is_in(["SELL", "BUY"]))
    if bad.height:
        raise ValueError(f"forceOrder: unknown order side(s) {bad['_S'].unique().to_list()}")
    # COIN-M symbols (BTCUSD_PERP, BTCUSD_200925) count USD contracts; USD-M (BTCUSDT, BTCUSDT_261226) base coin.
    size, inverse = _contract_info(ctx, "binance", df["instrument"].unique().to_list(), lambda i: "USD_" in i)
    df = df.with_columns(
        pl.col("instrument").replace_strict(inverse, return_dtype=pl.Boolean).alias("_inv"),
        pl.col("instrument").replace_strict(size, return_dtype=pl.Float64).alias("_cs"))
    df = df.with_columns(
        pl.when(pl.col("_S") == "SELL").then(pl.lit("long")).otherwise(pl.lit("short")).alias("side"),
        pl.when(pl.col("_inv")).then(pl.col("_qty") * pl.col("_cs") / pl.col("price"))
        .otherwise(pl.col("_qty")).alias("qty_base"))
    return _finish(_per_coin(df, ctx, "binance"), "binance", params)


# --------------------------------------------------------------------------- Bybit allLiquidation

def _bybit_rows(messages: list) -> list[dict]:
    out = []
    for m in messages:
        if not isinstance(m, dict) or not str(m.get("topic", "")).startswith("allLiquidation"):
            continue        # subscription acks / pongs are not landed, but tolerate them
        rows = m.get("data")
        if isinstance(rows, dict):
            rows = [rows]
        if not isinstance(rows, list):
            raise ValueError(f"allLiquidation message without a data list: {str(m)[:160]}")
        out += rows
    return out


def parse_bybit_all_liquidation(data, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    """Bybit v5 public `allLiquidation.{symbol}` pushes (linear; inverse `v` is USD)."""
    rows = _bybit_rows(_messages(data))
    if not rows:
        return _empty()
    df = pl.DataFrame(rows, infer_schema_length=None)
    _require(df, ["T", "s", "S", "v", "p"], "allLiquidation row")
    df = df.select(pl.col("s").cast(pl.Utf8).alias("instrument"), ts_ms("T").alias("ts"),
                   pl.col("S").cast(pl.Utf8).str.to_lowercase().alias("_S"),
                   num("p").alias("price"), num("v").alias("_v"))
    bad = df.filter(~pl.col("_S").is_in(["buy", "sell"]))
    if bad.height:
        raise ValueError(f"allLiquidation: unknown position side(s) {bad['_S'].unique().to_list()}")
    # Inverse perps (BTCUSD, BTCUSDH25...) size in USD; linear (BTCUSDT, BTCPERP) in base coin.
    _, inverse = _contract_info(ctx, "bybit", df["instrument"].unique().to_list(),
                                lambda i: BYBIT_INVERSE.fullmatch(i) is not None)
    df = df.with_columns(pl.col("instrument").replace_strict(inverse, return_dtype=pl.Boolean).alias("_inv"))
    df = df.with_columns(
        pl.when(pl.col("_S") == "buy").then(pl.lit("long")).otherwise(pl.lit("short")).alias("side"),
        pl.when(pl.col("_inv")).then(pl.col("_v") / pl.col("price")).otherwise(pl.col("_v")).alias("qty_base"))
    return _finish(_per_coin(df, ctx, "bybit"), "bybit", params)


# --------------------------------------------------------------------------- OKX liquidation-orders

def _okx_rows(messages: list) -> list[dict]:
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("data"), list):
            continue        # {"event": "subscribe"...} acks, "pong"
        for item in m["data"]:
            inst = item.get("instId") if isinstance(item, dict) else None
            details = item.get("details") if isinstance(item, dict) else None
            if inst is None or not isinstance(details, list):
                raise ValueError(f"liquidation-orders item without instId/details: {str(item)[:160]}")
            out += [{**d, "instId": inst} for d in details]
    return out


def parse_okx_liquidation_orders(data, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    """OKX v5 `liquidation-orders` channel pushes (and the retired REST body, same `data` items)."""
    rows = _okx_rows(_messages(data))
    if not rows:
        return _empty()
    df = pl.DataFrame(rows, infer_schema_length=None)
    _require(df, ["instId", "side", "posSide", "bkPx", "sz", "ts"], "liquidation-orders detail")
    df = df.select(pl.col("instId").cast(pl.Utf8).alias("instrument"), ts_ms("ts").alias("ts"),
                   pl.col("posSide").cast(pl.Utf8).str.to_lowercase().alias("_pos"),
                   pl.col("side").cast(pl.Utf8).str.to_lowercase().alias("_side"),
                   num("bkPx").alias("price"), num("sz").alias("_sz"))
    side = (pl.when(pl.col("_pos").is_in(["long", "short"])).then(pl.col("_pos"))
            .when((pl.col("_pos") == "net") & (pl.col("_side") == "buy")).then(pl.lit("short"))
            .when((pl.col("_pos") == "net") & (pl.col("_side") == "sell")).then(pl.lit("long")))
    df = df.with_columns(side.alias("side"))
    bad = df.filter(pl.col("side").is_null())
    if bad.height:
        raise ValueError(f"liquidation-orders: cannot tell the liquidated side from posSide/side "
                         f"{bad.select('_pos', '_side').unique().rows()}")
    # BTC-USD-SWAP (inverse, ctVal in USD) vs BTC-USDT-SWAP / BTC-USDC-SWAP (linear, ctVal in coin).
    size, inverse = _contract_info(ctx, "okx", df["instrument"].unique().to_list(),
                                   lambda i: i.split("-")[1:2] == ["USD"])
    df = df.with_columns(
        pl.col("instrument").replace_strict(inverse, return_dtype=pl.Boolean).alias("_inv"),
        pl.col("instrument").replace_strict(size, return_dtype=pl.Float64).alias("_cs"))
    df = df.with_columns(
        pl.when(pl.col("_inv")).then(pl.col("_sz") * pl.col("_cs") / pl.col("price"))
        .otherwise(pl.col("_sz") * pl.col("_cs")).alias("qty_base"))
    return _finish(df, "okx", params)


PARSERS = {
    "!forceOrder@arr": Parser(parse_binance_force_order),
    "allLiquidation": Parser(parse_bybit_all_liquidation),
    "liquidation-orders": Parser(parse_okx_liquidation_orders),
}
