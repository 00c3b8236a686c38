"""Issue 16: the batch parsers (one call per endpoint for all of a run's pages) give the same
staging as the per-page parsers they replaced, on every high-volume fixture and on a simulator
backfill; the later payload still wins a repeated key; a bad page is quarantined alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from perpwatch import warehouse
from perpwatch.ingest import pipeline
from perpwatch.sources.http import Fetched
from tests.parse_reference.cases import CASES, params_of

REF = Path(__file__).resolve().parent / "parse_reference"
FIX = Path(__file__).resolve().parent / "fixtures"
AT = datetime(2026, 11, 20, tzinfo=UTC)
TABLES = ("instruments", "prices", "open_interest", "funding_rates", "long_short_ratio")


def _load(rel):
    return json.loads((FIX / rel).read_text())


def _same(new: pl.DataFrame, ref: pl.DataFrame, what: str) -> None:
    assert sorted(new.columns) == sorted(ref.columns), what
    new = new.select(ref.columns)
    for c, t in ref.schema.items():
        if t == pl.Null:
            assert new[c].null_count() == new.height, (what, c)
            new = new.with_columns(pl.lit(None).alias(c))
        else:
            new = new.with_columns(pl.col(c).cast(t))
    try:
        assert_frame_equal(new, ref)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}") from exc


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_batch_parse_equals_per_page_reference_on_fixture(case):
    name, source, endpoint, params, path, inst = case
    f = Fetched(1, source, endpoint, params_of(params, _load), 200, orjson.dumps(_load(path)), "x", None, AT)
    con = warehouse.connect(":memory:")
    try:
        report = pipeline.RunReport("t", "t")
        parsed = pipeline.parse_all(con, report, [f], inst)
    finally:
        con.close()
    assert not report.warnings
    refs = sorted(REF.glob(f"fixtures/{name}.*.parquet"))
    assert refs and sorted(parsed.frames) == sorted(p.name.split(".")[1] for p in refs)
    for p in refs:
        table = p.name.split(".")[1]
        _same(pl.concat(parsed.frames[table], how="diagonal_relaxed"), pl.read_parquet(p), f"{name} {table}")


def _staging(db) -> dict[str, pl.DataFrame]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.sql(f"SELECT * EXCLUDE (ingested_at) FROM staging.{t}").pl() for t in TABLES}
    finally:
        con.close()


def test_batch_replay_of_a_simulator_backfill_equals_per_page_staging(tmp_path):
    """The payloads of a 3-day all-venue simulator backfill, replayed: staging equals what the
    per-page parsers loaded from the same payloads (tests/parse_reference/make.py)."""
    db = tmp_path / "w.duckdb"
    con = warehouse.connect(db)
    con.execute(f"INSERT INTO raw.payloads SELECT * FROM read_parquet('{REF / 'payloads.parquet'}')")
    con.close()
    report = pipeline.replay(db)
    assert report.status == "success", report.errors + report.warnings
    got = _staging(db)
    for t in TABLES:
        ref = pl.read_parquet(REF / "staging" / f"{t}.parquet")
        assert ref.height > 0
        key = [c for c in ref.columns if c not in ("raw_id", "as_of")]
        _same(got[t].sort(key, nulls_last=True), ref.sort(key, nulls_last=True), t)


def _oi_page(sym: str, rows: list[tuple[int, str]]) -> bytes:
    return orjson.dumps([{"symbol": sym, "sumOpenInterest": oi, "sumOpenInterestValue": "1.0", "timestamp": ts}
                         for ts, oi in rows])


H = 3_600_000
T0 = 1_795_000_000_000 // H * H


def test_overlapping_pages_the_later_payload_wins_and_a_bad_page_is_quarantined_alone(tmp_path):
    ep = "/futures/data/openInterestHist"
    pages = [
        (ep, {"symbol": "BTCUSDT"}, _oi_page("BTCUSDT", [(T0, "1"), (T0 + H, "2")])),
        ("/futures/data/globalLongShortAccountRatio", {"symbol": "BTCUSDT"}, orjson.dumps([
            {"symbol": "BTCUSDT", "longAccount": "0.6", "shortAccount": "0.4", "longShortRatio": "1.5",
             "timestamp": T0}])),
        (ep, {"symbol": "BTCUSDT"}, _oi_page("BTCUSDT", [(T0 + H, "20"), (T0 + 2 * H, "30")])),   # overlaps
        (ep, {"symbol": "ETHUSDT"}, orjson.dumps({"code": -1130, "msg": "Data sent for parameter is invalid."})),
        (ep, {"symbol": "BTCUSDT"}, _oi_page("BTCUSDT", [(T0 + 2 * H, "300")])),                   # overlaps again
    ]
    fetched = [Fetched(i + 1, "binance", e, p, 200, b, "open_interest", p["symbol"], AT)
               for i, (e, p, b) in enumerate(pages)]
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        report = pipeline.RunReport("t", "t")
        pipeline.load_parsed(con, report, fetched, {})
        oi = con.execute("SELECT epoch_ms(ts), oi_base, raw_id FROM staging.open_interest ORDER BY ts").fetchall()
        q = con.execute("SELECT raw_ids, instrument FROM quarantine.batches").fetchall()
    finally:
        con.close()
    assert oi == [(T0, 1.0, 1), (T0 + H, 20.0, 3), (T0 + 2 * H, 300.0, 5)]
    st = report.stat("binance", "open_interest")
    assert (st.fetched, st.loaded, st.duplicate) == (5, 3, 2)
    assert len(q) == 1 and q[0][1] == "ETHUSDT" and "-1130" in report.warnings[0]


def test_polars_read_pages_equal_the_orjson_path_and_odd_pages_fall_back():
    """decode(objects=...) reads bare JSON arrays with polars' JSON reader; every other page takes the
    orjson path. Same frame (order, values, `_page`) and same rejected pages either way."""
    from perpwatch.sources import batch, binance

    shape = binance.OI_SHAPE
    row = {"symbol": "BTCUSDT", "sumOpenInterest": "1.5", "sumOpenInterestValue": "150000.25", "timestamp": T0}
    bodies = [
        orjson.dumps([row, {**row, "timestamp": T0 + H, "CMCCirculatingSupply": "1"}]),     # extra field
        orjson.dumps({"code": -1130, "msg": "Data sent for parameter is invalid."}),      # error object
        b"[" + orjson.dumps(row)[:-5],                                                      # truncated JSON
        orjson.dumps([]),                                                                   # no rows
        orjson.dumps([{**row, "sumOpenInterest": 2.25, "timestamp": T0 + 2 * H}]),          # a number, not text
        b"  \n" + orjson.dumps([{"symbol": "BTCUSDT", "timestamp": T0 + 3 * H}]),           # missing fields
        orjson.dumps([{**row, "sumOpenInterest": {"x": 1}}]),                              # nested: polars refuses
    ]
    pages = [batch.Page(b, {"symbol": "BTCUSDT"}, AT) for b in bodies]
    rows_of = binance._list_rows("openInterestHist rows")
    fast, slow = batch.decode(pages, rows_of, objects=shape), batch.decode(pages, rows_of)
    assert fast.frame_pages == [0, 4, 5] and fast.row_pages == [6]      # the nested page fell back
    assert fast.pages == slow.pages == [0, 4, 5, 6] and fast.counts == slow.counts == [2, 1, 1, 1]
    assert fast.errors == slow.errors and sorted(fast.errors) == [1, 2]
    assert "-1130" in fast.errors[1] and "not valid JSON" in fast.errors[2]
    ok = [pages[i] for i in (0, 3, 4, 5)]
    a, b = batch.frame(batch.decode(ok, rows_of, objects=shape), shape), batch.frame(batch.decode(ok, rows_of), shape)
    assert_frame_equal(a, b)
    assert a["sumOpenInterest"].to_list() == ["1.5", "1.5", "2.25", None]
    assert a[batch.PAGE].to_list() == [0, 0, 2, 3]
    with pytest.raises(pl.exceptions.PolarsError):     # the nested page: rejected by `frame`, as before
        batch.frame(fast, shape)


def test_newest_per_key_keeps_the_last_row_of_each_key_in_order():
    key = ["venue", "instrument", "ts"]
    t = [datetime(2026, 1, 1, h, tzinfo=UTC) for h in range(3)]
    repeated = pl.DataFrame({"venue": ["b", "b", "b", "o", "b"], "instrument": ["X", "X", "Y", "X", "X"],
                             "ts": [t[0], t[1], t[0], t[0], t[0]], "v": [1.0, 2.0, 3.0, 4.0, 5.0]})
    got = pipeline._newest_per_key(repeated, key)
    # (b, X, t0) appears twice: the later row (v=5) wins and takes the later place; the rest keep their order
    assert got.to_dicts() == [{"venue": "b", "instrument": "X", "ts": t[1], "v": 2.0},
                              {"venue": "b", "instrument": "Y", "ts": t[0], "v": 3.0},
                              {"venue": "o", "instrument": "X", "ts": t[0], "v": 4.0},
                              {"venue": "b", "instrument": "X", "ts": t[0], "v": 5.0}]
    assert_frame_equal(got, repeated.unique(subset=key, keep="last", maintain_order=True))
    # null keys repeat too (one null instrument twice)
    nulls = pl.DataFrame({"venue": ["b", "b"], "instrument": [None, None], "ts": [t[2], t[2]], "v": [1.0, 2.0]})
    assert pipeline._newest_per_key(nulls, key)["v"].to_list() == [2.0]
    unique = repeated[1:4]
    assert pipeline._newest_per_key(unique, key) is unique          # no repeat: the frame as it is


def test_fast_paths_of_numbers_attach_and_require_equal_the_general_ones():
    """batch.numbers (strict cast first), batch.attach (gather by position) and batch.require (no nulls: nothing
    to reject) give exactly what normalize.num / ts_ms, the left join and the per-page check give, and fall
    back to them where the shortcut does not apply."""
    from perpwatch.sources import batch
    from perpwatch.sources.normalize import num, ts_ms

    P = batch.PAGE
    clean = pl.DataFrame({"n": ["1.5", "2e3", "-0.25"], "t": [str(T0), str(T0 + H), str(T0 + 2 * H)],
                          P: [0, 0, 1]})
    padded = clean.with_columns(pl.Series("n", [" 1.5", "2e3 ", "\t-0.25"]), pl.Series("t", [f" {T0}", str(T0 + H), str(T0 + 2 * H)]))
    for df in (clean, padded):
        got = batch.numbers(df, {"n": pl.Float64, "t": pl.Int64}).with_columns(pl.col("t").cast(pl.Datetime("ms", "UTC")))
        assert_frame_equal(got, df.with_columns(num("n"), ts_ms("t")))
    assert batch.numbers(padded, {"n": pl.Float64})["n"].to_list() == [1.5, 2000.0, -0.25]
    with pytest.raises(pl.exceptions.PolarsError):     # not a number even once stripped: raises, as num() does
        batch.numbers(clean.with_columns(pl.Series("n", ["1.5", "abc", "2"])), {"n": pl.Float64})

    rows = pl.DataFrame({P: [0, 0, 2, 3, 3, 3], "v": [1, 2, 3, 4, 5, 6]})
    join = lambda df, c: df.join(c, on=P, how="left", maintain_order="left")  # noqa: E731
    every = pl.DataFrame({P: [0, 2, 3], "_asset": ["BTC", "ETH", "SOL"], "_size": [1.0, 10.0, None]})
    for consts in (every,                                   # sorted, one row per page: gathered
                   every.filter(pl.col(P) != 2),            # a page without constants: null, as the join
                   every.reverse(),                         # not in page order: the join
                   pl.concat([every, every[:1]])):          # a page twice: the join (its rows repeat)
        assert_frame_equal(batch.attach(rows, consts), join(rows, consts))
    assert batch.attach(rows, every)["_asset"].to_list() == ["BTC", "BTC", "ETH", "SOL", "SOL", "SOL"]

    errors: dict[int, str] = {}
    assert batch.require(rows, errors, ["v"], "x") is rows and errors == {}
    holes = rows.with_columns(pl.when(pl.col(P) == 2).then(None).otherwise(pl.col("v")).alias("v"))
    assert batch.require(holes, errors, ["v"], "x")[P].to_list() == [0, 0, 3, 3, 3]
    assert list(errors) == [2] and "missing field(s) ['v']" in errors[2]
