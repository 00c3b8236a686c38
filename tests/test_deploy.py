"""`make deploy` end to end: Prefect server + pool + `prefect deploy --all` + worker, against the simulator.

Triggers the daily deployment twice with a short window, waits for both runs, checks they did not
overlap (one warehouse writer at a time), that the warehouse got staging rows and daily signals,
that the runs left artifacts, and that no secret from the worker's environment reached a log.
Every process started here is stopped (worker and server by process group, then KILL).
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from perpwatch import deploy

pytestmark = pytest.mark.slow

def trigger(stack: deploy.Stack, start: datetime) -> str:
    return deploy.trigger(stack.api_url, "perpwatch-daily/daily",
                          {"start": start.isoformat(), "venues": ["binance"], "assets": ["BTC"]})


def test_make_deploy_runs_the_daily_deployment(tmp_path):
    from perpwatch.simulator.server import start as start_sim

    canary = f"pw-canary-{uuid.uuid4().hex}"
    sim = start_sim(port=0, seed=7)           # real clock: the deployment's runs use "now"
    db = tmp_path / "perpwatch.duckdb"
    env = {**os.environ, **sim.env(),
           "PERPWATCH_DB": str(db), "PERPWATCH_SERVING_DB": str(tmp_path / "serving.duckdb"),
           "PERPWATCH_EXPORTS": str(tmp_path / "exports"),
           "PREFECT_WORKER_QUERY_SECONDS": "2",   # default 10 s poll; keeps the test short
           "COINGECKO_API_KEY": canary}           # a secret in the worker environment: must never be logged
    stack = deploy.Stack(home=tmp_path / "prefect", port=deploy.free_port(), base_env=env,
                         worker_log=tmp_path / "worker.log", scheduler=False)
    try:
        stack.up()
        deps = {d["name"]: d for d in deploy.deployments(stack.api_url)}
        assert set(deps) == {"perpwatch-backfill/manual", "perpwatch-build/daily", "perpwatch-collector/liquidations",
                             "perpwatch-daily/daily", "perpwatch-ingest/hourly", "perpwatch-maintenance/maintenance",
                             "perpwatch-markets/daily"}
        assert deps["perpwatch-daily/daily"] == {"name": "perpwatch-daily/daily", "schedule": "15 0 * * * UTC",
                                                 "queue": "warehouse", "limit": 1, "collision": "ENQUEUE"}
        assert deps["perpwatch-markets/daily"]["schedule"] == "30 22 * * * America/New_York"
        assert deps["perpwatch-ingest/hourly"]["collision"] == "CANCEL_NEW"
        assert deploy.queue_limits(stack.api_url) == {"default": None, "warehouse": 1, "collector": 1}

        begin = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
        first, second = trigger(stack, begin), trigger(stack, begin)
        # the CLI path triggers too (what `make deploy` tells the user to run)
        res = deploy.prefect(stack.env, "deployment", "run", "perpwatch-markets/daily", "--param", 'assets=["BTC"]')
        markets = re.search(r"UUID:\s*([0-9a-f-]{36})", res.stdout).group(1)
        runs = [deploy.wait_for_run(stack.api_url, first, 150), deploy.wait_for_run(stack.api_url, second, 60)]
        mk = deploy.wait_for_run(stack.api_url, markets, 60)
        assert mk.state_type.value == "COMPLETED", mk.state
        assert [r.state_type.value for r in runs] == ["COMPLETED", "COMPLETED"], \
            [r.state for r in runs] + [(tmp_path / "worker.log").read_text()[-3000:]]
        # one warehouse writer at a time: the second run started after the first finished
        a, b = sorted(runs, key=lambda r: r.start_time)
        assert b.start_time >= a.end_time
        assert all(r.parameters["venues"] == ["binance"] for r in runs)

        with deploy.client(stack.api_url) as c:
            arts = c.read_artifacts()
            logs = c.read_logs(limit=200)
            held = {str(r.id) for r in c.read_flow_runs() if r.deployment_id is not None}   # not subflows
        # only what the test triggered: with scheduler=False the server schedules nothing, so the wall
        # clock (a worker polling at xx:00 would take the hourly liquidations run) cannot add a run
        assert held == {first, second, markets}, held
        # the runs left their artifacts (counts table, outcome, signals)
        keys = {x.key for x in arts if x.key}
        assert {"ingest-counts", "validation", "ingest-outcome", "gx-data-docs", "daily-signals",
                "liquidation-heatmap"} <= keys, keys

        # no secret in any log: worker output, server log, run logs stored by the API
        assert logs
        text = "\n".join(x.message for x in logs) + (tmp_path / "worker.log").read_text() \
            + (tmp_path / "prefect" / "logs" / "server.log").read_text()
        assert canary not in text
    finally:
        started = [pid for p in stack.procs for pid in (p.pid, *deploy.children(p.pid))]
        stack.down()
        sim.stop()
    assert started and not any(deploy._alive(pid) for pid in started)   # server, worker and their children
    con = duckdb.connect(str(db), read_only=True)   # readable: nobody holds the write lock any more
    try:
        oi = con.execute("SELECT count(*), min(ts) FROM staging.open_interest WHERE venue='binance'").fetchone()
        assert oi[0] >= 40 and oi[1] >= begin - timedelta(hours=3)
        days = con.execute("SELECT count(*), count(DISTINCT date), min(asset), max(asset) "
                           "FROM marts.daily_signals").fetchone()
        assert days[0] == days[1] and 2 <= days[1] <= 3 and days[2] == days[3] == "BTC"
        kinds = dict(con.execute("SELECT kind, count(*) FROM meta.runs WHERE status <> 'failed' GROUP BY kind"
                                 ).fetchall())
        assert kinds == {"backfill": 2, "markets": 1}
        # the markets deployment loaded every provider: ETF flows, macro closes, treasuries, market caps
        for table in ("etf_flows", "macro_closes", "treasury_holdings", "market_caps"):
            assert con.execute(f"SELECT count(*) FROM staging.{table}").fetchone()[0] > 0, table
    finally:
        con.close()
    assert (tmp_path / "serving.duckdb").exists() and any((tmp_path / "exports" / "daily_signals").glob("**/*.parquet"))
    assert (tmp_path / "gx_docs" / "index.html").exists()            # Great Expectations Data Docs
    assert (tmp_path / "reports" / "heatmap-BTC.png").exists()       # the heatmap the artifact shows
