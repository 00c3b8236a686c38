"""Every setting perpwatch reads from the environment, declared once (the `Settings` class: name,
type, default, doc), and the one signal-settings file (signals.toml).

`get()` returns the current settings: rebuilt whenever a variable perpwatch reads changes
(tests set them per test), cached otherwise. The helpers below (`url`, `db_path`, `assets`, ...)
are the call sites' interface. `.env.example` is generated from the class:
`python -m perpwatch.core.settings --env-example` (tests/test_settings.py fails when it is stale).
No module reads os.environ for a setting: it asks this one (tests/test_settings.py checks).
"""

from __future__ import annotations

import argparse
import os
import textwrap
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from perpwatch import POLARS_DECAY_MS

ROOT = Path(__file__).resolve().parents[2]   # the repository (perpwatch/core/settings.py)
SIGNALS_FILE = Path(__file__).with_name("signals.toml")
ENV_EXAMPLE = ROOT / ".env.example"
PREFIX = "PERPWATCH_"

# Real public hosts; PERPWATCH_URL_<NAME> points a source elsewhere (simulator, proxy, mirror).
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
URL_DOCS = {
    "BINANCE_FAPI": "Binance USD-M futures REST.",
    "BINANCE_DAPI": "Binance COIN-M futures REST.",
    "BINANCE_SPOT": "Binance spot REST (spot closes, PAXG gold fallback).",
    "BYBIT": "Bybit v5 REST.",
    "OKX": "OKX v5 REST.",
    "HYPERLIQUID": "Hyperliquid info API.",
    "DERIBIT": "Deribit v2 REST.",
    "COINGECKO": "CoinGecko API (treasuries, market caps).",
    "FRED": "FRED graph CSV (macro closes).",
    "STOOQ": "Stooq daily CSV (gold and extra macro series).",
    "FARSIDE": "Farside ETF flow pages. The real site refuses non-browser clients, so ETF flows from "
               "Farside are fetched only when this is set (a mirror or the simulator).",
    "SOSOVALUE": "SoSoValue ETF API. Without SOSOVALUE_API_KEY the provider runs only when this is set.",
    "BINANCE_FSTREAM": "Binance USD-M futures websocket (liquidation stream).",
    "BYBIT_WS": "Bybit websocket (liquidation stream).",
    "OKX_WS": "OKX websocket (liquidation stream).",
}


def _f(default: Any, doc: str, group: str, *, env: str | None = None, example: str | None = None) -> Any:
    """A declared setting: `env` names a variable without the PERPWATCH_ prefix (API keys, Prefect's
    own); `example` is the value shown in .env.example when the default is not a plain value."""
    extra = {"group": group, **({"example": example} if example is not None else {})}
    return Field(default, description=doc, validation_alias=env, json_schema_extra=extra)


def _csv(v: Any) -> Any:
    return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v


class Settings(BaseSettings):
    """Every environment variable perpwatch reads. Field `x` is the variable PERPWATCH_<X> unless it names
    another variable (validation_alias). Secrets are SecretStr: they print as '**********'."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # --- storage
    db: Path = _f(Path("data/perpwatch.duckdb"), "The warehouse (DuckDB file).", "Storage")
    serving_db: Path = _f(Path("data/serving.duckdb"),
                          "The published read-only copy that dashboards and BI tools open.", "Storage")
    exports: Path = _f(Path("data/exports"), "Parquet/CSV exports of the marts.", "Storage")
    reports: Path | None = _f(None, "Rendered images and reports (default: reports/ next to the exports "
                              "folder, i.e. data/reports).", "Storage", example="data/reports")
    gx_docs: Path | None = _f(None, "Great Expectations data docs (default: gx_docs/ next to the exports "
                              "folder, i.e. data/gx_docs).", "Storage", example="data/gx_docs")
    expectations: Path | None = _f(None, "Folder of the Great Expectations suites, one JSON per staging "
                                   "table (default: the repository's expectations/).", "Storage",
                                   example="expectations")
    phase_log: Path | None = _f(None, "Append one line per pipeline phase entered (pid, phase: extract, load, "
                                "build, publish, lock-wait) to this file, flushed at once: a trace for "
                                "operators and the checkpoint the crash tests kill at (perpwatch/core/phases.py).",
                                "Storage", example="data/phases.log")
    signals: Path | None = _f(None, "A signal-settings TOML whose values override perpwatch/core/signals.toml "
                              "(sections and keys it leaves out keep the project defaults).", "Storage",
                              example="my_signals.toml")

    # --- scale-out (docs/scale-out.md)
    catalog: str | None = _f(None, "Unset: the embedded DuckDB file (PERPWATCH_DB). postgresql://user@host:port/db: "
                             "a DuckLake warehouse with its catalog in that PostgreSQL database.", "Storage",
                             example="postgresql://postgres@127.0.0.1:5432/perpwatch_lake")
    data_path: str = _f("data/lake", "Where the DuckLake Parquet files go: a local or shared directory, or s3://... "
                        "(credentials from the environment via DuckDB secrets).", "Storage")
    lake_retries: int = _f(12, "Commit attempts on a DuckLake write conflict before the batch fails (bounded "
                           "retry with jitter).", "Storage")
    lake_retention_days: float = _f(7, "DuckLake snapshots older than this are expired by maintenance (time travel "
                                    "reaches back this far).", "Storage")
    polars_decay_ms: int = _f(POLARS_DECAY_MS, "How long polars' allocator keeps freed memory before handing it back "
                              "to the OS (jemalloc dirty/muzzy decay, ms): a batch reuses what the previous one freed "
                              "instead of page-faulting it in again. Read when perpwatch is imported, before polars; "
                              "0 keeps polars' own 500 ms; ignored when _RJEM_MALLOC_CONF is set.", "Storage")
    workers: int = _f(1, "Prefect workers `make deploy` starts (more than one needs PERPWATCH_CATALOG).",
                      "Operations")
    build_workers: int = _f(2, "Marts a full build (`perpwatch build`) runs at once on the DuckDB file, each on "
                            "its own connection once the marts it reads are committed (default 2: one per core of a "
                            "2-core host; the heatmap's chain first). 1 builds them one after the other. DuckLake "
                            "always builds one at a time.", "Operations")
    prefect_database_url: str | None = _f(None, "The Prefect server's own database (`make deploy`), e.g. "
                                          "postgresql+asyncpg://postgres@127.0.0.1:5432/prefect; default SQLite.",
                                          "Operations", env="PREFECT_API_DATABASE_CONNECTION_URL", example="")
    test_pg: str = _f("postgresql://postgres@127.0.0.1:5432", "PostgreSQL server the lake tests create their "
                      "own databases on.", "Operations")

    # --- BI (make bi: Apache Superset over the serving snapshot, docs/bi.md)
    bi_venv: Path | None = _f(None, "Superset's own virtual environment (default: the repository's .venv-bi).",
                              "BI", example=".venv-bi")
    bi_home: Path = _f(Path("data/bi"), "Superset's metadata database, config secret and logs.", "BI")
    bi_port: int = _f(8088, "Loopback port `make bi` serves Superset on.", "BI")
    bi_admin_user: str = _f("admin", "Superset admin user `make bi` creates.", "BI")
    bi_admin_password: SecretStr = _f(SecretStr("perpwatch"), "Superset admin password (reset from this on "
                                      "every start; the default is for a local loopback install only).", "BI",
                                      example="perpwatch")
    bi_screenshot: Path | None = _f(None, "Where tests/test_bi.py copies the dashboard screenshot it takes (unset: "
                                    "nowhere; docs/img/bi_dashboard.png regenerates the picture in docs/bi.md).",
                                    "BI", example="docs/img/bi_dashboard.png")

    # --- scope
    assets: Annotated[list[str], NoDecode] = _f(
        ["BTC", "ETH", "SOL"], "Assets to track, comma-separated.", "Scope")
    venues: Annotated[list[str] | None, NoDecode] = _f(
        None, "Derivatives venues to run, comma-separated (default and empty: every implemented venue; "
        "an unknown name is an error).", "Scope", example="binance,binance_coinm,bybit,okx,hyperliquid,deribit")
    providers: Annotated[list[str] | None, NoDecode] = _f(
        None, "Institutional/macro providers to run, comma-separated (default: all implemented; "
        "empty: none).", "Scope", example="farside,sosovalue,coingecko,fred,stooq")
    fred_series: Annotated[list[str], NoDecode] = _f(
        ["SP500", "NASDAQCOM", "DTWEXBGS"], "FRED series ids to fetch, comma-separated (empty: the default).",
        "Scope")
    stooq_series: Annotated[dict[str, str], NoDecode] = _f(
        {}, "Extra Stooq series as CODE=symbol pairs, comma-separated (GOLD=xauusd is always fetched).",
        "Scope", example="SPX=^spx,NDX=^ndx")

    # --- sources: base URLs
    url_binance_fapi: str = _f(DEFAULT_URLS["BINANCE_FAPI"], URL_DOCS["BINANCE_FAPI"], "Base URLs")
    url_binance_dapi: str = _f(DEFAULT_URLS["BINANCE_DAPI"], URL_DOCS["BINANCE_DAPI"], "Base URLs")
    url_binance_spot: str = _f(DEFAULT_URLS["BINANCE_SPOT"], URL_DOCS["BINANCE_SPOT"], "Base URLs")
    url_bybit: str = _f(DEFAULT_URLS["BYBIT"], URL_DOCS["BYBIT"], "Base URLs")
    url_okx: str = _f(DEFAULT_URLS["OKX"], URL_DOCS["OKX"], "Base URLs")
    url_hyperliquid: str = _f(DEFAULT_URLS["HYPERLIQUID"], URL_DOCS["HYPERLIQUID"], "Base URLs")
    url_deribit: str = _f(DEFAULT_URLS["DERIBIT"], URL_DOCS["DERIBIT"], "Base URLs")
    url_coingecko: str = _f(DEFAULT_URLS["COINGECKO"], URL_DOCS["COINGECKO"], "Base URLs")
    url_fred: str = _f(DEFAULT_URLS["FRED"], URL_DOCS["FRED"], "Base URLs")
    url_stooq: str = _f(DEFAULT_URLS["STOOQ"], URL_DOCS["STOOQ"], "Base URLs")
    url_farside: str = _f(DEFAULT_URLS["FARSIDE"], URL_DOCS["FARSIDE"], "Base URLs")
    url_sosovalue: str = _f(DEFAULT_URLS["SOSOVALUE"], URL_DOCS["SOSOVALUE"], "Base URLs")
    url_binance_fstream: str = _f(DEFAULT_URLS["BINANCE_FSTREAM"], URL_DOCS["BINANCE_FSTREAM"], "Base URLs")
    url_bybit_ws: str = _f(DEFAULT_URLS["BYBIT_WS"], URL_DOCS["BYBIT_WS"], "Base URLs")
    url_okx_ws: str = _f(DEFAULT_URLS["OKX_WS"], URL_DOCS["OKX_WS"], "Base URLs")

    # --- network and limits
    http_timeout: float = _f(30.0, "HTTP read timeout in seconds (the connect timeout is the smaller of "
                             "5 s and this).", "Network and limits")
    max_ban_wait: float = _f(600.0, "Longest a client waits on one Retry-After / ban / backoff before it gives the "
                             "venue up for this run and raises Banned (seconds).", "Network and limits")
    ws_silence: float = _f(120.0, "A websocket that delivers no message for this long is reconnected, counted "
                           "and warned about (seconds).", "Network and limits")
    now: str | None = _f(None, "The run's clock (ISO time): history clamps, bans and landing (raw fetched_at). Unset: the "
                         "system clock. The simulator's --env sets it when it runs at a fixed time; tests set it.", "Operations",
                         example="")
    import_max_mb: float = _f(512, "Size cap in MB of one file `perpwatch import` accepts "
                              "(--max-size overrides).", "Network and limits")

    # --- secrets: never logged, never landed, printed as '**********'
    sosovalue_api_key: SecretStr | None = _f(None, "SoSoValue API key (ETF flows; sent as a header).",
                                             "Secrets", env="SOSOVALUE_API_KEY", example="")
    coingecko_api_key: SecretStr | None = _f(None, "CoinGecko demo API key (higher rate limit; sent as a "
                                             "header).", "Secrets", env="COINGECKO_API_KEY", example="")
    stooq_api_key: SecretStr | None = _f(None, "Stooq API key (macro closes; sent as a query parameter "
                                         "that is never landed). Without it GOLD comes from PAXGUSDT.",
                                         "Secrets", env="STOOQ_API_KEY", example="")
    alert_webhook: SecretStr | None = _f(None, "Webhook URL that receives new alerts as JSON POSTs "
                                         "(unset: delivery is off).", "Secrets", example="")

    # --- operations
    progress: str = _f("", "Progress bars: 1 forces them on, 0 off (default: on a terminal only, off "
                       "in flow runs).", "Operations", example="1")
    sim_seed: int = _f(7, "Random seed of the simulator `perpwatch demo` starts.", "Operations")
    prefect_port: int = _f(4200, "Port of the Prefect server `perpwatch deploy` starts.", "Operations")
    deploy_log_level: str = _f("INFO", "Log level of the Prefect server and worker `perpwatch deploy` "
                               "starts.", "Operations")
    prefect_home: Path | None = _f(None, "Prefect's own home folder (server database, logs). "
                                   "`perpwatch deploy` defaults it to the repository's .prefect/, other "
                                   "commands to ./.prefect.", "Operations", env="PREFECT_HOME", example=".prefect")
    prefect_flow_run_id: str | None = _f(None, "Set by Prefect in processes a worker starts for a flow "
                                         "run (progress bars are off there); never set it by hand.",
                                         "Operations", env="PREFECT__FLOW_RUN_ID", example="")

    @field_validator("assets", mode="before")
    @classmethod
    def _assets(cls, v: Any) -> Any:
        return [a.upper() for a in _csv(v)] if isinstance(v, str) else v

    @field_validator("venues", mode="before")
    @classmethod
    def _venues(cls, v: Any) -> Any:   # empty = unset = every venue
        return ([x.lower() for x in _csv(v)] or None) if isinstance(v, str) else v

    @field_validator("providers", mode="before")
    @classmethod
    def _providers(cls, v: Any) -> Any:   # empty = none
        return [x.lower() for x in _csv(v)] if isinstance(v, str) else v

    @field_validator("fred_series", mode="before")
    @classmethod
    def _fred(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [s.upper() for s in _csv(v)] or list(cls.model_fields["fred_series"].default)
        return v

    @field_validator("stooq_series", mode="before")
    @classmethod
    def _stooq(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        pairs = (p.split("=", 1) for p in v.split(",") if "=" in p)
        return {code.strip().upper(): sym.strip().lower() for code, sym in pairs}

    @field_validator("http_timeout", "max_ban_wait", "ws_silence", "import_max_mb", "sim_seed", "prefect_port", "deploy_log_level", mode="before")
    @classmethod
    def _blank_is_default(cls, v: Any, info) -> Any:
        return cls.model_fields[info.field_name].default if isinstance(v, str) and not v.strip() else v


def env_name(field: str) -> str:
    """The environment variable of a Settings field."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else PREFIX + field.upper()


ENV_NAMES: dict[str, str] = {env_name(f): f for f in Settings.model_fields}   # variable -> field


def _snapshot() -> tuple[tuple[str, str], ...]:
    """The declared variables' current values (names compared case-insensitively, as Settings does)."""
    env = os.environ
    return tuple([(k, env[k]) for k in env if k.upper() in ENV_NAMES])   # ~20 us; Settings() ~5 ms


@lru_cache(maxsize=16)
def _build(snapshot: tuple[tuple[str, str], ...]) -> Settings:
    return Settings()


def get() -> Settings:
    """The current settings: re-read when a declared variable changed, else cached."""
    return _build(_snapshot())


# --------------------------------------------------------------------------- helpers (call sites)

def url(name: str) -> str:
    """Base URL of a source: PERPWATCH_URL_<NAME> or the real public host."""
    return getattr(get(), f"url_{name.lower()}").rstrip("/")


def url_configured(name: str) -> bool:
    """Whether PERPWATCH_URL_<NAME> is set (non-empty): sources that refuse the real host need it."""
    field = f"url_{name.lower()}"
    s = get()
    return field in s.model_fields_set and bool(getattr(s, field))


def secret(field: str) -> str:
    """A secret's value, stripped ('' when unset). Pass it straight to the request, never to a log."""
    value = getattr(get(), field)
    return value.get_secret_value().strip() if value is not None else ""


def db_path() -> Path:
    return get().db


def serving_db_path() -> Path:
    return get().serving_db


def exports_dir() -> Path:
    return get().exports


def reports_dir() -> Path:
    s = get()
    return s.reports if s.reports is not None else s.exports.parent / "reports"


def gx_docs_dir() -> Path:
    s = get()
    return s.gx_docs if s.gx_docs is not None else s.exports.parent / "gx_docs"


def expectations_dir() -> Path:
    s = get()
    return s.expectations if s.expectations is not None else ROOT / "expectations"


def assets() -> list[str]:
    return list(get().assets)


def _choose(var: str, wanted: list[str], implemented: list[str], what: str) -> list[str]:
    unknown = sorted(set(wanted) - set(implemented))
    if unknown:
        raise ValueError(f"{var} names unknown {what} {unknown}; known: {implemented}")
    return list(wanted)


def venues(implemented: list[str]) -> list[str]:
    wanted = get().venues
    return list(implemented) if wanted is None else _choose("PERPWATCH_VENUES", wanted, implemented, "venues")


def providers(implemented: list[str]) -> list[str]:
    """Institutional / macro providers to run (PERPWATCH_PROVIDERS, default all; empty string = none)."""
    wanted = get().providers
    return list(implemented) if wanted is None else _choose("PERPWATCH_PROVIDERS", wanted, implemented, "providers")


# --------------------------------------------------------------------------- signal settings

def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@lru_cache(maxsize=8)
def _signals_cached(path: str, mtime_ns: int) -> dict:
    with open(SIGNALS_FILE, "rb") as f:
        cfg = tomllib.load(f)
    if Path(path) != SIGNALS_FILE:
        with open(path, "rb") as f:
            cfg = _merge(cfg, tomllib.load(f))
    return cfg


def signal_settings() -> dict:
    """The signal thresholds: perpwatch/core/signals.toml, overlaid with the PERPWATCH_SIGNALS file
    (re-read when that file changes). Every threshold has its default in signals.toml."""
    path = get().signals or SIGNALS_FILE
    return _signals_cached(str(path), os.stat(path).st_mtime_ns)


def default_signal_settings() -> dict:
    """The project's signals.toml alone (the defaults)."""
    return _signals_cached(str(SIGNALS_FILE), os.stat(SIGNALS_FILE).st_mtime_ns)


# --------------------------------------------------------------------------- .env.example

def _example_value(field: str) -> str:
    info = Settings.model_fields[field]
    extra = info.json_schema_extra or {}
    if "example" in extra:
        return str(extra["example"])
    d = info.default
    if isinstance(d, list):
        return ",".join(d)
    if isinstance(d, dict):
        return ",".join(f"{k}={v}" for k, v in d.items())
    return "" if d is None else str(d)


def env_example() -> str:
    """The text of .env.example: every declared variable with its doc, commented out at its default."""
    lines = [
        "# perpwatch settings: every environment variable perpwatch reads, with its default.",
        "# GENERATED from perpwatch/core/settings.py (class Settings); regenerate with",
        "#   python -m perpwatch.core.settings --env-example",
        "# perpwatch reads only the process environment: export these, or copy this file to .env,",
        "# uncomment what you change and load it (e.g. `set -a; . ./.env; set +a`).",
        "# A variable whose default is computed or empty is shown with an example value instead.",
    ]
    group = None
    for name, info in Settings.model_fields.items():
        g = (info.json_schema_extra or {})["group"]
        if g != group:
            lines += ["", f"# ---- {g}"]
            group = g
        lines += textwrap.wrap(info.description or "", 96, initial_indent="# ", subsequent_indent="# ")
        lines.append(f"# {env_name(name)}={_example_value(name)}")
    return "\n".join(lines) + "\n"


def max_ban_wait_s() -> float:
    """Longest a client waits on one Retry-After / ban / backoff before it raises `Banned`."""
    return float(get().max_ban_wait)


def ws_silence_s() -> float:
    """A websocket that delivers no message for this long is reconnected."""
    return float(get().ws_silence)


def now():
    """The run's clock (history clamps, bans, landing): PERPWATCH_NOW or the system clock (UTC)."""
    from datetime import UTC, datetime

    raw = get().now
    if not raw or not raw.strip():
        return datetime.now(UTC)
    dt = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perpwatch.core.settings", description=__doc__.split("\n")[0])
    ap.add_argument("--env-example", nargs="?", const=str(ENV_EXAMPLE), metavar="PATH",
                    help=f"write .env.example (default {ENV_EXAMPLE.name} at the repository root)")
    ap.add_argument("--show", action="store_true", help="print the current settings (secrets masked)")
    a = ap.parse_args(argv)
    if a.env_example:
        Path(a.env_example).write_text(env_example())
        print(f"wrote {a.env_example}")
    if a.show or not a.env_example:
        for name in Settings.model_fields:
            print(f"{env_name(name)}={getattr(get(), name)!s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

