"""Scale-out benchmark (issue 12): the DuckLake backend against the embedded DuckDB file, same run.

(a) concurrent ingest: a backfill of every derivatives venue against the simulator with its real
    per-venue limits and `latency_ms` per request — three worker processes (two venues each) into
    the lake vs one process into the file; wall time of the loads (`backfill --no-prefect --no-build`).
(b) publish/read cost vs warehouse size (1x and 4x, generated staging, bench/gen_warehouse.py): on the
    file a BI reader waits for `warehouse.publish` (the serving copy grows with the warehouse); on the
    lake it waits for nothing but attaching the latest snapshot and querying it.
(c) load rows/s into the lake vs the file: the same Binance openInterestHist pages through
    `pipeline.load_table` (GX validation, upsert, watermarks), fresh warehouse each run.

Needs PostgreSQL at PERPWATCH_TEST_PG (one random database per part, dropped at the end).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from perpwatch.bench.common import ROOT, Sample

NOW = datetime(2026, 11, 20, tzinfo=UTC)
VENUES = ["binance", "binance_coinm", "bybit", "okx", "hyperliquid", "deribit"]
SPLIT = [["binance", "hyperliquid"], ["binance_coinm", "okx"], ["bybit", "deribit"]]   # one pair per worker


def _pg() -> str:
    from perpwatch.core import settings

    return settings.get().test_pg


def _new_lake() -> str:
    from perpwatch.warehouse import lake

    url = f"{_pg()}/pw_bench_{uuid.uuid4().hex[:10]}"
    lake.create_database(url)
    return url


def _drop(url: str) -> None:
    from perpwatch.warehouse import lake

    lake._initialised.discard(url)
    lake.drop_database(url)


# --------------------------------------------------------------------------- (a) concurrent ingest

def _env(sim, d: Path, data_path: Path, catalog: str | None) -> dict[str, str]:
    env = {**os.environ, **sim.env()}
    env.pop("PERPWATCH_CATALOG", None)
    env.update({"PERPWATCH_PROVIDERS": "", "PERPWATCH_DB": str(d / "perpwatch.duckdb"),
                "PERPWATCH_SERVING_DB": str(d / "serving.duckdb"), "PERPWATCH_EXPORTS": str(d / "exports"),
                "PERPWATCH_GX_DOCS": str(d / "gx"), "PERPWATCH_DATA_PATH": str(data_path),
                "PERPWATCH_ALERT_WEBHOOK": "", "PREFECT_LOGGING_LEVEL": "WARNING"})
    if catalog:
        env["PERPWATCH_CATALOG"] = catalog
    return env


def _backfills(envs_venues: list[tuple[dict, list[str]]], days: int, assets: list[str], logdir: Path) -> float:
    """Start every backfill at once; wall seconds until the last one finished (each must succeed)."""
    start = NOW - timedelta(days=days)
    t0 = time.perf_counter()
    procs = []
    for i, (env, venues) in enumerate(envs_venues):
        log = open(logdir / f"ingest-{i}.log", "wb")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "perpwatch", "backfill", "--no-prefect", "--no-build", "--start", start.isoformat(),
             "--end", NOW.isoformat(), "--venues", ",".join(venues), "--assets", ",".join(assets)],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    for p, log in procs:
        p.wait()
        log.close()
    wall = time.perf_counter() - t0
    bad = [i for i, (p, _) in enumerate(procs) if p.returncode != 0]
    if bad:
        raise RuntimeError(f"bench ingest failed in {bad}; see {logdir}/ingest-*.log")
    return wall


def ingest(days: int, assets: list[str], latency_ms: float, runs: int, workdir: Path, progress=print) -> dict:
    from perpwatch import warehouse
    from perpwatch.simulator.server import start

    sim = start(port=0, seed=7, now=NOW, latency_ms=latency_ms, limits_scale=1.0)
    file_s, lake_s, rows = Sample(), Sample(), {}
    try:
        for r in range(runs):
            base = workdir / f"lake-ingest-{r}"
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            f_env = _env(sim, base / "file", base / "unused", None)
            (base / "file").mkdir()
            file_s.add(_backfills([(f_env, VENUES)], days, assets, base))
            progress(f"  file, one process, {len(VENUES)} venues: {file_s.values[-1]:.1f}s")
            url = _new_lake()
            try:
                os.environ["PERPWATCH_DATA_PATH"] = str(base / "lakedata")
                warehouse.connect(url).close()          # initialise the catalog once, then the workers attach
                envs = []
                for i, venues in enumerate(SPLIT):
                    (base / f"w{i}").mkdir()
                    envs.append((_env(sim, base / f"w{i}", base / "lakedata", url), venues))
                lake_s.add(_backfills(envs, days, assets, base))
                progress(f"  lake, three workers: {lake_s.values[-1]:.1f}s")
                con = warehouse.connect(url, read_only=True)
                rows["lake"] = con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0] + \
                    con.execute("SELECT count(*) FROM staging.funding_rates").fetchone()[0]
                con.close()
                con = warehouse.connect(Path(f_env["PERPWATCH_DB"]), read_only=True)
                rows["file"] = con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0] + \
                    con.execute("SELECT count(*) FROM staging.funding_rates").fetchone()[0]
                con.close()
            finally:
                _drop(url)
    finally:
        sim.stop()
    return {"days": days, "assets": assets, "latency_ms": latency_ms, "file": file_s.as_dict(),
            "lake": lake_s.as_dict(), "ratio": lake_s.median / file_s.median, "oi_funding_rows": rows}


# --------------------------------------------------------------------------- (b) publish / read vs size

def _reader_wait(url: str) -> float:
    """What a BI reader waits for after a build committed: attach the latest snapshot, query it."""
    from perpwatch import warehouse

    t0 = time.perf_counter()
    con = warehouse.connect(url, read_only=True)
    con.execute("SELECT asset, max(ts), sum(oi_usd) FROM staging.open_interest "
                "WHERE ts >= (SELECT max(ts) FROM staging.open_interest) - INTERVAL 1 DAY GROUP BY 1").fetchall()
    con.close()
    return time.perf_counter() - t0


def publish_read(days: int, base_assets: int, factors: list[int], runs: int, workdir: Path, progress=print) -> dict:
    from perpwatch import warehouse
    from perpwatch.bench import gen_warehouse
    from perpwatch.warehouse import ops

    out = {}
    for k in factors:
        d = workdir / f"lake-publish-{k}x"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        db = d / "w.duckdb"
        con = warehouse.connect(db)
        rows = sum(gen_warehouse.generate(con, days, base_assets * k).values())
        con.close()
        pub = Sample()
        for _ in range(runs):
            t0 = time.perf_counter()
            warehouse.publish(db=db, serving=d / "serving.duckdb", exports=d / "exports")
            pub.add(time.perf_counter() - t0)
        url = _new_lake()
        try:
            os.environ["PERPWATCH_DATA_PATH"] = str(d / "lakedata")
            ops.migrate(db, url, say=lambda _m: None)       # the same warehouse in the lake (not timed)
            wait = Sample()
            for _ in range(runs):
                wait.add(_reader_wait(url))
        finally:
            _drop(url)
        out[f"{k}x"] = {"assets": base_assets * k, "staging_rows": rows, "file_publish": pub.as_dict(),
                        "serving_mb": (d / "serving.duckdb").stat().st_size / 1e6, "lake_reader_wait": wait.as_dict()}
        progress(f"  {k}x ({rows:,} staging rows): file publish {pub.fmt()}, lake reader wait {wait.fmt()}")
    lo, hi = f"{factors[0]}x", f"{factors[-1]}x"
    out["file_growth"] = out[hi]["file_publish"]["median"] / out[lo]["file_publish"]["median"]
    out["lake_growth"] = out[hi]["lake_reader_wait"]["median"] / out[lo]["lake_reader_wait"]["median"]
    return out


# --------------------------------------------------------------------------- (c) load rows/s

def load_rate(rows: int, runs: int, workdir: Path, progress=print) -> dict:
    from perpwatch import warehouse
    from perpwatch.bench.load_path import _ctx, _fetched
    from perpwatch.bench.payloads import oi_pages
    from perpwatch.ingest import pipeline

    pages = oi_pages(rows)
    fetched, ctx = _fetched(pages), _ctx(pages)
    out = {}
    for backend in ("file", "lake"):
        s = Sample()
        for r in range(runs):
            d = workdir / f"lake-load-{backend}-{r}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            url = _new_lake() if backend == "lake" else None
            os.environ["PERPWATCH_DATA_PATH"] = str(d / "lakedata")
            try:
                con = warehouse.connect(url or d / "w.duckdb")
                report = pipeline.RunReport(run_id=f"bench-{backend}-{r}", kind="bench")
                frames = pipeline.parse_all(con, report, fetched, ctx).frames["open_interest"]
                t0 = time.perf_counter()
                pipeline.load_table(con, report, "open_interest", frames)
                s.add(time.perf_counter() - t0)
                n = con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0]
                con.close()
                if n != rows:
                    raise RuntimeError(f"{backend}: loaded {n} rows of {rows}")
            finally:
                if url:
                    _drop(url)
        out[backend] = {"seconds": s.as_dict(), "rows_per_s": rows / s.median}
        progress(f"  {backend}: {rows:,} rows in {s.fmt()} = {rows / s.median:,.0f} rows/s")
    out["rows"] = rows
    out["lake_vs_file"] = out["lake"]["rows_per_s"] / out["file"]["rows_per_s"]
    return out


def run(cfg: dict, workdir: Path, progress=print) -> dict:
    res: dict = {"config": cfg}
    progress("  (a) concurrent ingest, 3 workers into the lake vs 1 process into the file")
    res["ingest"] = ingest(cfg["days"], cfg["assets"], cfg["latency_ms"], cfg["runs"], workdir, progress)
    progress("  (b) publish / reader wait vs warehouse size")
    res["publish"] = publish_read(cfg["pub_days"], cfg["pub_assets"], [1, 4], cfg["runs"], workdir, progress)
    progress("  (c) load rows/s, lake vs file")
    res["load"] = load_rate(cfg["load_rows"], cfg["runs"], workdir, progress)
    return res
