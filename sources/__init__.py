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
    "binance": "sources.binance",
    "binance_coinm": "sources.binance_coinm",
    "bybit": "sources.bybit",
    "okx": "sources.okx",
    "hyperliquid": "sources.hyperliquid",
    "deribit": "sources.deribit",
}


def available() -> dict[str, object]:
    """Source name -> module, for the modules that exist in this checkout."""
    out = {}
    for name, mod in VENUE_MODULES.items():
        try:
            out[name] = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return out


def get(name: str):
    return importlib.import_module(VENUE_MODULES[name])
