"""Deribit inverse futures: BTC-PERPETUAL / ETH-PERPETUAL and dated BTC-27DEC26-style futures.

`GET /api/v2/public/<method>?...`, JSON-RPC 2.0 envelope `{"jsonrpc","id","result"}`; errors come as
`{"error":{"code","message","data"}}` (HTTP 400) and are raised naming method, instrument, code and
message.  Numbers are JSON numbers (not strings).  Facts: docs/venues.md §5, §9.

Units and decisions:
- Instruments from `get_instruments?currency=BTC|ETH&kind=future`: `instrument_type` "reversed" =
  inverse; inverse contracts are USD (contract_unit usd, `contract_size` 10 USD for BTC, 1 for ETH,
  read from the payload).  Perpetuals -> kind perp, funding interval 1h; dated futures -> kind future
  with `expiration_timestamp` (08:00 UTC; parsed from the name when absent).  Only the inverse
  currencies BTC/ETH are listed (USDC-settled linear perps such as SOL_USDC-PERPETUAL are not
  extracted).
- Open interest: no history endpoint.  `get_book_summary_by_currency?currency=BTC&kind=future` is a
  snapshot of every perp *and* dated future; one row per instrument at ts = the summary's
  `creation_timestamp` floored to the hour (fetch time when absent).  For inverse instruments
  `open_interest` is **USD**: oi_usd = open_interest, oi_base = oi_usd / the instrument's own
  `mark_price` (what its USD contracts are worth in coin; not the index / estimated delivery
  price), oi_contracts = oi_usd / contract_size.  (Linear USDC instruments report base coin.)
- Funding: `get_funding_rate_history` (both timestamps required; hourly rows, at most 744 per
  call) -> funding_rate = `interest_1h` (what was paid over that hour), interval 1h, so
  rate_8h = 8 x interest_1h.  `interest_8h` is NOT the same number: in the documented payload
  interest_8h = -9.234e-05 while 8 x interest_1h = -3.79e-06; it is the rate over the trailing eight
  hours / the 8h-scaled premium rate before Deribit's damper, not the per-interval rate paid, so it is
  not stored (storing it as rate_8h would break rate_8h = funding_rate x 8 / interval_hours).
  Deribit accrues funding continuously; `timestamp` is the end of the hour the rate applied to.
- Prices: `get_tradingview_chart_data` (columnar ticks/open/high/low/close/volume/cost,
  resolution 60) for the perp (kind perp) and each dated future (kind future, with expiry, for the
  basis in marts.daily_signals).  volume = base coin, cost = USD.  The still-forming bar is dropped.
  There is no hourly *index* history here (`get_index_price` is a snapshot), so Deribit emits no
  kind='index' rows and its futures' basis cannot be computed on Deribit's own index.
Budget: non-matching-engine public requests ~20/s sustained (bursts of 100); get_instruments 1/s.

Example payload (GET /api/v2/public/get_funding_rate_history?instrument_name=BTC-PERPETUAL&...):
    {"jsonrpc":"2.0","result":[{"timestamp":1569891600000,"index_price":8222.87,
      "interest_8h":-9.234260068476106e-05,"interest_1h":-4.739622041017375e-07}]}
    -> funding_time 2019-10-01 01:00, funding_rate -4.7396e-07, rate_8h -3.7917e-06
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl

from perpwatch.core import settings
from perpwatch.core.assets import canonical
from perpwatch.sources import batch
from perpwatch.sources.base import ParseContext, Parser, Stream, tradable
from perpwatch.sources.http import BadRequest, Budget, Fetched, VenueClient
from perpwatch.sources.normalize import UTC_MS, funding_derived

SOURCE = "deribit"
VENUE = "deribit"
H = timedelta(hours=1)
API = "/api/v2/public/"
INSTRUMENTS = API + "get_instruments"
BOOK_SUMMARY = API + "get_book_summary_by_currency"
FUNDING = API + "get_funding_rate_history"
CHART = API + "get_tradingview_chart_data"
INVERSE_CURRENCIES = ("BTC", "ETH")
FUNDING_LIMIT = 744          # rows (hours) per get_funding_rate_history call
CHART_WINDOW = 1000          # hourly bars per chart request (the venue caps a reply at 5000 points)
PERPETUAL_EXPIRY_MS = 32503708800000   # Deribit's "expiration" of perpetuals (year 3000)

UNSUPPORTED = {
    "long_short_ratio": "Deribit publishes no long/short account or position ratios",
    "liquidations": "no public liquidation history endpoint",
}


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    s = limits_scale
    return VenueClient(
        SOURCE,
        bases={"": "DERIBIT"},
        lander=lander,
        budgets={
            "req": Budget("deribit public req/s", 20 * 0.9 * s, 1.0),
            "instruments": Budget("deribit get_instruments req/s", 1 * s, 1.0),
        },
    )


# --------------------------------------------------------------------------- extraction

def _get(cl: VenueClient, endpoint: str, params: dict, costs: dict | None = None, **kw) -> Fetched:
    """GET that turns Deribit's JSON-RPC error envelope into a clear error (method, instrument, code, message)."""
    page = cl.get(endpoint, params, costs=costs or {"req": 1}, ok_statuses=(200, 400), **kw)
    try:
        data = page.json()
    except Exception:
        if page.status == 200:
            raise
        data = None
    if page.status != 200 or (isinstance(data, dict) and "error" in data):
        raise BadRequest(SOURCE, endpoint, params, _error_text(endpoint, params, data, page.status), page.status)
    return page


def _error_text(endpoint: str, params: dict, data, status: int | None = None) -> str:
    err = data.get("error") if isinstance(data, dict) else None
    method = endpoint.removeprefix("/api/v2/")
    inst = params.get("instrument_name") or params.get("currency") or "-"
    if not isinstance(err, dict):
        return f"{method} [{inst}]: HTTP {status}, no JSON-RPC error object: {str(data)[:160]}"
    detail = f" ({err['data']})" if err.get("data") else ""
    return f"{method} [{inst}]: error {err.get('code')}: {err.get('message')}{detail}"


def _currencies() -> list[str]:
    wanted = set(settings.assets())
    return [c for c in INVERSE_CURRENCIES if c in wanted]


def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    return [_get(cl, INSTRUMENTS, {"currency": c, "kind": "future"}, costs={"req": 1, "instruments": 1})
            for c in _currencies()]


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    """Funding + perp prices per perpetual, prices per dated future, one OI snapshot per currency."""
    out: list[Stream] = []
    currencies = set()
    for r in tradable(instruments, VENUE, assets, margin="inverse"):
        name = r["instrument"]
        currencies.add(name.split("-", 1)[0])
        if r["kind"] == "future":
            out.append(Stream(SOURCE, "prices", "prices/future", name))
            continue
        out.append(Stream(SOURCE, "funding_rates", "funding_rates", name))
        out.append(Stream(SOURCE, "prices", "prices/perp", name))
    for c in sorted(currencies):
        out.append(Stream(SOURCE, "open_interest", "open_interest", c))
    return out


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    name = stream.instrument
    if stream.dataset == "open_interest":
        # A snapshot of now for every future of the currency: the window does not apply.
        yield _get(cl, BOOK_SUMMARY, {"currency": name, "kind": "future"}, stream=stream.name, instrument=name)
        return
    if start >= end:
        return
    if stream.dataset == "funding_rates":
        cursor = start
        while cursor <= end:
            upto = min(cursor + (FUNDING_LIMIT - 1) * H, end)
            page = _get(cl, FUNDING, {"instrument_name": name, "start_timestamp": _ms(cursor),
                                      "end_timestamp": _ms(upto)}, stream=stream.name, instrument=name)
            yield page
            rows = page.json().get("result") or []
            last = rows[-1].get("timestamp") if rows and isinstance(rows[-1], dict) else None
            if isinstance(last, int) and last + 3_600_000 < _ms(upto):
                # the reply stopped short of the window (a smaller server cap): continue after it
                cursor = datetime.fromtimestamp(last / 1000, UTC) + H
            else:
                cursor = upto + H
        return
    if stream.dataset == "prices":
        cursor = start
        while cursor < end:
            upto = min(cursor + (CHART_WINDOW - 1) * H, end)
            yield _get(cl, CHART, {"instrument_name": name, "start_timestamp": _ms(cursor),
                                   "end_timestamp": _ms(upto), "resolution": "60"},
                       stream=stream.name, instrument=name)
            cursor = upto + H
        return
    raise ValueError(f"deribit: no fetcher for dataset {stream.dataset!r}")


INSTRUMENT_ENDPOINTS = (INSTRUMENTS,)
DATASETS = ("instruments", "funding_rates", "open_interest", "prices")


# --------------------------------------------------------------------------- parsing

INSTRUMENT_SCHEMA = {"venue": pl.Utf8, "instrument": pl.Utf8, "asset": pl.Utf8, "quote": pl.Utf8,
                     "settle": pl.Utf8, "margin": pl.Utf8, "kind": pl.Utf8, "contract_size": pl.Float64,
                     "contract_unit": pl.Utf8, "multiplier": pl.Float64, "funding_interval_hours": pl.Float64,
                     "expiry": UTC_MS, "status": pl.Utf8, "as_of": UTC_MS}
MONTHS = {m: i + 1 for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                          "NOV", "DEC"))}
DATED = re.compile(r"^[A-Z0-9_]+-(\d{1,2})([A-Z]{3})(\d{2})$")


def expiry_from_name(name: str) -> datetime | None:
    """'BTC-27DEC26' -> 2026-12-27 08:00 UTC (Deribit futures expire at 08:00 UTC); perpetuals -> None."""
    m = DATED.match(name)
    if not m or m.group(2) not in MONTHS:
        return None
    return datetime(2000 + int(m.group(3)), MONTHS[m.group(2)], int(m.group(1)), 8, tzinfo=UTC)


def _result(data, endpoint: str, params: dict):
    if not isinstance(data, dict):
        raise ValueError(f"{endpoint}: expected a JSON-RPC object, got {str(data)[:120]}")
    if "error" in data:
        raise ValueError(_error_text(endpoint, params, data))
    if "result" not in data:
        raise ValueError(f"{endpoint}: JSON-RPC envelope without 'result': {str(data)[:120]}")
    return data["result"]


def _is_inverse(name: str, info: dict) -> bool:
    if info.get("margin"):
        return info["margin"] == "inverse"
    return "_" not in name.split("-", 1)[0]          # BTC_USDC-PERPETUAL is linear


def parse_instruments(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    result = _result(data, "get_instruments", params)
    rows = []
    for i in result:     # a handful of instruments per currency: metadata, not a hot path
        if i.get("kind") != "future":
            continue
        name = i["instrument_name"]
        asset, mult = canonical(VENUE, name)
        perp = i.get("settlement_period") == "perpetual" or name.endswith("-PERPETUAL")
        inverse = (i.get("instrument_type") or i.get("future_type") or "reversed") == "reversed"
        exp_ms = i.get("expiration_timestamp")
        expiry = None if perp else (datetime.fromtimestamp(exp_ms / 1000, UTC)
                                    if exp_ms and exp_ms < PERPETUAL_EXPIRY_MS else expiry_from_name(name))
        if i.get("contract_size") is None:
            raise ValueError(f"get_instruments [{name}]: no contract_size")
        rows.append({
            "venue": VENUE, "instrument": name, "asset": asset, "quote": i.get("quote_currency", "USD"),
            "settle": i.get("settlement_currency"), "margin": "inverse" if inverse else "linear",
            "kind": "perp" if perp else "future", "contract_size": float(i["contract_size"]),
            "contract_unit": "usd" if inverse else "base", "multiplier": mult,
            "funding_interval_hours": 1.0 if perp else None, "expiry": expiry,
            "status": "trading" if i.get("is_active", True) else "delisted", "as_of": ctx.fetched_at,
        })
    return {"instruments": pl.DataFrame(rows, schema=INSTRUMENT_SCHEMA)}


def parse_book_summary(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    result = _result(data, "get_book_summary_by_currency", params)
    if not result:
        return {"open_interest": pl.DataFrame()}
    rows = []
    fallback = ctx.fetched_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    for r in result:     # one row per listed future of the currency: a snapshot, tens of rows
        name = r["instrument_name"]
        if r.get("open_interest") is None:
            continue
        info = ctx.instrument(VENUE, name)
        created = r.get("creation_timestamp")
        ts = (datetime.fromtimestamp(created / 1000, UTC).replace(minute=0, second=0, microsecond=0)
              if created else fallback)
        rows.append({"instrument": name, "ts": ts, "asset": canonical(VENUE, name)[0],
                     "inverse": _is_inverse(name, info), "size": info.get("contract_size"),
                     "oi": float(r["open_interest"]), "mark": r.get("mark_price")})
    df = pl.DataFrame(rows, schema={"instrument": pl.Utf8, "ts": UTC_MS, "asset": pl.Utf8, "inverse": pl.Boolean,
                                    "size": pl.Float64, "oi": pl.Float64, "mark": pl.Float64})
    inv = pl.col("inverse")
    out = df.select(
        pl.lit(VENUE).alias("venue"), "instrument", "ts", "asset",
        pl.when(inv).then(pl.lit("inverse")).otherwise(pl.lit("linear")).alias("margin"),
        (pl.col("oi") / pl.col("size")).alias("oi_contracts"),
        pl.when(inv).then(pl.col("oi") / pl.col("mark")).otherwise(pl.col("oi")).alias("oi_base"),
        pl.when(inv).then(pl.col("oi")).otherwise(pl.col("oi") * pl.col("mark")).alias("oi_usd"))
    return {"open_interest": out}


def _funding_rows(data, params: dict):
    result = _result(data, "get_funding_rate_history", params)
    if not params.get("instrument_name"):
        raise ValueError("get_funding_rate_history: request has no instrument_name")
    if not isinstance(result, list):
        raise ValueError(f"get_funding_rate_history: result is {type(result).__name__}, expected a list")
    return result, None


def batch_funding_history(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    """get_funding_rate_history: interest_1h is the hourly rate (Deribit funds continuously, 1h grid)."""
    dec = batch.decode(pages, _funding_rows)
    df = batch.frame(dec, {"timestamp": pl.Int64, "interest_1h": pl.Float64})
    df = batch.require(df, dec.errors, ["timestamp", "interest_1h"], "get_funding_rate_history")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    names = [pages[i].params["instrument_name"] for i in dec.pages]
    df = batch.attach(df, batch.per_page(dec, _name=names, _asset=[canonical(VENUE, n)[0] for n in names]))
    res.add("funding_rates", df.select(
        pl.lit(VENUE).alias("venue"), pl.col("_name").alias("instrument"),
        pl.col("timestamp").cast(UTC_MS).dt.truncate("1h").alias("funding_time"),
        pl.col("_asset").alias("asset"),
        pl.col("interest_1h").alias("funding_rate"), pl.lit(1.0).alias("interval_hours"),
        *funding_derived(pl.col("interest_1h"), pl.lit(1.0)),
        pl.lit(None, pl.Float64).alias("mark_price"), batch.PAGE))
    return res


CHART_COLS = ("ticks", "open", "high", "low", "close", "volume", "cost")


def _chart_rows(data, params: dict):
    """get_tradingview_chart_data is columnar: {ticks: [...], open: [...], ...}; rows are zipped."""
    result = _result(data, "get_tradingview_chart_data", params)
    name = params.get("instrument_name")
    if not isinstance(result, dict):
        raise ValueError(f"get_tradingview_chart_data [{name}]: expected a columnar object, got {str(result)[:120]}")
    if result.get("status") == "no_data" or not result.get("ticks"):
        return [], None
    missing = [c for c in CHART_COLS if c not in result]
    if missing:
        raise ValueError(f"get_tradingview_chart_data [{name}]: missing column(s) {missing}")
    lengths = {c: len(result[c]) for c in CHART_COLS}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"get_tradingview_chart_data [{name}]: columns of different lengths {lengths}")
    if params.get("resolution", "60") != "60":
        raise ValueError(f"get_tradingview_chart_data [{name}]: resolution {params.get('resolution')} is not 1h")
    return list(zip(*(result[c] for c in CHART_COLS), strict=True)), None


def batch_chart(pages: list[batch.Page], ctx: ParseContext) -> batch.BatchResult:
    dec = batch.decode(pages, _chart_rows)
    df = batch.frame(dec, {"ticks": pl.Int64, **{c: pl.Float64 for c in CHART_COLS[1:]}}, orient="row")
    res = batch.BatchResult(errors=dec.errors)
    if df.height == 0:
        return res
    names = [pages[i].params.get("instrument_name") for i in dec.pages]
    kinds = ["perp" if n.endswith("-PERPETUAL") else "future" for n in names]
    expiry = [(ctx.instrument(VENUE, n).get("expiry") or expiry_from_name(n)) if k == "future" else None
              for n, k in zip(names, kinds, strict=True)]
    df = batch.attach(df, batch.per_page(
        dec, _name=names, _kind=kinds, _asset=[canonical(VENUE, n)[0] for n in names],
        _expiry=pl.Series(expiry, dtype=UTC_MS),
        _fetched=pl.Series([pages[i].fetched_at for i in dec.pages]).cast(UTC_MS)))
    out = df.select(
        pl.lit(VENUE).alias("venue"), pl.col("_name").alias("instrument"), pl.col("_kind").alias("kind"),
        pl.lit("1h").alias("interval"), pl.col("ticks").cast(UTC_MS).alias("ts"), pl.col("_asset").alias("asset"),
        "open", "high", "low", "close",
        pl.col("volume").alias("volume_base"),     # base coin
        pl.col("cost").alias("volume_usd"),        # quote currency (USD for inverse)
        pl.col("_expiry").alias("expiry"), batch.PAGE,
        (pl.col("ticks") + 3_600_000).cast(UTC_MS).alias("_close"), "_fetched")
    # Only closed bars: the bar still forming when fetched would change later.
    res.add("prices", out.filter(pl.col("_close") <= pl.col("_fetched")).drop("_close", "_fetched"))
    return res


parse_funding_history = batch.single(batch_funding_history)
parse_chart = batch.single(batch_chart)


PARSERS = {
    INSTRUMENTS: Parser(parse_instruments),
    BOOK_SUMMARY: Parser(parse_book_summary),
    FUNDING: Parser(batch=batch_funding_history),
    CHART: Parser(batch=batch_chart),
}
