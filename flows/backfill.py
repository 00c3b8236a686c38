"""Manual backfill: a window split into chunks, oldest first, each an ingest run; then build + publish.

Chunks keep memory bounded (one chunk's payloads at a time) and make a long backfill resumable:
a chunk that loaded stays loaded when a later one fails. Run it from the deployment
(`prefect deployment run 'perpwatch-backfill/manual' --param start=2026-01-01`) or call it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger

from flows.build import build as build_flow
from flows.ingest import ingest
from perpwatch import progress, settings


def utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def chunks(start: datetime, end: datetime, days: int) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into consecutive windows of `days` days (the last one shorter)."""
    if days < 1:
        raise ValueError("chunk_days must be >= 1")
    start, end = utc(start), utc(end)
    if end <= start:
        raise ValueError(f"backfill window is empty: start {start:%Y-%m-%d %H:%M} >= end {end:%Y-%m-%d %H:%M}")
    out, cur, step = [], start, timedelta(days=days)
    while cur < end:
        out.append((cur, min(cur + step, end)))
        cur += step
    return out


@flow(name="perpwatch-backfill", log_prints=False)
def backfill(start: datetime, end: datetime | None = None, venues: list[str] | None = None,
             assets: list[str] | None = None, db: str | None = None, chunk_days: int = 30,
             build: bool = True, publish: bool = True) -> dict:
    """Backfill [start, end) (default end: now) for `venues` (default: $PERPWATCH_VENUES /
    $PERPWATCH_PROVIDERS, else every source in this checkout)."""
    logger = get_run_logger()
    windows = chunks(start, end or settings.now(), chunk_days)    # PERPWATCH_NOW or the system clock
    totals = {"fetched": 0, "loaded": 0, "duplicate": 0, "quarantined": 0}
    runs, failed = [], []
    with progress.bar(len(windows), "backfill", unit="chunk") as bar:
        for i, (s, e) in enumerate(windows, 1):
            logger.info("backfill chunk %d/%d: %s .. %s", i, len(windows), f"{s:%Y-%m-%d %H:%M}", f"{e:%Y-%m-%d %H:%M}")
            res = ingest(start=s, end=e, venues=venues, assets=assets, db=db, kind="backfill")
            runs.append(res["run_id"])
            for k in totals:
                totals[k] += res.get(k, 0)
            if res["status"] == "failed":
                failed.append(res["run_id"])
            bar.advance(1, f"{e:%Y-%m-%d} loaded {totals['loaded']}")
    result = {"runs": runs, "status": "failed" if failed else "success", "chunks": len(windows), **totals}
    if build:
        result["marts"] = sorted(build_flow(db=db, publish=publish))
    if failed:
        raise RuntimeError(f"backfill: {len(failed)} of {len(windows)} chunks failed ({', '.join(failed)}); "
                           "see perpwatch status and meta.runs")
    return result
