"""Canonical asset mapping for every venue's instrument names, in one place.

BTCUSDT, BTC-USDT-SWAP, BTC, BTC-PERPETUAL, BTCUSD_PERP -> BTC.  Multiplier prefixes
(1000PEPE on Binance/Bybit, kPEPE on Hyperliquid) map to the base coin with a multiplier:
one unit of "1000PEPE" is 1000 PEPE.
"""

from __future__ import annotations

import re

INSTRUMENT_PATTERN = re.compile(r"^[A-Za-z0-9_:\-.]{1,40}$")   # no "/": names never form paths
ASSET_PATTERN = re.compile(r"^[A-Z0-9]{1,20}$")
QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "USD")
_MULTIPLIER = re.compile(r"^(1000000|100000|10000|1000|100|k)(?=[A-Z])")


def validate_instrument(name: str) -> str:
    if not isinstance(name, str) or not INSTRUMENT_PATTERN.match(name):
        raise ValueError(f"instrument name {name!r} does not match {INSTRUMENT_PATTERN.pattern}")
    return name


def validate_asset(name: str) -> str:
    if not isinstance(name, str) or not ASSET_PATTERN.match(name):
        raise ValueError(f"asset name {name!r} does not match {ASSET_PATTERN.pattern}")
    return name


def split_multiplier(base: str) -> tuple[str, float]:
    """'1000PEPE' -> ('PEPE', 1000.0); 'kPEPE' -> ('PEPE', 1000.0); 'BTC' -> ('BTC', 1.0)."""
    m = _MULTIPLIER.match(base)
    if not m:
        return base, 1.0
    prefix = m.group(1)
    return base[len(prefix):], 1000.0 if prefix == "k" else float(prefix)


def canonical(venue: str, instrument: str) -> tuple[str, float]:
    """(asset, multiplier) for a venue's instrument name."""
    s = instrument
    if venue == "hyperliquid":
        s = s.split(":", 1)[-1]            # HIP-3 'dex:COIN'
        return split_multiplier(s)
    if venue == "deribit":                  # BTC-PERPETUAL, BTC_USDC-PERPETUAL, BTC-27DEC24
        return split_multiplier(s.split("-", 1)[0].split("_", 1)[0])
    if venue == "okx":                      # BTC-USDT-SWAP, BTC-USD-261030, BTC-USD_UM-261030
        return split_multiplier(s.split("-", 1)[0])
    if venue == "binance" and "_" in s:     # BTCUSD_PERP, BTCUSDT_261226
        s = s.split("_", 1)[0]
    if venue == "bybit" and "-" in s:       # BTC-26DEC25
        return split_multiplier(s.split("-", 1)[0])
    if s.endswith("PERP") and venue == "bybit":   # BTCPERP (USDC perp)
        s = s[: -len("PERP")] + "USDC"
    for q in QUOTES:
        if s.endswith(q) and len(s) > len(q):
            return split_multiplier(s[: -len(q)])
    return split_multiplier(s)


def asset_of(venue: str, instrument: str) -> str:
    return canonical(venue, instrument)[0]
