"""Jobs: what a command or a flow runs — ingest, backfill, build, publish, deliver alerts — as plain functions.

`perpwatch run/backfill --no-prefect` call these with the in-process runner; the Prefect flows
(flows/) call the very same functions with a runner that turns each step into a task. So chunking,
error handling, building, publishing and alert delivery happen the same way under both. Every job
takes plain parameters (a db path, dates, names) and returns plain results (counts, run ids, timings).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from perpwatch import transforms, warehouse
from perpwatch.core import settings
from perpwatch.ingest import pipeline
from perpwatch.ingest.pipeline import Runner, RunReport
from perpwatch.serving import alerts
from perpwatch.warehouse import lease

log = logging.getLogger("perpwatch")
CHUNK_DAYS = 30


def ingest(kind: str = "run", start: datetime | None = None, end: datetime | None = None,
           venues: list[str] | None = None, assets: list[str] | None = None, db=None,
           runner: Runner | None = None, progress: Callable[[str], None] | None = None) -> RunReport:
    """One ingest run (extract -> land -> validate -> load) — the engine's single entry point."""
    return pipeline.ingest(kind, start, end, venues, assets, db, runner=runner, progress=progress)


def build(db=None, since: datetime | None = None) -> dict[str, float]:
    """Rebuild the marts from staging (incrementally from `since` for marts that opt in).

    On the lake (PERPWATCH_CATALOG) a build first takes the `build` lease in the catalog
    (warehouse/lease.py), so two builds from different workers run one after the other instead of
    conflicting half-way; on the DuckDB file the file lock already does that."""
    with lease.hold(db, "build"), warehouse.session(db) as con:
        if since is not None:
            return transforms.build_incremental(con, since.date() if isinstance(since, datetime) else since)
        return transforms.build_all(con)


def publish(db=None) -> dict[str, str]:
    """Swap in the serving snapshot and Parquet exports for BI readers. Returns what was written."""
    return warehouse.publish(db=db)


def deliver(db=None, now: datetime | None = None) -> dict:
    """POST new alerts to PERPWATCH_ALERT_WEBHOOK (a no-op without it). Returns the delivery counts."""
    with warehouse.session(db) as con:
        rep = alerts.deliver(con, now=now) if now is not None else alerts.deliver(con)
    for err in rep.errors:
        log.warning(err)
    return {"enabled": rep.enabled, "sent": rep.sent, "pending": rep.pending, "errors": list(rep.errors)}


@dataclass
class AfterLoad:
    marts: dict[str, float] = field(default_factory=dict)
    serving: dict[str, str] = field(default_factory=dict)
    delivery: dict = field(default_factory=dict)


def after_load(db=None, build_marts: bool = True, publish_snapshot: bool = True,
               since: datetime | None = None, runner: Runner | None = None) -> AfterLoad:
    """The explicit steps after loading: build, publish, deliver — in this order, each once."""
    runner = runner or Runner()
    out = AfterLoad()
    if not build_marts:
        return out
    out.marts = runner.call(build, db, since)
    if publish_snapshot:
        out.serving = runner.call(publish, db)
    out.delivery = runner.call(deliver, db)
    return out


def run(kind: str = "run", start: datetime | None = None, end: datetime | None = None,
        venues: list[str] | None = None, assets: list[str] | None = None, db=None, build: bool = True,
        publish: bool = False, runner: Runner | None = None,
        progress: Callable[[str], None] | None = None) -> RunReport:
    """`perpwatch run`: one ingest run, then (unless build=False) build, publish and deliver."""
    report = ingest(kind, start, end, venues, assets, db, runner=runner, progress=progress)
    if build:
        after_load(db, True, publish, runner=runner)
    return report


def utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def chunks(start: datetime, end: datetime, days: int = CHUNK_DAYS) -> list[tuple[datetime, datetime]]:
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


@dataclass
class BackfillResult:
    runs: list[str]
    status: str
    chunks: int
    fetched: int = 0
    loaded: int = 0
    duplicate: int = 0
    quarantined: int = 0
    failed: list[str] = field(default_factory=list)
    marts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def backfill(start: datetime, end: datetime | None = None, venues: list[str] | None = None,
             assets: list[str] | None = None, db=None, chunk_days: int = CHUNK_DAYS, build: bool = True,
             publish: bool = True, runner: Runner | None = None,
             progress: Callable[[int, int, RunReport], None] | None = None) -> BackfillResult:
    """[start, end) in chunks, oldest first, each an ingest run; then build, publish, deliver once.

    Chunks keep memory bounded and make a long backfill resumable: a chunk that loaded stays loaded
    when a later one fails. The result says which chunks failed; the caller decides the exit code."""
    windows = chunks(start, end or settings.now(), chunk_days)     # PERPWATCH_NOW or the system clock
    res = BackfillResult(runs=[], status="success", chunks=len(windows))
    for i, (s, e) in enumerate(windows, 1):
        rep = ingest("backfill", s, e, venues, assets, db, runner=runner)
        res.runs.append(rep.run_id)
        for k, v in rep.totals().items():
            setattr(res, k, getattr(res, k) + v)
        if rep.status == "failed":
            res.failed.append(rep.run_id)
        if progress:
            progress(i, len(windows), rep)
    res.status = "failed" if res.failed else "success"
    if build:
        res.marts = sorted(after_load(db, True, publish, runner=runner).marts)
    return res
