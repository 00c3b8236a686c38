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

import polars as pl

from perpwatch import transforms, warehouse
from perpwatch.core import phases, settings
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
    phases.mark("build")
    out.marts = runner.call(build, db, since)
    if publish_snapshot:
        phases.mark("publish")
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


HEAL_PASSES = 3        # `perpwatch backfill --heal`: re-reads of the window's open gaps and failed chunks


@dataclass
class BackfillResult:
    runs: list[str]
    status: str
    chunks: int
    fetched: int = 0
    loaded: int = 0
    duplicate: int = 0
    quarantined: int = 0               # rows quarantined (row-level failures and rows of whole payloads)
    payloads_quarantined: int = 0      # payloads quarantined whole (unparseable, undecodable, table-level)
    gaps_open: int = 0                 # gaps of the window still open at the end (after healing)
    heal_passes: int = 0
    failed: list[str] = field(default_factory=list)          # chunk runs whose last attempt failed
    missing: list[dict] = field(default_factory=list)        # still missing: open and unfillable gaps (<= 50)
    marts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def add(self, rep: RunReport) -> None:
        self.runs.append(rep.run_id)
        for k, v in rep.totals().items():
            if k != "gaps_open":
                setattr(self, k, getattr(self, k) + v)


def _gap_notice(message: str) -> bool:
    """A warning that only says a gap is open (healing may close it), not that something was lost."""
    return "gap(s) inside stored series" in message or "gap(s) still open in this run" in message


def open_gaps_in(db, start: datetime, end: datetime, venues: list[str] | None = None) -> list[dict]:
    """Gaps (meta.gaps) still missing — open (re-requested) or unfillable (the venue lacks the rows) — that
    overlap [start, end), of the given venues' sources, oldest first."""
    from perpwatch.ingest import gaps

    with warehouse.session(db) as con:
        rows = gaps.open_gaps(con)
    rows = rows.filter((pl.col("gap_end") >= start) & (pl.col("gap_start") < end))
    if venues:
        rows = rows.filter(pl.col("source").is_in(list(venues)))
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()
             if k in ("source", "dataset", "instrument", "gap_start", "gap_end", "missing", "status", "attempts")}
            for r in rows.sort("gap_start").iter_rows(named=True)]


def backfill(start: datetime, end: datetime | None = None, venues: list[str] | None = None,
             assets: list[str] | None = None, db=None, chunk_days: int = CHUNK_DAYS, build: bool = True,
             publish: bool = True, runner: Runner | None = None,
             progress: Callable[[int, int, RunReport], None] | None = None, heal: bool = True,
             heal_passes: int = HEAL_PASSES) -> BackfillResult:
    """[start, end) in chunks, oldest first, each an ingest run; with `heal` (default) the window's open
    gaps and failed chunks are read again, up to `heal_passes` times; then build, publish, deliver once.

    Chunks keep memory bounded and make a long backfill resumable: a chunk that loaded stays loaded
    when a later one fails. The result's status (perpwatch.core.outcome): failed if a chunk's last
    attempt failed; warning if rows or payloads were quarantined, gaps are still open (`missing`) or a
    run warned of anything but an open gap; else success. The caller maps it to the exit code."""
    end = utc(end or settings.now())     # PERPWATCH_NOW or the system clock
    windows = chunks(start, end, chunk_days)
    res = BackfillResult(runs=[], status="success", chunks=len(windows))
    last: dict[tuple[datetime, datetime], RunReport] = {}
    warned = False
    for i, (s, e) in enumerate(windows, 1):
        rep = ingest("backfill", s, e, venues, assets, db, runner=runner)
        res.add(rep)
        last[(s, e)] = rep
        warned |= any(not _gap_notice(w) for w in rep.warnings)
        if progress:
            progress(i, len(windows), rep)
    missing = open_gaps_in(db, utc(start), end, venues)
    while heal and res.heal_passes < heal_passes:
        failed = [w for w, r in last.items() if r.status == "failed"]
        still_open = [g for g in missing if g["status"] == "open"]      # unfillable ones are not re-read
        if not still_open and not failed:
            break
        res.heal_passes += 1
        todo = list(failed)
        if still_open:   # one run over the span of the open gaps (pipeline._window starts at the earliest)
            lo = min(datetime.fromisoformat(g["gap_start"]) for g in still_open)
            hi = max(datetime.fromisoformat(g["gap_end"]) for g in still_open) + timedelta(days=1)
            span = (max(utc(start), lo), min(end, hi))
            if not any(f[0] <= span[0] and span[1] <= f[1] for f in failed) and span[0] < span[1]:
                todo.append(span)
        srcs = sorted({g["source"] for g in still_open}) if still_open and not failed else venues
        for w in todo:
            rep = ingest("backfill", w[0], w[1], srcs if w not in last else venues, assets, db, runner=runner)
            res.add(rep)
            if w in last:
                last[w] = rep
            warned |= any(not _gap_notice(x) for x in rep.warnings)
            log.info("backfill heal pass %d/%d: %s %s", res.heal_passes, heal_passes, rep.run_id, rep.status)
        missing = open_gaps_in(db, utc(start), end, venues)
    res.failed = [r.run_id for r in last.values() if r.status == "failed"]
    res.missing = missing[:50]
    res.gaps_open = sum(g["status"] == "open" for g in missing)
    if res.failed:
        res.status = "failed"
    elif missing or res.quarantined or res.payloads_quarantined or warned:
        res.status = "warning"
    if build:
        res.marts = sorted(after_load(db, True, publish, runner=runner).marts)
    return res
