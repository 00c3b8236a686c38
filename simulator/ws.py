"""Websocket liquidation streams (Binance !forceOrder@arr, Bybit allLiquidation, OKX liquidation-orders).

The streams replay the market's liquidation events from the server's ``now`` onwards. With a
fixed ``now`` market time runs ``speed`` times faster than wall time (default 60: one market
minute per second); with the real clock (``now=None``) it runs in real time. Query parameters on
the websocket URL override per connection: ``?speed=600&drop_after=5&until=<ms>``.
``drop_after=N`` closes the connection (code 1011) after N data messages, to test reconnects.
``until`` (market ms; ``WSServer.until`` for every connection) ends the replay: once market time
reaches it, the connection is closed normally (1000, "end of replay").

A connection's market time starts at ``now`` and runs from its first subscription on, in windows
that end on whole seconds (a snapshot stream's 1 s bucket is never split): with a fixed ``now`` every
connection sends the same messages in the same order, so a reconnect replays what was sent before.
Per stream (binance-fstream, bybit-ws, okx-ws) the server counts ``connections[stream]`` and
``ended[stream]`` (connections that reached ``until``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import numpy as np
import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .market import GENESIS_MS, HOUR_MS
from .okx import LINEAR_CTVAL

TICK_S = 0.2
_conn_ids = itertools.count(1)


class WSServer:
    def __init__(self, sim, port: int = 0, speed: float = 60.0, drop_after: int | None = None,
                 until: int | None = None):
        self.sim = sim
        self.speed = float(speed)
        self.drop_after = drop_after
        self.until = until
        self.connections: Counter[str] = Counter()    # per stream
        self.ended: Counter[str] = Counter()          # connections that reached `until`
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._port_req = port
        self._cache: dict[tuple, dict] = {}
        self._cache_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="perpwatch-sim-ws", daemon=True)
        self.thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    _error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as e:  # noqa: BLE001
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.server = await serve(self._handler, "127.0.0.1", self._port_req, ping_interval=None,
                                  max_size=2**20)
        self.port = self.server.sockets[0].getsockname()[1] if hasattr(self.server, "sockets") else \
            list(self.server.sockets)[0].getsockname()[1]

    def stop(self) -> None:
        async def _close():
            self.server.close()
            await self.server.wait_closed()

        try:
            fut = asyncio.run_coroutine_threadsafe(_close(), self.loop)
            fut.result(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    # ------------------------------------------------------------------ events
    def _events(self, asset: str, venue: str, t0: int, t1: int) -> dict:
        """Liquidation events of asset/venue with ts in [t0, t1)."""
        h0 = (t0 - GENESIS_MS) // HOUR_MS
        h1 = (t1 - 1 - GENESIS_MS) // HOUR_MS + 1
        parts = []
        for h in range(h0, h1):
            key = (asset, venue, h)
            with self._cache_lock:
                ev = self._cache.get(key)
            if ev is None:
                ev = self.sim.market.liquidation_events(asset, h, h + 1, venue)
                with self._cache_lock:
                    if len(self._cache) > 4096:
                        self._cache.clear()
                    self._cache[key] = ev
            parts.append(ev)
        if not parts:
            return {"ts": np.zeros(0, dtype=np.int64)}
        ev = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        m = (ev["ts"] >= t0) & (ev["ts"] < t1)
        return {k: v[m] for k, v in ev.items()}

    @staticmethod
    def _latest_per_second(ev: dict) -> dict:
        """Keep only the last event of each 1000 ms bucket (snapshot streams)."""
        if len(ev["ts"]) == 0:
            return ev
        sec = ev["ts"] // 1000
        last = np.r_[sec[1:] != sec[:-1], True]
        return {k: v[last] for k, v in ev.items()}

    # ------------------------------------------------------------------ connection
    async def _handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        parts = urlsplit(path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        speed = float(q.get("speed", self.speed)) if self.sim.fixed_now is not None else 1.0
        seg = parts.path.strip("/").split("/")
        kind = seg[0] if seg else ""
        self.connections[kind] += 1
        n = self.connections[kind]
        drop = int(q["drop_after"]) if "drop_after" in q else self.drop_after
        faults = None
        if drop is None and self.sim.faults is not None:      # fault profile ws_disconnect
            drop = self.sim.faults.ws_drop_after(kind, n)
            faults = self.sim.faults if drop is not None else None     # counts the drop when it happens
        until = int(q["until"]) if "until" in q else self.until
        state = {"sent": 0, "drop": drop, "subs": set(), "speed": speed, "until": until, "kind": kind, "n": n,
                 "faults": faults}
        try:
            if kind == "binance-fstream":
                await self._binance(ws, seg[1:], q, state)
            elif kind == "bybit-ws":
                await self._bybit(ws, state)
            elif kind == "okx-ws":
                await self._okx(ws, state)
            else:
                await ws.close(1008, "unknown path")
        except ConnectionClosed:
            pass

    async def _send(self, ws: ServerConnection, obj, state: dict, data: bool = True) -> bool:
        if ws.state is not State.OPEN:
            return False
        await ws.send(orjson.dumps(obj).decode())
        if data:
            state["sent"] += 1
            if state["drop"] is not None and state["sent"] >= state["drop"]:
                if state["faults"] is not None:
                    state["faults"].ws_dropped(state["kind"], state["n"], state["sent"])
                await ws.close(1011, "simulated drop")
                return False
        return True

    async def _clock(self, ws: ServerConnection, state: dict):
        """Yield consecutive market-time windows [t0, t1) ending on whole seconds, from the first
        subscription on (until the connection closes, or closing it at ``until``)."""
        t_start = self.sim.now_ms()
        w0 = None
        cur = t_start
        until = state["until"]
        while ws.state is State.OPEN:
            await asyncio.sleep(TICK_S)
            if not state["subs"]:
                continue
            if w0 is None:        # market time runs from the first subscription
                w0 = time.monotonic() - TICK_S
            t1 = t_start + int((time.monotonic() - w0) * state["speed"] * 1000)
            t1 -= t1 % 1000
            if until is not None and t1 >= until:
                if until > cur:
                    yield cur, until
                if ws.state is State.OPEN:
                    self.ended[state["kind"]] += 1
                    await ws.close(1000, "end of replay")
                return
            if t1 > cur:
                yield cur, t1
                cur = t1

    def _assets(self) -> list[str]:
        return list(self.sim.market.universe)

    # ------------------------------------------------------------------ binance
    async def _binance(self, ws: ServerConnection, rest: list[str], q: dict, state: dict) -> None:
        # Binance split the USD-M websocket base on 2026-04-23 ("Important WebSocket Change Notice — Base URL
        # Split & Migration"): regular market streams such as !forceOrder@arr live under /market
        # (/market/ws/<streams>, /market/stream?streams=...). Only those paths are served. The legacy
        # /ws/... and /stream paths complete the handshake and then never push a message, as reported from
        # the real host in 2026-09 (docs/venues.md, corrections 2026-12-04).
        combined = False
        streams: set[str] = set()
        legacy = not rest or rest[0] != "market"
        rest = rest[1:] if not legacy else rest
        if rest and rest[0] == "ws" and len(rest) > 1:
            streams = set("/".join(rest[1:]).split("/"))
        elif rest and rest[0] == "stream":
            combined = True
            streams = set(q.get("streams", "").split("/")) - {""}
        if legacy:
            await ws.wait_closed()          # handshake done, nothing ever pushed
            return
        state["subs"] = streams

        async def reader():
            async for msg in ws:
                try:
                    m = orjson.loads(msg)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(m, dict) and m.get("method") in ("SUBSCRIBE", "UNSUBSCRIBE"):
                    ps = set(m.get("params") or [])
                    if m["method"] == "SUBSCRIBE":
                        state["subs"] |= ps
                    else:
                        state["subs"] -= ps
                    await ws.send(orjson.dumps({"result": None, "id": m.get("id")}).decode())
                elif isinstance(m, dict) and m.get("method") == "LIST_SUBSCRIPTIONS":
                    await ws.send(orjson.dumps({"result": sorted(state["subs"]), "id": m.get("id")}).decode())

        rt = asyncio.ensure_future(reader())
        try:
            from .binance import BinanceFapi

            names = {a: BinanceFapi.perp_name(None, a) for a in self._assets()}  # type: ignore[arg-type]
            async for t0, t1 in self._clock(ws, state):
                if rt.done():
                    return
                subs = state["subs"]
                if not subs:
                    continue
                allarr = "!forceOrder@arr" in subs
                msgs = []
                for a, (sym, sc) in names.items():
                    if not (allarr or f"{sym.lower()}@forceOrder" in subs):
                        continue
                    ev = self._latest_per_second(self._events(a, "binance", t0, t1))
                    spec = self.sim.market.spec(a)
                    pd = max(2, spec.decimals + (3 if sc > 1 else 0))
                    for k in range(len(ev["ts"])):
                        qty = f"{ev['qty'][k] / sc:.{spec.qty_decimals}f}"
                        if float(qty) == 0:
                            qty = f"{10 ** -spec.qty_decimals:.{spec.qty_decimals}f}" if spec.qty_decimals else "1"
                        tt = int(ev["ts"][k])
                        o = {"e": "forceOrder", "E": tt + 4,
                             "o": {"s": sym, "S": "SELL" if ev["long"][k] else "BUY", "o": "LIMIT", "f": "IOC",
                                   "q": qty, "p": f"{ev['price'][k] * sc:.{pd}f}",
                                   "ap": f"{ev['avg_price'][k] * sc:.{pd}f}", "X": "FILLED", "l": qty, "z": qty,
                                   "T": tt}}
                        stream = "!forceOrder@arr" if allarr else f"{sym.lower()}@forceOrder"
                        msgs.append((tt, {"stream": stream, "data": o} if combined else o))
                msgs.sort(key=lambda x: x[0])
                for _, m in msgs:
                    if not await self._send(ws, m, state):
                        return
        finally:
            rt.cancel()

    # ------------------------------------------------------------------ bybit
    async def _bybit(self, ws: ServerConnection, state: dict) -> None:
        conn_id = f"sim-{next(_conn_ids)}"

        async def reader():
            async for msg in ws:
                try:
                    m = orjson.loads(msg)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(m, dict):
                    continue
                op = m.get("op")
                if op in ("subscribe", "unsubscribe"):
                    args = set(m.get("args") or [])
                    if op == "subscribe":
                        state["subs"] |= args
                    else:
                        state["subs"] -= args
                    await ws.send(orjson.dumps({"success": True, "ret_msg": "", "conn_id": conn_id,
                                                "req_id": m.get("req_id", ""), "op": op}).decode())
                elif op == "ping":
                    await ws.send(orjson.dumps({"success": True, "ret_msg": "pong", "conn_id": conn_id,
                                                "req_id": m.get("req_id", ""), "op": "ping"}).decode())

        rt = asyncio.ensure_future(reader())
        try:
            names = {a: ("1000PEPEUSDT", 1000.0) if a == "PEPE" else (f"{a}USDT", 1.0) for a in self._assets()}
            async for t0, t1 in self._clock(ws, state):
                if rt.done():
                    return
                msgs = []
                for a, (sym, sc) in names.items():
                    topic = f"allLiquidation.{sym}"
                    if topic not in state["subs"]:
                        continue
                    ev = self._events(a, "bybit", t0, t1)
                    if len(ev["ts"]) == 0:
                        continue
                    spec = self.sim.market.spec(a)
                    pd = max(2, spec.decimals + (3 if sc > 1 else 0))
                    bucket = ev["ts"] // 500
                    for b in np.unique(bucket):
                        idx = np.nonzero(bucket == b)[0]
                        data = [{"T": int(ev["ts"][k]), "s": sym, "S": "Buy" if ev["long"][k] else "Sell",
                                 "v": f"{max(ev['qty'][k] / sc, 10 ** -spec.qty_decimals):.{spec.qty_decimals}f}",
                                 "p": f"{ev['price'][k] * sc:.{pd}f}"} for k in idx]
                        ts = int(b) * 500 + 500
                        msgs.append((ts, {"topic": topic, "type": "snapshot", "ts": ts, "data": data}))
                msgs.sort(key=lambda x: x[0])
                for _, m in msgs:
                    if not await self._send(ws, m, state):
                        return
        finally:
            rt.cancel()

    # ------------------------------------------------------------------ okx
    async def _okx(self, ws: ServerConnection, state: dict) -> None:
        conn_id = f"{next(_conn_ids):08x}"

        async def reader():
            async for msg in ws:
                if msg == "ping":
                    await ws.send("pong")
                    continue
                try:
                    m = orjson.loads(msg)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(m, dict):
                    continue
                op = m.get("op")
                if op in ("subscribe", "unsubscribe"):
                    for arg in m.get("args") or []:
                        ch = arg.get("channel")
                        key = (ch, arg.get("instType", "SWAP"))
                        if ch != "liquidation-orders":
                            await ws.send(orjson.dumps({"event": "error", "code": "60018",
                                                        "msg": f"Wrong URL or channel:{ch}", "connId": conn_id}).decode())
                            continue
                        if op == "subscribe":
                            state["subs"].add(key)
                        else:
                            state["subs"].discard(key)
                        await ws.send(orjson.dumps({"event": op, "arg": arg, "connId": conn_id}).decode())

        rt = asyncio.ensure_future(reader())
        try:
            async for t0, t1 in self._clock(ws, state):
                if rt.done():
                    return
                if ("liquidation-orders", "SWAP") not in state["subs"]:
                    continue
                msgs = []
                for a in self._assets():
                    ev = self._latest_per_second(self._events(a, "okx", t0, t1))
                    if len(ev["ts"]) == 0:
                        continue
                    ctv = LINEAR_CTVAL.get(a) or float(10 ** round(np.log10(100.0 / self.sim.market.spec(a).price)))
                    spec = self.sim.market.spec(a)
                    for k in range(len(ev["ts"])):
                        lg = bool(ev["long"][k])
                        sz = max(1, round(ev["qty"][k] / ctv))
                        d = {"bkLoss": "0", "bkPx": f"{ev['price'][k]:.{max(1, spec.decimals)}f}", "ccy": "",
                             "posSide": "long" if lg else "short", "side": "sell" if lg else "buy",
                             "sz": str(sz), "ts": str(int(ev["ts"][k]))}
                        msgs.append((int(ev["ts"][k]), {
                            "arg": {"channel": "liquidation-orders", "instType": "SWAP"},
                            "data": [{"details": [d], "instFamily": f"{a}-USDT", "instId": f"{a}-USDT-SWAP",
                                      "instType": "SWAP", "uly": f"{a}-USDT"}]}))
                msgs.sort(key=lambda x: x[0])
                for _, m in msgs:
                    if not await self._send(ws, m, state):
                        return
        finally:
            rt.cancel()
