"""The benchmark harness runs and writes sane numbers (`--size tiny`); the fast paths it introduced
(set-based upsert, incremental mart builds) give exactly what the straightforward versions give.
A benchmark is not a test: no timing is asserted here."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from perpwatch import transforms, warehouse
from perpwatch.warehouse import KEYS, PROVENANCE, LoadResult, table_columns

ROOT = Path(__file__).resolve().parent.parent


def test_bench_tiny_runs_and_writes_sane_numbers(tmp_path):
    out = tmp_path / "BENCH.md"
    res = subprocess.run([sys.executable, "-m", "perpwatch.bench", "--size", "tiny", "--only", "load,marts,extract",
                          "--workdir", str(tmp_path), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "results-tiny.json").read_text())
    s = r["load"]["summary"]
    rows = r["load"]["raw"]["rows"]
    assert rows == 10_000 and r["load"]["raw"]["pages"] == 20
    assert sorted(r["load"]["raw"]["variants"]) == ["pipeline_novalidation", "pipeline_validated"]
    for v in ("pipeline_novalidation", "pipeline_validated"):
        fresh, reload = s[f"{v}.fresh"], s[f"{v}.reload"]
        assert (fresh["loaded"], fresh["duplicate"], fresh["quarantined"]) == (rows, 0, 0)
        assert (reload["loaded"], reload["duplicate"]) == (0, rows)        # idempotent
        assert 0 < fresh["total"]["median"] < 60 and fresh["rows_per_s"] > 0
    assert all(x["rows_in_table"] == rows for x in r["load"]["raw"]["variants"]["pipeline_validated"])
    assert sorted(r["load"]["raw"]["warmup"]) == ["pipeline_novalidation", "pipeline_validated"]   # untimed round
    assert s["executemany"]["rows"] == 500 and s["ceiling"]["rows_per_s"] > s["executemany"]["rows_per_s"]
    m = r["marts"]
    assert sorted(int(k) for k in m["sizes"]) == [1, 2, 4]
    # 20 days x 5 venues x 24 h of open interest per asset
    assert m["generation"]["4"]["open_interest"] == 4 * 5 * 20 * 24
    assert m["sizes"]["4"]["mart_rows"]["marts.reference_close"] == 4 * 20
    plan = m["incremental"]["with_headers"]["plan"]
    assert plan["marts.daily_signals"]["mode"] == "incremental" and plan["marts.alerts"]["mode"] == "incremental"
    e = r["extract"]
    pw = e["perpwatch"][0]
    assert pw["errors"] == [] and pw["429"] == 0 and pw["418"] == 0
    # 3 instruments: 2 OI + 2 long/short pages each (30 days of 1 h in pages of 500), 1 funding, 1 klines, + 2 info
    assert pw["requests"] == 3 * 6 + 2 and e["sequential"][0]["pages"] == 3 * 6 + 1
    assert e["floor"]["floor_s"] > 0
    text = out.read_text()
    assert "## Targets" in text and "## 1. Load path" in text and "## 3. Extraction" in text
    # every target is judged on this run's spread: no typed-in noise band left in the report
    assert "within noise" not in text and "±30" not in text
    assert "one untimed round of both variants" in text
    # the chain the report names is the graph's: the heatmap feeds the clusters, which daily_signals reads
    assert m["graph"]["marts.daily_signals"] and "marts.daily_heatmap_clusters" in m["graph"]["marts.daily_signals"]
    cpu = m["sizes"]["4"]["cpu_s"]["median"]
    assert 0 < m["sizes"]["4"]["sys_s"]["median"] < cpu and "CPU of the build at 4 assets" in text
    assert "Longest dependency chain at 4 assets" in text and "liquidation_heatmap → daily_heatmap_clusters → daily_signals" in text
    # the builds ran as build_all runs them (PERPWATCH_BUILD_WORKERS, default two at a time), and the report says so
    from perpwatch.core import settings
    workers = settings.get().build_workers
    assert m["build_workers"] == workers
    assert (f"{workers} at a time, each on its own connection" if workers > 1 else "one at a time") in text
    assert text.count("**met**") + text.count("**missed**") + text.count("**within the spread**") >= 8
    # the host's speed, read at the start and after each workload, is in the report with the slowest reading
    hs = r["host_speed"]
    assert list(hs) == ["start", "load", "marts", "extract"]
    assert all(0 < x["python_loop_5m_s"] < 30 and 0 < x["duckdb_agg_20m_s"] < 60 for x in hs.values())
    assert f"at start {hs['start']['python_loop_5m_s']:.2f} / {hs['start']['duckdb_agg_20m_s']:.2f} s" in text
    assert "the slowest reading, after " in text


def test_host_speed_sentence_names_every_reading_and_the_slowest_against_the_start():
    from perpwatch.bench.report import _host_speed

    h = {"start": {"python_loop_5m_s": 0.20, "duckdb_agg_20m_s": 0.40},
         "load": {"python_loop_5m_s": 0.22, "duckdb_agg_20m_s": 0.40},
         "marts": {"python_loop_5m_s": 0.21, "duckdb_agg_20m_s": 0.52}}
    text = _host_speed(h)
    assert "at start 0.20 / 0.40 s, after load 0.22 / 0.40 s, after marts 0.21 / 0.52 s" in text
    assert "the slowest reading, after marts, is 1.30x the start's" in text      # 0.52 / 0.40 beats 0.22 / 0.20
    assert _host_speed(None) == "" and "slowest" not in _host_speed({"start": h["start"]})


def test_fresh_memory_sentence_states_the_reading_after_a_pause_and_the_balloon(tmp_path):
    from perpwatch.bench.common import free_page_reporting
    from perpwatch.bench.report import _fresh

    f = {"gib": 1.0, "first_s": 1.54, "first_sys_s": 1.44, "again_s": 0.07}
    assert "after" not in _fresh(f) and "writing it again 0.07 s" in _fresh(f)      # a results file from before
    f |= {"pause_s": 3.0, "after_pause_s": 1.5, "after_pause_sys_s": 1.42, "page_reporting": True}
    assert ("Handed back and taken again after 3 s, a fresh 1 GiB took 1.50 s (1.42 s in the kernel); this VM's "
            "virtio balloon reports free pages to the host (VIRTIO_BALLOON_F_REPORTING). ") in _fresh(f)
    assert "does not report" in _fresh(f | {"page_reporting": False})
    assert _fresh(f | {"page_reporting": None}).endswith("(1.42 s in the kernel). ")
    # sysfs as the kernel lays it out: a block device (id 2) and the balloon (id 5), features as a bit string
    for name, dev, bits in (("virtio0", "0x0002", "0110011"), ("virtio1", "0x0005", "0110010100")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "device").write_text(dev + "\n")
        (tmp_path / name / "features").write_text(bits + "\n")
    assert free_page_reporting(tmp_path) is True                 # bit 5 of the balloon's, not the disk's
    (tmp_path / "virtio1" / "features").write_text("0110000000\n")
    assert free_page_reporting(tmp_path) is False
    assert free_page_reporting(tmp_path / "absent") is None


def test_targets_are_judged_on_the_spread_of_the_runs():
    from perpwatch.bench.report import judge

    # times (lower is better) against a 2 s target: all runs under, all over, and straddling it
    assert judge(1.5, 1.9, 2.0, higher_is_better=False) == "**met**"
    assert judge(2.1, 2.4, 2.0, higher_is_better=False) == "**missed**"
    assert judge(2.3, 1.8, 2.0, higher_is_better=False).startswith("**within the spread**")
    # rates (higher is better) against 1 M rows/s; the two ends may come in either order
    assert judge(1.2e6, 1.05e6, 1e6) == "**met**"
    assert judge(0.9e6, 0.99e6, 1e6) == "**missed**"
    assert judge(1.1e6, 0.95e6, 1e6).startswith("**within the spread**")
    assert judge(2.0, 2.0, 2.0, higher_is_better=False) == "**met**"       # on the target clears it


def test_longest_chain_adds_medians_along_the_heaviest_path():
    from perpwatch.bench.report import _longest_chain

    graph = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}
    per = {"a": {"median": 1.0}, "b": {"median": 5.0}, "c": {"median": 2.0}, "d": {"median": 0.5}, "e": {"median": 6.0}}
    assert _longest_chain(graph, per) == (["a", "b", "d"], 6.5)       # a + b + d beats e alone (6.0) and a + c + d
    per["e"]["median"] = 7.0
    assert _longest_chain(graph, per) == (["e"], 7.0)
    assert _longest_chain(None, per) is None


# --------------------------------------------------------------------------- upsert == reference

def _reference_upsert(con, table, df):
    """The straightforward version: dedupe, drop identical, replace changed, insert (RETURNING rows)."""
    key = KEYS[table]
    if df.height == 0:
        return LoadResult()
    cols = [c for c in table_columns(con, table) if c in df.columns]
    con.register("__r", df.select(cols).with_row_index("__i").to_arrow())
    qk = ", ".join(f'"{k}"' for k in key)
    on = " AND ".join(f't."{k}" = b."{k}"' for k in key)
    same = " AND ".join(f't."{c}" IS NOT DISTINCT FROM b."{c}"' for c in cols if c not in key and c not in PROVENANCE) or "TRUE"
    con.execute(f"CREATE OR REPLACE TEMP TABLE __rb AS SELECT * FROM __r QUALIFY row_number() OVER (PARTITION BY {qk} ORDER BY __i DESC) = 1")
    deduped = con.execute("SELECT count(*) FROM __rb").fetchone()[0]
    identical = len(con.execute(f"DELETE FROM __rb b USING {table} t WHERE {on} AND {same} RETURNING 1").fetchall())
    updated = len(con.execute(f"DELETE FROM {table} t USING __rb b WHERE {on} RETURNING 1").fetchall())
    collist = ", ".join(f'"{c}"' for c in cols)
    inserted = con.execute(f"INSERT INTO {table} ({collist}) SELECT {collist} FROM __rb").fetchone()[0]
    con.unregister("__r")
    con.execute("DROP TABLE __rb")
    return LoadResult(inserted, updated, df.height - deduped + identical)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _liq(rng, n):
    return pl.DataFrame({
        "venue": [rng.choice(["binance", "bybit"]) for _ in range(n)], "instrument": [rng.choice("AB") for _ in range(n)],
        "ts": [T0 + timedelta(minutes=rng.randrange(4)) for _ in range(n)], "side": [rng.choice(["long", "short"]) for _ in range(n)],
        "price": [rng.choice([1.0, 2.0, 0.0, float("nan")]) for _ in range(n)], "qty_base": [rng.choice([1.0, 2.0]) for _ in range(n)],
        "asset": [rng.choice(["X", None]) for _ in range(n)], "usd": [rng.choice([1.0, None]) for _ in range(n)],
        "raw_id": [rng.randrange(5) for _ in range(n)]},
        schema={"venue": pl.String, "instrument": pl.String, "ts": pl.Datetime("us", "UTC"), "side": pl.String,
                "price": pl.Float64, "qty_base": pl.Float64, "asset": pl.String, "usd": pl.Float64, "raw_id": pl.Int64})


def _oi(rng, n):
    return pl.DataFrame({
        "venue": ["binance"] * n, "instrument": [rng.choice("ABC") for _ in range(n)],
        "ts": [T0 + timedelta(hours=rng.randrange(12)) for _ in range(n)], "asset": ["X"] * n,
        "oi_base": [rng.choice([1.0, 2.0, None]) for _ in range(n)], "oi_usd": [rng.choice([5.0, 6.0]) for _ in range(n)],
        "raw_id": [rng.randrange(5) for _ in range(n)]},
        schema={"venue": pl.String, "instrument": pl.String, "ts": pl.Datetime("us", "UTC"), "asset": pl.String,
                "oi_base": pl.Float64, "oi_usd": pl.Float64, "raw_id": pl.Int64})


def test_upsert_counts_by_hand():
    con = warehouse.connect(":memory:")
    a = pl.DataFrame({"venue": ["binance"] * 3, "instrument": ["A", "A", "B"], "ts": [T0, T0, T0],
                      "oi_usd": [1.0, 2.0, 3.0], "raw_id": [1, 2, 3]})
    with warehouse.transaction(con):
        assert warehouse.upsert(con, "staging.open_interest", a) == LoadResult(2, 0, 1)   # A repeats: last wins
    b = a.with_columns(pl.Series("oi_usd", [2.0, 2.0, 4.0]), pl.Series("raw_id", [9, 9, 9]))
    with warehouse.transaction(con):
        assert warehouse.upsert(con, "staging.open_interest", b) == LoadResult(1, 1, 2)   # A same, B changed
    assert con.execute("SELECT instrument, oi_usd, raw_id FROM staging.open_interest ORDER BY 1").fetchall() == \
        [("A", 2.0, 2), ("B", 4.0, 9)]


@pytest.mark.parametrize("seed", range(4))
def test_upsert_matches_reference(seed):
    rng = random.Random(seed)
    for _ in range(25):
        table, gen = rng.choice([("staging.liquidations", _liq), ("staging.open_interest", _oi)])
        seed_rows = gen(rng, rng.randrange(0, 6))
        batches = [gen(rng, rng.randrange(0, 12)) for _ in range(rng.randrange(1, 4))]
        one_tx = rng.random() < 0.5
        states = []
        for fn in (_reference_upsert, warehouse.upsert):
            con = warehouse.connect(":memory:")
            if seed_rows.height:      # may hold a repeated key, as a damaged table would
                con.register("s", seed_rows.to_arrow())
                cols = ", ".join(f'"{c}"' for c in seed_rows.columns)
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM s")
            results = []
            if one_tx:
                con.execute("BEGIN")
            for b in batches:
                if not one_tx:
                    con.execute("BEGIN")
                results.append(fn(con, table, b))
                if not one_tx:
                    con.execute("COMMIT")
            if one_tx:
                con.execute("COMMIT")
            rows = sorted(map(repr, con.execute(f"SELECT * EXCLUDE (ingested_at) FROM {table}").fetchall()))
            states.append((results, rows))
        assert states[0] == states[1]


# --------------------------------------------------------------------------- incremental == full

def _close(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _shape_history(con, end: datetime) -> None:
    """Histories where the incremental cuts matter (applied to both warehouses before their first build):
    G000 funds above the absolute extreme on the 3 days before `end` (a funding_extreme streak the
    appended days continue across the incremental builds' first day, inside every percentile window);
    G001's aggregate OI spikes past the first milestone above its other days on end - 30 days, exactly the
    first day oi_milestones' incremental pass reads (rearm_days = 30); G001 has no liquidation anywhere and G000 none on okx in the 12 days
    before `end` (capture started long before any cut: liquidations are 0, not unknown); G001's OI lacks
    its hyperliquid instrument from end - 20 to end - 11 days (stored rows with another coverage key
    inside the oi_to_mcap window)."""
    d = lambda n: f"TIMESTAMPTZ '{end - timedelta(days=n):%Y-%m-%d %H:%M:%S}+00'"   # noqa: E731
    con.execute(f"UPDATE staging.funding_rates SET rate_8h = 0.006, rate_annualized = 0.006 * 3 * 365 "
                f"WHERE asset = 'G000' AND funding_time >= {d(3)} AND funding_time < {d(0)}")
    _cross_on(con, "G001", (end - timedelta(days=30)).date(), _next_milestone(con, "G001", end.date(), 29))
    con.execute(f"DELETE FROM staging.liquidations WHERE ts >= {d(12)} AND ts < {d(0)} "
                f"AND (asset = 'G001' OR asset = 'G000' AND venue = 'okx')")
    con.execute(f"DELETE FROM staging.open_interest WHERE asset = 'G001' AND venue = 'hyperliquid' "
                f"AND ts >= {d(20)} AND ts < {d(10)}")


def _day_oi(con, asset: str, day: date) -> float:
    """The asset's end-of-day OI summed over instruments (what oi_milestones reads), from staging."""
    return con.execute(
        f"SELECT sum(oi) FROM (SELECT arg_max(oi_usd, ts) AS oi FROM staging.open_interest WHERE asset = '{asset}' "
        f"AND ts >= TIMESTAMPTZ '{day:%Y-%m-%d} 00:00:00+00' AND ts < TIMESTAMPTZ '{day + timedelta(days=1):%Y-%m-%d} "
        "00:00:00+00' GROUP BY venue, instrument)").fetchone()[0]


def _next_milestone(con, asset: str, day: date, days: int) -> float:
    """The lowest milestone above the asset's aggregate OI on each of the `days` days before `day`."""
    from perpwatch.transforms.marts import oi_milestones

    top = max(_day_oi(con, asset, day - timedelta(days=k)) for k in range(1, days + 1))
    return min(x for x in oi_milestones.milestones() if x > top)


def _cross_on(con, asset: str, day: date, level: float) -> None:
    """Scale the asset's OI on `day` so its aggregate ends the day at 1.2 x level (above a milestone)."""
    f = 1.2 * level / _day_oi(con, asset, day)
    con.execute(f"UPDATE staging.open_interest SET oi_usd = oi_usd * {f!r}, oi_base = oi_base * {f!r} "
                f"WHERE asset = '{asset}' AND ts >= TIMESTAMPTZ '{day:%Y-%m-%d} 00:00:00+00' "
                f"AND ts < TIMESTAMPTZ '{day + timedelta(days=1):%Y-%m-%d} 00:00:00+00'")


def test_render_sql_incremental_sections():
    sql = "a {{#incremental}}b {{build.since}} {{/incremental}}{{^incremental}}c {{/incremental}}{{whole staging.x}}"
    assert transforms.render_sql(sql) == "a c staging.x"
    assert transforms.render_sql(sql, date(2026, 1, 2), '"w"') == "a b DATE '2026-01-02' \"w\".\"staging\".\"x\""
    with pytest.raises(ValueError, match="build.since"):
        transforms.render_sql("{{build.since}}")


def test_incremental_build_matches_full_rebuild(tmp_path, monkeypatch):
    """Daily incremental passes (two new days, then one more) give the marts a full rebuild gives, on a
    history where each cut matters: windows reaching back past it into stored rows, a streak running
    across it, a milestone crossed on the first rebuilt day and one whose rearm window starts on the cut,
    capture that started long before it."""
    from perpwatch.bench.gen_warehouse import append_day, generate
    from perpwatch.bench.marts import HEATMAP, marts_with_headers
    from perpwatch.transforms.heatmap import CLUSTER_SCHEMA, OUTPUT_SCHEMA
    monkeypatch.setattr(transforms, "HERE", marts_with_headers(tmp_path / "m"))
    end = datetime(2026, 11, 20, tzinfo=UTC)
    e = end.date()
    cons = []
    for name in ("inc", "full"):
        con = warehouse.connect(tmp_path / f"{name}.duckdb")
        generate(con, 420, 2, end=end)       # longer than the longest window (oi_to_mcap: 365 days)
        _shape_history(con, end)
        for t, schema in zip(HEATMAP, (OUTPUT_SCHEMA, CLUSTER_SCHEMA), strict=True):
            con.register("e", pl.DataFrame(schema=schema).to_arrow())
            con.execute(f"CREATE TABLE {t} AS SELECT * FROM e")
        cons.append(con)
    inc, full = cons
    models = transforms.discover()
    only = [n for n in transforms.order(models) if n not in HEATMAP]
    for n in only:                           # build_all(only=) would pull the heatmap back in
        transforms._build_model(inc, n, models[n])
    # milestones: G000 crosses the first one above its last 30 days on `end`; G001 ends `end` above the
    # first one above its spike-free days, which its spike on end - 30 (inside the rearm window) already passed
    m0 = _next_milestone(inc, "G000", e, 30)
    m1 = _next_milestone(inc, "G001", e, 29)
    assert _day_oi(inc, "G001", e - timedelta(days=30)) >= m1, "the spike must pass G001's milestone"
    for con in cons:
        for k in range(2):
            assert append_day(con, end + timedelta(days=k)) > 0
        _cross_on(con, "G000", e, m0)
        _cross_on(con, "G001", e, m1)
        # G000 loses its deribit instrument from end + 1 day on: a new coverage key, whose oi_to_mcap
        # window holds only days rebuilt by the same incremental passes
        con.execute(f"DELETE FROM staging.open_interest WHERE asset = 'G000' AND venue = 'deribit' "
                    f"AND ts >= TIMESTAMPTZ '{e + timedelta(days=1)} 00:00:00+00'")
    plan = transforms.incremental_plan(inc, e)
    assert plan["marts.daily_signals"]["mode"] == "incremental" and plan["marts.daily_signals"]["lookback"] == 7
    assert plan["marts.daily_signals"]["inputs_from"]["staging.prices"] == e - timedelta(days=7)
    assert plan["marts.reference_close"]["inputs_from"]["staging.prices"] == e - timedelta(days=1)
    assert plan["marts.carry"]["mode"] == "view" and plan["marts.alerts"]["mode"] == "incremental"
    # the carry rows are a table a daily build recomputes from the new day (a view re-read all history per reader)
    assert plan["marts.carry_daily"]["mode"] == "incremental"
    assert plan["marts.oi_milestones"]["mode"] == "resume"
    transforms.build_incremental(inc, e, only=only)                        # two new days
    for con in cons:
        assert append_day(con, end + timedelta(days=2)) > 0
    transforms.build_incremental(inc, e + timedelta(days=2), only=only)    # and one more
    for n in only:
        transforms._build_model(full, n, models[n])

    # the cases happened
    assert full.execute(f"SELECT count(*) FROM marts.oi_milestones WHERE asset = 'G000' AND date = DATE '{e}' "
                        f"AND milestone_usd = {m0}").fetchone()[0] == 1
    assert full.execute(f"SELECT count(*) FROM marts.oi_milestones WHERE asset = 'G001' AND date = DATE '{e}'"
                        ).fetchone()[0] == 0
    assert full.execute(f"SELECT max(streak_days) FROM marts.alerts WHERE asset = 'G000' AND rule = 'funding_extreme' "
                        f"AND date = DATE '{e + timedelta(days=2)}'").fetchone()[0] >= 6
    assert full.execute(f"SELECT liquidations_long_usd, liquidations_short_usd FROM marts.daily_signals "
                        f"WHERE asset = 'G001' AND date = DATE '{e}'").fetchone() == (0, 0)
    assert full.execute(f"SELECT liquidation_covered_hours FROM marts.daily_signals WHERE asset = 'G000' "
                        f"AND date = DATE '{e}'").fetchone()[0] == 72
    assert full.execute(f"SELECT list(oi_to_mcap_threshold IS NULL ORDER BY date) FROM marts.daily_signals "
                        f"WHERE asset = 'G000' AND date >= DATE '{e}'").fetchone()[0] == [False, True, True]
    marts = [f"marts.{t}" for (t,) in full.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'marts' ORDER BY 1").fetchall()]
    skipped = set(HEATMAP) | {"marts.signal_performance"}    # INCREMENTAL = "skip": full builds only
    assert {"marts.daily_signals", "marts.alerts", "marts.oi_milestones", "marts.carry"} <= set(marts)
    for name in sorted(set(marts) - skipped):
        cols = table_columns(full, name)
        q = f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM {name}"
        a = sorted(inc.execute(q).fetchall(), key=lambda r: tuple(map(str, r[:4])))
        b = sorted(full.execute(q).fetchall(), key=lambda r: tuple(map(str, r[:4])))
        assert len(a) == len(b), name
        if name in ("marts.reference_close", "marts.daily_signals", "marts.alerts", "marts.carry_daily"):
            assert any(r[cols.index("date")] == e + timedelta(days=2) for r in b), name
        for x, y in zip(a, b, strict=True):
            assert all(_close(u, v) for u, v in zip(x, y, strict=True)), (name, x, y)
