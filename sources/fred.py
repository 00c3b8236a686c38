"""FRED (St. Louis Fed) graph CSV downloads: daily closes of US benchmarks, no key.

Endpoint: GET https://fred.stlouisfed.org/graph/fredgraph.csv?id=SP500[&cosd=YYYY-MM-DD&coed=YYYY-MM-DD]
(docs/venues.md §7):
- header `observation_date,<ID>` today, `DATE,<ID>` in older downloads: both accepted; several ids
  comma-separated give a wide CSV (one column per id): every column is read.
- missing days (US holidays) are an **empty field** now and `.` in old files: both are null and the
  row is skipped, never stored as 0.
- SP500 carries only ~10 years; DTWEXBGS is the Fed's broad trade-weighted dollar index
  (Jan 2006 = 100), not ICE's DXY; LBMA gold left FRED in January 2022 (gold comes from sources/stooq.py).
- a body that does not start with that header (an HTML error page, "series does not exist") raises.

Series codes in staging.macro_closes (fixed here so replay maps a landed payload the same way):
SP500 -> SPX, NASDAQCOM -> NDX (the Nasdaq Composite: FRED's free Nasdaq series; NASDAQ100 -> NDX
is the Nasdaq-100 proper, pick one with $PERPWATCH_FRED_SERIES), DTWEXBGS -> DXY (US-dollar
benchmark). Other ids keep their FRED id. `source` is `fred:<ID>` so returns are never computed
across two different underlying series (see transforms/marts/cross_market_correlation.py).

Example (fredgraph_SP500.csv):  observation_date,SP500 / 2025-11-26,6812.61 / 2025-11-27,
    -> (2025-11-26, SPX, 6812.61, fred:SP500); 2025-11-27 (Thanksgiving) has no row.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timedelta

import polars as pl

from perpwatch.core import settings
from perpwatch.sources.base import ParseContext, Parser, Stream
from perpwatch.sources.http import Budget, Fetched, VenueClient

SOURCE = "fred"
VENUE = "fred"
ENDPOINT = "/graph/fredgraph.csv"
CODES = {"SP500": "SPX", "NASDAQCOM": "NDX", "NASDAQ100": "NDX", "DTWEXBGS": "DXY", "DTWEXM": "DXY",
         "VIXCLS": "VIX", "DJIA": "DJI", "DGS10": "US10Y", "CBBTCUSD": "CBBTCUSD", "CBETHUSD": "CBETHUSD"}
DEFAULT_SERIES = tuple(settings.Settings.model_fields["fred_series"].default)   # PERPWATCH_FRED_SERIES
MISSING = ("", ".", "#N/A", "NA", "NaN", "nan")
OVERLAP = timedelta(days=10)      # re-read a little history: FRED fills a late close now and then
UNSUPPORTED = {
    "instruments": "a data provider, not a venue",
    "GOLD": "the LBMA gold fixes were removed from FRED in January 2022 (sources/stooq.py provides GOLD)",
    "ICE DXY": "FRED carries the Fed's broad dollar index DTWEXBGS, stored as DXY",
}
INSTRUMENT_ENDPOINTS: tuple[str, ...] = ()
DATASETS = ("macro_closes",)
SCHEMA = {"date": pl.Date, "series": pl.Utf8, "close": pl.Float64, "source": pl.Utf8, "_row": pl.Int64}


def series_ids() -> list[str]:
    return list(settings.get().fred_series)


def code_for(fred_id: str) -> str:
    return CODES.get(fred_id.upper(), fred_id.upper())


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    return VenueClient(SOURCE, bases={"": "FRED"}, lander=lander,
                       budgets={"calls": Budget("fred calls/min", max(1.0, 60 * limits_scale), 60.0)})


def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    return []


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    return [Stream(SOURCE, "macro_closes", "macro_closes", sid, step=timedelta(days=1)) for sid in series_ids()]


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    if start >= end:
        return
    params = {"id": stream.instrument, "cosd": (start - OVERLAP).date().isoformat(), "coed": end.date().isoformat()}
    yield cl.get(ENDPOINT, params, costs={"calls": 1}, stream=stream.name, instrument=stream.instrument)


# --------------------------------------------------------------------------- parsing

def is_fred_header(line: str) -> bool:
    cells = [c.strip().strip('"') for c in line.strip().split(",")]
    return len(cells) >= 2 and cells[0].lower() in ("observation_date", "date") and all(cells[1:])


def csv_frame(body: bytes, source_prefix: str = SOURCE, series: str | None = None) -> tuple[pl.DataFrame, list[dict]]:
    """fredgraph CSV bytes -> (rows [date, series, close, source, _row], problems).

    `_row` is the data row (1 = the line after the header). Missing markers are skipped silently
    (level "skip"); an unparseable date or value is a "bad" problem naming the row. `series`
    overrides the code (single-column files only)."""
    text = body.decode("utf-8-sig", "replace") if isinstance(body, bytes | bytearray) else body
    first = text.lstrip().split("\n", 1)[0]
    if not is_fred_header(first):
        raise ValueError(f"fred: not a fredgraph CSV (expected 'observation_date,<ID>' or 'DATE,<ID>'), "
                         f"first line {first[:120]!r}")
    raw = pl.read_csv(io.StringIO(text.lstrip()), infer_schema=False, truncate_ragged_lines=True)
    date_col, ids = raw.columns[0], raw.columns[1:]
    if series and len(ids) > 1:
        raise ValueError(f"fred: --series given but the file has {len(ids)} series {ids}")
    raw = raw.with_row_index("_row", offset=1)
    blank_line = pl.all_horizontal([pl.col(c).is_null() for c in raw.columns if c != "_row"])
    raw = raw.filter(~blank_line)
    day = pl.col(date_col).str.strip_chars().str.strptime(pl.Date, "%Y-%m-%d", strict=False)
    frames, problems = [], []
    for (row, d) in raw.filter(day.is_null()).select("_row", date_col).iter_rows():
        problems.append({"row": row, "level": "bad", "reason": f"unparseable date: {d!r}"})
    raw = raw.filter(day.is_not_null())
    for fid in ids:
        v = pl.col(fid).str.strip_chars()
        missing = v.is_null() | v.is_in(list(MISSING))
        val = v.cast(pl.Float64, strict=False)
        for (row, cell) in raw.filter(~missing & val.is_null()).select("_row", fid).iter_rows():
            problems.append({"row": row, "level": "bad", "reason": f"unparseable number: {cell!r} for {fid}"})
        n_missing = raw.filter(missing).height
        if n_missing:
            problems.append({"row": None, "level": "skip", "reason": f"{n_missing} missing-value rows of {fid} skipped"})
        frames.append(raw.filter(~missing & val.is_not_null()).select(
            day.alias("date"), pl.lit(series or code_for(fid)).alias("series"), val.alias("close"),
            pl.lit(f"{source_prefix}:{fid.strip().upper()}").alias("source"), pl.col("_row").cast(pl.Int64)))
    out = pl.concat(frames) if frames else pl.DataFrame(schema=SCHEMA)
    return out, problems


def parse_csv(data: bytes, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    df, _problems = csv_frame(data)
    return {"macro_closes": df.drop("_row")}


PARSERS = {ENDPOINT: Parser(parse_csv, raw_body=True)}
