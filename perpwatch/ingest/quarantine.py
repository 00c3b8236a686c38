"""`perpwatch quarantine list | release ID | drop ID`: the quarantined units (quarantine.batches) and
what an operator does with them.

A batch is the smallest unit that failed (perpwatch/ingest/pipeline.load_table): rows (`row_refs`:
raw_id and row numbers inside that payload's parsed rows) or whole payloads (`raw_ids`, row_refs NULL).
- release: parse the batch's raw payloads again (raw.payloads is the source of truth), keep the
  quarantined rows (or every row of whole payloads), validate them with today's suite (e.g. after
  expectations/<table>.json was fixed) and load what passes, as a run of kind "release" in meta.runs.
  Rows that still fail are quarantined again in a new batch of that run; the released batch is closed
  (status 'released', resolved_at) either way, so nothing is counted twice.
- drop: close the batch without loading (status 'dropped', resolved_at); its raw payloads stay landed.
Watermarks do not move on a release: the rows are history the streams have already passed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
import polars as pl

from perpwatch import warehouse
from perpwatch.ingest import pipeline
from perpwatch.sources.http import Fetched

COLUMNS = ["batch_id", "run_id", "received_at", "source", "dataset", "instrument", "rows", "raw_ids", "row_refs",
           "status", "resolved_at", "message"]


def list_batches(con, include_closed: bool = False) -> list[dict]:
    """Quarantined batches, newest first: open ones (or every one with include_closed)."""
    where = "" if include_closed else "WHERE resolved_at IS NULL"
    rows = con.execute(f"""SELECT batch_id, run_id, received_at, source, dataset, instrument, rows, raw_ids, row_refs,
                                  coalesce(status, CASE WHEN resolved_at IS NULL THEN 'open' ELSE 'resolved' END),
                                  resolved_at, message
                           FROM quarantine.batches {where} ORDER BY received_at DESC, batch_id""").fetchall()
    out = []
    for r in rows:
        d = dict(zip(COLUMNS, r, strict=True))
        d["raw_ids"] = json.loads(d["raw_ids"]) if d["raw_ids"] else []
        d["row_refs"] = json.loads(d["row_refs"]) if d["row_refs"] else None
        out.append(d)
    return out


def _open_batch(con, batch_id: str) -> dict:
    found = [b for b in list_batches(con, include_closed=True) if b["batch_id"] == batch_id]
    if not found:
        raise KeyError(f"no quarantined batch {batch_id!r} (perpwatch quarantine list)")
    b = found[0]
    if b["resolved_at"] is not None:
        raise ValueError(f"batch {batch_id} is already {b['status']} ({b['resolved_at']:%Y-%m-%d %H:%M} UTC)")
    return b


def drop(db, batch_id: str) -> dict:
    """Close a batch without loading it."""
    with warehouse.session(db) as con:
        b = _open_batch(con, batch_id)
        con.execute("UPDATE quarantine.batches SET status = 'dropped', resolved_at = now() WHERE batch_id = ?",
                    [batch_id])
    return {"batch_id": batch_id, "status": "dropped", "rows": b["rows"], "raw_ids": b["raw_ids"]}


@dataclass
class Released:
    batch_id: str
    run_id: str
    status: str
    rows: int = 0                     # rows taken from the raw payloads for this batch
    loaded: int = 0
    duplicate: int = 0
    quarantined: int = 0              # rows that failed again (a new batch of the release run)
    payloads_quarantined: int = 0
    messages: list[str] = field(default_factory=list)


def release(db, batch_id: str) -> Released:
    """Re-parse, re-validate and load a quarantined batch (after a fix); close it."""
    report = pipeline.RunReport(run_id=f"release-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
                                kind="release")
    con = warehouse.connect(db)
    try:
        b = _open_batch(con, batch_id)
        warehouse.start_run(con, report.run_id, "release")
        try:
            payloads = _payloads(con, report, b["raw_ids"])
            parsed = pipeline.parse_all(con, report, payloads, pipeline.instrument_context(con))
            frames = parsed.frames.get(b["dataset"], [])
            frames = [f.with_columns(pl.int_range(pl.len()).alias("_row")) for f in frames]
            if b["row_refs"] is not None:
                wanted = pl.DataFrame([{"raw_id": int(r["raw_id"]), "_row": int(n)}
                                       for r in b["row_refs"] for n in r["rows"]],
                                      schema={"raw_id": pl.Int64, "_row": pl.Int64})
                frames = [f.with_columns(pl.col("_row").cast(pl.Int64)).join(wanted, on=["raw_id", "_row"], how="semi")
                          for f in frames]
            frames = [f for f in frames if f.height]
            rows = sum(f.height for f in frames)
            pipeline.load_table(con, report, b["dataset"], frames, move_watermarks=False)
        except Exception as exc:
            report.errors.append(f"release of {batch_id} failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            pipeline.record(con, report)
        t = report.totals()
        note = (f"released by {report.run_id}: {rows} row(s) re-read, loaded {t['loaded']}, "
                f"duplicate {t['duplicate']}, quarantined again {t['quarantined']}")
        con.execute("UPDATE quarantine.batches SET status = 'released', resolved_at = now(), "
                    "message = message || ' | ' || ? WHERE batch_id = ?", [note, batch_id])
    finally:
        con.close()
    return Released(batch_id, report.run_id, report.status, rows, t["loaded"], t["duplicate"], t["quarantined"],
                    t["payloads_quarantined"], report.errors + report.warnings)


def _payloads(con, report, raw_ids: list[int]) -> list[Fetched]:
    out = []
    for raw_id in raw_ids:
        row = con.execute("SELECT source, endpoint, params, fetched_at, http_status, body, encoding "
                          "FROM raw.payloads WHERE raw_id = ?", [raw_id]).fetchone()
        if row is None:
            report.errors.append(f"raw_id {raw_id}: not in raw.payloads")
            continue
        source, endpoint, params, fetched_at, status, body, enc = row
        try:
            decoded = warehouse.payload_body(body, enc, raw_id=raw_id)
        except warehouse.UndecodableBody as exc:
            pipeline.quarantine_payload(con, report, raw_id, source, endpoint, None, None, "unreadable payload",
                                        exc, body)
            continue
        out.append(Fetched(raw_id, source, endpoint, orjson.loads(params) if params else {}, status, decoded,
                           None, None, fetched_at))
    return out
