"""One timed mart build in a fresh process: `python -m perpwatch.bench.marts_child '<json>'` prints one JSON line.

args: db, mode ("full" | "incremental"), since (ISO date, incremental), marts_dir (optional copy of
transforms/marts with opt-in headers), memory_limit, threads, skip (marts replaced by empty stand-ins).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import date
from pathlib import Path


def main() -> None:
    a = json.loads(sys.argv[1])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import polars as pl

    from perpwatch import transforms, warehouse
    from perpwatch.bench.common import peak_rss_mb

    if a.get("marts_dir"):
        transforms.HERE = Path(a["marts_dir"])
    con = warehouse.connect(a["db"])
    con.execute(f"SET memory_limit='{a.get('memory_limit', '12GB')}'; SET threads={int(a.get('threads', 2))}")
    skip = set(a.get("skip") or [])
    if skip:
        from perpwatch.transforms.heatmap import CLUSTER_SCHEMA, OUTPUT_SCHEMA

        stand_in = {"marts.liquidation_heatmap": OUTPUT_SCHEMA, "marts.daily_heatmap_clusters": CLUSTER_SCHEMA}
        for name in skip:
            con.register("__empty", pl.DataFrame(schema=stand_in[name]).to_arrow())
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM __empty")
            con.unregister("__empty")
    models = transforms.discover()
    only = [n for n in transforms.order(models) if n not in skip]
    workers = transforms.build_workers(con)   # marts build_all runs at once (the stand-in path: one at a time)
    plan = None
    ru0 = resource.getrusage(resource.RUSAGE_SELF)   # the build's CPU on every core: the delta around it
    t0 = time.perf_counter()
    if a["mode"] == "full":
        if skip:   # build_all(only=...) also builds what `only` needs; the stand-ins must stay as they are
            timings = {n: transforms._build_model(con, n, models[n]) for n in only}
            warehouse.apply_comments(con)
        else:
            timings = transforms.build_all(con)
    else:
        since = date.fromisoformat(a["since"])
        plan = transforms.incremental_plan(con, since, models)
        plan.pop("__need__")
        plan = {k: {"mode": v["mode"], "reason": v.get("reason", ""), "lookback": v.get("lookback")} for k, v in plan.items()}
        timings = transforms.build_incremental(con, since, only=only)
    total = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rows = {n: con.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in only}
    con.close()
    from perpwatch.transforms import heatmap

    print(json.dumps({"total_s": total, "timings": timings, "rows": rows, "peak_rss_mb": peak_rss_mb(), "plan": plan,
                      "cpu_s": {"user": ru.ru_utime - ru0.ru_utime, "sys": ru.ru_stime - ru0.ru_stime},
                      "heatmap_stages": dict(heatmap.STAGES),
                      "build_workers": workers}))


if __name__ == "__main__":
    main()
