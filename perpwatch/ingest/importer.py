"""`perpwatch import KIND FILE`: load a CSV / Parquet / JSON / vendor file through the same
land -> parse -> validate -> quarantine -> load path as fetched data.

1. Refuse what is not a regular file, or larger than the cap (512 MB; --max-size MB or
   $PERPWATCH_IMPORT_MAX_MB).
2. Land the bytes in raw.payloads (source "import", endpoint "file:<kind>", params {"path", "kind",
   and venue/asset/series/tz_offset when given}). The same bytes with the same params already landed
   are not landed twice: the earlier payload (and its fetched_at) is reused, so a re-import is a no-op.
3. Parse with sources/imports.py (the parser `perpwatch replay` uses for these payloads too).
4. Validate the parsed rows with the table's Great Expectations suite (validate.validate: GX's
   unexpected_index_list names the failing rows) and quarantine every bad row with its row number and
   reason (one quarantine.batches row per kind of problem: unparseable date, unparseable number,
   duplicate key within the file, each failed expectation); the good rows go through
   pipeline.load_table (GX again, then the idempotent upsert on the table's grain), each row its own
   validation group (`_instrument` "row N").
5. Record a meta.runs row (kind "import"), then rebuild the marts and publish unless --no-build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from perpwatch import warehouse
from perpwatch.core import settings
from perpwatch.ingest import pipeline
from perpwatch.ingest.validate import Failure, validate
from perpwatch.sources import imports
from perpwatch.sources.base import ParseContext
from perpwatch.warehouse.columns import staging_columns

DEFAULT_MAX_MB = settings.Settings.model_fields["import_max_mb"].default   # PERPWATCH_IMPORT_MAX_MB
LISTED = 20        # problems printed / named in a quarantine message


class ImportRefused(ValueError):
    """The path is not something we import (not a regular file, too large, unknown kind)."""


@dataclass
class ImportReport:
    run_id: str
    kind: str
    path: str
    table: str = ""
    fmt: str = ""
    raw_id: int | None = None
    reused_payload: bool = False
    status: str = "running"
    rows: int = 0
    loaded: int = 0
    updated: int = 0
    duplicate: int = 0
    quarantined: int = 0
    problems: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def max_bytes(max_mb: float | None = None) -> int:
    mb = max_mb if max_mb is not None else float(settings.get().import_max_mb)
    return int(mb * 1024 * 1024)


def read_checked(path: str | Path, cap: int) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most `cap` bytes."""
    p = Path(path)
    try:
        st = os.stat(p)          # follows a symlink: what matters is what it points to
    except FileNotFoundError as exc:
        raise ImportRefused(f"{path}: no such file") from exc
    except OSError as exc:
        raise ImportRefused(f"{path}: cannot stat: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (device, FIFO or socket)"
        raise ImportRefused(f"{path}: {what}; only regular files are imported")
    if st.st_size > cap:
        raise ImportRefused(f"{path}: {st.st_size:,} bytes is above the import cap of {cap:,} bytes "
                            f"(raise it with --max-size MB or PERPWATCH_IMPORT_MAX_MB)")
    with open(p, "rb") as f:
        body = f.read(cap + 1)
    if len(body) > cap:
        raise ImportRefused(f"{path}: grew above the import cap of {cap:,} bytes while reading")
    if not body.strip():
        raise ImportRefused(f"{path}: empty file")
    return body


def _existing_payload(con, endpoint: str, digest: str, params: dict) -> tuple[int, datetime] | None:
    rows = con.execute("SELECT raw_id, params, fetched_at FROM raw.payloads WHERE source = ? AND endpoint = ? "
                       "AND sha256 = ? AND http_status = 200 ORDER BY raw_id", [imports.SOURCE, endpoint, digest]).fetchall()
    for raw_id, p, fetched_at in rows:
        if (json.loads(p) if p else {}) == params:
            return raw_id, fetched_at
    return None


def _category(reason: str) -> str:
    return re.split(r"[:{]", reason, maxsplit=1)[0].strip()


def quarantine_problems(con, rep: ImportReport, run: pipeline.RunReport, bad: list[dict]) -> None:
    """One quarantine batch per kind of problem, naming every row (idempotent per payload)."""
    groups: dict[str, list[dict]] = {}
    for p in bad:
        groups.setdefault(p.get("category") or _category(p["reason"]), []).append(p)
    st = run.stat(imports.SOURCE, rep.table)
    for cat, probs in groups.items():
        rows = [p["row"] for p in probs]
        listed = "; ".join(f"row {p['row']}: {p['reason']}" for p in probs[:LISTED])
        more = f"; ... {len(probs) - LISTED} more" if len(probs) > LISTED else ""
        msg = f"import {rep.kind} {rep.path}: {len(probs)} row(s) quarantined ({cat}) — {listed}{more}"
        run.warnings.append(msg if len(msg) < 600 else msg[:600] + " ...")
        st.fetched += len(probs)
        st.quarantined += len(probs)
        st.quarantined_batches += 1
        st.messages.append(f"{len(probs)} row(s): {cat}")
        seen = con.execute("SELECT 1 FROM quarantine.batches WHERE raw_id = ? AND dataset = ? AND message = ? "
                           "AND resolved_at IS NULL", [rep.raw_id, rep.table, msg]).fetchone()
        if seen:
            continue
        warehouse.quarantine(con, batch_id=str(uuid.uuid4()), run_id=run.run_id, source=imports.SOURCE,
                             dataset=rep.table, endpoint=f"file:{rep.kind}", instrument=None,
                             raw_ids=[rep.raw_id], failed=[{"expectation": cat, "rows": rows[:10000]}],
                             rows=len(probs), sample=[{"row": p["row"], "reason": p["reason"]} for p in probs[:1000]],
                             message=msg)


# --------------------------------------------------------------------------- expectation suite, per row

def _fmt_bound(v) -> str:
    if isinstance(v, dict):          # {"$PARAMETER": "now"}
        return "now"
    return f"{v:g}" if isinstance(v, float) else str(v)


def expectation_phrase(f: Failure) -> str:
    """What a failed expectation says about a row, in words (the GX type follows in brackets)."""
    kw, col = f.kwargs, f.kwargs.get("column")
    if f.expectation == "expect_column_values_to_not_be_null":
        return f"missing {col}"
    if f.expectation == "expect_column_values_to_be_in_set":
        return f"{col} not in {{{', '.join(map(str, kw.get('value_set', [])))}}}"
    if f.expectation == "expect_column_pair_values_a_to_be_greater_than_b":
        return f"{kw['column_A']} below {kw['column_B']}"
    if f.expectation == "expect_column_values_to_match_regex":
        return f"{col} does not match {kw.get('regex')}"
    if f.expectation == "expect_compound_columns_to_be_unique":
        return f"repeated key ({', '.join(kw.get('column_list', []))})"
    if f.expectation == "expect_column_values_to_be_finite":
        return f"{f.column} not finite"
    if f.expectation == "expect_column_values_to_be_between":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        if isinstance(hi, dict) and lo is None:      # {"$PARAMETER": "now"}
            return f"{col} in the future"
        bounds = [f"{'>' if kw.get('strict_min') else '>='} {_fmt_bound(lo)}" if lo is not None else "",
                  f"{'<' if kw.get('strict_max') else '<='} {_fmt_bound(hi)}" if hi is not None else ""]
        return f"absurd {col} (expected {' and '.join(b for b in bounds if b)})"
    return f.expectation + (f" on {f.column}" if f.column else "")


def _row_values(f: Failure, frame: pl.DataFrame, pos: int) -> str:
    if f.expectation == "expect_column_values_to_not_be_null":
        return ""
    cols = [c for c in (f.kwargs.get("column"), f.kwargs.get("column_A"), f.kwargs.get("column_B"),
                        *(f.kwargs.get("column_list") or []), f.column) if c and c in frame.columns]
    cols = list(dict.fromkeys(cols))
    if len(cols) == 1:
        return repr(frame[cols[0]][pos])
    return ", ".join(f"{c}={frame[c][pos]!r}" for c in cols)


def suite_problems(table: str, frame: pl.DataFrame, now: datetime | None = None) -> list[dict]:
    """The rows of `frame` (staging columns + `_row`) that the table's expectation suite rejects,
    as Great Expectations itself reports them (unexpected_index_list), plus NaN/infinity
    (pipeline.check_finite): one "bad" problem per row naming every expectation it failed. A
    failure GX cannot trace to rows (a table-level expectation) rejects every row."""
    if frame.height == 0:
        return []
    data = frame.drop("_row")
    outcome = validate(table, data, now=now)
    pipeline.check_finite(data, outcome)
    why: dict[int, list[tuple[str, str]]] = {}
    for f in outcome.failures:
        positions = f.rows if (f.rows or not f.table_level) else range(frame.height)
        phrase = f"{expectation_phrase(f)} [{f.expectation}]"
        for pos in positions:
            value = "" if f.table_level else _row_values(f, frame, pos)
            why.setdefault(pos, []).append((phrase, f"{phrase}: {value}" if value else phrase))
    rows = frame["_row"]
    return [{"row": int(rows[pos]), "level": "bad", "reason": "; ".join(r for _, r in sorted(found)),
             "category": " + ".join(c for c, _ in sorted(found))}    # one quarantine batch per category
            for pos, found in sorted(why.items())]


def import_file(kind: str, path: str | Path, db=None, venue: str | None = None, asset: str | None = None,
                series: str | None = None, tz_offset: str | float | None = None,
                max_mb: float | None = None) -> ImportReport:
    """Land the file, parse, validate, load. Building marts afterwards is the caller's step (perpwatch.jobs)."""
    kind = imports.kind_of(kind)
    body = read_checked(path, max_bytes(max_mb))
    resolved = str(Path(path).resolve())
    params = {"path": resolved, "kind": kind}
    for k, v in (("venue", venue), ("asset", asset), ("series", series)):
        if v:
            params[k] = str(v)
    if tz_offset not in (None, "", "auto"):
        params["tz_offset"] = str(tz_offset)
    endpoint = f"file:{kind}"
    run = pipeline.RunReport(run_id=f"import-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", kind="import")
    rep = ImportReport(run.run_id, kind, resolved, table=imports.KINDS[kind])
    con = warehouse.connect(db)
    try:
        warehouse.start_run(con, run.run_id, "import")
        import hashlib
        found = _existing_payload(con, endpoint, hashlib.sha256(body).hexdigest(), params)
        if found:
            rep.raw_id, fetched_at = found
            rep.reused_payload = True
        else:
            fetched_at = datetime.now(UTC)
            rep.raw_id = warehouse.land(con, imports.SOURCE, endpoint, params, 200, body, fetched_at, run.run_id)
        ctx = ParseContext(fetched_at, pipeline.instrument_context(con), staging_columns())
        try:
            res = imports.parse_file(kind, body, params, ctx)
        except Exception as exc:   # the whole file is unreadable: quarantine the payload, report, fail
            msg = f"import {kind} {resolved}: unparseable file raw_id={rep.raw_id}: {exc}"
            run.errors.append(msg)
            rep.errors.append(str(exc))
            if not con.execute("SELECT 1 FROM quarantine.batches WHERE raw_id = ? AND message = ?",
                               [rep.raw_id, msg]).fetchone():
                warehouse.quarantine(con, batch_id=str(uuid.uuid4()), run_id=run.run_id, source=imports.SOURCE,
                                     dataset=rep.table, endpoint=endpoint, instrument=None, raw_ids=[rep.raw_id],
                                     failed=[{"expectation": "parse", "message": str(exc)}], rows=0,
                                     sample=[body[:300].decode("utf-8", "replace")], message=msg)
            pipeline.record(con, run)
            rep.status = run.status
            return rep
        frame = res.frame
        gx = suite_problems(rep.table, frame)
        if gx:
            frame = frame.filter(~pl.col("_row").is_in([p["row"] for p in gx]))
        rep.fmt, rep.notes = res.fmt, res.notes
        rep.problems = sorted(res.problems + gx, key=lambda p: (p["row"] is None, p["row"] or 0))
        bad = [p for p in rep.problems if p["level"] == "bad"]
        if bad:
            quarantine_problems(con, rep, run, bad)
        st = run.stat(imports.SOURCE, rep.table)
        identical = [p for p in res.problems if p["level"] == "skip" and p["reason"].startswith("identical duplicate")]
        st.fetched += len(identical)
        st.duplicate += len(identical)
        if frame.height:
            frame = frame.with_columns(
                pl.lit(rep.raw_id, pl.Int64).alias("raw_id"), pl.lit(imports.SOURCE).alias("_source"),
                pl.lit("").alias("_stream"), pl.format("row {}", pl.col("_row")).alias("_instrument"),
                pl.lit(endpoint).alias("_endpoint")).drop("_row")
            pipeline.load_table(con, run, rep.table, [frame], move_watermarks=False)
            if rep.table in ("prices", "open_interest"):
                pipeline.enrich_open_interest_usd(con)
        pipeline.record(con, run)
        st = run.stat(imports.SOURCE, rep.table)
        rep.rows, rep.loaded, rep.updated = st.fetched, st.loaded, st.updated
        rep.duplicate, rep.quarantined = st.duplicate, st.quarantined
        rep.status = run.status
        rep.errors = list(run.errors)
    finally:
        con.close()
    return rep


def print_report(rep: ImportReport, out=None) -> None:
    out = out or sys.stdout
    print(f"import {rep.kind} {rep.path}", file=out)
    if rep.fmt:
        print(f"  read as: {rep.fmt} -> staging.{rep.table}", file=out)
    print(f"  raw payload {rep.raw_id}" + (" (same bytes already landed: reused)" if rep.reused_payload else ""),
          file=out)
    for n in rep.notes:
        print(f"  note: {n}", file=out)
    skipped = [p for p in rep.problems if p["level"] == "skip"]
    for p in skipped[:LISTED]:
        print(f"  skipped{'' if p['row'] is None else ' row ' + str(p['row'])}: {p['reason']}", file=out)
    if len(skipped) > LISTED:
        print(f"  ... {len(skipped) - LISTED} more skipped", file=out)
    bad = [p for p in rep.problems if p["level"] == "bad"]
    for p in bad[:LISTED]:
        print(f"  QUARANTINED row {p['row']}: {p['reason']}", file=out)
    if len(bad) > LISTED:
        print(f"  ... {len(bad) - LISTED} more quarantined rows (quarantine.batches)", file=out)
    for e in rep.errors:
        print(f"  ERROR {e}", file=out)
    print(f"  rows {rep.rows}: loaded {rep.loaded} (of which updated {rep.updated}), duplicate {rep.duplicate}, "
          f"quarantined {rep.quarantined} — run {rep.run_id}: {rep.status}", file=out)


def main(args) -> int:
    """Entry point for `perpwatch import` (args: kind, file, db, venue, asset, series, no_build and,
    when the CLI offers them, tz_offset and max_size)."""
    try:
        rep = import_file(args.kind, args.file, db=getattr(args, "db", None), venue=getattr(args, "venue", None),
                          asset=getattr(args, "asset", None), series=getattr(args, "series", None),
                          tz_offset=getattr(args, "tz_offset", None), max_mb=getattr(args, "max_size", None))
    except ImportRefused as exc:
        print(f"import refused: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"import failed: {exc}", file=sys.stderr)
        return 2
    print_report(rep)
    from perpwatch.core import outcome
    return outcome.exit_code(rep.status, getattr(args, "ok_warnings", False))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m perpwatch.ingest.importer", description=__doc__.split("\n")[0])
    ap.add_argument("kind", help=", ".join(imports.KINDS))
    ap.add_argument("file")
    ap.add_argument("--db")
    ap.add_argument("--venue", help="venue for rows that lack one (prices default: import)")
    ap.add_argument("--asset", help="asset for rows that lack one")
    ap.add_argument("--series", help="series code for single-series macro files (SPX, NDX, GOLD, DXY, ...)")
    ap.add_argument("--tz-offset", help="hours naive timestamps run ahead of UTC (default auto: funding "
                                        "files are shifted when every settlement sits off the UTC grid)")
    ap.add_argument("--max-size", type=float, help=f"size cap in MB (default {DEFAULT_MAX_MB})")
    ap.add_argument("--no-build", action="store_true")
    return ap


if __name__ == "__main__":  # pragma: no cover
    from perpwatch.core import quiet
    quiet.configure()
    sys.exit(main(build_parser().parse_args()))
