"""DuckLake backend: the warehouse as a DuckLake catalog in PostgreSQL with Parquet data files.

`PERPWATCH_CATALOG=postgresql://user@host:port/db` switches warehouse.connect() here; unset keeps
the embedded DuckDB file. `PERPWATCH_DATA_PATH` is where the Parquet files go (a local or shared
directory, or s3://bucket/prefix with credentials from a DuckDB secret, see docs/scale-out.md).

What differs from the DuckDB file, and how it is absorbed so callers see the same warehouse:
- The lake is attached as `lake` and made the default database (`USE lake`): `staging.prices`,
  `marts.daily_signals`, ... resolve exactly as in the file.
- DuckLake has no sequences: `raw.payloads.raw_id` comes from a PostgreSQL sequence in the
  catalog database (`perpwatch_raw_id`), read through the postgres extension.
- DuckLake commits are optimistic: two transactions that delete/update the same table conflict at
  COMMIT, but two plain INSERTs never do. Upserts on a grain therefore also bump their table's row
  in `meta.write_tokens`, which turns "two writers inserted the same new key" into a commit conflict
  that the loser retries (warehouse.write) after re-reading what the winner stored.
- Extensions come from the registry packages duckdb-extension-ducklake / -postgres (installed from
  the package's file, never from the network).
"""

from __future__ import annotations

import random
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb

from perpwatch.core import settings

ALIAS = "lake"
PG_ALIAS = "__pwcat"
RAW_ID_SEQUENCE = "perpwatch_raw_id"
# Buffered raw landing (warehouse.Lander(buffered=True), the pipeline's extract step): one DuckLake commit
# per this many pages / compressed bytes / seconds since the oldest pending page, and at the end of every
# extraction unit. Measured on this machine (2 cores, loaded): a single-payload commit 27-51 ms, 32
# payloads in one INSERT 55-86 ms in all (bench/lake.py, docs/scale-out.md "Commit costs").
LAND_BATCH_PAGES = 64
LAND_BATCH_BYTES = 8 << 20
LAND_BATCH_SECONDS = 2.0
_loaded = threading.Lock()
_initialised: set[str] = set()


class WriteConflict(RuntimeError):
    """A write kept conflicting with concurrent writers after every retry."""


def catalog_url() -> str | None:
    url = (settings.get().catalog or "").strip()
    return url or None


def is_url(target) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def data_path(url: str | None = None) -> str:
    path = settings.get().data_path
    if "://" in path:
        return path.rstrip("/") + "/"
    return str(Path(path).resolve()) + "/"


def libpq(url: str) -> str:
    """postgresql://user:pw@host:port/db -> 'dbname=db host=host port=port user=user password=pw'."""
    u = urlparse(url)
    if u.scheme not in ("postgresql", "postgres") or not u.path.strip("/"):
        raise ValueError(f"PERPWATCH_CATALOG must look like postgresql://user@host:port/dbname, got {url!r}")
    parts = {"dbname": unquote(u.path.strip("/")), "host": u.hostname or "127.0.0.1",
             "port": str(u.port or 5432), "user": unquote(u.username or "postgres")}
    if u.password:
        parts["password"] = unquote(u.password)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def redact(url: str) -> str:
    u = urlparse(url)
    return url.replace(f":{u.password}@", ":***@") if u.password else url


def load_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """Install ducklake + postgres_scanner from the registry packages' files (offline), then LOAD."""
    try:
        con.execute("LOAD ducklake; LOAD postgres_scanner")
        return
    except duckdb.Error:
        pass
    import duckdb_extensions  # registry package duckdb-extensions (+ -ducklake, -postgres), duckdb 1.5.5

    with _loaded:
        for pkg in ("ducklake", "postgres"):
            duckdb_extensions.import_extension(pkg, con=con)
    con.execute("LOAD ducklake; LOAD postgres_scanner")


def _attach_sql(url: str, read_only: bool, as_of=None) -> str:
    opts = [f"DATA_PATH '{data_path(url)}'"]
    if read_only:
        opts.append("READ_ONLY")
    if as_of is not None:
        if isinstance(as_of, int) or (isinstance(as_of, str) and as_of.isdigit()):
            opts.append(f"SNAPSHOT_VERSION {int(as_of)}")
        else:
            ts = as_of if isinstance(as_of, datetime) else datetime.fromisoformat(str(as_of))
            opts.append(f"SNAPSHOT_TIME '{ts.isoformat()}'")
    return f"ATTACH 'ducklake:postgres:{libpq(url)}' AS {ALIAS} ({', '.join(opts)})"


def connect(url: str, read_only: bool = False, as_of=None, init: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB session with the lake attached as the default database."""
    con = duckdb.connect()
    try:
        load_extensions(con)
        con.execute("SET TimeZone='UTC'")
        # Every commit (autocommit statements too) first claims the next snapshot id; a writer that loses
        # that race is retried inside COMMIT by DuckLake itself. Its default (10 tries from 100 ms, x1.5)
        # ran out with three workers and a reader on 2 cores; 50 tries from 20 ms x1.1 (~23 s in all,
        # last wait ~2 s) absorbed it. Logical conflicts still reach warehouse.write / retry.
        con.execute("SET ducklake_max_retry_count = 50; SET ducklake_retry_wait_ms = 20; "
                    "SET ducklake_retry_backoff = 1.1")
        if not read_only and init and url not in _initialised:
            initialise(url, con)
        _retry_transient(lambda: con.execute(_attach_sql(url, read_only or as_of is not None, as_of)))
        con.execute(f"USE {ALIAS}")
        if not read_only and as_of is None:
            con.execute(f"ATTACH '{libpq(url)}' AS {PG_ALIAS} (TYPE postgres)")
    except BaseException:
        con.close()
        raise
    return con


def _retry_transient(fn, attempts: int = 20):
    for i in range(attempts):
        try:
            return fn()
        except duckdb.Error as exc:
            if i == attempts - 1 or not is_conflict(exc) and "already exists" not in str(exc):
                raise
            time.sleep(0.05 + random.random() * 0.2 * (i + 1))


def initialise(url: str, con: duckdb.DuckDBPyConnection | None = None) -> None:
    """Create the catalog (once), the raw_id sequence and every schema/table/comment; idempotent.

    Creating a new DuckLake catalog from several processes at once races ("relation ... already
    exists"); each step here is retried on that error and on commit conflicts, so the loser of the
    race simply attaches the catalog the winner created.
    """
    own = con is None
    con = con or duckdb.connect()
    try:
        load_extensions(con)
        con.execute(f"ATTACH '{libpq(url)}' AS __pwinit (TYPE postgres)")
        _retry_transient(lambda: con.execute(
            f"CALL postgres_execute('__pwinit', 'CREATE SEQUENCE IF NOT EXISTS {RAW_ID_SEQUENCE}')"))
        _retry_transient(lambda: con.execute(_attach_sql(url, False).replace(f" AS {ALIAS} ", " AS __pwlake ")))
        con.execute("USE __pwlake")
        from perpwatch.warehouse import ensure_schema_lake

        _retry_transient(lambda: ensure_schema_lake(con))
        con.execute("USE memory")
        con.execute("DETACH __pwlake")
        con.execute("DETACH __pwinit")
        _initialised.add(url)
    finally:
        if own:
            con.close()


def is_lake(con) -> bool:
    row = con.execute("SELECT type FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    return bool(row) and row[0] == "ducklake"


def next_raw_id(con) -> int:
    return con.execute(f"SELECT * FROM postgres_query('{PG_ALIAS}', "
                       f"'SELECT nextval(''{RAW_ID_SEQUENCE}'')')").fetchone()[0]


def land_rows(con, rows: list[tuple]) -> None:
    """Commit landed payloads in one transaction: rows of (raw_id, source, endpoint, params, fetched_at,
    http_status, body, sha256, run_id), in landing order. One INSERT from an Arrow table, so a batch is
    one Parquet file (or inlined in the catalog when it has at most DATA_INLINING_ROW_LIMIT rows),
    not one file per row as an executemany would write."""
    import pyarrow as pa

    cols = list(zip(*rows, strict=True))
    batch = pa.table({
        "raw_id": pa.array(cols[0], pa.int64()), "source": pa.array(cols[1], pa.string()),
        "endpoint": pa.array(cols[2], pa.string()), "params": pa.array(cols[3], pa.string()),
        "fetched_at": pa.array(cols[4], pa.timestamp("us", tz="UTC")), "http_status": pa.array(cols[5], pa.int32()),
        "body": pa.array(cols[6], pa.binary()), "sha256": pa.array(cols[7], pa.string()),
        "run_id": pa.array(cols[8], pa.string()), "__i": pa.array(range(len(rows)), pa.int64())})
    con.register("__landing", batch)
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            # encoding written explicitly: the column default is 'identity' (a hand-inserted body is read as stored)
            con.execute(f"INSERT INTO {ALIAS}.raw.payloads (raw_id, source, endpoint, params, fetched_at, http_status, "
                        "body, sha256, run_id, encoding) SELECT raw_id, source, endpoint, params, fetched_at, http_status, "
                        "body, sha256, run_id, 'zlib' FROM __landing ORDER BY __i")
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass                      # a failed COMMIT has already ended the transaction
            raise
    finally:
        con.unregister("__landing")


def is_conflict(exc: BaseException) -> bool:
    """A commit lost a race with another writer (retrying the whole transaction is the remedy).

    Besides DuckLake's own "conflict" errors this includes two writers that claimed the same next
    snapshot id: DuckLake retries that inside COMMIT (ducklake_max_retry_count, default 10) and, when
    those run out under load, surfaces PostgreSQL's unique violation on ducklake_snapshot (seen with
    three workers and a reader on 2 cores, tests/test_lake_e2e.py)."""
    text = str(exc).lower()
    return ("conflict" in text or "could not serialize" in text or "deadlock" in text
            or 'violates unique constraint "ducklake_snapshot' in text)


def claim(con, table: str) -> None:
    """Make this transaction conflict with any other that writes `table` (see module docstring)."""
    n = con.execute("UPDATE meta.write_tokens SET writes = writes + 1, updated_at = now() WHERE table_name = ?",
                    [table]).fetchone()[0]
    if not n:
        con.execute("INSERT INTO meta.write_tokens VALUES (?, 1, now())", [table])


def backoff(attempt: int, base: float = 0.05, cap: float = 2.0) -> float:
    """Full jitter exponential backoff (AWS architecture blog, "Exponential Backoff And Jitter")."""
    return random.uniform(0, min(cap, base * 2 ** attempt))


def max_attempts() -> int:
    return settings.get().lake_retries


def drop_database(url: str) -> None:   # tests and `migrate --fresh` helpers
    admin = url.rsplit("/", 1)[0] + "/postgres"
    name = urlparse(url).path.strip("/")
    con = duckdb.connect()
    try:
        load_extensions(con)
        con.execute(f"ATTACH '{libpq(admin)}' AS __pwadmin (TYPE postgres)")
        con.execute(f"CALL postgres_execute('__pwadmin', 'DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)', use_transaction => false)")
    finally:
        con.close()


def create_database(url: str) -> None:
    admin = url.rsplit("/", 1)[0] + "/postgres"
    name = urlparse(url).path.strip("/")
    con = duckdb.connect()
    try:
        load_extensions(con)
        con.execute(f"ATTACH '{libpq(admin)}' AS __pwadmin (TYPE postgres)")
        exists = con.execute("SELECT * FROM postgres_query('__pwadmin', "
                             f"'SELECT count(*) FROM pg_database WHERE datname = ''{name}''')").fetchone()[0]
        if not exists:
            con.execute(f"CALL postgres_execute('__pwadmin', 'CREATE DATABASE \"{name}\"', use_transaction => false)")
    finally:
        con.close()
