"""GOLD (and optionally other benchmarks) daily closes: Stooq CSV, or Binance spot PAXGUSDT without a key.

Why two routes: the LBMA gold fixes left FRED in January 2022, and Stooq, the usual free CSV source,
requires an API key since 2026: without one it answers **HTTP 200** with a short text body starting
"Get your apikey", and since late July 2026 non-browser clients get an HTML proof-of-work page, also
HTTP 200 (docs/venues.md §7). Both are detected and raise a clear error (never parsed as
data). So:
- **Stooq** `GET /q/d/l/?s=xauusd&i=d&d1=YYYYMMDD&d2=YYYYMMDD` when $STOOQ_API_KEY is set (sent as the
  `apikey` query parameter through the HTTP session, so it is never landed in raw.payloads) or when
  $PERPWATCH_URL_STOOQ points at a mirror/the simulator. CSV `Date,Open,High,Low,Close,Volume`
  (stooq.com) or the Polish headers `Data,Otwarcie,Najwyzszy,Najnizszy,Zamkniecie,Wolumen` (stooq.pl).
  GOLD = spot XAU/USD close; $PERPWATCH_STOOQ_SERIES adds more (e.g. `DXY=dx.f` for ICE DXY futures).
- otherwise **Binance spot PAXGUSDT daily klines** (`GET /api/v3/klines?symbol=PAXGUSDT&interval=1d`,
  keyless): PAX Gold is a token redeemable for one fine troy ounce of LBMA gold, so its USDT price tracks
  spot gold within a small premium. It trades 24/7: its day closes at 00:00 UTC, the same instant as
  the crypto reference close, and weekends have rows. Only closed daily candles are stored.
`source` is `stooq:<symbol>` or `binance:PAXGUSDT`, so returns never mix the two routes.

Example (spx_d.pl_headers_excerpt.csv): `2000-01-03,1469.25,1478,1438.36,1455.22,517666667` -> close 1455.22.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta

import polars as pl

from perpwatch.core import settings
from perpwatch.sources.base import ParseContext, Parser, Stream
from perpwatch.sources.http import BadPayload, Budget, Fetched, VenueClient
from perpwatch.sources.normalize import UTC_MS, ts_ms

SOURCE = "stooq"
VENUE = "stooq"
ENDPOINT = "/q/d/l/"
KLINES = "/api/v3/klines"
KEY_ENV = "STOOQ_API_KEY"
PAXG = "PAXGUSDT"
CODES = {"xauusd": "GOLD", "^spx": "SPX", "^ndx": "NDX", "^ndq": "NASDAQCOMP", "dx.f": "DXY", "^dji": "DJI",
         "xagusd": "SILVER", "^vix": "VIX"}
HEADERS = {   # Stooq column -> our column (English and Polish downloads)
    "date": "date", "data": "date", "close": "close", "zamkniecie": "close", "zamknięcie": "close",
}
UNSUPPORTED = {
    "instruments": "a data provider, not a venue",
    "keyless Stooq": "Stooq needs an API key since 2026 (HTTP 200 'Get your apikey'); GOLD then comes from PAXGUSDT",
}
INSTRUMENT_ENDPOINTS: tuple[str, ...] = ()
DATASETS = ("macro_closes",)
SCHEMA = {"date": pl.Date, "series": pl.Utf8, "close": pl.Float64, "source": pl.Utf8, "_row": pl.Int64}


class StooqKeyRequired(ValueError):
    """Stooq answered 200 with its 'Get your apikey' text or an HTML challenge instead of CSV."""


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    cl = VenueClient(SOURCE, bases={"": "STOOQ", "/api/": "BINANCE_SPOT"}, lander=lander,
                     budgets={"calls": Budget("stooq calls/min", max(1.0, 10 * limits_scale), 60.0),
                              "spot_weight": Budget("binance spot weight/min", 6000 * 0.5 * limits_scale, 60.0)})
    key = settings.secret("stooq_api_key")
    if key:
        # Session-level query parameter: sent with the request, absent from the landed params.
        cl.session.params = {"apikey": key}
    return cl


def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    return []


def stooq_enabled() -> bool:
    return bool(settings.secret("stooq_api_key") or settings.url_configured("STOOQ"))


def symbols() -> dict[str, str]:
    """series code -> Stooq symbol; GOLD always, more from $PERPWATCH_STOOQ_SERIES (CODE=symbol,...)."""
    out = {"GOLD": "xauusd"}
    return {**out, **settings.get().stooq_series}


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    if stooq_enabled():
        return [Stream(SOURCE, "macro_closes", "macro_closes", sym, step=timedelta(days=1))
                for sym in symbols().values()]
    return [Stream(SOURCE, "macro_closes", "macro_closes/paxg", PAXG, step=timedelta(days=1))]


def check_body(body: bytes, what: str = "stooq") -> None:
    """Raise StooqKeyRequired for the HTTP-200 error bodies Stooq sends instead of CSV."""
    head = body[:512].lstrip(b"\xef\xbb\xbf \r\n\t")
    low = head.lower()
    if low.startswith(b"get your apikey") or b"apikey" in low[:64]:
        raise StooqKeyRequired(f"{what}: Stooq answered HTTP 200 with {head[:40]!r}: it requires an API key since "
                               f"2026. Set {KEY_ENV}, or unset PERPWATCH_URL_STOOQ and {KEY_ENV} to take GOLD from "
                               f"Binance spot {PAXG} (keyless)")
    if low.startswith(b"<") or b"<html" in low:
        raise StooqKeyRequired(f"{what}: Stooq answered HTTP 200 with an HTML page (the proof-of-work challenge "
                               f"served to non-browser clients since July 2026), not CSV. Set {KEY_ENV} or use the "
                               f"{PAXG} route")


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    if start >= end:
        return
    if stream.instrument == PAXG:
        cursor = int((start - timedelta(days=2)).timestamp() * 1000)
        stop = int(end.timestamp() * 1000)
        while cursor <= stop:
            page = cl.get(KLINES, {"symbol": PAXG, "interval": "1d", "startTime": cursor, "endTime": stop,
                                   "limit": 1000}, costs={"spot_weight": 2}, stream=stream.name, instrument=PAXG)
            yield page
            rows = page.json()
            if len(rows) < 1000:
                return
            cursor = int(rows[-1][0]) + 1
        return
    params = {"s": stream.instrument, "i": "d", "d1": (start - timedelta(days=7)).strftime("%Y%m%d"),
              "d2": end.strftime("%Y%m%d")}
    page = cl.get(ENDPOINT, params, costs={"calls": 1}, stream=stream.name, instrument=stream.instrument)
    try:
        check_body(page.body, f"stooq {ENDPOINT} [{stream.instrument}]")
    except ValueError as exc:
        raise BadPayload(SOURCE, ENDPOINT, params, f"{exc} (landed as raw_id {page.raw_id})") from exc
    if is_no_data(page.body) and end - start > timedelta(days=14):
        raise BadPayload(SOURCE, ENDPOINT, params, f"'No data' over {(end - start).days} days: unknown symbol "
                         f"{stream.instrument!r}? (raw_id {page.raw_id})")
    yield page


# --------------------------------------------------------------------------- parsing

def is_no_data(body: bytes) -> bool:
    """Stooq's answer for an unknown symbol or an empty range (HTTP 200, plain text)."""
    low = body[:64].strip().lower()
    return low.startswith(b"no data") or low.startswith(b"brak danych")


def csv_frame(body: bytes, series: str, source: str) -> tuple[pl.DataFrame, list[dict]]:
    """Stooq daily CSV -> (rows [date, series, close, source, _row], problems). 'No data' -> no rows."""
    body = body if isinstance(body, bytes | bytearray) else body.encode()
    check_body(body)
    if is_no_data(body):
        return pl.DataFrame(schema=SCHEMA), [{"row": None, "level": "skip", "reason": "Stooq: No data"}]
    text = body.decode("utf-8-sig", "replace") if isinstance(body, bytes | bytearray) else body
    raw = pl.read_csv(io.StringIO(text.lstrip()), infer_schema=False, truncate_ragged_lines=True)
    names = {HEADERS.get(c.strip().lower()): c for c in raw.columns if HEADERS.get(c.strip().lower())}
    if "date" not in names or "close" not in names:
        raise ValueError(f"stooq: expected Date/Close (or Data/Zamkniecie) columns, got {raw.columns}")
    raw = raw.with_row_index("_row", offset=1)
    day = pl.col(names["date"]).str.strip_chars().str.strptime(pl.Date, "%Y-%m-%d", strict=False)
    v = pl.col(names["close"]).str.strip_chars()
    val = v.cast(pl.Float64, strict=False)
    problems = [{"row": r, "level": "bad", "reason": f"unparseable date: {d!r}"}
                for r, d in raw.filter(day.is_null() & pl.col(names["date"]).is_not_null())
                .select("_row", names["date"]).iter_rows()]
    problems += [{"row": r, "level": "bad", "reason": f"unparseable number: {c!r} in Close"}
                 for r, c in raw.filter(day.is_not_null() & val.is_null() & v.is_not_null() & (v != ""))
                 .select("_row", names["close"]).iter_rows()]
    out = raw.filter(day.is_not_null() & val.is_not_null()).select(
        day.alias("date"), pl.lit(series).alias("series"), val.alias("close"), pl.lit(source).alias("source"),
        pl.col("_row").cast(pl.Int64))
    return out, problems


def parse_csv(data: bytes, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    sym = str(params.get("s", "")).lower()
    df, _ = csv_frame(data, CODES.get(sym, sym.upper().lstrip("^")), f"stooq:{sym}")
    return {"macro_closes": df.drop("_row")}


def parse_paxg_klines(data: list, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    """Binance spot 1d klines of PAXGUSDT -> GOLD closes (closed candles only, date = candle open day)."""
    if not isinstance(data, list):
        raise ValueError(f"klines: expected a list of arrays, got {str(data)[:120]}")
    sym = str(params.get("symbol", PAXG)).upper()
    if not data:
        return {"macro_closes": pl.DataFrame()}
    df = pl.DataFrame({"open_time": [r[0] for r in data], "close": [str(r[4]) for r in data],
                       "close_time": [r[6] for r in data]})
    out = df.with_columns(ts_ms("open_time").alias("t"), ts_ms("close_time").alias("ct")).filter(
        pl.col("ct") < pl.lit(ctx.fetched_at).cast(UTC_MS))
    return {"macro_closes": out.select(
        pl.col("t").dt.date().alias("date"), pl.lit("GOLD").alias("series"),
        pl.col("close").cast(pl.Float64).alias("close"), pl.lit(f"binance:{sym}").alias("source"))}


PARSERS = {ENDPOINT: Parser(parse_csv, raw_body=True), KLINES: Parser(parse_paxg_klines)}
