"""OKX v5 perpetual swaps: USDT-linear (BTC-USDT-SWAP) and USD-inverse (BTC-USD-SWAP), plus dated
FUTURES prices for basis when listed.

Endpoints (www.okx.com), limits and quirks from docs/venues.md §3:
- /api/v5/public/instruments?instType=SWAP|FUTURES: ctVal x ctMult in ctValCcy per contract
  (BTC-USDT-SWAP 0.01 BTC linear, BTC-USD-SWAP 100 USD inverse); state live -> trading. The list
  holds only listed instruments: a known instrument missing from it is marked delisted.
- /api/v5/public/funding-rate (instId=ANY, else per instrument): interval = nextFundingTime - fundingTime.
- /api/v5/rubik/stat/contracts/open-interest-history: instId, period 1H, begin/end (exclusive), limit 100, newest
  first, rows [ts, oi (contracts), oiCcy (coin), oiUsd], at most the latest 1,440 rows.
- /api/v5/public/funding-rate-history: limit 400, before/after = exclusive fundingTime cursors,
  newest first, about 3 months deep. `realizedRate` (what was charged) wins over `fundingRate`.
- /api/v5/rubik/stat/contracts/long-short-account-ratio-contract (accounts), ...-top-trader
  (top_accounts), long-short-position-ratio-contract-top-trader (top_positions): rows [ts, ratio]
  -> long_share = ratio / (1 + ratio). Top traders = top 5 % by position value (Binance: top 20 %).
- candles: /api/v5/market/candles (latest 1,440 bars, limit 300) or /history-candles (limit 300);
  mark: /mark-price-candles | /history-mark-price-candles; index: /index-candles |
  /history-index-candles (instId = the swap's family, BTC-USDT / BTC-USD; stored under the swap's
  instId so perp, mark and index join on instrument). bar=1H only: 1D bars are cut at UTC+8.
  Rows [ts,o,h,l,c,vol(contracts),volCcy(coin),volCcyQuote,confirm]; confirm "0" = forming -> dropped.
Errors: HTTP 429, or HTTP 200 with code != "0"; code 50011 = rate limit -> back off and retry; any
other code raises naming endpoint, instId, code and msg. Budgets are per endpoint ("N per 2 s").

Units of staging.open_interest rows from OKX: oi_contracts = oi; oi_base = oiCcy (else
oi x contract size for linear); oi_usd = oiUsd (else oi x contract size for inverse). When both the
reported and the contract-size value exist they must agree (0.5 %), or the page is refused: a wrong
ctVal or a changed unit must not load silently.

Example (GET /api/v5/public/open-interest, real 2022 row, BTC-USDT-SWAP, ctVal 0.01 BTC):
    {"instId":"BTC-USDT-SWAP","oi":"2125419","oiCcy":"21254.19"}  -> 2,125,419 contracts = 21,254.19 BTC
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
from perpwatch.sources.base import ParseContext, Parser, Stream, clamp_window, tradable
from perpwatch.sources.http import BadPayload, BadRequest, Budget, Fetched, RateLimited, VenueClient
from perpwatch.sources.normalize import UTC_MS, funding_derived, interval_from_spacing, num, ts_ms

log = logging.getLogger("perpwatch.okx")

SOURCE = "okx"
VENUE = "okx"
H = timedelta(hours=1)
RUBIK_DEPTH = 1440 * H           # the latest 1,440 rows of the period
FUNDING_DEPTH = timedelta(days=90)
RECENT_CANDLES = 1440 * H        # /candles, /mark-price-candles, /index-candles serve the latest 1,440 bars
RATE_LIMIT_CODES = {"50011", "50061"}
# transient server-side errors in an HTTP 200 envelope (50001 service unavailable, 50004 endpoint timeout,
# 50013 systems busy, 50026 system error): retried like a rate limit (found by the error200 fault)
RETRY_CODES = RATE_LIMIT_CODES | {"50001", "50004", "50013", "50026"}
MAX_RATE_RETRIES = 6
UNIT_TOLERANCE = 0.005

INSTRUMENTS = "/api/v5/public/instruments"
FUNDING_NOW = "/api/v5/public/funding-rate"
FUNDING_HISTORY = "/api/v5/public/funding-rate-history"
OI_HISTORY = "/api/v5/rubik/stat/contracts/open-interest-history"
RATIO_ENDPOINTS = {
    "accounts": "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract",
    "top_accounts": "/api/v5/rubik/stat/contracts/long-short-account-ratio-contract-top-trader",
    "top_positions": "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader",
}
# kind -> ((recent endpoint, limit), (history endpoint, limit))
CANDLES = {
    "perp": (("/api/v5/market/candles", 300), ("/api/v5/market/history-candles", 300)),
    "future": (("/api/v5/market/candles", 300), ("/api/v5/market/history-candles", 300)),
    "mark": (("/api/v5/market/mark-price-candles", 100), ("/api/v5/market/history-mark-price-candles", 100)),
    "index": (("/api/v5/market/index-candles", 100), ("/api/v5/market/history-index-candles", 100)),
}
BARS = {"1H": ("1h", H), "1Dutc": ("1d", timedelta(days=1))}
# requests per 2 s per endpoint (OKX docs), used at 80 %
LIMITS = {
    # funding-rate: 10 per 2 s (OKX v5 docs "Get funding rate", rate limit rule IP + instrument ID)
    INSTRUMENTS: 20, FUNDING_NOW: 10, FUNDING_HISTORY: 10, OI_HISTORY: 10,
    **{ep: 5 for ep in RATIO_ENDPOINTS.values()},
    "/api/v5/market/candles": 40, "/api/v5/market/history-candles": 20,
    "/api/v5/market/mark-price-candles": 20, "/api/v5/market/history-mark-price-candles": 10,
    "/api/v5/market/index-candles": 20, "/api/v5/market/history-index-candles": 10,
}
QUOTES = {"linear": "USDT", "inverse": "USD"}   # which swaps we follow per margin type

UNSUPPORTED = {
    "liquidations": "REST liquidation-orders removed from the docs 2023-03-27 (recent days only); captured by "
                    "the websocket collector (liquidation-orders channel)",
}


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    s = limits_scale
    return VenueClient(
        SOURCE,
        bases={"": "OKX"},
        lander=lander,
        budgets={ep: Budget(f"okx {ep} per 2 s", max(1.0, n * 0.8 * s), 2.0) for ep, n in LIMITS.items()},
    )


# --------------------------------------------------------------------------- extraction

def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _body(page: Fetched) -> dict:
    """The decoded v5 envelope of a page, or BadPayload (not JSON, or no code)."""
    body = page.json()
    if not isinstance(body, dict) or "code" not in body:
        raise BadPayload(SOURCE, page.endpoint, page.params, f"no code/data envelope in raw_id {page.raw_id}: "
                         f"{page.body[:120].decode('utf-8', 'replace')}")
    return body


def _get(cl: VenueClient, endpoint: str, params: dict, stream: str | None = None,
         instrument: str | None = None) -> Fetched:
    """cl.get plus OKX's HTTP-200 error envelope: code 50011 backs off and retries, any other
    code != "0" raises naming endpoint, instId, code and msg."""
    attempt = 0
    while True:
        attempt += 1
        page = cl.get(endpoint, params, costs={endpoint: 1}, stream=stream, instrument=instrument)
        try:
            body = _body(page)
        except BadPayload:
            return page      # landed; the caller yields it (the parser quarantines it), then paging stops
        code = str(body.get("code"))
        if code == "0":
            return page
        what = f"code {code} {body.get('msg', '')!r} (raw_id {page.raw_id})"
        if code in RETRY_CODES:
            cl._count("rate_limited")
            if attempt > MAX_RATE_RETRIES:
                raise RateLimited(SOURCE, endpoint, params, f"{what} after {attempt} attempts", 200)
            wait = min(30.0, 0.5 * 2 ** (attempt - 1))
            if endpoint in cl.budgets:
                cl.budgets[endpoint].block_for(wait)
            log.warning("okx %s [%s]: %s, backing off %.1fs", endpoint, params.get("instId", "-"), what, wait)
            time.sleep(wait)
            continue
        raise BadRequest(SOURCE, endpoint, params, what, 200)


def _data(page: Fetched) -> list:
    data = _body(page).get("data")
    if not isinstance(data, list):
        raise BadPayload(SOURCE, page.endpoint, page.params, f"data is {type(data).__name__} in raw_id {page.raw_id}")
    return data


def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    """SWAP and FUTURES listings, then the funding-rate snapshot (interval per swap) for every swap
    (instId=ANY), or, where ANY is refused, for the configured assets' live swaps."""
    out = [_get(cl, INSTRUMENTS, {"instType": "SWAP"}), _get(cl, INSTRUMENTS, {"instType": "FUTURES"})]
    try:
        out.append(_get(cl, FUNDING_NOW, {"instId": "ANY"}))
        return out
    except BadRequest as exc:
        log.info("okx funding-rate instId=ANY refused (%s): asking per instrument", exc)
    wanted = set(settings.assets())
    for row in _data(out[0]):
        inst = row.get("instId", "")
        if row.get("state") == "live" and canonical(VENUE, inst)[0] in wanted:
            try:
                out.append(_get(cl, FUNDING_NOW, {"instId": inst}))
            except BadRequest as exc:     # one instrument's snapshot missing: its interval comes from spacing
                log.warning("okx funding-rate %s: %s", inst, exc)
    return out


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    """Streams for the configured assets' trading USDT-linear and USD-inverse swaps (and futures prices)."""
    out: list[Stream] = []
    now = settings.now()   # the run's clock: a replay or a pinned run sees the listings of its own time
    for r in tradable(instruments, VENUE, assets):
        inst, margin = r["instrument"], r["margin"]
        if margin not in QUOTES or r["quote"] != QUOTES[margin]:
            continue
        if r["kind"] == "future":
            if r["expiry"] is None or r["expiry"] > now:
                out.append(Stream(SOURCE, "prices", "prices/future", inst))
            continue
        if r["kind"] != "perp":
            continue
        step = timedelta(hours=r["funding_interval_hours"] or 8.0)
        out.append(Stream(SOURCE, "funding_rates", "funding_rates", inst, step=step, history=FUNDING_DEPTH))
        out.append(Stream(SOURCE, "open_interest", "open_interest", inst, history=RUBIK_DEPTH))
        for pop in RATIO_ENDPOINTS:
            out.append(Stream(SOURCE, "long_short_ratio", f"long_short_ratio/{pop}", inst, history=RUBIK_DEPTH))
        for kind in ("perp", "mark", "index"):
            out.append(Stream(SOURCE, "prices", f"prices/{kind}", inst))
    return out


def index_id(inst: str) -> str:
    """The index a swap tracks: BTC-USDT-SWAP -> BTC-USDT, BTC-USD-SWAP -> BTC-USD."""
    return inst.removesuffix("-SWAP")


def _times(page: Fetched, key: str | int) -> list[int]:
    try:
        return [int(r[key]) for r in _data(page)]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BadPayload(SOURCE, page.endpoint, page.params,
                         f"rows without a usable {key!r} in raw_id {page.raw_id}: {exc!r}") from exc


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    """Fetch [start, end] of one stream, paging backward from `end` (OKX pages are newest first)."""
    inst = stream.instrument
    start = clamp_window(stream, start, end)     # history counted from now, start on the hour grid
    if start >= end:
        return
    lo, hi = _ms(start), _ms(end)
    if stream.dataset in ("open_interest", "long_short_ratio"):
        endpoint = OI_HISTORY if stream.dataset == "open_interest" else RATIO_ENDPOINTS[stream.name.split("/", 1)[1]]
        # rubik begin/end are EXCLUSIVE: "begin: return records newer than the requested ts", "end: return
        # records earlier than the requested ts" (OKX v5 docs, Trading Statistics, contract open interest
        # history / long-short ratio pages). So [lo, hi] is asked as begin=lo-1, end=hi+1.
        end_excl = hi + 1
        while True:
            page = _get(cl, endpoint, {"instId": inst, "period": "1H", "begin": lo - 1, "end": end_excl,
                                       "limit": 100}, stream=stream.name, instrument=inst)
            yield page
            times = _times(page, 0)
            if len(times) < 100 or min(times) <= lo:
                return
            if min(times) >= end_excl:
                raise BadPayload(SOURCE, endpoint, page.params, f"page is not older than end={end_excl}")
            end_excl = min(times)
    if stream.dataset == "funding_rates":
        after = hi + 1                             # before/after are exclusive
        while True:
            page = _get(cl, FUNDING_HISTORY, {"instId": inst, "before": lo - 1, "after": after, "limit": 400},
                        stream=stream.name, instrument=inst)
            yield page
            times = _times(page, "fundingTime")
            if len(times) < 400 or min(times) <= lo:
                return
            if min(times) >= after:
                raise BadPayload(SOURCE, FUNDING_HISTORY, page.params, f"page is not older than after={after}")
            after = min(times)
    if stream.dataset == "prices":
        kind = stream.name.split("/", 1)[1]
        (recent, recent_limit), (history, history_limit) = CANDLES[kind]
        use_recent = start >= settings.now() - RECENT_CANDLES + 2 * H
        endpoint, limit = (recent, recent_limit) if use_recent else (history, history_limit)
        inst_id = index_id(inst) if kind == "index" else inst
        after = hi + 1
        while True:
            page = _get(cl, endpoint, {"instId": inst_id, "bar": "1H", "before": lo - 1, "after": after,
                                       "limit": limit}, stream=stream.name, instrument=inst)
            yield page
            times = _times(page, 0)
            if len(times) < limit or min(times) <= lo:
                return
            if min(times) >= after:
                raise BadPayload(SOURCE, endpoint, page.params, f"page is not older than after={after}")
            after = min(times)
    raise ValueError(f"okx: no fetcher for dataset {stream.dataset!r}")


INSTRUMENT_ENDPOINTS = (INSTRUMENTS, FUNDING_NOW)
DATASETS = ("instruments", "funding_rates", "open_interest", "long_short_ratio", "prices")


# --------------------------------------------------------------------------- parsing

def _rows(data, endpoint: str, params: dict) -> list | None:
    """The `data` list of a v5 envelope; None for a rate-limited reply (it was retried); raises on errors."""
    if not isinstance(data, dict) or "code" not in data:
        raise ValueError(f"okx {endpoint}: expected a v5 envelope with code, got {str(data)[:120]}")
    code = str(data["code"])
    if code != "0":
        if code in RETRY_CODES:
            return None
        raise ValueError(f"okx {endpoint} [{params.get('instId', params.get('instType', '-'))}]: code {code} "
                         f"{data.get('msg', '')!r}")
    rows = data.get("data")
    if not isinstance(rows, list):
        raise ValueError(f"okx {endpoint}: data is {type(rows).__name__}, expected a list")
    return rows


def _opt_num(df: pl.DataFrame, col: str) -> pl.Expr:
    """Numeric string column that may be absent or empty ("") -> Float64 with nulls."""
    if col not in df.columns:
        return pl.lit(None, pl.Float64)
    e = pl.col(col).cast(pl.Utf8).str.strip_chars()
    return pl.when(e == "").then(None).otherwise(e).cast(pl.Float64)


def _asset(ctx: ParseContext, inst: str) -> str:
    return ctx.instrument(VENUE, inst).get("asset") or canonical(VENUE, inst)[0]


INSTRUMENT_SCHEMA = {"venue": pl.Utf8, "instrument": pl.Utf8, "asset": pl.Utf8, "quote": pl.Utf8, "settle": pl.Utf8,
                     "margin": pl.Utf8, "kind": pl.Utf8, "contract_size": pl.Float64, "contract_unit": pl.Utf8,
                     "multiplier": pl.Float64, "funding_interval_hours": pl.Float64, "expiry": UTC_MS,
                     "status": pl.Utf8, "as_of": UTC_MS}
STATE = {"live": "trading", "suspend": "suspended", "preopen": "prelaunch", "test": "test", "expired": "delisted"}
KINDS = {"SWAP": "perp", "FUTURES": "future"}


def _f(x) -> float | None:
    try:
        return float(x) if x not in (None, "") else None
    except (TypeError, ValueError):
        return None


def parse_instruments(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    """Listed instruments; a known instrument of the same instType missing from the list is delisted."""
    rows_in = _rows(data, INSTRUMENTS, params)
    if rows_in is None:
        return {"instruments": pl.DataFrame(schema=INSTRUMENT_SCHEMA)}
    rows, listed = [], set()
    for s in rows_in:   # instrument metadata: a few hundred rows, not a hot path
        kind = KINDS.get(s.get("instType", ""))
        if kind is None:
            continue
        inst = s["instId"]
        listed.add(inst)
        family = s.get("instFamily") or s.get("uly") or inst
        quote = family.split("-")[1].split("_")[0] if "-" in family else None
        asset, mult = canonical(VENUE, inst)
        ct_val, ct_mult = _f(s.get("ctVal")), _f(s.get("ctMult")) or 1.0
        exp = _f(s.get("expTime"))
        rows.append({
            "venue": VENUE, "instrument": inst, "asset": asset, "quote": quote, "settle": s.get("settleCcy") or None,
            "margin": "inverse" if s.get("ctType") == "inverse" else "linear", "kind": kind,
            "contract_size": ct_val * ct_mult if ct_val is not None else None,
            "contract_unit": "usd" if s.get("ctValCcy") == "USD" else "base", "multiplier": mult,
            "funding_interval_hours": None,
            "expiry": datetime.fromtimestamp(exp / 1000, UTC) if exp and kind == "future" else None,
            "status": STATE.get(s.get("state", ""), str(s.get("state", "")).lower()), "as_of": ctx.fetched_at,
        })
    kind_here = KINDS.get(params.get("instType", ""))
    if kind_here is not None and not params.get("instId") and not params.get("instFamily") and not params.get("uly"):
        for (venue, inst), known in ctx.instruments.items():   # gone from a complete listing -> delisted
            if venue == VENUE and inst not in listed and known.get("kind") == kind_here \
                    and known.get("status") != "delisted":
                rows.append({**{k: known.get(k) for k in INSTRUMENT_SCHEMA}, "status": "delisted",
                             "as_of": ctx.fetched_at})
    return {"instruments": pl.DataFrame(rows, schema=INSTRUMENT_SCHEMA)}


def parse_funding_now(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    """Funding interval per swap from the current snapshot: nextFundingTime - fundingTime."""
    rows = _rows(data, FUNDING_NOW, params)
    if not rows:
        return {"instruments": pl.DataFrame()}
    df = pl.DataFrame(rows, infer_schema_length=None)
    missing = [c for c in ("instId", "fundingTime", "nextFundingTime") if c not in df.columns]
    if missing:
        raise ValueError(f"okx {FUNDING_NOW}: missing field(s) {missing}")
    hours = ((_opt_num(df, "nextFundingTime") - _opt_num(df, "fundingTime")) / 3_600_000.0).round(2)
    return {"instruments": df.select(
        pl.lit(VENUE).alias("venue"), pl.col("instId").alias("instrument"),
        pl.when(hours.is_in([1.0, 2.0, 4.0, 6.0, 8.0])).then(hours).otherwise(None).alias("funding_interval_hours"))}


def _array_rows(endpoint: str, cols: list[str], min_width: int, check=None):
    """rows_of for OKX array endpoints: each row an array of >= min_width fields; short rows (older
    API versions) pad with nulls. Meta: the page's width (fields beyond it are absent, not empty)."""
    def rows_of(data, params: dict):
        rows = _rows(data, endpoint, params)
        if not rows:
            return [], None
        inst = params.get("instId", "")
        if check is not None:
            check(params, inst)
        widths = {len(r) if isinstance(r, list) else -1 for r in rows}
        if min(widths) < min_width:
            raise ValueError(f"okx {endpoint} [{inst}]: rows must be arrays of >= {min_width} fields, "
                             f"got {str(rows[0])[:80]}")
        width = min(len(cols), max(widths))
        if widths != {len(cols)}:
            rows = [r[:width] + [None] * (len(cols) - len(r[:width])) for r in rows]
        return rows, width
    return rows_of


def _opt(col: str) -> pl.Expr:
    e = pl.col(col).str.strip_chars()
    return pl.when(e == "").then(None).otherwise(e).cast(pl.Float64)


def _sorted(df: pl.DataFrame, col: str) -> pl.DataFrame:
    """OKX lists newest first: each page's rows in time order (pages keep theirs)."""
    return df.sort(batch.PAGE, col, maintain_order=True)


def _units_disagree(reported: str, computed: str) -> pl.Expr:
    return (pl.col(reported).is_not_null() & pl.col(computed).is_not_null()
            & ((pl.col(reported) - pl.col(computed)).abs() > UNIT_TOLERANCE * pl.col(computed).abs() + 1e-9))


OI_COLS = ["ts", "oi", "oiCcy", "oiUsd"]


def batch_oi_history(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    """rubik open-interest-history: [ts, oi (contracts), oiCcy (base), oiUsd]; the reported units are
    checked against contracts x ctVal (a page where they disagree is rejected: wrong ctVal or unit)."""
    dec = batch.decode(pages, _array_rows(OI_HISTORY, OI_COLS, 2))
    df = batch.frame(dec, {c: pl.Utf8 for c in OI_COLS}, orient="row")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    insts = [pages[i].params.get("instId", "") for i in dec.pages]
    info = [ctx.instrument(VENUE, s) for s in insts]
    df = batch.attach(df, batch.per_page(
        dec, _inst=insts, _asset=[_asset(ctx, s) for s in insts],
        _inv=[m.get("margin") == "inverse" or (not m and s.split("-")[1:2] == ["USD"]) for m, s in zip(info, insts, strict=True)],
        _base_size=pl.Series([m.get("contract_size") if m.get("contract_size") and m.get("contract_unit") == "base"
                              else None for m in info], dtype=pl.Float64),
        _usd_size=pl.Series([m.get("contract_size") if m.get("contract_size") and m.get("contract_unit") == "usd"
                             else None for m in info], dtype=pl.Float64)))
    oi = num("oi")
    df = df.with_columns(ts_ms("ts").alias("ts"), oi.alias("oi_contracts"), _opt("oiCcy").alias("rep_base"),
                         _opt("oiUsd").alias("rep_usd"), (oi * pl.col("_base_size")).alias("ct_base"),
                         (oi * pl.col("_usd_size")).alias("ct_usd"))
    for reported, computed, name in (("rep_base", "ct_base", "oiCcy"), ("rep_usd", "ct_usd", "oiUsd")):
        df = batch.reject(df, res.errors, _units_disagree(reported, computed), lambda r, rep=reported, com=computed, f=name: (
            f"okx {OI_HISTORY} [{r['_inst']}]: row(s) where {f}={r[rep]} disagrees with contracts x contract "
            f"size = {r[com]} (ts {r['ts']}): wrong ctVal or unit"))
    out = df.select(
        pl.lit(VENUE).alias("venue"), pl.col("_inst").alias("instrument"), "ts", pl.col("_asset").alias("asset"),
        pl.when(pl.col("_inv")).then(pl.lit("inverse")).otherwise(pl.lit("linear")).alias("margin"), "oi_contracts",
        pl.coalesce("rep_base", "ct_base").alias("oi_base"), pl.coalesce("rep_usd", "ct_usd").alias("oi_usd"),
        batch.PAGE)
    res.add("open_interest", _sorted(out, "ts"))
    return res


FUNDING_SHAPE = {"instId": pl.Utf8, "fundingRate": pl.Utf8, "realizedRate": pl.Utf8, "fundingTime": pl.Utf8}


def batch_funding_history(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    """funding-rate-history: realizedRate (what was paid) over fundingRate; interval from spacing."""
    dec = batch.decode(pages, lambda data, params: (_rows(data, FUNDING_HISTORY, params) or [], None))
    df = batch.frame(dec, FUNDING_SHAPE)
    df = batch.require(df, dec.errors, ["instId", "fundingRate", "fundingTime"], f"okx {FUNDING_HISTORY}")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    first = batch.first_per_page(df, "instId")
    insts = first["instId"].to_list()
    df = batch.attach(df, first.select(batch.PAGE).with_columns(
        pl.Series("_asset", [_asset(ctx, s) for s in insts]),
        pl.Series("_known", [float(ctx.instrument(VENUE, s).get("funding_interval_hours") or 8.0) for s in insts])))
    df = df.with_columns(ts_ms("fundingTime").dt.truncate("1h").alias("funding_time"),
                         pl.coalesce(_opt("realizedRate"), num("fundingRate")).alias("funding_rate"))
    df = df.with_columns(interval_from_spacing(df, "funding_time", [batch.PAGE, "instId"], pl.col("_known"))
                         .alias("interval_hours"))
    out = df.select(
        pl.lit(VENUE).alias("venue"), pl.col("instId").alias("instrument"), "funding_time",
        pl.col("_asset").alias("asset"), "funding_rate", "interval_hours",
        *funding_derived(pl.col("funding_rate"), pl.col("interval_hours")),
        pl.lit(None, pl.Float64).alias("mark_price"), batch.PAGE)
    res.add("funding_rates", _sorted(out, "funding_time"))
    return res


def _batch_ratio(population: str, endpoint: str):
    """rubik long/short ratios: [ts, ratio] (long/short); shares are ratio/(1+ratio) and 1/(1+ratio)."""
    def parse(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
        dec = batch.decode(pages, _array_rows(endpoint, ["ts", "ratio"], 2))
        df = batch.frame(dec, {"ts": pl.Utf8, "ratio": pl.Utf8}, orient="row")
        res = batch.BatchResult(errors=dec.errors)
        if df.height == 0:
            return res
        insts = [pages[i].params.get("instId", "") for i in dec.pages]
        df = batch.attach(df, batch.per_page(dec, _inst=insts, _asset=[_asset(ctx, s) for s in insts]))
        ratio = num("ratio")
        out = df.select(
            pl.lit(VENUE).alias("venue"), pl.col("_inst").alias("instrument"), ts_ms("ts").alias("ts"),
            pl.lit(population).alias("population"), pl.col("_asset").alias("asset"),
            (ratio / (1.0 + ratio)).alias("long_share"), (1.0 / (1.0 + ratio)).alias("short_share"),
            ratio.alias("ratio"), batch.PAGE)
        res.add("long_short_ratio", _sorted(out, "ts"))
        return res
    return parse


CANDLE_COLS = ["ts", "open", "high", "low", "close", "vol", "volCcy", "volCcyQuote", "confirm"]
MARK_COLS = ["ts", "open", "high", "low", "close", "confirm"]


def _batch_candles(kind: str, endpoint: str):
    traded = kind in ("perp", "future")
    cols = CANDLE_COLS if traded else MARK_COLS

    def check(params: dict, inst: str) -> None:
        if params.get("bar", "1m") not in BARS:     # 1m default or 1D (cut at UTC+8): never stored
            raise ValueError(f"okx {endpoint} [{inst}]: unsupported bar {params.get('bar')!r} (use 1H or 1Dutc)")

    def parse(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
        dec = batch.decode(pages, _array_rows(endpoint, cols, 5, check))
        df = batch.frame(dec, {c: pl.Utf8 for c in cols}, orient="row")
        res = batch.BatchResult(errors=dec.errors)
        if df.height == 0:
            return res
        ids = [pages[i].params.get("instId", "") for i in dec.pages]
        insts = [f"{s}-SWAP" if kind == "index" else s for s in ids]
        info = [ctx.instrument(VENUE, s) for s in insts]
        spans = [BARS[pages[i].params.get("bar", "1m")] for i in dec.pages]
        df = batch.attach(df, batch.per_page(
            dec, _inst=insts, _asset=[_asset(ctx, s) for s in insts],
            _kind=["future" if kind == "perp" and m.get("kind") == "future" else kind for m in info],
            _label=[sp[0] for sp in spans], _span=pl.Series([sp[1] for sp in spans], dtype=pl.Duration("ms")),
            _ccy=[traded and w >= 7 for w in dec.meta],
            _usd_size=pl.Series([m.get("contract_size") if m.get("contract_unit") == "usd" and m.get("contract_size")
                                 else None for m in info], dtype=pl.Float64),
            _expiry=pl.Series([m.get("expiry") for m in info], dtype=UTC_MS),
            _fetched=pl.Series([pages[i].fetched_at for i in dec.pages]).cast(UTC_MS)))
        if traded:
            # inverse: contracts x USD per contract when volCcyQuote is absent
            quote = pl.coalesce(_opt("volCcyQuote"), num("vol") * pl.col("_usd_size"))
            ccy = pl.col("_ccy")
            vols = [pl.when(ccy).then(num("volCcy")).otherwise(None).alias("volume_base"),
                    pl.when(ccy).then(pl.coalesce(quote, num("volCcy") * num("close"))).otherwise(None).alias("volume_usd")]
        else:
            vols = [pl.lit(None, pl.Float64).alias("volume_base"), pl.lit(None, pl.Float64).alias("volume_usd")]
        out = df.select(
            pl.lit(VENUE).alias("venue"), pl.col("_inst").alias("instrument"), pl.col("_kind").alias("kind"),
            pl.col("_label").alias("interval"), ts_ms("ts").alias("ts"), pl.col("_asset").alias("asset"),
            num("open").alias("open"), num("high").alias("high"), num("low").alias("low"),
            num("close").alias("close"), *vols, pl.col("_expiry").alias("expiry"), batch.PAGE,
            pl.col("confirm").alias("_confirm"), "_span", "_fetched")
        # "0" = still forming; without the field, keep only bars closed when fetched
        out = out.filter(pl.when(pl.col("_confirm").is_not_null()).then(pl.col("_confirm") != "0")
                         .otherwise(pl.col("ts") + pl.col("_span") <= pl.col("_fetched"))
                         ).drop("_confirm", "_span", "_fetched")
        res.add("prices", _sorted(out, "ts"))
        return res
    return parse


parse_oi_history = batch.single(batch_oi_history)
parse_funding_history = batch.single(batch_funding_history)


PARSERS = {
    INSTRUMENTS: Parser(parse_instruments),
    FUNDING_NOW: Parser(parse_funding_now),
    FUNDING_HISTORY: Parser(batch=batch_funding_history),
    OI_HISTORY: Parser(batch=batch_oi_history),
    **{ep: Parser(batch=_batch_ratio(pop, ep)) for pop, ep in RATIO_ENDPOINTS.items()},
    **{ep: Parser(batch=_batch_candles(kind, ep)) for kind, pair in CANDLES.items() if kind != "future" for ep, _ in pair},
}

