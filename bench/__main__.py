"""`make bench`: benchmarks against the alternatives and the physical limits (GitHub issue 8).

    python -m perpwatch.bench [--size tiny|medium|full] [--only load,marts,extract,e2e,lake] [--out BENCHMARKS.md]

Five workloads, each with its baseline in the same invocation (medians of several runs, min–max):
load path (vs dlt merge, a row-at-a-time executemany loader and DuckDB's Arrow ingest ceiling), marts
at scale (generated warehouse, 1x/2x/4x, daily incremental pass), extraction against the rate limits
(vs a sequential sleep-on-429 loop and the floor the limits allow), end to end (`make demo`, Prefect
and Great Expectations start-up), and the DuckLake scale-out (`bench/lake.py`: 3 workers into the lake vs
one process into the file, reader wait vs warehouse size, load rows/s; needs PostgreSQL). Writes the report to BENCHMARKS.md (full) or --out; raw numbers to
data/bench/results-<size>.json. dlt runs only in a separate venv (.bench-venv, created on demand).
A benchmark is not a test: tests/test_bench_smoke.py only checks that `--size tiny` runs and is sane.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {
    "full": {
        "load": {"rows": 1_000_000, "runs": 3, "dlt_rows": {"dict": 200_000, "arrow": 1_000_000}, "em_rows": 5_000},
        "marts": {"days": 1825, "assets": [50, 100, 200], "runs": 2, "heatmap_probe": (90, 4), "heatmap_at_scale": True},
        "extract": {"n": 200, "runs": 3, "latency_ms": 50.0, "limits_scale": 0.25, "window_scale": 0.05},
        "e2e": {"runs": 3, "demo": True},
        "lake": {"days": 30, "assets": ["BTC", "ETH", "SOL"], "latency_ms": 50.0, "runs": 2,
                 "pub_days": 365, "pub_assets": 25, "load_rows": 1_000_000},
        "publish": {"days": 365, "assets": 20, "runs": 5},
    },
    # the lake workload at the ingest size in ~5 minutes (one run each, smaller (b)/(c));
    # the other workloads as tiny
    "medium": {
        "load": {"rows": 10_000, "runs": 1, "dlt_rows": None, "em_rows": 500},
        "marts": {"days": 20, "assets": [1, 2, 4], "runs": 1, "heatmap_probe": (10, 1), "heatmap_at_scale": True},
        "extract": {"n": 3, "runs": 1, "latency_ms": 50.0, "limits_scale": 0.01, "window_scale": 0.01},
        "e2e": {"runs": 1, "demo": False},
        "lake": {"days": 30, "assets": ["BTC", "ETH", "SOL"], "latency_ms": 50.0, "runs": 1,
                 "pub_days": 120, "pub_assets": 6, "load_rows": 200_000},
    },
    "tiny": {
        "load": {"rows": 10_000, "runs": 1, "dlt_rows": None, "em_rows": 500},
        "marts": {"days": 20, "assets": [1, 2, 4], "runs": 1, "heatmap_probe": (10, 1), "heatmap_at_scale": True},
        "extract": {"n": 3, "runs": 1, "latency_ms": 50.0, "limits_scale": 0.01, "window_scale": 0.01},
        "e2e": {"runs": 1, "demo": False},
        "lake": {"days": 2, "assets": ["BTC"], "latency_ms": 50.0, "runs": 1,
                 "pub_days": 30, "pub_assets": 2, "load_rows": 20_000},
        "publish": {"days": 30, "assets": 2, "runs": 2},
    },
}
WORKLOADS = ("load", "marts", "extract", "e2e", "lake", "publish")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perpwatch.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma separated subset of " + ",".join(WORKLOADS))
    ap.add_argument("--out", default=None, help="report path (default: BENCHMARKS.md for full, data/bench/BENCHMARKS-<size>.md)")
    ap.add_argument("--workdir", default=str(ROOT / "data" / "bench"))
    ap.add_argument("--dlt", action="store_true", help="run the dlt baseline at --size tiny too")
    ap.add_argument("--runs", type=int, default=None, help="override the number of runs of every workload")
    ap.add_argument("--render", default=None, metavar="RESULTS_JSON",
                    help="only re-render the report from a results-<size>.json of an earlier run")
    a = ap.parse_args(argv)
    if a.render:
        from perpwatch.bench import report

        results = json.loads(Path(a.render).read_text())
        out = Path(a.out) if a.out else (ROOT / "BENCHMARKS.md" if results["size"] == "full"
                                         else Path(a.render).with_name(f"BENCHMARKS-{results['size']}.md"))
        out.write_text(report.render(results))
        print(f"wrote {out} from {a.render}")
        return 0
    only = [w.strip() for w in a.only.split(",") if w.strip()]
    bad = [w for w in only if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workloads {bad}; choose from {WORKLOADS}")
    os.chdir(ROOT)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from perpwatch.bench import report
    from perpwatch.bench.common import host_speed, loadavg, machine

    cfg = json.loads(json.dumps(SIZES[a.size]))
    if a.size == "tiny" and a.dlt:
        cfg["load"]["dlt_rows"] = 2_000
    if a.runs:
        for w in cfg.values():
            w["runs"] = a.runs
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say = lambda m: print(m, flush=True)  # noqa: E731
    info = machine()
    say(f"perpwatch bench --size {a.size}: {info['cores']} cores, {info['memory']}, load average {info['loadavg']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    results: dict = {"size": a.size, "config": cfg, "machine": info, "started": datetime.now(UTC).isoformat(),
                     "command": "python -m perpwatch.bench " + " ".join(argv if argv is not None else sys.argv[1:])}
    results["host_speed"] = {"start": host_speed()}
    t_all = time.perf_counter()
    out = Path(a.out) if a.out else (ROOT / "BENCHMARKS.md" if a.size == "full" else workdir / f"BENCHMARKS-{a.size}.md")
    res_path = workdir / f"results-{a.size}.json"
    previous = {}
    if set(only) != set(WORKLOADS) and res_path.exists():     # re-running some workloads: keep the others
        previous = json.loads(res_path.read_text())
        for w in WORKLOADS:
            if w not in only and w in previous:
                results[w] = previous[w]
                results.setdefault("seconds", {})[w] = previous.get("seconds", {}).get(w, 0)
                results.setdefault("loadavg_after", {})[w] = previous.get("loadavg_after", {}).get(w, "?")
                if w in previous.get("host_speed", {}):
                    results["host_speed"][w] = previous["host_speed"][w]
                results.setdefault("from_earlier_run", {})[w] = previous.get("started")
    for w in only:
        t0 = time.perf_counter()
        say(f"== {w}")
        c = cfg[w]
        if w == "load":
            from perpwatch.bench import load_path

            res = load_path.run(c["rows"], c["runs"], workdir, c["dlt_rows"], c["em_rows"], progress=say)
            results["load"] = {"raw": res, "summary": load_path.summarise(res)}
        elif w == "marts":
            from perpwatch.bench import marts

            results["marts"] = marts.run(c["days"], c["assets"], c["runs"], workdir, tuple(c["heatmap_probe"]),
                                         c["heatmap_at_scale"], progress=say)
        elif w == "extract":
            from perpwatch.bench import extract

            results["extract"] = extract.run(c["n"], c["runs"], c["latency_ms"], c["limits_scale"], c["window_scale"],
                                             workdir, progress=say)
        elif w == "publish":
            from perpwatch.bench import publish

            results["publish"] = publish.run(c["days"], c["assets"], c["runs"], workdir, progress=say)
        elif w == "e2e":
            from perpwatch.bench import e2e

            results["e2e"] = e2e.run(c["runs"], c["demo"], progress=say)
        elif w == "lake":
            from perpwatch.bench import lake

            results["lake"] = lake.run(c, workdir, progress=say)
        if isinstance(results.get(w), dict):
            results[w]["rss_method"] = "own"     # child peak RSS measured through the launcher (bench.common)
        results.setdefault("seconds", {})[w] = time.perf_counter() - t0
        results.setdefault("loadavg_after", {})[w] = loadavg()
        results["host_speed"][w] = host_speed()
        results["total_s"] = sum(results["seconds"].values())
        res_path.write_text(json.dumps(results, indent=1, default=str))    # a killed run keeps what it has
    results["total_s"] = sum(results.get("seconds", {}).values())
    results["finished"] = datetime.now(UTC).isoformat()
    res_path.write_text(json.dumps(results, indent=1, default=str))
    out.write_text(report.render(results))
    say(f"wrote {out} and {res_path} in {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
