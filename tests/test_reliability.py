"""Crash safety (SIGKILL at random points) and two pipelines started together."""

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
from perpwatch.transforms import build_all

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


@pytest.mark.slow
def test_sigkill_at_random_points_then_recover(sim, tmp_path):
    clean = tmp_path / "clean.duckdb"
    r = subprocess.run(backfill_cmd(), env=cli_env(sim, clean), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    db = tmp_path / "crash.duckdb"
    rng = random.Random(11)
    kills = 0
    for _ in range(8):
        p = subprocess.Popen(backfill_cmd(), env=cli_env(sim, db), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(1.5, 6.0))     # imports take ~1.5 s; the run ~3 s: kills land in every phase
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
        assert_consistent(db)
    assert kills >= 4
    r = subprocess.run(backfill_cmd(), env=cli_env(sim, db), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_consistent(db)
    # rebuild both with the same transform code, then compare staging and marts
    for path in (clean, db):
        with warehouse.session(path) as con:
            build_all(con)
    expected = snapshot(clean)
    got = snapshot(db)
    for name, df in expected.items():
        assert got[name].equals(df), name


@pytest.mark.slow
def test_two_pipelines_started_together(sim, tmp_path):
    db = tmp_path / "both.duckdb"
    procs = [subprocess.Popen(backfill_cmd(), env=cli_env(sim, db), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
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
