"""Leases in the DuckLake catalog: work that must not overlap on a shared lake (a full mart rebuild).

On the DuckDB file one writer process holds the file lock, so two builds cannot overlap there. On
the lake every worker writes concurrently, and two builds replacing the same mart tables would
conflict at COMMIT and one would fail half-way through its marts. `hold(db, "build")` serialises
them through a row in `meta.leases`:

- take: in one lake transaction read the row; if it is free, expired or already ours, UPDATE it to
  (holder = us, expires_at = now + ttl) and COMMIT. Two takers that both saw it free both UPDATE the
  same table, so DuckLake's optimistic commit makes one of them conflict; it rolls back, re-reads and
  finds the lease held (lake.py: updates of one table conflict, plain inserts do not, which is why
  the row exists before anyone takes it: `warehouse.ensure_schema_lake` seeds it).
- hold: a heartbeat thread with its own connection renews expires_at every ttl/4, so a long build
  keeps the lease and a SIGKILLed holder's lease lapses after at most `ttl` seconds.
- release: holder = NULL (only if it is still ours).

A taker waits (polling) up to `wait_s` and then raises LeaseBusy naming the current holder.
On the DuckDB-file backend `hold` does nothing: the file lock already serialises writers.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import duckdb

from perpwatch.warehouse import lake

NAMES = ("build",)          # the leases the schema seeds (meta.leases rows)
TTL_S = 60.0                # a dead holder blocks others at most this long
POLL_S = 0.5


class LeaseBusy(RuntimeError):
    """The lease stayed held by another process for longer than we were willing to wait."""


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _try_take(con, name: str, me: str, ttl: float) -> tuple[bool, str | None]:
    """One attempt. (True, None) when we hold it now; (False, holder) when another live holder has it."""
    con.execute("BEGIN TRANSACTION")
    try:
        row = con.execute("SELECT holder, expires_at FROM meta.leases WHERE name = ? ORDER BY expires_at DESC NULLS LAST "
                          "LIMIT 1", [name]).fetchone()
        if row is None:
            raise RuntimeError(f"meta.leases has no row {name!r}: the lake schema predates leases; "
                               "any write connection (warehouse.connect) adds it")
        holder, expires = row
        now = datetime.now(UTC)
        if holder is not None and holder != me and expires is not None and expires > now:
            con.execute("ROLLBACK")
            return False, f"{holder} (until {expires:%H:%M:%S} UTC)"
        con.execute("UPDATE meta.leases SET holder = ?, acquired_at = now(), expires_at = ? WHERE name = ?",
                    [me, now + timedelta(seconds=ttl), name])
        con.execute("COMMIT")
        return True, None
    except duckdb.Error as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass                          # a failed COMMIT has already ended the transaction
        if lake.is_conflict(exc):
            return False, "a concurrent taker (commit conflict)"
        raise


def take(con, name: str, me: str, ttl: float = TTL_S, wait_s: float = 7200.0) -> None:
    deadline = time.monotonic() + wait_s
    attempt = 0
    while True:
        ok, other = _try_take(con, name, me, ttl)
        if ok:
            return
        if time.monotonic() >= deadline:
            raise LeaseBusy(f"lease {name!r} still held by {other} after waiting {wait_s:.0f}s "
                            f"(a full mart rebuild must not overlap another on the lake)")
        attempt += 1
        time.sleep(POLL_S if "conflict" not in (other or "") else lake.backoff(min(attempt, 5)))


def release(con, name: str, me: str) -> None:
    def go():
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("UPDATE meta.leases SET holder = NULL, expires_at = now() WHERE name = ? AND holder = ?",
                        [name, me])
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            raise
    from perpwatch import warehouse

    warehouse.retry(go, what=f"release lease {name}")


def _renew(con, name: str, me: str, ttl: float) -> bool:
    """Push our expiry out; False when the lease is no longer ours (it lapsed and someone took it)."""
    con.execute("BEGIN TRANSACTION")
    try:
        n = con.execute("UPDATE meta.leases SET expires_at = ? WHERE name = ? AND holder = ?",
                        [datetime.now(UTC) + timedelta(seconds=ttl), name, me]).fetchone()[0]
        con.execute("COMMIT")
        return bool(n)
    except duckdb.Error as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        if lake.is_conflict(exc):
            return True               # a taker's attempt collided with ours; try again next beat
        raise


@contextmanager
def hold(db, name: str = "build", ttl: float = TTL_S, wait_s: float = 7200.0) -> Iterator[str | None]:
    """Hold lease `name` on the lake for the body (yields the holder id); a no-op on the DuckDB file."""
    from perpwatch import warehouse

    if not warehouse.is_lake_target(db):
        yield None
        return
    con = warehouse.connect(db)
    me = holder_id()
    stop = threading.Event()
    lost: list[str] = []

    def beat():
        while not stop.wait(ttl / 4):
            try:
                if not _renew(con, name, me, ttl):
                    lost.append("lease lapsed and was taken by another holder")
                    return
            except duckdb.Error as exc:   # keep beating: a transient catalog error must not end the lease early
                lost.append(str(exc))
    try:
        take(con, name, me, ttl, wait_s)
        t = threading.Thread(target=beat, name=f"lease-{name}", daemon=True)
        t.start()
        try:
            yield me
        finally:
            stop.set()
            t.join()
            release(con, name, me)
    finally:
        con.close()
