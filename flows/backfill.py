"""Manual backfill: perpwatch.jobs.backfill (chunks oldest first, each an ingest run; then build,
publish, deliver) with every step a Prefect task. Run it from the deployment
(`prefect deployment run 'perpwatch-backfill/manual' --param start=2026-01-01`) or call it.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from perpwatch import jobs
from perpwatch.core import progress, settings
from perpwatch.flows.ingest import PrefectRunner, final_state


@flow(name="perpwatch-backfill", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=False)
def backfill(start: datetime, end: datetime | None = None, venues: list[str] | None = None,
             assets: list[str] | None = None, db: str | None = None, chunk_days: int = jobs.CHUNK_DAYS,
             build: bool = True, publish: bool = True, heal: bool = True):
    """Backfill [start, end) (default end: now) for `venues` (default: $PERPWATCH_VENUES /
    $PERPWATCH_PROVIDERS, else every source in this checkout)."""
    logger = get_run_logger()
    n = len(jobs.chunks(start, end or settings.now(), chunk_days))
    with progress.bar(n, "backfill", unit="chunk") as bar:
        def advance(i, total, rep):
            logger.info("backfill chunk %d/%d: %s", i, total, rep.status)
            for w in rep.warnings + rep.errors:
                logger.warning(w)
            bar.advance(1, f"chunk {i}/{total} {rep.status}")

        res = jobs.backfill(start, end, venues, assets, db, chunk_days, build, publish,
                            runner=PrefectRunner(), progress=advance, heal=heal)
    # one vocabulary (perpwatch/core/outcome.py): failed -> Failed flow state, warning -> Completed with a message
    parts = []
    if res.failed:
        parts.append(f"{len(res.failed)} of {res.chunks} chunks failed ({', '.join(res.failed)})")
    if res.gaps_open:
        parts.append(f"{res.gaps_open} gap(s) still open after {res.heal_passes} heal pass(es)")
    if res.quarantined or res.payloads_quarantined:
        parts.append(f"quarantined {res.quarantined} row(s), {res.payloads_quarantined} payload(s)")
    return final_state(res.as_dict(), res.status, "; ".join(parts) + "; see perpwatch status and meta.runs")
