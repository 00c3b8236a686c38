"""Warehouse operations for both backends: read-only queries (with time travel on the lake),
migration of a DuckDB-file warehouse into a lake, and lake maintenance."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from perpwatch import warehouse
from perpwatch.core import settings
from perpwatch.warehouse import lake

MIGRATED_SCHEMAS = ("raw", "staging", "marts", "meta", "quarantine")


# --------------------------------------------------------------------------- query

def query(sql: str, db=None, as_of=None, fmt: str = "table") -> str:
    """Run one read-only query; `as_of` (snapshot id or ISO timestamp) reads the lake as it was then."""
    con = warehouse.connect(db, read_only=True, as_of=as_of)
    try:
        rel = con.sql(sql)
        if rel is None:
            return ""
        cols = rel.columns
        rows = rel.fetchall()
    finally:
        con.close()
    if fmt == "json":
        return json.dumps([dict(zip(cols, r, strict=True)) for r in rows], default=str)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
        return buf.getvalue()
    text = [[str(c) for c in cols]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in text]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})\n"


def parse_as_of(value: str | None):
    """A snapshot id (digits) or an ISO timestamp (UTC when no offset is given)."""
    if value is None or value.isdigit():
        return int(value) if value else None
    ts = datetime.fromisoformat(value)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- migrate

def _tables(con, schemas=MIGRATED_SCHEMAS) -> list[tuple[str, str]]:
    q = ", ".join(f"'{s}'" for s in schemas)
    return con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() "
                       f"AND schema_name IN ({q}) ORDER BY 1, 2").fetchall()


def migrate(source, to: str, say=print) -> dict[str, int]:
    """Copy a DuckDB-file warehouse (every table of raw, staging, marts, meta, quarantine) into the
    lake at `to`, then verify row for row (EXCEPT ALL both ways on every table). Safe to rerun: each
    table is replaced whole in one lake transaction, so a rerun (or a run after a crash) converges
    to the file's contents. Returns rows per table."""
    src = Path(source or warehouse.settings.db_path())
    if not src.exists():
        raise FileNotFoundError(f"no DuckDB warehouse at {src}")
    lake.create_database(to)
    con = lake.connect(to)
    try:
        con.execute(f"ATTACH '{src}' AS __src (READ_ONLY)")
        src_tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = '__src' "
            f"AND schema_name IN ({', '.join(repr(s) for s in MIGRATED_SCHEMAS)}) ORDER BY 1, 2").fetchall()
        counts: dict[str, int] = {}
        for schema, name in src_tables:
            full = f'{schema}."{name}"'
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = '__src' AND schema_name = ? "
                "AND table_name = ? ORDER BY column_index", [schema, name]).fetchall()]
            have = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                               "AND schema_name = ? AND table_name = ?", [schema, name]).fetchone()[0]

            def copy(full=full, schema=schema, name=name, cols=cols, have=have):
                if have:   # keep the lake's DDL (comments, NOT NULL): replace the rows only
                    con.execute(f"DELETE FROM {full}")
                    collist = ", ".join(f'"{c}"' for c in cols)
                    con.execute(f"INSERT INTO {full} ({collist}) SELECT {collist} FROM __src.{full}")
                else:
                    con.execute(f"CREATE TABLE {full} AS SELECT * FROM __src.{full}")
            warehouse.write(con, copy, table=f"{schema}.{name}", batch="migrate")
            counts[f"{schema}.{name}"] = verify_table(con, full, cols)
            say(f"{schema}.{name}: {counts[f'{schema}.{name}']} rows, verified")
        if any(s == "raw" and n == "payloads" for s, n in src_tables):   # new payloads continue after the file's ids
            top = con.execute("SELECT coalesce(max(raw_id), 0) FROM raw.payloads").fetchone()[0]
            if top > 0:
                seq = lake.RAW_ID_SEQUENCE
                con.execute(f"CALL postgres_execute('{lake.PG_ALIAS}', 'SELECT setval(''{seq}'', greatest({int(top)}, "
                            f"(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {seq})), true)')")
        con.execute("USE memory")   # DETACH of the source needs the lake to stay the only writer
        con.execute("DETACH __src")
        con.execute(f"USE {lake.ALIAS}")
        warehouse.retry(lambda: warehouse.apply_comments(con), what="comments")
        return counts
    finally:
        con.close()


def verify_table(con, full: str, cols: list[str]) -> int:
    collist = ", ".join(f'"{c}"' for c in cols)
    n_src = con.execute(f"SELECT count(*) FROM __src.{full}").fetchone()[0]
    n_dst = con.execute(f"SELECT count(*) FROM {full}").fetchone()[0]
    diff = con.execute(f"SELECT (SELECT count(*) FROM (SELECT {collist} FROM __src.{full} EXCEPT ALL "
                       f"SELECT {collist} FROM {full})) + (SELECT count(*) FROM (SELECT {collist} FROM {full} "
                       f"EXCEPT ALL SELECT {collist} FROM __src.{full}))").fetchone()[0]
    if n_src != n_dst or diff:
        raise RuntimeError(f"migration check failed for {full}: {n_src} rows in the file, {n_dst} in the lake, "
                           f"{diff} differing")
    return n_dst


# --------------------------------------------------------------------------- maintenance

def retention_days() -> float:
    return float(settings.get().lake_retention_days)


def maintain(db=None, retention: float | None = None, say=lambda _m: None) -> dict:
    """Compact (flush inlined rows, merge adjacent small Parquet files), expire snapshots older than
    the retention (time travel reaches back that far), delete the files no snapshot needs any more
    and orphaned files; record it in meta.maintenance. DuckLake functions, see ducklake.select docs
    "Maintenance". Run it where no other maintenance runs (prefect.yaml: concurrency limit 1)."""
    retention = retention_days() if retention is None else retention
    con = warehouse.connect(db)
    try:
        if not lake.is_lake(con):
            raise ValueError("maintenance is for the DuckLake backend (PERPWATCH_CATALOG); the DuckDB file "
                             "needs none")
        started = datetime.now(UTC)
        files_before = _file_count(con)
        t0 = time.perf_counter()
        warehouse.retry(lambda: con.execute(f"CALL ducklake_flush_inlined_data('{lake.ALIAS}')").fetchall(),
                        what="flush inlined data")
        warehouse.retry(lambda: con.execute(f"CALL ducklake_merge_adjacent_files('{lake.ALIAS}')").fetchall(),
                        what="merge adjacent files")
        merged = files_before - _file_count(con)
        cutoff = started - timedelta(days=retention)
        expired = len(warehouse.retry(lambda: con.execute(
            f"CALL ducklake_expire_snapshots('{lake.ALIAS}', older_than => ?::TIMESTAMPTZ)", [cutoff]).fetchall(),
            what="expire snapshots"))
        deleted = len(con.execute(f"CALL ducklake_cleanup_old_files('{lake.ALIAS}', cleanup_all => true)").fetchall())
        if "://" not in lake.data_path():
            deleted += len(con.execute(
                f"CALL ducklake_delete_orphaned_files('{lake.ALIAS}', older_than => now() - INTERVAL 1 HOUR)").fetchall())
        msg = f"{time.perf_counter() - t0:.1f}s"
        warehouse.retry(lambda: con.execute(
            "INSERT INTO meta.maintenance VALUES (?, now(), ?, ?, ?, ?, ?)",
            [started, expired, merged, deleted, retention, msg]), what="meta.maintenance")
        out = {"snapshots_expired": expired, "files_merged": merged, "files_deleted": deleted,
               "retention_days": retention, "files": _file_count(con)}
        say(json.dumps(out))
        return out
    finally:
        con.close()


def _file_count(con) -> int:
    return con.execute(f"SELECT coalesce(sum(file_count), 0) FROM ducklake_table_info('{lake.ALIAS}')").fetchone()[0]


def lake_status(con) -> dict | None:
    """Catalog facts for `perpwatch status` (None on the DuckDB file)."""
    if not lake.is_lake(con):
        return None
    info = con.execute(f"SELECT coalesce(sum(file_count), 0), coalesce(sum(file_size_bytes), 0), "
                       f"coalesce(sum(delete_file_count), 0) FROM ducklake_table_info('{lake.ALIAS}')").fetchone()
    snaps = con.execute(f"SELECT count(*), max(snapshot_id), max(snapshot_time) FROM {lake.ALIAS}.snapshots()").fetchone()
    last = con.execute("SELECT finished_at, snapshots_expired, files_merged, files_deleted FROM meta.maintenance "
                       "ORDER BY finished_at DESC LIMIT 1").fetchone()
    return {"data_files": int(info[0]), "data_bytes": int(info[1]), "delete_files": int(info[2]),
            "snapshots": int(snaps[0]), "latest_snapshot": snaps[1], "latest_snapshot_time": snaps[2],
            "last_maintenance": None if not last else
            {"finished_at": last[0], "snapshots_expired": last[1], "files_merged": last[2], "files_deleted": last[3]}}
