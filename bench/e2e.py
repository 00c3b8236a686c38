"""Workload 4 — end to end: `make demo`'s pipeline part (`python -m perpwatch.demo`, after install) in a
fresh process with a fresh warehouse and a fresh PREFECT_HOME; Prefect and GX start-up costs apart."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from perpwatch.bench.common import Sample, run_child

QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
         "PREFECT_TASKS_DEFAULT_NO_CACHE": "true", "DO_NOT_TRACK": "1"}


def _probe(kind: str, env: dict) -> dict:
    res = run_child([sys.executable, "-m", "perpwatch.bench.startup_probe", kind], env=env, timeout=600)
    if res["returncode"] != 0:
        raise RuntimeError(f"startup probe {kind} failed:\n{res['stderr'][-2000:]}")
    out = json.loads(res["stdout"].strip().splitlines()[-1])
    out["process_s"] = res["wall_s"]
    out["peak_rss_mb"] = res["peak_rss_mb"]
    return out


def run(runs: int, demo: bool = True, progress=print) -> dict:
    out: dict = {"demo": [], "prefect": [], "gx": []}
    for r in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix="pw-bench-e2e-"))
        try:
            env = {**QUIET, "PREFECT_HOME": str(tmp / "prefect"), "PERPWATCH_DB": str(tmp / "perpwatch.duckdb"),
                   "PERPWATCH_SERVING_DB": str(tmp / "serving.duckdb"), "PERPWATCH_EXPORTS": str(tmp / "exports")}
            if demo:
                res = run_child([sys.executable, "-m", "perpwatch.demo"], env=env, timeout=900)
                ok = res["returncode"] == 0
                out["demo"].append({"wall_s": res["wall_s"], "peak_rss_mb": res["peak_rss_mb"], "ok": ok,
                                    "tail": (res["stdout"] + res["stderr"])[-600:] if not ok else ""})
                progress(f"  run {r + 1}/{runs} demo: {res['wall_s']:.1f}s, peak RSS {res['peak_rss_mb']:.0f} MB, "
                         f"exit {res['returncode']}")
            out["prefect"].append(_probe("prefect", {**env, "PREFECT_HOME": str(tmp / "prefect-probe")}))
            out["gx"].append(_probe("gx", env))
            progress(f"  run {r + 1}/{runs} prefect: import {out['prefect'][-1]['import_s']:.1f}s, first flow "
                     f"{out['prefect'][-1]['first_flow_s']:.1f}s; gx: import {out['gx'][-1]['import_s']:.1f}s, "
                     f"context {out['gx'][-1]['context_s']:.2f}s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if out["demo"]:
        out["demo_wall"] = Sample([d["wall_s"] for d in out["demo"]]).as_dict()
        out["demo_rss"] = Sample([d["peak_rss_mb"] for d in out["demo"]]).as_dict()
    return out
