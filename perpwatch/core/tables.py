"""The table registry: every fact about each loadable (staging) table, in one place.

Grain (the upsert key), time column, load order, freshness schedule, Great Expectations suite and
gap grid are read from here by every layer — the warehouse (upserts), the ingest engine (load order,
watermarks, gaps), the transforms (incremental filters), serving (status freshness) and the importer.
Nothing else may restate them; tests/test_tables.py fails if a loadable table is missing here.

SQL identifiers taken from this registry are literals of this file, never user input.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class GapGrid:
    """How gap detection finds missing points of a series (perpwatch/ingest/gaps.py).

    `selector` is the column matched against the stream name's suffix (``prices/mark`` -> kind = 'mark');
    `condition` an extra SQL filter; `step` "hour" (1 h grid) or "stream" (the stream's own step, min 1 h)."""

    selector: str | None = None
    condition: str = ""
    step: str = "hour"


@dataclass(frozen=True)
class Table:
    name: str                      # table name in the `staging` schema
    key: tuple[str, ...]           # grain: never duplicated, the upsert key
    time_column: str               # newest-row / watermark / incremental-filter column
    max_lag: timedelta             # stale when the newest row is older than this (perpwatch status)
    schedule: str                  # how often new rows are expected
    snapshot: bool = False         # a dimension read whole (incremental builds never filter it)
    gap_grid: GapGrid | None = None   # a regular series checked for holes
    watermarked: bool = True       # loads move meta.watermarks (instruments do not)
    provider: bool = False         # rows of a data provider (no venue/instrument columns)

    @property
    def qualified(self) -> str:
        return f"staging.{self.name}"

    @property
    def suite(self) -> str:
        """Great Expectations suite: expectations/<suite>.json, named after the table."""
        return self.name


# Load order: instruments first (parsers need contract sizes), prices before open interest (OI without a
# USD value is valued from the perp close). Hourly series run every hour (prefect.yaml) and their last
# complete bar is ~1 h old; funding is paid every 8 h at most; daily providers publish on business days
# after the US close, so a weekend plus a holiday is normal.
STAGING: tuple[Table, ...] = (
    Table("instruments", ("venue", "instrument"), "as_of", timedelta(days=2), "daily",
          snapshot=True, watermarked=False),
    Table("prices", ("venue", "instrument", "kind", "interval", "ts"), "ts", timedelta(hours=3), "hourly",
          gap_grid=GapGrid("kind", "AND t.\"interval\" = '1h'")),
    Table("open_interest", ("venue", "instrument", "ts"), "ts", timedelta(hours=3), "hourly",
          gap_grid=GapGrid()),
    Table("funding_rates", ("venue", "instrument", "funding_time"), "funding_time", timedelta(hours=11), "8h",
          gap_grid=GapGrid(step="stream")),
    Table("long_short_ratio", ("venue", "instrument", "ts", "population"), "ts", timedelta(hours=3), "hourly",
          gap_grid=GapGrid("population")),
    Table("liquidations", ("venue", "instrument", "ts", "side", "price", "qty_base"), "ts", timedelta(hours=6),
          "hourly"),
    Table("etf_flows", ("date", "ticker"), "date", timedelta(days=4), "business days",
          provider=True),
    Table("macro_closes", ("date", "series"), "date", timedelta(days=4), "business days", provider=True),
    Table("treasury_holdings", ("as_of", "company"), "as_of", timedelta(days=2), "daily", provider=True),
    Table("market_caps", ("date", "asset"), "date", timedelta(days=2), "daily", provider=True),
)

BY_NAME: dict[str, Table] = {t.name: t for t in STAGING}
LOAD_ORDER: tuple[str, ...] = tuple(t.name for t in STAGING)
# Columns that record provenance, not content: a reload that differs only here is a duplicate.
# available_at too: refetching an unchanged row keeps the time it first became known.
PROVENANCE = frozenset({"raw_id", "ingested_at", "as_of", "available_at"})


def table(name: str) -> Table:
    """The registry entry of a staging table, by bare (`prices`) or qualified (`staging.prices`) name."""
    bare = name.split(".", 1)[1] if name.startswith("staging.") else name
    try:
        return BY_NAME[bare]
    except KeyError:
        raise KeyError(f"{name!r} is not a loadable table; known: {', '.join(LOAD_ORDER)}") from None


def key(name: str) -> list[str]:
    return list(table(name).key)
