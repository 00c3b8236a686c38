"""The lake end to end, on a real PostgreSQL (one random database per test, dropped at the end) and the
simulator with its clock frozen at NOW:

- the same window loaded by one process into the DuckDB file and by three worker processes at once
  into the lake (different venues, plus one stream — binance — loaded by two workers) gives
  byte-identical staging (ordered CSV exports without the provenance columns raw_id, ingested_at,
  as_of, as in tests/test_one_path.py) and marts equal to 1e-9;
- a reader process queries the marts in a loop during those concurrent loads and builds: it never
  errors and never sees a half-built mart (every count it saw is the count the mart had in the very
  snapshot that (re)created it);
- two builds started together on the lake serialise through the `build` lease (warehouse/lease.py);
- the deployed path: Prefect server on PostgreSQL, a pool with 3 workers, the ingest deployment
  triggered three times at once with fixed windows, all COMPLETED, then a build — same warehouse.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from perpwatch import warehouse
from perpwatch.core import tables
from perpwatch.warehouse import lake
from tests.pglake import PG, lake_database, unavailable

pytestmark = pytest.mark.slow

NOW = datetime(2026, 11, 20, tzinfo=UTC)
DAYS = 10
START = NOW - timedelta(days=DAYS)
ASSETS = ["BTC"]
VENUES = ["binance", "bybit", "okx"]
# worker -> venues: three venues on three workers, and binance's streams loaded by two of them at once
WORKERS = {"w1": ["binance"], "w2": ["bybit"], "w3": ["okx", "binance"]}
ROOT = Path(__file__).resolve().parent.parent


_why = unavailable()
if _why:
    pytestmark = [pytest.mark.slow, pytest.mark.skip(reason=_why)]


@pytest.fixture(scope="module")
def sim():
    from perpwatch.simulator.server import start

    s = start(port=0, seed=7, now=NOW)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def file_db(sim, tmp_path_factory) -> Path:
    """(a) one process loads the window for every venue into the DuckDB file and builds."""
    tmp = tmp_path_factory.mktemp("file")
    env = env_for(sim, tmp, "file")
    logs = {"file": tmp / "file.log"}
    finish({"file": backfill(env, VENUES, logs["file"])}, logs)
    return Path(env["PERPWATCH_DB"])


@pytest.fixture
def lake_url(tmp_path, monkeypatch):
    yield from lake_database(tmp_path, monkeypatch, "pw_e2e")


def env_for(sim, tmp_path: Path, name: str, catalog: str | None = None) -> dict[str, str]:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PERPWATCH_CATALOG"}
    env.update(sim.env())
    env.update({"PERPWATCH_PROVIDERS": "", "PERPWATCH_DB": str(d / "perpwatch.duckdb"),
                "PERPWATCH_SERVING_DB": str(d / "serving.duckdb"), "PERPWATCH_EXPORTS": str(d / "exports"),
                "PERPWATCH_GX_DOCS": str(d / "gx_docs"), "PERPWATCH_DATA_PATH": str(tmp_path / "lakedata"),
                "PERPWATCH_ALERT_WEBHOOK": "", "PREFECT_LOGGING_LEVEL": "WARNING"})
    if catalog:
        env["PERPWATCH_CATALOG"] = catalog
    return env


def backfill(env: dict, venues: list[str], log: Path, build: bool = True) -> subprocess.Popen:
    """`perpwatch backfill --no-prefect` over [START, NOW) in its own process."""
    cmd = [sys.executable, "-m", "perpwatch", "backfill", "--no-prefect", "--start", START.isoformat(),
           "--end", NOW.isoformat(), "--venues", ",".join(venues), "--assets", ",".join(ASSETS)]
    if not build:
        cmd.append("--no-build")
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def finish(procs: dict[str, subprocess.Popen], logs: dict[str, Path], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    for p in procs.values():
        try:
            p.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs.values():
                q.kill()
            raise
    bad = {n: logs[n].read_text()[-3000:] for n, p in procs.items() if p.returncode != 0}
    assert not bad, bad


# --------------------------------------------------------------------------- comparing warehouses

def _names(con, schema: str) -> list[str]:
    return [f"{schema}.{t}" for (t,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = ? AND database_name = current_database() "
        "ORDER BY 1", [schema]).fetchall()]


def _cols(con, name: str) -> list[str]:
    return [c for (c,) in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE schema_name || '.' || table_name = ? "
        "AND database_name = current_database() ORDER BY column_index", [name]).fetchall()
        if c not in tables.PROVENANCE]


def export_staging(con, out: Path) -> dict[str, bytes]:
    """Every staging table as CSV bytes, ordered by every column, provenance left out (test_one_path)."""
    out.mkdir(parents=True, exist_ok=True)
    got = {}
    for name in _names(con, "staging"):
        sel = ", ".join(f'"{c}"' for c in _cols(con, name))
        path = out / f"{name}.csv"
        con.execute(f"COPY (SELECT {sel} FROM {name} ORDER BY ALL) TO '{path}' (HEADER)")
        got[name] = path.read_bytes()
    return got


def marts(con) -> dict[str, pl.DataFrame]:
    """Every mart as a frame sorted by its non-float columns, then its floats (so 1e-15 noise in a float
    does not reorder rows)."""
    got = {}
    for name in _names(con, "marts"):
        cols = _cols(con, name)
        types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name || '.' || "
                                 "table_name = ? AND database_name = current_database()", [name]).fetchall())
        floats = [c for c in cols if types[c] in ("DOUBLE", "FLOAT", "REAL")]
        order = [c for c in cols if c not in floats] + floats
        sel = ", ".join(f'"{c}"' for c in cols)
        by = ", ".join(f'"{c}"' for c in order)
        got[name] = con.execute(f"SELECT {sel} FROM {name} ORDER BY {by}").pl()
    return got


def assert_same_warehouse(file_db: Path, lake_url: str, out: Path) -> dict[str, int]:
    f = duckdb.connect(str(file_db), read_only=True)
    f.execute("SET TimeZone='UTC'")          # as warehouse.connect does on both backends
    lk = warehouse.connect(lake_url, read_only=True)
    try:
        a, b = export_staging(f, out / "file"), export_staging(lk, out / "lake")
        assert set(a) == set(b)
        differ = [t for t in a if a[t] != b[t]]
        assert not differ, f"staging differs between the file and the lake in {differ}"
        ma, mb = marts(f), marts(lk)
        assert set(ma) == set(mb) and len(ma) > 5
        bad = {}
        for name in ma:
            try:
                assert_frame_equal(ma[name], mb[name], rel_tol=1e-9, abs_tol=1e-9)
            except AssertionError as exc:
                bad[name] = str(exc)[:1500]
        assert not bad, f"marts differ between the file and the lake: {bad}"
        rows = {t: a[t].count(b"\n") - 1 for t in a} | {t: m.height for t, m in ma.items()}
    finally:
        f.close()
        lk.close()
    # the window really loaded: DAYS days of hourly open interest on three venues, daily signals
    assert rows["staging.open_interest"] >= 3 * DAYS * 24 and rows["marts.daily_signals"] >= DAYS - 1, rows
    venues = {line.split(b",")[0] for line in a["staging.funding_rates"].splitlines()[1:]}
    assert venues == {v.encode() for v in VENUES}, venues
    return rows


# --------------------------------------------------------------------------- the reader

def reader(url: str, data_path: str, out: str, stop) -> None:
    """Query every mart's row count in one read transaction, in a loop, until `stop` is set. Each line of
    `out`: {"snapshot": id, "counts": {mart: rows}} or {"error": text}."""
    os.environ["PERPWATCH_DATA_PATH"] = data_path
    con = warehouse.connect(url, read_only=True)
    with open(out, "w") as f:
        while not stop.is_set():
            try:
                con.execute("BEGIN TRANSACTION")
                snap = con.execute(f"SELECT id FROM {lake.ALIAS}.current_snapshot()").fetchone()[0]
                names = _names(con, "marts")
                counts = {n: con.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names}
                con.execute("COMMIT")
                f.write(json.dumps({"snapshot": snap, "counts": counts}) + "\n")
            except Exception as exc:  # noqa: BLE001 - every error is a finding
                f.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
            f.flush()
            time.sleep(0.05)
    con.close()


def check_reads(url: str, lines: list[dict]) -> dict:
    """No errors; every count the reader saw equals the mart's count in the snapshot that last (re)created
    it — i.e. no reader ever saw a mart between its creation and the end of its build."""
    errors = [x["error"] for x in lines if "error" in x]
    assert not errors, errors[:5]
    seen = [x for x in lines if x["counts"]]
    con = warehouse.connect(url, read_only=True)
    created: dict[str, list[int]] = {}
    for snap, changes in con.execute(f"SELECT snapshot_id, changes FROM {lake.ALIAS}.snapshots() ORDER BY 1").fetchall():
        for t in (changes or {}).get("tables_created", []):
            if t.startswith("marts."):
                created.setdefault(t, []).append(snap)
    con.close()
    expect: dict[tuple[str, int], int] = {}
    checked = 0
    for x in seen:
        for mart, n in x["counts"].items():
            b = max(s for s in created[mart] if s <= x["snapshot"])
            if (mart, b) not in expect:
                at = warehouse.connect(url, read_only=True, as_of=b)
                expect[(mart, b)] = at.execute(f"SELECT count(*) FROM {mart}").fetchone()[0]
                at.close()
            assert n == expect[(mart, b)], f"{mart}: {n} rows at snapshot {x['snapshot']}, built with {expect[(mart, b)]}"
            checked += 1
    return {"reads": len(lines), "with_marts": len(seen), "snapshots": len({x["snapshot"] for x in seen}),
            "builds_seen": len({b for (_m, b) in expect}), "checked": checked}


# --------------------------------------------------------------------------- tests

def test_three_workers_into_the_lake_equal_one_process_into_the_file(sim, file_db, lake_url, tmp_path):
    warehouse.connect(lake_url).close()      # initialise the catalog once, then the workers attach
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    reads = tmp_path / "reads.jsonl"
    rd = ctx.Process(target=reader, args=(lake_url, str(tmp_path / "lakedata"), str(reads), stop))
    rd.start()
    try:
        procs, wlogs = {}, {}
        for name, venues in WORKERS.items():     # all three at once, each building after its load
            wlogs[name] = tmp_path / f"{name}.log"
            procs[name] = backfill(env_for(sim, tmp_path, name, lake_url), venues, wlogs[name])
        finish(procs, wlogs)
        time.sleep(1.0)                        # let the reader see the final state too
    finally:
        stop.set()
        rd.join(60)
    assert rd.exitcode == 0
    rows = assert_same_warehouse(file_db, lake_url, tmp_path / "cmp")
    lines = [json.loads(x) for x in reads.read_text().splitlines()]
    seen = check_reads(lake_url, lines)
    # not vacuous: the reader saw marts from more than one build while the workers were writing
    assert seen["builds_seen"] >= 2 and seen["snapshots"] >= 3, seen
    # each worker built once, one after another (the build lease), and every worker's runs loaded
    con = warehouse.connect(lake_url, read_only=True)
    runs = con.execute("SELECT count(*), count(*) FILTER (WHERE status = 'success') FROM meta.runs").fetchone()
    holder = con.execute("SELECT holder FROM meta.leases WHERE name = 'build'").fetchone()[0]
    con.close()
    assert runs == (3, 3) and holder is None
    print(json.dumps({"rows": rows, "reader": seen}))


def _build(url: str, data_path: str, out: str) -> None:
    os.environ["PERPWATCH_DATA_PATH"] = data_path
    os.environ["PERPWATCH_CATALOG"] = url
    from perpwatch import jobs

    t0 = time.time()
    timings = jobs.build(url)
    Path(out).write_text(json.dumps({"start": t0, "end": time.time(), "marts": len(timings)}))


def test_two_builds_on_the_lake_serialise_through_the_lease(sim, lake_url, tmp_path):
    env = env_for(sim, tmp_path, "w", lake_url)
    log = tmp_path / "load.log"
    finish({"load": backfill(env, ["binance"], log, build=False)}, {"load": log})
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"build{i}.json" for i in range(2)]
    ps = [ctx.Process(target=_build, args=(lake_url, str(tmp_path / "lakedata"), str(o))) for o in outs]
    for p in ps:
        p.start()
    for p in ps:
        p.join(300)
    assert [p.exitcode for p in ps] == [0, 0]
    a, b = sorted((json.loads(o.read_text()) for o in outs), key=lambda r: r["start"])
    assert a["marts"] == b["marts"] > 5
    assert b["start"] < a["end"], "the two builds did not run at the same time: nothing to serialise"
    con = warehouse.connect(lake_url, read_only=True)
    snaps = con.execute(f"SELECT changes FROM {lake.ALIAS}.snapshots() ORDER BY snapshot_id").fetchall()
    holder = con.execute("SELECT holder FROM meta.leases WHERE name = 'build'").fetchone()[0]
    con.close()
    assert holder is None
    # in commit order, the first build wrote every mart table before the second wrote any: without the
    # lease the two interleave (or one fails on a commit conflict)
    names = [t for (ch,) in snaps for t in (ch or {}).get("tables_created", []) if t.startswith("marts.")]
    n = len(set(names))
    assert n > 5 and len(names) == 2 * n, names
    assert len(set(names[:n])) == n and len(set(names[n:])) == n, names


def test_deployed_three_workers_prefect_on_postgresql(sim, file_db, lake_url, tmp_path):
    """Prefect server on PostgreSQL, pool with 3 workers, the ingest deployments triggered together with
    fixed windows, all COMPLETED; then the build deployment; the warehouse equals the file's."""
    from perpwatch import deploy

    prefect_db = f"{PG}/pw_prefect_{uuid.uuid4().hex[:10]}"
    lake.create_database(prefect_db)
    warehouse.connect(lake_url).close()
    env = {**env_for(sim, tmp_path, "deployed", lake_url), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    stack = deploy.Stack(home=tmp_path / "prefect", port=deploy.free_port(), base_env=env,
                         worker_log=tmp_path / "worker.log", workers=3, database_url=prefect_db,
                         scheduler=False)
    assert stack.env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    window = {"start": START.isoformat(), "end": NOW.isoformat(), "assets": ASSETS}
    try:
        stack.up()
        assert deploy.queue_limits(stack.api_url)["warehouse"] == 3      # the lake admits concurrent writers
        # three ingest deployments at once, one venue set each (binance twice: the overlapping stream);
        # each deployment keeps its own limit of 1, so three different ones run side by side
        runs = {
            "perpwatch-ingest/hourly": {**window, "venues": WORKERS["w1"], "kind": "backfill"},
            "perpwatch-backfill/manual": {**window, "venues": WORKERS["w2"], "build": False, "publish": False},
            "perpwatch-daily/daily": {**window, "venues": WORKERS["w3"], "publish": False},
        }
        ids = {name: deploy.trigger(stack.api_url, name, params) for name, params in runs.items()}
        done = {name: deploy.wait_for_run(stack.api_url, rid, timeout=900) for name, rid in ids.items()}
        states = {name: fr.state_type.value for name, fr in done.items()}
        assert set(states.values()) == {"COMPLETED"}, (states, (tmp_path / "worker.log").read_text()[-4000:])
        # they ran at the same time on different workers
        spans = sorted((fr.start_time, fr.end_time) for fr in done.values())
        assert spans[1][0] < spans[0][1] and spans[2][0] < spans[0][1], spans
        # after every load, one full build (the daily run built once already: the lease kept them apart)
        fr = deploy.wait_for_run(stack.api_url, deploy.trigger(stack.api_url, "perpwatch-build/daily",
                                                               {"publish": False}), timeout=600)
        assert fr.state_type.value == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
    finally:
        stack.down()
        lake.drop_database(prefect_db)
    assert_same_warehouse(file_db, lake_url, tmp_path / "cmp")
