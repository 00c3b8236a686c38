"""Soak: 13 hourly runs (two missed schedules among them) of every venue and provider against the
simulator under every HTTP fault profile, then one clean catch-up run, must build the warehouse the same
runs build without faults, less only what a fault takes for good (an OI snapshot or a day's treasury
list not taken, each traced to the run that failed to fetch it); the liquidation collector, its first
connections dropped, must capture exactly what a fault-free collector captures of the same stream.
Asserted, not printed: every profile was injected on every source it applies to, every run reconciled,
every quarantined batch is accounted for, no gap is left open, no row is lost, extra or loaded twice,
and the marts are equal."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import polars as pl
import pytest

from perpwatch import jobs, sources, transforms, warehouse
from perpwatch.ingest import collector, gaps, pipeline
from perpwatch.simulator.common import Request
from perpwatch.simulator.faults import SPECS, Faults
from perpwatch.simulator.server import start
from perpwatch.sources import coingecko, streams

T0 = datetime(2026, 11, 10, 12, tzinfo=UTC)
H0 = T0 - timedelta(days=2)              # the soak's history starts here (a stream's first window)
REF_H0 = H0 - timedelta(days=2)          # the reference reads further back: a re-read around a gap near H0 does
VENUES = list(sources.VENUE_MODULES)
PROVIDERS = list(sources.PROVIDER_MODULES)
ASSETS = ["BTC"]
# the simulator's HTTP prefixes each source calls (simulator/server.py HTTP_ENV)
PREFIXES = {"binance": ("binance-fapi", "binance-spot"), "binance_coinm": ("binance-dapi",), "bybit": ("bybit",),
            "okx": ("okx",), "hyperliquid": ("hyperliquid",), "deribit": ("deribit",), "farside": ("farside",),
            "sosovalue": ("sosovalue",), "coingecko": ("coingecko",), "fred": ("fred",), "stooq": ("stooq",)}
# 10 % of request attempts faulted; more where a run sends few requests, so that each source meets every
# profile that applies to it within the soak (`cover`: a fault takes the profile its prefix met least)
RATES = {"binance-fapi": 0.2, "hyperliquid": 0.25, "deribit": 0.2, **{p: 0.35 for s in PROVIDERS for p in PREFIXES[s]}}
# hourly runs from 12:00; two missed schedules make the next run catch up several hours. The providers'
# day (US close, published 22:00-24:00 UTC) turns during the soak.
STEPS = [1] * 4 + [4] + [1] * 3 + [5] + [1] * 3       # 12 runs after the first: T0 .. T0 + 19 h
TE = T0 + timedelta(hours=sum(STEPS))
KEYS = {t.split(".", 1)[1]: k for t, k in warehouse.KEYS.items() if t.startswith("staging.")}
STAGING = tuple(KEYS)
TIME = {"prices": "ts", "open_interest": "ts", "funding_rates": "funding_time", "long_short_ratio": "ts",
        "liquidations": "ts", "etf_flows": "date", "macro_closes": "date", "treasury_holdings": "as_of",
        "market_caps": "date"}
# open interest without history: one snapshot per run, at the run's hour ((source, stream, instrument))
SNAPSHOT_OI = {"deribit": ("deribit", "open_interest", "BTC"), "hyperliquid": ("hyperliquid", "open_interest", "_all")}
TREASURY = ("coingecko", "treasury_holdings", "bitcoin")     # a list without timestamp: the day's last fetch wins
# liquidations: the collector replays [TE, TE + 1 h) of the market at 3600x; the first WS_DROPS
# connections of each stream are closed after 5-40 messages (ws_disconnect)
LIQ_END = TE + timedelta(hours=1)
WS_DROPS = 3
WS_STREAMS = {"binance": "binance-fstream", "bybit": "bybit-ws", "okx": "okx-ws"}


def snapshot(db: Path) -> dict[str, pl.DataFrame]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for t in STAGING:
            cols = {c for (c,) in con.execute("SELECT column_name FROM duckdb_columns() WHERE schema_name = "
                                              "'staging' AND table_name = ?", [t]).fetchall()}
            drop = {"raw_id", "ingested_at", "as_of" if t == "instruments" else ""} & cols   # bookkeeping
            df = con.sql(f"SELECT * EXCLUDE ({', '.join(sorted(drop))}) FROM staging.{t}").pl()
            out[t] = df.sort(df.columns)
        return out
    finally:
        con.close()


def duplicate_keys(db: Path) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        total = 0
        for t, key in KEYS.items():
            cols = ", ".join(f'"{k}"' for k in key)
            total += con.execute(f"SELECT count(*) FROM (SELECT {cols} FROM staging.{t} GROUP BY ALL "
                                 "HAVING count(*) > 1)").fetchone()[0]
        return total
    finally:
        con.close()


def publish(db: Path, out: Path) -> dict[str, str]:
    """Build the marts, publish, and hash every Parquet export."""
    with warehouse.session(db) as con:
        transforms.build_all(con)
        warehouse.publish(con=con, serving=out / "serving.duckdb", exports=out / "exports")
    exports = out / "exports"     # <mart>/year=YYYY/month=MM/data.parquet (issue 16)
    return {p.relative_to(exports).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(exports.glob("**/*.parquet"))}


def treasury_served(sim, at: datetime) -> dict[str, tuple[float, float]]:
    """The clean treasury list the simulator serves at `at`: company -> (holdings, value)."""
    sim.set_now(at)
    req = Request("GET", coingecko.TREASURY, {"per_page": "250", "page": "1"})
    body = orjson.loads(sim.venues["coingecko"].treasury(req, "BTC").body)
    return {c["name"]: (c["total_holdings"], c["total_current_value_usd"]) for c in body["companies"]}


def treasury_stored(db: Path, run_at: dict[str, datetime]) -> dict:
    """as_of -> (the time of the run whose fetch the stored list is, company -> (holdings, value))."""
    with warehouse.session(db, read_only=True) as con:
        rows = con.execute("SELECT t.as_of, p.run_id, t.company, t.holdings_btc, t.value_usd "
                           "FROM staging.treasury_holdings t JOIN raw.payloads p USING (raw_id)").fetchall()
    out: dict = {}
    for as_of, run_id, company, held, value in rows:
        at, companies = out.setdefault(as_of, (run_at[run_id], {}))
        assert at == run_at[run_id], as_of                 # one fetch per day stored
        companies[company] = (held, value)
    return out


def failed(report: pipeline.RunReport, stream: tuple[str, str, str]) -> bool:
    """The run did not load this stream: it failed (tainted) or its source was skipped."""
    return stream in report.tainted or not any(s == stream[0] for s, _ in report.stats)


def delete_rows(db: Path, table: str, rows: pl.DataFrame) -> None:
    if rows.height:
        with warehouse.session(db) as con:
            con.register("__rows", rows.select(KEYS[table]).to_arrow())
            con.execute(f"DELETE FROM staging.{table} t USING __rows r WHERE "
                        + " AND ".join(f't."{k}" = r."{k}"' for k in KEYS[table]))


@pytest.mark.slow
def test_soak_under_faults_converges_to_the_clean_warehouse(tmp_path, monkeypatch):
    assert set(sources.available()) == set(VENUES + PROVIDERS) == set(PREFIXES)     # every source is soaked
    assert set(streams.WS_VENUES) == set(WS_STREAMS)
    sim = start(port=0, seed=7, now=T0, ws_speed=3600)
    sim.ws.until = int(LIQ_END.timestamp() * 1000)
    run_at: dict[str, datetime] = {}
    clock = {"start": time.monotonic()}
    try:
        for k, v in sim.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("PERPWATCH_HTTP_TIMEOUT", "1.0")          # the timeout fault stalls 1.5 s

        def run(db: Path, now: datetime, h0: datetime) -> pipeline.RunReport:
            sim.set_now(now)
            monkeypatch.setenv("PERPWATCH_NOW", now.isoformat())     # the client's clock moves with the venue's
            monkeypatch.setattr(pipeline, "DEFAULT_LOOKBACK", now - h0)     # a stream's first window starts at h0
            r = jobs.run(kind="run", end=now, venues=VENUES + PROVIDERS, assets=ASSETS, db=db, build=False)
            run_at[r.run_id] = now
            return r

        def collect(db: Path) -> collector.CollectStats:
            """Capture until every stream's replay has ended (closed at LIQ_END) and the collector has
            reconnected after it, so it has read everything sent."""
            ws = sim.ws
            ws.connections.clear()
            ws.ended.clear()
            drops = sim.faults.injected_at if sim.faults is not None else {}
            stop = threading.Event()

            def watch():
                while not stop.wait(0.05):
                    if all(ws.ended[s] and ws.connections[s] > drops.get(("ws_disconnect", s), 0) + ws.ended[s]
                           for s in WS_STREAMS.values()):
                        stop.set()
            threading.Thread(target=watch, daemon=True).start()
            try:
                return collector.collect(db=db, venues=list(WS_STREAMS), assets=ASSETS, seconds=60,
                                         flush_every_s=0.5, stop_event=stop, backoff_base_s=0.05,
                                         backoff_max_s=0.2, refresh_instruments=False)
            finally:
                stop.set()

        # run after run at the same times: the reference without faults, the soak under every HTTP profile
        faults = Faults("all", rate=0.1, rates=RATES, cover=True, seed=3, timeout_s=1.5, ban_s=0.5,
                        retry_after=0.5, slow_s=0.2)
        ref, soak = tmp_path / "ref.duckdb", tmp_path / "soak.duckdb"
        now, refs, reports, soak_s = T0, [], [], 0.0
        for step in [0] + STEPS:
            now += timedelta(hours=step)
            sim.set_faults(None)
            refs.append(run(ref, now, REF_H0))
            sim.set_faults(faults)
            t0 = time.monotonic()
            reports.append(run(soak, now, H0))       # must never raise, whatever the venue sends
            soak_s += time.monotonic() - t0
        clock["runs"] = time.monotonic()
        injected_at = dict(faults.injected_at)
        with warehouse.session(soak, read_only=True) as con:
            gap_rows = con.execute("SELECT count(*) FROM meta.gaps WHERE missing IS NOT NULL").fetchone()[0]
            batches = con.sql("SELECT run_id, rows, row_refs IS NULL AS whole, raw_ids FROM quarantine.batches").pl()
            runs = con.sql("SELECT run_id, rows_quarantined, payloads_quarantined FROM meta.runs").pl()
            landed = {r for (r,) in con.execute("SELECT raw_id FROM raw.payloads").fetchall()}

        # then one clean catch-up run; the collector, fault-free into the reference, its first connections
        # dropped into the soak
        sim.set_faults(None)
        final = run(soak, TE, H0)
        assert final.status == "success", final.errors + final.warnings
        ref_liq = collect(ref)
        ref_liq_connections = dict(sim.ws.connections)
        ws_faults = sim.set_faults(Faults("ws_disconnect", seed=3, ws_drops=WS_DROPS))
        soak_liq = collect(soak)
        connections = dict(sim.ws.connections)
        sim.set_faults(None)
        clock["collect"] = time.monotonic()
        served = {at: treasury_served(sim, at) for at in set(run_at.values())}
    finally:
        sim.stop()

    assert all(r.status == "success" for r in refs), [r.errors + r.warnings for r in refs]
    # every HTTP profile was injected on every source it applies to (simulator/faults.py `applicable`)
    for src, prefixes in PREFIXES.items():
        want = {p for x in prefixes for path in ["/", *(q for y, q in SPECS if y == x)]
                for p in faults.applicable(x, path)}
        got = {p for (p, x), n in injected_at.items() if x in prefixes and n}
        assert want <= got, (src, sorted(want - got), injected_at)
    # every run reconciled (fetched = loaded + quarantined + duplicate) and never raised
    assert len(reports) == len(STEPS) + 1
    assert not [e for r in reports + [final] for e in r.errors if "reconciliation failed" in e]
    # rows loaded under faults after the first run, from every source: the providers' new day too
    assert {s for r in reports[1:] for (s, _), st in r.stats.items() if st.loaded} >= set(PREFIXES)
    assert gap_rows >= 1                                              # gaps.py found rows missing in good pages
    # every quarantined batch is accounted for: in its run's report and meta.runs, its payloads landed
    assert batches.height > 0 and set(batches["run_id"]) <= {r.run_id for r in reports}
    for r in reports:
        mine = batches.filter(pl.col("run_id") == r.run_id)
        whole = mine.filter(pl.col("whole"))
        t = r.totals()
        assert mine.height == sum(st.quarantined_batches for st in r.stats.values()), r.run_id
        assert mine["rows"].sum() == t["quarantined"], r.run_id
        assert sum(len(json.loads(x)) for x in whole["raw_ids"]) == t["payloads_quarantined"], r.run_id
        assert runs.filter(pl.col("run_id") == r.run_id).select("rows_quarantined", "payloads_quarantined").row(0) \
            == (t["quarantined"], t["payloads_quarantined"]), r.run_id
    assert {i for x in batches["raw_ids"] for i in json.loads(x)} <= landed

    # the collector: each stream's first WS_DROPS connections were dropped, and every drop was followed
    # by a reconnect; the replays it received again loaded once
    for venue, stream in WS_STREAMS.items():
        src = streams.WS_VENUES[venue].source
        assert ws_faults.injected_at[("ws_disconnect", stream)] == WS_DROPS
        assert WS_DROPS <= soak_liq.reconnects[src] < connections[stream], soak_liq.as_dict()
        assert ref_liq.reconnects[src] < ref_liq_connections[stream]
        assert soak_liq.messages[src] > 0 and ref_liq.messages[src] > 0
    assert all(5 <= int(w.split()[-2]) <= 40 for p, _, w, _ in ws_faults.log if p == "ws_disconnect")
    for s in (ref_liq, soak_liq):
        assert s.status == "success" and s.quarantined == 0, s.as_dict()
        assert s.fetched == s.loaded + s.duplicate
    assert soak_liq.duplicate > 0
    for db, s in ((ref, ref_liq), (soak, soak_liq)):
        with warehouse.session(db, read_only=True) as con:
            covered = dict(con.execute("SELECT venue, sum(covered_s) FROM meta.liquidation_coverage "
                                       "GROUP BY venue").fetchall())
            recorded = dict(con.execute("SELECT source, reconnects FROM meta.ws_streams WHERE run_id = ?",
                                        [s.run_id]).fetchall())
        assert set(covered) == set(WS_STREAMS) and min(covered.values()) > 0, covered
        assert recorded == {streams.WS_VENUES[v].source: s.reconnects[streams.WS_VENUES[v].source]
                            for v in WS_STREAMS}

    # What faults may take for good, and only that, is taken from the reference to build the expected
    # warehouse: (1) history before H0 the soak never read (the reference reads from REF_H0); (2) an OI
    # snapshot of a run whose fetch of it failed (a snapshot cannot be taken later); (3) the day's
    # treasury list when the soak's last fetch of that day failed: it keeps the one before, which is
    # exactly the list the simulator served then.
    want, got = snapshot(ref), snapshot(soak)
    expected = tmp_path / "expected.duckdb"
    shutil.copy(ref, expected)
    early = 0
    for t, col in TIME.items():
        cut = pl.lit(H0.date()) if want[t][col].dtype == pl.Date else pl.lit(H0).dt.convert_time_zone("Etc/UTC")
        gone = want[t].filter(pl.col(col) < cut).join(got[t], on=want[t].columns, how="anti", nulls_equal=True)
        delete_rows(expected, t, gone)
        early += gone.height
    by_time = {run_at[r.run_id]: r for r in reports}
    lost = []
    for venue, stream in SNAPSHOT_OI.items():
        mine = pl.col("venue") == venue
        gone = want["open_interest"].filter(mine).join(got["open_interest"].filter(mine), on=["instrument", "ts"],
                                                       how="anti")
        for ts in sorted(set(gone["ts"])):
            assert failed(by_time[ts], stream), (venue, ts)          # only a run that failed it lacks it
            lost.append((venue, ts))
        delete_rows(expected, "open_interest", gone)
    held_ref, held_soak = treasury_stored(ref, run_at), treasury_stored(soak, run_at)
    assert sorted(held_ref) == sorted(held_soak)
    stale = []
    for day, (at_soak, companies) in held_soak.items():
        at_ref, ref_companies = held_ref[day]
        assert ref_companies == served[at_ref] and companies == served[at_soak], day
        assert at_ref == max(t for t in run_at.values() if t.date() == day)           # the day's last run
        assert at_soak <= at_ref and all(failed(r, TREASURY) for t, r in by_time.items()
                                         if t.date() == day and t > at_soak)
        if at_soak != at_ref:
            stale.append(day)
            with warehouse.session(soak, read_only=True) as con:
                rows = con.sql(f"SELECT * FROM staging.treasury_holdings WHERE as_of = DATE '{day}'").pl()
            with warehouse.session(expected) as con:
                con.execute(f"DELETE FROM staging.treasury_holdings WHERE as_of = DATE '{day}'")
                con.register("__rows", rows.to_arrow())
                con.execute("INSERT INTO staging.treasury_holdings BY NAME SELECT * FROM __rows")
    want = snapshot(expected)

    # identical staging: no row lost, none extra, none duplicated
    missing = sum(want[t].join(got[t], on=want[t].columns, how="anti", nulls_equal=True).height for t in STAGING)
    extra = sum(got[t].join(want[t], on=want[t].columns, how="anti", nulls_equal=True).height for t in STAGING)
    dups = duplicate_keys(soak)
    assert (missing, extra, dups) == (0, 0, 0)
    for t in STAGING:
        assert got[t].height > 0 and got[t].equals(want[t]), t
    with warehouse.session(soak, read_only=True) as con:
        assert gaps.open_gaps(con).height == 0
        assert gaps.summary(con)["open"] == 0

    # identical marts. Byte identity of the Parquet exports is not guaranteed: DuckDB sums floats in
    # parallel and in storage order, and the two warehouses stored the same rows in a different order,
    # so a sum can differ in its last bits (seen: 1e-16 relative in daily_signals.oi_usd). Exports are
    # compared byte for byte where they match, else as frames: same shape, same non-float values,
    # floats equal to 1e-9 relative (the heatmap folds pro-rata scalings over hundreds of hours, so its
    # rounding grows past 1e-12; seen: 1.2e-12).
    a, b = publish(expected, tmp_path / "pub_ref"), publish(soak, tmp_path / "pub_soak")
    assert len(a) >= 10 and sorted(a) == sorted(b)
    identical = [n for n in a if a[n] == b[n]]
    for name in sorted(set(a) - set(identical)):
        x = pl.read_parquet(tmp_path / "pub_ref" / "exports" / name)
        y = pl.read_parquet(tmp_path / "pub_soak" / "exports" / name)
        assert x.schema == y.schema and x.shape == y.shape, name
        x, y = x.sort(x.columns, nulls_last=True), y.sort(y.columns, nulls_last=True)
        for c, dtype in x.schema.items():
            if dtype.is_float():
                both = pl.DataFrame({"a": x[c], "b": y[c]})
                assert both.select((pl.col("a").is_null() == pl.col("b").is_null()).all().alias("null"),
                                   (pl.col("a").is_nan() == pl.col("b").is_nan()).all().alias("nan")).row(0) \
                    == (True, True), (name, c)
                diff = both.filter(pl.col("a").is_not_nan()).select(
                    ((pl.col("a") - pl.col("b")).abs() / pl.max_horizontal(pl.col("a").abs(), pl.lit(1.0))).max()).item()
                assert diff is None or diff <= 1e-9, (name, c, diff)
            else:
                assert x[c].equals(y[c]), (name, c)

    by_profile: dict[str, int] = {}
    by_source = {src: sum(n for (_, x), n in injected_at.items() if x in prefixes) for src, prefixes in PREFIXES.items()}
    for (p, _), n in injected_at.items():
        by_profile[p] = by_profile.get(p, 0) + n
    figures = {"faults_injected": sum(injected_at.values()), "by_profile": by_profile, "by_source": by_source,
               "run_statuses": [r.status for r in reports], "quarantined_batches": batches.height,
               "rows_compared": sum(want[t].height for t in STAGING), "early_rows": early,
               "lost_snapshots": lost, "stale_treasury_days": stale, "marts_compared": len(a),
               "marts_byte_identical": len(identical),
               "liquidations": {"reconnects": dict(soak_liq.reconnects), "duplicate": soak_liq.duplicate},
               "soak_seconds": round(soak_s, 1), "runs_s": round(clock["runs"] - clock["start"], 1),
               "collect_s": round(clock["collect"] - clock["runs"], 1),
               "compare_s": round(time.monotonic() - clock["collect"], 1)}
    print("\nSOAK " + json.dumps(figures, default=str))
