"""Hyperliquid perpetuals: everything is `POST /info` with a JSON body `{"type": ...}`.

Facts from docs/venues.md §4 and the recorded payloads:
- `{"type":"metaAndAssetCtxs"}` -> `[meta, assetCtxs]`, aligned by index (ctx i is universe[i]).
  Perps are USDC-settled and linear; sizes are in coins (contract_size 1 base).  `kPEPE` = 1,000 PEPE
  (multiplier from `perpwatch.core.assets.canonical`), HIP-3 builder markets are `dex:COIN`.
  `isDelisted` -> status "delisted".  Funding is hourly (interval 1h).
- Open interest: there is **no OI history endpoint**.  The assetCtxs snapshot gives the current
  `openInterest` (coins) and prices; each run stores it as one `open_interest` row per coin at
  ts = the fetch time floored to the hour (the observation time of the snapshot; the payload has no
  timestamp of its own), so history accrues by snapshotting every run (hourly deployment).
  oi_base = openInterest x multiplier, oi_usd = openInterest x **oraclePx** (the spot-oracle price
  Hyperliquid funds and margins against; markPx only when the oracle is missing).  The snapshot holds
  every coin of the universe, so the rows cover every listed coin, not only the configured assets.
- `{"type":"fundingHistory","coin","startTime","endTime"}`: at most 500 rows per call, ascending; page
  with startTime = last `time` + 1.  Rows carry tens of ms of jitter -> floor to the hour.  Regimes:
  8-hourly settlements with 8h-sized rates up to and including 2023-06-08 00:00 UTC (the real
  excerpt's 00:00 row is still 0.0001 and 8h after the previous one), hourly from 01:00 on.
  interval_hours: a 1h gap to the previous row -> 1; otherwise the regime of the row's time
  (a missing hourly row must not turn the next one into an "8h" row).
- `{"type":"candleSnapshot","req":{"coin","interval":"1h","startTime","endTime"}}`: at most 5000 rows
  and only the most recent 5000 candles exist; `t`/`T` open/close ms, `v` in coins (no USD volume:
  volume_usd stays null).  The still-forming candle (T >= fetched_at) is dropped.
Weights: 1200 per minute per IP; info requests 20, fundingHistory +1 per 20 rows returned,
candleSnapshot +1 per 60 rows (approximated up front from the expected row count).

Every request is the same endpoint (`/info`), so one parser dispatches on the landed body's "type".
INSTRUMENT_ENDPOINTS is empty on purpose: replay must not treat every `/info` payload as instrument
metadata (Hyperliquid's parsers need no instrument context, so their order does not matter).

Example payload ({"type":"fundingHistory","coin":"BTC","startTime":1686182000000}):
    [{"coin":"BTC","fundingRate":"0.0000125","premium":"0.00023467","time":1686186000054}]
    -> funding_time 2023-06-08 01:00, interval 1h, rate_8h 0.0001, annualised 0.1095
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import polars as pl

from perpwatch.core.assets import canonical
from perpwatch.sources import batch
from perpwatch.sources.base import ParseContext, Parser, Stream, clamp_window, tradable
from perpwatch.sources.http import Budget, Fetched, VenueClient
from perpwatch.sources.normalize import UTC_MS, funding_derived, num, ts_ms

SOURCE = "hyperliquid"
VENUE = "hyperliquid"
H = timedelta(hours=1)
ENDPOINT = "/info"
FUNDING_LIMIT = 500
CANDLE_LIMIT = 5000
CANDLE_DEPTH = CANDLE_LIMIT * H
HOURLY_FUNDING_FROM = datetime(2023, 6, 8, 1, tzinfo=UTC)   # first hourly settlement
INFO_WEIGHT = 20
SNAPSHOT_STREAM = "_all"      # watermark key of the venue-wide OI snapshot (no coin starts with "_")

UNSUPPORTED = {
    "liquidations": "no public market-wide liquidation feed (liquidation fills only appear in "
                    "user-specific endpoints/streams and as ordinary trades)",
    "long_short_ratio": "Hyperliquid publishes no long/short account or position ratios",
}


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    return VenueClient(
        SOURCE,
        bases={"": "HYPERLIQUID"},
        lander=lander,
        budgets={"weight": Budget("hyperliquid weight/min", 1200 * 0.9 * limits_scale, 60.0)},
    )


# --------------------------------------------------------------------------- extraction

def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    return [cl.post(ENDPOINT, {"type": "metaAndAssetCtxs"}, costs={"weight": INFO_WEIGHT})]


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    """Funding and candles per trading coin of the configured assets, plus one venue-wide OI snapshot."""
    out: list[Stream] = []
    for r in tradable(instruments, VENUE, assets, kind="perp"):
        coin = r["instrument"]
        out.append(Stream(SOURCE, "funding_rates", "funding_rates", coin))
        out.append(Stream(SOURCE, "prices", "prices/perp", coin, history=CANDLE_DEPTH))
    if out:
        out.append(Stream(SOURCE, "open_interest", "open_interest", SNAPSHOT_STREAM))
    return out


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    coin = stream.instrument
    if stream.dataset == "open_interest":
        # A snapshot of *now*: the window does not apply (no history exists to page through).
        yield cl.post(ENDPOINT, {"type": "metaAndAssetCtxs"}, costs={"weight": INFO_WEIGHT},
                      stream=stream.name, instrument=coin)
        return
    start = clamp_window(stream, start, end)     # history counted from now, start on the hour grid
    if start >= end:
        return
    if stream.dataset == "funding_rates":
        cursor, stop = _ms(start), _ms(end)
        while cursor <= stop:
            expected = min(FUNDING_LIMIT, (stop - cursor) // 3_600_000 + 1)
            page = cl.post(ENDPOINT, {"type": "fundingHistory", "coin": coin, "startTime": cursor, "endTime": stop},
                           costs={"weight": INFO_WEIGHT + math.ceil(expected / 20)},
                           stream=stream.name, instrument=coin)
            yield page
            rows = page.json()
            if not isinstance(rows, list) or len(rows) < FUNDING_LIMIT:
                return
            cursor = max(int(r["time"]) for r in rows) + 1    # rows may come out of order
        return
    if stream.dataset == "prices":
        cursor = start
        while cursor < end:
            upto = min(cursor + CANDLE_LIMIT * H - H, end)
            n = int((upto - cursor) / H) + 1
            yield cl.post(ENDPOINT, {"type": "candleSnapshot",
                                     "req": {"coin": coin, "interval": "1h", "startTime": _ms(cursor),
                                             "endTime": _ms(upto)}},
                          costs={"weight": INFO_WEIGHT + math.ceil(n / 60)}, stream=stream.name, instrument=coin)
            cursor = upto + H
        return
    raise ValueError(f"hyperliquid: no fetcher for dataset {stream.dataset!r}")


INSTRUMENT_ENDPOINTS: tuple[str, ...] = ()
DATASETS = ("instruments", "funding_rates", "open_interest", "prices")


# --------------------------------------------------------------------------- parsing

INSTRUMENT_SCHEMA = {"venue": pl.Utf8, "instrument": pl.Utf8, "asset": pl.Utf8, "quote": pl.Utf8,
                     "settle": pl.Utf8, "margin": pl.Utf8, "kind": pl.Utf8, "contract_size": pl.Float64,
                     "contract_unit": pl.Utf8, "multiplier": pl.Float64, "funding_interval_hours": pl.Float64,
                     "expiry": UTC_MS, "status": pl.Utf8, "as_of": UTC_MS}


def _universe(data) -> tuple[list[dict], list[dict]]:
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], dict) and isinstance(data[1], list)):
        raise ValueError(f"metaAndAssetCtxs: expected [meta, assetCtxs], got {str(data)[:120]}")
    universe = data[0].get("universe")
    ctxs = data[1]
    if not isinstance(universe, list):
        raise ValueError("metaAndAssetCtxs: meta has no 'universe' list")
    if len(universe) != len(ctxs):
        raise ValueError(f"metaAndAssetCtxs: {len(universe)} universe entries but {len(ctxs)} asset contexts "
                         "(they must align by index)")
    return universe, ctxs


def parse_meta_and_asset_ctxs(data: list, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    """Instrument metadata and the open-interest snapshot from one metaAndAssetCtxs payload."""
    universe, ctxs = _universe(data)
    inst_rows, oi_rows = [], []
    snapshot = ctx.fetched_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    for u, c in zip(universe, ctxs, strict=True):   # one row per listed coin: metadata, not a hot path
        name = u["name"]
        asset, mult = canonical(VENUE, name)
        delisted = bool(u.get("isDelisted"))
        inst_rows.append({
            "venue": VENUE, "instrument": name, "asset": asset, "quote": "USDC", "settle": "USDC",
            "margin": "linear", "kind": "perp", "contract_size": 1.0, "contract_unit": "base",
            "multiplier": mult, "funding_interval_hours": 1.0, "expiry": None,
            "status": "delisted" if delisted else "trading", "as_of": ctx.fetched_at,
        })
        if delisted or c.get("openInterest") is None:
            continue
        oi_rows.append({"instrument": name, "asset": asset, "mult": mult, "oi": c.get("openInterest"),
                        "oracle": c.get("oraclePx"), "mark": c.get("markPx")})
    instruments = pl.DataFrame(inst_rows, schema=INSTRUMENT_SCHEMA)
    if not oi_rows:
        return {"instruments": instruments, "open_interest": pl.DataFrame()}
    raw = pl.DataFrame(oi_rows, schema={"instrument": pl.Utf8, "asset": pl.Utf8, "mult": pl.Float64,
                                        "oi": pl.Utf8, "oracle": pl.Utf8, "mark": pl.Utf8})
    px = pl.coalesce(num("oracle"), num("mark"))
    oi = raw.select(
        pl.lit(VENUE).alias("venue"), "instrument", pl.lit(snapshot).cast(UTC_MS).alias("ts"), "asset",
        pl.lit("linear").alias("margin"),
        num("oi").alias("oi_contracts"),                              # coins of the listed unit (kPEPE)
        (num("oi") * pl.col("mult")).alias("oi_base"),                # base coins (PEPE)
        (num("oi") * px).alias("oi_usd"))                             # px is quoted per listed unit
    return {"instruments": instruments, "open_interest": oi}


def _list_rows(what: str):
    def rows_of(data, params: dict):
        if not isinstance(data, list):
            raise ValueError(f"{what} [{params.get('coin') or (params.get('req') or {}).get('coin')}]: "
                             f"expected a JSON list, got {str(data)[:120]}")
        return data, None
    return rows_of


FUNDING_SHAPE = {"coin": pl.Utf8, "fundingRate": pl.Utf8, "time": pl.Utf8}


def batch_funding_history(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    """fundingHistory: hourly since HOURLY_FUNDING_FROM (8h before); a 1h gap to the previous
    settlement on the page says hourly whatever the date."""
    dec = batch.decode(pages, _list_rows("fundingHistory"), objects=FUNDING_SHAPE)
    df = batch.frame(dec, FUNDING_SHAPE)
    df = batch.require(df, dec.errors, list(FUNDING_SHAPE), "fundingHistory")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    first = batch.first_per_page(df, "coin")
    df = batch.attach(df, first.select(batch.PAGE).with_columns(      # one coin per request
        pl.Series("_asset", [canonical(VENUE, c)[0] for c in first["coin"].to_list()])))
    df = df.with_columns(ts_ms("time").dt.truncate("1h").alias("funding_time"),
                         num("fundingRate").alias("funding_rate"))
    gap = (pl.col("funding_time") - pl.col("funding_time").shift(1).over([batch.PAGE, "coin"], order_by="funding_time")
           ).dt.total_minutes() / 60.0
    regime = pl.when(pl.col("funding_time") < pl.lit(HOURLY_FUNDING_FROM).cast(UTC_MS)).then(8.0).otherwise(1.0)
    df = df.with_columns(pl.when(gap.round(2) == 1.0).then(1.0).otherwise(regime).alias("interval_hours"))
    res.add("funding_rates", df.select(
        pl.lit(VENUE).alias("venue"), pl.col("coin").alias("instrument"), "funding_time",
        pl.col("_asset").alias("asset"),
        "funding_rate", "interval_hours", *funding_derived(pl.col("funding_rate"), pl.col("interval_hours")),
        pl.lit(None, pl.Float64).alias("mark_price"), batch.PAGE))
    return res


CANDLE_SHAPE = {c: pl.Utf8 for c in ("t", "T", "s", "i", "o", "h", "l", "c", "v")}


def batch_candles(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    dec = batch.decode(pages, _list_rows("candleSnapshot"), objects=CANDLE_SHAPE)
    df = batch.frame(dec, CANDLE_SHAPE)
    df = batch.require(df, dec.errors, ["t", "T", "o", "h", "l", "c", "v"], "candleSnapshot")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    first = batch.first_per_page(df, "s")
    reqs = {i: pages[i].params.get("req") or {} for i in dec.pages}
    coins = [s if s is not None else reqs[i]["coin"] for i, s in zip(first[batch.PAGE].to_list(), first["s"].to_list(),
                                                                      strict=True)]
    df = batch.attach(df, first.select(batch.PAGE).with_columns(
        pl.Series("_coin", coins), pl.Series("_asset", [canonical(VENUE, c)[0] for c in coins]),
        pl.Series("_interval", [reqs[i].get("interval", "1h") for i in first[batch.PAGE].to_list()]),
        pl.Series("_fetched", [pages[i].fetched_at for i in first[batch.PAGE].to_list()]).cast(UTC_MS)))
    out = df.select(
        pl.lit(VENUE).alias("venue"), pl.col("_coin").alias("instrument"), pl.lit("perp").alias("kind"),
        pl.coalesce("i", "_interval").alias("interval"),
        ts_ms("t").alias("ts"), pl.col("_asset").alias("asset"),
        num("o").alias("open"), num("h").alias("high"), num("l").alias("low"), num("c").alias("close"),
        num("v").alias("volume_base"), pl.lit(None, pl.Float64).alias("volume_usd"),
        pl.lit(None, UTC_MS).alias("expiry"), batch.PAGE, ts_ms("T").alias("_close_time"), "_fetched")
    # Only closed candles: the one still forming when fetched (T >= fetched_at) would change later.
    res.add("prices", out.filter(pl.col("_close_time") < pl.col("_fetched")).drop("_close_time", "_fetched"))
    return res


def _snapshot(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    """metaAndAssetCtxs: one instrument list + OI snapshot per run, parsed page by page."""
    res = batch.BatchResult()
    for i, pg in enumerate(pages):
        try:
            frames = parse_meta_and_asset_ctxs(orjson.loads(pg.body), pg.params,
                                               ParseContext(pg.fetched_at, ctx.instruments, ctx.columns))
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
            res.errors[i] = str(exc)
            continue
        for t, df in frames.items():
            res.add(t, df.with_columns(pl.lit(i, pl.Int64).alias(batch.PAGE)))
    return res


INFO_PARSERS = {
    "metaAndAssetCtxs": _snapshot,
    "fundingHistory": batch_funding_history,
    "candleSnapshot": batch_candles,
}


def batch_info(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    """/info is one endpoint for every request type: the pages of each type go to its batch parser."""
    by_type: dict[str, list[int]] = {}
    res = batch.BatchResult()
    for i, pg in enumerate(pages):
        kind = pg.params.get("type")
        if kind not in INFO_PARSERS:
            res.errors[i] = f"hyperliquid /info: no parser for request type {kind!r}"
        else:
            by_type.setdefault(kind, []).append(i)
    for kind, idx in by_type.items():
        part = batch.isolate(INFO_PARSERS[kind], [pages[i] for i in idx], ctx)
        res.errors.update({idx[k]: msg for k, msg in part.errors.items()})
        remap = pl.Series([*idx], dtype=pl.Int64)
        for t, df in part.frames.items():
            res.add(t, df.with_columns(remap.gather(df[batch.PAGE]).alias(batch.PAGE)))
    for t, df in res.frames.items():      # back into page order (rows keep theirs)
        res.frames[t] = df.sort(batch.PAGE, maintain_order=True)
    return res


parse_funding_history = batch.single(batch_funding_history)
parse_candles = batch.single(batch_candles)
parse_info = batch.single(batch_info)


PARSERS = {
    "metaAndAssetCtxs": parse_meta_and_asset_ctxs,
    "fundingHistory": parse_funding_history,
    "candleSnapshot": parse_candles,
}


PARSERS = {ENDPOINT: Parser(batch=batch_info)}
