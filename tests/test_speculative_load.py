"""load_table writes a batch while GX validates it (pipeline._Speculative) and commits only on a pass;
sources.batch reads many JSON pages on a thread pool. Both must be invisible in what lands."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from perpwatch import warehouse
from perpwatch.ingest import pipeline
from perpwatch.sources import batch, binance
from perpwatch.sources.http import Fetched

AT = datetime(2026, 11, 20, tzinfo=UTC)
H = 3_600_000
T0 = 1_795_000_000_000 // H * H
EP = "/futures/data/openInterestHist"


def _fetched(values: list[list[str]], sym: str = "BTCUSDT") -> list[Fetched]:
    """One openInterestHist page per list of sumOpenInterest values, consecutive hours."""
    out, h = [], 0
    for i, vals in enumerate(values):
        rows = [{"symbol": sym, "sumOpenInterest": v, "sumOpenInterestValue": "10.0", "timestamp": T0 + (h + k) * H}
                for k, v in enumerate(vals)]
        h += len(vals)
        out.append(Fetched(i + 1, "binance", EP, {"symbol": sym}, 200, orjson.dumps(rows), "open_interest", sym, AT))
    return out


def _state(con) -> tuple:
    return (con.execute("SELECT epoch_ms(ts), oi_base, raw_id FROM staging.open_interest ORDER BY ts").fetchall(),
            con.execute("SELECT dataset, instrument, epoch_ms(last_ts) FROM meta.watermarks ORDER BY ALL").fetchall(),
            con.execute("SELECT count(*) FROM quarantine.batches").fetchone()[0])


def test_the_write_runs_during_validation_and_is_invisible_until_it_passes(tmp_path, monkeypatch):
    """While GX validates, the rows are already upserted on the worker thread, inside an open
    transaction: another connection sees none of them; after the pass they are all there."""
    con = warehouse.connect(tmp_path / "w.duckdb")
    upserted = threading.Event()
    seen_during: list[int] = []
    real_upsert, real_validate = warehouse.upsert, pipeline.validate

    def upsert(*a, **kw):
        out = real_upsert(*a, **kw)
        upserted.set()
        return out

    def validate(table, df, now=None):
        if table == "open_interest":
            assert upserted.wait(30), "the write did not start before validation finished"
            other = con.cursor()          # a second connection to the same database
            seen_during.append(other.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0])
            other.close()
        return real_validate(table, df, now=now)

    monkeypatch.setattr(warehouse, "upsert", upsert)
    monkeypatch.setattr(pipeline, "validate", validate)
    try:
        report = pipeline.RunReport("t", "t")
        pipeline.load_parsed(con, report, _fetched([["1", "2"], ["3"]]), {})
        rows, marks, quarantined = _state(con)
    finally:
        con.close()
    assert seen_during == [0]
    assert rows == [(T0, 1.0, 1), (T0 + H, 2.0, 1), (T0 + 2 * H, 3.0, 2)]
    assert marks == [("open_interest", "BTCUSDT", T0 + 2 * H)] and quarantined == 0
    st = report.stat("binance", "open_interest")
    assert (st.fetched, st.loaded, st.duplicate, st.quarantined, st.validation) == (3, 3, 0, 0, "passed")


def test_a_failed_validation_rolls_the_early_write_back(tmp_path):
    """A negative OI row fails GX: the speculative write of the whole batch is rolled back, then only
    the good rows load (one transaction per source, as without speculation)."""
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        report = pipeline.RunReport("t", "t")
        pipeline.load_parsed(con, report, _fetched([["1", "-5"], ["3"]]), {})
        rows, marks, quarantined = _state(con)
        loaded = con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0]
    finally:
        con.close()
    assert rows == [(T0, 1.0, 1), (T0 + 2 * H, 3.0, 2)] and loaded == 2
    assert marks == [("open_interest", "BTCUSDT", T0 + 2 * H)] and quarantined == 1
    st = report.stat("binance", "open_interest")
    assert (st.fetched, st.loaded, st.quarantined, st.validation) == (3, 2, 1, "partial")


@pytest.mark.parametrize("broken", [(warehouse, "upsert", "disk full"), (pipeline, "validate", "GX broke")],
                         ids=["write error on the worker", "validation error"])
def test_an_error_on_either_thread_is_raised_and_nothing_commits(tmp_path, monkeypatch, broken):
    module, name, message = broken

    def fail(*a, **kw):
        raise RuntimeError(f"{message} (test)")

    monkeypatch.setattr(module, name, fail)
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        with pytest.raises(RuntimeError, match=message):
            pipeline.load_parsed(con, pipeline.RunReport("t", "t"), _fetched([["1", "2"]]), {})
        rows, marks, _ = _state(con)
    finally:
        con.close()
    assert rows == [] and marks == []


def test_the_threaded_page_read_keeps_page_order_and_falls_back_like_the_sequential_one(monkeypatch):
    """decode reads many JSON-array pages on a thread pool: same frames, same page indexes, same
    rejected pages as reading them one after another, with odd pages anywhere in the batch."""
    row = {"symbol": "BTCUSDT", "sumOpenInterest": "1.5", "sumOpenInterestValue": "150000.25", "timestamp": T0}
    kinds = [
        lambda i: orjson.dumps([{**row, "timestamp": T0 + i * H, "sumOpenInterest": str(i)}] * (i % 3 + 1)),
        lambda i: orjson.dumps({"code": -1130, "msg": "Data sent for parameter is invalid."}),
        lambda i: b"[" + orjson.dumps(row)[:-5],
        lambda i: orjson.dumps([]),
        lambda i: orjson.dumps([{**row, "sumOpenInterest": {"x": i}}]),
    ]
    bodies = [kinds[(i * 7) % 11 % len(kinds)](i) if i % 4 else kinds[0](i) for i in range(203)]
    pages = [batch.Page(b, {"symbol": "BTCUSDT"}, AT) for b in bodies]
    rows_of = binance._list_rows("openInterestHist rows")
    monkeypatch.setattr(batch, "_READERS", 4)
    threaded = batch.decode(pages, rows_of, objects=binance.OI_SHAPE)
    monkeypatch.setattr(batch, "_READERS", 1)
    sequential = batch.decode(pages, rows_of, objects=binance.OI_SHAPE)
    assert len(threaded.frames) > 60 and threaded.errors and threaded.row_pages    # every kind occurred
    for f in ("pages", "counts", "errors", "frame_pages", "row_pages", "row_counts"):
        assert getattr(threaded, f) == getattr(sequential, f), f
    assert_frame_equal(pl.concat(threaded.frames), pl.concat(sequential.frames))
    expected = [r["sumOpenInterest"] for i in threaded.frame_pages for r in orjson.loads(bodies[i])]
    assert pl.concat(threaded.frames)["sumOpenInterest"].to_list() == expected
    assert expected[:4] == ["0", "3", "4", "4"]


def test_frames_go_to_duckdb_in_whole_row_groups_and_arrive_unchanged(tmp_path):
    """warehouse.arrow slices a frame into DuckDB row groups (122,880 rows: DuckDB's own row_group_size
    here) so the insert runs on every thread; what lands is the frame, in order."""
    n = 3 * warehouse.ROW_GROUP + 17
    df = pl.DataFrame({"i": range(n), "s": [f"S{i % 7}" for i in range(n)]})
    df = pl.concat([df.head(1000), df.slice(1000)], rechunk=False)       # two chunks that split a row group
    t = warehouse.arrow(df)
    assert [b.num_rows for b in t.to_batches()] == [warehouse.ROW_GROUP] * 3 + [17]
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        assert con.execute("SELECT current_setting('threads')").fetchone()[0] >= 1
        con.execute("CREATE TABLE t (i BIGINT, s VARCHAR)")
        con.register("__t", t)
        con.execute("INSERT INTO t SELECT * FROM __t")
        back = con.execute("SELECT i, s FROM t ORDER BY rowid").pl()
        groups = con.execute("SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('t')").fetchone()[0]
    finally:
        con.close()
    assert_frame_equal(back, df)
    assert groups == 4
    assert warehouse.arrow(df.head(5)).num_rows == 5


def test_concurrent_loads_of_the_same_keys_store_each_key_once(tmp_path, monkeypatch):
    """Two runs in one process (the demo's backfills) load the same rows at the same time, each on its own
    connection. Each upsert decides what is new inside its transaction; without turns on the table both
    transactions inserted the same keys and both committed (staging.instruments held every okx row twice)."""
    con = warehouse.connect(tmp_path / "w.duckdb")
    real_upsert = warehouse.upsert
    inside = threading.Barrier(2, timeout=2)

    def upsert(*a, **kw):
        out = real_upsert(*a, **kw)
        try:
            inside.wait()         # both transactions hold their upsert at once, if the table lets them
        except threading.BrokenBarrierError:
            pass                  # it did not: the other load waits for this one's COMMIT
        return out

    monkeypatch.setattr(warehouse, "upsert", upsert)
    reports, errors = [], []

    def run(i: int) -> None:
        cur = con.cursor()
        try:
            report = pipeline.RunReport(f"t{i}", "t")
            pipeline.load_parsed(cur, report, _fetched([["1", "2"], ["3"]]), {})
            reports.append(report.stat("binance", "open_interest"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            cur.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        rows = con.execute("SELECT epoch_ms(ts), count(*) FROM staging.open_interest GROUP BY ALL ORDER BY 1").fetchall()
    finally:
        con.close()
    assert errors == []
    assert rows == [(T0, 1), (T0 + H, 1), (T0 + 2 * H, 1)]
    assert sorted((s.loaded, s.duplicate) for s in reports) == [(0, 3), (3, 0)]
