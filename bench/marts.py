"""Workload 2 — marts at scale: a generated warehouse (DuckDB SQL straight into staging), full
rebuilds of every mart at 1x / 2x / 4x, a daily incremental pass, peak memory per process."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from perpwatch.bench.common import ROOT, Sample, child_json
from perpwatch.bench.gen_warehouse import END, append_day, generate

HEATMAP = ["marts.liquidation_heatmap", "marts.daily_heatmap_clusters"]
# Proposed opt-in headers (the mart files belong to their authors; the bench applies them to a copy).
# Each was checked against a full rebuild (tests/test_bench_smoke.py) on the SQL as it stands.
PROPOSED_HEADERS = {
    "reference_close.sql": "-- incremental: date",
    "open_interest_by_venue.sql": "-- incremental: date",
    "carry.sql": "-- incremental: date",
    "daily_institutional.sql": "-- incremental: date lookback 11",
    "daily_signals.sql": "-- incremental: date lookback 7",
    "alerts.sql": "-- incremental: date",
}
DUCKDB_SETTINGS = {"memory_limit": "12GB", "threads": 2}


def marts_with_headers(dest: Path) -> Path:
    """A copy of transforms/marts with PROPOSED_HEADERS added (after a leading `-- view` line)."""
    src = ROOT / "transforms" / "marts"
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "marts").mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix not in (".sql", ".py"):
            continue
        text = f.read_text()
        if f.name in PROPOSED_HEADERS and "-- incremental:" not in text:
            lines = text.splitlines(True)
            k = 1 if lines and lines[0].lower().startswith("-- view") else 0
            lines.insert(k, PROPOSED_HEADERS[f.name] + "\n")
            text = "".join(lines)
        (dest / "marts" / f.name).write_text(text)
    return dest


def _stamp(days: int, assets: int) -> str:
    from perpwatch import warehouse
    src = (ROOT / "bench" / "gen_warehouse.py").read_bytes() + (ROOT / "warehouse" / "schema.sql").read_bytes()
    # a file keeps the storage format it was created in (warehouse.STORAGE_VERSION): a new format, a new file
    return f"{days}x{assets}:{warehouse.STORAGE_VERSION}:{hashlib.sha256(src).hexdigest()[:12]}"


def warehouse_for(workdir: Path, days: int, assets: int, progress, source: Path | None = None) -> tuple[Path, dict]:
    """A generated warehouse, reused when the generator and schema did not change. A smaller one is cut
    from `source` (same generator, the first `assets` assets) instead of generated again."""
    from perpwatch import warehouse
    path = workdir / f"marts_{days}d_{assets}a.duckdb"
    stamp = path.with_suffix(".stamp")
    want = _stamp(days, assets)
    if path.exists() and stamp.exists() and stamp.read_text() == want:
        return path, json.loads(path.with_suffix(".rows.json").read_text()) | {"_reused": True}
    for p in (path, path.with_name(path.name + ".wal"), stamp):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    con = warehouse.connect(path)
    con.execute(f"SET memory_limit='{DUCKDB_SETTINGS['memory_limit']}'; SET threads={DUCKDB_SETTINGS['threads']}")
    try:
        if source is None:
            rows = generate(con, days, assets, progress=lambda m: progress(f"    generate: {m}"))
        else:
            con.execute(f"ATTACH '{source}' AS __src (READ_ONLY)")
            keep = f"'G{assets:03d}'"
            rows = {}
            for t in ("instruments", "open_interest", "prices", "funding_rates", "long_short_ratio", "liquidations",
                      "market_caps"):
                rows[t] = con.execute(f"INSERT INTO staging.{t} SELECT * FROM __src.staging.{t} WHERE asset < {keep}").fetchone()[0]
            con.execute("DETACH __src")
            con.execute("CHECKPOINT")
    finally:
        con.close()
    took = time.perf_counter() - t0
    rows["_seconds"] = took
    path.with_suffix(".rows.json").write_text(json.dumps(rows))
    stamp.write_text(want)
    progress(f"  warehouse {days}d x {assets} assets: {sum(v for k, v in rows.items() if not k.startswith('_')):,} "
             f"staging rows, {'cut from the full one' if source else 'generated'} in {took:.0f}s")
    return path, rows


def _build(db: Path, mode: str, skip, since=None, marts_dir=None) -> dict:
    return child_json("perpwatch.bench.marts_child", {"db": str(db), "mode": mode, "since": since, "skip": skip,
                                            "marts_dir": str(marts_dir) if marts_dir else None, **DUCKDB_SETTINGS},
                      timeout=3600)


DIAGNOSTICS = {
    "ts::DATE over staging.open_interest (TIMESTAMPTZ, ICU)": "SELECT max(ts::DATE) FROM staging.open_interest",
    "epoch_us(ts) // 86400000000 over staging.open_interest": "SELECT max(epoch_us(ts) // 86400000000) FROM staging.open_interest",
    "last snapshot per instrument-day: QUALIFY row_number() partitioned by ts::DATE":
        "SELECT count(*) FROM (SELECT venue, instrument, ts::DATE AS date, oi_usd FROM staging.open_interest "
        "WHERE oi_usd IS NOT NULL QUALIFY row_number() OVER (PARTITION BY venue, instrument, ts::DATE ORDER BY ts DESC) = 1)",
    "same rows: arg_max(struct, ts) grouped by epoch day":
        "SELECT count(*) FROM (SELECT venue, instrument, epoch_us(ts) // 86400000000 AS d, "
        "arg_max({'asset': asset, 'margin': margin, 'oi_usd': oi_usd, 'oi_base': oi_base}, ts) AS s "
        "FROM staging.open_interest WHERE oi_usd IS NOT NULL GROUP BY ALL)",
}


def _diagnostics(db: Path) -> dict[str, float]:
    """Where the rebuild time goes: the TIMESTAMPTZ -> DATE cast and the last-of-day pattern."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        con.execute(f"SET memory_limit='{DUCKDB_SETTINGS['memory_limit']}'; SET threads={DUCKDB_SETTINGS['threads']}; "
                    "SET TimeZone='UTC'")
        out = {}
        for name, q in DIAGNOSTICS.items():
            t0 = time.perf_counter()
            con.execute(q).fetchall()
            out[name] = time.perf_counter() - t0
        return out
    finally:
        con.close()


def run(days: int, assets: list[int], runs: int, workdir: Path, heatmap_probe: tuple[int, int],
        heatmap_at_scale: bool, progress=print) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    full_assets = max(assets)
    full_db, full_rows = warehouse_for(workdir, days, full_assets, progress)
    skip = [] if heatmap_at_scale else HEATMAP
    from perpwatch import transforms
    models = transforms.discover()
    # the build's dependency graph (mart -> the marts it reads), for the longest chain the report works out
    graph = {n: sorted(i for i in m.inputs if i in models) for n, m in models.items()}
    out: dict = {"days": days, "sizes": {}, "skip": skip, "duckdb": DUCKDB_SETTINGS, "generation": {}, "graph": graph}
    for n in sorted(assets):
        db, rows = (full_db, full_rows) if n == full_assets else warehouse_for(workdir, days, n, progress, full_db)
        out["generation"][n] = rows
        samples, peaks, per_mart, stages, cpu, sys_ = Sample(), Sample(), {}, {}, Sample(), Sample()
        for r in range(runs):
            res = _build(db, "full", skip)
            out["build_workers"] = 1 if skip else res.get("build_workers", 1)
            samples.add(res["total_s"])
            peaks.add(res["peak_rss_mb"])
            cpu.add(res["cpu_s"]["user"] + res["cpu_s"]["sys"])
            sys_.add(res["cpu_s"]["sys"])
            for k, v in res["timings"].items():
                per_mart.setdefault(k, []).append(v)
            for k, v in (res.get("heatmap_stages") or {}).items():
                stages.setdefault(k, []).append(v)
            progress(f"  full rebuild {n} assets, run {r + 1}/{runs}: {res['total_s']:.1f}s, "
                     f"peak RSS {res['_peak_rss_mb']:.0f} MB")
        out["sizes"][n] = {"total": samples.as_dict(), "peak_rss_mb": peaks.as_dict(), "cpu_s": cpu.as_dict(), "sys_s": sys_.as_dict(),
                           "per_mart": {k: Sample(v).as_dict() for k, v in per_mart.items()},
                           "heatmap_stages": {k: Sample(v).as_dict() for k, v in stages.items()},
                           "staging_rows": sum(v for k, v in rows.items() if not k.startswith("_")),
                           "mart_rows": res["rows"]}
    out["diagnostics"] = _diagnostics(full_db)
    progress("  diagnostics: " + ", ".join(f"{k} {v:.2f}s" for k, v in out["diagnostics"].items()))
    # daily incremental pass on the full warehouse: one more day landed, then build from that day
    from perpwatch import warehouse
    con = warehouse.connect(full_db)
    try:
        last = con.execute("SELECT max(ts) FROM staging.open_interest").fetchone()[0]
        # generated staging ends at END - 1 h; the landed day is END's (appended by an earlier bench run or now)
        added = append_day(con, END) if last < END else None
        new_day = END.date()
    finally:
        con.close()
    since = new_day.isoformat()
    inc: dict = {"since": since, "rows_added": added}
    res = _build(full_db, "incremental", skip, since)
    inc["as_is"] = {"total_s": res["total_s"], "plan": res["plan"], "timings": res["timings"],
                    "peak_rss_mb": res["peak_rss_mb"]}
    progress(f"  incremental (marts as they are): {res['total_s']:.1f}s")
    hdr = marts_with_headers(workdir / "marts_with_headers")
    s, per_mart, peaks, stages = Sample(), {}, Sample(), {}
    for r in range(runs):
        res = _build(full_db, "incremental", skip, since, hdr)
        s.add(res["total_s"])
        peaks.add(res["peak_rss_mb"])
        for k, v in res["timings"].items():
            per_mart.setdefault(k, []).append(v)
        for k, v in (res.get("heatmap_stages") or {}).items():
            stages.setdefault(k, []).append(v)
        progress(f"  incremental (proposed opt-in headers), run {r + 1}/{runs}: {res['total_s']:.2f}s")
    inc["with_headers"] = {"total": s.as_dict(), "plan": res["plan"], "peak_rss_mb": peaks.as_dict(),
                           "per_mart": {k: Sample(v).as_dict() for k, v in per_mart.items()},
                           "heatmap_stages": {k: Sample(v).as_dict() for k, v in stages.items()}}
    out["incremental"] = inc
    # the liquidation heatmap (a Python fold over every asset-hour) at a small size, then extrapolated
    pd, pa = heatmap_probe
    probe_db, _ = warehouse_for(workdir, pd, pa, progress)
    hs = Sample()
    for _ in range(max(1, min(runs, 2))):
        res = _build(probe_db, "full", [])
        hs.add(res["timings"]["marts.liquidation_heatmap"] + res["timings"].get("marts.daily_heatmap_clusters", 0))
    probe_hours = pd * 24 * pa
    out["heatmap"] = {"days": pd, "assets": pa, "asset_hours": probe_hours, "seconds": hs.as_dict(),
                      "rows": res["rows"].get("marts.liquidation_heatmap"),
                      "extrapolated_full_s": hs.median / probe_hours * days * 24 * full_assets,
                      "extrapolated_full_rows": res["rows"].get("marts.liquidation_heatmap", 0) / probe_hours * days * 24 * full_assets}
    progress(f"  heatmap probe {pd}d x {pa} assets: {hs.fmt()}")
    return out
