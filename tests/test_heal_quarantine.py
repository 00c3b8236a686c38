"""Backfill --heal, the status vocabulary (printed summary, exit code, meta.runs) and
`perpwatch quarantine list | release | drop`, against the simulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from perpwatch import cli, warehouse
from perpwatch.simulator.faults import Faults
from perpwatch.simulator.server import start
from tests.faultproxy import FaultProxy

NOW = datetime(2026, 11, 20, tzinfo=UTC)
START = NOW - timedelta(days=3)
ROOT = Path(__file__).resolve().parents[1]


class FirstN(Faults):
    """One profile on the first `n` requests whose path ends with `path` (whatever their window), so a
    re-read with another window gets clean data."""

    def __init__(self, path: str, symbol: str, profile: str, n: int = 1):
        super().__init__([profile], rate=0.0, seed=1)
        self.path, self.symbol, self.profile, self.left = path, symbol, profile, n
        self._lock = threading.Lock()

    def draw(self, prefix, req):
        _, attempt, rng = super().draw(prefix, req)
        with self._lock:
            if req.path.endswith(self.path) and req.query.get("symbol") == self.symbol and self.left > 0:
                self.left -= 1
                return self.profile, attempt, rng
        return None, attempt, rng


@pytest.fixture(scope="module")
def sim():
    s = start(port=0, seed=7, now=NOW, ws_port=None)
    yield s
    s.stop()


@pytest.fixture
def env(sim, monkeypatch):
    for k, v in sim.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PERPWATCH_PROVIDERS", "")
    sim.set_faults(None)
    yield sim
    sim.set_faults(None)


def backfill_cli(db, *extra) -> tuple[int, dict]:
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["backfill", "--no-prefect", "--no-build", "--venues", "binance", "--assets", "BTC",
                         "--start", START.date().isoformat(), "--end", NOW.date().isoformat(), "--db", str(db), *extra])
    return code, json.loads(out.getvalue().strip().splitlines()[-1])


def test_backfill_says_what_is_missing_and_heal_fills_it(env, tmp_path):
    # rows missing inside a good klines page: without healing the backfill says so (summary, exit 3, meta.runs)
    env.set_faults(FirstN("/fapi/v1/klines", "BTCUSDT", "gap"))
    db = tmp_path / "noheal.duckdb"
    code, res = backfill_cli(db, "--no-heal")
    assert code == 3 and res["status"] == "warning" and res["heal_passes"] == 0
    assert res["gaps_open"] == 1 and len(res["missing"]) == 1
    g = res["missing"][0]
    assert (g["source"], g["dataset"], g["instrument"]) == ("binance", "prices/perp", "BTCUSDT") and g["missing"] >= 1
    con = duckdb.connect(str(db), read_only=True)
    status, gaps_open = con.execute("SELECT status, gaps_open FROM meta.runs").fetchone()
    con.close()
    assert (status, gaps_open) == ("warning", 1)          # the run's record says what the command said

    # the same fault with --heal (the default): one heal pass re-reads the gap, nothing is missing, exit 0
    env.set_faults(FirstN("/fapi/v1/klines", "BTCUSDT", "gap"))
    db = tmp_path / "heal.duckdb"
    code, res = backfill_cli(db)
    assert (code, res["status"], res["gaps_open"], res["missing"], res["heal_passes"]) == (0, "success", 0, [], 1)
    assert len(res["runs"]) == 2
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM staging.prices WHERE instrument = 'BTCUSDT' AND kind = 'perp'"
                           ).fetchone()[0] == 72
        assert con.execute("SELECT DISTINCT status FROM meta.gaps").fetchall() == [("filled",)]
    finally:
        con.close()


def test_unreadable_payload_counts_and_exit_codes(env, tmp_path):
    """A truncated page: status warning everywhere, payloads_quarantined 1 (rows quarantined 0);
    --ok-warnings exits 0; the summary line names the counts."""
    proxy = FaultProxy(env.base_url)
    try:
        os.environ["PERPWATCH_URL_BINANCE_FAPI"] = proxy.base_url + "/binance-fapi"
        proxy.add("/fapi/v1/fundingRate", "truncate", times=1, symbol="BTCUSDT")
        code, res = backfill_cli(tmp_path / "w.duckdb", "--no-heal")
        proxy.add("/fapi/v1/fundingRate", "truncate", times=1, symbol="BTCUSDT")
        code_ok, _ = backfill_cli(tmp_path / "w2.duckdb", "--no-heal", "--ok-warnings")
    finally:
        proxy.stop()
        os.environ["PERPWATCH_URL_BINANCE_FAPI"] = env.env()["PERPWATCH_URL_BINANCE_FAPI"]
    assert (code, res["status"], res["payloads_quarantined"], res["quarantined"]) == (3, "warning", 1, 0)
    assert code_ok == 0
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT status, payloads_quarantined FROM meta.runs").fetchone() == ("warning", 1)
        assert con.execute("SELECT count(*), sum(rows) FROM quarantine.batches").fetchone() == (1, 0)
    finally:
        con.close()


def _cli(db, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perpwatch", *args, "--db", str(db)] if args[0] != "quarantine"
                          else [sys.executable, "-m", "perpwatch", "quarantine", "--db", str(db), *args[1:]],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_quarantine_list_release_after_a_suite_fix_and_drop(env, tmp_path, monkeypatch):
    bad_time = datetime(2026, 11, 18, 16, tzinfo=UTC)
    proxy = FaultProxy(env.base_url)
    db = tmp_path / "w.duckdb"
    try:
        monkeypatch.setenv("PERPWATCH_URL_BINANCE_FAPI", proxy.base_url + "/binance-fapi")
        proxy.add("/fapi/v1/fundingRate", f"set_at:fundingTime={int(bad_time.timestamp())}:fundingRate=0.5",
                  symbol="BTCUSDT")
        code, res = backfill_cli(db, "--no-heal")
    finally:
        proxy.stop()
    assert code == 3 and res["quarantined"] == 1
    from perpwatch.ingest import pipeline
    pipeline.replay(db)                                   # quarantines the same row again: a second batch
    listed = _cli(db, "quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    batches = json.loads(listed.stdout)
    assert len(batches) == 2 and {b["status"] for b in batches} == {"open"}
    assert all(b["rows"] == 1 and len(b["row_refs"]) == 1 and len(b["row_refs"][0]["rows"]) == 1 for b in batches)
    first, second = sorted(batches, key=lambda b: b["received_at"])

    # releasing with the unchanged suite loads nothing: the row fails again, in a new batch of the release run
    again = _cli(db, "quarantine", "release", first["batch_id"])
    assert again.returncode == 3, again.stderr
    out = json.loads(again.stdout)
    assert (out["rows"], out["loaded"], out["quarantined"]) == (1, 0, 1)

    # the fix: a suite that accepts a 50 % settlement (say the venue really printed it); release the new batch
    suites = tmp_path / "expectations"
    shutil.copytree(ROOT / "expectations", suites)
    spec = json.loads((suites / "funding_rates.json").read_text())
    for e in spec["expectations"]:
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"].get("column") == "funding_rate":
            e["kwargs"]["max_value"] = 1.0
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"].get("column") in ("rate_8h",
                                                                                             "rate_annualized"):
            e["kwargs"].pop("max_value", None)
    (suites / "funding_rates.json").write_text(json.dumps(spec))
    listed = json.loads(_cli(db, "quarantine", "list", "--json").stdout)
    newest = [b for b in listed if b["batch_id"] not in (first["batch_id"], second["batch_id"])]
    assert len(newest) == 1
    rel = _cli(db, "quarantine", "release", newest[0]["batch_id"], env={"PERPWATCH_EXPECTATIONS": str(suites)})
    assert rel.returncode == 0, rel.stdout + rel.stderr
    out = json.loads(rel.stdout)
    assert (out["status"], out["rows"], out["loaded"], out["quarantined"]) == ("success", 1, 1, 0)
    dropped = _cli(db, "quarantine", "drop", second["batch_id"])
    assert dropped.returncode == 0, dropped.stderr
    assert _cli(db, "quarantine", "drop", second["batch_id"]).returncode == 2      # already dropped
    with warehouse.session(db, read_only=True) as con:
        assert con.execute("SELECT funding_rate FROM staging.funding_rates WHERE funding_time = ? "
                           "AND instrument = 'BTCUSDT'", [bad_time]).fetchone() == (0.5,)
        assert dict(con.execute("SELECT batch_id, status FROM quarantine.batches").fetchall()) == {
            first["batch_id"]: "released", second["batch_id"]: "dropped", newest[0]["batch_id"]: "released"}
        assert con.execute("SELECT count(*) FROM quarantine.batches WHERE resolved_at IS NULL").fetchone()[0] == 0
        assert con.execute("SELECT status FROM meta.runs WHERE kind = 'release' ORDER BY started_at").fetchall() == [
            ("warning",), ("success",)]


def test_existing_warehouse_gets_the_identity_default(tmp_path):
    """A warehouse made when raw.payloads.encoding defaulted to 'zlib': connect() alters the default once,
    so a body inserted by hand afterwards is read as stored."""
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA raw; CREATE TABLE raw.payloads (raw_id BIGINT NOT NULL, source VARCHAR NOT NULL, "
                "endpoint VARCHAR NOT NULL, params JSON, fetched_at TIMESTAMPTZ NOT NULL, http_status INTEGER, "
                "body BLOB, sha256 VARCHAR NOT NULL, run_id VARCHAR, encoding VARCHAR DEFAULT 'zlib')")
    con.close()
    with warehouse.session(db) as con:
        con.execute("INSERT INTO raw.payloads (raw_id, source, endpoint, fetched_at, body, sha256) "
                    "VALUES (1000, 'x', 'y', now(), 'plain', 'h')")
        body, enc = con.execute("SELECT body, encoding FROM raw.payloads").fetchone()
        assert enc == "identity" and warehouse.payload_body(body, enc) == b"plain"
        landed = warehouse.land(con, "x", "y", {}, 200, b"[1]")
        body, enc = con.execute("SELECT body, encoding FROM raw.payloads WHERE raw_id = ?", [landed]).fetchone()
        assert enc == "zlib" and warehouse.payload_body(body, enc) == b"[1]"
    with pytest.raises(warehouse.UndecodableBody, match="raw_id=7: body is not zlib data"):
        warehouse.payload_body(b"plain", "zlib", raw_id=7)
    with pytest.raises(warehouse.UndecodableBody, match="unknown encoding 'gzip'"):
        warehouse.payload_body(b"plain", "gzip")


def test_prefect_flow_state_matches_the_run_status(env, tmp_path, monkeypatch):
    """The ingest flow: a warning run ends Completed with the warning as its message, a failed run ends
    Failed; both carry the same outcome dict the CLI prints, and meta.runs agrees."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    from perpwatch.flows.ingest import ingest, state_outcome

    proxy = FaultProxy(env.base_url)
    try:
        monkeypatch.setenv("PERPWATCH_URL_BINANCE_FAPI", proxy.base_url + "/binance-fapi")
        proxy.add("/fapi/v1/fundingRate", "truncate", symbol="BTCUSDT")
        warn = ingest(start=NOW - timedelta(days=1), end=NOW, venues=["binance"], assets=["BTC"],
                      db=str(tmp_path / "w.duckdb"), kind="backfill", return_state=True)
        proxy.add("/fapi/v1/klines", "status:400", symbol="BTCUSDT")      # a client error: not retried
        fail = ingest(start=NOW - timedelta(days=1), end=NOW, venues=["binance"], assets=["BTC"],
                      db=str(tmp_path / "f.duckdb"), kind="backfill", return_state=True)
    finally:
        proxy.stop()
    out = state_outcome(warn)
    assert warn.type.value == "COMPLETED" and warn.message.startswith("warning: ") and "fundingRate" in warn.message
    assert out["status"] == "warning" and out["payloads_quarantined"] == 1
    out_f = state_outcome(fail)
    assert fail.type.value == "FAILED" and out_f["status"] == "failed" and "klines" in fail.message
    for db, want in (("w", "warning"), ("f", "failed")):
        with warehouse.session(tmp_path / f"{db}.duckdb", read_only=True) as con:
            assert con.execute("SELECT status FROM meta.runs").fetchone()[0] == want
