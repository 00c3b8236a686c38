"""SoSoValue open API: US spot Bitcoin ETF daily net inflow (all funds combined), in USD.

Endpoint (docs/venues.md §8): POST https://api.sosovalue.xyz/openapi/v2/etf/historicalInflowChart
with body {"type": "us-btc-spot"} and header `x-soso-api-key` (key from $SOSOVALUE_API_KEY). The key
travels only as a header (`VenueClient(headers=...)`), so it is never logged nor landed in raw.payloads.
The answer holds the last ~300 trading days, newest first, values in **USD (not millions)**; `data` is
a bare list for some clients and `{"list": [...]}` for others: both are accepted. A non-zero `code`
is an error. No paging: every pass reads the whole window and the upsert replaces revised days.

Example (sosovalue_openapi_v2_etf_historicalInflowChart.json):
    {"code":0,"data":{"list":[{"date":"2024-04-12","totalNetInflow":-55066297.0,"totalValueTraded":...,
     "totalNetAssets":56216535367.0,"cumNetInflow":13534833596.095}, ...]}}
    -> (2024-04-12, ticker TOTAL, flow_usd -55,066,297.0, source sosovalue)

The totals go into staging.etf_flows under ticker `TOTAL` (issuer NULL); the marts prefer the sum
of per-ticker rows (Farside) on days that have them and use TOTAL for the other days.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import polars as pl

from perpwatch.core import settings
from perpwatch.sources.base import ParseContext, Parser, Stream
from perpwatch.sources.farside import TOTAL_TICKER
from perpwatch.sources.http import Budget, Fetched, VenueClient

SOURCE = "sosovalue"
VENUE = "sosovalue"
ENDPOINT = "/openapi/v2/etf/historicalInflowChart"
KEY_HEADER = "x-soso-api-key"
TYPES = {"us-btc-spot": "BTC"}
UNSUPPORTED = {
    "instruments": "a data provider, not a venue",
    "per-ticker flows": "historicalInflowChart gives the all-fund total only",
    "history before ~300 trading days": "the endpoint serves about the last 300 trading days",
}
INSTRUMENT_ENDPOINTS: tuple[str, ...] = ()
DATASETS = ("etf_flows",)


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    key = settings.secret("sosovalue_api_key")
    return VenueClient(SOURCE, bases={"": "SOSOVALUE"}, lander=lander,
                       headers={KEY_HEADER: key} if key else None,
                       budgets={"calls": Budget("sosovalue calls/min", max(1.0, 20 * limits_scale), 60.0)})


def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    return []


def enabled() -> bool:
    """Needs an API key against the real host; a configured base URL (simulator, proxy) is enough too."""
    return bool(settings.secret("sosovalue_api_key") or settings.url_configured("SOSOVALUE"))


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    if not enabled():
        return []
    return [Stream(SOURCE, "etf_flows", "etf_flows", t, step=timedelta(days=1))
            for t, asset in TYPES.items() if asset in assets]


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    if start >= end:
        return
    yield cl.post(ENDPOINT, {"type": stream.instrument}, costs={"calls": 1}, stream=stream.name,
                  instrument=stream.instrument)


def _rows(data) -> list:
    if isinstance(data, dict):
        code = data.get("code", 0)
        if code not in (0, "0", None):
            raise ValueError(f"sosovalue: error code {code}: {data.get('msg')!r}")
        inner = data.get("data")
        if isinstance(inner, dict):
            inner = inner.get("list")
        if not isinstance(inner, list):
            raise ValueError(f"sosovalue: no data list in {str(data)[:160]}")
        return inner
    if isinstance(data, list):
        return data
    raise ValueError(f"sosovalue: unexpected body {str(data)[:160]}")


def parse_inflow_chart(data, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    rows = _rows(data)
    if (params or {}).get("type", "us-btc-spot") not in TYPES:
        raise ValueError(f"sosovalue: type {params.get('type')!r} has no staging mapping")
    if not rows:
        return {"etf_flows": pl.DataFrame()}
    df = pl.DataFrame(rows, infer_schema_length=None)
    missing = [c for c in ("date", "totalNetInflow") if c not in df.columns]
    if missing:
        raise ValueError(f"sosovalue: missing field(s) {missing}; got {sorted(df.columns)}")
    out = df.select(
        pl.col("date").cast(pl.Utf8).str.slice(0, 10).str.strptime(pl.Date, "%Y-%m-%d").alias("date"),
        pl.lit(TOTAL_TICKER).alias("ticker"), pl.lit(None, pl.Utf8).alias("issuer"),
        pl.col("totalNetInflow").cast(pl.Float64).alias("flow_usd"), pl.lit(SOURCE).alias("source"))
    return {"etf_flows": out.filter(pl.col("flow_usd").is_not_null()).sort("date")}


PARSERS = {ENDPOINT: Parser(parse_inflow_chart)}
