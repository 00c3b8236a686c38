"""`perpwatch status [--json]`: is the warehouse fresh, and did the last runs work?

Per source and dataset (meta.watermarks) the newest timestamp loaded and its lag against the
dataset's schedule (stale when older than MAX_LAG), row counts and newest timestamp per staging
table, the last runs (meta.runs) and the quarantined batches nobody resolved yet.

The warehouse is opened read-only; when a pipeline holds its write lock, the serving snapshot
(PERPWATCH_SERVING_DB, as of the last publish) is read instead and the output says so.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb

from perpwatch import warehouse
from perpwatch.core import settings, tables

# How old the newest row of a dataset may be (max_lag), its schedule and time column: the table
# registry (perpwatch/core/tables.py). Watermark datasets outside the registry default to 2 days.
DEFAULT_MAX_LAG = timedelta(days=2)
STAGING = list(tables.LOAD_ORDER)


# --------------------------------------------------------------------------- reading

def open_readonly(db=None) -> tuple[duckdb.DuckDBPyConnection, Path, bool]:
    """(connection, path, is_snapshot): the warehouse read-only, or the serving snapshot if locked.
    On the DuckLake backend: the lake at its latest snapshot (never locked by writers)."""
    if warehouse.is_lake_target(db):
        from perpwatch.warehouse import lake

        url = str(warehouse.target(db))
        return warehouse.connect(url, read_only=True), lake.redact(url), False
    path = Path(db or settings.db_path())
    if not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}: run `perpwatch backfill --start YYYY-MM-DD` "
                                "(or `make demo`) first, or point --db / PERPWATCH_DB at it")
    try:
        return warehouse.connect(path, read_only=True, wait_s=0), path, False
    except (warehouse.WarehouseLocked, duckdb.IOException) as exc:
        serving = settings.serving_db_path()
        if "lock" not in str(exc).lower() or not serving.exists():
            raise
        con = duckdb.connect(str(serving), read_only=True)
        con.execute("SET TimeZone='UTC'")
        return con, serving, True


def table_exists(con, table: str) -> bool:
    schema, name = table.split(".")
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema=? AND table_name=? "
                       "AND table_catalog = current_database()", [schema, name]).fetchone()[0] > 0


def columns(con, table: str) -> list[str]:
    schema, name = table.split(".")
    return [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema=? AND table_name=? "
        "AND table_catalog = current_database() ORDER BY ordinal_position", [schema, name]).fetchall()]


def _as_utc(ts) -> datetime | None:
    if ts is None:
        return None
    if isinstance(ts, datetime):
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    if isinstance(ts, date):
        return datetime(ts.year, ts.month, ts.day, tzinfo=UTC)
    return None


def _lag_text(lag: timedelta | None) -> str:
    if lag is None:
        return "-"
    secs = int(lag.total_seconds())
    sign = "-" if secs < 0 else ""
    secs = abs(secs)
    if secs < 3600:
        return f"{sign}{secs // 60}m"
    if secs < 48 * 3600:
        return f"{sign}{secs // 3600}h{(secs % 3600) // 60:02d}m"
    return f"{sign}{secs // 86400}d{(secs % 86400) // 3600:02d}h"


def freshness(con, now: datetime) -> list[dict]:
    """One row per (source, dataset) from meta.watermarks: newest, lag, allowed lag, stale."""
    if not table_exists(con, "meta.watermarks"):
        return []
    rows = con.execute("""
        SELECT source, dataset, count(*) AS instruments, max(last_ts) AS newest, min(last_ts) AS oldest
        FROM meta.watermarks GROUP BY source, dataset ORDER BY source, dataset""").fetchall()
    out = []
    for source, dataset, n, newest, oldest in rows:
        entry = tables.BY_NAME.get(dataset.split("/", 1)[0])
        allowed = entry.max_lag if entry else DEFAULT_MAX_LAG
        newest, oldest = _as_utc(newest), _as_utc(oldest)
        lag = now - newest if newest else None
        lagging = con.execute("SELECT count(*) FROM meta.watermarks WHERE source=? AND dataset=? AND last_ts < ?",
                              [source, dataset, now - allowed]).fetchone()[0]
        out.append({"source": source, "dataset": dataset, "schedule": entry.schedule if entry else "daily",
                    "instruments": n, "newest": newest, "lag_s": lag.total_seconds() if lag else None,
                    "max_lag_s": allowed.total_seconds(), "stale": lag is None or lag > allowed,
                    "instruments_lagging": lagging, "oldest": oldest})
    return out


def staging_tables(con, now: datetime) -> list[dict]:
    out = []
    for t in tables.STAGING:
        full, tcol = t.qualified, t.time_column
        if not table_exists(con, full):
            continue
        cols = columns(con, full)
        who = "venue" if "venue" in cols else ("source" if "source" in cols else None)
        n, newest, groups = con.execute(
            f'SELECT count(*), max("{tcol}"), {f"count(DISTINCT {who})" if who else "NULL"} FROM {full}').fetchone()
        newest = _as_utc(newest)
        out.append({"table": full, "rows": n, "newest": newest, "by": who, "sources": groups,
                    "lag_s": (now - newest).total_seconds() if newest else None})
    return out


def last_runs(con, limit: int = 10) -> list[dict]:
    if not table_exists(con, "meta.runs"):
        return []
    rows = con.execute("""
        SELECT run_id, kind, started_at, finished_at, status, rows_fetched, rows_loaded, rows_quarantined,
               rows_duplicate, message
        FROM meta.runs ORDER BY started_at DESC NULLS LAST LIMIT ?""", [limit]).fetchall()
    keys = ["run_id", "kind", "started_at", "finished_at", "status", "fetched", "loaded", "quarantined",
            "duplicate", "message"]
    out = []
    for r in rows:
        d = dict(zip(keys, r, strict=True))
        d["started_at"], d["finished_at"] = _as_utc(d["started_at"]), _as_utc(d["finished_at"])
        d["seconds"] = (d["finished_at"] - d["started_at"]).total_seconds() \
            if d["started_at"] and d["finished_at"] else None
        out.append(d)
    return out


def open_quarantine(con, limit: int = 50) -> tuple[int, list[dict]]:
    if not table_exists(con, "quarantine.batches"):
        return 0, []
    total = con.execute("SELECT count(*) FROM quarantine.batches WHERE resolved_at IS NULL").fetchone()[0]
    rows = con.execute("""
        SELECT batch_id, received_at, source, dataset, instrument, rows, message
        FROM quarantine.batches WHERE resolved_at IS NULL ORDER BY received_at DESC LIMIT ?""", [limit]).fetchall()
    keys = ["batch_id", "received_at", "source", "dataset", "instrument", "rows", "message"]
    out = [dict(zip(keys, r, strict=True)) for r in rows]
    for d in out:
        d["received_at"] = _as_utc(d["received_at"])
    return total, out


def ws_streams(con) -> list[dict]:
    """Per liquidation websocket stream: the last data message ever, and the latest collect run's
    messages per hour and watchdog silences (meta.ws_streams, written by perpwatch/collector.py)."""
    if not table_exists(con, "meta.ws_streams"):
        return []
    rows = con.execute("""
        WITH latest AS (
            SELECT *, row_number() OVER (PARTITION BY source, stream ORDER BY finished_at DESC) AS k
            FROM meta.ws_streams)
        SELECT l.source, l.stream, l.url, (SELECT max(w.last_message_at) FROM meta.ws_streams w
                                           WHERE w.source = l.source AND w.stream = l.stream) AS last_message_at,
               l.messages, l.kept, epoch(l.finished_at) - epoch(l.started_at) AS seconds, l.silences, l.reconnects,
               l.finished_at
        FROM latest l WHERE k = 1 ORDER BY l.source, l.stream""").fetchall()
    out = []
    for src, stream, url, last, n, kept, secs, silences, reconnects, finished in rows:
        per_h = n * 3600.0 / secs if secs and secs > 0 else None
        out.append({"source": src, "stream": stream, "url": url, "last_message_at": _as_utc(last),
                    "messages_per_hour": per_h, "messages": n, "kept": kept, "capture_s": secs,
                    "silences": silences, "reconnects": reconnects, "run_finished_at": _as_utc(finished)})
    return out


def bans(con, now: datetime) -> list[dict]:
    """Venues still banned (meta.venue_bans): runs skip them until banned_until."""
    if not table_exists(con, "meta.venue_bans"):
        return []
    return [{"source": s, "banned_until": _as_utc(u), "reason": r} for s, u, r in con.execute(
        "SELECT source, banned_until, reason FROM meta.venue_bans WHERE banned_until > ? ORDER BY source",
        [now]).fetchall()]


def collect(con, now: datetime | None = None) -> dict:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    fresh = freshness(con, now)
    n_quarantined, quarantined = open_quarantine(con)
    runs = last_runs(con)
    from perpwatch.ingest import gaps

    open_gaps = gaps.open_gaps(con).head(50).to_dicts()
    return {"now": now, "freshness": fresh, "tables": staging_tables(con, now), "runs": runs,
            "quarantine_open": n_quarantined, "quarantine": quarantined, "gaps": open_gaps,
            "ws_streams": ws_streams(con), "bans": bans(con, now),
            "stale": sum(1 for f in fresh if f["stale"]),
            "ok": not any(f["stale"] for f in fresh) and n_quarantined == 0
            and (not runs or runs[0]["status"] in ("success", "warning", "running"))}


# --------------------------------------------------------------------------- output

def text_table(rows: list[list], headers: list[str], right: set[int] | None = None) -> str:
    """Aligned plain-text table (numbers right-aligned by column index)."""
    right = right or set()
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(vals):
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(vals, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _ts(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M") if ts else "-"


def _short(text: str | None, n: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def render_text(st: dict, where: str) -> str:
    out = [f"perpwatch status — {where} — {st['now']:%Y-%m-%d %H:%M} UTC", ""]
    out.append(f"Freshness per source and dataset ({st['stale']} stale)")
    if st["freshness"]:
        out.append(text_table(
            [[f["source"], f["dataset"], f["schedule"], f["instruments"], _ts(f["newest"]),
              _lag_text(timedelta(seconds=f["lag_s"])) if f["lag_s"] is not None else "-",
              _lag_text(timedelta(seconds=f["max_lag_s"])),
              ("STALE" if f["stale"] else "ok")
              + (f" ({f['instruments_lagging']}/{f['instruments']} instruments behind)"
                 if f["instruments_lagging"] and not f["stale"] else "")]
             for f in st["freshness"]],
            ["source", "dataset", "schedule", "instr", "newest (UTC)", "lag", "max lag", "status"], {3, 5, 6}))
    else:
        out.append("  nothing loaded yet (meta.watermarks is empty)")
    out += ["", "Staging tables"]
    out.append(text_table(
        [[t["table"], f"{t['rows']:,}", _ts(t["newest"]), t["sources"] if t["by"] else "-"] for t in st["tables"]],
        ["table", "rows", "newest (UTC)", "venues/sources"], {1, 3}))
    out += ["", "Last runs"]
    if st["runs"]:
        out.append(text_table(
            [[r["run_id"], r["kind"], _ts(r["started_at"]),
              f"{r['seconds']:.0f}s" if r["seconds"] is not None else "-", r["status"], r["fetched"], r["loaded"],
              r["quarantined"], _short(r["message"], 60)] for r in st["runs"]],
            ["run", "kind", "started (UTC)", "took", "status", "fetched", "loaded", "quar.", "message"],
            {3, 5, 6, 7}))
    else:
        out.append("  no runs recorded")
    out += ["", f"Open quarantined batches: {st['quarantine_open']}"]
    if st["quarantine"]:
        out.append(text_table(
            [[q["batch_id"][:8], _ts(q["received_at"]), q["source"], q["dataset"], q["instrument"] or "-", q["rows"],
              _short(q["message"], 80)] for q in st["quarantine"]],
            ["batch", "received (UTC)", "source", "dataset", "instrument", "rows", "message"], {5}))
        out.append("  (inspect: SELECT * FROM quarantine.batches WHERE resolved_at IS NULL)")
    gaps = st.get("gaps") or []
    out += ["", f"Gaps in stored series (re-requested by the next run): {len(gaps)}"]
    if gaps:
        out.append(text_table(
            [[g["source"], g["dataset"], g["instrument"], _ts(g["gap_start"]), _ts(g["gap_end"]),
              "window" if g["missing"] is None else g["missing"], g["status"], g["attempts"]] for g in gaps],
            ["source", "dataset", "instrument", "from (UTC)", "to (UTC)", "missing", "status", "attempts"], {5, 7}))
    streams = st.get("ws_streams") or []
    if streams:
        out += ["", "Liquidation websocket streams (latest collect run)"]
        out.append(text_table(
            [[w["source"], w["stream"], _ts(w["last_message_at"]),
              "-" if w["messages_per_hour"] is None else f"{w['messages_per_hour']:,.0f}",
              w["messages"], f"{w['capture_s']:.0f}s" if w["capture_s"] is not None else "-", w["silences"],
              "SILENT" if not w["messages"] else "ok"] for w in streams],
            ["source", "stream", "last message (UTC)", "msgs/hour", "msgs", "captured", "silences", "status"],
            {3, 4, 5, 6}))
    banned = st.get("bans") or []
    if banned:
        out += ["", f"Venues banned (skipped by every run until the time shown): {len(banned)}"]
        out.append(text_table([[b["source"], _ts(b["banned_until"]), _short(b["reason"], 90)] for b in banned],
                              ["source", "until (UTC)", "reason"]))
    return "\n".join(out)


def _jsonable(obj):
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    raise TypeError(type(obj).__name__)


def main(args) -> int:
    try:
        con, path, snapshot = open_readonly(getattr(args, "db", None))
    except (FileNotFoundError, warehouse.WarehouseLocked) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    try:
        st = collect(con, getattr(args, "now", None))
        from perpwatch.warehouse import ops

        lake_st = ops.lake_status(con)
        if lake_st is not None:
            st["lake"] = lake_st
    finally:
        con.close()
    where = f"{path} (serving snapshot: the warehouse is locked by a running pipeline)" if snapshot else str(path)
    if getattr(args, "json", False):
        print(json.dumps({"warehouse": str(path), "snapshot": snapshot, **st}, default=_jsonable, indent=1))
    else:
        print(render_text(st, where))
        if st.get("lake"):
            lk = st["lake"]
            m = lk["last_maintenance"]
            print(f"\nDuckLake catalog: {lk['snapshots']} snapshots (latest {lk['latest_snapshot']} at "
                  f"{_ts(lk['latest_snapshot_time'])}), {lk['data_files']} data files "
                  f"({lk['data_bytes'] / 1e6:.1f} MB), {lk['delete_files']} delete files; last maintenance: "
                  + (f"{_ts(m['finished_at'])} (expired {m['snapshots_expired']} snapshots, merged "
                     f"{m['files_merged']} files, deleted {m['files_deleted']})" if m else "never"))
    return 0
