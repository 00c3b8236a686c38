"""Loopback HTTP (+ websocket) server speaking the venues' public market-data APIs.

    from perpwatch.simulator.server import start
    sim = start(port=0, seed=7, now=datetime(2026, 11, 20, tzinfo=timezone.utc))
    os.environ.update(sim.env())
    ...
    sim.stop()

CLI: ``python -m perpwatch.simulator --port 8900 --seed 7 [--now 2026-11-20T00:00Z] [--env]``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from .common import Request, Response, Venue, text_response
from .faults import Faults
from .market import Market, to_ms

# module name -> venue classes it provides (looked up lazily so partial builds still run)
VENUE_MODULES = [
    "binance",
    "bybit",
    "okx",
    "hyperliquid",
    "deribit",
    "institutional",
]

HTTP_ENV = {
    "PERPWATCH_URL_BINANCE_FAPI": "binance-fapi",
    "PERPWATCH_URL_BINANCE_DAPI": "binance-dapi",
    "PERPWATCH_URL_BINANCE_SPOT": "binance-spot",
    "PERPWATCH_URL_BYBIT": "bybit",
    "PERPWATCH_URL_OKX": "okx",
    "PERPWATCH_URL_HYPERLIQUID": "hyperliquid",
    "PERPWATCH_URL_DERIBIT": "deribit",
    "PERPWATCH_URL_COINGECKO": "coingecko",
    "PERPWATCH_URL_FRED": "fred",
    "PERPWATCH_URL_STOOQ": "stooq",
    "PERPWATCH_URL_FARSIDE": "farside",
    "PERPWATCH_URL_SOSOVALUE": "sosovalue",
}
WS_ENV = {
    "PERPWATCH_URL_BINANCE_FSTREAM": "binance-fstream",
    "PERPWATCH_URL_BYBIT_WS": "bybit-ws",
    "PERPWATCH_URL_OKX_WS": "okx-ws",
}


class SimStats:
    """Request counters: ``requests[prefix]``, ``throttled[prefix]`` (429), ``banned[prefix]`` (418)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.status: Counter[tuple[str, int]] = Counter()
        self.throttled: Counter[str] = Counter()
        self.banned: Counter[str] = Counter()

    def record(self, venue: str, status: int) -> None:
        with self.lock:
            self.requests[venue] += 1
            self.status[(venue, status)] += 1
            if status == 429:
                self.throttled[venue] += 1
            elif status == 418:
                self.banned[venue] += 1

    @property
    def total_429(self) -> int:
        return sum(self.throttled.values())

    @property
    def total_418(self) -> int:
        return sum(self.banned.values())

    def __getitem__(self, key: str):  # stats["429"], stats["418"], stats["requests"]
        return {"requests": dict(self.requests), "429": self.total_429, "418": self.total_418,
                "throttled": dict(self.throttled), "banned": dict(self.banned)}[key]

    def as_dict(self) -> dict:
        return {"requests": dict(self.requests), "429": self.total_429, "418": self.total_418,
                "throttled": dict(self.throttled), "banned": dict(self.banned)}

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.status.clear()
            self.throttled.clear()
            self.banned.clear()

    def __repr__(self) -> str:
        return f"SimStats({self.as_dict()})"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "perpwatch-sim/1.0"
    sim: SimServer

    def log_message(self, format, *args):  # noqa: A002 - silence
        pass

    def _serve(self, method: str) -> None:
        sim = self.server.sim  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        path = parts.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seg = path.lstrip("/").split("/", 1)
        prefix = seg[0]
        sub = "/" + (seg[1] if len(seg) > 1 else "")
        venue = sim.venues.get(prefix)
        if venue is None:
            resp = text_response("Not Found", 404)
        else:
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            req = Request(method, sub, query, body, {k.lower(): v for k, v in self.headers.items()},
                          self.client_address[0])
            if sim.latency_ms > 0:
                time.sleep(sim.latency_ms / 1000.0)

            def handle(venue=venue, req=req) -> Response:
                try:
                    return venue.handle(req)
                except Exception as e:  # noqa: BLE001 - never kill the server thread
                    import traceback

                    traceback.print_exc()
                    return text_response(f"internal error: {e!r}", 500)

            faults = sim.faults
            resp, reset = faults.serve(prefix, req, handle) if faults is not None else (handle(), None)
            if reset is not None:          # injected connection reset
                sim.stats.record(prefix, 0)
                self._reset(resp, reset == "mid")
                return
        sim.stats.record(prefix if venue is not None else "?", resp.status)
        try:
            self._send(resp)
        except (BrokenPipeError, ConnectionResetError):   # the client gave up (timed out) meanwhile
            self.close_connection = True

    def _reset(self, resp: Response, mid_body: bool) -> None:
        """Reset the connection (RST), optionally after the headers and half of the body."""
        try:
            if mid_body:
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                self.wfile.write(resp.body[: len(resp.body) // 2])
                self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_HEAD(self):  # noqa: N802
        self._serve("GET")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class SimServer:
    """A running simulator. ``base_url``, ``port``, ``env()``, ``stop()``, ``stats``."""

    def __init__(self, port: int = 0, seed: int = 7, now: datetime | None = None, latency_ms: float = 0,
                 limits_scale: float = 1.0, universe=None, window_scale: float = 1.0,
                 ws_port: int | None = 0, ws_speed: float = 60.0, ws_drop_after: int | None = None,
                 market: Market | None = None, faults=None, fault_rate: float = 0.05,
                 fault_seed: int | None = None):
        self.seed = seed
        self.faults: Faults | None = None
        self.set_faults(faults, fault_rate, fault_seed)
        self.market = market or Market(seed, universe)
        self.universe = self.market.universe
        self.fixed_now = now
        self._fixed_now_ms = to_ms(now) if now is not None else None
        self.latency_ms = float(latency_ms)
        self.limits_scale = float(limits_scale)
        self.window_scale = float(window_scale)
        self.ws_speed = ws_speed
        self.ws_drop_after = ws_drop_after
        self.stats = SimStats()
        self.venues: dict[str, Venue] = {}
        for modname in VENUE_MODULES:
            try:
                mod = importlib.import_module(f"perpwatch.simulator.{modname}")
            except ModuleNotFoundError as e:
                if e.name == f"perpwatch.simulator.{modname}":
                    continue
                raise
            for cls in getattr(mod, "VENUES", []):
                v = cls(self)
                self.venues[v.prefix] = v
        self._warm = threading.Thread(target=self._warmup, name="perpwatch-sim-warm", daemon=True)
        self._warm.start()
        self.httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.sim = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="perpwatch-sim-http", daemon=True)
        self._thread.start()
        self.ws = None
        self.ws_port = None
        self.ws_url = None
        if ws_port is not None:
            try:
                from .ws import WSServer
            except ModuleNotFoundError as e:
                if e.name != "perpwatch.simulator.ws":
                    raise
            else:
                self.ws = WSServer(self, ws_port, speed=ws_speed, drop_after=ws_drop_after)
                self.ws_port = self.ws.port
                self.ws_url = f"ws://127.0.0.1:{self.ws_port}"

    def _warmup(self) -> None:
        """Generate the universe's series in the background so first requests are fast."""
        from .market import hour_of

        h = hour_of(self.now_ms())
        for a in self.universe[:64]:
            try:
                self.market.data(a, h)
            except Exception:  # noqa: BLE001
                return

    # clock ---------------------------------------------------------------
    def now_ms(self) -> int:
        if self._fixed_now_ms is not None:
            return self._fixed_now_ms
        return int(time.time() * 1000)

    def set_now(self, now: datetime | None) -> None:
        self.fixed_now = now
        self._fixed_now_ms = to_ms(now) if now is not None else None

    # faults --------------------------------------------------------------
    def set_faults(self, faults=None, rate: float = 0.05, seed: int | None = None, **options) -> Faults | None:
        """Turn fault injection on (profiles 'all' / 'NAME,NAME' / a Faults) or off (None)."""
        if faults is None or isinstance(faults, Faults):
            self.faults = faults
        else:
            self.faults = Faults(faults, rate, self.seed if seed is None else seed, **options)
        if self.faults is not None and not self.faults.profiles:
            self.faults = None
        return self.faults

    # env -----------------------------------------------------------------
    def env(self) -> dict[str, str]:
        out = {k: f"{self.base_url}/{p}" for k, p in HTTP_ENV.items()}
        if self.ws_url:
            out.update({k: f"{self.ws_url}/{p}" for k, p in WS_ENV.items()})
        if self.fixed_now is not None:
            # the client's clock for history depth ("30 days before now") and bans must be the venue's
            out["PERPWATCH_NOW"] = self.fixed_now.astimezone(UTC).isoformat()
        return out

    def stop(self) -> None:
        if self.ws is not None:
            self.ws.stop()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start(port: int = 0, seed: int = 7, now: datetime | None = None, latency_ms: float = 0,
          limits_scale: float = 1.0, universe=None, **kwargs) -> SimServer:
    """Start the simulator in background threads and return the running :class:`SimServer`.

    Extra keyword arguments: ``window_scale`` (multiplies rate-limit windows, default 1.0),
    ``ws_port`` (websocket port, 0 = ephemeral, None = no websocket server), ``ws_speed``
    (market seconds per wall second for liquidation replay, default 60), ``ws_drop_after``
    (close each websocket after N data messages), ``faults`` ('all' or 'NAME,NAME' or a
    ``simulator.faults.Faults``), ``fault_rate`` (share of request attempts faulted, default 0.05),
    ``fault_seed`` (default: ``seed``); see simulator/faults.py.
    """
    return SimServer(port=port, seed=seed, now=now, latency_ms=latency_ms, limits_scale=limits_scale,
                     universe=universe, **kwargs)


def parse_now(s: str) -> datetime:
    s = s.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perpwatch.simulator", description="perpwatch venue simulator")
    ap.add_argument("--port", type=int, default=8900)
    ap.add_argument("--ws-port", type=int, default=None, help="websocket port (default: port+1)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--now", default=None, help="fixed clock, ISO 8601 (default: real time)")
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--limits-scale", type=float, default=1.0)
    ap.add_argument("--window-scale", type=float, default=1.0)
    ap.add_argument("--ws-speed", type=float, default=60.0)
    ap.add_argument("--ws-drop-after", type=int, default=None)
    ap.add_argument("--universe", default=None, help="comma separated assets, e.g. BTC,ETH,SOL")
    ap.add_argument("--synthetic", type=int, default=0, help="add N synthetic assets S001..")
    ap.add_argument("--faults", default=None, help="fault profiles NAME[,NAME] or all (see simulator/faults.py)")
    ap.add_argument("--fault-rate", type=float, default=0.05, help="share of request attempts faulted")
    ap.add_argument("--fault-seed", type=int, default=None, help="seed of the fault draws (default: --seed)")
    ap.add_argument("--env", action="store_true", help="print export lines and exit")
    a = ap.parse_args(argv)
    if a.faults:
        from .faults import parse_profiles

        try:
            parse_profiles(a.faults)
        except ValueError as exc:
            ap.error(str(exc))
    universe = a.universe.split(",") if a.universe else None
    if a.synthetic:
        from .market import DEFAULT_UNIVERSE, synthetic

        universe = (universe or list(DEFAULT_UNIVERSE)) + synthetic(a.synthetic)
    ws_port = a.ws_port if a.ws_port is not None else (a.port + 1 if a.port else 0)
    if a.env:
        base = f"http://127.0.0.1:{a.port}"
        wsb = f"ws://127.0.0.1:{ws_port}"
        for k, p in HTTP_ENV.items():
            print(f"export {k}={base}/{p}")
        for k, p in WS_ENV.items():
            print(f"export {k}={wsb}/{p}")
        return 0
    now = parse_now(a.now) if a.now else None
    sim = start(port=a.port, seed=a.seed, now=now, latency_ms=a.latency_ms, limits_scale=a.limits_scale,
                universe=universe, window_scale=a.window_scale, ws_port=ws_port, ws_speed=a.ws_speed,
                ws_drop_after=a.ws_drop_after, faults=a.faults, fault_rate=a.fault_rate,
                fault_seed=a.fault_seed)
    for k, v in sim.env().items():
        print(f"export {k}={v}")
    if sim.faults is not None:
        print(f"# faults: {', '.join(sim.faults.profiles)} at rate {sim.faults.rate} (seed {sim.faults.seed})",
              file=sys.stderr)
    sys.stdout.flush()
    stop = threading.Event()

    def _sig(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, _sig)
    signal.signal(signal.SIGTERM, _sig)
    while not stop.is_set():
        stop.wait(0.5)
    sim.stop()
    return 0
