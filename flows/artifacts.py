"""Prefect artifacts for every run: what was fetched / loaded / quarantined and validated."""

from __future__ import annotations

from perpwatch.pipeline import RunReport


def run_artifacts(report: RunReport) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
    except ImportError:   # pragma: no cover
        return
    try:
        create_table_artifact(key="ingest-counts", table=report.table(),
                              description=f"Run {report.run_id}: {report.status}")
        lines = [f"# Run {report.run_id}: **{report.status}**", ""]
        lines += [f"- ERROR: {e}" for e in report.errors] + [f"- WARNING: {w}" for w in report.warnings]
        create_markdown_artifact(key="ingest-outcome", markdown="\n".join(lines))
    except Exception:     # outside a flow run context there is nothing to attach to
        pass
