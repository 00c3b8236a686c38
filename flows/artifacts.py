"""Prefect artifacts for every run: what was fetched / loaded / quarantined and validated, and after a
build the signals firing today, today's alerts and the liquidation heatmap (image + file link).

Artifacts are best effort: outside a flow run, or when the warehouse cannot be read, they are
skipped, never failing the run. Nothing here reads the environment, so no secret can reach them.
"""

from __future__ import annotations

import base64
import io
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from perpwatch.ingest.pipeline import RunReport

log = logging.getLogger("perpwatch")
HEATMAP_DAYS = 7
HEATMAP_ASSETS = 3           # embedded thumbnails per run (full-size PNGs are written for each)
THUMB_WIDTH_IN = 6.0         # 600 px wide thumbnails keep the artifact ~50 KB


def _prefect_artifacts():
    try:
        from prefect import artifacts
    except ImportError:   # pragma: no cover
        return None
    return artifacts


def validation_table(report: RunReport) -> list[dict]:
    """Per (source, dataset): the Great Expectations outcome and what was quarantined."""
    return [{"source": s.source, "dataset": s.dataset, "validation": s.validation, "rows": s.fetched,
             "quarantined_rows": s.quarantined, "quarantined_batches": s.quarantined_batches,
             "message": "; ".join(s.messages)[:300]}
            for s in sorted(report.stats.values(), key=lambda x: (x.source, x.dataset))]


def gx_docs_dir() -> Path:
    """Where Great Expectations Data Docs go: PERPWATCH_GX_DOCS, else data/gx_docs (next to the exports)."""
    from perpwatch.core import settings

    return settings.gx_docs_dir().resolve()


def build_data_docs(run_id: str, folder: Path | None = None) -> Path | None:
    """Render this process's latest validation result per staging table as GX Data Docs
    (folder/index.html; the previous run's pages are replaced). None when nothing was validated."""
    from perpwatch.ingest import validate

    results = dict(validate.LAST_RESULTS)
    validate.LAST_RESULTS.clear()
    if not results:
        return None
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    folder = Path(folder or gx_docs_dir())
    _gx, ctx, _ds = validate._context()
    if "perpwatch" not in ctx.get_site_names():
        ctx.add_data_docs_site(site_name="perpwatch", site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder)}})
    shutil.rmtree(folder / "validations", ignore_errors=True)
    run = RunIdentifier(run_name=run_id, run_time=datetime.now(UTC))
    for table, res in results.items():
        suite = res.suite_name or table
        key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite),
                                         run_id=run, batch_identifier=table)
        ctx.validation_results_store.set(key, res)
    ctx.build_data_docs(site_names=["perpwatch"])
    return folder / "index.html"


def run_artifacts(report: RunReport) -> None:
    try:
        docs = build_data_docs(report.run_id)
    except Exception as exc:      # Data Docs are a convenience: never fail a run over them
        log.warning("Great Expectations Data Docs not built: %s", exc)
        docs = None
    art = _prefect_artifacts()
    if art is None:
        return
    try:
        if docs is not None:
            art.create_link_artifact(key="gx-data-docs", link=docs.as_uri(),
                                     link_text=f"Great Expectations Data Docs ({docs.parent})")
        art.create_table_artifact(key="ingest-counts", table=report.table(),
                                  description=f"Run {report.run_id}: {report.status}")
        vt = validation_table(report)
        failed = [v for v in vt if v["validation"] in ("failed", "partial")]
        art.create_table_artifact(
            key="validation", table=vt,
            description=(f"Great Expectations: {len(vt) - len(failed)} of {len(vt)} datasets passed"
                         + (f"; quarantined: {', '.join(v['source'] + '/' + v['dataset'] for v in failed)}"
                            if failed else "")))
        lines = [f"# Run {report.run_id}: **{report.status}**", ""]
        t = report.totals()
        lines.append(f"fetched {t['fetched']}, loaded {t['loaded']}, duplicate {t['duplicate']}, "
                     f"quarantined {t['quarantined']}, payloads_quarantined {t['payloads_quarantined']}, "
                     f"gaps_open {t['gaps_open']}")
        lines += [""] + [f"- ERROR: {e}" for e in report.errors] + [f"- WARNING: {w}" for w in report.warnings]
        if failed:
            lines += ["", "Quarantined batches: `perpwatch status`, or "
                      "`SELECT * FROM quarantine.batches WHERE resolved_at IS NULL`."]
        art.create_markdown_artifact(key="ingest-outcome", markdown="\n".join(lines))
    except Exception as exc:     # outside a flow run context there is nothing to attach to
        log.debug("run artifacts skipped: %s", exc)


def _thumbnail(png: Path) -> str:
    """A smaller copy of a PNG, base64, for embedding in markdown."""
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = mpimg.imread(png)
    h, w = img.shape[:2]
    fig = Figure(figsize=(THUMB_WIDTH_IN, THUMB_WIDTH_IN * h / w), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img, interpolation="antialiased")
    ax.set_axis_off()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


def build_artifacts(db=None, out_dir: Path | None = None) -> dict:
    """After a build: signals firing today, today's alerts, liquidation heatmaps. Returns what was made."""
    art = _prefect_artifacts()
    made: dict = {}
    try:
        from perpwatch.serving import report as rep
        from perpwatch.serving.render import render
        from perpwatch.serving.status import open_readonly, table_exists

        con, _path, _snap = open_readonly(db)
    except Exception as exc:
        log.warning("build artifacts skipped: cannot read the warehouse: %s", exc)
        return made
    try:
        day, sig = rep.signals_today(con)
        rows = [{"date": str(r["date"]), "asset": r["asset"], "signal_state": r["signal_state"],
                 "firing": ", ".join(r["firing"]) or "none",
                 **{k: r.get(k) for k in ("close_usd", "funding_rate_8h", "ls_ratio", "oi_change_1d",
                                          "liquidation_zscore") if k in r}} for r in sig]
        made["signals"] = rows
        alerts = rep.alerts_today(con, day)
        made["alerts"] = alerts
        out_dir = Path(out_dir or rep.reports_dir())
        maps = []
        if table_exists(con, "marts.liquidation_heatmap"):
            have = {a for (a,) in con.execute("SELECT DISTINCT asset FROM marts.liquidation_heatmap").fetchall()}
            for asset in [a for a in rep.assets(con) if a in have]:
                maps.append((asset, render(con, asset, HEATMAP_DAYS, out_dir / f"heatmap-{asset}.png").resolve()))
        made["heatmaps"] = [str(p) for _a, p in maps]
    finally:
        con.close()
    if art is None:
        return made
    try:
        firing = sum(1 for r in rows if r["firing"] != "none")
        art.create_table_artifact(
            key="daily-signals", table=rows or [{"note": "marts.daily_signals is empty"}],
            description=f"Signals on {day}: {firing} of {len(rows)} assets firing" if day else "no signals yet")
        if alerts is not None and day is not None:
            art.create_table_artifact(key="alerts", table=[{k: str(v) for k, v in a.items()} for a in alerts]
                                      or [{"note": f"no alerts on {day}"}], description=f"marts.alerts on {day}")
        if maps:
            md = [f"# Estimated liquidation heatmap, last {HEATMAP_DAYS} days", ""]
            for i, (asset, path) in enumerate(maps):
                md.append(f"## {asset}")
                if i < HEATMAP_ASSETS:
                    md.append(f"![{asset} liquidation heatmap](data:image/png;base64,{_thumbnail(path)})")
                md += [f"Full size: `{path}`", ""]
            art.create_markdown_artifact(key="liquidation-heatmap", markdown="\n".join(md),
                                         description="perpwatch heatmap ASSET -o FILE.png draws the same")
            art.create_link_artifact(key="liquidation-heatmap-file", link=maps[0][1].as_uri(),
                                     link_text=f"{maps[0][0]} heatmap PNG ({maps[0][1].name})")
    except Exception as exc:
        log.debug("build artifacts skipped: %s", exc)
    return made
