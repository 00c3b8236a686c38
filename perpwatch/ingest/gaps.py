"""Gaps: rows missing inside a stored series, found on the series' grid and re-requested.

A page can arrive well-formed yet lack rows in its middle (a venue hiccup, a proxy, the
simulator's ``gap`` fault). Nothing in the page says so and the watermark moves past the hole,
so the next run would never ask again. After every run (``pipeline.finish``) ``detect`` compares
the stored timestamps of each stream the run fetched with the stream's grid:

  prices/<kind>, open_interest, long_short_ratio/<population>   hourly (1h bars / period 1h)
  funding_rates                                                  the settlement interval of the
                                                                 row after the hole (interval_hours)

and records every hole in ``meta.gaps`` (status ``open``). ``pipeline._window`` starts the next
run's window for that stream at the earliest open gap (minus the usual overlap), so the rows are
asked for again. A gap whose rows arrive becomes ``filled``; one still missing after
``MAX_ATTEMPTS`` clean re-reads (runs in which that stream's extraction, parsing and validation
all succeeded) becomes ``unfillable``: the venue does not have those rows, and they are no longer
re-requested. ``open_gaps(con)`` lists the open and unfillable gaps for ``perpwatch status``.

Only holes between stored rows are found: rows missing before the first stored row of a series
look exactly like a later listing. Pages that fail (parse error, bad values, extraction error) are
handled before this: their stream's watermark does not move (``RunReport.tainted``), so the next
run re-reads the whole window anyway.

SQL identifiers come only from the table registry (``perpwatch/core/tables.py``, each table's ``gap_grid``);
every value is a parameter or a registered frame.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from perpwatch import warehouse
from perpwatch.core import tables

MAX_ATTEMPTS = 3
HOUR = timedelta(hours=1)



def grid() -> dict[str, tables.Table]:
    """Staging tables whose series have a regular grid (registry ``gap_grid``), by dataset name."""
    return {t.name: t for t in tables.STAGING if t.gap_grid is not None}


def overlap(stream) -> timedelta:
    """Re-read a little before the watermark so late corrections and page edges are caught."""
    return max(stream.step * 2, timedelta(hours=3))


GAP_COLUMNS = ["source", "dataset", "instrument", "gap_start", "gap_end", "missing", "status", "attempts",
               "detected_at", "detected_run", "resolved_at", "resolved_run"]


def _venue(source: str) -> str:
    from perpwatch import sources
    try:
        return getattr(sources.get(source), "VENUE", source)
    except KeyError:
        return source


def earliest_open(con, stream) -> datetime | None:
    """Start of the earliest open gap of a stream (None if it has none)."""
    row = con.execute("SELECT min(gap_start) FROM meta.gaps WHERE source = ? AND dataset = ? AND instrument = ? "
                      "AND status = 'open'", [stream.source, stream.name, stream.instrument]).fetchone()
    return row[0] if row else None


def earliest_open_all(con) -> dict[tuple[str, str, str], datetime]:
    """(source, dataset, instrument) -> start of its earliest open gap, for every stream at once: one
    query when a run plans its windows (one per stream costs ~0.1 s each on the lake)."""
    return {(src, ds, inst): g0 for src, ds, inst, g0 in con.execute(
        "SELECT source, dataset, instrument, min(gap_start) FROM meta.gaps WHERE status = 'open' "
        "GROUP BY ALL").fetchall()}


def find_holes(con, windows: dict) -> pl.DataFrame:
    """Holes in stored rows of each stream within [window start - 2 steps, window end].

    `windows` maps Stream -> (start, end). Returns source, dataset, instrument, gap_start, gap_end,
    missing (one row per hole)."""
    rows = []
    for s, (start, end) in windows.items():
        t = grid().get(s.dataset)
        if t is None:
            continue
        suffix = s.name.split("/", 1)[1] if "/" in s.name else None
        if t.gap_grid.selector is not None and suffix is None:
            continue
        step = max(s.step, HOUR) if t.gap_grid.step == "stream" else HOUR
        rows.append({"source": s.source, "venue": _venue(s.source), "dataset": s.name, "instrument": s.instrument,
                     "tbl": s.dataset, "sel": suffix or "", "lo": start - 2 * step, "hi": end})
    out = []
    if not rows:
        return pl.DataFrame(schema={"source": pl.Utf8, "dataset": pl.Utf8, "instrument": pl.Utf8,
                                    "gap_start": pl.Datetime("us", "UTC"), "gap_end": pl.Datetime("us", "UTC"),
                                    "missing": pl.Int64})
    frame = pl.DataFrame(rows, schema_overrides={"lo": pl.Datetime("us", "UTC"), "hi": pl.Datetime("us", "UTC")})
    con.register("__gap_windows", frame.to_arrow())
    try:
        for tbl, entry in grid().items():
            table, tcol, selcol, extra = entry.qualified, entry.time_column, entry.gap_grid.selector, \
                entry.gap_grid.condition
            sel = f"AND t.{selcol} = w.sel" if selcol else ""
            # on a "stream" grid (funding) a settlement is missing when the spacing exceeds its interval
            step_h = "t.interval_hours" if entry.gap_grid.step == "stream" else "1.0"
            out.append(con.execute(f"""
                SELECT source, dataset, instrument,
                       prev + to_microseconds(CAST(round(step_h * 3600e6) AS BIGINT)) AS gap_start,
                       t - to_microseconds(CAST(round(step_h * 3600e6) AS BIGINT)) AS gap_end,
                       CAST(round((epoch(t) - epoch(prev)) / 3600.0 / step_h) AS BIGINT) - 1 AS missing
                FROM (
                    SELECT w.source, w.dataset, w.instrument, t.{tcol} AS t, {step_h} AS step_h,
                           lag(t.{tcol}) OVER (PARTITION BY w.source, w.dataset, w.instrument ORDER BY t.{tcol}) AS prev
                    FROM __gap_windows w
                    JOIN {table} t ON t.venue = w.venue AND t.instrument = w.instrument {sel} {extra}
                         AND t.{tcol} BETWEEN w.lo AND w.hi
                    WHERE w.tbl = ?)
                WHERE prev IS NOT NULL AND step_h > 0 AND epoch(t) - epoch(prev) > step_h * 3600 + 60
                ORDER BY 1, 2, 3, 4""", [tbl]).pl())
    finally:
        con.unregister("__gap_windows")
    return pl.concat(out, how="vertical_relaxed")


def detect(con, report) -> dict[str, int]:
    """Record new holes of the streams this run fetched, fill or give up old ones. Returns counts."""
    windows = report.windows
    holes = find_holes(con, windows)
    checked = {(s.source, s.name, s.instrument) for s in windows}
    now = datetime.now(UTC)
    existing = con.execute(
        "SELECT rowid, source, dataset, instrument, gap_start, gap_end, status, attempts FROM meta.gaps "
        "WHERE status IN ('open', 'unfillable')").fetchall()
    by_stream: dict[tuple, list] = {}
    for h in holes.iter_rows(named=True):
        by_stream.setdefault((h["source"], h["dataset"], h["instrument"]), []).append(h)
    counts = {"new": 0, "filled": 0, "still_open": 0, "unfillable": 0}
    matched: set[int] = set()          # ids of holes that continue an existing gap
    con.execute("BEGIN TRANSACTION")
    try:
        for rowid, src, ds, inst, g0, g1, status, attempts in existing:
            key = (src, ds, inst)
            if key not in checked:
                continue
            lo, hi = next(w for s, w in windows.items() if (s.source, s.name, s.instrument) == key)
            if g1 < lo or g0 > hi:           # outside what this run looked at: unchanged
                continue
            same = [h for h in by_stream.get(key, []) if h["gap_start"] <= g1 and h["gap_end"] >= g0]
            for h in same:
                matched.add(id(h))
            if key in report.tainted:        # a failed re-read proves nothing: unchanged
                continue
            if not same:
                con.execute("UPDATE meta.gaps SET status = 'filled', resolved_at = ?, resolved_run = ? "
                            "WHERE rowid = ?", [now, report.run_id, rowid])
                counts["filled"] += 1
                continue
            if status != "open":
                continue
            attempts += 1
            h = same[0]
            if attempts >= MAX_ATTEMPTS:
                con.execute("UPDATE meta.gaps SET status = 'unfillable', attempts = ?, resolved_at = ?, "
                            "resolved_run = ? WHERE rowid = ?", [attempts, now, report.run_id, rowid])
                counts["unfillable"] += 1
                report.warnings.append(f"{src} {ds} [{inst}]: {h['missing']} row(s) from {g0:%Y-%m-%d %H:%M} "
                                       f"still missing after {attempts} re-reads: gap marked unfillable")
            else:
                con.execute("UPDATE meta.gaps SET attempts = ?, gap_start = ?, gap_end = ?, missing = ? "
                            "WHERE rowid = ?", [attempts, h["gap_start"], h["gap_end"], h["missing"], rowid])
                counts["still_open"] += 1
        new = [h for hs in by_stream.values() for h in hs if id(h) not in matched]
        # A stream that failed before it ever had a watermark: its first window was never loaded. The
        # next run's lookback would start later, so the window is kept as an open gap (start + overlap,
        # as the next window opens one overlap before the gap) until a clean run has read it.
        open_starts = {(src, ds, inst): g0 for _, src, ds, inst, g0, _, st, _ in existing if st == "open"}
        for s, (start, end) in windows.items():
            key = (s.source, s.name, s.instrument)
            if key not in report.tainted or warehouse.get_watermark(con, *key) is not None:
                continue
            g0 = start + overlap(s)
            if key in open_starts and open_starts[key] <= g0:
                continue
            new.append({"source": s.source, "dataset": s.name, "instrument": s.instrument, "gap_start": g0,
                        "gap_end": end, "missing": None})
        for h in new:
            con.execute("INSERT INTO meta.gaps (source, dataset, instrument, gap_start, gap_end, missing, status, "
                        "attempts, detected_at, detected_run) VALUES (?, ?, ?, ?, ?, ?, 'open', 0, ?, ?)",
                        [h["source"], h["dataset"], h["instrument"], h["gap_start"], h["gap_end"], h["missing"],
                         now, report.run_id])
        counts["new"] = len(new)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    if new:
        sample = ", ".join(f"{h['source']} {h['dataset']} [{h['instrument']}] "
                           + (f"{h['missing']} row(s)" if h["missing"] is not None else "unloaded window")
                           + f" from {h['gap_start']:%Y-%m-%d %H:%M}" for h in new[:5])
        report.warnings.append(f"{len(new)} gap(s) inside stored series, re-requested next run: {sample}"
                               + (" ..." if len(new) > 5 else ""))
    return counts


def open_in(con, windows: dict) -> list[dict]:
    """Open gaps of the given streams (`windows`: Stream -> (start, end)), oldest first, as dicts with
    source, dataset, instrument, gap_start, gap_end, missing, attempts, detected_run."""
    keys = {(s.source, s.name, s.instrument) for s in windows}
    if not keys:
        return []
    rows = con.execute("SELECT source, dataset, instrument, gap_start, gap_end, missing, attempts, detected_run "
                       "FROM meta.gaps WHERE status = 'open' ORDER BY gap_start, source, dataset, instrument"
                       ).fetchall()
    cols = ("source", "dataset", "instrument", "gap_start", "gap_end", "missing", "attempts", "detected_run")
    return [dict(zip(cols, r, strict=True)) for r in rows if r[:3] in keys]


def open_gaps(con) -> pl.DataFrame:
    """Open and unfillable gaps, newest first, for `perpwatch status` (works on a read-only connection
    and on a warehouse made before meta.gaps existed: then an empty frame)."""
    exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'meta' "
                         "AND table_name = 'gaps' AND table_catalog = current_database()").fetchone()[0]
    if not exists:
        return pl.DataFrame(schema={c: pl.Utf8 for c in GAP_COLUMNS})
    return con.sql("SELECT source, dataset, instrument, gap_start, gap_end, missing, status, attempts, "
                   "detected_at, detected_run FROM meta.gaps WHERE status IN ('open', 'unfillable') "
                   "ORDER BY status, gap_start DESC").pl()


def summary(con) -> dict[str, int]:
    """{'open': n, 'filled': n, 'unfillable': n} over all recorded gaps."""
    exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'meta' "
                         "AND table_name = 'gaps' AND table_catalog = current_database()").fetchone()[0]
    out = {"open": 0, "filled": 0, "unfillable": 0}
    if exists:
        out.update(dict(con.execute("SELECT status, count(*) FROM meta.gaps GROUP BY 1").fetchall()))
    return out
