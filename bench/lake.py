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

import math
import os
import resource
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


def _backfills(envs_venues: list[tuple[dict, list[str]]], days: int, assets: list[str], logdir: Path,
               tag: str = "ingest") -> tuple[float, list[float], float]:
    """Start every backfill at once; (wall seconds until the last one finished, each process's wall,
    CPU seconds (user + system) the processes used). Each must succeed."""
    start = NOW - timedelta(days=days)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    procs = []
    for i, (env, venues) in enumerate(envs_venues):
        log = open(logdir / f"{tag}-{i}.log", "wb")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "perpwatch", "backfill", "--no-prefect", "--no-build", "--start", start.isoformat(),
             "--end", NOW.isoformat(), "--venues", ",".join(venues), "--assets", ",".join(assets)],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    walls: list[float | None] = [None] * len(procs)
    while any(w is None for w in walls):
        for i, (p, _) in enumerate(procs):
            if walls[i] is None and p.poll() is not None:
                walls[i] = time.perf_counter() - t0
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _, log in procs:
        log.close()
    bad = [i for i, (p, _) in enumerate(procs) if p.returncode != 0]
    if bad:
        raise RuntimeError(f"bench ingest failed in {bad}; see {logdir}/{tag}-*.log")
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return wall, [float(w) for w in walls], cpu


def rate_floor(db: Path) -> dict:
    """The wall time no split of the work can go under on one host: OKX's rubik/market endpoints allow
    N requests per 2 s per IP (sources/okx.py LIMITS; the client keeps 80% of it, `Budget`), a sliding
    window, so n requests of one endpoint need at least (ceil(n / capacity) - 1) x window seconds.
    Counted from the requests the one-process run actually made (raw.payloads)."""
    from perpwatch import warehouse
    from perpwatch.sources import okx

    con = warehouse.connect(db, read_only=True)
    try:
        counts = dict(con.execute("SELECT endpoint, count(*) FROM raw.payloads WHERE source = 'okx' "
                                  "GROUP BY 1").fetchall())
    finally:
        con.close()
    client = okx.make_client(None)
    client.session.close()
    per = {ep: ((math.ceil(n / b.capacity) - 1) * b.window_s, n, b.capacity, b.window_s)
           for ep, n in counts.items() if (b := client.budgets.get(ep)) is not None}
    if not per:
        return {"venue": "okx", "floor_s": 0.0}
    ep = max(per, key=lambda k: per[k][0])
    floor, n, cap, window = per[ep]
    return {"venue": "okx", "endpoint": ep, "requests": n, "capacity": cap, "window_s": window, "floor_s": floor}


def ingest(days: int, assets: list[str], latency_ms: float, runs: int, workdir: Path, progress=print) -> dict:
    """(a): one process into the file (all six venues, 8 extraction threads as always) vs three worker
    processes into the lake (two venues each, 8 threads each); plus, same run, the worker that has OKX
    alone into a fresh lake (what the split could reach without the other two workers sharing the
    2 cores) and OKX's rate-limit floor (rate_floor)."""
    from perpwatch import warehouse
    from perpwatch.simulator.server import start

    sim = start(port=0, seed=7, now=NOW, latency_ms=latency_ms, limits_scale=1.0)
    file_s, lake_s, alone_s, rows = Sample(), Sample(), Sample(), {}
    workers: list[list[float]] = []
    cpu = {"file": Sample(), "lake": Sample()}
    floor: dict = {}
    commits: dict = {}
    okx_worker = next(i for i, v in enumerate(SPLIT) if "okx" in v)
    try:
        for r in range(runs):
            base = workdir / f"lake-ingest-{r}"
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            f_env = _env(sim, base / "file", base / "unused", None)
            (base / "file").mkdir()
            wall, _, c = _backfills([(f_env, VENUES)], days, assets, base, "file")
            file_s.add(wall)
            cpu["file"].add(c)
            progress(f"  file, one process, {len(VENUES)} venues: {wall:.1f}s ({c:.0f} CPU-s)")
            floor = rate_floor(Path(f_env["PERPWATCH_DB"]))
            for phase in ("lake", "alone"):
                url = _new_lake()
                try:
                    data = base / f"lakedata-{phase}"
                    os.environ["PERPWATCH_DATA_PATH"] = str(data)
                    warehouse.connect(url).close()      # initialise the catalog once, then the workers attach
                    envs = []
                    for i, venues in enumerate(SPLIT):
                        if phase == "alone" and i != okx_worker:
                            continue
                        (base / f"{phase}{i}").mkdir()
                        envs.append((_env(sim, base / f"{phase}{i}", data, url), venues))
                    wall, per, c = _backfills(envs, days, assets, base, phase)
                    if phase == "alone":
                        alone_s.add(wall)
                        progress(f"  lake, the worker with {'+'.join(SPLIT[okx_worker])} alone: {wall:.1f}s")
                        continue
                    lake_s.add(wall)
                    cpu["lake"].add(c)
                    workers.append(per)
                    progress(f"  lake, three workers: {wall:.1f}s ({c:.0f} CPU-s; workers "
                             + ", ".join(f"{'+'.join(v)} {w:.1f}s" for v, w in zip(SPLIT, per, strict=True)) + ")")
                    con = warehouse.connect(url, read_only=True)
                    rows["lake"] = con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0] + \
                        con.execute("SELECT count(*) FROM staging.funding_rates").fetchone()[0]
                    commits = {"snapshots": con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0],
                               "payloads": con.execute("SELECT count(*) FROM raw.payloads").fetchone()[0]}
                    con.close()
                finally:
                    _drop(url)
            con = warehouse.connect(Path(f_env["PERPWATCH_DB"]), read_only=True)
            rows["file"] = con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0] + \
                con.execute("SELECT count(*) FROM staging.funding_rates").fetchone()[0]
            con.close()
    finally:
        sim.stop()
    return {"days": days, "assets": assets, "latency_ms": latency_ms, "file": file_s.as_dict(),
            "lake": lake_s.as_dict(), "ratio": lake_s.median / file_s.median, "oi_funding_rows": rows,
            "split": SPLIT, "workers": workers, "okx_worker_alone": alone_s.as_dict(),
            "ratio_alone": alone_s.median / file_s.median, "rate_floor": floor,
            "ratio_floor": floor.get("floor_s", 0.0) / file_s.median,
            "cpu_s": {k: v.as_dict() for k, v in cpu.items()}, "cores": os.cpu_count(), "lake_commits": commits}


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
