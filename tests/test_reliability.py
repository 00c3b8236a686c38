"""Crash safety (SIGKILL at every phase checkpoint) and two pipelines started together."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from perpwatch import warehouse
from perpwatch.simulator.server import start

NOW = datetime(2026, 11, 20, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent
KEYS = {t.split(".", 1)[1]: k for t, k in warehouse.KEYS.items() if t.startswith("staging.")}


@pytest.fixture(scope="module")
def sim():
    s = start(port=0, seed=7, now=NOW)
    yield s
    s.stop()


def cli_env(sim, db: Path) -> dict:
    env = {**os.environ, **sim.env(), "PERPWATCH_DB": str(db), "PERPWATCH_PROVIDERS": "",
           "PERPWATCH_SERVING_DB": str(db.with_name(db.stem + "_serving.duckdb")),
           "PERPWATCH_EXPORTS": str(db.parent / f"{db.stem}_exports")}
    return env


def backfill_cmd(days: int = 3) -> list[str]:
    start = (NOW - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return [sys.executable, "-m", "perpwatch", "backfill", "--no-prefect", "--venues", "binance",
            "--assets", "BTC,SOL", "--start", start, "--end", NOW.isoformat()]


def snapshot(db: Path) -> dict[str, pl.DataFrame]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for t in ("prices", "open_interest", "funding_rates", "long_short_ratio"):
            df = con.sql(f"SELECT * EXCLUDE (raw_id, ingested_at) FROM staging.{t}").pl()
            out[t] = df.sort(df.columns)
        df = con.sql("SELECT * FROM marts.daily_signals").pl()
        out["daily_signals"] = df.sort(["date", "asset"])
        return out
    finally:
        con.close()


def assert_consistent(db: Path) -> None:
    con = duckdb.connect(str(db), read_only=True)
    try:
        for t, key in KEYS.items():
            cols = ", ".join(f'"{k}"' for k in key)
            dup = con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM staging.{t} GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
            assert dup == 0, f"duplicate keys in staging.{t}"
        # no watermark ahead of its data
        ahead = con.execute("""
            SELECT w.dataset, w.instrument, w.last_ts, d.max_ts FROM meta.watermarks w
            LEFT JOIN (
                SELECT 'prices/' || kind AS dataset, instrument, max(ts) AS max_ts FROM staging.prices GROUP BY ALL
                UNION ALL SELECT 'open_interest', instrument, max(ts) FROM staging.open_interest GROUP BY ALL
                UNION ALL SELECT 'funding_rates', instrument, max(funding_time) FROM staging.funding_rates GROUP BY ALL
                UNION ALL SELECT 'long_short_ratio/' || population, instrument, max(ts) FROM staging.long_short_ratio GROUP BY ALL
            ) d USING (dataset, instrument)
            WHERE d.max_ts IS NULL OR w.last_ts > d.max_ts""").fetchall()
        assert ahead == [], f"watermarks ahead of data: {ahead}"
    finally:
        con.close()


PHASES = ("extract", "load", "build", "publish")     # perpwatch/core/phases.py checkpoints of a backfill


def wait_for_phase(p: subprocess.Popen, log: Path, phase: str, timeout: float = 180.0) -> bool:
    """Block until process p has written `<pid> <phase>` to the phase log (True) or has exited (False).
    Polls the file the process appends to: an event, not a guess at how long a phase takes."""
    want = f"{p.pid} {phase}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and want in log.read_text().splitlines():
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError(f"phase {phase} not reached in {timeout:.0f}s")


def assert_serving_readable(db: Path) -> None:
    """After a kill (during publish too): the serving snapshot published before is still a complete
    database (old or new, never half-built) and every export a complete Parquet file (os.replace swaps)."""
    serving = db.with_name(db.stem + "_serving.duckdb")
    con = duckdb.connect(str(serving), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM marts.daily_signals").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM staging.prices").fetchone()[0] > 0
    finally:
        con.close()
    # exports are partitioned by month (exports/<mart>/year=YYYY/month=MM/data.parquet), each swapped in whole
    files = list((db.parent / f"{db.stem}_exports").glob("**/*.parquet"))
    signals = [f for f in files if f.relative_to(db.parent / f"{db.stem}_exports").parts[0] == "daily_signals"]
    assert signals and sum(pl.read_parquet(f).height for f in signals) > 0
    for f in files:
        assert pl.read_parquet(f).height >= 0, f


@pytest.mark.slow
def test_sigkill_at_every_phase_then_recover(sim, tmp_path):
    """After one published day, a 3-day backfill SIGKILLed twice in each phase (extraction, load, build,
    publish: the moment the phase starts, then a random 0-0.3 s into it) leaves a consistent warehouse
    and a complete serving snapshot and exports each time; the next run completes and staging, marts (as built, not rebuilt) and the exported marts
    equal a clean run's."""
    clean = tmp_path / "clean.duckdb"
    r = subprocess.run(backfill_cmd(), env=cli_env(sim, clean), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    db = tmp_path / "crash.duckdb"
    r = subprocess.run(backfill_cmd(days=1), env=cli_env(sim, db), cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr              # a first day published: the snapshot kills must not break
    log = tmp_path / "phases.log"
    rng = random.Random(11)
    killed: dict[str, int] = {}
    for i, phase in enumerate(PHASES * 2):
        log.unlink(missing_ok=True)
        p = subprocess.Popen(backfill_cmd(), env={**cli_env(sim, db), "PERPWATCH_PHASE_LOG": str(log)}, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            assert wait_for_phase(p, log, phase), f"run exited before {phase}"
            if i >= len(PHASES):
                time.sleep(rng.uniform(0.0, 0.3))       # a little way into the phase
            assert p.poll() is None, f"run finished before the kill in {phase}"
            os.killpg(p.pid, signal.SIGKILL)
        finally:
            p.wait(timeout=60)
        assert p.returncode == -signal.SIGKILL
        killed[phase] = killed.get(phase, 0) + 1
        assert_consistent(db)
        assert_serving_readable(db)
    assert killed == dict.fromkeys(PHASES, 2)
    r = subprocess.run(backfill_cmd(), env=cli_env(sim, db), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_consistent(db)
    expected, got = snapshot(clean), snapshot(db)
    for name, df in expected.items():
        assert got[name].equals(df), name
    # exports/<mart>/year=YYYY/month=MM/data.parquet: compared partition by partition
    exports = {d: {str(f.relative_to(d.parent / f"{d.stem}_exports")): pl.read_parquet(f)
                   for f in (d.parent / f"{d.stem}_exports").glob("**/*.parquet")} for d in (clean, db)}
    assert set(exports[clean]) == set(exports[db])
    assert any(k.startswith("daily_signals/") for k in exports[db]), sorted(exports[db])
    for name, df in exports[clean].items():
        other = exports[db][name]
        assert df.sort(df.columns, nulls_last=True).equals(other.sort(other.columns, nulls_last=True)), name


@pytest.mark.slow
def test_two_pipelines_started_together(sim, tmp_path):
    db = tmp_path / "both.duckdb"
    log = tmp_path / "phases.log"
    procs = [subprocess.Popen(backfill_cmd(), env={**cli_env(sim, db), "PERPWATCH_PHASE_LOG": str(log)}, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    # one runs, the other waits for the write lock and then runs (finding everything loaded)
    assert codes == [0, 0], [o[1][-500:] for o in outs]
    assert_consistent(db)
    con = duckdb.connect(str(db), read_only=True)
    runs = con.execute("SELECT status, rows_loaded FROM meta.runs WHERE kind='backfill' ORDER BY started_at").fetchall()
    con.close()
    assert [s for s, _ in runs] == ["success", "success"]
    assert runs[1][1] == 0          # the second found nothing new to load
    waits = [line.split()[0] for line in log.read_text().splitlines() if line.endswith(" lock-wait")]
    assert waits and set(waits) <= {str(p.pid) for p in procs}     # one of them waited for the write lock


def test_lock_wait_gives_a_clear_message(tmp_path):
    db = tmp_path / "locked.duckdb"
    holder = subprocess.Popen([sys.executable, "-c",
                               f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('ok', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(warehouse.WarehouseLocked, match="locked by another process"):
            warehouse.connect(db, wait_s=1.0)
    finally:
        holder.kill()
        holder.wait()
