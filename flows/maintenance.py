"""Lake maintenance flow (DuckLake backend): compaction, snapshot expiry, old/orphan file cleanup."""

from __future__ import annotations

from prefect import flow


@flow(name="perpwatch-maintenance")
def maintenance(db: str | None = None, retention_days: float | None = None) -> dict:
    """perpwatch.warehouse.ops.maintain on $PERPWATCH_CATALOG; on the DuckDB-file backend there is nothing to do."""
    from perpwatch import warehouse
    from perpwatch.warehouse import ops

    if not warehouse.is_lake_target(db):
        return {"skipped": "DuckDB-file backend: no snapshots or small files to maintain"}
    return ops.maintain(db, retention_days)
