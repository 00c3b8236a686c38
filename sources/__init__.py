"""One module per venue or data provider, all with the same interface.

Each venue module exposes:
  SOURCE, VENUE            raw.payloads.source and the canonical venue name
  DATASETS                 {dataset: fetch function}: which staging datasets it extracts
  UNSUPPORTED              {dataset: reason} for what the venue cannot provide
  make_client(lander)      a rate-limited HTTP client that lands every response raw
  fetch_instruments(cl)    -> list[Fetched]
  plan(dataset, instruments_df, assets) -> list[Stream]   what to fetch incrementally
  fetch(cl, stream, start, end) -> Iterator[Fetched]      explicit cursor paging
  PARSERS                  {endpoint: parse(data, params, ctx) -> {table: polars.DataFrame}}
"""

from __future__ import annotations

import importlib

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
ALL_MODULES = {**VENUE_MODULES, **PROVIDER_MODULES,
               # websocket batches landed by perpwatch/ingest/collector.py (parsed by replay, not run by `perpwatch run`)
               "binance_ws": "perpwatch.sources.liquidations", "bybit_ws": "perpwatch.sources.liquidations",
               "okx_ws": "perpwatch.sources.liquidations",
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
    if name not in ALL_MODULES:
        raise KeyError(f"unknown source {name!r}; known: {sorted(ALL_MODULES)}")
    return importlib.import_module(ALL_MODULES[name])
