"""Types shared by the venue modules: what to fetch (Stream), what a parser may know (ParseContext),
a registered parser with its options (Parser), and the tradable-instrument filter every plan() uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl


@dataclass(frozen=True)
class Stream:
    """One incremental series of one instrument, with its own watermark.

    `name` is the watermark's dataset key (e.g. "prices/mark", "long_short_ratio/top_positions").
    """

    source: str
    dataset: str
    name: str
    instrument: str
    step: timedelta = timedelta(hours=1)
    history: timedelta | None = None     # how far back the venue serves it (None = since listing)
    extra: tuple = ()                    # venue-specific (key, value) pairs, e.g. (("pair", "BTCUSDT"),)

    def param(self, key: str, default=None):
        return dict(self.extra).get(key, default)


@dataclass
class ParseContext:
    """What a parser may use besides the payload: instrument metadata, when it was fetched, and (for
    parsers of staging-shaped files) the staging column types, which the ingest layer fills from
    warehouse/schema.sql (perpwatch.warehouse.columns) so sources never read the warehouse."""

    fetched_at: datetime
    instruments: dict[tuple[str, str], dict] = field(default_factory=dict)
    columns: dict[str, dict[str, str]] = field(default_factory=dict)   # table -> {column: DuckDB type}

    def instrument(self, venue: str, instrument: str) -> dict:
        return self.instruments.get((venue, instrument), {})


ParseFn = Callable[[Any, dict, ParseContext], dict[str, pl.DataFrame]]


@dataclass(frozen=True)
class Parser:
    """One entry of a module's PARSERS: the parse function and how the engine must call it.

    `raw_body`: the function takes the landed bytes as they are (CSV, HTML, imported files)
    instead of the JSON-decoded body. `batch`: the high-volume endpoints (OI, ratios, funding,
    klines) have a batch parser instead (sources/batch.py): the pipeline calls it once with all of
    a run's pages of the endpoint. Calling the Parser parses one already-decoded page,
    `PARSERS[endpoint](data, params, ctx)` (a batch parser on a batch of one)."""

    fn: ParseFn | None = None
    raw_body: bool = False
    batch: Callable | None = None

    def __post_init__(self):
        if self.batch is not None:
            if not callable(self.batch) or self.fn is not None or self.raw_body:
                raise TypeError(f"Parser(batch=...) takes a callable batch parser and nothing else, got {self!r}")
            from perpwatch.sources.batch import single
            object.__setattr__(self, "fn", single(self.batch))
        if not callable(self.fn):
            raise TypeError(f"Parser.fn must be callable, got {self.fn!r}")

    def __call__(self, data, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
        return self.fn(data, params, ctx)


def tradable(instruments: pl.DataFrame, venue: str, assets: list[str], **equals: str) -> list[dict]:
    """The venue's trading instruments of the configured assets (plus column == value filters), as rows.

    Every venue's plan() starts here; delisted instruments are never planned, their history stays."""
    if instruments.height == 0:
        return []
    cond = (pl.col("venue") == venue) & pl.col("asset").is_in(assets) & (pl.col("status") == "trading")
    for col, value in equals.items():
        cond &= pl.col(col) == value
    return list(instruments.filter(cond).iter_rows(named=True))


def floor_to(dt: datetime, step: timedelta) -> datetime:
    """`dt` floored to a multiple of `step` since the epoch (page windows on the period grid)."""
    epoch = datetime(1970, 1, 1, tzinfo=dt.tzinfo)
    return dt - (dt - epoch) % step


def history_floor(stream: Stream, now: datetime | None = None) -> datetime | None:
    """Earliest start the venue serves for `stream`, counted back from NOW, not from the request's end:
    Binance /futures/data/* answers HTTP 400 {"code":-1130} to a startTime older than 30 days before the
    current time whatever the endTime (docs/venues.md, corrections 2026-12-04). One grid step
    of margin, on the grid, so clock skew and the request's own latency never cross the line."""
    if stream.history is None:
        return None
    from perpwatch.core import settings

    now = now or settings.now()
    return floor_to(now - stream.history, stream_grid(stream)) + stream_grid(stream)


def stream_grid(stream: Stream) -> timedelta:
    """The period rows of the stream sit on (hourly series; funding every step)."""
    return stream.step if stream.dataset == "funding_rates" else timedelta(hours=1)


def clamp_window(stream: Stream, start: datetime, end: datetime) -> datetime:
    """The start to request: not before the venue's history floor (from now), and on the period grid
    (floored), so consecutive pages `[cursor, cursor + n*period - period]` tile the grid with no hole at a
    page edge (a start at hh:30 with `cursor = upto + 1h` used to skip the row at each 500-hour edge)."""
    floor = history_floor(stream)
    start = floor_to(start, timedelta(hours=1))
    if floor is not None:
        start = max(start, floor)
    return start
