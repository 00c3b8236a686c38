"""Timing, memory and machine facts shared by the benchmark workloads."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sample:
    """Repeated measurements of one thing (seconds, or any unit)."""

    values: list[float] = field(default_factory=list)

    def add(self, v: float) -> None:
        self.values.append(float(v))

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else float("nan")

    def fmt(self, unit: str = "s", digits: int = 2) -> str:
        if not self.values:
            return "n/a"
        if len(self.values) == 1:
            return f"{self.median:.{digits}f} {unit} (1 run)"
        return f"{self.median:.{digits}f} {unit} ({self.lo:.{digits}f}–{self.hi:.{digits}f}, n={len(self.values)})"

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.lo, "max": self.hi, "runs": self.values}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (getrusage ru_maxrss: KiB on Linux, = VmHWM), MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in psutil.getloadavg())
    except (OSError, AttributeError):
        return "?"


def machine() -> dict:
    import duckdb
    import polars as pl
    import pyarrow as pa

    mem = f"{psutil.virtual_memory().total / 1024 ** 3:.1f} GiB"
    versions = {"python": platform.python_version(), "duckdb": duckdb.__version__, "polars": pl.__version__,
                "pyarrow": pa.__version__}
    for mod in ("prefect", "great_expectations", "orjson", "requests"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = "?"
    return {"cores": os.cpu_count(), "memory": mem, "platform": platform.platform(), "versions": versions,
            "loadavg": loadavg(), "fresh_memory": fresh_memory(), "cpu": cpu_reference()}


def _python_loop() -> None:
    s = 0
    for i in range(5_000_000):
        s += i


def _duckdb_agg(con) -> None:
    con.execute("SELECT sum(i % 7), count(DISTINCT i % 100003) FROM range(20000000) r(i)").fetchall()


def cpu_reference() -> dict:
    """The CPU model and three fixed single-threaded workloads (best of 3 each), so runs on different machines
    can be compared: the absolute targets depend on the machine, and the machines a session gets differ."""
    import duckdb
    import numpy as np

    model = "?"
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "?")
    except OSError:
        pass
    x = np.random.default_rng(0).random(10_000_000)
    con = duckdb.connect()
    con.execute("SET threads=1")

    def numpy_sort() -> None:
        np.sort(x)

    out: dict = {"model": model}
    for name, fn in (("python_loop_5m_s", _python_loop), ("numpy_sort_10m_s", numpy_sort),
                     ("duckdb_agg_20m_s", lambda: _duckdb_agg(con))):
        out[name] = min(timed(fn)[0] for _ in range(3))
    con.close()
    return out


def host_speed() -> dict:
    """How fast this machine runs fixed single-threaded work right now: medians of 5 of the Python loop and the
    DuckDB aggregate of `cpu_reference` (medians, not its best of 3: a contended host shows in the typical run).
    Read at the start and after every workload, so the report can say how far the machine's speed moved during
    the run: on a shared VM the same build has taken from 61 s to 94 s with the code unchanged."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads=1")
    out: dict = {}
    for name, fn in (("python_loop_5m_s", _python_loop), ("duckdb_agg_20m_s", lambda: _duckdb_agg(con))):
        out[name] = statistics.median([timed(fn)[0] for _ in range(5)])
    con.close()
    return out


def fresh_memory(gib: float = 1.0, pause_s: float = 3.0) -> dict:
    """Seconds to write `gib` GiB of memory the process just got from the kernel, then to write it again:
    what a build pays for each GiB of peak memory (page faults, and on a VM whatever backs its memory).
    Then the same after handing it back and `pause_s` seconds of waiting: on a VM whose balloon reports free
    pages to the host (free_page_reporting), the host has taken them back by then and the cost returns."""
    import numpy as np

    n = int(gib * 1024 ** 3 // 8)

    def write_fresh() -> tuple[float, float, float]:
        """(wall, system CPU) of the first write of n fresh floats, and the wall of writing them again."""
        ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        a = np.empty(n)
        a.fill(1.0)
        t1 = time.perf_counter()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        a.fill(2.0)
        return t1 - t0, ru1.ru_stime - ru0.ru_stime, time.perf_counter() - t1

    first_s, first_sys_s, again_s = write_fresh()
    time.sleep(pause_s)
    after_s, after_sys_s, _ = write_fresh()
    return {"gib": gib, "first_s": first_s, "first_sys_s": first_sys_s, "again_s": again_s,
            "pause_s": pause_s, "after_pause_s": after_s, "after_pause_sys_s": after_sys_s,
            "page_reporting": free_page_reporting()}


def free_page_reporting(devices: Path = Path("/sys/bus/virtio/devices")) -> bool | None:
    """Whether this VM's virtio balloon reports free pages to the host (VIRTIO_BALLOON_F_REPORTING, feature
    bit 5 of the device's `features` bit string): memory the guest frees goes back to the host, and whoever
    takes it next pays its first touch again. None: no virtio balloon (bare metal, or not a virtio VM)."""
    for dev in sorted(devices.glob("*")) if devices.is_dir() else []:
        try:
            if (dev / "device").read_text().strip() != "0x0005":    # virtio device id 5: the memory balloon
                continue
            bits = (dev / "features").read_text().strip()
        except OSError:
            continue
        return len(bits) > 5 and bits[5] == "1"
    return None


def run_child(args: list[str], env: dict | None = None, timeout: float = 1800, cwd: Path = ROOT) -> dict:
    """Run a child process; return its wall time, exit code, peak RSS (its own rusage) and output."""
    # Launched through a tiny Python that only waits for it: on Linux a forked child's ru_maxrss
    # starts at the forking process's high-water mark, so forking from this (big) process would
    # report our peak, not the child's. The launcher's own footprint (~10 MB) is the floor instead.
    args = [sys.executable, "-c", _LAUNCHER, *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    # wait4 gives this child's own rusage (max RSS of it and the descendants it waited for)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    import threading

    def pump(src, dst):
        for chunk in iter(lambda: src.read(65536), b""):
            dst.append(chunk)

    threads = [threading.Thread(target=pump, args=(proc.stdout, out_chunks), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err_chunks), daemon=True)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    for t in threads:
        t.join(timeout=5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = b"".join(err_chunks).decode("utf-8", "replace")
    peak = usage.ru_maxrss / 1024
    lines = stderr.rstrip().splitlines()
    if lines and lines[-1].startswith("__child_maxrss_kb="):
        peak = int(lines[-1].split("=", 1)[1]) / 1024
        stderr = "\n".join(lines[:-1])
    return {"wall_s": wall, "returncode": proc.returncode, "peak_rss_mb": peak,
            "stdout": b"".join(out_chunks).decode("utf-8", "replace"), "stderr": stderr}


_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "sys.stderr.write('\\n__child_maxrss_kb=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n")


def child_json(module: str, payload: dict, python: str = sys.executable, env: dict | None = None,
               timeout: float = 1800) -> dict:
    """Run `python -m module '<json>'` and parse the last stdout line as JSON (plus wall/peak RSS)."""
    res = run_child([python, "-m", module, json.dumps(payload, default=str)], env=env, timeout=timeout)
    if res["returncode"] != 0:
        raise RuntimeError(f"{module} failed (exit {res['returncode']}):\n{res['stderr'][-3000:]}")
    lines = [ln for ln in res["stdout"].splitlines() if ln.strip()]
    out = json.loads(lines[-1])
    out.setdefault("_wall_s", res["wall_s"])
    out.setdefault("_peak_rss_mb", res["peak_rss_mb"])
    return out
