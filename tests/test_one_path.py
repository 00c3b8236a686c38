"""One ingest path: `perpwatch run --no-prefect`, `perpwatch backfill` (Prefect flow) and the deployed
backfill flow (Prefect server + worker) produce byte-identical staging and marts on the same simulator
window, and deliver the same alerts to the webhook.

The simulator's clock is frozen at NOW; `run --end NOW` reads each stream's default 30-day lookback,
the backfills the window [NOW - 30 days, NOW). Provenance columns (raw_id, ingested_at, the fetch time
as_of) differ by construction and are left out; everything else is compared as ordered CSV bytes.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest

from perpwatch import cli, deploy
from perpwatch.core import tables
from perpwatch.core.settings import SIGNALS_FILE

pytestmark = pytest.mark.slow

NOW = datetime(2026, 11, 20, tzinfo=UTC)
START = NOW - timedelta(days=30)
ARGS = ["--venues", "binance", "--assets", "BTC"]


class Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Hook.received.append({**body, "_db": self.path})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_a):
        pass


def export(db: Path, out: Path) -> dict[str, bytes]:
    """Every staging table and mart as CSV bytes, ordered by every column, provenance left out."""
    con = duckdb.connect(str(db), read_only=True)
    got = {}
    try:
        names = [f"{s}.{t}" for s, t in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE schema_name IN ('staging', 'marts') "
            "AND database_name = current_database() ORDER BY 1, 2").fetchall()]
        for name in names:
            cols = [c for (c,) in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE schema_name || '.' || table_name = ? "
                "AND database_name = current_database() ORDER BY column_index", [name]).fetchall()
                if c not in tables.PROVENANCE]
            sel = ", ".join(f'"{c}"' for c in cols)
            path = out / f"{name}.csv"
            con.execute(f"COPY (SELECT {sel} FROM {name} ORDER BY ALL) TO '{path}' (HEADER)")
            got[name] = path.read_bytes()
    finally:
        con.close()
    return got


@pytest.fixture
def world(tmp_path, monkeypatch):
    from perpwatch.simulator.server import start

    sim = start(port=0, seed=7, now=NOW)
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    Hook.received = []
    # deliver every alert of the frozen window (the default keeps only the last 72 h of real time)
    signals = tmp_path / "signals.toml"
    text = SIGNALS_FILE.read_text()
    signals.write_text(re.sub(r"(?m)^delivery_max_age_hours\s*=.*$", "delivery_max_age_hours = 1000000", text))
    assert "delivery_max_age_hours = 1000000" in signals.read_text()
    env = {**sim.env(), "PERPWATCH_PROVIDERS": "", "PERPWATCH_SIGNALS": str(signals)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield sim, hook, env
    hook.shutdown()
    sim.stop()


def paths(tmp_path: Path, name: str) -> dict[str, str]:
    d = tmp_path / name
    d.mkdir()
    return {"PERPWATCH_DB": str(d / "perpwatch.duckdb"), "PERPWATCH_SERVING_DB": str(d / "serving.duckdb"),
            "PERPWATCH_EXPORTS": str(d / "exports"), "PERPWATCH_GX_DOCS": str(d / "gx_docs")}


def use(monkeypatch, hook, p: dict[str, str], name: str) -> None:
    for k, v in p.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PERPWATCH_ALERT_WEBHOOK", f"http://127.0.0.1:{hook.server_port}/{name}")


def delivered(name: str) -> list[tuple]:
    return sorted((a["ts"], a["asset"], a["rule"]) for a in Hook.received if a["_db"] == f"/{name}")


def test_run_backfill_and_deployed_flow_give_identical_warehouses(world, tmp_path, monkeypatch):
    _sim, hook, env = world
    a, b, c = paths(tmp_path, "a"), paths(tmp_path, "b"), paths(tmp_path, "c")

    use(monkeypatch, hook, a, "a")
    assert cli.main(["run", "--no-prefect", "--end", NOW.isoformat(), *ARGS]) == 0
    use(monkeypatch, hook, b, "b")
    assert cli.main(["backfill", "--start", START.isoformat(), "--end", NOW.isoformat(), *ARGS]) == 0

    stack_env = {**os.environ, **env, **c, "PERPWATCH_ALERT_WEBHOOK": f"http://127.0.0.1:{hook.server_port}/c",
                 "PREFECT_WORKER_QUERY_SECONDS": "2"}
    stack = deploy.Stack(home=tmp_path / "prefect", port=deploy.free_port(), base_env=stack_env,
                         worker_log=tmp_path / "worker.log", scheduler=False)
    try:
        stack.up()
        res = deploy.prefect(stack.env, "deployment", "run", "perpwatch-backfill/manual",
                             "--param", f"start={START.isoformat()}", "--param", f"end={NOW.isoformat()}",
                             "--param", 'venues=["binance"]', "--param", 'assets=["BTC"]')
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout).group(1)
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: stack.api_url}), get_client(sync_client=True) as client:
            deadline = time.monotonic() + 300
            while True:
                state = client.read_flow_run(run_id).state
                if state.is_final() or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
        assert state.type.value == "COMPLETED", (state, (tmp_path / "worker.log").read_text()[-3000:])
    finally:
        stack.down()

    got = {name: export(Path(p["PERPWATCH_DB"]), tmp_path / name) for name, p in (("a", a), ("b", b), ("c", c))}
    assert set(got["a"]) == set(got["b"]) == set(got["c"])
    rows = {t: got["a"][t].count(b"\n") - 1 for t in got["a"]}
    # the window really loaded: 30 days of hourly BTCUSDT perp bars and daily signals for the month
    assert rows["staging.open_interest"] >= 30 * 24 and rows["marts.daily_signals"] >= 29, rows
    for name in ("b", "c"):
        differ = [t for t in got["a"] if got["a"][t] != got[name][t]]
        assert not differ, f"{name} differs from run --no-prefect in {differ}"
    # and every path delivered the same alerts, each once
    assert delivered("a"), "the window fires alerts: the comparison below is not vacuous"
    assert delivered("a") == delivered("b") == delivered("c")
    assert len(set(delivered("a"))) == len(delivered("a"))
