"""Security: API keys only from the environment and never landed, logged or recorded; names from
venues checked before use; SQL values as parameters; the read side opens the warehouse read-only."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import duckdb
import orjson
import polars as pl
import pytest

from perpwatch import jobs, warehouse
from perpwatch.ingest import gaps, pipeline
from perpwatch.serving import status
from perpwatch.simulator.common import Response
from perpwatch.simulator.faults import Faults
from perpwatch.simulator.server import start
from perpwatch.sources import binance, coingecko, sosovalue, stooq
from perpwatch.sources.http import ServerError, VenueClient

NOW = datetime(2026, 11, 20, tzinfo=UTC)
MARKER = "SECRET-MARKER-7e1c"
KEYS = {"SOSOVALUE_API_KEY": f"{MARKER}-soso", "COINGECKO_API_KEY": f"{MARKER}-cg", "STOOQ_API_KEY": f"{MARKER}-stooq"}


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


def test_keys_come_from_the_environment_only(monkeypatch):
    for k in KEYS:
        monkeypatch.delenv(k, raising=False)
    for mod in (sosovalue, coingecko, stooq):
        cl = mod.make_client(None)
        assert not cl._secret_headers and not cl.session.params, mod.SOURCE
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    assert sosovalue.make_client(None)._secret_headers == {"x-soso-api-key": KEYS["SOSOVALUE_API_KEY"]}
    assert coingecko.make_client(None)._secret_headers == {"x-cg-demo-api-key": KEYS["COINGECKO_API_KEY"]}
    assert stooq.make_client(None).session.params == {"apikey": KEYS["STOOQ_API_KEY"]}


def test_keys_never_reach_raw_landing_records_or_logs(env, tmp_path, monkeypatch, caplog):
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "urllib3.connectionpool", "perpwatch", "sources", "requests"):
        caplog.set_level(logging.DEBUG, logger=name)
    monkeypatch.setattr(VenueClient, "_backoff", lambda self, attempt, retry_after: self._count("retries"))
    env.set_faults(Faults("5xx,truncate,reset", rate=0.3, seed=2))
    db = tmp_path / "w.duckdb"
    r1 = jobs.run(kind="backfill", start=NOW - timedelta(days=10), end=NOW,
                      venues=["sosovalue", "coingecko", "stooq"], assets=["BTC"], db=db, build=False)
    assert env.faults.injected                               # the error paths ran too
    # and a source that cannot connect at all: the error message carries the request URL
    monkeypatch.setenv("PERPWATCH_URL_STOOQ", "http://127.0.0.1:9/stooq")
    r2 = jobs.run(kind="backfill", start=NOW - timedelta(days=10), end=NOW, venues=["stooq"], assets=["BTC"],
                      db=db, build=False)
    assert r2.status == "failed" and any("connection failed" in e for e in r2.errors)
    cl = stooq.make_client(None)
    cl.max_retries = 0
    with pytest.raises(ServerError) as exc:
        cl.get("/q/d/l/", {"s": "xauusd", "i": "d"})
    assert "apikey=***" in str(exc.value) and MARKER not in str(exc.value)

    with warehouse.session(db, read_only=True) as con:
        payloads = con.execute("SELECT source, params, body, encoding FROM raw.payloads").fetchall()
        assert {p[0] for p in payloads} >= {"sosovalue", "coingecko", "stooq"}
        for src, params, body, enc in payloads:
            assert MARKER not in (params or ""), src
            assert MARKER.encode() not in warehouse.payload_body(body, enc), src
        records = [json.dumps(row, default=str) for t in ("meta.runs", "meta.run_datasets", "quarantine.batches")
                   for row in con.execute(f"SELECT * FROM {t}").fetchall()]
        assert len(records) >= 3
        assert not [r for r in records if MARKER in r]
        assert any("connection failed" in r for r in records)
    for rep in (r1, r2):
        assert MARKER not in " ".join(rep.errors + rep.warnings)
    logged = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert "apikey=***" in logged                             # urllib3's DEBUG request lines were captured
    assert MARKER not in logged


class InjectSymbols(Faults):
    """Adds instruments with hostile names to Binance's exchangeInfo and records every request."""

    BAD = ["BTCUSDT';DROP TABLE staging.prices;--", "BTCUSDT?x=1&y=2", "BTC USDT"]

    def __init__(self):
        super().__init__(None)
        self.profiles = ("drift:new",)        # any, so the server consults this object
        self.seen: list[str] = []

    def serve(self, prefix, req, handle):
        self.seen.append(req.path + " " + json.dumps(req.query) + " " + req.body.decode("utf-8", "replace"))
        resp = handle()
        if req.path == "/fapi/v1/exchangeInfo" and resp.status == 200:
            info = orjson.loads(resp.body)
            base = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
            info["symbols"] += [{**base, "symbol": bad} for bad in self.BAD]
            resp = Response(200, orjson.dumps(info), resp.content_type, dict(resp.headers))
        return resp, None


def test_hostile_instrument_names_are_refused(env, tmp_path):
    f = env.set_faults(InjectSymbols())
    db = tmp_path / "w.duckdb"
    r = jobs.run(kind="backfill", start=NOW - timedelta(days=1), end=NOW, venues=["binance"], assets=["BTC"],
                     db=db, build=False)
    env.set_faults(None)
    assert r.status == "warning", r.errors
    # validated before anything else: the instrument rows are quarantined, never stored or requested
    with warehouse.session(db, read_only=True) as con:
        names = {x for (x,) in con.execute("SELECT instrument FROM staging.instruments").fetchall()}
        q = con.execute("SELECT instrument, message FROM quarantine.batches WHERE dataset = 'instruments'").fetchall()
        assert con.execute("SELECT count(*) FROM staging.prices WHERE instrument = 'BTCUSDT'").fetchone()[0] == 24 * 4
    assert "BTCUSDT" in names and not names & set(InjectSymbols.BAD)
    assert {i for i, _ in q} == set(InjectSymbols.BAD)
    assert all("expect_column_values_to_match_regex on instrument" in m for _, m in q)
    assert not [s for s in f.seen if "DROP" in s or "x=1" in s or "BTC USDT" in s]
    # and the planner's own check: a stream for such a name is skipped with a warning
    report = pipeline.RunReport("t", "run")
    inst = pl.DataFrame([{"venue": "binance", "instrument": bad, "asset": "BTC", "status": "trading",
                          "margin": "linear", "quote": "USDT", "kind": "perp"} for bad in ["BTCUSDT", *InjectSymbols.BAD]])
    units = pipeline.plan_units({"binance": binance}, report, inst, ["BTC"])
    planned = {s.instrument for ss in units.values() for s in ss}
    assert planned == {"BTCUSDT"}
    assert sum("skipped stream" in w for w in report.warnings) == 9 * len(InjectSymbols.BAD)


def test_sql_identifiers_from_allow_lists_values_as_parameters(tmp_path):
    db = tmp_path / "w.duckdb"
    evil = "x'); DROP TABLE staging.prices; --"
    with warehouse.session(db) as con:
        with pytest.raises(KeyError):
            warehouse.upsert(con, "staging.prices; DROP TABLE staging.funding_rates", pl.DataFrame({"a": [1]}))
        df = pl.DataFrame({"venue": ["binance"], "instrument": [evil], "ts": [NOW], "oi_base": [1.0]},
                          schema_overrides={"ts": pl.Datetime("us", "UTC")})
        with warehouse.transaction(con):
            res = warehouse.upsert(con, "staging.open_interest", df)
        assert res.loaded == 1
        assert con.execute("SELECT instrument FROM staging.open_interest").fetchone()[0] == evil
        assert con.execute("SELECT count(*) FROM staging.prices").fetchone()[0] == 0       # still there
        assert warehouse.get_watermark(con, evil, evil, evil) is None
        warehouse.advance_watermark(con, evil, "open_interest", evil, NOW)
        assert warehouse.get_watermark(con, evil, "open_interest", evil) == NOW
        # gap bookkeeping reads only allow-listed tables; a stream of another dataset is ignored
        from perpwatch.sources.base import Stream

        holes = gaps.find_holes(con, {Stream(evil, "staging.prices; --", "x", evil): (NOW, NOW)})
        assert holes.height == 0


def test_read_side_opens_read_only(tmp_path, monkeypatch):
    db = tmp_path / "w.duckdb"
    with warehouse.session(db) as con:
        warehouse.publish(con=con, serving=tmp_path / "serving.duckdb", exports=tmp_path / "exports")
    con, path, snapshot = status.open_readonly(db)
    try:
        assert not snapshot
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("CREATE TABLE meta.x (a INT)")
    finally:
        con.close()
    # the warehouse locked by a writer: status falls back to the serving snapshot, read-only too

    def locked(*a, **kw):
        raise warehouse.WarehouseLocked("warehouse is locked by another process")
    monkeypatch.setattr(warehouse, "connect", locked)
    monkeypatch.setenv("PERPWATCH_SERVING_DB", str(tmp_path / "serving.duckdb"))
    con, path, snapshot = status.open_readonly(db)
    try:
        assert snapshot and path == tmp_path / "serving.duckdb"
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM meta.runs")
    finally:
        con.close()
