"""Every venue- and format-specific thing: one module per venue or data provider, the websocket
venue table, and the file formats of `perpwatch import`. The registries below say which exist.

The interface each kind of module keeps is declared in sources/interface.py (and checked for every
registered module by tests/test_source_conformance.py):
  RestSource (VENUE_MODULES, PROVIDER_MODULES)
    SOURCE, VENUE            raw.payloads.source and the canonical venue name
    DATASETS                 the staging tables it extracts (table names without "staging.")
    UNSUPPORTED              {dataset: reason} for what the venue cannot provide
    INSTRUMENT_ENDPOINTS     endpoints whose payloads feed staging.instruments (loaded first on replay)
    make_client(lander)      a rate-limited HTTP client that lands every response raw
    fetch_instruments(cl)    -> list[Fetched]
    plan(instruments_df, assets) -> list[Stream]          what to fetch incrementally
    fetch(cl, stream, start, end) -> Iterator[Fetched]    explicit cursor paging
    PARSERS                  {endpoint: Parser(parse(data, params, ctx) -> {table: polars.DataFrame})}
  ParsingSource (every module in ALL_MODULES): SOURCE, DATASETS, UNSUPPORTED, INSTRUMENT_ENDPOINTS,
    PARSERS -- what `perpwatch replay` needs to parse a landed payload again.
  StreamSource (each entry of streams.WS_VENUES): one venue's websocket liquidation stream.
"""

from __future__ import annotations

import importlib

from perpwatch.sources.streams import WS_VENUES

VENUE_MODULES = {
    "binance": "perpwatch.sources.binance",
    "binance_coinm": "perpwatch.sources.binance_coinm",
    "bybit": "perpwatch.sources.bybit",
    "okx": "perpwatch.sources.okx",
    "hyperliquid": "perpwatch.sources.hyperliquid",
    "deribit": "perpwatch.sources.deribit",
}


# Institutional / traditional-market providers: same interface, run alongside the venues.
PROVIDER_MODULES = {
    "farside": "perpwatch.sources.farside",
    "sosovalue": "perpwatch.sources.sosovalue",
    "coingecko": "perpwatch.sources.coingecko",
    "fred": "perpwatch.sources.fred",
    "stooq": "perpwatch.sources.stooq",
}
# websocket batches landed by perpwatch/ingest/collector.py, one source per entry of the venue table
# (parsed by replay, not run by `perpwatch run`)
STREAM_MODULES = {v.source: "perpwatch.sources.liquidations" for v in WS_VENUES.values()}
ALL_MODULES = {**VENUE_MODULES, **PROVIDER_MODULES, **STREAM_MODULES,
               # files landed by `perpwatch import` (endpoint "file:<kind>"), re-parsed by replay
               "import": "perpwatch.sources.imports"}


def available(kinds: tuple[str, ...] = ("venues", "providers")) -> dict[str, object]:
    """Source name -> module, for the modules that exist in this checkout."""
    out = {}
    table = {**(VENUE_MODULES if "venues" in kinds else {}), **(PROVIDER_MODULES if "providers" in kinds else {})}
    for name, mod in table.items():
        try:
            out[name] = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return out


def get(name: str):
    """The module that parses (and, for VENUE_MODULES/PROVIDER_MODULES, extracts) source `name`."""
    if name not in ALL_MODULES:
        raise KeyError(f"unknown source {name!r}; known: {sorted(ALL_MODULES)}")
    return importlib.import_module(ALL_MODULES[name])
