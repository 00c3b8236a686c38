"""`make bi`: Apache Superset (bi/superset.py, its own .venv-bi) over the serving snapshot of a
warehouse built from the simulator — the dashboards and charts exist, every chart's data equals
a DuckDB query on the serving file, headless Chromium draws the dashboard, a publish while
Superset is querying swaps the snapshot without an error, and the SQLAlchemy inspector and the
DuckDB CLI read the same file. Needs `make bi-install` and `make browser` (`make test` runs both).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import yaml

from perpwatch import jobs, warehouse
from perpwatch.bi import superset as bi
from perpwatch.core import settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BI_PY = bi.bi_venv() / "bin" / "python"
ASSETS = ROOT / "bi" / "superset"
ASSET = "BTC"
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)   # the fixture's fixed clock (see `built`)

if not (bi.bi_venv() / ".installed").exists():
    pytest.skip(f"Superset's environment is not installed ({bi.bi_venv()}): run `make bi-install`",
                allow_module_level=True)

# Per chart (file name in bi/superset/charts): the same data written as plain DuckDB SQL on the
# serving file, one statement per query of the chart ($asset = the dashboard's asset filter).
EXPECTED = {
    "aggregated_oi": ["SELECT date, sum(oi_usd) FROM marts.daily_signals WHERE asset = $asset GROUP BY date"],
    "oi_by_venue": ["SELECT date, venue, sum(oi_usd) FROM marts.open_interest_by_venue WHERE asset = $asset "
                    "GROUP BY date, venue"],
    "funding_8h": ["SELECT date, max(funding_rate_8h), max(funding_pctl_threshold), max(funding_pctl_threshold_low) "
                   "FROM marts.daily_signals WHERE asset = $asset GROUP BY date"],
    "funding_annualized": ["SELECT date, max(funding_annualized) FROM marts.daily_signals WHERE asset = $asset "
                           "GROUP BY date"],
    "ls_ratio": ["SELECT date, max(ls_ratio), max(ls_ratio_top_accounts), max(ls_ratio_top_positions) "
                 "FROM marts.daily_signals WHERE asset = $asset GROUP BY date"],
    "liquidations": ["SELECT date, sum(liquidations_long_usd), sum(liquidations_short_usd) FROM marts.daily_signals "
                     "WHERE asset = $asset GROUP BY date",
                     "SELECT date, max(CASE WHEN liquidation_surge THEN liquidations_usd END) FROM marts.daily_signals "
                     "WHERE asset = $asset GROUP BY date"],
    "basis": ["SELECT date, max(basis_annualized) FROM marts.daily_signals WHERE asset = $asset GROUP BY date"],
    "etf_flows": ["SELECT date, sum(total_flow_usd) FROM marts.etf_flows_daily GROUP BY date",
                  "SELECT date, max(cumulative_flow_usd) FROM marts.etf_flows_daily GROUP BY date"],
    "correlations": ["SELECT date, benchmark, window_days, avg(correlation) FROM marts.cross_market_correlation "
                     "WHERE asset = $asset GROUP BY ALL"],
    "signal_state_today": ["SELECT date, asset, complete, signal_state, overheating, oi_price_regime, funding_extreme, "
                           "ls_extreme, liquidation_surge, basis_extreme, close_usd, oi_usd FROM marts.daily_signals "
                           "WHERE date = (SELECT max(date) FROM marts.daily_signals) AND asset = $asset"],
    "alerts": ["SELECT ts, asset, complete, rule, severity, value, threshold, message FROM marts.alerts WHERE asset = $asset "
               "ORDER BY ts DESC, asset, rule LIMIT 200"],
    "freshness": ["SELECT source, dataset, max(last_ts), date_diff('hour', max(last_ts), now()), count(*) "
                  "FROM meta.watermarks GROUP BY ALL"],
    "runs": ["SELECT started_at, kind, status, rows_fetched, rows_loaded, rows_quarantined, rows_duplicate, message, "
             "run_id FROM meta.runs ORDER BY started_at DESC LIMIT 50"],
    "quarantine": ["SELECT received_at, source, dataset, instrument, rows, message, batch_id FROM quarantine.batches "
                   "WHERE resolved_at IS NULL"],
    "gaps": ["SELECT source, dataset, instrument, gap_start, gap_end, missing, status, attempts FROM meta.gaps "
             "WHERE resolved_at IS NULL"],
}


def _yaml(sub: str) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ASSETS / sub).rglob("*.yaml"))}


CHARTS = _yaml("charts")
DASHBOARDS = _yaml("dashboards")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """Two assets, three venues, the institutional providers and a few seconds of liquidation streams."""
    from perpwatch.ingest.collector import collect
    from perpwatch.simulator.server import start

    # A fixed clock, at noon: the collector's liquidations are stamped on the simulator's clock, and only a
    # day with bars has a daily_signals row to carry them. The wall clock truncated to the hour made the
    # liquidation chart empty whenever the suite reached this fixture between 00:00 and 01:00 UTC.
    now = NOW
    sim = start(port=0, seed=7, now=now)
    old = {k: os.environ.get(k) for k in sim.env()}
    os.environ.update(sim.env())
    d = tmp_path_factory.mktemp("bi")
    db, serving = d / "perpwatch.duckdb", d / "serving.duckdb"
    try:
        rep = jobs.run(kind="backfill", start=now - timedelta(days=60), end=now,
                           venues=["binance", "farside", "fred", "stooq", "coingecko"], assets=["BTC", "ETH"], db=db,
                           build=False)
        assert rep.status == "success", rep.errors
        collect(db=db, venues=["binance", "bybit"], assets=["BTC", "ETH"], seconds=4, flush_every_s=1,
                progress=lambda _m: None)
        rep = jobs.run(kind="backfill", start=now - timedelta(days=20), end=now, venues=["bybit", "okx"],
                           assets=["BTC", "ETH"], db=db, build=True)
        assert rep.status == "success", rep.errors
        warehouse.publish(db=db, serving=serving, exports=d / "exports")
    finally:
        sim.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"db": db, "serving": serving, "dir": d}


@pytest.fixture(scope="module")
def server(built):
    srv = bi.start(home=built["dir"] / "superset", serving=built["serving"], password="test-only-pw",
                   say=lambda _m: None)
    try:
        yield srv
    finally:
        srv.stop()
        assert srv.proc.returncode is not None


@pytest.fixture(scope="module")
def api(server):
    return bi.session(server.url, server.user, server.password)


def _charts_of(api, url, slug) -> dict[str, int]:
    by_name = {c["slice_name"]: k for k, c in CHARTS.items()}
    return {by_name[c["slice_name"]]: c["id"] for c in api.get(f"{url}/api/v1/dashboard/{slug}/charts").json()["result"]}


def _norm(v, temporal: bool):
    if v is None:
        return None
    if temporal and isinstance(v, (int, float)):
        return datetime.fromtimestamp(v / 1000, UTC).replace(tzinfo=None)
    if isinstance(v, datetime):
        return v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo else v
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day)
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _close(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def _chart_rows(api, url, chart_id, asset: str | None) -> list[list[tuple]]:
    qc = json.loads(api.get(f"{url}/api/v1/chart/{chart_id}").json()["result"]["query_context"])
    if asset:   # what the dashboard's native filter adds
        for q in qc["queries"]:
            q["filters"].append({"col": "asset", "op": "IN", "val": [asset]})
    r = api.post(f"{url}/api/v1/chart/data", json=qc, timeout=60)
    assert r.status_code == 200, r.text[:500]
    out = []
    for res in r.json()["result"]:
        temporal = [t == 2 for t in res["coltypes"]]
        out.append([tuple(_norm(row[c], temporal[i]) for i, c in enumerate(res["colnames"])) for row in res["data"]])
    return out


def _duck_rows(serving: Path, sql: str, asset: str) -> list[tuple]:
    with duckdb.connect(str(serving), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(sql, {"asset": asset} if "$asset" in sql else None).fetchall()
    return [tuple(_norm(v, False) for v in row) for row in rows]


def _same(got: list[tuple], want: list[tuple], tolerance_col: int | None = None) -> None:
    assert len(got) == len(want), (len(got), len(want))
    key = lambda r: tuple((x is None, str(x)) for x in r)   # noqa: E731
    for g, w in zip(sorted(got, key=key), sorted(want, key=key), strict=True):
        for i, (a, b) in enumerate(zip(g, w, strict=True)):
            if i == tolerance_col:   # an age in hours that may cross an hour between the two queries
                assert abs(a - b) <= 1, (g, w)
            else:
                assert _close(a, b), (i, g, w)


def test_dashboards_and_every_chart_exist(server, api):
    assert set(server.dashboards) == {"derivatives-overview", "perpwatch-operations"}
    on_dashboards = {}
    for slug in server.dashboards:
        dash = api.get(f"{server.url}/api/v1/dashboard/{slug}").json()["result"]
        spec = next(d for d in DASHBOARDS.values() if d["slug"] == slug)
        assert dash["dashboard_title"] == spec["dashboard_title"] and dash["published"]
        charts = _charts_of(api, server.url, slug)
        wanted = {v["meta"]["uuid"] for v in spec["position"].values() if isinstance(v, dict) and v.get("type") == "CHART"}
        assert {CHARTS[k]["uuid"] for k in charts} == wanted
        on_dashboards.update(charts)
    assert set(on_dashboards) == set(CHARTS) == set(EXPECTED)
    overview = api.get(f"{server.url}/api/v1/dashboard/derivatives-overview").json()["result"]
    filters = json.loads(overview["json_metadata"])["native_filter_configuration"]
    assert [(f["name"], f["targets"][0]["column"]["name"]) for f in filters] == [("Asset", "asset")]


def test_import_is_idempotent(server, api, built):
    before = {k: api.get(f"{server.url}/api/v1/{k}/?q=(page_size:100)").json()["count"]
              for k in ("chart", "dataset", "dashboard", "database")}
    assert bi.import_assets(server.url, server.user, server.password, built["serving"]) == server.dashboards
    after = {k: api.get(f"{server.url}/api/v1/{k}/?q=(page_size:100)").json()["count"]
             for k in ("chart", "dataset", "dashboard", "database")}
    assert before == after == {"chart": len(CHARTS), "dataset": len(_yaml("datasets")), "dashboard": 2, "database": 1}


def test_database_is_read_only_duckdb_on_the_serving_file(server, api, built):
    (db,) = api.get(f"{server.url}/api/v1/database/").json()["result"]
    full = api.get(f"{server.url}/api/v1/database/{db['id']}/connection").json()["result"]
    assert full["sqlalchemy_uri"] == f"duckdb:///{built['serving']}"
    assert json.loads(full["extra"])["engine_params"]["connect_args"] == {"read_only": True}
    assert not full["allow_dml"]


def test_every_chart_returns_what_duckdb_returns(server, api, built):
    for slug in server.dashboards:
        for key, chart_id in _charts_of(api, server.url, slug).items():
            asset = ASSET if slug == "derivatives-overview" and key != "etf_flows" else None
            got = _chart_rows(api, server.url, chart_id, asset)
            assert len(got) == len(EXPECTED[key]), key
            for rows, sql in zip(got, EXPECTED[key], strict=True):
                _same(rows, _duck_rows(built["serving"], sql, ASSET), tolerance_col=3 if key == "freshness" else None)
    # the two headline numbers, against the marts directly
    charts = _charts_of(api, server.url, "derivatives-overview")
    (oi,) = _chart_rows(api, server.url, charts["aggregated_oi"], ASSET)
    last_day, last_oi = max(oi)
    with duckdb.connect(str(built["serving"]), read_only=True) as con:
        want_day, want_oi = con.execute("SELECT date, oi_usd FROM marts.daily_signals WHERE asset = 'BTC' "
                                        "ORDER BY date DESC LIMIT 1").fetchone()
        etf_day, etf_cum, etf_sum = con.execute(
            "SELECT max(date), arg_max(cumulative_flow_usd, date), sum(total_flow_usd) FROM marts.etf_flows_daily").fetchone()
    assert (last_day.date(), last_oi) == (want_day, pytest.approx(want_oi, rel=1e-12)) and want_oi > 0
    _daily, cumulative = _chart_rows(api, server.url, charts["etf_flows"], None)
    assert max(cumulative) == (datetime(etf_day.year, etf_day.month, etf_day.day), pytest.approx(etf_cum, rel=1e-12))
    assert etf_cum == pytest.approx(etf_sum, rel=1e-9)   # the cumulative line is the running total of the bars


def test_datasets_carry_the_warehouse_comments(server, api, built):
    with duckdb.connect(str(built["serving"]), read_only=True) as con:
        cols = {(s, t, c): cm for s, t, c, cm in con.execute(
            "SELECT schema_name, table_name, column_name, comment FROM duckdb_columns()").fetchall()}
        tables = {(s, t): cm for s, t, cm in con.execute("SELECT schema_name, table_name, comment FROM duckdb_tables()")
                  .fetchall()}
    checked = 0
    for ds in api.get(f"{server.url}/api/v1/dataset/?q=(page_size:100)").json()["result"]:
        full = api.get(f"{server.url}/api/v1/dataset/{ds['id']}").json()["result"]
        if full["sql"]:   # the virtual "latest day" dataset: its own description
            assert full["description"].startswith("The latest day of marts.daily_signals")
            continue
        key = (full["schema"], full["table_name"])
        assert full["description"] == tables[key] and tables[key]
        names = {c["column_name"]: c["description"] for c in full["columns"]}
        assert set(names) == {c for (s, t, c) in cols if (s, t) == key}
        for name, desc in names.items():
            assert desc == cols[(*key, name)], (key, name)
            checked += desc is not None
    assert checked > 100


def test_chromium_renders_the_dashboard(server, tmp_path):
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("Chromium is not installed: run `make browser` (apt-get install chromium chromium-driver)")
    png = tmp_path / "dashboard.png"
    out = subprocess.run([str(BI_PY), "-m", "bi.browser", server.url, "derivatives-overview", str(png)], cwd=ROOT,
                         env={**os.environ, "PERPWATCH_BI_ADMIN_PASSWORD": server.password}, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["title"] == "Derivatives overview" and result["settled"], result
    names = {CHARTS[k]["slice_name"] for k in _yaml("charts")
             if CHARTS[k]["uuid"] in json.dumps(DASHBOARDS["derivatives_overview"]["position"])}
    assert {c["title"] for c in result["charts"]} == names
    for c in result["charts"]:
        assert c["drawn"] and not c["errors"] and not c["empty"], c
    from PIL import Image

    img = Image.open(png).convert("RGB")
    assert img.size[0] >= 1200
    small = img.resize((160, 160))
    colours = set(small.getdata())
    non_white = sum(1 for p in small.getdata() if sum(p) < 720)
    assert len(colours) > 50 and non_white > 160 * 160 * 0.05, (len(colours), non_white)
    # The picture in docs/bi.md is regenerated only on request:
    # PERPWATCH_BI_SCREENSHOT=docs/img/bi_dashboard.png (relative to the repository root).
    keep = settings.get().bi_screenshot
    if keep is not None:
        keep = keep if keep.is_absolute() else ROOT / keep
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, keep)


def test_sqlalchemy_inspector_lists_every_table_and_comment(built):
    out = subprocess.run([str(BI_PY), "-m", "bi.catalog", str(built["serving"])], cwd=ROOT, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    got = {(t["schema"].split(".")[-1], t["table"]): t for t in json.loads(out.stdout)}
    with duckdb.connect(str(built["serving"]), read_only=True) as con:
        tables = con.execute("SELECT schema_name, table_name, comment FROM duckdb_tables() WHERE NOT internal"
                             ).fetchall()
        cols = con.execute("SELECT schema_name, table_name, column_name, comment FROM duckdb_columns() "
                           "WHERE NOT internal ORDER BY schema_name, table_name, column_index").fetchall()
    assert set(got) == {(s, t) for s, t, _ in tables}
    assert {s for s, _ in got} == {"staging", "marts", "meta", "quarantine"}
    for s, t, comment in tables:
        assert got[(s, t)]["comment"] == comment
    want_cols: dict = {}
    for s, t, c, cm in cols:
        want_cols.setdefault((s, t), []).append((c, cm))
    for key, columns in want_cols.items():
        assert [(c["name"], c["comment"]) for c in got[key]["columns"]] == columns, key


def test_duckdb_cli_reads_the_serving_file(built):
    cli = bi.bi_venv() / "bin" / "duckdb"
    sql = ("SELECT asset, count(*) AS days, round(sum(oi_usd)) AS oi FROM marts.daily_signals GROUP BY asset "
           "ORDER BY asset")
    out = subprocess.run([str(cli), "-readonly", "-csv", str(built["serving"]), "-c", sql], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with duckdb.connect(str(built["serving"]), read_only=True) as con:
        want = con.execute(sql).fetchall()
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "asset,days,oi"
    assert [(a, int(d), float(o)) for a, d, o in (ln.split(",") for ln in lines[1:])] == want
    version = subprocess.run([str(cli), "--version"], capture_output=True, text=True).stdout
    assert version.startswith("v1.5.")
    # the exports need no database file at all
    parquet = built["dir"] / "exports" / "daily_signals" / "**" / "*.parquet"   # one file per month (issue 16)
    out = subprocess.run([str(cli), "-csv", "-c", f"SELECT count(*) FROM '{parquet}' WHERE asset = 'BTC'"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip().splitlines()[1]) == dict((a, d) for a, d, _ in want)["BTC"]


DUCKDB2 = "2.0.1"   # bi/requirements-2x.txt
# What the newer reader runs on the serving file (sys.argv[1]); prints one JSON object.
READER_2X = """
import json, sys
import duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
out = {
    "version": duckdb.__version__,
    "storage": con.execute("SELECT tags['storage_version'] FROM duckdb_databases() "
                           "WHERE database_name = current_database()").fetchone()[0],
    "marts": con.execute("SELECT table_name, estimated_size, comment FROM duckdb_tables() "
                         "WHERE schema_name = 'marts' ORDER BY table_name").fetchall(),
    "btc_oi": con.execute("SELECT date::VARCHAR, oi_usd FROM marts.daily_signals WHERE asset = 'BTC' "
                          "ORDER BY date DESC LIMIT 1").fetchone(),
    "rows": {t: con.execute(f'SELECT count(*) FROM marts."{t}"').fetchone()[0]
             for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'marts'").fetchall()},
}
con.close()
print(json.dumps(out))
"""


def _duckdb2_python(tmp_path: Path) -> Path:
    """.venv-bi-2x (`make bi-2x`) if installed, else a throwaway venv with duckdb 2.x from the registry."""
    made = ROOT / ".venv-bi-2x"
    if (made / ".installed").exists():
        return made / "bin" / "python"
    venv = tmp_path / "duckdb2x"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"duckdb=={DUCKDB2}"],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode:
        pytest.skip(f"duckdb {DUCKDB2} could not be installed from the package registry: {pip.stderr[-300:]}")
    return venv / "bin" / "python"


def test_duckdb_2x_reads_the_serving_file_written_by_1_5(built, tmp_path):
    """The file the pipeline's DuckDB 1.5.5 published, opened read-only by DuckDB 2.x: every mart listed
    with its comment and row count, the latest BTC OI equal, and the file left byte-identical."""
    serving = built["serving"]
    before = hashlib.sha256(serving.read_bytes()).hexdigest()
    out = subprocess.run([str(_duckdb2_python(tmp_path)), "-c", READER_2X, str(serving)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert duckdb.__version__ == "1.5.5" and got["version"] == DUCKDB2
    with duckdb.connect(str(serving), read_only=True) as con:
        marts = con.execute("SELECT table_name, comment FROM duckdb_tables() WHERE schema_name = 'marts' "
                            "ORDER BY table_name").fetchall()
        rows = {t: con.execute(f'SELECT count(*) FROM marts."{t}"').fetchone()[0] for t, _ in marts}
        day, oi = con.execute("SELECT date::VARCHAR, oi_usd FROM marts.daily_signals WHERE asset = 'BTC' "
                              "ORDER BY date DESC LIMIT 1").fetchone()
        storage = con.execute("SELECT tags['storage_version'] FROM duckdb_databases() "
                              "WHERE database_name = current_database()").fetchone()[0]
    assert len(marts) >= 8 and "daily_signals" in rows and rows["daily_signals"] > 0
    assert [(t, c) for t, _size, c in got["marts"]] == marts
    assert got["rows"] == rows
    assert got["btc_oi"] == [day, oi]
    assert got["storage"] == storage   # the 1.5.5 file's storage format, as 2.x reports it
    assert hashlib.sha256(serving.read_bytes()).hexdigest() == before   # read-only: nothing rewritten


def test_publish_while_superset_queries(server, api, built):
    """A new day is published while threads keep Superset querying: no query errors, and the first
    query after the swap sees the new day."""
    charts = _charts_of(api, server.url, "derivatives-overview")
    qc = json.loads(api.get(f"{server.url}/api/v1/chart/{charts['aggregated_oi']}").json()["result"]["query_context"])
    qc["queries"][0]["filters"].append({"col": "asset", "op": "IN", "val": [ASSET]})
    # the next build, simulated: a copy of the warehouse with one more day for BTC
    db2 = built["dir"] / "next.duckdb"
    shutil.copy(built["db"], db2)
    con = warehouse.connect(db2)
    try:
        new_day, new_oi = con.execute(
            "SELECT max(date) + 1, 1.2345e10 FROM marts.daily_signals WHERE asset = 'BTC'").fetchone()
        con.execute("INSERT INTO marts.daily_signals BY NAME SELECT * REPLACE (date + 1 AS date, 1.2345e10 AS oi_usd) "
                    "FROM marts.daily_signals WHERE asset = 'BTC' AND date = ?", [new_day - timedelta(days=1)])
    finally:
        con.close()
    statuses: list[int] = []
    stop = threading.Event()

    def hammer():
        s = bi.session(server.url, server.user, server.password)
        while not stop.is_set():
            statuses.append(s.post(f"{server.url}/api/v1/chart/data", json=qc, timeout=60).status_code)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        in_flight_before = len(statuses)
        warehouse.publish(db=db2, serving=built["serving"], exports=built["dir"] / "exports")
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert in_flight_before > 0 and len(statuses) > in_flight_before
    assert set(statuses) == {200}, statuses
    r = api.post(f"{server.url}/api/v1/chart/data", json=qc, timeout=60)
    rows = r.json()["result"][0]["data"]
    last = max(rows, key=lambda x: x["date"])
    assert datetime.fromtimestamp(last["date"] / 1000, UTC).date() == new_day
    assert last["Aggregated OI (USD)"] == pytest.approx(new_oi)
