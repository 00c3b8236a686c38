"""Daily parent flow: ingest everything, then build, publish and deliver alerts."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from perpwatch.flows.build import build
from perpwatch.flows.ingest import final_state, ingest, state_outcome


@flow(name="perpwatch-daily")
def daily(start: datetime | None = None, end: datetime | None = None, venues: list[str] | None = None,
          assets: list[str] | None = None, db: str | None = None, publish: bool = True):
    """Ingest, then build and publish what loaded; the flow ends in the ingest run's state (Failed /
    Completed with a warning message / Completed: perpwatch/core/outcome.py)."""
    state = ingest(start=start, end=end, venues=venues, assets=assets, db=db,
                   kind="backfill" if start else "run", return_state=True)
    result = state_outcome(state)
    timings = build(db=db, publish=publish)
    return final_state({**result, "marts": sorted(timings)}, result.get("status", "failed"),
                       state.message or result.get("error", ""))
