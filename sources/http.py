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
from datetime import UTC, datetime
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
    pass


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
    """A sliding-window budget (e.g. 2400 weight per 60 s), shared by every thread of a run."""

    def __init__(self, name: str, capacity: float, window_s: float):
        self.name, self.capacity, self.window_s = name, capacity, window_s
        self._events: deque[tuple[float, float]] = deque()
        self._used = 0.0
        self._lock = threading.Lock()
        self.blocked_until = 0.0
        self.waited_s = 0.0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            _, w = self._events.popleft()
            self._used -= w

    def acquire(self, weight: float = 1.0) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self._expire(now)
                if now >= self.blocked_until and self._used + weight <= self.capacity:
                    self._events.append((now, weight))
                    self._used += weight
                    return
                if now < self.blocked_until:
                    wait = self.blocked_until - now
                else:
                    wait = self._events[0][0] + self.window_s - now if self._events else 0.01
            wait = max(wait, 0.001)
            self.waited_s += wait
            time.sleep(min(wait, 1.0))

    def block_for(self, seconds: float) -> None:
        with self._lock:
            self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)

    def observe_used(self, used: float) -> None:
        """Align with the venue's own usage header (e.g. X-MBX-USED-WEIGHT-1M)."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            if used > self._used:
                extra = used - self._used
                self._events.append((now, extra))
                self._used = used


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
    fetched_at: datetime = field(default_factory=lambda: datetime.now(UTC))

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

    def base_for(self, endpoint: str) -> str:
        best = ""
        for prefix in self.bases:
            if prefix and endpoint.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return settings.url(self.bases[best])

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
        while True:
            attempt += 1
            self._wait_unblocked()
            for name, cost in (costs or {}).items():
                if name in self.budgets and cost > 0:
                    self.budgets[name].acquire(cost)
            self._count("requests")
            try:
                resp = self.session.request(method, url, params=params if method == "GET" else None,
                                            json=body, timeout=self.timeout, headers=self._secret_headers)
            except TRANSIENT as exc:
                if attempt > self.max_retries:
                    raise ServerError(self.source, endpoint, landed_params,
                                      self.scrub(f"connection failed: {type(exc).__name__}: {exc}")) from None
                log.info("%s %s: %s, retrying", self.source, endpoint, type(exc).__name__)
                self._backoff(attempt, None)
                continue
            fetched_at = datetime.now(UTC)
            content = resp.content
            raw_id = self.lander(self.source, endpoint, landed_params, resp.status_code, content, fetched_at) \
                if self.lander else 0
            if self.usage_header and self.usage_header[0] in resp.headers and self.usage_header[1] in self.budgets:
                try:
                    self.budgets[self.usage_header[1]].observe_used(float(resp.headers[self.usage_header[0]]))
                except ValueError:
                    pass
            status = resp.status_code
            if status in ok_statuses:
                return Fetched(raw_id, self.source, endpoint, landed_params, status, content, stream,
                               instrument, fetched_at)
            retry_after = _retry_after(resp)
            snippet = self.scrub(content[:200].decode("utf-8", "replace"))
            if status in (429, 418) or (status == 403 and b"too frequent" in content.lower()):
                self._count("banned" if status == 418 else "rate_limited")
                wait = retry_after if retry_after is not None else min(60.0, 2.0 ** attempt)
                wait += random.uniform(0, 0.1 * wait + 0.05)     # jitter: threads do not return in lockstep
                self.block_for(wait)                              # every thread of this client waits
                if attempt > self.max_retries:
                    cls = Banned if status == 418 else RateLimited
                    raise cls(self.source, endpoint, landed_params, f"HTTP {status} after {attempt} attempts: {snippet}", status)
                log.warning("%s %s: HTTP %s, backing off %.1fs", self.source, endpoint, status, wait)
                time.sleep(min(wait, 120.0))
                continue
            if status >= 500:
                self._count("server_errors")
                if attempt > self.max_retries:
                    raise ServerError(self.source, endpoint, landed_params, f"HTTP {status} after {attempt} attempts: {snippet}", status)
                self._backoff(attempt, retry_after)
                continue
            raise BadRequest(self.source, endpoint, landed_params, f"HTTP {status}: {snippet}", status)

    def get(self, endpoint: str, params: dict | None = None, **kw) -> Fetched:
        return self.request("GET", endpoint, params=params, **kw)

    def post(self, endpoint: str, body: dict, **kw) -> Fetched:
        return self.request("POST", endpoint, body=body, **kw)

    def _backoff(self, attempt: int, retry_after: float | None) -> None:
        self._count("retries")
        base = retry_after if retry_after is not None else min(30.0, 0.25 * 2 ** (attempt - 1))
        time.sleep(base + random.uniform(0, base * 0.25))


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
