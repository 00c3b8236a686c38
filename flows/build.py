"""Build flow: build the marts, publish the BI snapshot and exports, deliver alerts — explicit steps."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from perpwatch import jobs
from perpwatch.flows.ingest import PrefectRunner


@flow(name="perpwatch-build")
def build(db: str | None = None, publish: bool = True, since: datetime | None = None) -> dict[str, float]:
    """Rebuild every mart from staging (from `since` on for opted-in marts), publish, deliver alerts."""
    done = jobs.after_load(db, True, publish, since=since, runner=PrefectRunner())
    from perpwatch.flows.artifacts import build_artifacts
    build_artifacts(db)   # signals firing today, alerts, heatmap image (best effort)
    return done.marts
