"""Settings from the environment (see .env.example) and the one signal-settings file."""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIGNALS_FILE = Path(__file__).with_name("signals.toml")

DEFAULT_URLS = {
    "BINANCE_FAPI": "https://fapi.binance.com",
    "BINANCE_DAPI": "https://dapi.binance.com",
    "BINANCE_SPOT": "https://api.binance.com",
    "BYBIT": "https://api.bybit.com",
    "OKX": "https://www.okx.com",
    "HYPERLIQUID": "https://api.hyperliquid.xyz",
    "DERIBIT": "https://www.deribit.com",
    "COINGECKO": "https://api.coingecko.com",
    "FRED": "https://fred.stlouisfed.org",
    "STOOQ": "https://stooq.com",
    "FARSIDE": "https://farside.co.uk",
    "SOSOVALUE": "https://api.sosovalue.xyz",
    "BINANCE_FSTREAM": "wss://fstream.binance.com",
    "BYBIT_WS": "wss://stream.bybit.com",
    "OKX_WS": "wss://ws.okx.com:8443",
}


def url(name: str) -> str:
    """Base URL of a source: PERPWATCH_URL_<NAME> or the real public host."""
    return os.environ.get(f"PERPWATCH_URL_{name}", DEFAULT_URLS[name]).rstrip("/")


def db_path() -> Path:
    return Path(os.environ.get("PERPWATCH_DB", "data/perpwatch.duckdb"))


def serving_db_path() -> Path:
    return Path(os.environ.get("PERPWATCH_SERVING_DB", "data/serving.duckdb"))


def exports_dir() -> Path:
    return Path(os.environ.get("PERPWATCH_EXPORTS", "data/exports"))


def assets() -> list[str]:
    raw = os.environ.get("PERPWATCH_ASSETS", "BTC,ETH,SOL")
    return [a.strip().upper() for a in raw.split(",") if a.strip()]


def venues(implemented: list[str]) -> list[str]:
    raw = os.environ.get("PERPWATCH_VENUES")
    if not raw:
        return list(implemented)
    wanted = [v.strip().lower() for v in raw.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(implemented))
    if unknown:
        raise ValueError(f"PERPWATCH_VENUES names unknown venues {unknown}; known: {implemented}")
    return wanted


def providers(implemented: list[str]) -> list[str]:
    """Institutional / macro providers to run (PERPWATCH_PROVIDERS, default all; empty string = none)."""
    raw = os.environ.get("PERPWATCH_PROVIDERS")
    if raw is None:
        return list(implemented)
    wanted = [v.strip().lower() for v in raw.split(",") if v.strip()]
    unknown = sorted(set(wanted) - set(implemented))
    if unknown:
        raise ValueError(f"PERPWATCH_PROVIDERS names unknown providers {unknown}; known: {implemented}")
    return wanted


@cache
def _signals_cached(path: str) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def signal_settings() -> dict:
    """The signal thresholds (perpwatch/signals.toml, or PERPWATCH_SIGNALS to override)."""
    return _signals_cached(os.environ.get("PERPWATCH_SIGNALS", str(SIGNALS_FILE)))


def max_ban_wait_s() -> float:
    """Longest a client waits on one Retry-After / ban / backoff before it gives the venue up for this run
    and raises `Banned` (PERPWATCH_MAX_BAN_WAIT seconds, default 600)."""
    return float(os.environ.get("PERPWATCH_MAX_BAN_WAIT") or 600.0)


def ws_silence_s() -> float:
    """A websocket that delivers no message for this long is reconnected (PERPWATCH_WS_SILENCE, default 120 s)."""
    return float(os.environ.get("PERPWATCH_WS_SILENCE") or 120.0)


def now():
    """The clock of history clamps and bans: PERPWATCH_NOW (ISO time, set by the simulator's `--env` when it
    runs at a fixed time, and by tests) or the system clock."""
    from datetime import UTC, datetime

    raw = os.environ.get("PERPWATCH_NOW")
    if not raw:
        return datetime.now(UTC)
    dt = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
