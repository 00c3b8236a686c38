"""Daily markets flow: spot ETF flows, macro closes, corporate treasuries, market caps.

Runs after the US close (prefect.yaml: 22:30 America/New_York) over every provider module
(sources.PROVIDER_MODULES) that this checkout has, from each stream's watermark.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from perpwatch import jobs, sources
from perpwatch.flows.ingest import PrefectRunner, final_state, outcome


def available_providers() -> list[str]:
    """Provider names in registry order, for the modules that exist in this checkout."""
    have = sources.available(("providers",))
    return [name for name in sources.PROVIDER_MODULES if name in have]


@flow(name="perpwatch-markets", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=False)
def markets(providers: list[str] | None = None, start: datetime | None = None, end: datetime | None = None,
            assets: list[str] | None = None, db: str | None = None, build: bool = False):
    """Ingest the institutional / traditional-market providers; optionally rebuild and publish marts."""
    logger = get_run_logger()
    chosen = providers or available_providers()
    if not chosen:
        logger.warning("no provider modules in this checkout (sources.PROVIDER_MODULES): nothing to do")
        return {"run_id": None, "status": "skipped", "providers": []}
    logger.info("markets ingest: %s", ", ".join(chosen))
    report = jobs.ingest("markets", start, end, chosen, assets, db, runner=PrefectRunner())
    from perpwatch.flows.artifacts import run_artifacts
    run_artifacts(report)
    for msg in report.warnings + report.errors:
        logger.warning(msg)
    result = {**outcome(report), "providers": chosen}
    if report.status == "failed":
        raise RuntimeError(f"markets run {report.run_id} failed: {'; '.join(report.errors)[:500]}")
    if build:
        from perpwatch.flows.build import build as build_flow
        result["marts"] = sorted(build_flow(db=db, publish=True))
    return final_state(result, report.status, "; ".join(report.errors + report.warnings))
