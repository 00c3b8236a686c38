"""Workload — publish what changed: publish time after a daily incremental build at 1x and 4x history.

For each history length: a generated warehouse (bench/gen_warehouse.py), every mart built, published twice
(the two serving copies exist), then one more day landed, `transforms.build_incremental` from that day and
the timed publish (serving copy brought up to date in place + the exports' changed months). The first full
publish is timed too, as the cost publishing had before (everything rewritten)."""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

from perpwatch.bench.common import Sample
from perpwatch.bench.gen_warehouse import END, append_day, generate


def _one(workdir: Path, days: int, assets: int, runs: int, progress) -> dict:
    from perpwatch import transforms, warehouse

    d = workdir / f"publish_{days}d_{assets}a"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    db, serving, exports = d / "w.duckdb", d / "serving.duckdb", d / "exports"
    t0 = time.perf_counter()
    with warehouse.session(db) as con:
        generate(con, days, assets, end=END - timedelta(days=runs))
        transforms.build_all(con, now=END)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    warehouse.publish(db=db, serving=serving, exports=exports)
    full = time.perf_counter() - t0
    warehouse.publish(db=db, serving=serving, exports=exports)
    s, modes = Sample(), []
    for r in range(runs):
        day = END - timedelta(days=runs - 1 - r)
        with warehouse.session(db) as con:
            append_day(con, day)
            transforms.build_incremental(con, day.date(), now=day + timedelta(hours=25))
        t0 = time.perf_counter()
        got = warehouse.publish(db=db, serving=serving, exports=exports)
        s.add(time.perf_counter() - t0)
        modes.append(got["serving_mode"])
    size = sum(p.stat().st_size for p in d.glob("serving.duckdb.*"))
    progress(f"  publish {days}d x {assets} assets: first full {full:.2f}s, after a daily build {s.fmt()} "
             f"({', '.join(sorted(set(modes)))})")
    shutil.rmtree(d, ignore_errors=True)
    return {"days": days, "assets": assets, "setup_s": setup, "full_s": full, "incremental": s.as_dict(),
            "modes": modes, "serving_bytes": size}


def run(days: int, assets: int, runs: int, workdir: Path, progress=print) -> dict:
    return {"1x": _one(workdir, days, assets, runs, progress), "4x": _one(workdir, 4 * days, assets, runs, progress)}
