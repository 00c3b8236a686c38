"""Ingest flow: the engine's one ingest path (perpwatch.jobs.ingest) with each step a Prefect task.

Tasks take plain parameters (run id, a Unit of frozen streams, page references) and return plain
results; clients and the landing connection stay inside the engine, keyed by run id.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from perpwatch import jobs
from perpwatch.ingest import pipeline

prepare_task = task(pipeline.prepare, name="prepare", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
extract_task = task(pipeline.extract, name="extract", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
load_task = task(pipeline.load, name="validate-and-load", cache_policy=NO_CACHE)
build_task = task(jobs.build, name="build-marts", cache_policy=NO_CACHE)
publish_task = task(jobs.publish, name="publish", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[5])
deliver_task = task(jobs.deliver, name="deliver-alerts", cache_policy=NO_CACHE)

TASKS = {pipeline.prepare: prepare_task, pipeline.extract: extract_task, pipeline.load: load_task,
         jobs.build: build_task, jobs.publish: publish_task, jobs.deliver: deliver_task}


class PrefectRunner(pipeline.Runner):
    """Each engine step as a Prefect task of the current flow run; extraction units run concurrently
    on the flow's task runner. Same steps, same order, same error handling as the in-process runner."""

    def call(self, fn, *args):
        return TASKS[fn](*args)

    def map(self, fn, items: list[tuple]) -> list:
        futures = [TASKS[fn].submit(*args) for args in items]
        return [f.result() for f in futures]


def outcome(report: pipeline.RunReport) -> dict:
    return {"run_id": report.run_id, "status": report.status, **report.totals()}


def final_state(result: dict, status: str, message: str):
    """The flow run's state for a run status (perpwatch/core/outcome.py): failed -> Failed, warning ->
    Completed with the warning as its message, success -> Completed. The result dict rides on the state
    either way, so a caller (and the CLI) reads the same counts."""
    from prefect.states import Completed, Failed

    if status == "failed":
        return Failed(message=message[:1000] or "failed", data=result)
    return Completed(message=(f"warning: {message}"[:1000] if status == "warning" else None), data=result)


def state_outcome(state) -> dict:
    """The outcome dict carried by a final flow state (Completed or Failed from final_state); a flow that
    crashed before returning one reads as failed with its error."""
    try:
        out = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return out if isinstance(out, dict) else {"status": "failed", "error": str(out)}


@flow(name="perpwatch-ingest", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=False)
def ingest(start: datetime | None = None, end: datetime | None = None, venues: list[str] | None = None,
           assets: list[str] | None = None, db: str | None = None, kind: str = "run") -> dict:
    """Extract every configured source from its watermark (or the backfill window) and load it."""
    logger = get_run_logger()
    report = jobs.ingest(kind, start, end, venues, assets, db, runner=PrefectRunner())
    from perpwatch.flows.artifacts import run_artifacts
    run_artifacts(report)
    for w in report.warnings + report.errors:
        logger.warning(w)
    return final_state(outcome(report), report.status, "; ".join(report.errors + report.warnings))
