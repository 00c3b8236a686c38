"""The declared source interfaces: what the ingest engine may rely on in a source module
(ParsingSource, RestSource) and in a websocket venue (StreamSource).

The venue modules are plain modules, not classes: a module satisfies a Protocol when it has the
names below (`isinstance(module, RestSource)` checks that they exist; the conformance test,
tests/test_source_conformance.py, checks what they hold for every registered module).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

import polars as pl

from perpwatch.sources.base import Parser, Stream
from perpwatch.sources.http import Fetched, VenueClient


@runtime_checkable
class ParsingSource(Protocol):
    """Any module in sources.ALL_MODULES: enough to parse a landed raw.payloads row again (replay)."""

    SOURCE: str                              # raw.payloads.source (a module may serve several)
    DATASETS: tuple[str, ...]                # staging tables it produces, without "staging."
    UNSUPPORTED: Mapping[str, str]           # dataset (venues) or named gap (providers) -> why it is missing
    INSTRUMENT_ENDPOINTS: tuple[str, ...]    # endpoints feeding staging.instruments (parsed first)
    PARSERS: Mapping[str, Parser]            # raw.payloads.endpoint -> its parser


@runtime_checkable
class RestSource(ParsingSource, Protocol):
    """A venue or provider that `perpwatch run` extracts over HTTP (VENUE_MODULES, PROVIDER_MODULES)."""

    VENUE: str                               # the canonical venue name in staging rows

    def make_client(self, lander, limits_scale: float = 1.0) -> VenueClient:
        """A rate-limited client whose every response is landed raw through `lander`."""
        ...

    def fetch_instruments(self, cl: VenueClient) -> list[Fetched]:
        """The instrument metadata payloads (parsed by the INSTRUMENT_ENDPOINTS parsers)."""
        ...

    def plan(self, instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
        """The incremental streams for the configured assets (an empty frame plans only what needs none)."""
        ...

    def fetch(self, cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
        """The pages of one stream from `start` to `end`, with the endpoint's real limits."""
        ...


@runtime_checkable
class StreamSource(Protocol):
    """One venue's public websocket stream, as the collector runtime uses it (sources.streams.WS_VENUES)."""

    venue: str
    source: str                              # raw.payloads.source of the landed batches
    endpoint: str                            # raw.payloads.endpoint = key in the parser module's PARSERS
    ping_every_s: float | None               # application heartbeat period, None = none needed

    def url(self) -> str:
        ...

    def default_symbol(self, asset: str) -> str:
        ...

    def subscribe_messages(self, symbols: list[str]) -> list[str]:
        ...

    def ping_message(self) -> str | None:
        ...

    def classify(self, m) -> tuple[str, set[str], str | None]:
        """(kind, instruments, problem) of one decoded message; kind is data | control | other."""
        ...
