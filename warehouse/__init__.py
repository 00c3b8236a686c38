"""The one place that opens DuckDB, owns the schema, loads, and publishes.

Everything else goes through these functions, so the single warehouse file can later be
swapped for a shared catalog (e.g. DuckLake) without touching sources or transforms.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import tomllib
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from perpwatch.core import settings, tables

SCHEMA_FILE = Path(__file__).with_name("schema.sql")
DOCS_FILE = Path(__file__).with_name("docs.toml")

# Grain of every loadable table (the upsert key) and the provenance columns come from the registry
# (perpwatch/core/tables.py); identifiers used in SQL come only from there.
KEYS: dict[str, list[str]] = {t.qualified: list(t.key) for t in tables.STAGING}
PROVENANCE = tables.PROVENANCE


class WarehouseLocked(RuntimeError):
    """Another process holds the DuckDB write lock for longer than we were willing to wait."""


def now_utc() -> datetime:
    return datetime.now(UTC)


def target(path: str | Path | None = None) -> str | Path:
    """What connect() opens: an explicit path or postgresql:// URL, else $PERPWATCH_CATALOG, else the file."""
    from perpwatch.warehouse import lake

    if path is not None and lake.is_url(str(path)):
        return str(path)
    if path is not None:
        return Path(path)
    return lake.catalog_url() or settings.db_path()


def is_lake_target(path: str | Path | None = None) -> bool:
    from perpwatch.warehouse import lake

    return lake.is_url(str(target(path)))


def connect(path: str | Path | None = None, read_only: bool = False, wait_s: float = 60.0, as_of=None):
    """Open the warehouse. Waits (with a clear message) while another process holds the lock.

    With a postgresql:// URL (or $PERPWATCH_CATALOG and no path) this is the DuckLake backend
    (warehouse/lake.py): same schemas and tables, `as_of` (snapshot id or timestamp) reads the past.
    """
    from perpwatch.warehouse import lake

    path = target(path)
    if isinstance(path, str):
        return lake.connect(path, read_only=read_only, as_of=as_of)
    if as_of is not None:
        raise ValueError("--as-of needs the DuckLake backend (PERPWATCH_CATALOG); the DuckDB file keeps no snapshots")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            _create(path)
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower() and not waited:
                waited = True
                from perpwatch.core import phases
                phases.mark("lock-wait")
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                if "lock" in str(exc).lower():
                    raise WarehouseLocked(
                        f"warehouse {path} is locked by another process (waited {wait_s:.0f}s): {exc}"
                    ) from exc
                raise
            time.sleep(0.5)
    con.execute("SET TimeZone='UTC'")
    if not read_only:
        ensure_schema(con)
    return con


# The DuckDB storage format a new warehouse file is created with. v1.3.0 brings DICT_FSST for VARCHAR
# columns: the Arrow insert of 1 M open-interest rows (four low-cardinality text columns: venue, instrument,
# asset, margin) took 0.49-0.52 CPU-s instead of 0.67-0.74 with the default format's dictionary compression,
# at the same file size (docs/stack.md, "Storage format"). The file records its version: DuckDB >= 1.3
# reads it; a file created before keeps its own format. The serving snapshot (ATTACHed from a warehouse
# connection, so created in DuckDB's default format) stays readable by older DuckDB (BI drivers).
STORAGE_VERSION = "v1.3.0"


def _create(path: Path) -> None:
    """Create an empty warehouse file in STORAGE_VERSION's format. Created by a throwaway in-memory
    instance: a connection opened with a storage_compatibility_version config could not share the file
    with plain duckdb.connect() connections of the same process (DuckDB refuses a second configuration),
    while the version recorded in the file applies to every later connection."""
    try:
        tmp = duckdb.connect()
        try:
            tmp.execute(f"ATTACH {_quote(str(path))} AS __new (STORAGE_VERSION {_quote(STORAGE_VERSION)})")
            tmp.execute("DETACH __new")
        finally:
            tmp.close()
    except duckdb.IOException:
        pass    # another process created it first (and holds it): connect() opens it as it is


@contextmanager
def session(path: str | Path | None = None, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(schema_sql(lake=False))
    upgrade_payload_encoding(con)
    upgrade_heatmap_levels(con)
    apply_comments(con, only_existing=True)


def upgrade_payload_encoding(con) -> None:
    """Warehouses made before the default changed: raw.payloads.encoding defaulted to 'zlib', so a body
    inserted by hand without `encoding` was taken for zlib data. The default is now 'identity' (read as
    stored; land() always writes 'zlib' explicitly). Altered once, only when it differs."""
    row = con.execute("SELECT column_default FROM duckdb_columns() WHERE database_name = current_database() "
                      "AND schema_name = 'raw' AND table_name = 'payloads' AND column_name = 'encoding'").fetchone()
    if row is not None and "identity" not in str(row[0] or ""):
        con.execute("ALTER TABLE raw.payloads ALTER COLUMN encoding SET DEFAULT 'identity'")


def upgrade_heatmap_levels(con) -> None:
    """Warehouses made before the heatmap state was stored as amount x scale: meta.heatmap_levels had a
    `usd` column. The table is only the heatmap fold's resume point (the next build is a full one without
    it), so it is made again, empty. Its own step: DuckDB refuses an ALTER and writes to the same table
    in one transaction."""
    cols = {r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'meta' AND table_name = 'heatmap_levels'").fetchall()}
    if "usd" in cols:
        con.execute("DROP TABLE meta.heatmap_levels")
        con.execute("CREATE TABLE meta.heatmap_levels (asset VARCHAR NOT NULL, side VARCHAR NOT NULL, "
                    "price DOUBLE NOT NULL, amount DOUBLE)")
        apply_comments(con, only_existing=True)


# Lake-only bookkeeping (warehouse/lake.py): write tokens that serialise upserts per table, the
# maintenance log shown by `perpwatch status`, and leases (warehouse/lease.py: one full mart rebuild
# at a time; the rows exist before anyone takes them so that two takers conflict).
LAKE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta.write_tokens (table_name VARCHAR NOT NULL, writes BIGINT, updated_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS meta.maintenance (
    started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ, snapshots_expired BIGINT, files_merged BIGINT,
    files_deleted BIGINT, retention_days DOUBLE, message VARCHAR);
CREATE TABLE IF NOT EXISTS meta.leases (name VARCHAR NOT NULL, holder VARCHAR, acquired_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ);
"""


def schema_sql(lake: bool) -> str:
    """The one schema (warehouse/schema.sql) for both backends. DuckLake has no sequences (raw_id
    comes from a PostgreSQL sequence there, see warehouse.land) and no PRIMARY KEY / indexes —
    schema.sql declares none: grains are enforced by upsert() on both backends."""
    text = SCHEMA_FILE.read_text()
    if not lake:
        return text
    kept = [stmt for stmt in text.split(";") if "CREATE SEQUENCE" not in stmt.upper()]
    return ";".join(kept) + ";" + LAKE_SCHEMA


def ensure_schema_lake(con: duckdb.DuckDBPyConnection) -> None:
    """Schema, write-token rows and comments on the lake, in one DuckLake transaction; skips what exists."""
    have = {f"{s}.{t}" for s, t in con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
    wanted = set(KEYS) | {"raw.payloads", "meta.watermarks", "meta.runs", "meta.run_datasets", "quarantine.batches",
                          "meta.gaps", "meta.write_tokens", "meta.maintenance", "meta.leases"}
    con.execute("BEGIN TRANSACTION")
    try:
        if not wanted <= have:
            con.execute(schema_sql(lake=True))
        else:   # a lake made before a column was added: the ALTER ... ADD COLUMN IF NOT EXISTS lines, once
            cols = {f"{s}.{t}.{c}" for s, t, c in con.execute(
                "SELECT schema_name, table_name, column_name FROM duckdb_columns() "
                "WHERE database_name = current_database()").fetchall()}
            for stmt in SCHEMA_FILE.read_text().split(";"):
                body = " ".join(line for line in stmt.splitlines() if not line.lstrip().startswith("--")).split()
                if body[:2] == ["ALTER", "TABLE"] and body[3:8] == ["ADD", "COLUMN", "IF", "NOT", "EXISTS"] \
                        and f"{body[2]}.{body[8]}" not in cols:
                    con.execute(" ".join(body))
        upgrade_heatmap_levels(con)
        tokens = {r[0] for r in con.execute("SELECT table_name FROM meta.write_tokens").fetchall()}
        for table in sorted(set(KEYS) - tokens):
            con.execute("INSERT INTO meta.write_tokens VALUES (?, 0, now())", [table])
        from perpwatch.warehouse.lease import NAMES

        leases = {r[0] for r in con.execute("SELECT name FROM meta.leases").fetchall()}
        for name in sorted(set(NAMES) - leases):
            con.execute("INSERT INTO meta.leases VALUES (?, NULL, NULL, NULL)", [name])
        apply_comments(con, only_existing=True)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def table_docs() -> dict:
    """warehouse/docs.toml plus every warehouse/docs.d/*.toml (one file per feature area)."""
    docs: dict = {}
    for path in [DOCS_FILE, *sorted(DOCS_FILE.with_name("docs.d").glob("*.toml"))]:
        with open(path, "rb") as f:
            for table, doc in tomllib.load(f).items():   # a table's columns may be documented in several files
                entry = docs.setdefault(table, {"columns": {}})
                entry.update({k: v for k, v in doc.items() if k != "columns"})
                entry["columns"].update(doc.get("columns", {}))
    return docs


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def apply_comments(con: duckdb.DuckDBPyConnection, only_existing: bool = True) -> None:
    """COMMENT ON every documented table and column (warehouse/docs.toml) that exists."""
    schemas = "('raw','staging','marts','meta','quarantine')"
    tables = {f"{s}.{t}": (c, v) for s, t, c, v in con.execute(
        "SELECT schema_name, table_name, comment, false FROM duckdb_tables() WHERE database_name = current_database() "
        f"AND schema_name IN {schemas} UNION ALL "
        "SELECT schema_name, view_name, comment, true FROM duckdb_views() WHERE database_name = current_database() "
        f"AND schema_name IN {schemas}").fetchall()}
    columns: dict[str, dict[str, str | None]] = {}
    for s, t, col, comment in con.execute(
            "SELECT schema_name, table_name, column_name, comment FROM duckdb_columns() "
            f"WHERE database_name = current_database() AND schema_name IN {schemas}").fetchall():
        columns.setdefault(f"{s}.{t}", {})[col] = comment
    from perpwatch.warehouse import lake

    on_lake = lake.is_lake(con)
    docs = table_docs()
    common = docs.get("*", {}).get("columns", {})
    for table in tables:                          # columns every table shares (venue, asset, raw_id, ...)
        if table not in docs:
            docs[table] = {"columns": {}}
        for col, text in common.items():
            docs[table]["columns"].setdefault(col, text)
    for table, doc in docs.items():
        if table not in tables:
            continue
        current, is_view = tables[table]
        if "description" in doc and current != doc["description"]:      # only write what changed: no WAL churn on every connect
            con.execute(f"COMMENT ON {'VIEW' if is_view else 'TABLE'} {table} IS {_quote(doc['description'])}")
        if is_view and on_lake:
            continue                  # DuckLake keeps no comments on view columns (the view's own comment it does)
        for col, text in doc.get("columns", {}).items():
            if col in columns.get(table, {}) and columns[table][col] != text:
                con.execute(f'COMMENT ON COLUMN {table}."{col}" IS {_quote(text)}')


# --------------------------------------------------------------------------- raw landing

class Lander:
    """Lands every response body in raw.payloads before anything parses it. Thread-safe.

    `buffered=True` (the ingest pipeline's extract step) on the DuckLake backend: each body gets its
    raw_id from the PostgreSQL sequence at once, but bodies are committed in batches — one DuckLake
    commit per `lake.LAND_BATCH_PAGES` pages / `LAND_BATCH_BYTES` / `LAND_BATCH_SECONDS`, and always
    by `flush()`, which the pipeline calls before a unit's extract step returns (so before the load
    step parses anything into staging). A DuckLake commit costs tens of milliseconds (a new snapshot
    in the catalog), a DuckDB file commit ~2 ms: landing page by page made the lake's extract step
    commit-bound. A crash loses at most the uncommitted tail of a unit's pages; nothing references
    them (their rows were never loaded, their watermarks never moved) and the rerun fetches them
    again. On the DuckDB file, and unbuffered, every body is committed on its own as before."""

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: str | None = None, buffered: bool = False):
        self.con = con
        self.run_id = run_id
        self._lock = threading.Lock()
        from perpwatch.warehouse import lake

        self.lake = lake.is_lake(con)    # asked once here: the connection is shared by extract threads
        self.buffered = buffered and self.lake
        self._pending: list[tuple] = []
        self._pending_bytes = 0
        self._oldest = 0.0
        self._flush_lock = threading.Lock()     # batches commit one at a time, in landing order
        self.commits = 0                        # landing commits so far (tests, benchmarks)

    def __call__(self, source: str, endpoint: str, params: dict, status: int, body: bytes,
                 fetched_at: datetime | None = None) -> int:
        if not self.buffered:
            return land(self.con, source, endpoint, params, status, body, fetched_at, self.run_id, self._lock,
                        on_lake=self.lake)
        from perpwatch.warehouse import lake

        row = _payload_row(source, endpoint, params, status, body, fetched_at, self.run_id)
        with self._lock:
            cur = self.con.cursor()
            try:
                raw_id = lake.next_raw_id(cur)     # ids in landing order, as unbuffered
            finally:
                cur.close()
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append((raw_id, *row))
            self._pending_bytes += len(row[5])
            due = (len(self._pending) >= lake.LAND_BATCH_PAGES or self._pending_bytes >= lake.LAND_BATCH_BYTES
                   or time.monotonic() - self._oldest >= lake.LAND_BATCH_SECONDS)
        if due:
            self.flush()
        return raw_id

    def flush(self) -> int:
        """Commit every pending body (one DuckLake transaction); returns how many. A no-op unbuffered."""
        if not self.buffered:
            return 0
        from perpwatch.warehouse import lake

        with self._flush_lock:
            with self._lock:
                rows, self._pending, self._pending_bytes = self._pending, [], 0
            if not rows:
                return 0
            try:
                cur = self.con.cursor()
                try:
                    retry(lambda: lake.land_rows(cur, rows), what=f"raw.payloads ({len(rows)} payloads)")
                finally:
                    cur.close()
            except BaseException:
                with self._lock:               # keep them for the next flush
                    self._pending[:0] = rows
                    self._pending_bytes += sum(len(r[6]) for r in rows)
                raise
            self.commits += 1
            return len(rows)


def _payload_row(source: str, endpoint: str, params: dict, status: int, body: bytes,
                 fetched_at: datetime | None, run_id: str | None) -> tuple:
    """(source, endpoint, params, fetched_at, http_status, body, sha256, run_id) as raw.payloads stores them."""
    return (source, endpoint, json.dumps(params, sort_keys=True), fetched_at or now_utc(), status,
            zlib.compress(body, 6), hashlib.sha256(body).hexdigest(), run_id)


def land(con, source: str, endpoint: str, params: dict, status: int, body: bytes,
         fetched_at: datetime | None = None, run_id: str | None = None, lock=None,
         on_lake: bool | None = None) -> int:
    from perpwatch.warehouse import lake

    fetched_at = fetched_at or now_utc()
    digest = hashlib.sha256(body).hexdigest()
    packed = zlib.compress(body, 6)
    if on_lake if on_lake is not None else lake.is_lake(con):   # DuckLake has no sequences: the id comes from PostgreSQL (lake.next_raw_id)
        sql = (f"INSERT INTO {lake.ALIAS}.raw.payloads (raw_id, source, endpoint, params, fetched_at, http_status, body, sha256, run_id, encoding) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'zlib')")
        args = [source, endpoint, json.dumps(params, sort_keys=True), fetched_at, status, packed, digest, run_id]

        def put(c) -> int:
            raw_id = lake.next_raw_id(c)
            c.execute(sql, [raw_id, *args])
            return raw_id
        if lock is None:
            return put(con)
        with lock:
            cur = con.cursor()
            try:
                return put(cur)
            finally:
                cur.close()
    # raw_id comes from the sequence explicitly: a column DEFAULT nextval(...) plus a COMMENT ON COLUMN
    # makes DuckDB 1.5.5 fail to replay its WAL after a crash ("GetDefaultDatabase with no default
    # database set"), found by tests/test_reliability.py.
    sql = ("INSERT INTO raw.payloads (raw_id, source, endpoint, params, fetched_at, http_status, body, sha256, run_id, "
           "encoding) VALUES (nextval('raw.payload_id_seq'), ?, ?, ?, ?, ?, ?, ?, ?, 'zlib') RETURNING raw_id")
    args = [source, endpoint, json.dumps(params, sort_keys=True), fetched_at, status, packed, digest, run_id]
    if lock is None:
        return con.execute(sql, args).fetchone()[0]
    with lock:
        cur = con.cursor()
        try:
            return cur.execute(sql, args).fetchone()[0]
        finally:
            cur.close()


class UndecodableBody(ValueError):
    """A raw.payloads body that its `encoding` cannot decode (corrupt, or mislabelled)."""


ENCODINGS = ("zlib", "identity")


def payload_body(blob: bytes | None, encoding: str | None = "zlib", raw_id: int | None = None) -> bytes:
    """The body as received. `encoding` 'zlib' (what land() writes) is decompressed; 'identity' (the
    column default, so a row inserted by hand without `encoding` is read as stored) or NULL is returned
    as stored. Anything else, or a zlib body that does not decompress, raises UndecodableBody."""
    where = f"raw_id={raw_id}: " if raw_id is not None else ""
    if blob is None:
        raise UndecodableBody(f"{where}body is NULL")
    if encoding in (None, "identity"):
        return bytes(blob)
    if encoding != "zlib":
        raise UndecodableBody(f"{where}unknown encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    try:
        return zlib.decompress(blob)
    except zlib.error as exc:
        raise UndecodableBody(f"{where}body is not zlib data although encoding='zlib' ({exc}); "
                              f"{len(blob)} bytes") from exc


# --------------------------------------------------------------------------- loading

@dataclass
class LoadResult:
    loaded: int = 0        # inserted or changed rows
    updated: int = 0       # of which replaced an existing row with different values
    duplicate: int = 0     # in-batch repeats + rows identical to what is stored

    def __iadd__(self, other: LoadResult) -> LoadResult:
        self.loaded += other.loaded
        self.updated += other.updated
        self.duplicate += other.duplicate
        return self


ROW_GROUP = 122_880     # DuckDB's row group size (rows)


def arrow(df: pl.DataFrame):
    """df as an Arrow table for DuckDB to scan (con.register): in slices of one DuckDB row group. DuckDB
    scans an Arrow table's chunks in parallel and writes each as whole row groups; a frame in one chunk is
    scanned and inserted by one thread, and slices that do not line up with row groups cost CPU in
    merging them (tests/test_speculative_load.py checks the slicing)."""
    import pyarrow as pa

    t = df.rechunk().to_arrow()
    if t.num_rows <= ROW_GROUP:
        return t
    return pa.Table.from_batches(t.to_batches(max_chunksize=ROW_GROUP), schema=t.schema)


def select_stored(df: pl.DataFrame, relation: str) -> str:
    """SELECT of df's columns from `relation` (df registered under that name) as a table stores them: text a frame
    holds dictionary-encoded (pl.Enum, pl.Categorical: built by index, no string per row) becomes VARCHAR."""
    cols = (f'"{c}"::VARCHAR AS "{c}"' if isinstance(t, pl.Enum | pl.Categorical) else f'"{c}"' for c, t in df.schema.items())
    return f"SELECT {', '.join(cols)} FROM {relation}"


def table_columns(con, table: str) -> list[str]:
    schema, name = table.split(".")
    # literals, not parameters: a process's first parameterised query makes DuckDB import pandas (~0.2 s)
    return [r[0] for r in con.execute(
        f"SELECT column_name FROM information_schema.columns WHERE table_schema={_quote(schema)} "
        f"AND table_name={_quote(name)} ORDER BY ordinal_position").fetchall()]


def upsert(con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame, *, deduplicated: bool = False) -> LoadResult:
    """Idempotent upsert on the table's grain. Call inside a transaction.

    In-batch repeats of a key keep the last row; rows identical to the stored ones are
    counted as duplicates and left alone; changed rows replace the stored row.
    deduplicated=True: the caller already kept one row per key (pipeline.load_table does), so the
    in-batch check is skipped.
    """
    from perpwatch.warehouse import lake

    key = KEYS[table]
    if df.height == 0:
        return LoadResult()
    if lake.is_lake(con):
        lake.claim(con, table)     # two writers of new keys would both INSERT: make them conflict instead
    cols = [c for c in table_columns(con, table) if c in df.columns]
    missing_key = [k for k in key if k not in cols]
    if missing_key:
        raise ValueError(f"{table}: batch lacks key columns {missing_key}")
    batch = df.select(cols).with_row_index("__i")
    con.register("__batch", arrow(batch))
    qk = ", ".join(f'"{k}"' for k in key)
    on = " AND ".join(f't."{k}" = b."{k}"' for k in key)
    content = [c for c in cols if c not in key and c not in PROVENANCE]
    same = " AND ".join(f't."{c}" IS NOT DISTINCT FROM b."{c}"' for c in content) or "TRUE"
    collist = ", ".join(f'"{c}"' for c in cols)
    src = "__batch"
    try:
        # One join classifies the batch against what is stored (matched rowids, identical or
        # not); deletes go by rowid and counts come back as numbers, not rows. The in-batch
        # dedup pass only runs when the batch has repeated keys.
        if not deduplicated and con.execute(
                f"SELECT EXISTS (SELECT 1 FROM __batch GROUP BY {qk} HAVING count(*) > 1)").fetchone()[0]:
            con.execute(f"CREATE OR REPLACE TEMP TABLE __b AS SELECT * FROM __batch "
                        f"QUALIFY row_number() OVER (PARTITION BY {qk} ORDER BY __i DESC) = 1")
            src = "__b"
        deduped = df.height if src == "__batch" else con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]
        in_batch_dup = df.height - deduped
        con.execute(f"CREATE OR REPLACE TEMP TABLE __m AS SELECT b.__i, t.rowid AS __r, ({same}) AS __s "
                    f"FROM {src} b JOIN {table} t ON {on}")
        identical = updated = 0
        if con.execute("SELECT count(*) FROM __m").fetchone()[0]:
            # a batch row is a duplicate when some stored row with its key is identical; else
            # every stored row with its key is replaced
            con.execute("CREATE OR REPLACE TEMP TABLE __same AS SELECT __i FROM __m GROUP BY __i HAVING bool_or(__s)")
            identical = con.execute("SELECT count(*) FROM __same").fetchone()[0]
            updated = con.execute(f"DELETE FROM {table} WHERE rowid IN "
                                  "(SELECT __r FROM __m ANTI JOIN __same USING (__i))").fetchone()[0]
            src = f"(SELECT * FROM {src} ANTI JOIN __same USING (__i))"
        inserted = con.execute(f"INSERT INTO {table} ({collist}) SELECT {collist} FROM {src}").fetchone()[0]
    finally:
        con.unregister("__batch")
        con.execute("DROP TABLE IF EXISTS __b; DROP TABLE IF EXISTS __m; DROP TABLE IF EXISTS __same")
    return LoadResult(loaded=inserted, updated=updated, duplicate=in_batch_dup + identical)


def get_watermark(con, source: str, dataset: str, instrument: str) -> datetime | None:
    row = con.execute("SELECT last_ts FROM meta.watermarks WHERE source=? AND dataset=? AND instrument=?",
                      [source, dataset, instrument]).fetchone()
    return row[0] if row else None


def watermarks(con, source: str) -> dict[tuple[str, str], datetime]:
    rows = con.execute("SELECT dataset, instrument, last_ts FROM meta.watermarks WHERE source=?",
                       [source]).fetchall()
    return {(d, i): ts for d, i, ts in rows}


def all_watermarks(con) -> dict[tuple[str, str, str], datetime]:
    """(source, dataset, instrument) -> last_ts for every stream, in one query."""
    return {(s, d, i): ts for s, d, i, ts in con.execute(
        "SELECT source, dataset, instrument, last_ts FROM meta.watermarks").fetchall()}


def advance_watermarks(con, source: str, marks: list[tuple[str, str, datetime]]) -> None:
    """advance_watermark for many (dataset, instrument, last_ts) of one source in two statements (one
    insert of the new streams, one update) instead of two per stream: each statement that reads a lake
    table costs tens of milliseconds on DuckLake. Call inside the load's transaction."""
    if not marks:
        return
    if len(marks) == 1:
        advance_watermark(con, source, *marks[0])
        return
    frame = pl.DataFrame({"dataset": [m[0] for m in marks], "instrument": [m[1] for m in marks],
                          "last_ts": [m[2] for m in marks]},
                         schema={"dataset": pl.Utf8, "instrument": pl.Utf8, "last_ts": pl.Datetime("us", "UTC")})
    frame = frame.group_by("dataset", "instrument", maintain_order=True).agg(pl.col("last_ts").max())
    con.register("__marks", frame.to_arrow())
    try:
        con.execute("""
            INSERT INTO meta.watermarks (source, dataset, instrument, last_ts, updated_at)
            SELECT ?, m.dataset, m.instrument, m.last_ts, now() FROM __marks m
            WHERE NOT EXISTS (SELECT 1 FROM meta.watermarks w
                              WHERE w.source = ? AND w.dataset = m.dataset AND w.instrument = m.instrument)""",
                    [source, source])
        con.execute("""UPDATE meta.watermarks w SET last_ts = greatest(w.last_ts, m.last_ts), updated_at = now()
                       FROM __marks m WHERE w.source = ? AND w.dataset = m.dataset AND w.instrument = m.instrument""",
                    [source])
    finally:
        con.unregister("__marks")


def advance_watermark(con, source: str, dataset: str, instrument: str, last_ts: datetime) -> None:
    """Move a watermark forward (never back). Call inside the load's transaction."""
    con.execute("""
        INSERT INTO meta.watermarks (source, dataset, instrument, last_ts, updated_at)
        SELECT ?, ?, ?, ?::TIMESTAMPTZ, now()
        WHERE NOT EXISTS (SELECT 1 FROM meta.watermarks WHERE source=? AND dataset=? AND instrument=?)""",
                [source, dataset, instrument, last_ts, source, dataset, instrument])
    con.execute("""UPDATE meta.watermarks SET last_ts = greatest(last_ts, ?::TIMESTAMPTZ), updated_at = now()
                   WHERE source=? AND dataset=? AND instrument=?""", [last_ts, source, dataset, instrument])


class Discarded(Exception):
    """A gated write whose gate said no: its transaction was rolled back, nothing was written."""


# re-entrant: a write may run another write of the same table on the same thread (tests/test_lake.py does,
# to stand in for a second writer); the turns are between threads
_TABLE_LOCKS: dict[str, threading.RLock] = {}
_TABLE_LOCKS_GUARD = threading.Lock()


def _table_lock(table: str) -> threading.RLock:
    with _TABLE_LOCKS_GUARD:
        return _TABLE_LOCKS.setdefault(table, threading.RLock())


def write(con, fn, *, table: str, batch: str = "", attempts: int | None = None, gate=None):
    """Run fn() in one transaction and commit; on a DuckLake commit conflict roll back, wait (full
    jitter) and run it again, up to PERPWATCH_LAKE_RETRIES times, then raise WriteConflict naming the
    table and batch. fn must only write through `con` (it is re-run from scratch on retry).
    gate: called after fn() and before COMMIT (it may block); when it returns False the transaction
    is rolled back and Discarded raised.

    Writes of one table in this process take turns, from BEGIN to COMMIT: an upsert reads which keys
    exist in its transaction's snapshot, and DuckDB lets two transactions that insert the same new key
    into a table without a primary key both commit. Concurrent runs in one process (the demo's
    backfills and collect run) refreshing the same instruments stored okx's six instruments twice."""
    from perpwatch.warehouse import lake

    n = attempts or lake.max_attempts()
    for attempt in range(n):
        with _table_lock(table):
            con.execute("BEGIN TRANSACTION")
            try:
                out = fn()
                if gate is not None and not gate():
                    raise Discarded(f"{table}: batch {batch or '?'} not committed")
                con.execute("COMMIT")
                return out
            except BaseException as exc:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass                      # a failed COMMIT has already ended the transaction
                if not isinstance(exc, duckdb.Error) or not lake.is_conflict(exc):
                    raise
                if attempt == n - 1:
                    raise lake.WriteConflict(f"{table}: batch {batch or '?'} still conflicted with concurrent "
                                             f"writers after {n} attempts: {exc}") from exc
        time.sleep(lake.backoff(attempt))


def retry(fn, *, what: str, attempts: int | None = None):
    """Re-run fn (which runs and commits its own transaction) on a DuckLake commit conflict."""
    from perpwatch.warehouse import lake

    n = attempts or lake.max_attempts()
    for attempt in range(n):
        try:
            return fn()
        except duckdb.Error as exc:
            if not lake.is_conflict(exc):
                raise
            if attempt == n - 1:
                raise lake.WriteConflict(f"{what}: still conflicted after {n} attempts: {exc}") from exc
            time.sleep(lake.backoff(attempt))


def note_loaded(con, run_id: str | None, loaded: int) -> None:
    """Count loaded rows on the run's record inside the load's transaction (same snapshot as the rows)."""
    if run_id:
        con.execute("UPDATE meta.runs SET rows_loaded = coalesce(rows_loaded, 0) + ? WHERE run_id = ?",
                    [loaded, run_id])


@contextmanager
def transaction(con):
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def quarantine(con, *, batch_id: str, run_id: str, source: str, dataset: str, endpoint: str | None,
               instrument: str | None, raw_ids: list[int], failed: list[dict], rows: int,
               sample: list[dict] | None, message: str, row_refs: list[dict] | None = None) -> None:
    """Record a quarantined unit. `row_refs` [{"raw_id", "rows": [row numbers]}] when only those rows of
    the payloads failed; None when the payloads (raw_ids) were quarantined whole."""
    con.execute("""INSERT INTO quarantine.batches (batch_id, run_id, source, dataset, endpoint, instrument,
                   raw_id, raw_ids, failed_expectations, rows, sample, message, received_at, row_refs, status)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now(), ?, 'open')""",
                [batch_id, run_id, source, dataset, endpoint, instrument, raw_ids[0] if raw_ids else None,
                 json.dumps(raw_ids), json.dumps(failed, default=str), rows,
                 json.dumps(sample or [], default=str), message,
                 None if row_refs is None else json.dumps(row_refs)])


def start_run(con, run_id: str, kind: str) -> None:
    con.execute("INSERT INTO meta.runs (run_id, kind, started_at, status, rows_fetched, rows_loaded, "
                "rows_quarantined, rows_duplicate) VALUES (?, ?, now(), 'running', 0, 0, 0, 0)", [run_id, kind])


def finish_run(con, run_id: str, status: str, fetched: int, loaded: int, quarantined: int,
               duplicate: int, message: str, payloads_quarantined: int = 0, gaps_open: int = 0,
               datasets: list[tuple] = ()) -> None:
    """Close the run's record; `datasets` (rows of meta.run_datasets without the run_id) are written in
    the same transaction, so a run's record is one commit (one DuckLake snapshot), retried on conflict."""
    def close() -> None:
        for d in datasets:
            record_dataset(con, run_id, *d)
        con.execute("""UPDATE meta.runs SET finished_at = now(), status = ?, rows_fetched = ?, rows_loaded = ?,
                       rows_quarantined = ?, rows_duplicate = ?, message = ?, payloads_quarantined = ?,
                       gaps_open = ? WHERE run_id = ?""",
                    [status, fetched, loaded, quarantined, duplicate, message, payloads_quarantined, gaps_open,
                     run_id])
    write(con, close, table="meta.runs", batch=run_id)


def record_dataset(con, run_id: str, source: str, dataset: str, fetched: int, loaded: int,
                   quarantined: int, duplicate: int, payloads: int, validation: str, message: str) -> None:
    con.execute("INSERT INTO meta.run_datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, source, dataset, fetched, loaded, quarantined, duplicate, payloads, validation, message])


# --------------------------------------------------------------------------- publishing

from perpwatch.warehouse.publishing import PUBLISHED_SCHEMAS  # noqa: E402,F401  (re-exported)


def publish(db=None, serving=None, exports=None, con=None) -> dict[str, str]:
    """Publish a consistent read-only snapshot for BI tools and Parquet exports of every mart, rewriting
    only what the builds and loads since the last publish changed (warehouse/publishing.py).

    The snapshot is a symlink swapped with os.replace to a file brought up to date while no reader used
    it; the exports are replaced file by file. A reader sees the old snapshot or the new one, never a
    half-built table. Returns {"serving": path, "serving_mode": ..., "marts.x": export dir, ...}.
    """
    from perpwatch.warehouse import lake, publishing

    serving = Path(serving or settings.serving_db_path())
    exports = Path(exports or settings.exports_dir())
    own = con is None
    con = con or connect(db)
    try:
        if lake.is_lake(con):
            # Readers attach the lake at its latest snapshot (read-only) while writers commit: no
            # serving copy to rebuild; the Parquet exports of the marts stay available.
            return export_marts(con, exports)
        got = publishing.publish_serving(con, serving)
        changed = "; ".join(f"{t}: {how}" for t, how in sorted(got["changed"].items()))
        return {"serving": got["serving"], "serving_mode": got["mode"], "serving_changed": changed,
                **export_marts(con, exports)}
    finally:
        if own:
            con.close()


def record_change(con, table: str, changed_from=None, seq: int | None = None) -> None:
    """A build rewrote `table` from `changed_from` (a date; None = whole): what the next publish copies."""
    from perpwatch.warehouse import publishing

    publishing.record_change(con, table, changed_from, seq)


def export_marts(con, exports: Path) -> dict[str, str]:
    """Parquet exports of the marts: <exports>/<mart>/year=YYYY/month=MM/data.parquet, only what changed rewritten."""
    from perpwatch.warehouse import publishing

    return publishing.export_changed(con, Path(exports))


# --------------------------------------------------------------------------- venue bans (issue 14)

def record_ban(con, source: str, until: datetime, reason: str, run_id: str | None, at: datetime) -> None:
    """Store (or extend) a source's ban: meta.venue_bans keeps one row per source, the latest end wins."""
    with transaction(con):
        row = con.execute("SELECT banned_until FROM meta.venue_bans WHERE source = ?", [source]).fetchone()
        if row is not None and row[0] is not None and row[0] >= until:
            return
        con.execute("DELETE FROM meta.venue_bans WHERE source = ?", [source])
        con.execute("INSERT INTO meta.venue_bans VALUES (?, ?, ?, ?, ?)", [source, until, reason[:1000], at, run_id])


def active_bans(con, now: datetime) -> dict[str, tuple[datetime, str]]:
    """source -> (banned_until, reason) for the bans still running at `now`."""
    return {s: (u, r) for s, u, r in con.execute(
        "SELECT source, banned_until, reason FROM meta.venue_bans WHERE banned_until > ?", [now]).fetchall()}
