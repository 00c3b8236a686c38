"""Live liquidation capture from the venues' public websocket streams.

    perpwatch collect --seconds 600 --venues binance,bybit,okx --assets BTC,ETH,SOL

REST liquidation history is gone (Binance 2021-04-27, OKX April 2023), so liquidations are
captured live. This module is the runtime only; what is venue-specific (URLs, subscriptions,
heartbeats, which messages are data) is the venue table in sources/streams.py (`WS_VENUES`), and the
parsing is sources/liquidations.py.

Binance split its USD-M websocket base on 2026-04-23 into /public, /market and /private and retired
the legacy URLs ("Important WebSocket Change Notice — Base URL Split & Migration"): liquidations are
a regular market stream, `/market/ws/!forceOrder@arr`. The legacy `/ws/!forceOrder@arr` still
completes the handshake but never pushes a message (field report 2026-09), which is why every stream
has a SILENCE WATCHDOG: a connection that delivers no data message for `silence_s`
(PERPWATCH_WS_SILENCE, default 120 s) is closed, reconnected, counted and warned about, and a run in
which a stream delivered nothing at all ends `warning` naming the stream and URL. What each stream
delivered is stored per run in meta.ws_streams (`perpwatch status` shows the last message and
messages/hour per stream).

One asyncio task per venue keeps a connection open, resubscribes after every reconnect
(exponential backoff with jitter) and sends the application heartbeats Bybit and OKX require.
Data messages for the configured instruments are buffered as received; every `flush_every_s`
(or when a venue has `max_batch` messages waiting) each venue's buffer is landed as ONE
raw.payloads row (source binance_ws|bybit_ws|okx_ws, endpoint = stream/channel name, params
{"symbols": [...]}, body = JSON array of the messages) and loaded into staging.liquidations
through the same parse -> validate -> load path as REST (`pipeline.load_parsed`), so `perpwatch
replay` rebuilds the same rows. A message received twice (a reconnect that replays, a replay of
the raw batches) lands twice but loads once: the upsert on the grain
[venue, instrument, ts, side, price, qty_base] counts it as a duplicate.

The warehouse is opened per flush and closed again, so a long-running collector does not hold
the DuckDB write lock between flushes (`perpwatch run` can load meanwhile). If the warehouse is
locked the batch stays buffered and is retried at the next flush.

The whole `collect()` call is one meta.runs row of kind "collect".
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

import orjson

from perpwatch import sources, warehouse
from perpwatch.core import settings
from perpwatch.core.assets import validate_asset
from perpwatch.ingest import pipeline
from perpwatch.ingest.coverage import Coverage
from perpwatch.sources import streams
from perpwatch.sources.http import Fetched
from perpwatch.sources.streams import WsVenue

log = logging.getLogger("perpwatch.ingest.collector")

DATASET = "liquidations"


@dataclass
class CollectStats:
    """What one collect() call did. `status` is the meta.runs status (success|warning|failed)."""

    run_id: str
    status: str = "running"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    symbols: dict[str, list[str]] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))   # data messages kept
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))    # other instruments
    batches: dict[str, int] = field(default_factory=lambda: defaultdict(int))    # raw.payloads rows
    connects: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reconnects: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    silences: dict[str, int] = field(default_factory=lambda: defaultdict(int))   # watchdog reconnects
    last_message_at: dict[str, datetime] = field(default_factory=dict)          # last data message
    raw_ids: list[int] = field(default_factory=list)
    fetched: int = 0
    loaded: int = 0
    duplicate: int = 0
    quarantined: int = 0
    datasets: list[dict] = field(default_factory=list)   # per (source, dataset): RunReport.table()
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-friendly copy (for the flow wrapper / CLI)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                v = {k: list(x) if isinstance(x, list) else x for k, x in v.items()}
            elif isinstance(v, list):
                v = list(v)
            elif isinstance(v, datetime):
                v = v.isoformat()
            out[f.name] = v
        return out


# --------------------------------------------------------------------------- collector

@dataclass
class _Buffer:
    frames: list[bytes] = field(default_factory=list)
    instruments: set[str] = field(default_factory=set)
    last_at: datetime | None = None


class Collector:
    def __init__(self, db, venues: list[WsVenue], assets: list[str], flush_every_s: float, max_batch: int,
                 backoff_base_s: float, backoff_max_s: float, open_timeout_s: float, lock_wait_s: float,
                 say: Callable[[str], None], silence_s: float | None = None):
        self.db = db
        self.silence_s = float(silence_s if silence_s is not None else settings.ws_silence_s())
        self.venues = venues
        self.assets = assets
        self.flush_every_s = flush_every_s
        self.max_batch = max_batch
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.lock_wait_s = lock_wait_s
        self.say = say
        # One flush at a time: the timed flusher, a full buffer and the final flush can overlap, and two
        # transactions in one process updating the same watermark rows conflict ("Conflict on update").
        self._flush_lock = threading.Lock()
        self.report = pipeline.RunReport(
            run_id=f"collect-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}", kind="collect")
        self.stats = CollectStats(run_id=self.report.run_id, started_at=datetime.now(UTC))
        self.symbols: dict[str, list[str]] = {}
        self.buffers: dict[str, _Buffer] = {v.venue: _Buffer() for v in venues}
        self.failures: dict[str, list[str]] = defaultdict(list)   # connection attempts that failed
        self.stopping = False
        self.flush_now: asyncio.Event | None = None
        # connected seconds per venue and hour -> meta.liquidation_coverage at every flush (perpwatch/ingest/coverage.py)
        self.coverage = Coverage({v.source: v.venue for v in venues})

    # ------------------------------------------------------------------ setup / teardown (sync)
    def open(self, refresh_instruments: bool) -> None:
        with warehouse.session(self.db) as con:
            warehouse.start_run(con, self.report.run_id, "collect")
            ctx = pipeline.instrument_context(con)
            if refresh_instruments and any(v.venue == "okx" for v in self.venues):
                ctx = self._ensure_okx_instruments(con, ctx)
        for v in self.venues:
            self.symbols[v.venue] = streams.symbols_for(v.venue, self.assets, ctx)
        self.stats.symbols = {streams.WS_VENUES[k].source: s for k, s in self.symbols.items()}

    def _ensure_okx_instruments(self, con, ctx: dict) -> dict:
        """OKX sizes liquidations in contracts: load its instruments (ctVal) if staging lacks them."""
        if any(v == "okx" and r.get("contract_size") for (v, _), r in ctx.items()):
            return ctx
        module = sources.available(("venues",)).get("okx")
        if module is None:
            self.report.warnings.append("okx: no instrument metadata (ctVal) and sources.okx is not available; "
                                        "OKX liquidations will be quarantined until instruments are loaded")
            return ctx
        try:
            payloads = module.fetch_instruments(module.make_client(warehouse.Lander(con, self.report.run_id)))
            pipeline.load_parsed(con, self.report, payloads, ctx)
        except Exception as exc:  # noqa: BLE001 - the capture goes on; rows wait in quarantine/raw
            self.report.warnings.append(f"okx instruments refresh failed: {type(exc).__name__}: {exc}")
        return pipeline.instrument_context(con)

    def close(self) -> CollectStats:
        finished = datetime.now(UTC)
        seconds = (finished - self.stats.started_at).total_seconds()
        for v in self.venues:
            fails = self.failures.get(v.venue, [])
            received = self.stats.messages[v.source] + self.stats.skipped[v.source]
            if self.stats.connects[v.source] == 0:
                self.report.errors.append(f"{v.source}: never connected to {v.url()}"
                                          + (f" ({len(fails)} attempts, last: {fails[-1]})" if fails else ""))
            elif fails:
                self.report.warnings.append(f"{v.source}: {len(fails)} failed connection attempts "
                                            f"(last: {fails[-1]})")
            if self.stats.connects[v.source] and received == 0:
                # every stream we capture has liquidations of the whole market (or of our symbols) in any
                # busy minute: a connected stream that delivered nothing is a dead path or subscription
                self.report.warnings.append(
                    f"{v.source} {v.endpoint}: captured nothing in {seconds:.0f}s on {v.url()} although the "
                    f"stream normally has data (retired path? subscription refused?)")
            if self.stats.silences[v.source]:
                self.report.warnings.append(
                    f"{v.source} {v.endpoint}: silent for {self.silence_s:g}s {self.stats.silences[v.source]} "
                    f"time(s); reconnected each time")
        with warehouse.session(self.db, read_only=False) as con:
            for v in self.venues:
                con.execute("INSERT INTO meta.ws_streams VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [self.report.run_id, v.source, v.endpoint, v.url(), self.stats.started_at, finished,
                             self.stats.messages[v.source] + self.stats.skipped[v.source],
                             self.stats.messages[v.source], self.stats.last_message_at.get(v.source),
                             self.stats.silences[v.source], self.stats.reconnects[v.source]])
            pipeline.record(con, self.report)
        t = self.report.totals()
        s = self.stats
        s.status, s.finished_at = self.report.status, datetime.now(UTC)
        s.fetched, s.loaded, s.duplicate, s.quarantined = t["fetched"], t["loaded"], t["duplicate"], t["quarantined"]
        s.datasets = self.report.table()
        s.errors, s.warnings = list(self.report.errors), list(self.report.warnings)
        return s

    # ------------------------------------------------------------------ flushing
    def _take(self) -> dict[str, _Buffer]:
        taken = {k: b for k, b in self.buffers.items() if b.frames}
        for k in taken:
            self.buffers[k] = _Buffer()
        return taken

    def _put_back(self, taken: dict[str, _Buffer]) -> None:
        for k, old in taken.items():
            new = self.buffers[k]
            old.frames += new.frames
            old.instruments |= new.instruments
            old.last_at = new.last_at or old.last_at
            self.buffers[k] = old

    def flush_sync(self, taken: dict[str, _Buffer], covered: dict | None = None) -> bool:
        """Land each venue's batch as one raw payload and load it, and record the capture coverage.
        False = warehouse locked, retry later."""
        with self._flush_lock:
            return self._flush_locked(taken, covered)

    def _flush_locked(self, taken: dict[str, _Buffer], covered: dict | None = None) -> bool:
        try:
            con = warehouse.connect(self.db, wait_s=self.lock_wait_s)
        except warehouse.WarehouseLocked as exc:
            log.warning("collector: %s; keeping %d batches buffered", exc, len(taken))
            return False
        try:
            Coverage.write(con, covered or {})
            if not taken:
                return True
            lander = warehouse.Lander(con, self.report.run_id)
            fetched: list[Fetched] = []
            for venue, buf in taken.items():
                v = streams.WS_VENUES[venue]
                body = b"[" + b",".join(buf.frames) + b"]"
                symbols = self.symbols[venue]
                at = buf.last_at or datetime.now(UTC)
                raw_id = lander(v.source, v.endpoint, {"symbols": symbols}, 200, body, at)
                self.stats.raw_ids.append(raw_id)
                self.stats.batches[v.source] += 1
                self.report.stat(v.source, DATASET).payloads += 1
                # One Fetched per instrument (same raw_id, params narrowed to it): validation failures
                # quarantine that instrument only, and each instrument gets its own watermark.
                for sym in sorted(buf.instruments & set(symbols)):
                    fetched.append(Fetched(raw_id, v.source, v.endpoint, {"symbols": [sym]}, 200, body,
                                           stream=DATASET, instrument=sym, fetched_at=at))
            try:
                pipeline.load_parsed(con, self.report, fetched, pipeline.instrument_context(con))
            except Exception as exc:  # noqa: BLE001 - raw is landed; replay can load it later
                msg = f"load failed for raw_ids {[f.raw_id for f in fetched][:10]}: {type(exc).__name__}: {exc}"
                log.error("collector: %s", msg)
                self.report.errors.append(msg)
            self._trim()
            t = self.report.totals()
            self.say(f"flushed {sum(len(b.frames) for b in taken.values())} messages in {len(taken)} batches; "
                     f"totals loaded {t['loaded']} duplicate {t['duplicate']} quarantined {t['quarantined']}")
        finally:
            con.close()
        return True

    def _trim(self, keep: int = 100) -> None:
        """A long-running capture repeats the same warnings every flush: keep memory bounded."""
        for lst in [self.report.warnings, self.report.errors, *(st.messages for st in self.report.stats.values())]:
            if len(lst) > 2 * keep:
                dropped = len(lst) - keep
                lst[:] = [*lst[:keep // 2], f"... {dropped} similar messages omitted ...", *lst[-keep // 2:]]
        del self.stats.raw_ids[:-10_000]

    async def flush(self) -> None:
        taken = self._take()
        covered = self.coverage.take()      # every flush, messages or not: an outage is recorded too
        if not taken and not covered:
            return
        if not await asyncio.to_thread(self.flush_sync, taken, covered):
            self._put_back(taken)
            self.coverage.put_back(covered)

    async def flusher(self) -> None:
        while not self.stopping:
            try:
                await asyncio.wait_for(self.flush_now.wait(), timeout=self.flush_every_s)
            except TimeoutError:
                pass
            self.flush_now.clear()
            await self.flush()

    # ------------------------------------------------------------------ connections
    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: uniform in [d/2, d], d = min(max, base x 2^attempt)."""
        d = min(self.backoff_max_s, self.backoff_base_s * (2 ** min(attempt, 30)))
        return random.uniform(d / 2, d)

    def on_message(self, v: WsVenue, raw) -> str:
        """Buffer one frame; returns its kind (data | control | other) for the silence watchdog."""
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        if raw == "pong":
            return "control"
        try:
            m = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.debug("%s: non-JSON frame ignored: %.80s", v.source, raw)
            return "other"
        kind, syms, problem = v.classify(m)
        if problem and f"{v.source}: {problem}" not in self.report.warnings:
            self.report.warnings.append(f"{v.source}: {problem}")
            log.warning("%s: %s", v.source, problem)
        if kind != "data":
            return kind
        self.stats.last_message_at[v.source] = datetime.now(UTC)
        wanted = syms & set(self.symbols[v.venue])
        if not wanted:
            self.stats.skipped[v.source] += 1
            return kind
        buf = self.buffers[v.venue]
        buf.frames.append(raw.encode())
        buf.instruments |= wanted
        buf.last_at = datetime.now(UTC)
        self.stats.messages[v.source] += 1
        if len(buf.frames) >= self.max_batch:
            self.flush_now.set()
        return kind

    async def receive(self, v: WsVenue, ws, url: str) -> None:
        """Read frames until the server closes or the stream stays silent (no data message) for silence_s:
        then count it, warn, and close so run_venue reconnects. Also until the capture stops: on Python
        3.11 asyncio.wait_for loses a cancellation that arrives as recv() completes (CPython gh-86296), and
        a busy stream would then keep a stopped collector reading for ever."""
        last_data = time.monotonic()
        while not self.stopping:
            left = self.silence_s - (time.monotonic() - last_data)
            try:
                if left <= 0:
                    raise TimeoutError
                raw = await asyncio.wait_for(ws.recv(), timeout=left)
            except TimeoutError:
                self.stats.silences[v.source] += 1
                log.warning("%s %s: no data message for %gs on %s; reconnecting", v.source, v.endpoint,
                            self.silence_s, url)
                self.say(f"{v.source}: silent for {self.silence_s:g}s, reconnecting")
                await ws.close(1000, "silent stream")
                return
            if self.on_message(v, raw) == "data":
                last_data = time.monotonic()

    async def heartbeat(self, v: WsVenue, ws) -> None:
        msg = v.ping_message()
        if not msg or not v.ping_every_s:
            return
        while True:
            await asyncio.sleep(v.ping_every_s)
            await ws.send(msg)

    async def run_venue(self, v: WsVenue) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

        attempt = 0
        while not self.stopping:
            url = v.url()
            hb = None
            try:
                async with connect(url, open_timeout=self.open_timeout_s, ping_interval=20, ping_timeout=20,
                                   close_timeout=2, max_size=2 ** 23, max_queue=1024) as ws:
                    if self.stats.connects[v.source]:
                        self.stats.reconnects[v.source] += 1
                    self.stats.connects[v.source] += 1
                    self.coverage.connected(v.source)
                    self.say(f"{v.source}: connected to {url}"
                             + (f" (reconnect {self.stats.reconnects[v.source]})" if self.stats.reconnects[v.source]
                                else ""))
                    for sub in v.subscribe_messages(self.symbols[v.venue]):
                        await ws.send(sub)
                    hb = asyncio.ensure_future(self.heartbeat(v, ws))
                    before = self.stats.messages[v.source] + self.stats.skipped[v.source]
                    await self.receive(v, ws, url)
                    if self.stats.messages[v.source] + self.stats.skipped[v.source] > before:
                        attempt = 0          # it delivered: the next reconnect starts with a short delay
                    log.info("%s: connection closed (%s)", v.source, ws.close_reason or ws.close_code)
            except asyncio.CancelledError:
                raise
            except ConnectionClosed as exc:
                log.info("%s: connection lost: %s", v.source, exc)
            except InvalidURI:
                self.report.errors.append(f"{v.source}: invalid websocket URL {url!r}")
                return
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                self.failures[v.venue].append(f"{type(exc).__name__}: {exc}"[:300])
                del self.failures[v.venue][:-20]
                log.warning("%s: cannot connect to %s: %s", v.source, url, exc)
            except Exception as exc:  # noqa: BLE001 - a surprise must not end this venue's capture
                msg = f"{v.source}: unexpected {type(exc).__name__}: {exc}"[:300]
                if msg not in self.report.warnings:
                    self.report.warnings.append(msg)
                log.exception("%s: unexpected error; reconnecting", v.source)
            finally:
                self.coverage.disconnected(v.source)
                if hb is not None:
                    hb.cancel()
            if self.stopping:
                return
            delay = self.backoff(attempt)
            attempt += 1
            log.info("%s: reconnecting in %.2fs", v.source, delay)
            await asyncio.sleep(delay)

    async def run(self, seconds: float | None, stop_event: threading.Event | None) -> None:
        self.flush_now = asyncio.Event()
        tasks = [asyncio.ensure_future(self.run_venue(v)) for v in self.venues]
        flusher = asyncio.ensure_future(self.flusher())
        deadline = time.monotonic() + seconds if seconds else None
        try:
            while (deadline is None or time.monotonic() < deadline) and not (stop_event and stop_event.is_set()):
                if all(t.done() for t in tasks):
                    break
                await asyncio.sleep(0.05 if deadline is None else min(0.05, max(0.0, deadline - time.monotonic())))
        finally:
            self.stopping = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self.flush()       # what arrived since the last flush
            if any(b.frames for b in self.buffers.values()):
                # warehouse still locked: wait for it this time rather than lose messages
                self.lock_wait_s = max(self.lock_wait_s, 300.0)
                await self.flush()


def _choose_venues(venues: list[str] | None) -> list[WsVenue]:
    if venues is None:
        env = settings.get().venues
        names = [v for v in env if v in streams.WS_VENUES] if env else list(streams.WS_VENUES)
    else:
        by_source = {w.source: k for k, w in streams.WS_VENUES.items()}
        names = [by_source.get(v.lower(), v.lower()) for v in venues]
        unknown = [v for v in names if v not in streams.WS_VENUES]
        if unknown:
            raise ValueError(f"no public liquidation stream for {unknown}; available: {sorted(streams.WS_VENUES)}")
    return [streams.WS_VENUES[n] for n in dict.fromkeys(names)]


def collect(db=None, venues: list[str] | None = None, assets: list[str] | None = None, seconds: float | None = 60,
            flush_every_s: float = 5, max_batch: int = 500, stop_event: threading.Event | None = None, *,
            backoff_base_s: float = 1.0, backoff_max_s: float = 60.0, open_timeout_s: float = 10.0,
            lock_wait_s: float = 10.0, refresh_instruments: bool = True,
            progress: Callable[[str], None] | None = None, silence_s: float | None = None) -> CollectStats:
    """Capture liquidations for `seconds` (None/0 = until `stop_event` is set), flushing every
    `flush_every_s` or at `max_batch` messages per venue. Returns what was captured and loaded."""
    say = progress or (lambda m: log.info("%s", m))
    chosen = _choose_venues(venues)
    assets = [validate_asset(a.upper()) for a in (assets or settings.assets())]
    c = Collector(db, chosen, assets, flush_every_s, max_batch, backoff_base_s, backoff_max_s, open_timeout_s,
                  lock_wait_s, say, silence_s)
    c.open(refresh_instruments)
    say(f"collecting {', '.join(f'{streams.WS_VENUES[k].source} {s}' for k, s in c.symbols.items())} "
        f"for {'ever' if not seconds else f'{seconds:g}s'} (run {c.report.run_id})")
    try:
        _run_loop(c.run(seconds, stop_event))
    except BaseException as exc:
        c.report.errors.append(f"collect aborted: {type(exc).__name__}: {exc}")
        c.close()
        raise
    return c.close()


def _run_loop(coro) -> None:
    """asyncio.run here, or in a fresh thread when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    box: list[BaseException] = []

    def target():
        try:
            asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001
            box.append(exc)

    t = threading.Thread(target=target, name="perpwatch-collector", daemon=True)
    t.start()
    t.join()
    if box:
        raise box[0]


def collect_until_signalled(progress: Callable[[str], None] | None = None, **kw) -> CollectStats:
    """`collect(**kw)` that SIGINT/SIGTERM stop cleanly (the pending batch is flushed): used by
    `perpwatch collect` and the collector flow (a cancelled flow run gets SIGTERM from its worker)."""
    import signal

    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        return collect(stop_event=stop, progress=progress, **kw)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(args) -> int:
    """`perpwatch collect`: args.db, args.venues, args.assets, args.seconds."""
    import sys

    stats = collect_until_signalled(db=args.db, venues=args.venues, assets=args.assets, seconds=args.seconds,
                                    progress=lambda m: print(m, file=sys.stderr))
    print(f"collect {stats.run_id}: {stats.status} — messages {dict(stats.messages)}, batches "
          f"{dict(stats.batches)}, reconnects {dict(stats.reconnects)}, silences {dict(stats.silences)}; rows fetched {stats.fetched}, loaded "
          f"{stats.loaded}, duplicate {stats.duplicate}, quarantined {stats.quarantined}")
    for e in stats.errors:
        print(f"  ERROR {e}", file=sys.stderr)
    for w in stats.warnings:
        print(f"  WARNING {w}", file=sys.stderr)
    return 0 if stats.status != "failed" else 1
