"""The pipeline as plain functions: extract -> land raw -> parse -> validate -> load -> build.

Flows (flows/) wire these as Prefect tasks; the CLI and tests call them directly too.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
import polars as pl

from perpwatch import sources, warehouse
from perpwatch.core import phases, settings, tables
from perpwatch.core.assets import validate_asset, validate_instrument
from perpwatch.ingest import gaps
from perpwatch.ingest.validate import Failure, validate
from perpwatch.sources.base import ParseContext, Stream
from perpwatch.sources.batch import PAGE, Page, isolate
from perpwatch.sources.http import BadPayload, Banned, Fetched, SourceError
from perpwatch.warehouse.columns import staging_columns

log = logging.getLogger("perpwatch")

INTERNAL = ["_source", "_stream", "_instrument", "_endpoint"]
DEFAULT_LOOKBACK = timedelta(days=30)


@dataclass
class DatasetStats:
    source: str
    dataset: str
    payloads: int = 0
    fetched: int = 0
    loaded: int = 0
    duplicate: int = 0
    updated: int = 0
    quarantined: int = 0
    quarantined_batches: int = 0
    payloads_quarantined: int = 0     # payloads quarantined whole (unparseable, undecodable, table-level failure)
    validation: str = "skipped"
    messages: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    run_id: str
    kind: str
    status: str = "running"
    stats: dict[tuple[str, str], DatasetStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # (source, stream, instrument) whose extraction, parsing or validation failed in this run: their
    # watermarks stay put, so the next run re-reads the whole window (perpwatch/ingest/gaps.py, docs/reliability.md)
    tainted: set[tuple[str, str, str]] = field(default_factory=set)
    windows: dict = field(default_factory=dict)      # Stream -> (start, end) fetched in this run
    # source -> (banned_until, reason): venues that banned us beyond PERPWATCH_MAX_BAN_WAIT in this run;
    # finish() stores them in meta.venue_bans so the next runs skip the source until then
    bans: dict = field(default_factory=dict)

    def banned(self, source: str, until: datetime, reason: str) -> None:
        """A client's on_ban callback (any thread): one warning per source, the latest end wins."""
        old = self.bans.get(source)
        if old is None:
            self.warnings.append(f"{source}: banned by the venue, skipped until {until:%Y-%m-%d %H:%M:%S} UTC: {reason}")
        if old is None or old[0] < until:
            self.bans[source] = (until, reason)
    # gaps (meta.gaps, status open) of this run's streams still open when it finished (record())
    open_gaps: list[dict] = field(default_factory=list)

    def stat(self, source: str, dataset: str) -> DatasetStats:
        return self.stats.setdefault((source, dataset), DatasetStats(source, dataset))

    def merge(self, part: RunReport) -> RunReport:
        """Fold what one step of this run learned (a fragment with the same run_id) into this report."""
        for (src, ds), st in part.stats.items():
            mine = self.stat(src, ds)
            for k in ("payloads", "fetched", "loaded", "duplicate", "updated", "quarantined", "quarantined_batches",
                      "payloads_quarantined"):
                setattr(mine, k, getattr(mine, k) + getattr(st, k))
            if st.validation != "skipped":
                mine.validation = st.validation
            mine.messages += st.messages
        self.errors += part.errors
        banned_before = set(self.bans)
        self.warnings += [w for w in part.warnings                  # one ban warning per source
                          if not any(w.startswith(f"{src}: banned by the venue") for src in banned_before)]
        for src, (until, reason) in part.bans.items():
            if src not in self.bans or self.bans[src][0] < until:
                self.bans[src] = (until, reason)
        self.tainted |= part.tainted
        self.windows.update(part.windows)
        return self

    def fragment(self) -> RunReport:
        return RunReport(self.run_id, self.kind)

    def totals(self) -> dict[str, int]:
        """Row counts (fetched = loaded + quarantined + duplicate), payloads quarantined whole, open gaps."""
        s = self.stats.values()
        out = {k: sum(getattr(x, k) for x in s)
               for k in ("fetched", "loaded", "quarantined", "duplicate", "payloads_quarantined")}
        out["gaps_open"] = len(self.open_gaps)
        return out

    def table(self) -> list[dict]:
        return [{"source": s.source, "dataset": s.dataset, "payloads": s.payloads, "fetched": s.fetched,
                 "loaded": s.loaded, "duplicate": s.duplicate, "quarantined": s.quarantined,
                 "validation": s.validation} for s in sorted(self.stats.values(), key=lambda x: (x.source, x.dataset))]


# --------------------------------------------------------------------------- parsing

def instrument_context(con) -> dict[tuple[str, str], dict]:
    df = con.sql("SELECT * FROM staging.instruments").pl()
    return {(r["venue"], r["instrument"]): r for r in df.iter_rows(named=True)}


def parse_payload(source: str, endpoint: str, params: dict, body: bytes, fetched_at: datetime,
                  ctx_instruments: dict) -> dict[str, pl.DataFrame]:
    """Parse one landed payload exactly the same way whether fetched now or replayed."""
    module = sources.get(source)
    parser = module.PARSERS.get(endpoint)
    if parser is None:
        raise ValueError(f"{source} {endpoint}: no parser for this endpoint")
    try:
        data = body if parser.raw_body else orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"response is not valid JSON ({exc}); {len(body)} bytes") from exc
    return parser(data, params, ParseContext(fetched_at, ctx_instruments, staging_columns()))


@dataclass
class Parsed:
    frames: dict[str, list[pl.DataFrame]] = field(default_factory=lambda: defaultdict(list))


def _quarantine_unparsed(con, report: RunReport, p: Fetched, exc: str) -> None:
    """A payload its parser rejects is quarantined alone; the run goes on."""
    quarantine_payload(con, report, p.raw_id, p.source, p.endpoint, p.stream, p.instrument, "unparseable payload",
                       exc, p.body, expectation="parse")


def _tag(df: pl.DataFrame, group: list[Fetched], positions: list[int]) -> pl.DataFrame:
    """Each row of a batch frame gets its payload's raw_id, source, stream, endpoint and the
    (source, instrument) group it is validated/quarantined in, plus `_pos` (the payload's place in
    the run's order). A payload covering several instruments (a websocket batch, a replayed
    payload) is grouped per instrument: the row's own instrument, not the page's."""
    page = df[PAGE]

    def pick(values: list, dtype: pl.DataType) -> pl.Series | pl.Expr:
        # one value for the whole group (its source and endpoint always, mostly its stream): a literal, not a
        # gathered column of a million copies
        if len(set(values)) == 1:
            return pl.lit(values[0], dtype=dtype)
        return pl.Series(values, dtype=dtype).gather(page)

    inst = pl.Series([p.instrument or None for p in group], dtype=pl.Utf8).gather(page)
    row_inst = (df["instrument"].cast(pl.Utf8).fill_null("") if "instrument" in df.columns
                else pl.Series([""] * df.height, dtype=pl.Utf8))
    return df.drop(PAGE).with_columns(
        pick([p.raw_id for p in group], pl.Int64).alias("raw_id"),
        pick([p.source for p in group], pl.Utf8).alias("_source"),
        pick([p.stream or "" for p in group], pl.Utf8).alias("_stream"),
        inst.fill_null(row_inst).alias("_instrument"),
        pick([p.endpoint for p in group], pl.Utf8).alias("_endpoint"),
        pick(positions, pl.Int64).alias("_pos"))


def parse_all(con, report: RunReport, payloads: Iterable[Fetched], ctx_instruments: dict) -> Parsed:
    """Parse a run's payloads: every (source, endpoint) with a batch parser is parsed in one call
    over all its payloads; the others (instrument lists, snapshots, files, providers) page by page.
    Each table's rows come out in payload order (and each payload's row order), so the load's
    "later payload wins a repeated key" is the same whichever way a payload was parsed."""
    out = Parsed()
    ok = [p for p in payloads if p.status == 200]
    groups: dict[tuple[str, str], list[int]] = {}
    for i, p in enumerate(ok):
        groups.setdefault((p.source, p.endpoint), []).append(i)
    pieces: dict[str, list[pl.DataFrame]] = defaultdict(list)
    pctx = ParseContext(settings.now(), ctx_instruments, staging_columns())
    for (source, endpoint), idx in groups.items():
        parser = sources.get(source).PARSERS.get(endpoint)
        if parser is not None and parser.batch is not None:
            group = [ok[i] for i in idx]
            res = isolate(parser.batch, [Page(p.body, p.params, p.fetched_at) for p in group], pctx)
            for k, exc in sorted(res.errors.items()):
                _quarantine_unparsed(con, report, group[k], exc)
            for table, df in res.frames.items():
                if df.height:
                    pieces[table].append(_tag(df, group, idx))
            continue
        for i in idx:
            p = ok[i]
            try:
                frames = parse_payload(p.source, p.endpoint, p.params, p.body, p.fetched_at, ctx_instruments)
            except Exception as exc:  # a parser error quarantines this payload; the run goes on
                _quarantine_unparsed(con, report, p, str(exc))
                continue
            for table, df in frames.items():
                if df.height == 0:
                    continue
                pieces[table].append(df.with_columns(
                    pl.lit(p.raw_id, pl.Int64).alias("raw_id"), pl.lit(p.source).alias("_source"),
                    pl.lit(p.stream or "").alias("_stream"),
                    # a parser may name its own groups: an imported file's rows are one each, per payload
                    (pl.format("{} {}", pl.lit(p.raw_id), pl.col("_instrument")) if "_instrument" in df.columns
                     else pl.lit(p.instrument) if p.instrument else pl.col("instrument").cast(pl.Utf8).fill_null("")
                     if "instrument" in df.columns else pl.lit("")).alias("_instrument"),
                    pl.lit(p.endpoint).alias("_endpoint"), pl.lit(i, pl.Int64).alias("_pos")))
    for table, frames in pieces.items():
        if len(frames) == 1:
            out.frames[table].append(frames[0].drop("_pos"))
            continue
        # frames of several groups (or pages): back into payload order; stable, so rows keep theirs
        frames.sort(key=lambda f: f["_pos"][0])
        df = pl.concat(frames, how="diagonal_relaxed")
        if not df["_pos"].is_sorted():
            df = df.sort("_pos", maintain_order=True)
        out.frames[table].append(df.drop("_pos"))
    return out


def merge_instruments(df: pl.DataFrame) -> pl.DataFrame:
    """Instrument rows may come in parts (exchangeInfo + fundingInfo): merge by key, newest non-null wins."""
    key = ["venue", "instrument"]
    cols = [c for c in df.columns if c not in key]
    merged = (df.group_by(key, maintain_order=True)
              .agg([pl.col(c).drop_nulls().last() for c in cols]))
    merged = merged.filter(pl.col("asset").is_not_null())
    return merged.with_columns(
        pl.when(pl.col("kind") == "perp").then(pl.col("funding_interval_hours").fill_null(8.0))
        .otherwise(pl.col("funding_interval_hours")).alias("funding_interval_hours"))


# --------------------------------------------------------------------------- validate + load

def load_table(con, report: RunReport, table: str, frames: list[pl.DataFrame],
               move_watermarks: bool = True, now: datetime | None = None) -> None:
    """Validate one dataset's batch for this run, quarantine the smallest unit that failed, upsert the
    rest on the grain with the watermarks in the same transaction.

    The unit quarantined (docs/reliability.md, "Quarantine"):
    - a row-level failure (GX names the rows: unexpected_index_list, or a non-finite float) costs
      exactly the failing rows, recorded with their raw_id and row number inside that payload; the
      stream's other rows load and its watermark moves past what loaded (the venue serves the same
      bad row again, so a bad row must never hold the stream back);
    - a table-level failure (no row indexes: a missing column, an empty batch) costs the payload(s)
      that fail on their own (found by bisecting the batch by raw_id) and taints their streams.
    When the newest payload's row for a key is quarantined, the key falls back to the next newest
    candidate in this batch (validated in its turn), so a replay after a bad payload keeps every good
    row exactly as it was."""
    if not frames:
        return
    df = pl.concat(frames, how="diagonal_relaxed")
    if "_row" not in df.columns:   # the row's number inside its payload's frame for this table (0-based)
        df = df.with_columns(pl.int_range(pl.len()).over(pl.col("raw_id").fill_null(-1)).alias("_row"))
    if table == "instruments":
        df = merge_instruments(df)
    df = df.with_columns(pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("ingested_at"))
    full = f"staging.{table}"
    entry = tables.table(table)
    key = list(entry.key)
    fetched = dict(df.group_by("_source").len().iter_rows())
    for src, n in fetched.items():
        report.stat(src, table).fetched += n
    # Overlapping pages and re-fetched windows repeat keys across payloads: the newest payload wins,
    # the rest are counted as duplicates (reconciliation: fetched = loaded + quarantined + duplicate).
    pending = df.with_row_index("__cand")
    kept: list[pl.DataFrame] = []
    any_bad = False
    quarantined: dict[str, int] = defaultdict(int)
    written: dict[str, warehouse.LoadResult] | None = None
    for _pass in range(MAX_FALLBACK_PASSES):
        batch = _newest_per_key(pending, key)
        # First pass: the batch is written (uncommitted) while GX validates it; commit only if it passes.
        # The watermarks it moves are worked out here meanwhile (this thread has time to spare: the write is longer
        # than GX), handed to the writer through `marks`.
        marks: Future | None = Future() if _pass == 0 and move_watermarks and entry.watermarked else None
        spec = (_Speculative(con, lambda b=batch, m=marks: _write_sources(con, report, full, entry, b, move_watermarks, m,
                                                                      sources=list(fetched) if len(fetched) == 1 else None),
                             table=full, batch=f"{report.run_id} ({batch.height} rows)")
                if _pass == 0 else None)
        passed = False
        try:
            if marks is not None:
                try:
                    marks.set_result(_stream_marks(batch, entry))
                except BaseException as exc:
                    marks.set_exception(exc)
                    raise
            outcome = validate(table, batch.drop(INTERNAL + ["_row", "__cand"], strict=False), now=now)
            check_finite(batch, outcome)
            passed = outcome.success
        finally:
            if spec is not None:
                written = spec.settle(passed)
        if outcome.success:
            kept.append(batch)
            break
        any_bad = True
        fallback = pending.join(batch.select("__cand"), on="__cand", how="anti")   # older candidates of the keys
        bad_payloads = _table_level_culprits(table, batch, outcome, now) if outcome.table_level_failed else set()
        batch = batch.with_row_index("__pos")
        is_bad = pl.col("__pos").is_in(sorted(outcome.bad_rows)) | \
            pl.col("raw_id").fill_null(-1).is_in(sorted(bad_payloads))
        bad = batch.filter(is_bad)
        kept.append(batch.filter(~is_bad).drop("__pos"))
        for src, n in _quarantine_rows(con, report, table, bad, outcome, bad_payloads).items():
            quarantined[src] += n
        # the keys whose chosen row was bad fall back to an older candidate (not from a bad payload)
        pending = (fallback.join(bad.select(key).unique(), on=key, how="semi", nulls_equal=True)
                   .filter(~pl.col("raw_id").fill_null(-1).is_in(sorted(bad_payloads))))
        if pending.height == 0:
            break
    good = pl.concat(kept, how="diagonal_relaxed") if kept else df.clear()
    loaded_by_src = dict(good.group_by("_source").len().iter_rows()) if good.height else {}
    for src, n in fetched.items():
        st = report.stat(src, table)
        # in-batch repeats: what was fetched and neither kept nor quarantined in this call
        st.duplicate += n - loaded_by_src.get(src, 0) - quarantined[src]
    for src in good["_source"].unique(maintain_order=True).to_list():
        st = report.stat(src, table)
        st.validation = "partial" if quarantined[src] else "passed"
        if written is not None:
            res = written[src]
        else:
            part = good.filter(pl.col("_source") == src)
            # on a commit conflict with another writer warehouse.write re-runs this from scratch
            res = warehouse.write(con, lambda part=part, src=src: _write_sources(con, report, full, entry, part,
                                                                                 move_watermarks)[src],
                                  table=full, batch=f"{report.run_id}/{src} ({part.height} rows)")
        st.loaded += res.loaded
        st.updated += res.updated
        st.duplicate += res.duplicate
    if any_bad:
        for src in fetched:
            st = report.stat(src, table)
            if quarantined[src] and src not in loaded_by_src:
                st.validation = "failed"


MAX_FALLBACK_PASSES = 4      # validation passes per batch: the first, then older candidates of bad keys


def _stream_marks(good: pl.DataFrame, entry) -> dict[str, list[tuple[str, str, datetime]]]:
    """Per source, where the batch moves each stream's watermark: (stream, instrument, newest row time)."""
    marks = (good.filter(pl.col("_stream") != "").group_by("_source", "_stream", "_instrument", maintain_order=True)
             .agg(pl.col(entry.time_column).max().alias("last")))
    out: dict[str, list[tuple[str, str, datetime]]] = defaultdict(list)
    for src, stream, inst, last in marks.iter_rows():
        out[src].append((stream, inst, last))
    return out


def _write_sources(con, report: RunReport, full: str, entry, good: pl.DataFrame,
                   move_watermarks: bool, marks: Future | None = None,
                   sources: list[str] | None = None) -> dict[str, warehouse.LoadResult]:
    """Upsert a validated batch per source, with its watermarks and the run's loaded count: the rows,
    watermarks and count commit together (one DuckLake snapshot). Runs inside the caller's transaction.
    marks: _stream_marks(good) computed by another thread (None: computed here). sources: the batch's
    sources in order when the caller knows them (None: read from `_source`)."""
    out = {}
    srcs = sources if sources is not None else good["_source"].unique(maintain_order=True).to_list()
    by_src = None
    for src in srcs:
        part = good if len(srcs) == 1 else good.filter(pl.col("_source") == src)
        res = warehouse.upsert(con, full, part.drop(INTERNAL + ["_row", "__cand"], strict=False),
                               deduplicated=True)     # keys are unique: one candidate per key survives
        if move_watermarks and entry.watermarked:
            if by_src is None:
                by_src = marks.result() if marks is not None else _stream_marks(good, entry)
            # a failed page: re-read it all next run (its watermark stays)
            warehouse.advance_watermarks(con, src, [(stream, inst, last) for stream, inst, last in by_src.get(src, ())
                                                    if (src, stream, inst) not in report.tainted])
        warehouse.note_loaded(con, report.run_id, res.loaded)
        out[src] = res
    return out


class _Speculative:
    """A batch's write running on a worker thread while GX validates the same batch on this one.

    The worker upserts every source's rows (with the watermarks) inside one transaction and then waits
    for the verdict: the transaction commits only when the whole batch passed validation, otherwise it
    is rolled back and load_table writes the good rows the usual way. Until the commit no reader sees
    any of it, so a failed batch leaves nothing behind. The write and GX's pandas work run at the same
    time instead of one after the other."""

    def __init__(self, con, fn, *, table: str, batch: str):
        self._verdict = threading.Event()
        self._ok = False
        self._out: dict | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(con, fn, table, batch),
                                        name="perpwatch-load", daemon=True)
        self._thread.start()

    def _gate(self) -> bool:
        self._verdict.wait()
        return self._ok

    def _run(self, con, fn, table: str, batch: str) -> None:
        try:
            self._out = warehouse.write(con, fn, table=table, batch=batch, gate=self._gate)
        except warehouse.Discarded:
            pass
        except BaseException as exc:   # re-raised on this thread by settle() when the batch passed
            self._error = exc

    def settle(self, ok: bool) -> dict | None:
        """Give the verdict and wait for the write: its results when it committed, None when discarded."""
        self._ok = ok
        self._verdict.set()
        self._thread.join()
        if not ok:
            return None
        if self._error is not None:
            raise self._error
        return self._out


def _newest_per_key(df: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """The last row of each key, in the frame's order. Most batches repeat no key (a fresh window, or a
    reload of one); one hash per row proves that (equal keys hash equal, so as many distinct hashes
    as rows means no repeat; a collision only sends the batch down the exact path), for a fifth of
    what the order-keeping unique costs."""
    if df.select(pl.struct(key).hash().n_unique()).item() == df.height:
        return df
    return df.unique(subset=key, keep="last", maintain_order=True)


def _table_level_culprits(table: str, batch: pl.DataFrame, outcome, now) -> set[int]:
    """The payloads (raw_ids) whose rows fail a table-level expectation on their own, by bisection:
    O(k log n) validations for k culprits among n payloads. When no payload fails alone (an aggregate
    bound), every payload of the batch is a culprit."""
    from perpwatch.ingest import validate as gxv

    last = gxv.LAST_RESULTS.get(table)      # Data Docs show the whole batch's result, not a probe's
    ids = batch["raw_id"].fill_null(-1).unique(maintain_order=True).to_list()

    def probe(part_ids: list[int]) -> set[int]:
        part = batch.filter(pl.col("raw_id").fill_null(-1).is_in(part_ids))
        o = validate(table, part.drop(INTERNAL + ["_row", "__cand"], strict=False), now=now)
        if not o.table_level_failed:
            return set()
        if len(part_ids) == 1:
            return set(part_ids)
        mid = len(part_ids) // 2
        return probe(part_ids[:mid]) | probe(part_ids[mid:])

    try:
        found = probe(ids) if len(ids) > 1 else set(ids)
    finally:
        if last is not None:
            gxv.LAST_RESULTS[table] = last
    return found or set(ids)


def _quarantine_rows(con, report: RunReport, table: str, bad: pl.DataFrame, outcome,
                     bad_payloads: set[int]) -> dict[str, int]:
    """One quarantine.batches row per (source, instrument, unit): the rows (with raw_id and row number
    inside the payload, `row_refs`) or the whole payloads that failed, and the expectations they failed."""
    counts: dict[str, int] = defaultdict(int)
    if bad.height == 0:
        return counts
    bad = bad.with_columns(pl.col("raw_id").fill_null(-1).is_in(sorted(bad_payloads)).alias("__payload"))
    for (src, inst, whole), grp in bad.group_by(["_source", "_instrument", "__payload"], maintain_order=True):
        positions = set(grp["__pos"].to_list())
        fails = [f for f in outcome.failures if (whole and f.table_level) or positions & set(f.rows)]
        failed = [{"expectation": f.expectation, "column": f.column,
                   "unexpected_count": len(positions & set(f.rows)) if f.rows else f.unexpected_count,
                   "sample": f.sample} for f in fails]
        endpoints = grp["_endpoint"].unique(maintain_order=True).to_list()
        raw_ids = sorted({int(r) for r in grp["raw_id"].drop_nulls().to_list()})
        refs = [{"raw_id": int(r), "rows": sorted(int(x) for x in g["_row"].to_list())}
                for (r,), g in grp.group_by(["raw_id"], maintain_order=True) if r is not None]
        what = "; ".join(f.describe() for f in fails)
        unit = (f"{len(raw_ids)} payload(s) quarantined whole (raw_id {', '.join(map(str, raw_ids[:10]))})" if whole
                else f"{grp.height} row(s) quarantined (" + "; ".join(
                    f"raw_id {r['raw_id']} row {', '.join(map(str, r['rows'][:10]))}" for r in refs[:10]) + ")")
        msg = f"{src} {','.join(endpoints)} [{inst}] {table}: failed validation: {what}; {unit}"
        report.warnings.append(msg)
        st = report.stat(src, table)
        st.quarantined += grp.height
        counts[src] += grp.height
        st.quarantined_batches += 1
        st.messages.append(msg)
        if whole:
            st.payloads_quarantined += len(raw_ids)
            # what is in a payload that fails as a whole is unknown: its streams re-read the window
            report.tainted.update((src, stream, inst) for stream in grp["_stream"].unique().to_list())
        warehouse.quarantine(con, batch_id=str(uuid.uuid4()), run_id=report.run_id, source=src, dataset=table,
                             endpoint=",".join(endpoints), instrument=inst, raw_ids=raw_ids, failed=failed,
                             rows=grp.height, sample=grp.head(5).drop("__pos", "__cand", "__payload",
                                                                     strict=False).to_dicts(),
                             message=msg, row_refs=None if whole else refs)
    return counts


def check_finite(df: pl.DataFrame, outcome) -> None:
    """NaN / infinity in any float column fails the row (GX's pandas path counts NaN as a missing
    value, so a nullable column would let "NaN" from a venue through)."""
    floats = [c for c, t in df.schema.items() if t in (pl.Float32, pl.Float64) and c not in INTERNAL]
    if not floats:
        return
    flags = df.select([(pl.col(c).is_nan() | pl.col(c).is_infinite()).fill_null(False).alias(c) for c in floats])
    for c in floats:
        rows = flags[c].arg_true().to_list()
        if rows:
            outcome.success = False
            outcome.bad_rows.update(rows)
            outcome.failures.append(Failure("expect_column_values_to_be_finite", c, len(rows),
                                            [str(v) for v in df[c].gather(rows[:3]).to_list()], rows=rows))


def enrich_open_interest_usd(con) -> int:
    """OI rows with only one of oi_base / oi_usd (no price when they were loaded) are valued exactly
    like value_open_interest does at load time, so the result does not depend on load order."""
    return warehouse.retry(lambda: con.execute("""
        UPDATE staging.open_interest o
        SET oi_usd = coalesce(o.oi_usd, o.oi_base * x.px), oi_base = coalesce(o.oi_base, o.oi_usd / x.px)
        FROM (
            SELECT n.venue, n.instrument, n.ts,
                   coalesce(p1.close, p0.open) / coalesce(i.multiplier, 1.0) AS px
            FROM staging.open_interest n
            LEFT JOIN staging.prices p1 ON p1.venue = n.venue AND p1.instrument = n.instrument
                 AND p1.kind = 'perp' AND p1."interval" = '1h' AND p1.ts = date_trunc('hour', n.ts) - INTERVAL 1 HOUR
            LEFT JOIN staging.prices p0 ON p0.venue = n.venue AND p0.instrument = n.instrument
                 AND p0.kind = 'perp' AND p0."interval" = '1h' AND p0.ts = date_trunc('hour', n.ts)
            LEFT JOIN staging.instruments i ON i.venue = n.venue AND i.instrument = n.instrument
            WHERE (n.oi_usd IS NULL) <> (n.oi_base IS NULL)) x
        WHERE x.px IS NOT NULL AND o.venue = x.venue AND o.instrument = x.instrument AND o.ts = x.ts
          AND (o.oi_usd IS NULL) <> (o.oi_base IS NULL)""").fetchone()[0],
        what="staging.open_interest (OI valuation)")   # no RETURNING: DuckLake has none on UPDATE


def value_open_interest(con, frames: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """Before validation, fill the missing side of OI rows that carry only oi_base or only oi_usd
    (Bybit linear: coins; Bybit inverse: USD) from the perp's price per base coin at ts: the close of
    the 1h bar ending at ts, else the open of the bar starting at ts, / the instrument's multiplier.
    Done before the load so a re-fetched row equals the stored one (a rerun loads 0 rows). Rows
    with no price stay as they are (enrich_open_interest_usd values them once the price is loaded;
    a row without oi_base fails validation and is quarantined)."""
    df = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    if "oi_base" not in df.columns or "oi_usd" not in df.columns:
        return frames
    df = df.with_row_index("__k")
    need = df.filter(pl.col("oi_base").is_null() ^ pl.col("oi_usd").is_null())
    if need.height == 0:
        return frames
    con.register("__oi_need", need.select("__k", "venue", "instrument", "ts").to_arrow())
    try:
        px = con.sql("""
            SELECT n.__k, coalesce(p1.close, p0.open) / coalesce(i.multiplier, 1.0) AS __px
            FROM __oi_need n
            LEFT JOIN staging.prices p1 ON p1.venue = n.venue AND p1.instrument = n.instrument
                 AND p1.kind = 'perp' AND p1."interval" = '1h' AND p1.ts = date_trunc('hour', n.ts) - INTERVAL 1 HOUR
            LEFT JOIN staging.prices p0 ON p0.venue = n.venue AND p0.instrument = n.instrument
                 AND p0.kind = 'perp' AND p0."interval" = '1h' AND p0.ts = date_trunc('hour', n.ts)
            LEFT JOIN staging.instruments i ON i.venue = n.venue AND i.instrument = n.instrument""").pl()
    finally:
        con.unregister("__oi_need")
    df = df.join(px.with_columns(pl.col("__k").cast(df["__k"].dtype)), on="__k", how="left",
                 maintain_order="left").with_columns(
        pl.coalesce("oi_base", pl.col("oi_usd") / pl.col("__px")).alias("oi_base"),
        pl.coalesce("oi_usd", pl.col("oi_base") * pl.col("__px")).alias("oi_usd"))
    return [df.drop("__k", "__px")]


# --------------------------------------------------------------------------- extraction

def _window(con, stream: Stream, start: datetime | None, end: datetime,
            known: tuple[dict, dict] | None = None) -> tuple[datetime, datetime]:
    """[start, end) to fetch for a stream. `known` = (open gap starts, watermarks) read once for every
    stream of a run (gaps.earliest_open_all, warehouse.all_watermarks); else read for this stream."""
    key = (stream.source, stream.name, stream.instrument)
    # rows missing inside stored history: re-read from there
    gap = known[0].get(key) if known is not None else gaps.earliest_open(con, stream)
    if start is not None:
        return (min(start, gap - gaps.overlap(stream)) if gap else start), end
    mark = known[1].get(key) if known is not None else warehouse.get_watermark(con, *key)
    begin = end - DEFAULT_LOOKBACK if mark is None else mark - gaps.overlap(stream)
    return (min(begin, gap - gaps.overlap(stream)) if gap else begin), end


# --------------------------------------------------------------------------- one ingest path
#
# `ingest()` is the only way a run happens: `perpwatch run/backfill --no-prefect`, the Prefect flows
# (flows/ingest.py, via a PrefectRunner) and the collector's REST siblings all call it. Its steps take
# plain values (a run id, a Unit of frozen Streams, raw ids) and return plain values (a report fragment,
# page references); rate-limited clients and the landing connection live per run in this process
# (`_RunResources`), looked up by run id — never passed between steps or tasks.


@dataclass(frozen=True)
class Unit:
    """One coarse unit of extraction: a (source, stream kind) with its instruments' streams and windows.

    Venues budget per endpoint, so kinds run in parallel while the instruments of one kind share its
    budget in sequence."""

    source: str
    kind: str                      # e.g. "long_short_ratio/accounts"
    dataset: str                   # the staging table
    streams: tuple[Stream, ...]
    windows: tuple[tuple[datetime, datetime], ...]


@dataclass(frozen=True)
class Plan:
    run_id: str
    kind: str
    db: str | None
    units: tuple[Unit, ...]
    report: RunReport              # what preparing learned (instrument load, planning warnings)


@dataclass(frozen=True)
class PageRef:
    """A landed page, by reference: the load step reads its body back from raw.payloads."""

    raw_id: int
    source: str
    endpoint: str
    status: int
    stream: str | None
    instrument: str | None


@dataclass(frozen=True)
class Extracted:
    pages: tuple[PageRef, ...]
    report: RunReport


class _RunResources:
    """Per run, per process: the landing connection and one rate-limited client per source."""

    def __init__(self, run_id: str, db, chosen: list[str], client_factory=None):
        available = sources.available()
        self.con = warehouse.connect(db)
        # buffered: on the lake a unit's pages commit in batches; flushed before a step returns (extract,
        # the instrument refresh), so every body is committed before the load step parses it
        self.lander = warehouse.Lander(self.con, run_id, buffered=True)
        self.modules = {name: available[name] for name in chosen}
        make = client_factory or (lambda module, lander: module.make_client(lander))
        self.clients = {name: make(m, self.lander) for name, m in self.modules.items()}
        self.bans: dict[str, tuple[datetime, str]] = {}     # source -> (until, reason), from any thread
        self._ban_lock = threading.Lock()
        for c in self.clients.values():
            c.on_ban = self.note_ban

    def note_ban(self, source: str, until: datetime, reason: str) -> None:
        """A client's on_ban callback: the venue banned us beyond PERPWATCH_MAX_BAN_WAIT; the latest end wins."""
        with self._ban_lock:
            if source not in self.bans or self.bans[source][0] < until:
                self.bans[source] = (until, reason)

    def close(self) -> None:
        try:
            self.lander.flush()
        finally:
            for cl in self.clients.values():
                getattr(getattr(cl, "session", None), "close", lambda: None)()
            self.con.close()


_RESOURCES: dict[str, _RunResources] = {}


def _resources(run_id: str) -> _RunResources:
    try:
        return _RESOURCES[run_id]
    except KeyError:
        raise RuntimeError(f"run {run_id} is not open in this process (steps of a run share its process)") from None


def choose_sources(venues: list[str] | None) -> list[str]:
    available = sources.available()
    if venues:
        chosen = list(venues)
    else:
        chosen = settings.venues(list(sources.available(("venues",)))) + \
            settings.providers(list(sources.available(("providers",))))
    unknown = [v for v in chosen if v not in available]
    if unknown:
        raise ValueError(f"unknown or unimplemented venues {unknown}; available: {sorted(available)}")
    return chosen


def prepare(kind: str = "run", start: datetime | None = None, end: datetime | None = None,
            venues: list[str] | None = None, assets: list[str] | None = None, db=None,
            client_factory=None) -> Plan:
    """Open the run: record it, refresh instruments, plan units and their windows (DuckDB reads here).

    `client_factory(module, lander)` replaces `module.make_client(lander)` (benchmarks scale budgets)."""
    chosen = choose_sources(venues)
    assets = [validate_asset(a) for a in (assets or settings.assets())]
    end = (end or settings.now()).astimezone(UTC)      # settings.now(): PERPWATCH_NOW or the system clock
    start = start.astimezone(UTC) if start else None
    report = RunReport(run_id=f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", kind=kind)
    with warehouse.session(db) as con:
        # A source still banned by an earlier run is skipped (a request would only extend the ban).
        for name, (until, reason) in warehouse.active_bans(con, settings.now()).items():
            if name in chosen:
                chosen.remove(name)
                report.warnings.append(f"{name}: skipped, banned until {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} "
                                       f"UTC (meta.venue_bans: {reason[:200]})")
    res = _RESOURCES[report.run_id] = _RunResources(report.run_id, db, chosen, client_factory)
    con = res.con
    warehouse.start_run(con, report.run_id, kind)
    try:
        instruments = _refresh_instruments(con, res, report)
        units = []
        known = (gaps.earliest_open_all(con), warehouse.all_watermarks(con))
        for (name, kind_), streams in plan_units(res.modules, report, instruments, assets).items():
            windows = tuple(_window(con, s, start, end, known) for s in streams)
            report.windows.update(zip(streams, windows, strict=True))   # finish() checks these for gaps
            units.append(Unit(name, kind_, streams[0].dataset, tuple(streams), windows))
    except Exception as exc:
        report.errors.append(f"run aborted: {type(exc).__name__}: {exc}")
        finish(report, db)
        raise
    return Plan(report.run_id, kind, str(db) if db else None, tuple(units), report)


def _refresh_instruments(con, res: _RunResources, report: RunReport) -> pl.DataFrame:
    payloads: list[Fetched] = []
    for name, m in res.modules.items():
        try:
            payloads += m.fetch_instruments(res.clients[name])
        except Banned as exc:
            if exc.until is not None:
                res.note_ban(name, exc.until, str(exc))
        except SourceError as exc:
            venue = getattr(m, "VENUE", name)
            known = con.execute("SELECT count(*) FROM staging.instruments WHERE venue = ?", [venue]).fetchone()[0]
            if known:   # degraded, not failed: this run plans from the instruments stored by earlier runs
                report.warnings.append(f"instruments not refreshed, using the {known} stored: {exc}")
            else:
                report.errors.append(f"instruments failed: {exc}")
    res.lander.flush()                         # landed (committed) before parsed
    parsed = parse_all(con, report, payloads, instrument_context(con))
    load_table(con, report, "instruments", parsed.frames.get("instruments", []))
    return con.sql("SELECT * FROM staging.instruments").pl()


def plan_units(modules: dict, report: RunReport, instruments: pl.DataFrame,
               assets: list[str]) -> dict[tuple[str, str], list[Stream]]:
    """Streams per (source, stream kind); names that fail the strict instrument pattern are skipped."""
    units: dict[tuple[str, str], list[Stream]] = defaultdict(list)
    for name, m in modules.items():
        for s in m.plan(instruments, assets):
            try:   # names from venues end up in URLs, file names and logs: strict pattern first
                validate_instrument(s.instrument)
            except ValueError as exc:
                report.warnings.append(f"{name}: skipped stream {s.name}: {exc}")
                continue
            units[(name, s.name)].append(s)
    return dict(units)


def extract(run_id: str, unit: Unit) -> Extracted:
    """Fetch (and land) every page of one unit. An instrument that fails is reported; the others go on."""
    res = _resources(run_id)
    report = RunReport(run_id, "part")
    try:
        pages = extract_streams(res.modules[unit.source], res.clients[unit.source], unit.streams, unit.windows,
                                report)
    finally:
        res.lander.flush()                     # every page of the unit committed before the step returns
    report.stat(unit.source, unit.dataset).payloads += len(pages)
    return Extracted(tuple(PageRef(p.raw_id, p.source, p.endpoint, p.status, p.stream, p.instrument)
                           for p in pages), report)


def extract_streams(module, client, streams, windows, report: RunReport) -> list[Fetched]:
    got: list[Fetched] = []
    for s, (start, end) in zip(streams, windows, strict=True):
        try:
            for page in module.fetch(client, s, start, end):
                got.append(page)
        except BadPayload as exc:
            # The bad page is already landed and in `got`: parsing quarantines it; paging stops here.
            report.tainted.add((s.source, s.name, s.instrument))
            report.stat(s.source, s.dataset).messages.append(f"paging stopped: {exc}")
        except Banned as exc:
            # The venue banned us beyond the cap: the client's on_ban already warned once for the source and
            # every later request of it raises at once (none is sent); the other venues go on.
            report.tainted.add((s.source, s.name, s.instrument))
            if exc.until is not None and s.source not in report.bans:
                report.banned(s.source, exc.until, str(exc))
        except SourceError as exc:
            report.tainted.add((s.source, s.name, s.instrument))
            msg = f"extract failed: {exc}"
            report.errors.append(msg)
            report.stat(s.source, s.dataset).messages.append(msg)
    return got


def read_pages(con, refs: Iterable[PageRef], report: RunReport | None = None) -> list[Fetched]:
    """The landed payloads behind page references, in the order given (the later payload wins a key).
    With a report, a body that cannot be decoded is quarantined (quarantine_payload) and skipped."""
    refs = list(refs)
    if not refs:
        return []
    con.register("__refs", pl.DataFrame({"raw_id": [r.raw_id for r in refs]}).to_arrow())
    try:
        rows = {r[0]: r[1:] for r in con.execute(
            "SELECT p.raw_id, p.params, p.fetched_at, p.body, p.encoding FROM raw.payloads p "
            "JOIN __refs USING (raw_id)").fetchall()}
    finally:
        con.unregister("__refs")
    out = []
    for r in refs:
        params, fetched_at, body, enc = rows[r.raw_id]
        try:
            decoded = warehouse.payload_body(body, enc, raw_id=r.raw_id)
        except warehouse.UndecodableBody as exc:
            if report is None:
                raise
            quarantine_payload(con, report, r.raw_id, r.source, r.endpoint, r.stream, r.instrument,
                               "undecodable body", exc, body)
            continue
        out.append(Fetched(r.raw_id, r.source, r.endpoint, orjson.loads(params) if params else {}, r.status,
                           decoded, r.stream, r.instrument, fetched_at))
    return out


def quarantine_payload(con, report: RunReport, raw_id: int, source: str, endpoint: str, stream: str | None,
                       instrument: str | None, what: str, exc: Exception | str, body: bytes | None,
                       expectation: str = "decode") -> None:
    """A payload that cannot be read (undecodable body) or parsed: quarantined whole with its raw_id and
    the reason; its stream is tainted (the next run re-reads the window) and the rest goes on."""
    dataset = (stream or "unknown").split("/", 1)[0]
    report.tainted.add((source, stream or "", instrument or ""))
    msg = f"{source} {endpoint} [{instrument or '-'}]: {what} raw_id={raw_id}: {exc}"
    report.warnings.append(msg)
    st = report.stat(source, dataset)
    st.quarantined_batches += 1
    st.payloads_quarantined += 1
    st.messages.append(msg)
    warehouse.quarantine(con, batch_id=str(uuid.uuid4()), run_id=report.run_id, source=source, dataset=dataset,
                         endpoint=endpoint, instrument=instrument, raw_ids=[raw_id],
                         failed=[{"expectation": expectation, "message": str(exc)}], rows=0,
                         sample=[bytes(body or b"")[:300].decode("utf-8", "replace")], message=msg)


def load(run_id: str, db, pages: Iterable[PageRef], tainted: frozenset = frozenset()) -> RunReport:
    """Parse the landed pages, validate, load on the grain; watermarks of untainted streams move."""
    report = RunReport(run_id, "part")
    report.tainted |= set(tainted)
    with warehouse.session(db) as con:
        load_parsed(con, report, read_pages(con, pages, report), instrument_context(con))
    report.tainted -= set(tainted)
    return report


class Runner:
    """How the steps of a run execute: here, in this process (threads for extraction). flows/ingest.py
    supplies a Runner that makes each step a Prefect task; the steps and their order are the same."""

    def __init__(self, max_workers: int = 8):
        self.max_workers = max_workers

    def call(self, fn, *args):
        return fn(*args)

    def map(self, fn, items: list[tuple]) -> list:
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            futures = [pool.submit(fn, *args) for args in items]
            return [f.result() for f in futures]


def ingest(kind: str = "run", start: datetime | None = None, end: datetime | None = None,
           venues: list[str] | None = None, assets: list[str] | None = None, db=None,
           runner: Runner | None = None, progress: Callable[[str], None] | None = None) -> RunReport:
    """One pass over the configured sources: from each stream's watermark, or over [start, end)."""
    say = progress or (lambda _m: None)
    runner = runner or Runner()
    db = str(db) if db else None
    plan = runner.call(prepare, kind, start, end, venues, assets, db)
    report = plan.report
    try:
        say(f"planned {len(plan.units)} units across {len({u.source for u in plan.units})} sources")
        phases.mark("extract")
        results = runner.map(extract, [(plan.run_id, u) for u in plan.units])
        pages: list[PageRef] = []
        for u, r in zip(plan.units, results, strict=True):
            report.merge(r.report)
            pages += r.pages
            say(f"fetched {u.source} {u.kind}: {len(r.pages)} pages")
        phases.mark("load")
        report.merge(runner.call(load, plan.run_id, db, tuple(pages), frozenset(report.tainted)))
    except Exception as exc:
        report.errors.append(f"run aborted: {type(exc).__name__}: {exc}")
        finish(report, db)
        raise
    finish(report, db)
    say(f"loaded: {report.totals()} status={report.status}")
    return report


def load_parsed(con, report: RunReport, payloads: list[Fetched], ctx_instruments: dict,
                move_watermarks: bool = True) -> None:
    parsed = parse_all(con, report, payloads, ctx_instruments)
    for table in tables.LOAD_ORDER:
        if table in parsed.frames:
            frames = parsed.frames[table]
            if table == "open_interest":
                frames = value_open_interest(con, frames)
            load_table(con, report, table, frames, move_watermarks=move_watermarks)
        if table == "prices":
            enrich_open_interest_usd(con)
    enrich_open_interest_usd(con)


def finish(report: RunReport, db=None) -> None:
    """Close the run: gap detection, reconciliation, status, meta.runs — then release its resources."""
    res = _RESOURCES.pop(report.run_id, None)
    try:
        if res is not None:
            for source, (until, reason) in dict(res.bans).items():
                report.banned(source, until, reason)
            record(res.con, report)
        else:
            with warehouse.session(db) as con:
                record(con, report)
    finally:
        if res is not None:
            res.close()


def record(con, report: RunReport) -> None:
    """Write the run's outcome: bans, gaps, reconciliation, status and meta.runs."""
    for source, (until, reason) in dict(report.bans).items():
        try:
            warehouse.record_ban(con, source, until, reason, report.run_id, settings.now())
        except Exception as exc:  # noqa: BLE001 - the run's record comes first
            report.errors.append(f"could not store the ban of {source}: {type(exc).__name__}: {exc}")
    if report.windows:
        try:
            warehouse.retry(lambda: gaps.detect(con, report), what="meta.gaps")
        except Exception as exc:  # noqa: BLE001 - gap bookkeeping must not lose the run's record
            report.errors.append(f"gap detection failed: {type(exc).__name__}: {exc}")
        try:
            report.open_gaps = gaps.open_in(con, report.windows)
        except Exception as exc:  # noqa: BLE001
            report.errors.append(f"open gaps unknown: {type(exc).__name__}: {exc}")
        older = [g for g in report.open_gaps if g["detected_run"] != report.run_id]
        if older:   # new ones are already named by gaps.detect's warning: each open gap is reported once
            report.warnings.append(
                f"{len(older)} gap(s) still open in this run's streams (re-requested next run; "
                "`perpwatch backfill --heal` re-reads them now): " + ", ".join(
                    f"{g['source']} {g['dataset']} [{g['instrument']}] from {g['gap_start']:%Y-%m-%d %H:%M}"
                    for g in older[:5]) + (" ..." if len(older) > 5 else ""))
    t = report.totals()
    mismatch = [f"{s.source}/{s.dataset}: fetched {s.fetched} != loaded {s.loaded} + quarantined "
                f"{s.quarantined} + duplicate {s.duplicate}"
                for s in report.stats.values() if s.fetched != s.loaded + s.quarantined + s.duplicate]
    if mismatch:
        report.errors.append("reconciliation failed: " + "; ".join(mismatch))
    if report.errors:
        report.status = "failed"
    elif report.warnings:
        report.status = "warning"
    else:
        report.status = "success"
    datasets = [(s.source, s.dataset, s.fetched, s.loaded, s.quarantined, s.duplicate, s.payloads, s.validation,
                 "; ".join(s.messages)[:2000]) for s in report.stats.values()]
    message = "; ".join(report.errors + report.warnings)[:4000]
    warehouse.finish_run(con, report.run_id, report.status, t["fetched"], t["loaded"], t["quarantined"],
                         t["duplicate"], message, t["payloads_quarantined"], t["gaps_open"],
                         datasets)     # one transaction: datasets + the run's row


# --------------------------------------------------------------------------- replay

def replay(db=None, progress: Callable[[str], None] | None = None) -> RunReport:
    """Rebuild staging from raw.payloads with no network: every payload parsed like a fetched one."""
    say = progress or (lambda _m: None)
    report = RunReport(run_id=f"replay-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", kind="replay")
    con = warehouse.connect(db)
    try:
        warehouse.start_run(con, report.run_id, "replay")
        with warehouse.transaction(con):
            for table in tables.LOAD_ORDER:
                con.execute(f"DELETE FROM staging.{table}")
        known = set(sources.ALL_MODULES)
        rows = con.execute("""SELECT raw_id, source, endpoint, params, fetched_at, http_status, body, encoding
                              FROM raw.payloads WHERE http_status = 200 ORDER BY raw_id""").fetchall()
        payloads = []
        for raw_id, source, endpoint, params, fetched_at, status, body, enc in rows:
            if source not in known:
                continue
            try:   # one undecodable body is quarantined with its raw_id; the replay goes on
                decoded = warehouse.payload_body(body, enc, raw_id=raw_id)
                p = orjson.loads(params) if params else {}
            except (warehouse.UndecodableBody, orjson.JSONDecodeError) as exc:
                quarantine_payload(con, report, raw_id, source, endpoint, None, None,
                                   "unreadable payload", exc, body)
                continue
            payloads.append(Fetched(raw_id, source, endpoint, p, status, decoded, None, None, fetched_at))
        say(f"replaying {len(payloads)} payloads")
        is_inst = [p for p in payloads if _is_instrument_endpoint(p)]
        parsed = parse_all(con, report, is_inst, {})
        load_table(con, report, "instruments", parsed.frames.get("instruments", []), move_watermarks=False)
        ctx = instrument_context(con)
        rest = [p for p in payloads if not _is_instrument_endpoint(p)]
        load_parsed(con, report, rest, ctx, move_watermarks=False)
    finally:
        record(con, report)
        con.close()
    return report


def _is_instrument_endpoint(p: Fetched) -> bool:
    module = sources.get(p.source)
    return p.endpoint in getattr(module, "INSTRUMENT_ENDPOINTS", ())
