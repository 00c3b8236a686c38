"""`make bi` with the scale-out backend (PERPWATCH_CATALOG): Superset's second database entry reads
the DuckLake read-only through duckdb-engine, its ducklake/postgres extensions installed offline
from the registry packages (bi/lake.py), and the dashboards' datasets are bound to it.

Real PostgreSQL (127.0.0.1:5432, PERPWATCH_TEST_PG): a random database, dropped at the end. A small
simulator backfill is built into the lake; a chart's data through Superset's chart data API equals a
DuckDB query on the lake, also after a new snapshot is committed while Superset runs. Needs
`make bi-install`.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from perpwatch import jobs, warehouse
from perpwatch.bi import superset as bi
from perpwatch.core import settings
from perpwatch.warehouse import lake

pytestmark = pytest.mark.slow

PG = settings.get().test_pg
ASSET = "BTC"
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def _why_not() -> str | None:
    if not (bi.bi_venv() / ".installed").exists():
        return f"Superset's environment is not installed ({bi.bi_venv()}): run `make bi-install`"
    probe = subprocess.run([str(bi.bi_venv() / "bin" / "python"), "-c",
                            "import duckdb_extensions, duckdb_extension_ducklake, duckdb_extension_postgres"],
                           capture_output=True, text=True)
    if probe.returncode:
        return f"{bi.bi_venv()} lacks the duckdb-extension packages: run `make bi-install` ({probe.stderr[-200:]})"
    try:
        lake.create_database(f"{PG}/postgres")
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL/DuckLake not available: {exc}"
    return None


_why = _why_not()
if _why:
    pytest.skip(_why, allow_module_level=True)


def _setenv(values: dict[str, str]) -> dict[str, str | None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return old


def _restore(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A lake with 20 days of binance perps + the ETF flows for BTC, built; and a serving file from an
    unbuilt DuckDB warehouse (so the serving entry exists too, and has no marts)."""
    from perpwatch.simulator.server import start

    d = tmp_path_factory.mktemp("bi_lake")
    url = f"{PG}/pw_bi_{uuid.uuid4().hex[:10]}"
    lake.create_database(url)
    warehouse.connect(d / "empty.duckdb").close()
    warehouse.publish(db=d / "empty.duckdb", serving=d / "serving.duckdb", exports=d / "exports")
    now = NOW   # a fixed clock at noon, as in test_bi: the suite's result must not depend on the hour it runs
    sim = start(port=0, seed=11, now=now)
    old = _setenv({**sim.env(), "PERPWATCH_DATA_PATH": str(d / "lakedata")})
    try:
        try:
            rep = jobs.run(kind="backfill", start=now - timedelta(days=20), end=now,
                           venues=["binance", "farside"], assets=[ASSET], db=url, build=True)
        finally:
            sim.stop()
        assert rep.status == "success", rep.errors
        yield {"url": url, "dir": d, "serving": d / "serving.duckdb"}
    finally:
        _restore(old)
        lake._initialised.discard(url)
        lake.drop_database(url)


@pytest.fixture(scope="module")
def server(built):
    srv = bi.start(home=built["dir"] / "superset", serving=built["serving"], password="test-only-pw",
                   say=lambda _m: None, lake=built["url"])
    try:
        yield srv
    finally:
        srv.stop()
        assert srv.proc.returncode is not None


@pytest.fixture(scope="module")
def api(server):
    return bi.session(server.url, server.user, server.password)


def _lake_rows(url: str, sql: str) -> list[tuple]:
    con = warehouse.connect(url, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _chart(api, server, name: str) -> dict:
    charts = api.get(f"{server.url}/api/v1/dashboard/derivatives-overview/charts").json()["result"]
    (chart,) = [c for c in charts if c["slice_name"] == name]
    return api.get(f"{server.url}/api/v1/chart/{chart['id']}").json()["result"]


def _data(api, server, chart: dict, asset: str | None) -> list[list[dict]]:
    qc = json.loads(chart["query_context"])
    if asset:   # what the dashboard's asset filter adds
        for q in qc["queries"]:
            q["filters"].append({"col": "asset", "op": "IN", "val": [asset]})
    r = api.post(f"{server.url}/api/v1/chart/data", json=qc, timeout=60)
    assert r.status_code == 200, r.text[:500]
    return [res["data"] for res in r.json()["result"]]


def _day(ms: int):
    return datetime.fromtimestamp(ms / 1000, UTC).date()


PROBE = """
import json, sys
import sqlalchemy as sa
engine = sa.create_engine(sys.argv[1], connect_args=json.loads(sys.argv[2]))
with engine.connect() as c:
    n = c.execute(sa.text("SELECT count(*) FROM marts.daily_signals")).scalar()
    try:
        c.execute(sa.text("DELETE FROM marts.daily_signals"))
        error = ""
    except Exception as exc:
        error = str(exc)
print(json.dumps([n, error]))
"""


def test_the_lake_is_a_second_read_only_database(server, api, built):
    dbs = {d["database_name"]: d["id"] for d in api.get(f"{server.url}/api/v1/database/").json()["result"]}
    assert set(dbs) == {bi.SERVING_DB_NAME, bi.LAKE_DB_NAME}
    conn = api.get(f"{server.url}/api/v1/database/{dbs[bi.LAKE_DB_NAME]}/connection").json()["result"]
    name = built["url"].rsplit("/", 1)[1]
    assert conn["sqlalchemy_uri"] == f"duckdb:///ducklake:postgres:postgresql://postgres@127.0.0.1:5432/{name}"
    assert not conn["allow_dml"]
    args = json.loads(conn["extra"])["engine_params"]["connect_args"]
    ext = server.home / "duckdb_extensions"
    assert args["read_only"] is True
    assert args["config"]["extension_directory"] == str(ext)
    assert args["config"]["autoinstall_known_extensions"] is False   # never a download at query time
    # installed from the registry packages' files, for DuckDB 1.5.5
    assert {p.name for p in ext.rglob("*.duckdb_extension")} == {"ducklake.duckdb_extension",
                                                                 "postgres_scanner.duckdb_extension"}
    assert all("v1.5.5" in p.parts for p in ext.rglob("*.duckdb_extension"))
    # every dataset reads the lake (the lake backend publishes no serving file)
    for ds in api.get(f"{server.url}/api/v1/dataset/?q=(page_size:100)").json()["result"]:
        assert ds["database"]["database_name"] == bi.LAKE_DB_NAME, ds
    # the entry's exact URI and engine parameters, in Superset's environment: reads work, writes fail
    out = subprocess.run([str(bi.bi_venv() / "bin" / "python"), "-c", PROBE, conn["sqlalchemy_uri"], json.dumps(args)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    n, error = json.loads(out.stdout.strip().splitlines()[-1])
    assert n == _lake_rows(built["url"], "SELECT count(*) FROM marts.daily_signals")[0][0] > 0
    assert "read-only" in error, error


def test_dataset_descriptions_come_from_the_lake(server, api, built):
    (comment,) = _lake_rows(built["url"], "SELECT comment FROM duckdb_tables() WHERE database_name = "
                            "current_database() AND schema_name = 'marts' AND table_name = 'daily_signals'")[0]
    found = [d for d in api.get(f"{server.url}/api/v1/dataset/?q=(page_size:100)").json()["result"]
             if (d["schema"], d["table_name"]) == ("marts", "daily_signals")]
    full = api.get(f"{server.url}/api/v1/dataset/{found[0]['id']}").json()["result"]
    assert comment and full["description"] == comment
    cols = dict(_lake_rows(built["url"], "SELECT column_name, comment FROM duckdb_columns() WHERE database_name = "
                           "current_database() AND schema_name = 'marts' AND table_name = 'daily_signals'"))
    assert {c["column_name"]: c["description"] for c in full["columns"]} == cols


def test_chart_data_on_the_lake_equals_duckdb_on_the_lake(server, api, built):
    url = built["url"]
    chart = _chart(api, server, "Aggregated open interest (USD)")
    (rows,) = _data(api, server, chart, ASSET)
    got = {_day(r["date"]): r["Aggregated OI (USD)"] for r in rows}
    want = dict(_lake_rows(url, f"SELECT date, sum(oi_usd) FROM marts.daily_signals WHERE asset = '{ASSET}' "
                                "GROUP BY date"))
    assert len(want) >= 15 and got.keys() == want.keys()
    for day, oi in want.items():
        assert got[day] == pytest.approx(oi, rel=1e-12), day
    # the serving file (an unbuilt warehouse) has no marts: these numbers can only have come from the lake
    import duckdb

    with duckdb.connect(str(built["serving"]), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'marts'").fetchone()[0] == 0
    # the ETF flows chart: the cumulative line's last point is the lake's running total
    daily, cumulative = _data(api, server, _chart(api, server, "Spot bitcoin ETF flows: daily and cumulative"), None)
    (last_day, last_cum, total), = _lake_rows(url, "SELECT max(date), arg_max(cumulative_flow_usd, date), "
                                                   "sum(total_flow_usd) FROM marts.etf_flows_daily")
    top = max(cumulative, key=lambda r: r["date"])
    assert _day(top["date"]) == last_day and top["cumulative flow"] == pytest.approx(last_cum, rel=1e-12)
    assert last_cum == pytest.approx(total, rel=1e-9) and len(daily) == len(cumulative)

    # a new lake snapshot (the next build, simulated: one more BTC day) shows on the next query,
    # with Superset still running
    con = warehouse.connect(url)
    try:
        new_day = con.execute(f"SELECT max(date) + 1 FROM marts.daily_signals WHERE asset = '{ASSET}'").fetchone()[0]
        con.execute("INSERT INTO marts.daily_signals BY NAME SELECT * REPLACE (date + 1 AS date, 1.2345e10 AS oi_usd) "
                    f"FROM marts.daily_signals WHERE asset = '{ASSET}' AND date = ?", [new_day - timedelta(days=1)])
    finally:
        con.close()
    (rows,) = _data(api, server, chart, ASSET)
    last = max(rows, key=lambda r: r["date"])
    assert _day(last["date"]) == new_day and last["Aggregated OI (USD)"] == pytest.approx(1.2345e10)


def test_lake_uri_keeps_the_password_out_of_superset():
    url = "postgresql://reader:s%40cret@db.internal:6543/perpwatch_lake"
    assert bi.lake_uri(url) == "duckdb:///ducklake:postgres:postgresql://reader@db.internal:6543/perpwatch_lake"
    assert bi.lake_env(url) == {"PGPASSWORD": "s@cret"}
    assert bi.lake_env("postgresql://reader@db/x") == {}
    with pytest.raises(bi.BIError):
        bi.lake_uri("mysql://x/y")
    assert Path(bi.__file__).name == "superset.py"
