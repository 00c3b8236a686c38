"""Farside Investors: US spot Bitcoin ETF daily net flows (one HTML table, US$ millions).

Endpoint: GET https://farside.co.uk/bitcoin-etf-flow-all-data/ (the whole history on one page; no API,
no paging). Facts from docs/venues.md §8 and the real cell strings in the Farside snapshots
etf/farside-btc*.json (docs/data.md; excerpt: tests/fixtures/etf_flows/farside_btc_cells.scraped_excerpt.json):
- `<table class="etf">`, column labels in `<th>` (IBIT FBTC BITB ARKB BTCO EZBC BRRR HODL BTCW GBTC BTC
  ... Total), first column a date like `11 Jan 2024`, one row per US trading day.
- Values in US$ millions: negatives in parentheses `(95.1)`, thousands separators `1,045.0`,
  `-` = no data / fund not trading yet (GBTC's mini `BTC` before 31 Jul 2024).
- Market holidays are a row of `-` with Total `0.0`; a day not yet published is a row of `0.0`
  everywhere (e.g. 01 Nov 2024 in the scraped file); summary rows (Total, Average, Maximum, Minimum)
  sit at the bottom; the Total column can be stale (29 Oct 2024: Total 0.0, tickers sum to 870.1).
- Farside revises earlier days (02 Oct 2024: -64.4 then -91.7): every fetch re-reads the whole page
  and the idempotent upsert on [date, ticker] replaces the revised values.
- The real site answers 403 to plain HTTP clients (public scrapers use a headless browser), so the
  stream is planned only when PERPWATCH_URL_FARSIDE points at a mirror, proxy or the simulator.

Example: `<tr><td>11 Jan 2024</td><td>111.7</td>...<td>(95.1)</td><td>-</td><td>655.3</td></tr>`
    -> (2024-01-11, IBIT, BlackRock, 111,700,000.0), ..., (2024-01-11, GBTC, Grayscale, -95,100,000.0);
       no row for BTC; the Total column is not stored (the marts sum the tickers).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from html.parser import HTMLParser

import polars as pl

from perpwatch.core import settings
from perpwatch.sources.base import ParseContext, Parser, Stream
from perpwatch.sources.http import Budget, Fetched, VenueClient

SOURCE = "farside"
VENUE = "farside"
PAGE = "/bitcoin-etf-flow-all-data/"
STREAM_INSTRUMENT = "us-btc-spot"
UNIT_USD = 1_000_000.0             # Farside publishes US$ millions
LAUNCH = date(2024, 1, 11)         # first trading day of the US spot bitcoin ETFs
TOTAL_TICKER = "TOTAL"             # all funds combined, for sources that publish only the total

UNSUPPORTED = {
    "instruments": "a data provider, not a venue",
    "per-ticker before 2024-01-11": "the US spot bitcoin ETFs launched on 2024-01-11",
}
INSTRUMENT_ENDPOINTS: tuple[str, ...] = ()
DATASETS = ("etf_flows",)

# Fund issuers (the sponsor named in each prospectus).
ISSUERS = {
    "IBIT": "BlackRock", "FBTC": "Fidelity", "BITB": "Bitwise", "ARKB": "ARK 21Shares",
    "BTCO": "Invesco Galaxy", "EZBC": "Franklin Templeton", "BRRR": "CoinShares Valkyrie",
    "HODL": "VanEck", "BTCW": "WisdomTree", "GBTC": "Grayscale", "BTC": "Grayscale",
    "DEFI": "Hashdex",
}
SUMMARY_LABELS = {"total", "average", "maximum", "minimum", "max", "min", "sum", "seed", "fee"}
_TICKER = re.compile(r"^[A-Z][A-Z0-9]{1,5}$")
DATE_FORMATS = ("%d %b %Y", "%d %B %Y", "%Y-%m-%d", "%Y%m%dT", "%Y%m%d", "%d/%m/%Y")


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    return VenueClient(SOURCE, bases={"": "FARSIDE"}, lander=lander,
                       budgets={"page": Budget("farside pages/min", max(1.0, 6 * limits_scale), 60.0)})


# --------------------------------------------------------------------------- extraction

def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    return []


def enabled() -> bool:
    """The real farside.co.uk refuses non-browser clients: fetch only from a configured mirror/simulator."""
    return settings.url_configured("FARSIDE")


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    if not enabled():
        return []
    return [Stream(SOURCE, "etf_flows", "etf_flows", STREAM_INSTRUMENT, step=timedelta(days=1))]


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    """One page holds the whole history (revisions included), so every pass reads it whole."""
    if start >= end:
        return
    yield cl.get(PAGE, {}, costs={"page": 1}, stream=stream.name, instrument=stream.instrument)


# --------------------------------------------------------------------------- parsing

class _Tables(HTMLParser):
    """Every <table> as a list of rows of cell texts (nested markup inside cells is flattened)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []
        self._stack: list[dict] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            t = {"class": dict(attrs).get("class") or "", "rows": []}
            self.tables.append(t)
            self._stack.append(t)
        elif tag == "tr" and self._stack:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._stack:
            if self._row:
                self._stack[-1]["rows"].append(self._row)
            self._row = None
        elif tag == "table" and self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _is_header(cells: list[str]) -> bool:
    tickers = [c for c in cells[1:] if _TICKER.match(c)]
    return len(tickers) >= 2 and any(c.strip().lower() == "total" for c in cells)


def html_records(body: bytes | str) -> list[dict[str, str]]:
    """The ETF table of a Farside page as records {Date, <ticker>..., Total} of raw cell strings,
    plus `_row` (1-based row of the table body). Raises when no such table is found."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else body
    p = _Tables()
    p.feed(text)
    p.close()
    if not p.tables:
        raise ValueError(f"farside: no <table> in the page ({len(text)} chars): {text[:120]!r}")
    ranked = sorted(p.tables, key=lambda t: ("etf" not in t["class"].split(), -len(t["rows"])))
    for t in ranked:
        rows = t["rows"]
        hdr = next((i for i, r in enumerate(rows) if _is_header(r)), None)
        if hdr is None:
            continue
        header = ["Date"] + rows[hdr][1:]
        out = []
        for n, r in enumerate(rows[hdr + 1:], start=1):
            rec = {h: (r[i] if i < len(r) else "") for i, h in enumerate(header) if h}
            rec["_row"] = n
            out.append(rec)
        return out
    raise ValueError("farside: no table with a ticker header (IBIT ... Total) in the page")


def parse_dates(col: pl.Expr) -> pl.Expr:
    s = col.cast(pl.Utf8).str.strip_chars().str.strip_chars('"')
    return pl.coalesce([s.str.strptime(pl.Date, f, strict=False) for f in DATE_FORMATS])


def parse_millions(col: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """Farside cell -> (value in the cell's unit, is_blank). `(95.1)` -> -95.1; `1,045.0` -> 1045.0;
    `-`, `–`, empty -> null (blank). A non-blank cell that is not a number gives null, not blank."""
    s = col.cast(pl.Utf8).str.strip_chars().str.replace_all("\u2212", "-")
    blank = s.is_null() | s.is_in(["", "-", "\u2013", "\u2014", "n/a", "N/A", "NaN", "nan"])
    neg = s.str.starts_with("(") & s.str.ends_with(")")
    inner = s.str.strip_chars("()").str.replace_all(r"[,$\s]", "").cast(pl.Float64, strict=False)
    value = pl.when(blank).then(None).when(neg).then(-inner).otherwise(inner)
    return value, blank


def wide_records_to_frame(records: list[dict] | pl.DataFrame, *, unit: float = UNIT_USD,
                          source: str = SOURCE) -> tuple[pl.DataFrame, list[dict]]:
    """Farside-shaped rows (Date, one column per ticker, optional Total) -> staging.etf_flows rows.

    Returns (frame with `_row`, problems). Problems are dicts {row, reason, level}: level "bad"
    for rows a caller should quarantine (unparseable date or number), "skip" for rows dropped on
    purpose (summary rows, holidays, unpublished placeholder days).
    """
    df = records if isinstance(records, pl.DataFrame) else pl.DataFrame(records, infer_schema_length=None)
    if df.height == 0:
        return empty_frame(), []
    if "_row" not in df.columns:
        df = df.with_row_index("_row", offset=1)
    cols = {c.strip(): c for c in df.columns if c != "_row"}
    date_col = next((cols[c] for c in cols if c.lower() in ("date", "day", "as_of")), None)
    if date_col is None:
        raise ValueError(f"etf flows: no Date column among {sorted(cols)}")
    total_col = next((cols[c] for c in cols if c.lower() == "total"), None)
    tickers = [cols[c] for c in cols if cols[c] not in (date_col, total_col) and c]
    df = df.select("_row", pl.col(date_col).cast(pl.Utf8).alias("_date_raw"),
                   *[pl.col(t).cast(pl.Utf8) for t in tickers],
                   *([pl.col(total_col).cast(pl.Utf8).alias("_total_raw")] if total_col else []))
    df = df.with_columns(parse_dates(pl.col("_date_raw")).alias("date"))
    problems: list[dict] = []
    label = pl.col("_date_raw").str.strip_chars().str.to_lowercase()
    is_summary = pl.col("date").is_null() & (label.is_in(sorted(SUMMARY_LABELS)) | label.is_null() | (label == ""))
    for row, raw in df.filter(is_summary).select("_row", "_date_raw").iter_rows():
        problems.append({"row": row, "level": "skip", "reason": f"summary/blank row {raw!r} dropped"})
    for row, raw in df.filter(pl.col("date").is_null() & ~is_summary).select("_row", "_date_raw").iter_rows():
        problems.append({"row": row, "level": "bad", "reason": f"unparseable date: {raw!r}"})
    df = df.filter(pl.col("date").is_not_null())
    if not tickers:   # a totals-only layout (e.g. 0xLearn2Earn's Date,Total CSV)
        if total_col is None:
            raise ValueError("etf flows: neither ticker columns nor a Total column")
        tickers = ["_total_raw"]
    long = df.unpivot(index=["_row", "date"], on=tickers, variable_name="ticker", value_name="cell")
    value, blank = parse_millions(pl.col("cell"))
    long = long.with_columns(value.alias("v"), blank.alias("blank"))
    for row, tk, cell in long.filter(pl.col("v").is_null() & ~pl.col("blank")).select("_row", "ticker", "cell").iter_rows():
        problems.append({"row": row, "level": "bad", "reason": f"unparseable number: {cell!r} for {tk}"})
    bad_rows = {p["row"] for p in problems if p["level"] == "bad"}
    long = long.filter(~pl.col("_row").is_in(sorted(bad_rows)))
    # A day where every fund is blank is a market holiday; every fund exactly 0 is a day Farside
    # has not published yet (a placeholder): neither is a flow observation.
    per_row = long.group_by("_row").agg(pl.col("v").is_null().all().alias("all_blank"),
                                         ((pl.col("v") == 0) | pl.col("v").is_null()).all().alias("all_zero"),
                                         pl.len().alias("n"))
    if tickers != ["_total_raw"]:
        skip = per_row.filter(pl.col("all_blank") | (pl.col("all_zero") & (pl.col("n") > 1)))
        for row, all_blank in skip.select("_row", "all_blank").iter_rows():
            problems.append({"row": row, "level": "skip",
                             "reason": "holiday row (no fund reported)" if all_blank
                             else "placeholder row (every fund 0.0: not published yet)"})
        long = long.join(skip.select("_row"), on="_row", how="anti")
    else:
        # totals-only: a zero total is a holiday / unpublished day, not a flow (scrapers of this layout
        # already drop them; Farside writes holidays as Total 0.0).
        for (row,) in long.filter(pl.col("v").is_null() | (pl.col("v") == 0)).select("_row").iter_rows():
            problems.append({"row": row, "level": "skip", "reason": "zero or blank total (holiday / unpublished)"})
        long = long.filter(pl.col("v").is_not_null() & (pl.col("v") != 0))
    long = long.filter(pl.col("v").is_not_null())
    out = long.select(
        "date",
        pl.when(pl.col("ticker") == "_total_raw").then(pl.lit(TOTAL_TICKER))
        .otherwise(pl.col("ticker").str.strip_chars().str.to_uppercase()).alias("ticker"),
        "v", "_row")
    out = out.select(
        "date", "ticker",
        pl.col("ticker").replace_strict(ISSUERS, default=None, return_dtype=pl.Utf8).alias("issuer"),
        (pl.col("v") * unit).round(2).alias("flow_usd"),
        pl.lit(source).alias("source"), pl.col("_row").cast(pl.Int64))
    return out.sort("_row", "ticker"), problems


def empty_frame() -> pl.DataFrame:
    return pl.DataFrame(schema={"date": pl.Date, "ticker": pl.Utf8, "issuer": pl.Utf8, "flow_usd": pl.Float64,
                                "source": pl.Utf8, "_row": pl.Int64})


def parse_page(data: bytes, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    """Farside HTML page -> staging.etf_flows (USD). Summary, holiday and placeholder rows are dropped;
    a row with an unparseable cell is dropped (the others load)."""
    df, _problems = wide_records_to_frame(html_records(data))
    return {"etf_flows": df.drop("_row")}


PARSERS = {PAGE: Parser(parse_page, raw_body=True), "/btc/": Parser(parse_page, raw_body=True)}
