"""Per-commit costs on the lake path (issue 12): buffered raw landing, batched watermarks, one-query
planning. Real PostgreSQL (127.0.0.1:5432, trust auth), one random database per test, dropped at the end;
skipped with a reason when PostgreSQL or the extension packages are missing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from perpwatch import warehouse
from perpwatch.warehouse import lake
from tests.pglake import lake_database, unavailable

NOW = datetime(2026, 11, 20, tzinfo=UTC)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


_why = unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture
def lake_url(tmp_path, monkeypatch):
    yield from lake_database(tmp_path, monkeypatch, "pw_land")


def _committed(url: str) -> dict[int, bytes]:
    """raw_id -> body of every payload another process would see now."""
    con = warehouse.connect(url, read_only=True)
    try:
        return {i: warehouse.payload_body(b, e) for i, b, e in
                con.execute("SELECT raw_id, body, encoding FROM raw.payloads").fetchall()}
    finally:
        con.close()


def _snapshots(url: str) -> int:
    con = warehouse.connect(url, read_only=True)
    try:
        return con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0]
    finally:
        con.close()


def test_buffered_lander_commits_batches_in_landing_order(lake_url, monkeypatch):
    monkeypatch.setattr(lake, "LAND_BATCH_PAGES", 4)
    monkeypatch.setattr(lake, "LAND_BATCH_SECONDS", 3600.0)
    con = warehouse.connect(lake_url)
    lander = warehouse.Lander(con, "run-1", buffered=True)
    assert lander.buffered
    before = _snapshots(lake_url)
    ids = [lander("okx", "/api/v5/x", {"page": i}, 200, b'{"page": %d}' % i, NOW) for i in range(3)]
    assert ids == [ids[0], ids[0] + 1, ids[0] + 2]       # ids at landing, in order, from the sequence
    assert _committed(lake_url) == {}                    # three pending: nothing committed yet
    ids.append(lander("okx", "/api/v5/x", {"page": 3}, 200, b'{"page": 3}', NOW))   # the 4th fills a batch
    assert sorted(_committed(lake_url)) == ids and lander.commits == 1
    ids.append(lander("okx", "/api/v5/x", {"page": 4}, 429, b"slow down", NOW))
    assert len(_committed(lake_url)) == 4
    assert lander.flush() == 1 and lander.flush() == 0   # flush commits what is pending, once
    got = _committed(lake_url)
    assert got == {ids[i]: (b'{"page": %d}' % i if i < 4 else b"slow down") for i in range(5)}
    assert _snapshots(lake_url) - before == 2            # five bodies, two commits (not five)
    row = con.execute("SELECT params, http_status, run_id, fetched_at FROM raw.payloads WHERE raw_id = ?",
                      [ids[4]]).fetchone()
    assert row == ('{"page": 4}', 429, "run-1", NOW)
    con.close()


def test_lander_on_the_file_still_commits_every_body_at_once(tmp_path):
    db = tmp_path / "w.duckdb"
    con = warehouse.connect(db)
    lander = warehouse.Lander(con, "run-1", buffered=True)     # buffering is a lake-only measure
    assert not lander.buffered
    a = lander("binance", "/fapi/v1/time", {}, 200, b'{"serverTime": 1}', NOW)
    b = lander("binance", "/fapi/v1/time", {}, 200, b'{"serverTime": 2}', NOW)
    assert b == a + 1 and lander.flush() == 0
    con.close()
    ro = warehouse.connect(db, read_only=True)
    assert ro.execute("SELECT count(*) FROM raw.payloads").fetchone()[0] == 2
    ro.close()


@pytest.mark.parametrize("backend", ["file", "lake"])
def test_advance_watermarks_moves_each_stream_forward_only(backend, lake_url, tmp_path):
    con = warehouse.connect(lake_url if backend == "lake" else tmp_path / "w.duckdb")
    warehouse.advance_watermark(con, "okx", "open_interest", "BTC-USDT-SWAP", T0 + timedelta(hours=5))
    warehouse.advance_watermark(con, "bybit", "open_interest", "BTCUSDT", T0 + timedelta(hours=1))

    def write():
        warehouse.advance_watermarks(con, "okx", [
            ("open_interest", "BTC-USDT-SWAP", T0 + timedelta(hours=3)),     # behind the stored 5h: stays 5h
            ("open_interest", "ETH-USDT-SWAP", T0 + timedelta(hours=7)),     # new stream
            ("open_interest", "ETH-USDT-SWAP", T0 + timedelta(hours=9)),     # same stream twice: the later wins
            ("prices/mark", "BTC-USDT-SWAP", T0 + timedelta(hours=2))])
    warehouse.write(con, write, table="meta.watermarks")
    assert warehouse.all_watermarks(con) == {
        ("okx", "open_interest", "BTC-USDT-SWAP"): T0 + timedelta(hours=5),
        ("okx", "open_interest", "ETH-USDT-SWAP"): T0 + timedelta(hours=9),
        ("okx", "prices/mark", "BTC-USDT-SWAP"): T0 + timedelta(hours=2),
        ("bybit", "open_interest", "BTCUSDT"): T0 + timedelta(hours=1)}     # another source: untouched
    warehouse.write(con, lambda: warehouse.advance_watermarks(con, "okx", [
        ("open_interest", "BTC-USDT-SWAP", T0 + timedelta(hours=6)),
        ("prices/mark", "BTC-USDT-SWAP", T0 + timedelta(hours=1))]), table="meta.watermarks")
    assert warehouse.get_watermark(con, "okx", "open_interest", "BTC-USDT-SWAP") == T0 + timedelta(hours=6)
    assert warehouse.get_watermark(con, "okx", "prices/mark", "BTC-USDT-SWAP") == T0 + timedelta(hours=2)
    assert con.execute("SELECT count(*) FROM meta.watermarks").fetchone()[0] == 4
    con.close()


def test_extract_commits_every_page_before_the_load_step(lake_url, monkeypatch):
    """The pipeline's extract step on the lake: batches while fetching, and every page of the unit is
    committed (visible to another process) when the step returns — before load() parses anything."""
    from perpwatch.ingest import pipeline
    from perpwatch.simulator.server import start

    sim = start(port=0, seed=7, now=NOW)
    try:
        for k, v in sim.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("PERPWATCH_PROVIDERS", "")
        plan = pipeline.prepare("backfill", NOW - timedelta(days=2), NOW, ["okx"], ["BTC"], lake_url)
        try:
            unit = next(u for u in plan.units if u.kind == "long_short_ratio/accounts")
            before = _snapshots(lake_url)
            got = pipeline.extract(plan.run_id, unit)
            ids = [p.raw_id for p in got.pages]
            assert len(ids) >= 2
            committed = _committed(lake_url)
            assert set(ids) <= set(committed)
            assert _snapshots(lake_url) - before < len(ids)      # fewer commits than pages
            assert all(committed[i].startswith(b"{") for i in ids)
            report = pipeline.load(plan.run_id, lake_url, got.pages)
            assert report.stat("okx", "long_short_ratio").loaded > 0
        finally:
            pipeline.finish(plan.report, lake_url)
    finally:
        sim.stop()


def _orphans_and_dups(url: str) -> tuple[int, int, int]:
    """(staging rows whose raw_id is not committed in raw.payloads, duplicate keys in long_short_ratio,
    streams whose watermark is ahead of their newest row)."""
    con = warehouse.connect(url, read_only=True)
    try:
        orphans = sum(con.execute(f"SELECT count(*) FROM staging.{t} s ANTI JOIN raw.payloads p USING (raw_id)")
                      .fetchone()[0] for t in ("instruments", "long_short_ratio", "open_interest", "funding_rates"))
        dups = con.execute("SELECT count(*) - count(DISTINCT (venue, instrument, ts, population)) "
                           "FROM staging.long_short_ratio").fetchone()[0]
        ahead = con.execute("""
            SELECT count(*) FROM meta.watermarks w
            WHERE w.source = 'okx' AND w.dataset LIKE 'long_short_ratio/%' AND w.last_ts > coalesce(
                (SELECT max(ts) FROM staging.long_short_ratio r WHERE r.venue = 'okx' AND r.instrument = w.instrument
                 AND r.population = split_part(w.dataset, '/', 2)), TIMESTAMPTZ '1970-01-01')""").fetchone()[0]
        return orphans, dups, ahead
    finally:
        con.close()


def test_backfill_sigkilled_mid_extract_leaves_no_orphans_and_a_rerun_heals(lake_url, tmp_path):
    """A worker SIGKILLed while its pages are partly committed: every staging row's raw payload is
    committed, no duplicate key, no watermark ahead of its rows; the same backfill again completes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from perpwatch.simulator.server import start

    root = Path(__file__).resolve().parent.parent
    warehouse.connect(lake_url).close()
    sim = start(port=0, seed=7, now=NOW, latency_ms=20.0)
    try:
        env = {k: v for k, v in os.environ.items() if k != "PERPWATCH_CATALOG"}
        env.update(sim.env())
        env.update({"PERPWATCH_PROVIDERS": "", "PERPWATCH_CATALOG": lake_url,
                    "PERPWATCH_DATA_PATH": str(tmp_path / "lakedata"), "PERPWATCH_GX_DOCS": str(tmp_path / "gx"),
                    "PERPWATCH_EXPORTS": str(tmp_path / "exports"), "PERPWATCH_ALERT_WEBHOOK": ""})
        cmd = [sys.executable, "-m", "perpwatch", "backfill", "--no-prefect", "--no-build", "--start",
               (NOW - timedelta(days=20)).isoformat(), "--end", NOW.isoformat(), "--venues", "okx", "--assets", "BTC"]
        p = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        ro = warehouse.connect(lake_url, read_only=True)
        try:
            while time.monotonic() < deadline and p.poll() is None:   # kill once rubik pages are committed
                if ro.execute("SELECT count(*) FROM raw.payloads WHERE endpoint LIKE '%rubik%'").fetchone()[0]:
                    break
                time.sleep(0.05)
        finally:
            ro.close()
        assert p.poll() is None, "the backfill finished before it could be killed"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        assert _orphans_and_dups(lake_url) == (0, 0, 0)
        assert subprocess.run(cmd, env=env, cwd=root, capture_output=True, timeout=600).returncode == 0
        assert _orphans_and_dups(lake_url) == (0, 0, 0)
        con = warehouse.connect(lake_url, read_only=True)
        n = con.execute("SELECT count(*) FROM staging.long_short_ratio WHERE venue = 'okx'").fetchone()[0]
        con.close()
        assert n > 0
    finally:
        sim.stop()
