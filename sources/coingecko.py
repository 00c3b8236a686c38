"""CoinGecko public API: corporate bitcoin treasuries and daily market capitalisations.

Endpoints (base https://api.coingecko.com, docs/venues.md §6):
- GET /api/v3/companies/public_treasury/bitcoin -> staging.treasury_holdings. `total_holdings` in BTC,
  values in USD, sorted by holdings; **no timestamp in the body**: as_of = the UTC date the payload was
  fetched (ParseContext.fetched_at, stored with the raw payload, so replay stamps the same date).
- GET /api/v3/coins/{id}/market_chart?vs_currency=usd&days=N -> staging.market_caps.
  `market_caps` is [[ms, usd], ...]; 5-minute points for 1 day, hourly up to 90 days, daily (00:00 UTC)
  beyond. Day D takes the last point in (D 00:00, D+1 00:00]: a midnight point closes the previous
  day, so daily and hourly granularity agree; the last point of the series is "now", so today's
  row is replaced by later runs. The public API serves at most 365 days.
- GET /api/v3/global (parser only, for replays/imports of that body): `updated_at` is **Unix seconds**;
  market caps per coin = total_market_cap.usd x market_cap_percentage / 100, plus asset TOTAL.
Optional demo key: $COINGECKO_API_KEY sent as header `x-cg-demo-api-key` (never landed).

Example (api_v3_companies_public_treasury_bitcoin.json):
    {"companies":[{"name":"Strategy","symbol":"MSTR.US","country":"US","total_holdings":843738.0,
      "total_current_value_usd":64484706340.107254, ...}]}
    -> (as_of=fetch date, company "Strategy", ticker "MSTR.US", country "US", holdings_btc 843738.0,
        value_usd 64484706340.11)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl

from perpwatch.core import settings
from perpwatch.sources.base import ParseContext, Parser, Stream
from perpwatch.sources.http import Budget, Fetched, VenueClient
from perpwatch.sources.normalize import UTC_MS

SOURCE = "coingecko"
VENUE = "coingecko"
TREASURY = "/api/v3/companies/public_treasury/bitcoin"
TREASURY_PER_PAGE = 250        # the documented maximum
MAX_TREASURY_PAGES = 20
GLOBAL = "/api/v3/global"
CHART = "/api/v3/coins/{id}/market_chart"
MAX_DAYS = 365
# Canonical asset -> CoinGecko coin id. Fixed in code so a replay maps a landed path the same way.
COIN_IDS = {
    "BTC": "bitcoin", "ETH": "ethereum", "SOL": "solana", "XRP": "ripple", "BNB": "binancecoin",
    "DOGE": "dogecoin", "ADA": "cardano", "AVAX": "avalanche-2", "LINK": "chainlink", "TON": "the-open-network",
    "TRX": "tron", "DOT": "polkadot", "LTC": "litecoin", "BCH": "bitcoin-cash", "SUI": "sui", "PEPE": "pepe",
    "HYPE": "hyperliquid",
}
UNSUPPORTED = {
    "instruments": "a data provider, not a venue",
    "treasury history": "the treasury list is a snapshot; history accrues one as_of per day fetched",
    "market caps beyond 365 days": "the public API serves 365 days of market_chart",
}
INSTRUMENT_ENDPOINTS: tuple[str, ...] = ()
DATASETS = ("treasury_holdings", "market_caps")
MCAP_SCHEMA = {"date": pl.Date, "asset": pl.Utf8, "market_cap_usd": pl.Float64, "source": pl.Utf8}


def chart_path(coin_id: str) -> str:
    return CHART.replace("{id}", coin_id)


def make_client(lander, limits_scale: float = 1.0) -> VenueClient:
    key = settings.secret("coingecko_api_key")
    return VenueClient(SOURCE, bases={"": "COINGECKO"}, lander=lander,
                       headers={"x-cg-demo-api-key": key} if key else None,
                       # public (keyless) tier: about 5-15 calls/min depending on load; demo key 30/min
                       budgets={"calls": Budget("coingecko calls/min", max(1.0, (25 if key else 8) * limits_scale), 60.0)})


def fetch_instruments(cl: VenueClient) -> list[Fetched]:
    return []


def plan(instruments: pl.DataFrame, assets: list[str]) -> list[Stream]:
    out = [Stream(SOURCE, "treasury_holdings", "treasury_holdings", "bitcoin", step=timedelta(days=1))]
    out += [Stream(SOURCE, "market_caps", "market_caps", COIN_IDS[a], step=timedelta(days=1),
                   history=timedelta(days=MAX_DAYS))
            for a in assets if a in COIN_IDS]
    return out


def fetch(cl: VenueClient, stream: Stream, start: datetime, end: datetime) -> Iterator[Fetched]:
    if start >= end:
        return
    if stream.dataset == "treasury_holdings":
        # per_page is at most 250 (CoinGecko docs, companies public treasury): more companies hold BTC than
        # that, so page on with `page` until a short page (MAX_TREASURY_PAGES as a bound).
        for page_no in range(1, MAX_TREASURY_PAGES + 1):
            page = cl.get(TREASURY, {"per_page": TREASURY_PER_PAGE, "page": page_no}, costs={"calls": 1},
                          stream=stream.name, instrument=stream.instrument)
            yield page
            body = page.json()
            companies = body.get("companies") if isinstance(body, dict) else None
            if not isinstance(companies, list) or len(companies) < TREASURY_PER_PAGE:
                return
        return
    if stream.dataset == "market_caps":
        # `days` counts back from the server's now (no start parameter); +1 covers the partial first day.
        days = min(MAX_DAYS, max(1, math.ceil((end - start).total_seconds() / 86400) + 1))
        yield cl.get(chart_path(stream.instrument), {"vs_currency": "usd", "days": days},
                     costs={"calls": 1}, stream=stream.name, instrument=stream.instrument)
        return
    raise ValueError(f"coingecko: no fetcher for dataset {stream.dataset!r}")


# --------------------------------------------------------------------------- parsing

def parse_treasury(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    if not isinstance(data, dict) or not isinstance(data.get("companies"), list):
        raise ValueError(f"coingecko treasury: expected {{'companies': [...]}}, got {str(data)[:160]}")
    rows = data["companies"]
    schema = {"name": pl.Utf8, "symbol": pl.Utf8, "country": pl.Utf8, "total_holdings": pl.Float64,
              "total_current_value_usd": pl.Float64}
    df = pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)
    as_of = ctx.fetched_at.astimezone(UTC).date()
    out = df.select(
        pl.lit(as_of, pl.Date).alias("as_of"), pl.col("name").str.strip_chars().alias("company"),
        pl.col("symbol").alias("ticker"), pl.col("country"),
        pl.col("total_holdings").alias("holdings_btc"), pl.col("total_current_value_usd").alias("value_usd"),
        pl.lit(SOURCE).alias("source"),
        # publication time (docs/signals.md): a snapshot without a timestamp is known when it was fetched
        pl.lit(ctx.fetched_at).cast(UTC_MS).alias("available_at"))
    return {"treasury_holdings": out.filter(pl.col("company").is_not_null() & (pl.col("company") != ""))}


def chart_frame(points: list, asset: str, source: str = SOURCE) -> pl.DataFrame:
    """[[ms, usd], ...] -> one row per UTC day D: the last point in (D 00:00, D+1 00:00].

    A point stamped exactly at midnight closes the previous day, so the daily series (>90 days:
    one point at 00:00 UTC) and the hourly one (<=90 days: last point 24:00 = next 00:00) give D the
    same end-of-day value; a later point never labels an earlier day (no look-ahead)."""
    if not points:
        return pl.DataFrame(schema=MCAP_SCHEMA)
    df = pl.DataFrame({"ms": [p[0] for p in points], "v": [p[1] for p in points]},
                      schema={"ms": pl.Int64, "v": pl.Float64})
    df = df.with_columns((pl.col("ms") - 1).cast(UTC_MS).dt.date().alias("date")).drop_nulls("v")
    return (df.sort("ms").group_by("date", maintain_order=True).agg(pl.col("v").last())
            .select("date", pl.lit(asset).alias("asset"), pl.col("v").alias("market_cap_usd"),
                    pl.lit(source).alias("source")))


def _parse_chart(asset: str):
    def parse(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
        if not isinstance(data, dict) or "market_caps" not in data:
            raise ValueError(f"coingecko market_chart: no market_caps in {str(data)[:160]}")
        return {"market_caps": chart_frame(data["market_caps"], asset)}
    return parse


def parse_global(data: dict, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
    d = data.get("data") if isinstance(data, dict) else None
    if not isinstance(d, dict) or "total_market_cap" not in d:
        raise ValueError(f"coingecko global: unexpected body {str(data)[:160]}")
    total = float(d["total_market_cap"]["usd"])
    day = datetime.fromtimestamp(int(d["updated_at"]), UTC).date()   # Unix *seconds*
    rows = [{"date": day, "asset": "TOTAL", "market_cap_usd": total, "source": SOURCE}]
    for coin, pct in (d.get("market_cap_percentage") or {}).items():
        rows.append({"date": day, "asset": coin.upper(), "market_cap_usd": total * float(pct) / 100.0,
                     "source": SOURCE})
    return {"market_caps": pl.DataFrame(rows, schema=MCAP_SCHEMA)}


PARSERS = {
    TREASURY: Parser(parse_treasury),
    GLOBAL: Parser(parse_global),
    **{chart_path(cid): Parser(_parse_chart(asset)) for asset, cid in COIN_IDS.items()},
}
