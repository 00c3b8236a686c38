"""Bybit v5 perpetuals: linear USDT perps (BTCUSDT) and inverse USD perps (BTCUSD).

Endpoints (api.bybit.com), limits and quirks from docs/venues.md §2:
- /v5/market/instruments-info: category linear|inverse, limit 1000, cursor paging; by default
  only Trading (and PendingOpen) symbols, so delisted ones are asked for with status=Closed.
  `fundingInterval` is in *minutes* (480 = 8h).
- /v5/market/open-interest: intervalTime 1h, limit 200, startTime+endTime, cursor paging, newest
  first. `openInterest` is documented as BOTH SIDES SUMMED: we store one side
  (`singleOpenInterest` when present, else openInterest / 2). Unit: base coin for linear,
  USD for inverse (1 contract = 1 USD).
- /v5/market/funding/history: limit 200, newest first; only startTime is an error, so pages
  go BACKWARD with endTime. The interval is the symbol's fundingInterval / the row spacing.
- /v5/market/account-ratio: period 1h, limit 500, cursor; buyRatio/sellRatio are the shares of
  accounts net long / net short: ratio = buyRatio / sellRatio (Bybit gives no ratio field).
- /v5/market/kline, /mark-price-kline, /index-price-kline: interval 60, limit 1000, newest
  first, the forming bar included (dropped here). Kline fields: start, O, H, L, C, volume,
  turnover. Linear: volume = base coin, turnover = quote (USDT). Inverse: volume = USD
  (contracts), turnover = base coin.
Rate limit: 600 requests / 5 s per IP (HTTP 403 "access too frequent", handled by sources.http);
`retCode` != 0 in an HTTP 200 body is an error naming endpoint, symbol, retCode and retMsg;
retCode 10006 ("Too many visits") is a rate limit: back off and retry.

Units of staging.open_interest rows from Bybit:
- linear:  oi_contracts = one side; oi_base = oi_contracts x multiplier (1000PEPEUSDT counts
  thousands); oi_usd NULL here, valued by the pipeline from the perp's price at ts.
- inverse: oi_contracts = oi_usd = one side (USD); oi_base NULL here, valued by the pipeline
  (pipeline.value_open_interest: oi_usd / perp price at ts, before validation).

Example payload (GET /v5/market/open-interest?category=inverse&symbol=BTCUSD&intervalTime=1d):
    {"retCode":0,"result":{"symbol":"BTCUSD","category":"inverse","list":[
      {"openInterest":"63910691.00000000","singleOpenInterest":"31955346","timestamp":"1780963200000"}]}}
    -> oi_usd 31,955,346 (one side), not 63.9 M.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl

from perpwatch.core import settings
from perpwatch.core.assets import canonical
from perpwatch.sources import batch
from perpwatch.sources.base import ParseContext, Parser, Stream, tradable
from perpwatch.sources.http import BadPayload, BadRequest, Budget, Fetched, RateLimited, VenueClient
from perpwatch.sources.normalize import UTC_MS, funding_derived, interval_from_spacing, num, ts_ms

log = logging.getLogger("perpwatch.bybit")

SOURCE = "bybit"
VENUE = "bybit"
H = timedelta(hours=1)

OI_LIMIT = 200
RATIO_LIMIT = 500
FUNDING_LIMIT = 200
KLINE_LIMIT = 1000
INSTRUMENT_LIMIT = 1000
RATE_LIMIT_CODES = {10006, 10018}      # per-endpoint / per-IP "too many visits"
# transient server-side errors in an HTTP 200 envelope (10000 "Server Timeout", 10016 "Server error"):
# retried like a rate limit, never quarantined (found by the error200 fault, docs/reliability.md)
RETRY_CODES = RATE_LIMIT_CODES | {10000, 10016}
MAX_RATE_RETRIES = 6

KLINE_ENDPOINTS = {
    "perp": "/v5/market/kline",
    "future": "/v5/market/kline",
    "mark": "/v5/market/mark-price-kline",
    "index": "/v5/market/index-price-kline",
}
INTERVALS = {"60": ("1h", H), "D": ("1d", timedelta(days=1))}
QUOTES = {"linear": "USDT", "inverse": "USD"}   # which perps we follow per category
PATH_LIMITED = ("/v5/market/instruments-info", "/v5/market/open-interest", "/v5/market/funding/history",
                "/v5/market/account-ratio", *KLINE_ENDPOINTS.values())

UNSUPPORTED = {
    "liquidations": "no REST history; captured by the websocket collector (allLiquidation.{symbol})",
}
# long_short_ratio: only population "accounts" exists on Bybit (no top-trader ratios).


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    s = limits_scale
    return VenueClient(
        SOURCE,
        bases={"": "BYBIT"},
        lander=lander,
        budgets={
            # 600 / 5 s per IP for all of api.bybit.com; the 403 ban lasts 10 minutes, so stay well below.
            "ip": Budget("bybit requests per 5 s", 600 * 0.6 * s, 5.0),
            # and 120 / s per endpoint (retCode 10006 in an HTTP 200): a burst on one path must not reach it
            **{ep: Budget(f"bybit {ep} per s", max(1.0, 120 * 0.8 * s), 1.0) for ep in PATH_LIMITED},
        },
    )


# --------------------------------------------------------------------------- extraction

def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _get(cl: VenueClient, endpoint: str, params: dict, stream: str | None = None,
         instrument: str | None = None) -> Fetched:
    """cl.get plus Bybit's HTTP-200 error envelope: retCode 10006 backs off and retries,
    any other retCode != 0 raises naming endpoint, symbol, retCode and retMsg."""
    attempt = 0
    while True:
        attempt += 1
        page = cl.get(endpoint, params, costs={"ip": 1, endpoint: 1}, stream=stream, instrument=instrument)
        try:
            body = _body(page)
        except BadPayload:
            return page      # landed; the caller yields it (the parser quarantines it), then paging stops
        code = body.get("retCode")
        if code == 0:
            return page
        what = f"retCode {code} {body.get('retMsg', '')!r} (raw_id {page.raw_id})"
        if code in RETRY_CODES:
            cl._count("rate_limited")
            if attempt > MAX_RATE_RETRIES:
                raise RateLimited(SOURCE, endpoint, params, f"{what} after {attempt} attempts", 200)
            wait = min(30.0, 0.5 * 2 ** (attempt - 1))
            for b in cl.budgets.values():
                b.block_for(wait)
            log.warning("bybit %s [%s]: %s, backing off %.1fs", endpoint, params.get("symbol", "-"), what, wait)
            time.sleep(wait)
            continue
        raise BadRequest(SOURCE, endpoint, params, what, 200)


def _body(page: Fetched) -> dict:
    """The decoded v5 envelope of a page, or BadPayload (not JSON, or no retCode)."""
    body = page.json()
    if not isinstance(body, dict) or "retCode" not in body:
        raise BadPayload(SOURCE, page.endpoint, page.params, f"no retCode envelope in raw_id {page.raw_id}: "
                         f"{page.body[:120].decode('utf-8', 'replace')}")
    return body


def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    """Every linear and inverse symbol: the closed ones (status=Closed), so a delisted symbol is marked
    as such instead of silently disappearing, then the listed ones (default: Trading + PendingOpen).
    Listed pages come last so a relisted symbol's current status wins the merge (last non-null wins)."""
    out: list[Fetched] = []
    for category in ("linear", "inverse"):
        for status in ("Closed", None):
            cursor = None
            seen: set[str] = set()
            while True:
                page = _get(cl, "/v5/market/instruments-info",
                            {"category": category, "status": status, "limit": INSTRUMENT_LIMIT, "cursor": cursor})
                out.append(page)
                cursor = (_body(page).get("result") or {}).get("nextPageCursor") or None
                if not cursor or cursor in seen:
                    break
                seen.add(cursor)
    return out


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    """Streams for the configured assets' trading USDT-linear and USD-inverse instruments."""
    out: list[Stream] = []
    now = settings.now()   # the run's clock: a replay or a pinned run sees the listings of its own time
    for r in tradable(instruments, VENUE, assets):
        sym, margin = r["instrument"], r["margin"]
        if margin not in QUOTES or r["quote"] != QUOTES[margin]:
            continue
        extra = (("category", margin),)
        if r["kind"] == "future":
            if r["expiry"] is None or r["expiry"] > now:
                out.append(Stream(SOURCE, "prices", "prices/future", sym, extra=extra))
            continue
        if r["kind"] != "perp":
            continue
        step = timedelta(hours=r["funding_interval_hours"] or 8.0)
        out.append(Stream(SOURCE, "funding_rates", "funding_rates", sym, step=step, extra=extra))
        out.append(Stream(SOURCE, "open_interest", "open_interest", sym, extra=extra))
        out.append(Stream(SOURCE, "long_short_ratio", "long_short_ratio/accounts", sym, extra=extra))
        for kind in ("perp", "mark", "index"):
            out.append(Stream(SOURCE, "prices", f"prices/{kind}", sym, extra=extra))
    return out


def _page_times(page: Fetched, key: str) -> list[int]:
    rows = (_body(page).get("result") or {}).get("list") or []
    try:
        return [int(r[key] if isinstance(r, dict) else r[0]) for r in rows]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BadPayload(SOURCE, page.endpoint, page.params, f"rows without a usable {key!r} in raw_id "
                         f"{page.raw_id}: {exc!r}") from exc


def _cursor_pages(cl: VenueClient, endpoint: str, params: dict, stream: Stream, start_ms: int) -> Iterator[Fetched]:
    """Newest-first cursor paging inside [startTime, endTime], with a progress guard."""
    cursor = None
    oldest_seen = None
    while True:
        page = _get(cl, endpoint, {**params, "cursor": cursor}, stream=stream.name, instrument=stream.instrument)
        yield page
        times = _page_times(page, "timestamp")
        cursor = (_body(page).get("result") or {}).get("nextPageCursor") or None
        if not times or not cursor or min(times) <= start_ms:
            return
        if oldest_seen is not None and min(times) >= oldest_seen:
            raise BadPayload(SOURCE, endpoint, params, f"cursor {cursor!r} did not move back in time "
                             f"(oldest {min(times)} after {oldest_seen})")
        oldest_seen = min(times)


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    """Fetch [start, end] of one stream with Bybit's real limits and paging."""
    sym = stream.instrument
    category = stream.param("category", "linear")
    if start >= end:
        return
    base = {"category": category, "symbol": sym}
    if stream.dataset == "open_interest":
        yield from _cursor_pages(cl, "/v5/market/open-interest",
                                 {**base, "intervalTime": "1h", "startTime": _ms(start), "endTime": _ms(end),
                                  "limit": OI_LIMIT}, stream, _ms(start))
        return
    if stream.dataset == "long_short_ratio":
        yield from _cursor_pages(cl, "/v5/market/account-ratio",
                                 {**base, "period": "1h", "startTime": _ms(start), "endTime": _ms(end),
                                  "limit": RATIO_LIMIT}, stream, _ms(start))
        return
    if stream.dataset == "funding_rates":
        upto = _ms(end)
        while upto >= _ms(start):
            page = _get(cl, "/v5/market/funding/history",
                        {**base, "startTime": _ms(start), "endTime": upto, "limit": FUNDING_LIMIT},
                        stream=stream.name, instrument=sym)
            yield page
            times = _page_times(page, "fundingRateTimestamp")
            if len(times) < FUNDING_LIMIT:
                return
            upto = min(times) - 1
        return
    if stream.dataset == "prices":
        kind = stream.name.split("/", 1)[1]
        endpoint = KLINE_ENDPOINTS[kind]
        cursor = start
        while cursor < end:
            upto = min(cursor + KLINE_LIMIT * H - H, end)
            yield _get(cl, endpoint, {**base, "interval": "60", "start": _ms(cursor), "end": _ms(upto),
                                      "limit": KLINE_LIMIT}, stream=stream.name, instrument=sym)
            cursor = upto + H
        return
    raise ValueError(f"bybit: no fetcher for dataset {stream.dataset!r}")


INSTRUMENT_ENDPOINTS = ("/v5/market/instruments-info",)
DATASETS = ("instruments", "funding_rates", "open_interest", "long_short_ratio", "prices")


# --------------------------------------------------------------------------- parsing

def _result(data, endpoint: str, params: dict) -> dict | None:
    """The `result` of a v5 envelope; None for a rate-limited reply (it was retried); raises on errors."""
    if not isinstance(data, dict) or "retCode" not in data:
        raise ValueError(f"bybit {endpoint}: expected a v5 envelope with retCode, got {str(data)[:120]}")
    code = data["retCode"]
    if code != 0:
        if code in RETRY_CODES:
            return None
        raise ValueError(f"bybit {endpoint} [{params.get('symbol', '-')}]: retCode {code} "
                         f"{data.get('retMsg', '')!r}")
    result = data.get("result")
    if not isinstance(result, dict):
        raise ValueError(f"bybit {endpoint}: result is {type(result).__name__}, expected an object")
    return result


def _rows(result: dict, endpoint: str) -> list:
    rows = result.get("list")
    if not isinstance(rows, list):
        raise ValueError(f"bybit {endpoint}: result.list is {type(rows).__name__}, expected a list")
    return rows


def _asset(ctx: ParseContext, sym: str) -> str:
    return ctx.instrument(VENUE, sym).get("asset") or canonical(VENUE, sym)[0]


def _multiplier(ctx: ParseContext, sym: str) -> float:
    return float(ctx.instrument(VENUE, sym).get("multiplier") or canonical(VENUE, sym)[1])


def _category(result: dict, params: dict) -> str:
    return params.get("category") or result.get("category") or "linear"


INSTRUMENT_SCHEMA = {"venue": pl.Utf8, "instrument": pl.Utf8, "asset": pl.Utf8, "quote": pl.Utf8, "settle": pl.Utf8,
                     "margin": pl.Utf8, "kind": pl.Utf8, "contract_size": pl.Float64, "contract_unit": pl.Utf8,
                     "multiplier": pl.Float64, "funding_interval_hours": pl.Float64, "expiry": UTC_MS,
                     "status": pl.Utf8, "as_of": UTC_MS}
STATUS = {"Trading": "trading", "PreLaunch": "prelaunch", "PendingOpen": "prelaunch",
          "Settling": "delisted", "Delivering": "delisted", "Closed": "delisted"}


def parse_instruments(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    endpoint = "/v5/market/instruments-info"
    result = _result(data, endpoint, params)
    if result is None:
        return {"instruments": pl.DataFrame(schema=INSTRUMENT_SCHEMA)}
    category = _category(result, params)
    rows = []
    for s in _rows(result, endpoint):   # instrument metadata: a few hundred rows, not a hot path
        ctype = s.get("contractType", "")
        if not ctype.endswith(("Perpetual", "Futures")):
            continue
        base, quote = s.get("baseCoin", ""), s.get("quoteCoin", "")
        asset, mult = canonical(VENUE, base + quote) if base else canonical(VENUE, s["symbol"])
        perp = ctype.endswith("Perpetual")
        inverse = category == "inverse" or ctype.startswith("Inverse")
        minutes = s.get("fundingInterval")
        delivery = int(s.get("deliveryTime") or 0)
        rows.append({
            "venue": VENUE, "instrument": s["symbol"], "asset": asset, "quote": quote or None,
            "settle": s.get("settleCoin") or None, "margin": "inverse" if inverse else "linear",
            "kind": "perp" if perp else "future",
            "contract_size": 1.0, "contract_unit": "usd" if inverse else "base", "multiplier": mult,
            "funding_interval_hours": float(minutes) / 60.0 if perp and minutes not in (None, "", 0, "0") else None,
            "expiry": datetime.fromtimestamp(delivery / 1000, UTC) if delivery and not perp else None,
            "status": STATUS.get(s.get("status", ""), str(s.get("status", "")).lower()),
            "as_of": ctx.fetched_at,
        })
    return {"instruments": pl.DataFrame(rows, schema=INSTRUMENT_SCHEMA)}


def _envelope_rows(endpoint: str):
    """rows_of for a v5 list endpoint: (result.list, (symbol, category)); a rate-limited reply has no rows."""
    def rows_of(data, params: dict):
        result = _result(data, endpoint, params)
        if result is None:
            return [], None
        return _rows(result, endpoint), (result.get("symbol"), _category(result, params))
    return rows_of


def _opt(col: str) -> pl.Expr:
    """Numeric string that may be absent or empty ("") -> Float64 with nulls."""
    e = pl.col(col).str.strip_chars()
    return pl.when(e == "").then(None).otherwise(e).cast(pl.Float64)


def _sorted(df: pl.DataFrame, col: str) -> pl.DataFrame:
    """Bybit lists newest first: each page's rows in time order (pages keep theirs)."""
    return df.sort(batch.PAGE, col, maintain_order=True)


OI_SHAPE = {"openInterest": pl.Utf8, "singleOpenInterest": pl.Utf8, "timestamp": pl.Utf8}


def batch_open_interest(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    endpoint = "/v5/market/open-interest"
    dec = batch.decode(pages, _envelope_rows(endpoint))
    df = batch.frame(dec, OI_SHAPE)
    df = batch.require(df, dec.errors, ["openInterest", "timestamp"], "bybit open-interest")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    syms = [m[0] or pages[i].params["symbol"] for i, m in zip(dec.pages, dec.meta, strict=True)]
    inverse = [m[1] == "inverse" for m in dec.meta]
    df = batch.attach(df, batch.per_page(
        dec, _sym=syms, _inv=inverse, _asset=[_asset(ctx, s) for s in syms],
        _size=[float(ctx.instrument(VENUE, s).get("contract_size") or 1.0) for s in syms],
        _mult=[_multiplier(ctx, s) for s in syms]))
    # one side: singleOpenInterest (since June 2026) or half of the documented both-sides sum
    one_side = pl.coalesce(_opt("singleOpenInterest"), num("openInterest") / 2.0)
    inv = pl.col("_inv")
    # inverse: USD contracts of 1 USD, the value is USD (base coins need a price);
    # linear: base coin (in the symbol's unit: 1000PEPEUSDT counts thousands)
    out = df.select(pl.lit(VENUE).alias("venue"), pl.col("_sym").alias("instrument"), ts_ms("timestamp").alias("ts"),
                    pl.col("_asset").alias("asset"),
                    pl.when(inv).then(pl.lit("inverse")).otherwise(pl.lit("linear")).alias("margin"),
                    (one_side / pl.col("_size")).alias("oi_contracts"),
                    pl.when(inv).then(None).otherwise(one_side * pl.col("_mult")).alias("oi_base"),
                    pl.when(inv).then(one_side).otherwise(None).alias("oi_usd"), batch.PAGE)
    res.add("open_interest", _sorted(out, "ts"))
    return res


FUNDING_SHAPE = {"symbol": pl.Utf8, "fundingRate": pl.Utf8, "fundingRateTimestamp": pl.Utf8}


def batch_funding_history(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    endpoint = "/v5/market/funding/history"
    dec = batch.decode(pages, _envelope_rows(endpoint))
    df = batch.frame(dec, FUNDING_SHAPE)
    df = batch.require(df, dec.errors, list(FUNDING_SHAPE), "bybit funding/history")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    first = batch.first_per_page(df, "symbol")
    syms = first["symbol"].to_list()
    df = batch.attach(df, first.select(batch.PAGE).with_columns(
        pl.Series("_asset", [_asset(ctx, s) for s in syms]),
        pl.Series("_known", [float(ctx.instrument(VENUE, s).get("funding_interval_hours") or 8.0) for s in syms])))
    df = df.with_columns(ts_ms("fundingRateTimestamp").dt.truncate("1h").alias("funding_time"),
                         num("fundingRate").alias("funding_rate"))
    df = df.with_columns(interval_from_spacing(df, "funding_time", [batch.PAGE, "symbol"], pl.col("_known"))
                         .alias("interval_hours"))
    out = df.select(
        pl.lit(VENUE).alias("venue"), pl.col("symbol").alias("instrument"), "funding_time",
        pl.col("_asset").alias("asset"), "funding_rate", "interval_hours",
        *funding_derived(pl.col("funding_rate"), pl.col("interval_hours")),
        pl.lit(None, pl.Float64).alias("mark_price"), batch.PAGE)
    res.add("funding_rates", _sorted(out, "funding_time"))
    return res


RATIO_SHAPE = {"symbol": pl.Utf8, "buyRatio": pl.Utf8, "sellRatio": pl.Utf8, "timestamp": pl.Utf8}


def batch_account_ratio(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    endpoint = "/v5/market/account-ratio"
    dec = batch.decode(pages, _envelope_rows(endpoint))
    df = batch.frame(dec, RATIO_SHAPE)
    df = batch.require(df, dec.errors, list(RATIO_SHAPE), "bybit account-ratio")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    first = batch.first_per_page(df, "symbol")
    df = batch.attach(df, first.select(batch.PAGE).with_columns(
        pl.Series("_asset", [_asset(ctx, s) for s in first["symbol"].to_list()])))
    out = df.select(
        pl.lit(VENUE).alias("venue"), pl.col("symbol").alias("instrument"), ts_ms("timestamp").alias("ts"),
        pl.lit("accounts").alias("population"), pl.col("_asset").alias("asset"),
        num("buyRatio").alias("long_share"), num("sellRatio").alias("short_share"),
        pl.when(num("sellRatio") > 0).then(num("buyRatio") / num("sellRatio")).otherwise(None).alias("ratio"),
        batch.PAGE)
    res.add("long_short_ratio", _sorted(out, "ts"))
    return res


KLINE_COLS = ["start", "open", "high", "low", "close", "volume", "turnover"]


def _batch_klines(kind: str, endpoint: str):
    need = 7 if kind in ("perp", "future") else 5

    def rows_of(data, params: dict):
        rows, meta = _envelope_rows(endpoint)(data, params)
        if not rows:
            return rows, meta
        sym = meta[0] or params["symbol"]
        width = len(rows[0])
        if width < need or any(len(r) != width for r in rows):
            raise ValueError(f"bybit {endpoint} [{sym}]: kline rows have {width} fields, expected {need}")
        if INTERVALS.get(str(params.get("interval", "60")), (None, None))[0] is None:
            raise ValueError(f"bybit {endpoint} [{sym}]: unsupported interval {params.get('interval')!r}")
        return (rows if width == need else [r[:need] for r in rows]), meta

    def parse(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
        dec = batch.decode(pages, rows_of)
        df = batch.frame(dec, {c: pl.Utf8 for c in KLINE_COLS[:need]}, orient="row")
        res = batch.BatchResult(errors=dec.errors)
        if df.height == 0:
            return res
        syms = [m[0] or pages[i].params["symbol"] for i, m in zip(dec.pages, dec.meta, strict=True)]
        info = [ctx.instrument(VENUE, s) for s in syms]
        spans = [INTERVALS[str(pages[i].params.get("interval", "60"))] for i in dec.pages]
        df = batch.attach(df, batch.per_page(
            dec, _sym=syms, _asset=[_asset(ctx, s) for s in syms], _inv=[m[1] == "inverse" for m in dec.meta],
            _kind=["future" if kind == "perp" and m.get("kind") == "future" else kind for m in info],
            _label=[sp[0] for sp in spans], _span=pl.Series([sp[1] for sp in spans], dtype=pl.Duration("ms")),
            _expiry=pl.Series([m.get("expiry") for m in info], dtype=UTC_MS),
            _fetched=pl.Series([pages[i].fetched_at for i in dec.pages]).cast(UTC_MS)))
        if need == 7:      # linear: volume base, turnover quote; inverse: volume USD, turnover base
            inv = pl.col("_inv")
            vols = [pl.when(inv).then(num("turnover")).otherwise(num("volume")).alias("volume_base"),
                    pl.when(inv).then(num("volume")).otherwise(num("turnover")).alias("volume_usd")]
        else:
            vols = [pl.lit(None, pl.Float64).alias("volume_base"), pl.lit(None, pl.Float64).alias("volume_usd")]
        out = df.select(
            pl.lit(VENUE).alias("venue"), pl.col("_sym").alias("instrument"), pl.col("_kind").alias("kind"),
            pl.col("_label").alias("interval"), ts_ms("start").alias("ts"), pl.col("_asset").alias("asset"),
            num("open").alias("open"), num("high").alias("high"), num("low").alias("low"),
            num("close").alias("close"), *vols, pl.col("_expiry").alias("expiry"), batch.PAGE, "_span", "_fetched")
        # Bybit includes the bar still forming: keep only bars closed when fetched.
        out = out.filter(pl.col("ts") + pl.col("_span") <= pl.col("_fetched")).drop("_span", "_fetched")
        res.add("prices", _sorted(out, "ts"))
        return res
    return parse


parse_open_interest = batch.single(batch_open_interest)
parse_funding_history = batch.single(batch_funding_history)
parse_account_ratio = batch.single(batch_account_ratio)


PARSERS = {
    "/v5/market/instruments-info": Parser(parse_instruments),
    "/v5/market/open-interest": Parser(batch=batch_open_interest),
    "/v5/market/funding/history": Parser(batch=batch_funding_history),
    "/v5/market/account-ratio": Parser(batch=batch_account_ratio),
    "/v5/market/kline": Parser(batch=_batch_klines("perp", "/v5/market/kline")),
    "/v5/market/mark-price-kline": Parser(batch=_batch_klines("mark", "/v5/market/mark-price-kline")),
    "/v5/market/index-price-kline": Parser(batch=_batch_klines("index", "/v5/market/index-price-kline")),
}
