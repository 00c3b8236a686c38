"""Workload 1 — the load path: recorded openInterestHist pages -> parse -> normalise -> validate ->
idempotent upsert, through the real code (sources.binance.PARSERS, perpwatch.ingest.validate.validate,
warehouse.upsert, via pipeline.parse_all / pipeline.load_table), against baselines in the same run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from perpwatch.bench.common import ROOT, Sample
from perpwatch.bench.payloads import ENDPOINT, oi_pages

DLT_PIN = "dlt[duckdb]==1.31.0"
BENCH_VENV = ROOT / ".bench-venv"


def _fresh_db(path: Path):
    from perpwatch import warehouse
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)
    return warehouse.connect(path)


def _fetched(pages):
    from perpwatch.sources.http import Fetched

    at = datetime(2026, 1, 1, tzinfo=UTC)
    return [Fetched(i + 1, "binance", ENDPOINT, params, 200, body, "open_interest", params["symbol"], at)
            for i, (params, body) in enumerate(pages)]


def _ctx(pages) -> dict:
    return {("binance", p["symbol"]): {"venue": "binance", "instrument": p["symbol"], "contract_size": 1.0}
            for p, _ in pages}


def parse(fetched, ctx_instruments) -> list[pl.DataFrame]:
    """The normalised open-interest frames of the pages, exactly as a run parses them (pipeline.parse_all)."""
    from perpwatch import warehouse
    from perpwatch.ingest import pipeline

    report = pipeline.RunReport(run_id="bench-parse", kind="bench")
    con = warehouse.connect(":memory:")     # where parse_all would quarantine an unparseable page
    try:
        frames = pipeline.parse_all(con, report, fetched, ctx_instruments).frames["open_interest"]
    finally:
        con.close()
    if report.warnings:
        raise RuntimeError(f"bench pages did not parse: {report.warnings[:3]}")
    return frames


class _Stages:
    """Wraps pipeline.validate and warehouse.upsert to time the stages of a load_table call."""

    def __init__(self, validation: bool):
        from perpwatch import warehouse
        from perpwatch.ingest import pipeline
        from perpwatch.ingest.validate import Outcome

        self.pipeline, self.warehouse = pipeline, warehouse
        self.orig_validate, self.orig_upsert = pipeline.validate, warehouse.upsert
        self.t = {"validate": 0.0, "upsert": 0.0}

        def v(table, df, now=None):
            t0 = time.perf_counter()
            try:
                return self.orig_validate(table, df, now=now) if validation else Outcome(table, True, 0)
            finally:
                self.t["validate"] += time.perf_counter() - t0

        def u(con, table, df, **kw):
            t0 = time.perf_counter()
            try:
                return self.orig_upsert(con, table, df, **kw)
            finally:
                self.t["upsert"] += time.perf_counter() - t0

        self.v, self.u = v, u

    def __enter__(self):
        self.pipeline.validate, self.warehouse.upsert = self.v, self.u
        return self

    def __exit__(self, *exc):
        self.pipeline.validate, self.warehouse.upsert = self.orig_validate, self.orig_upsert


def _perpwatch_once(db: Path, fetched, ctx, validation: bool) -> dict:
    """One fresh load and one reload of the same pages. Returns seconds per stage and the load counts."""
    from perpwatch.ingest import pipeline

    con = _fresh_db(db)
    out = {}
    try:
        for phase in ("fresh", "reload"):
            report = pipeline.RunReport(run_id=f"bench-{phase}", kind="bench")
            with _Stages(validation) as st:
                t0 = time.perf_counter()
                frames = pipeline.parse_all(con, report, fetched, ctx).frames["open_interest"]
                t_parse = time.perf_counter() - t0
                pipeline.load_table(con, report, "open_interest", frames)
                total = time.perf_counter() - t0
            s = report.stat("binance", "open_interest")
            # load_table validates on this thread while the upsert runs on its worker thread (pipeline._Speculative):
            # "load" is load_table's wall time, validate and upsert overlap inside it
            out[phase] = {"total": total, "parse": t_parse, "validate": st.t["validate"], "upsert": st.t["upsert"],
                          "load": total - t_parse,
                          "fetched": s.fetched, "loaded": s.loaded, "duplicate": s.duplicate,
                          "quarantined": s.quarantined, "validation": s.validation}
        out["rows_in_table"] = con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0]
    finally:
        con.close()
    return out


def _ceiling_once(db: Path, frame: pl.DataFrame) -> float:
    from perpwatch import warehouse
    con = _fresh_db(db)
    try:
        cols = [c for c in warehouse.table_columns(con, "staging.open_interest") if c in frame.columns]
        collist = ", ".join(f'"{c}"' for c in cols)
        t0 = time.perf_counter()
        con.register("__arrow", warehouse.arrow(frame.select(cols)))     # the shape warehouse.upsert hands over
        with warehouse.transaction(con):
            con.execute(f"INSERT INTO staging.open_interest ({collist}) SELECT {collist} FROM __arrow")
        took = time.perf_counter() - t0
        con.unregister("__arrow")
        return took
    finally:
        con.close()


def _executemany_once(db: Path, pages) -> dict:
    """A row-at-a-time loader: per page decode, normalise each row in Python, executemany
    INSERT OR REPLACE into a table with a PRIMARY KEY on the grain, all in one transaction."""
    import duckdb

    for p in (db, db.with_name(db.name + ".wal")):
        p.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    con.execute("""CREATE TABLE oi (venue VARCHAR, instrument VARCHAR, ts TIMESTAMPTZ, asset VARCHAR, margin VARCHAR,
                   oi_contracts DOUBLE, oi_base DOUBLE, oi_usd DOUBLE, PRIMARY KEY (venue, instrument, ts))""")
    out = {}
    try:
        for phase in ("fresh", "reload"):
            t0 = time.perf_counter()
            con.execute("BEGIN")
            for _params, body in pages:
                rows = [("binance", r["symbol"], datetime.fromtimestamp(int(r["timestamp"]) / 1000, UTC), r["symbol"][:-4],
                         "linear", float(r["sumOpenInterest"]), float(r["sumOpenInterest"]),
                         float(r["sumOpenInterestValue"])) for r in orjson.loads(body)]
                con.executemany("INSERT OR REPLACE INTO oi VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            con.execute("COMMIT")
            out[phase] = time.perf_counter() - t0
        out["rows_in_table"] = con.execute("SELECT count(*) FROM oi").fetchone()[0]
    finally:
        con.close()
    return out


def ensure_dlt_venv(progress) -> Path:
    """A separate venv with dlt pinned (never a perpwatch dependency): <repo>/.bench-venv."""
    py = BENCH_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import dlt, duckdb, orjson, pyarrow; assert dlt.__version__ == '1.31.0'"],
                                        capture_output=True).returncode == 0
    if not ok:
        progress(f"creating {BENCH_VENV} with {DLT_PIN} (baseline only) ...")
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        import duckdb
        import pyarrow

        subprocess.run([str(py), "-m", "pip", "install", "-q", DLT_PIN, f"duckdb=={duckdb.__version__}",
                        f"orjson=={orjson.__version__}", f"pyarrow=={pyarrow.__version__}"], check=True)
    return py


def _dlt(pages, workdir: Path, runs: int, progress, sizes) -> dict:
    """dlt merge via its dict route and its Arrow route at the sizes (rows) in `sizes`: a list for both
    routes, or {route: [sizes]}."""
    py = ensure_dlt_venv(progress)
    pages_file = workdir / "dlt_pages.ndjson"
    pages_file.write_bytes(b"\n".join(body for _, body in pages))
    out: dict = {}
    try:
        for route, route_sizes in (sizes.items() if isinstance(sizes, dict) else (("dict", sizes), ("arrow", sizes))):
            res = subprocess.run([str(py), str(ROOT / "bench" / "dlt_baseline.py"),
                                  json.dumps({"pages_file": str(pages_file), "workdir": str(workdir / "dlt"), "runs": runs,
                                              "sizes": route_sizes, "routes": [route]})],
                                 capture_output=True, text=True, timeout=7200)
            if res.returncode != 0:
                raise RuntimeError(f"dlt baseline failed:\n{res.stderr[-3000:]}")
            got = json.loads(res.stdout.strip().splitlines()[-1])
            out.setdefault("routes", {}).update(got["routes"])
            out["dlt"], out["duckdb"] = got["dlt"], got["duckdb"]
    finally:
        pages_file.unlink(missing_ok=True)
    return out


def _gx_alone(frame: pl.DataFrame, runs: int) -> Sample:
    """Diagnostic: the same GX suite on the same rows with nothing else running (inside load_table it shares
    the two cores with the upsert). Two untimed validations first: the first ones of a new frame size run
    slower (allocation), which the pipeline's repeated runs above have already paid."""
    from perpwatch.ingest import validate as V

    for _ in range(2):
        V.validate("open_interest", frame)
    s = Sample()
    for _ in range(runs):
        t0 = time.perf_counter()
        V.validate("open_interest", frame)
        s.add(time.perf_counter() - t0)
    return s


def run(rows: int, runs: int, workdir: Path, dlt_rows: int | None, em_rows: int, progress=print) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pages = oi_pages(rows)
    fetched = _fetched(pages)
    ctx = _ctx(pages)
    payload_mb = sum(len(b) for _, b in pages) / 1e6
    progress(f"load path: {rows:,} rows in {len(pages)} pages ({payload_mb:.0f} MB JSON) generated in "
             f"{time.perf_counter() - t0:.1f}s")
    from perpwatch.ingest import validate as V

    # warm GX once (its 2-3 s import and context creation are start-up cost, reported in the e2e section)
    warm = parse(fetched[:2], ctx)[0].drop(["_source", "_stream", "_instrument", "_endpoint"])
    V.validate("open_interest", warm.with_columns(pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("ingested_at")))

    variants = {"pipeline_validated": True, "pipeline_novalidation": False}
    # one untimed round first: the process's first full-size load pays one-off costs in both variants (the first
    # large GX validation, allocator and DuckDB buffer growth) that the timed rounds would otherwise carry in
    # round 1 only, the validated variant's above all as it runs first; the cold path is the e2e section's
    warmup = {name: _perpwatch_once(workdir / "load.duckdb", fetched, ctx, validation)["fresh"]["total"]
              for name, validation in variants.items()}
    progress("  warm-up round (not in the figures): " + ", ".join(f"{k} {v:.2f}s" for k, v in warmup.items()))
    results: dict[str, list[dict]] = {k: [] for k in variants}
    for r in range(runs):
        for name, validation in variants.items():
            results[name].append(_perpwatch_once(workdir / "load.duckdb", fetched, ctx, validation))
            progress(f"  run {r + 1}/{runs} {name}: fresh {results[name][-1]['fresh']['total']:.2f}s, "
                     f"reload {results[name][-1]['reload']['total']:.2f}s")
    # the frame the upsert sees (normalised + raw_id + ingested_at), for the ceiling and the GX diagnostic
    norm = pl.concat(parse(fetched, ctx)).drop(["_source", "_stream", "_instrument", "_endpoint"]).with_columns(
        pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("ingested_at"))
    ceiling = Sample()
    for _ in range(runs):
        ceiling.add(_ceiling_once(workdir / "ceiling.duckdb", norm))
    progress(f"  arrow ceiling: {ceiling.fmt()}")
    gx_alone = _gx_alone(norm, runs)
    progress(f"  GX suite alone on the same rows: {gx_alone.fmt()}")
    em_pages = pages[: max(1, em_rows // 500)]
    em = [_executemany_once(workdir / "em.duckdb", em_pages) for _ in range(runs)]
    progress(f"  executemany ({sum(len(orjson.loads(b)) for _, b in em_pages):,} rows): "
             f"{[round(x['fresh'], 2) for x in em]}")
    dlt = None
    if dlt_rows:
        # per route two sizes (the trend), the larger one the same rows as perpwatch's where that route can
        # take them in the bench's time (dlt_rows: {route: rows} or one number for both)
        limits = dlt_rows if isinstance(dlt_rows, dict) else {"dict": dlt_rows, "arrow": dlt_rows}
        sizes = {route: sorted({max(500, min(n, rows) // 4), min(n, rows)}) for route, n in limits.items()}
        big = max(max(v) for v in sizes.values())
        try:
            dlt = _dlt(pages[: max(1, big // 500)], workdir, runs, progress, sizes)
            for route, by_size in dlt["routes"].items():
                progress(f"  dlt merge, {route} route: " + "; ".join(
                    f"{int(n):,} rows {[round(x['fresh_s'], 2) for x in v]} s (setup {[round(x['setup_s'], 2) for x in v]})"
                    for n, v in by_size.items()))
        except Exception as exc:  # noqa: BLE001 - reported, the rest of the bench goes on
            dlt = {"error": str(exc)[:500]}
            progress(f"  dlt baseline failed: {exc}")
    for p in workdir.glob("*.duckdb*"):
        p.unlink(missing_ok=True)
    em_n = sum(len(orjson.loads(b)) for _, b in em_pages)
    return {"rows": rows, "pages": len(pages), "payload_mb": payload_mb, "variants": results, "warmup": warmup,
            "ceiling": ceiling.as_dict(), "gx_alone": gx_alone.as_dict(),
            "executemany": {"rows": em_n, "runs": em}, "dlt": dlt}


def summarise(res: dict) -> dict:
    """Medians, rows/s and the targets of issue 8."""
    rows = res["rows"]
    s = {}
    for name, runs in res["variants"].items():
        for phase in ("fresh", "reload"):
            tot = Sample([r[phase]["total"] for r in runs])
            s[f"{name}.{phase}"] = {"total": tot.as_dict(), "rows_per_s": rows / tot.median,
                                    **{k: float(np.median([r[phase][k] for r in runs]))
                                       for k in ("parse", "validate", "upsert", "load")},
                                    "loaded": runs[-1][phase]["loaded"], "duplicate": runs[-1][phase]["duplicate"],
                                    "quarantined": runs[-1][phase]["quarantined"]}
    ceil = res["ceiling"]["median"]
    s["ceiling"] = {"total": res["ceiling"], "rows_per_s": rows / ceil}
    em = res["executemany"]
    s["executemany"] = {"rows": em["rows"], "fresh": Sample([r["fresh"] for r in em["runs"]]).as_dict(),
                        "reload": Sample([r["reload"] for r in em["runs"]]).as_dict()}
    s["executemany"]["rows_per_s"] = em["rows"] / s["executemany"]["fresh"]["median"]
    if res.get("dlt") and "routes" in res["dlt"]:
        d = res["dlt"]
        s["dlt"] = {"version": d["dlt"], "routes": {}}
        for route, by_size in d["routes"].items():
            for n, rr in by_size.items():
                x = {"rows": int(n), "fresh": Sample([r["fresh_s"] for r in rr]).as_dict(),
                     "reload": Sample([r["reload_s"] for r in rr]).as_dict(),
                     "setup": Sample([r["setup_s"] for r in rr]).as_dict(), "rows_in_table": rr[-1]["rows_in_table"]}
                x["rows_per_s"] = int(n) / x["fresh"]["median"]
                s["dlt"]["routes"].setdefault(route, {})[n] = x
    elif res.get("dlt"):
        s["dlt"] = res["dlt"]
    return s
