"""Publish what changed: the serving snapshot and the Parquet exports cost the change, not the history.

Serving snapshot: two DuckDB files, `<serving>.a` and `<serving>.b`, and `<serving>` itself a symlink to
the current one (swapped with os.replace, atomic). A publish brings the *other* file up to date in place
and swaps the link: only what changed since that file's own version is rewritten, so the cost follows the
change, not the history. What changed comes from the warehouse itself:

- marts: meta.mart_changes, written by every build (transforms): a mart rebuilt in full, or rebuilt from a
  day on (incremental builds: DELETE/INSERT of the rows from that day in the copy);
- staging: rows whose ingested_at is newer than the copy's (every load stamps ingested_at; an upsert
  replaces a row with a new stamp), replaced by grain key; a row count that then differs from the
  warehouse's (rows deleted) makes that table a full copy;
- meta and quarantine: small, copied whole (meta.heatmap_levels, the heatmap model's internal state, is not
  published).

The version a copy reflects is stored inside it (meta.serving_version). A reader that keeps a connection open
keeps a shared lock on its file: when the file to update is still held, the publish writes a fresh file
instead (a full copy, as before) and the held one is left alone; readers never see a half-built table.

Exports: `<exports>/<mart>/year=YYYY/month=MM/data.parquet` (UTC calendar month of the mart's date or ts
column), else `<exports>/<mart>/data.parquet` (marts without one, and empty marts: a schema-only file);
only the months at or after a mart's change are rewritten, each file via a temp file and os.replace, so a
daily publish rewrites at most a month of each changed mart whatever the history. `<exports>/_published.json` holds the change sequence they reflect.
"""

from __future__ import annotations

import json
import os
import time
from datetime import date
from pathlib import Path

import duckdb

PUBLISHED_SCHEMAS = ("staging", "marts", "meta", "quarantine")
NOT_PUBLISHED = {"meta.heatmap_levels"}
VERSION_TABLE = "meta.serving_version"


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(table: str) -> str:
    s, t = table.split(".")
    return f'{s}."{t}"'


def record_change(con, table: str, changed_from: date | None, seq: int | None = None) -> None:
    """A build rewrote `table` (from `changed_from` on; None = all of it). Call inside the build's transaction.
    seq: the change's number when the caller hands them out (builds running in parallel commit in their
    order); default: one past the highest this transaction sees."""
    # literals, not parameters: a build's first parameterised query makes DuckDB import pandas (~0.2 s)
    frm = "NULL" if changed_from is None else f"DATE '{changed_from:%Y-%m-%d}'"
    if seq is None:
        con.execute("INSERT INTO meta.mart_changes (seq, table_name, changed_from, changed_at) "
                    f"SELECT coalesce(max(seq), 0) + 1, {_q(table)}, {frm}, now() FROM meta.mart_changes")
    else:
        con.execute("INSERT INTO meta.mart_changes (seq, table_name, changed_from, changed_at) "
                    f"VALUES ({int(seq)}, {_q(table)}, {frm}, now())")


def _changes_since(con, seq: int) -> dict[str, date | None]:
    """table -> earliest changed day since change `seq` (None: changed in full)."""
    out: dict[str, date | None] = {}
    for table, frm in con.execute("SELECT table_name, changed_from FROM meta.mart_changes WHERE seq > ? ORDER BY seq",
                                  [seq]).fetchall():
        if table in out and out[table] is None:
            continue
        out[table] = None if frm is None else (frm if table not in out else min(out[table], frm))
    return out


def _tables(con, catalog: str | None = None) -> dict[str, str]:
    """schema.table -> 'BASE TABLE' | 'VIEW' in the published schemas."""
    cat = "current_database()" if catalog is None else _q(catalog)
    rows = con.execute(
        f"SELECT table_schema, table_name, table_type FROM information_schema.tables WHERE table_catalog = {cat} "
        f"AND table_schema IN ({', '.join(_q(s) for s in PUBLISHED_SCHEMAS)})").fetchall()
    return {f"{s}.{t}": k for s, t, k in rows if f"{s}.{t}" not in NOT_PUBLISHED}


_COLS: dict[tuple[int, str | None], dict[str, list[tuple[str, str]]]] = {}


def _columns(con, table: str, catalog: str | None = None) -> list[tuple[str, str]]:
    """Columns (name, type) of `table`; one catalog query per publish step (_forget_columns clears it)."""
    key = (id(con), catalog)
    if key not in _COLS:
        cat = "current_database()" if catalog is None else _q(catalog)
        cols: dict[str, list[tuple[str, str]]] = {}
        for s, t, c, typ in con.execute(
                "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
                f"WHERE table_catalog = {cat} ORDER BY table_schema, table_name, ordinal_position").fetchall():
            cols.setdefault(f"{s}.{t}", []).append((c, typ))
        _COLS[key] = cols
    return _COLS[key].get(table, [])


def _forget_columns() -> None:
    _COLS.clear()


def mart_time_column(con, table: str) -> str | None:
    names = [c for c, _ in _columns(con, table)]
    return "date" if "date" in names else "ts" if "ts" in names else None


def _lit_day(d: date, typ: str) -> str:
    return f"TIMESTAMPTZ '{d:%Y-%m-%d} 00:00:00+00'" if "TIME ZONE" in typ.upper() else f"DATE '{d:%Y-%m-%d}'"


# --------------------------------------------------------------------------- serving snapshot


def _buffers(serving: Path) -> tuple[Path, Path]:
    return serving.with_name(serving.name + ".a"), serving.with_name(serving.name + ".b")


def _current(serving: Path) -> Path | None:
    return serving.resolve() if serving.is_symlink() else None


def _swap_link(serving: Path, target: Path) -> None:
    tmp = serving.with_name(f".{serving.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target.name, tmp)
    os.replace(tmp, serving)


def _full_copy(con, path: Path, seq: int) -> None:
    from perpwatch import warehouse

    path.unlink(missing_ok=True)
    con.execute(f"ATTACH {_q(str(path))} AS __snap")
    try:
        stamp = _stamp(con)
        for schema in PUBLISHED_SCHEMAS:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS __snap.{schema}")
        for table in sorted(_tables(con)):
            con.execute(f"CREATE TABLE __snap.{_ident(table)} AS SELECT * FROM {_ident(table)}")
        _write_version(con, seq, stamp)
    finally:
        con.execute("DETACH __snap")
    snap = duckdb.connect(str(path))
    try:
        warehouse.apply_comments(snap)
        snap.execute("CHECKPOINT")
    finally:
        snap.close()


def _stamp(con, since=None):
    """Newest staging ingested_at (after `since` only: zone maps skip the older row groups)."""
    where = "" if since is None else " WHERE ingested_at > $since"
    best = since
    for t in _tables(con):
        if t.startswith("staging.") and "ingested_at" in dict(_columns(con, t)):
            v = con.execute(f"SELECT max(ingested_at) FROM {_ident(t)}{where}",
                            {} if since is None else {"since": since}).fetchone()[0]
            if v is not None and (best is None or v > best):
                best = v
    return best


def _write_version(con, seq: int, stamp) -> None:
    con.execute("CREATE OR REPLACE TABLE __snap.meta.serving_version (change_seq BIGINT, ingested_through TIMESTAMPTZ, "
                "published_at TIMESTAMPTZ)")
    con.execute("INSERT INTO __snap.meta.serving_version VALUES (?, ?, now())", [seq, stamp])


def _update_in_place(con, path: Path, seq: int) -> dict[str, str] | None:
    """Bring the copy at `path` up to change `seq` and the newest staging rows. None when it cannot be opened for writing (a reader holds it)
    or has no version (then the caller writes a fresh full copy)."""
    from perpwatch import warehouse
    from perpwatch.core import tables as registry

    try:
        con.execute(f"ATTACH {_q(str(path))} AS __snap")
    except duckdb.Error:
        return None
    what: dict[str, str] = {}
    _forget_columns()
    try:
        try:
            old_seq, old_stamp = con.execute("SELECT change_seq, ingested_through FROM __snap.meta.serving_version"
                                             ).fetchone()
        except duckdb.Error:
            return None
        have = _tables(con, "__snap")
        want = _tables(con)
        marts = _changes_since(con, old_seq)
        with warehouse.transaction(con):
            stamp = _stamp(con, old_stamp)
            for table in sorted(set(have) - set(want) - {VERSION_TABLE}):
                con.execute(f"DROP {'VIEW' if have[table] == 'VIEW' else 'TABLE'} __snap.{_ident(table)}")
                what[table] = "dropped"
            for table in sorted(want):
                schema, name = table.split(".")
                same_shape = table in have and _columns(con, table) == _columns(con, table, "__snap")
                how = "full"
                if same_shape and schema == "marts":
                    if table not in marts:
                        continue
                    col = mart_time_column(con, table)
                    frm = marts[table]
                    if frm is not None and col is not None:       # a table, or a view over cut inputs
                        typ = dict(_columns(con, table))[col]
                        cut = f'"{col}" >= {_lit_day(frm, typ)}'
                        con.execute(f"DELETE FROM __snap.{_ident(table)} WHERE {cut}")
                        con.execute(f"INSERT INTO __snap.{_ident(table)} SELECT * FROM {_ident(table)} WHERE {cut}")
                        how = f"from {frm}"
                elif same_shape and schema == "staging" and name in registry.BY_NAME and old_stamp is not None \
                        and "ingested_at" in dict(_columns(con, table)):
                    # rows loaded since the copy's stamp replace theirs by grain key (no temp table: one
                    # transaction may write one database only)
                    reg = registry.BY_NAME[name]
                    new_rows = f"SELECT * FROM {_ident(table)} WHERE ingested_at > $stamp"
                    n, t_min = con.execute(f'SELECT count(*), min("{reg.time_column}") FROM ({new_rows})',
                                           {"stamp": old_stamp}).fetchone()
                    if n:
                        on = " AND ".join(f'__snap.{_ident(table)}."{k}" IS NOT DISTINCT FROM c."{k}"' for k in reg.key)
                        # when the time column is part of the grain, a replaced row has the time of its new
                        # version: the bound lets zone maps skip the copy's older row groups
                        bound = f' AND __snap.{_ident(table)}."{reg.time_column}" >= $t_min' \
                            if reg.time_column in reg.key and t_min is not None else ""
                        con.execute(f"DELETE FROM __snap.{_ident(table)} USING ({new_rows}) c WHERE {on}{bound}",
                                    {"stamp": old_stamp, **({"t_min": t_min} if bound else {})})
                        con.execute(f"INSERT INTO __snap.{_ident(table)} {new_rows}", {"stamp": old_stamp})
                    a = con.execute(f"SELECT count(*) FROM {_ident(table)}").fetchone()[0]
                    b = con.execute(f"SELECT count(*) FROM __snap.{_ident(table)}").fetchone()[0]
                    if a == b:       # else rows were deleted in the warehouse: copy the table whole
                        if n:
                            what[table] = f"{n} rows"
                        continue
                if how == "full":
                    con.execute(f"CREATE OR REPLACE TABLE __snap.{_ident(table)} AS SELECT * FROM {_ident(table)}")
                what[table] = how
            _write_version(con, seq, stamp)
    finally:
        con.execute("DETACH __snap")
    snap = duckdb.connect(str(path))
    try:
        warehouse.apply_comments(snap)
        snap.execute("CHECKPOINT")
    finally:
        snap.close()
    return what


def publish_serving(con, serving: Path) -> dict:
    """Update the serving snapshot (see the module doc). Returns {'serving': path, 'mode': ..., 'changed': {...}}."""
    serving.parent.mkdir(parents=True, exist_ok=True)
    _forget_columns()
    seq = con.execute("SELECT coalesce(max(seq), 0) FROM meta.mart_changes").fetchone()[0]
    a, b = _buffers(serving)
    cur = _current(serving)
    target = b if cur == a.resolve() else a
    for stale in serving.parent.glob(f".{serving.name}.*"):
        stale.unlink(missing_ok=True)   # left by a publisher that was killed mid-way
    what = _update_in_place(con, target, seq) if target.exists() else None
    mode = "changed tables"
    if what is None:
        # first publish, an old single-file snapshot, or the file is held by a reader: a fresh full copy
        fresh = target if not target.exists() else serving.with_name(f"{serving.name}.{int(time.time() * 1000)}")
        tmp = fresh.with_name(f".{serving.name}.{os.getpid()}.tmp")
        _full_copy(con, tmp, seq)
        if fresh == target or not _held(target):
            os.replace(tmp, target)
            fresh = target
        else:
            os.replace(tmp, fresh)
        target, mode, what = fresh, "full copy", {}
    _swap_link(serving, target)
    for old in serving.parent.glob(f"{serving.name}.[0-9]*"):   # fresh copies made while a/b were held
        if old != target and not _held(old):
            old.unlink(missing_ok=True)
    return {"serving": str(serving), "mode": mode, "changed": what}


def _held(path: Path) -> bool:
    """True when another process holds the DuckDB file (a read-only reader's shared lock)."""
    try:
        c = duckdb.connect(str(path))
    except duckdb.Error:
        return True
    c.close()
    return False


# --------------------------------------------------------------------------- exports


def export_changed(con, exports: Path) -> dict[str, str]:
    """Parquet exports of the marts, partitioned by month, rewriting only what changed since the last export."""
    exports.mkdir(parents=True, exist_ok=True)
    _forget_columns()
    state_file = exports / "_published.json"
    try:
        old_seq = int(json.loads(state_file.read_text())["change_seq"])
    except (OSError, ValueError, KeyError):
        old_seq = -1
    seq = con.execute("SELECT coalesce(max(seq), 0) FROM meta.mart_changes").fetchone()[0]
    changes = _changes_since(con, old_seq) if old_seq >= 0 else {}
    for stale in exports.glob("**/.*.tmp"):
        stale.unlink(missing_ok=True)
    written: dict[str, str] = {}
    marts = sorted(t for t in _tables(con) if t.startswith("marts."))
    for table in marts:
        name = table.split(".")[1]
        out = exports / name
        legacy = exports / f"{name}.parquet"       # the single-file layout before issue 16
        full = old_seq < 0 or not out.exists()
        if not full and table not in changes:
            continue
        frm = None if full else changes.get(table)
        col = mart_time_column(con, table)
        out.mkdir(parents=True, exist_ok=True)
        if col is None:
            _write_file(con, f"SELECT * FROM {_ident(table)}", out / "data.parquet")
            written[table] = str(out)
            continue
        typ = dict(_columns(con, table))[col]
        day = f'make_timestamp(epoch_us("{col}"))' if "TIME ZONE" in typ.upper() else f'"{col}"'
        month = f"(year({day}) * 100 + month({day}))"     # UTC calendar month of the row
        where = "" if frm is None else f' WHERE "{col}" >= {_lit_day(frm, typ)}'
        months = [m for (m,) in con.execute(f"SELECT DISTINCT {month} FROM {_ident(table)}{where}").fetchall()
                  if m is not None]
        first = None if frm is None else frm.year * 100 + frm.month
        for m in months:
            # the month as a range of the time column: zone maps can skip the other months' row groups where the
            # mart's rows lie in time order (the heatmap's rebuilt rows are asset-major, so there they cannot)
            y, mo = divmod(int(m), 100)
            rng = (f'"{col}" >= {_lit_day(date(y, mo, 1), typ)} '
                   f'AND "{col}" < {_lit_day(date(y + mo // 12, mo % 12 + 1, 1), typ)}')
            _write_file(con, f"SELECT * FROM {_ident(table)} WHERE {rng}",
                        out / f"year={m // 100}" / f"month={m % 100:02d}" / "data.parquet")
        for d in out.glob("year=*/month=*"):       # months that have no rows any more
            m = int(d.parent.name.split("=", 1)[1]) * 100 + int(d.name.split("=", 1)[1])
            if m not in months and (first is None or m >= first):
                for f in d.iterdir():
                    f.unlink()
                d.rmdir()
        for y in out.glob("year=*"):
            if y.is_dir() and not any(y.iterdir()):
                y.rmdir()
        if any(out.glob("year=*")):
            (out / "data.parquet").unlink(missing_ok=True)
        else:        # no rows: one empty file keeps the schema readable
            _write_file(con, f"SELECT * FROM {_ident(table)} LIMIT 0", out / "data.parquet")
        legacy.unlink(missing_ok=True)
        written[table] = str(out)
    tmp = exports / f".{state_file.name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"change_seq": seq}))
    os.replace(tmp, state_file)
    return written


def _write_file(con, sql: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    con.execute(f"COPY ({sql}) TO {_q(str(part))} (FORMAT parquet)")
    os.replace(part, out)
