"""Build flow: rebuild marts in dependency order, then publish the BI snapshot and exports."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from perpwatch import warehouse
from perpwatch.ingest import pipeline


@task(cache_policy=NO_CACHE)
def build_marts(db: str | None, publish: bool) -> dict[str, float]:
    with warehouse.session(db) as con:
        return pipeline.build_and_publish(con, publish)


@flow(name="perpwatch-build")
def build(db: str | None = None, publish: bool = True) -> dict[str, float]:
    """Rebuild every mart from staging (and publish the serving snapshot)."""
    timings = build_marts(db, publish)
    from perpwatch.flows.artifacts import build_artifacts
    build_artifacts(db)   # signals firing today, alerts, heatmap image (best effort)
    return timings
