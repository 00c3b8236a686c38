"""Ingest flow: instruments -> concurrent extraction per (source, dataset) -> validate -> load."""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from perpwatch.ingest import pipeline


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def refresh_instruments(rc):
    return pipeline.refresh_instruments(rc)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def extract(rc, source: str, dataset: str, streams, windows):
    pages = pipeline.extract_unit(rc.modules[source], rc.clients[source], streams, windows, rc.report)
    rc.report.stat(source, dataset).payloads += len(pages)
    return pages


@task(cache_policy=NO_CACHE)
def validate_and_load(rc, pages):
    pipeline.load_parsed(rc.con, rc.report, pages, rc.ctx_instruments)


@flow(name="perpwatch-ingest", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=False)
def ingest(start: datetime | None = None, end: datetime | None = None, venues: list[str] | None = None,
           assets: list[str] | None = None, db: str | None = None, kind: str = "run") -> dict:
    """Extract every configured source from its watermark (or the backfill window) and load it."""
    logger = get_run_logger()
    rc = pipeline.open_run(kind, start, end, venues, assets, db)
    try:
        # quote(): Prefect must not walk the run context (its dicts change under the extract threads:
        # "dictionary changed size during iteration") nor the page lists (large)
        instruments = refresh_instruments(quote(rc))
        units = pipeline.plan_units(rc, instruments)
        windows = {key: pipeline.windows_for(rc, ss) for key, ss in units.items()}   # DuckDB reads here
        futures = [extract.submit(quote(rc), src, ss[0].dataset, quote(ss), quote(windows[(src, kind)]))
                   for (src, kind), ss in units.items()]
        pages = [p for f in futures for p in f.result()]
        validate_and_load(quote(rc), quote(pages))
    except Exception as exc:
        rc.report.errors.append(f"run aborted: {type(exc).__name__}: {exc}")
        raise
    finally:
        pipeline.finish(rc.con, rc.report)
        rc.con.close()
        from perpwatch.flows.artifacts import run_artifacts
        run_artifacts(rc.report)
    for w in rc.report.warnings + rc.report.errors:
        logger.warning(w)
    return {"run_id": rc.report.run_id, "status": rc.report.status, **rc.report.totals()}
