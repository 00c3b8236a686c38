"""Liquidation websocket collector as a deployment (prefect.yaml: every hour, 59 minutes each).

perpwatch/ingest/collector.py does the work (`perpwatch collect` runs the same code); it is imported
lazily, so loading this flow (tests, `prefect deploy`) needs neither websockets nor the collector.
Cancelling the run (SIGTERM from the worker) stops the capture cleanly: the pending batch is flushed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger


@flow(name="perpwatch-collector", log_prints=False)
def collector(seconds: float = 3540.0, venues: list[str] | None = None, assets: list[str] | None = None,
              db: str | None = None) -> dict:
    """Capture liquidation streams for `seconds`, landing and loading them in short batches."""
    logger = get_run_logger()
    from perpwatch.ingest.collector import collect_until_signalled

    stats = collect_until_signalled(db=db, venues=venues, assets=assets, seconds=seconds,
                                    progress=lambda m: logger.info("%s", m))
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(
            key="liquidation-capture",
            table=[{"stream": k, "messages": stats.messages.get(k, 0), "batches": stats.batches.get(k, 0),
                    "reconnects": stats.reconnects.get(k, 0)} for k in sorted(set(stats.messages) | set(stats.batches)
                                                                             | set(stats.reconnects))]
            or [{"note": "no liquidation messages captured"}],
            description=f"Run {stats.run_id}: {stats.status}; rows fetched {stats.fetched}, loaded {stats.loaded}, "
                        f"duplicate {stats.duplicate}, quarantined {stats.quarantined}")
    except Exception:   # artifacts are best effort
        pass
    for msg in stats.warnings + stats.errors:
        logger.warning(msg)
    if stats.status == "failed":
        raise RuntimeError(f"liquidation collector run {stats.run_id} failed: {'; '.join(stats.errors)[:500]}")
    return {"run_id": stats.run_id, "status": stats.status, "fetched": stats.fetched, "loaded": stats.loaded,
            "duplicate": stats.duplicate, "quarantined": stats.quarantined}
