"""Daily parent flow: ingest everything, then build, publish and deliver alerts."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from perpwatch.flows.build import build
from perpwatch.flows.ingest import ingest


@flow(name="perpwatch-daily")
def daily(start: datetime | None = None, end: datetime | None = None, venues: list[str] | None = None,
          assets: list[str] | None = None, db: str | None = None, publish: bool = True) -> dict:
    result = ingest(start=start, end=end, venues=venues, assets=assets, db=db,
                    kind="backfill" if start else "run")
    timings = build(db=db, publish=publish)
    return {**result, "marts": sorted(timings)}
