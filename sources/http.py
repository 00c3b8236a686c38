"""HTTP for every source: a requests.Session with timeouts, shared rate budgets, retries
honouring Retry-After, and raw landing of every response before anything parses it."""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import requests

from perpwatch.core import settings

log = logging.getLogger("perpwatch.http")

SECRET_HEADER = re.compile(r"(key|token|secret|signature|auth)", re.I)
# Transport failures worth a retry: refused/reset connections, timeouts, and a body cut short by a
# reset after the headers (requests raises ChunkedEncodingError for that, not ConnectionError).
TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
             requests.exceptions.ContentDecodingError)


SECRET_QUERY = re.compile(r"([?&][^=&\s\"']*(?:key|token|secret|signature|auth)[^=&\s\"']*=)[^&\s\"']+", re.I)


class _RedactQuery(logging.Filter):
    """urllib3 logs every request line with its query string at DEBUG: hide secret parameters
    (e.g. Stooq's apikey, sent through the session's params) before the record is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(SECRET_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in args)
        if isinstance(record.msg, str):
            record.msg = SECRET_QUERY.sub(r"\1***", record.msg)
        return True


for _name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
    logging.getLogger(_name).addFilter(_RedactQuery())


def default_timeout() -> tuple[float, float]:
    """(connect, read) seconds; PERPWATCH_HTTP_TIMEOUT overrides the read timeout (default 30 s)."""
    read = float(settings.get().http_timeout)
    return (min(5.0, read), read)


class SourceError(RuntimeError):
    """Base error: always names source, endpoint and parameters."""

    def __init__(self, source: str, endpoint: str, params: dict | None, what: str, status: int | None = None):
        self.source, self.endpoint, self.params, self.status = source, endpoint, params or {}, status
        inst = _instrument_of(self.params)
        where = f"{source} {endpoint}" + (f" [{inst}]" if inst else "")
        super().__init__(f"{where}: {what}")


class RateLimited(SourceError):
    pass


class Banned(SourceError):
    """The venue refused us for longer than we are willing to wait (PERPWATCH_MAX_BAN_WAIT): skip it
    until `until` (a UTC datetime; the pipeline stores it in meta.venue_bans so later runs skip it too)."""

    def __init__(self, source: str, endpoint: str, params: dict | None, what: str, status: int | None = None,
                 until: datetime | None = None):
        super().__init__(source, endpoint, params, what, status)
        self.until = until


class BadRequest(SourceError):
    pass


class ServerError(SourceError):
    pass


class BadPayload(SourceError):
    pass


def _instrument_of(params: dict) -> str | None:
    for k in ("symbol", "instId", "instrument_name", "coin", "pair", "id", "currency", "ccy"):
        if k in params:
            return str(params[k])
    req = params.get("req")
    if isinstance(req, dict) and "coin" in req:
        return str(req["coin"])
    return None


class Budget:
    """A sliding-window budget (e.g. 2400 weight per 60 s), shared by every thread of a run.

    A request counts from when it is acquired until `window_s` after its answer came back (`settle`), never
    from when it was sent: the venue counted it somewhere in between, so counting it to the answer keeps
    every window of the venue's, fixed or sliding, within capacity whatever the thread and network jitter
    between taking the budget and the request reaching the venue. A request still in flight never expires.
    """

    def __init__(self, name: str, capacity: float, window_s: float):
        self.name, self.capacity, self.window_s = name, capacity, window_s
        self._events: deque[tuple[float, float]] = deque()    # (answered at, weight), in answer order
        self._used = 0.0                                       # weight of _events
        self._inflight = 0.0                                   # weight acquired and not settled yet
        self._lock = threading.Lock()
        self.blocked_until = 0.0
        self.waited_s = 0.0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            _, w = self._events.popleft()
            self._used -= w

    def acquire(self, weight: float = 1.0) -> None:
        """Wait until `weight` fits in the window and take it; the caller settles it once answered."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._expire(now)
                if now >= self.blocked_until and self._used + self._inflight + weight <= self.capacity:
                    self._inflight += weight
                    return
                if now < self.blocked_until:
                    wait = self.blocked_until - now
                else:   # the oldest answered request leaves the window then; only in-flight ones: poll
                    wait = self._events[0][0] + self.window_s - now if self._events else 0.01
            wait = max(wait, 0.001)
            self.waited_s += wait
            time.sleep(min(wait, 1.0))

    def settle(self, weight: float = 1.0) -> None:
        """The request that acquired `weight` was answered (or failed) now: it counts until now + window_s."""
        with self._lock:
            self._inflight = max(self._inflight - weight, 0.0)
            self._events.append((time.monotonic(), weight))
            self._used += weight

    def block_for(self, seconds: float) -> None:
        with self._lock:
            self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)

    def observe_used(self, used: float) -> None:
        """Align with the venue's own usage header (e.g. X-MBX-USED-WEIGHT-1M)."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            if used > self._used + self._inflight:
                extra = used - self._used - self._inflight
                self._events.append((now, extra))
                self._used += extra


@dataclass
class Fetched:
    """One landed response."""

    raw_id: int
    source: str
    endpoint: str
    params: dict
    status: int
    body: bytes
    stream: str | None = None
    instrument: str | None = None
    fetched_at: datetime = field(default_factory=settings.now)

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise BadPayload(self.source, self.endpoint, self.params,
                             f"response is not valid JSON ({exc}); {len(self.body)} bytes landed as raw_id {self.raw_id}") from exc


Lander = Callable[[str, str, dict, int, bytes, datetime], int]


class VenueClient:
    """Rate-limited HTTP client for one source. Every response is landed via `lander`."""

    def __init__(self, source: str, bases: dict[str, str], lander: Lander | None,
                 budgets: dict[str, Budget] | None = None, timeout: tuple[float, float] | None = None,
                 max_retries: int = 6, headers: dict[str, str] | None = None,
                 usage_header: tuple[str, str] | None = None):
        # bases: endpoint prefix -> settings URL name; "" is the default.
        self.source = source
        self.bases = bases
        self.lander = lander
        self.budgets = budgets or {}
        self.timeout = timeout or default_timeout()
        self.max_retries = max_retries
        self._blocked_until = 0.0      # after a 429/418: no request of this client before this (monotonic)
        self._block_lock = threading.Lock()
        self.usage_header = usage_header
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": "perpwatch/0.1 (+https://github.com/perpwatch)"})
        self._secret_headers = headers or {}
        self.stats = {"requests": 0, "retries": 0, "rate_limited": 0, "banned": 0, "server_errors": 0}
        self._stats_lock = threading.Lock()
        self.max_wait_s = settings.max_ban_wait_s()
        # Set once the venue banned us beyond max_wait_s: every later request of this client raises Banned
        # at once (no request is sent, which would only extend the ban). on_ban(source, until, reason) is
        # how the pipeline learns of it (it persists meta.venue_bans).
        self.banned: Banned | None = None
        self.on_ban: Callable[[str, datetime, str], None] | None = None

    def _prefix_for(self, endpoint: str) -> str:
        best = ""
        for prefix in self.bases:
            if prefix and endpoint.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return best

    def base_for(self, endpoint: str) -> str:
        return settings.url(self.bases[self._prefix_for(endpoint)])

    def _usage_header_for(self, endpoint: str) -> tuple[str, str] | None:
        """(header, budget) of the host serving `endpoint`: a dict keyed by base prefix keeps each host's
        usage header on its own budget (Binance spot's X-MBX-USED-WEIGHT-1M counts the spot 6000/min
        limit, not the futures 2400/min one)."""
        if isinstance(self.usage_header, dict):
            return self.usage_header.get(self._prefix_for(endpoint))
        return self.usage_header

    def ban(self, endpoint: str, params: dict, seconds: float, what: str, status: int | None) -> Banned:
        """Give the venue up until now + seconds (clock: settings.now()); returns the error to raise."""
        until = settings.now() + timedelta(seconds=seconds)
        err = Banned(self.source, endpoint, params, f"{what}; skipping {self.source} until {until:%Y-%m-%d %H:%M:%S} UTC "
                     f"({seconds:.0f}s > PERPWATCH_MAX_BAN_WAIT {self.max_wait_s:.0f}s)"
                     if seconds > self.max_wait_s else f"{what}; skipping {self.source} until {until:%Y-%m-%d %H:%M:%S} UTC",
                     status, until)
        with self._block_lock:
            if self.banned is None or (self.banned.until or until) < until:
                self.banned = err
        self._count("banned")
        if self.on_ban is not None:
            self.on_ban(self.source, until, str(err))
        return err

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def block_for(self, seconds: float) -> None:
        """Hold every request of this client (all threads, budgeted or not) for `seconds`."""
        with self._block_lock:
            self._blocked_until = max(self._blocked_until, time.monotonic() + seconds)
        for b in self.budgets.values():
            b.block_for(seconds)

    def _wait_unblocked(self) -> None:
        while True:
            with self._block_lock:
                wait = self._blocked_until - time.monotonic()
            if wait <= 0:
                return
            time.sleep(min(wait, 1.0))

    def scrub(self, text: str) -> str:
        """Replace secret header / session-parameter values (API keys) in a message with ***."""
        secrets = [v for k, v in {**self._secret_headers, **(self.session.params or {})}.items()
                   if v and SECRET_HEADER.search(str(k))]
        for v in secrets:
            text = text.replace(str(v), "***")
        return SECRET_QUERY.sub(r"\1***", text)

    def request(self, method: str, endpoint: str, params: dict | None = None, body: dict | None = None,
                costs: dict[str, float] | None = None, stream: str | None = None,
                instrument: str | None = None, ok_statuses: tuple[int, ...] = (200,)) -> Fetched:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        landed_params = dict(params) if body is None else dict(body)
        url = self.base_for(endpoint) + endpoint
        attempt = 0
        waited = 0.0          # seconds this request spent in backoff: capped by max_wait_s
        while True:
            attempt += 1
            if self.banned is not None:
                raise Banned(self.source, endpoint, landed_params, f"not requested: {self.banned}",
                             self.banned.status, self.banned.until)
            self._wait_unblocked()
            taken = [(self.budgets[name], cost) for name, cost in (costs or {}).items()
                     if name in self.budgets and cost > 0]
            for budget, cost in taken:
                budget.acquire(cost)
            self._count("requests")
            try:
                try:
                    resp = self.session.request(method, url, params=params if method == "GET" else None,
                                                json=body, timeout=self.timeout, headers=self._secret_headers)
                finally:    # answered or failed: the venue may have counted it up to now
                    for budget, cost in taken:
                        budget.settle(cost)
            except TRANSIENT as exc:
                if attempt > self.max_retries:
                    raise ServerError(self.source, endpoint, landed_params,
                                      self.scrub(f"connection failed: {type(exc).__name__}: {exc}")) from None
                log.info("%s %s: %s, retrying", self.source, endpoint, type(exc).__name__)
                self._backoff(attempt, None)
                continue
            # the run's clock (PERPWATCH_NOW when set, else the system clock): parsers stamp snapshots and cut
            # forming candles at fetched_at, so a run on a pinned clock lands on that clock throughout
            fetched_at = settings.now()
            content = resp.content
            raw_id = self.lander(self.source, endpoint, landed_params, resp.status_code, content, fetched_at) \
                if self.lander else 0
            header = self._usage_header_for(endpoint)
            if header and header[0] in resp.headers and header[1] in self.budgets:
                try:
                    self.budgets[header[1]].observe_used(float(resp.headers[header[0]]))
                except ValueError:
                    pass
            status = resp.status_code
            if status in ok_statuses:
                return Fetched(raw_id, self.source, endpoint, landed_params, status, content, stream,
                               instrument, fetched_at)
            retry_after = _retry_after(resp)
            snippet = self.scrub(content[:200].decode("utf-8", "replace"))
            low = content[:2000].lower()
            if status == 403 and b"too frequent" in low:
                # Bybit: HTTP 403 "access too frequent" = the IP is blocked; stop every session for at least
                # 10 minutes (Bybit v5 docs, rate-limit page; no Retry-After is documented). Retrying sooner
                # keeps the block alive, so give the venue up now and let later runs skip it.
                self._count("rate_limited")
                raise self.ban(endpoint, landed_params, max(retry_after or 0.0, BYBIT_403_STOP_S),
                               f"HTTP 403 access too frequent: {snippet}", status)
            if status in (429, 418) or _deribit_too_many(low):
                # 418 = Binance IP ban (2 min .. 3 days, Retry-After seconds); 429 = slow down; Deribit answers
                # error 10028 too_many_requests (checked in the body, whatever the HTTP status).
                self._count("banned" if status == 418 else "rate_limited")
                wait = retry_after if retry_after is not None else min(60.0, 2.0 ** attempt)
                if wait > self.max_wait_s or waited + wait > self.max_wait_s or attempt > self.max_retries:
                    raise self.ban(endpoint, landed_params, wait, f"HTTP {status} after {attempt} attempts: {snippet}",
                                   status)
                wait += random.uniform(0, 0.1 * wait + 0.05)     # jitter: threads do not return in lockstep
                self.block_for(wait)                              # every thread of this client waits
                log.warning("%s %s: HTTP %s, backing off %.1fs", self.source, endpoint, status, wait)
                waited += wait
                time.sleep(wait)
                continue
            if status >= 500:
                self._count("server_errors")
                if retry_after is not None and (retry_after > self.max_wait_s or waited + retry_after > self.max_wait_s):
                    raise self.ban(endpoint, landed_params, retry_after,
                                   f"HTTP {status} with Retry-After {retry_after:.0f}s: {snippet}", status)
                if attempt > self.max_retries:
                    raise ServerError(self.source, endpoint, landed_params, f"HTTP {status} after {attempt} attempts: {snippet}", status)
                waited += self._backoff(attempt, retry_after) or 0.0
                continue
            raise BadRequest(self.source, endpoint, landed_params, f"HTTP {status}: {snippet}", status)

    def get(self, endpoint: str, params: dict | None = None, **kw) -> Fetched:
        return self.request("GET", endpoint, params=params, **kw)

    def post(self, endpoint: str, body: dict, **kw) -> Fetched:
        return self.request("POST", endpoint, body=body, **kw)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        self._count("retries")
        base = retry_after if retry_after is not None else min(30.0, 0.25 * 2 ** (attempt - 1))
        wait = min(base + random.uniform(0, base * 0.25), self.max_wait_s)
        time.sleep(wait)
        return wait


BYBIT_403_STOP_S = 600.0      # Bybit: "stop all sessions for at least 10 minutes" after 403 access too frequent


def _deribit_too_many(body: bytes) -> bool:
    """Deribit's rate-limit answer: JSON-RPC error 10028 "too_many_requests" (docs.deribit.com, Errors and
    Rate Limits pages). The HTTP status carrying it is not pinned down in the docs we have, so the body decides."""
    return b'"too_many_requests"' in body or (b"10028" in body and b'"error"' in body)


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
