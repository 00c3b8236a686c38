"""The pipeline as plain functions: extract -> land raw -> parse -> validate -> load -> build.

Flows (flows/) wire these as Prefect tasks; the CLI and tests call them directly too.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
import polars as pl

import sources
import warehouse
from perpwatch import settings
from perpwatch.assets import validate_asset, validate_instrument
from perpwatch.validate import Failure, validate
from sources.base import ParseContext, Stream
from sources.http import BadPayload, Banned, Fetched, SourceError

log = logging.getLogger("perpwatch")

# Load order: instruments first (parsers need contract sizes), prices before open interest
# (OI without a USD value is valued from the perp close).
TABLE_ORDER = ["instruments", "prices", "open_interest", "funding_rates", "long_short_ratio", "liquidations",
               "etf_flows", "macro_closes", "treasury_holdings", "market_caps"]
TIME_COLUMN = {"funding_rates": "funding_time", "etf_flows": "date", "macro_closes": "date",
               "treasury_holdings": "as_of", "market_caps": "date"}
INTERNAL = ["_source", "_stream", "_instrument", "_endpoint"]
DEFAULT_LOOKBACK = timedelta(days=30)


def overlap(stream: Stream) -> timedelta:
    """Re-read a little before the watermark so late corrections and page edges are caught."""
    return max(stream.step * 2, timedelta(hours=3))


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
    # watermarks stay put, so the next run re-reads the whole window (perpwatch/gaps.py, docs/reliability.md)
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

    def stat(self, source: str, dataset: str) -> DatasetStats:
        return self.stats.setdefault((source, dataset), DatasetStats(source, dataset))

    def totals(self) -> dict[str, int]:
        s = self.stats.values()
        return {k: sum(getattr(x, k) for x in s) for k in ("fetched", "loaded", "quarantined", "duplicate")}

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
        data = orjson.loads(body) if not getattr(parser, "raw_body", False) else body
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"response is not valid JSON ({exc}); {len(body)} bytes") from exc
    return parser(data, params, ParseContext(fetched_at, ctx_instruments))


@dataclass
class Parsed:
    frames: dict[str, list[pl.DataFrame]] = field(default_factory=lambda: defaultdict(list))


def parse_all(con, report: RunReport, payloads: Iterable[Fetched], ctx_instruments: dict) -> Parsed:
    out = Parsed()
    for p in payloads:
        if p.status != 200:
            continue
        try:
            frames = parse_payload(p.source, p.endpoint, p.params, p.body, p.fetched_at, ctx_instruments)
        except Exception as exc:  # a parser error quarantines this payload; the run goes on
            dataset = (p.stream or "unknown").split("/", 1)[0]
            report.tainted.add((p.source, p.stream or "", p.instrument or ""))
            msg = f"{p.source} {p.endpoint} [{p.instrument or '-'}]: unparseable payload raw_id={p.raw_id}: {exc}"
            report.warnings.append(msg)
            st = report.stat(p.source, dataset)
            st.quarantined_batches += 1
            st.messages.append(msg)
            warehouse.quarantine(con, batch_id=str(uuid.uuid4()), run_id=report.run_id, source=p.source,
                                 dataset=dataset, endpoint=p.endpoint, instrument=p.instrument,
                                 raw_ids=[p.raw_id], failed=[{"expectation": "parse", "message": str(exc)}],
                                 rows=0, sample=[p.body[:300].decode("utf-8", "replace")], message=msg)
            continue
        for table, df in frames.items():
            if df.height == 0:
                continue
            out.frames[table].append(df.with_columns(
                pl.lit(p.raw_id, pl.Int64).alias("raw_id"), pl.lit(p.source).alias("_source"),
                pl.lit(p.stream or "").alias("_stream"),
                # a payload covering several instruments (a websocket batch, a replayed payload) is
                # validated/quarantined per instrument: the row's own instrument, not the first row's
                (pl.lit(p.instrument) if p.instrument else pl.col("instrument").cast(pl.Utf8).fill_null("")
                 if "instrument" in df.columns else pl.lit("")).alias("_instrument"),
                pl.lit(p.endpoint).alias("_endpoint")))
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
    """Validate one dataset's batch for this run, quarantine failing (source, instrument) groups,
    upsert the rest on the grain with the watermarks in the same transaction."""
    if not frames:
        return
    df = pl.concat(frames, how="diagonal_relaxed")
    if table == "instruments":
        df = merge_instruments(df)
    df = df.with_columns(pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("ingested_at"))
    full = f"staging.{table}"
    key = warehouse.KEYS[full]
    for src in df["_source"].unique().to_list():
        report.stat(src, table).fetched += int((df["_source"] == src).sum())
    # Overlapping pages and re-fetched windows repeat keys across payloads: the newest payload wins,
    # the rest are counted as duplicates (reconciliation: fetched = loaded + quarantined + duplicate).
    deduped = df.unique(subset=key, keep="last", maintain_order=True)
    if deduped.height != df.height:
        dropped = df.group_by("_source").len().join(deduped.group_by("_source").len(), on="_source", how="left")
        for src, n_all, n_kept in dropped.iter_rows():
            report.stat(src, table).duplicate += n_all - (n_kept or 0)
        df = deduped
    outcome = validate(table, df.drop(INTERNAL, strict=False), now=now)
    check_finite(df, outcome)
    df = df.with_row_index("__pos")
    if outcome.success:
        bad_groups = pl.DataFrame(schema={"_source": pl.Utf8, "_instrument": pl.Utf8})
    elif outcome.table_level_failed or not outcome.bad_rows:
        bad_groups = df.select("_source", "_instrument").unique()
    else:
        bad_groups = (df.filter(pl.col("__pos").is_in(sorted(outcome.bad_rows)))
                      .select("_source", "_instrument").unique())
    failed = [{"expectation": f.expectation, "column": f.column, "unexpected_count": f.unexpected_count,
               "sample": f.sample} for f in outcome.failures]
    for src, inst in bad_groups.iter_rows():
        grp = df.filter((pl.col("_source") == src) & (pl.col("_instrument") == inst))
        bad = grp.filter(pl.col("__pos").is_in(sorted(outcome.bad_rows))) if outcome.bad_rows else grp
        endpoints = grp["_endpoint"].unique().to_list()
        what = "; ".join(f.describe() for f in outcome.failures)
        msg = f"{src} {','.join(endpoints)} [{inst}] {table}: failed validation: {what}"
        report.warnings.append(msg)
        st = report.stat(src, table)
        st.quarantined += grp.height
        st.quarantined_batches += 1
        st.messages.append(msg)
        report.tainted.update((src, stream, inst) for stream in grp["_stream"].unique().to_list())
        warehouse.quarantine(con, batch_id=str(uuid.uuid4()), run_id=report.run_id, source=src, dataset=table,
                             endpoint=",".join(endpoints), instrument=inst,
                             raw_ids=sorted(set(grp["raw_id"].to_list())), failed=failed, rows=grp.height,
                             sample=(bad if bad.height else grp).head(5).drop("__pos").to_dicts(), message=msg)
    good = df.join(bad_groups, on=["_source", "_instrument"], how="anti") if bad_groups.height else df
    for src in good["_source"].unique(maintain_order=True).to_list():
        part = good.filter(pl.col("_source") == src)
        st = report.stat(src, table)
        st.validation = "passed" if outcome.success else "partial"
        with warehouse.transaction(con):
            res = warehouse.upsert(con, full, part.drop(INTERNAL + ["__pos"], strict=False))
            if move_watermarks and table != "instruments":
                tcol = TIME_COLUMN.get(table, "ts")
                marks = (part.filter(pl.col("_stream") != "").group_by("_stream", "_instrument")
                         .agg(pl.col(tcol).max().alias("last")))
                for stream, inst, last in marks.iter_rows():
                    if (src, stream, inst) not in report.tainted:   # a failed page: re-read it all next run
                        warehouse.advance_watermark(con, src, stream, inst, last)
        st.loaded += res.loaded
        st.updated += res.updated
        st.duplicate += res.duplicate
    if not outcome.success:
        for src in bad_groups["_source"].unique().to_list():
            if report.stat(src, table).validation != "partial":
                report.stat(src, table).validation = "failed"


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
                                            [str(v) for v in df[c].gather(rows[:3]).to_list()]))


def enrich_open_interest_usd(con) -> int:
    """OI rows with only one of oi_base / oi_usd (no price when they were loaded) are valued exactly
    like value_open_interest does at load time, so the result does not depend on load order."""
    return con.execute("""
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
          AND (o.oi_usd IS NULL) <> (o.oi_base IS NULL)
        RETURNING 1""").fetchall().__len__()


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

def _window(con, stream: Stream, start: datetime | None, end: datetime) -> tuple[datetime, datetime]:
    from perpwatch import gaps

    gap = gaps.earliest_open(con, stream)       # rows missing inside stored history: re-read from there
    if start is not None:
        return (min(start, gap - overlap(stream)) if gap else start), end
    mark = warehouse.get_watermark(con, stream.source, stream.name, stream.instrument)
    begin = end - DEFAULT_LOOKBACK if mark is None else mark - overlap(stream)
    return (min(begin, gap - overlap(stream)) if gap else begin), end


def extract_unit(module, client, streams: list[Stream], windows: dict[Stream, tuple[datetime, datetime]],
                 report: RunReport) -> list[Fetched]:
    """Fetch every page of a (source, dataset) unit. An instrument that fails is reported; the others go on."""
    got: list[Fetched] = []
    for s in streams:
        start, end = windows[s]
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


@dataclass
class RunContext:
    """State of one run shared by its steps (plain functions, wired by pipeline.run or the flows)."""

    con: object
    report: RunReport
    modules: dict
    clients: dict
    assets: list[str]
    start: datetime | None
    end: datetime
    ctx_instruments: dict = field(default_factory=dict)


def open_run(kind: str = "run", start: datetime | None = None, end: datetime | None = None,
             venues: list[str] | None = None, assets: list[str] | None = None, db=None) -> RunContext:
    available = sources.available()
    if venues:
        chosen = venues
    else:
        chosen = settings.venues(list(sources.available(("venues",)))) + \
            settings.providers(list(sources.available(("providers",))))
    unknown = [v for v in chosen if v not in available]
    if unknown:
        raise ValueError(f"unknown or unimplemented venues {unknown}; available: {sorted(available)}")
    end = (end or settings.now()).astimezone(UTC)      # settings.now(): PERPWATCH_NOW or the system clock
    report = RunReport(run_id=f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", kind=kind)
    con = warehouse.connect(db)
    warehouse.start_run(con, report.run_id, kind)
    lander = warehouse.Lander(con, report.run_id)
    modules = {name: available[name] for name in chosen}
    # A source still banned by an earlier run is skipped (no request would do anything but extend the ban).
    for name, (until, reason) in warehouse.active_bans(con, settings.now()).items():
        if name in modules:
            del modules[name]
            report.warnings.append(f"{name}: skipped, banned until {until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC "
                                   f"(meta.venue_bans: {reason[:200]})")
    clients = {name: m.make_client(lander) for name, m in modules.items()}
    for c in clients.values():
        c.on_ban = report.banned
    assets = [validate_asset(a) for a in (assets or settings.assets())]
    return RunContext(con, report, modules, clients, assets,
                      start.astimezone(UTC) if start else None, end)


def refresh_instruments(rc: RunContext) -> pl.DataFrame:
    payloads: list[Fetched] = []
    for name, m in rc.modules.items():
        try:
            payloads += m.fetch_instruments(rc.clients[name])
        except Banned as exc:
            if exc.until is not None:
                rc.report.banned(name, exc.until, str(exc))
        except SourceError as exc:
            venue = getattr(m, "VENUE", name)
            known = rc.con.execute("SELECT count(*) FROM staging.instruments WHERE venue = ?", [venue]).fetchone()[0]
            if known:   # degraded, not failed: this run plans from the instruments stored by earlier runs
                rc.report.warnings.append(f"instruments not refreshed, using the {known} stored: {exc}")
            else:
                rc.report.errors.append(f"instruments failed: {exc}")
    parsed = parse_all(rc.con, rc.report, payloads, instrument_context(rc.con))
    load_table(rc.con, rc.report, "instruments", parsed.frames.get("instruments", []))
    rc.ctx_instruments = instrument_context(rc.con)
    return rc.con.sql("SELECT * FROM staging.instruments").pl()


def plan_units(rc: RunContext, instruments: pl.DataFrame) -> dict[tuple[str, str], list[Stream]]:
    """Coarse units of work, one per (source, stream kind) — e.g. ("okx", "long_short_ratio/accounts") —
    each with its instruments' streams. Venues budget per endpoint, so kinds run in parallel while
    the instruments of one kind share its budget in sequence. `streams[0].dataset` is the table."""
    units: dict[tuple[str, str], list[Stream]] = defaultdict(list)
    for name, m in rc.modules.items():
        for s in m.plan(instruments, rc.assets):
            try:   # names from venues end up in URLs, file names and logs: strict pattern first
                validate_instrument(s.instrument)
            except ValueError as exc:
                rc.report.warnings.append(f"{name}: skipped stream {s.name}: {exc}")
                continue
            units[(name, s.name)].append(s)
    return dict(units)


def windows_for(rc: RunContext, streams: list[Stream]) -> dict[Stream, tuple[datetime, datetime]]:
    w = {s: _window(rc.con, s, rc.start, rc.end) for s in streams}
    rc.report.windows.update(w)      # finish() checks these windows for gaps (perpwatch/gaps.py)
    return w


def run(kind: str = "run", start: datetime | None = None, end: datetime | None = None,
        venues: list[str] | None = None, assets: list[str] | None = None, db=None,
        build: bool = True, publish: bool = False, max_workers: int = 8,
        progress: Callable[[str], None] | None = None) -> RunReport:
    """One pass over every configured source: extract from watermarks (or a backfill window)."""
    say = progress or (lambda _m: None)
    rc = open_run(kind, start, end, venues, assets, db)
    try:
        instruments = refresh_instruments(rc)
        say(f"instruments: {instruments.height} known across {len(rc.modules)} sources")
        units = plan_units(rc, instruments)
        fetched: list[Fetched] = []
        windows = {key: windows_for(rc, ss) for key, ss in units.items()}   # DuckDB reads on this thread
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            futures = {pool.submit(extract_unit, rc.modules[n], rc.clients[n], ss, windows[(n, k)], rc.report):
                       (n, k, ss[0].dataset) for (n, k), ss in units.items()}
            for fut, (n, k, d) in futures.items():
                pages = fut.result()
                rc.report.stat(n, d).payloads += len(pages)
                fetched += pages
                say(f"fetched {n} {k}: {len(pages)} pages")
        load_parsed(rc.con, rc.report, fetched, rc.ctx_instruments)
    except Exception as exc:
        rc.report.errors.append(f"run aborted: {type(exc).__name__}: {exc}")
        finish(rc.con, rc.report)
        rc.con.close()
        raise
    finish(rc.con, rc.report)
    say(f"loaded: {rc.report.totals()} status={rc.report.status}")
    if build:
        build_and_publish(rc.con, publish)
    rc.con.close()
    return rc.report


def build_and_publish(con, publish: bool = False) -> dict[str, float]:
    from transforms import build_all

    timings = build_all(con)
    if publish:
        warehouse.publish(con=con)
    from perpwatch import alerts  # webhook delivery of new alerts; disabled without PERPWATCH_ALERT_WEBHOOK

    delivery = alerts.deliver(con)
    for err in delivery.errors:
        log.warning(err)
    return timings


def load_parsed(con, report: RunReport, payloads: list[Fetched], ctx_instruments: dict,
                move_watermarks: bool = True) -> None:
    parsed = parse_all(con, report, payloads, ctx_instruments)
    for table in TABLE_ORDER:
        if table in parsed.frames:
            frames = parsed.frames[table]
            if table == "open_interest":
                frames = value_open_interest(con, frames)
            load_table(con, report, table, frames, move_watermarks=move_watermarks)
        if table == "prices":
            enrich_open_interest_usd(con)
    enrich_open_interest_usd(con)


def finish(con, report: RunReport) -> None:
    for source, (until, reason) in dict(report.bans).items():
        try:
            warehouse.record_ban(con, source, until, reason, report.run_id, settings.now())
        except Exception as exc:  # noqa: BLE001 - the run's record comes first
            report.errors.append(f"could not store the ban of {source}: {type(exc).__name__}: {exc}")
    if report.windows:
        from perpwatch import gaps

        try:
            gaps.detect(con, report)
        except Exception as exc:  # noqa: BLE001 - gap bookkeeping must not lose the run's record
            report.errors.append(f"gap detection failed: {type(exc).__name__}: {exc}")
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
    for s in report.stats.values():
        warehouse.record_dataset(con, report.run_id, s.source, s.dataset, s.fetched, s.loaded, s.quarantined,
                                 s.duplicate, s.payloads, s.validation, "; ".join(s.messages)[:2000])
    message = "; ".join(report.errors + report.warnings)[:4000]
    warehouse.finish_run(con, report.run_id, report.status, t["fetched"], t["loaded"], t["quarantined"],
                         t["duplicate"], message)


# --------------------------------------------------------------------------- replay

def replay(db=None, progress: Callable[[str], None] | None = None) -> RunReport:
    """Rebuild staging from raw.payloads with no network: every payload parsed like a fetched one."""
    say = progress or (lambda _m: None)
    report = RunReport(run_id=f"replay-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", kind="replay")
    con = warehouse.connect(db)
    try:
        warehouse.start_run(con, report.run_id, "replay")
        with warehouse.transaction(con):
            for table in TABLE_ORDER:
                con.execute(f"DELETE FROM staging.{table}")
        known = set(sources.ALL_MODULES)
        rows = con.execute("""SELECT raw_id, source, endpoint, params, fetched_at, http_status, body, encoding
                              FROM raw.payloads WHERE http_status = 200 ORDER BY raw_id""").fetchall()
        payloads = []
        for raw_id, source, endpoint, params, fetched_at, status, body, enc in rows:
            if source not in known:
                continue
            p = orjson.loads(params) if params else {}
            payloads.append(Fetched(raw_id, source, endpoint, p, status, warehouse.payload_body(body, enc),
                                    None, None, fetched_at))
        say(f"replaying {len(payloads)} payloads")
        is_inst = [p for p in payloads if _is_instrument_endpoint(p)]
        parsed = parse_all(con, report, is_inst, {})
        load_table(con, report, "instruments", parsed.frames.get("instruments", []), move_watermarks=False)
        ctx = instrument_context(con)
        rest = [p for p in payloads if not _is_instrument_endpoint(p)]
        load_parsed(con, report, rest, ctx, move_watermarks=False)
    finally:
        finish(con, report)
        con.close()
    return report


def _is_instrument_endpoint(p: Fetched) -> bool:
    module = sources.get(p.source)
    return p.endpoint in getattr(module, "INSTRUMENT_ENDPOINTS", ())
