"""Liquidation websocket capture: parsers on the recorded messages (hand-computed values), and the
collector against a local websocket server that drops the first connection (reconnect, resubscribe,
raw batches, duplicates loaded once, per-instrument quarantine, replay), then against the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import polars as pl
import pytest

from perpwatch import sources, warehouse
from perpwatch.ingest import collector, pipeline
from perpwatch.sources import liquidations as liq
from perpwatch.sources import streams
from perpwatch.sources.base import ParseContext
from perpwatch.sources.http import Fetched

FETCHED = datetime(2026, 11, 20, tzinfo=UTC)
GRAIN = ["venue", "instrument", "ts", "side", "price", "qty_base"]
# Hand-copied from okx_api_v5_public_instruments.swap.json: ctVal / ctValCcy / ctType.
OKX_CTX = {("okx", "BTC-USDT-SWAP"): {"asset": "BTC", "contract_size": 0.01, "contract_unit": "base",
                                      "margin": "linear", "kind": "perp", "quote": "USDT", "status": "trading"},
           ("okx", "BTC-USD-SWAP"): {"asset": "BTC", "contract_size": 100.0, "contract_unit": "usd",
                                     "margin": "inverse", "kind": "perp", "quote": "USD", "status": "trading"}}


def ctx(instruments=None):
    return ParseContext(FETCHED, instruments or {})


def ms(t: int) -> datetime:
    return datetime.fromtimestamp(t / 1000, UTC)


def rows(frames) -> list[dict]:
    return frames["liquidations"].rows(named=True)


def fx(fixture, name):
    return fixture(f"liquidations/{name}")


# --------------------------------------------------------------------------- parsers

def test_binance_sell_is_a_long_liquidation(fixture):
    (r,) = rows(liq.parse_binance_force_order([fx(fixture, "binance_ws_forceOrder.json")], {}, ctx()))
    assert r == {"venue": "binance", "instrument": "BTCUSDT", "ts": datetime(2019, 9, 9, 7, 34, 20, 893000, UTC),
                 "side": "long", "price": 9910.0, "qty_base": 0.014, "asset": "BTC", "usd": pytest.approx(138.74)}


def test_binance_real_events_use_average_price(fixture):
    events = fx(fixture, "binance_ws_forceOrder.real_2022-04-25.json")      # a list of two events
    r0, r1 = rows(liq.parse_binance_force_order(events, {}, ctx()))
    # ap (average fill) 39021.00, not the order price p 38886.54; T (trade time), not E (event time)
    assert r0["ts"] == datetime(2022, 4, 25, 14, 52, 9, 196000, UTC)
    assert (r0["side"], r0["price"], r0["qty_base"]) == ("long", 39021.0, 0.288)
    assert r0["usd"] == pytest.approx(0.288 * 39021.0)          # 11238.048
    assert (r1["price"], r1["qty_base"], r1["usd"]) == (38986.5, 0.004, pytest.approx(155.946))


def test_binance_buy_is_a_short_liquidation_and_combined_stream_envelope(fixture):
    ev = fx(fixture, "binance_ws_forceOrder.json")
    ev["o"] = {**ev["o"], "S": "BUY", "ap": "0", "p": "10000", "q": "2", "z": "0"}   # no fills yet: p and q
    (r,) = rows(liq.parse_binance_force_order([{"stream": "!forceOrder@arr", "data": ev}], {}, ctx()))
    assert (r["side"], r["price"], r["qty_base"], r["usd"]) == ("short", 10000.0, 2.0, 20000.0)


def test_binance_coinm_contracts_to_base_with_contract_size(fixture):
    ev = fx(fixture, "binance_dapi_ws_forceOrder.json")     # BTCUSD_200925, q 1 contract, ap 9496.5
    inst = {("binance", "BTCUSD_200925"): {"contract_size": 100.0, "contract_unit": "usd", "margin": "inverse"}}
    (r,) = rows(liq.parse_binance_force_order([ev], {}, ctx(inst)))
    assert (r["instrument"], r["asset"], r["side"], r["price"]) == ("BTCUSD_200925", "BTC", "long", 9496.5)
    assert r["qty_base"] == pytest.approx(100.0 / 9496.5)      # 1 x 100 USD / 9496.5 = 0.0105302 BTC
    assert r["usd"] == pytest.approx(100.0)
    assert r["ts"] == ms(1591154240949)
    # contract size unknown -> qty_base null, which validation quarantines (never a guessed size)
    (u,) = rows(liq.parse_binance_force_order([ev], {}, ctx()))
    assert u["qty_base"] is None and u["usd"] is None


def test_bybit_sell_is_a_short_liquidation(fixture):
    (r,) = rows(liq.parse_bybit_all_liquidation([fx(fixture, "bybit_ws_allLiquidation.json")], {}, ctx()))
    assert r == {"venue": "bybit", "instrument": "ROSEUSDT", "ts": datetime(2025, 2, 14, 3, 5, 2, 929000, UTC),
                 "side": "short", "price": 0.04499, "qty_base": 20000.0, "asset": "ROSE",
                 "usd": pytest.approx(899.8)}


def test_bybit_buy_is_a_long_liquidation_batched_rows_and_inverse(fixture):
    m = fx(fixture, "bybit_ws_allLiquidation.json")
    m["data"] = [{"T": 1739502302929, "s": "ROSEUSDT", "S": "Buy", "v": "100", "p": "0.05"},
                 {"T": 1739502302999, "s": "ROSEUSDT", "S": "Sell", "v": "300", "p": "0.04"}]
    inv = {"topic": "allLiquidation.BTCUSD", "type": "snapshot", "ts": 1739502303204,
           "data": [{"T": 1739502303000, "s": "BTCUSD", "S": "Buy", "v": "5000", "p": "100000"}]}
    ack = {"success": True, "ret_msg": "", "conn_id": "x", "op": "subscribe"}
    out = rows(liq.parse_bybit_all_liquidation([ack, m, inv], {}, ctx()))
    assert [(r["side"], r["qty_base"], r["usd"]) for r in out] == [
        ("long", 100.0, pytest.approx(5.0)), ("short", 300.0, pytest.approx(12.0)),
        ("long", pytest.approx(0.05), pytest.approx(5000.0))]      # inverse: 5000 USD / 100000 = 0.05 BTC


def test_okx_position_side_and_contracts_times_ctval(fixture):
    m = fx(fixture, "okx_ws_liquidation-orders.json")          # IOST-USDT-SWAP short, sz 13, bkPx 0.007831
    inst = {("okx", "IOST-USDT-SWAP"): {"contract_size": 10.0, "contract_unit": "base", "margin": "linear"}}
    (r,) = rows(liq.parse_okx_liquidation_orders([m], {}, ctx(inst)))
    assert r == {"venue": "okx", "instrument": "IOST-USDT-SWAP", "ts": datetime(2023, 8, 17, 10, 0, 34, 10000, UTC),
                 "side": "short", "price": 0.007831, "qty_base": 130.0, "asset": "IOST",
                 "usd": pytest.approx(1.01803)}                 # 13 contracts x 10 IOST x 0.007831
    (u,) = rows(liq.parse_okx_liquidation_orders([m], {}, ctx()))    # ctVal unknown -> quarantined later
    assert u["qty_base"] is None


def test_okx_net_mode_order_side_decides_and_inverse_swap():
    def msg(inst, pos, side, sz, px, ts):
        return {"arg": {"channel": "liquidation-orders", "instType": "SWAP"},
                "data": [{"instId": inst, "instType": "SWAP",
                          "details": [{"posSide": pos, "side": side, "sz": sz, "bkPx": px, "ts": ts, "bkLoss": "0"}]}]}

    body = [{"event": "subscribe", "arg": {"channel": "liquidation-orders", "instType": "SWAP"}},
            msg("BTC-USDT-SWAP", "net", "buy", "20", "60000", "1692266434010"),     # buy closes a short
            msg("BTC-USDT-SWAP", "net", "sell", "25", "60000.5", "1692266435000"),  # sell closes a long
            msg("BTC-USDT-SWAP", "long", "sell", "3", "59000", "1692266436000"),
            msg("BTC-USD-SWAP", "short", "buy", "5", "50000", "1692266437000")]      # 5 x 100 USD inverse
    out = rows(liq.parse_okx_liquidation_orders(body, {}, ctx(OKX_CTX)))
    assert [(r["side"], r["qty_base"], r["usd"]) for r in out] == [
        ("short", pytest.approx(0.2), pytest.approx(12000.0)),
        ("long", pytest.approx(0.25), pytest.approx(15000.125)),
        ("long", pytest.approx(0.03), pytest.approx(1770.0)),
        ("short", pytest.approx(0.01), pytest.approx(500.0))]
    with pytest.raises(ValueError, match="liquidated side"):
        liq.parse_okx_liquidation_orders([msg("BTC-USDT-SWAP", "net", "", "1", "1", "1")], {}, ctx(OKX_CTX))


def test_okx_retired_rest_body_has_the_same_items(fixture):
    # SHAPE_ONLY: placeholder values, so only the shape and the side mapping are asserted.
    out = liq.parse_okx_liquidation_orders(fx(fixture, "okx_api_v5_public_liquidation-orders.SHAPE_ONLY.json"),
                                           {}, ctx(OKX_CTX))["liquidations"]
    assert out.columns == list(liq.OUTPUT_SCHEMA)
    assert out.select("venue", "instrument", "side", "asset").rows() == [("okx", "BTC-USDT-SWAP", "long", "BTC")]


def test_params_symbols_filter_and_bad_messages(fixture):
    ev = fx(fixture, "binance_ws_forceOrder.json")
    eth = {**ev, "o": {**ev["o"], "s": "ETHUSDT"}}
    out = liq.parse_binance_force_order([ev, eth], {"symbols": ["ETHUSDT"]}, ctx())["liquidations"]
    assert out["instrument"].to_list() == ["ETHUSDT"]
    assert liq.parse_binance_force_order([{"result": None, "id": 1}], {}, ctx())["liquidations"].height == 0
    with pytest.raises(ValueError, match="side"):
        liq.parse_binance_force_order([{**ev, "o": {**ev["o"], "S": "HOLD"}}], {}, ctx())
    with pytest.raises(ValueError, match="missing field"):
        liq.parse_bybit_all_liquidation([{"topic": "allLiquidation.X", "data": [{"s": "X"}]}], {}, ctx())


def test_registered_for_replay_only():
    for src in ("binance_ws", "bybit_ws", "okx_ws"):
        assert sources.get(src) is liq
        assert src not in sources.VENUE_MODULES and src not in sources.PROVIDER_MODULES
    assert liq.INSTRUMENT_ENDPOINTS == ()
    assert {v.source: v.endpoint for v in streams.WS_VENUES.values()} == \
        {"binance_ws": "!forceOrder@arr", "bybit_ws": "allLiquidation", "okx_ws": "liquidation-orders"}
    assert {v.endpoint for v in streams.WS_VENUES.values()} == set(liq.PARSERS)


def test_backoff_is_exponential_with_jitter_and_capped():
    c = collector.Collector(None, [], [], 1, 1, backoff_base_s=0.5, backoff_max_s=8.0, open_timeout_s=1,
                            lock_wait_s=1, say=print)
    for attempt, cap in [(0, 0.5), (1, 1.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        d = [c.backoff(attempt) for _ in range(50)]
        assert all(cap / 2 <= x <= cap for x in d) and len(set(d)) > 1


def test_a_stopping_collector_stops_reading_a_busy_stream(fixture):
    """On Python 3.11 asyncio.wait_for can lose the cancellation that stops a venue's task (when recv()
    completes at that moment); with a stream that always has a next message, receive() still ends once the
    collector is stopping instead of reading for ever."""
    v = streams.WS_VENUES["binance"]
    c = collector.Collector(None, [v], ["BTC"], 1, 1000, backoff_base_s=0.1, backoff_max_s=1, open_timeout_s=1,
                            lock_wait_s=1, say=lambda _m: None)
    c.symbols = {"binance": ["BTCUSDT"]}
    frame = json.dumps(fx(fixture, "binance_ws_forceOrder.json"))

    class Busy:
        received = 0

        async def recv(self):
            self.received += 1
            if self.received == 5:
                c.stopping = True        # the capture stops; the task's cancellation is lost
            if self.received > 100:
                raise ConnectionError("still reading after the capture stopped")
            return frame

    async def main() -> int:
        c.flush_now = asyncio.Event()
        ws = Busy()
        await asyncio.wait_for(c.receive(v, ws, "ws://127.0.0.1:9/market/ws/!forceOrder@arr"), timeout=5)
        return ws.received

    assert asyncio.run(main()) == 5 and c.stats.messages["binance_ws"] == 5

def test_symbols_from_instruments_or_default_names():
    inst = {("binance", "1000PEPEUSDT"): {"asset": "PEPE", "kind": "perp", "margin": "linear", "quote": "USDT",
                                          "status": "trading"},
            ("binance", "PEPEUSDC"): {"asset": "PEPE", "kind": "perp", "margin": "linear", "quote": "USDC"}}
    assert streams.symbols_for("binance", ["BTC", "PEPE"], inst) == ["1000PEPEUSDT", "BTCUSDT"]
    assert streams.symbols_for("okx", ["BTC", "ETH"], OKX_CTX) == ["BTC-USDT-SWAP", "ETH-USDT-SWAP"]
    assert json.loads(streams.WS_VENUES["bybit"].subscribe_messages(["BTCUSDT", "ETHUSDT"])[0]) == \
        {"op": "subscribe", "args": ["allLiquidation.BTCUSDT", "allLiquidation.ETHUSDT"]}
    with pytest.raises(ValueError, match="no public liquidation stream"):
        collector.collect(venues=["hyperliquid"], seconds=1)


# --------------------------------------------------------------------------- a local websocket server

def _binance(sym, side, q, p, ap, t):
    return {"e": "forceOrder", "E": t + 5, "o": {"s": sym, "S": side, "o": "LIMIT", "f": "IOC", "q": q, "p": p,
                                                 "ap": ap, "X": "FILLED", "l": q, "z": q, "T": t}}


def _okx(inst, pos, side, sz, px, ts):
    return {"arg": {"channel": "liquidation-orders", "instType": "SWAP"},
            "data": [{"instId": inst, "instType": "SWAP", "instFamily": inst[:-5], "uly": inst[:-5],
                      "details": [{"bkLoss": "0", "bkPx": px, "ccy": "", "posSide": pos, "side": side, "sz": sz,
                                   "ts": ts}]}]}


def script(fixture) -> dict[str, tuple[list, list]]:
    """(messages on the first connection, which is then dropped; messages on every later one)."""
    real = fx(fixture, "binance_ws_forceOrder.real_2022-04-25.json")
    b = [fx(fixture, "binance_ws_forceOrder.json"), real[0],
         _binance("ETHUSDT", "BUY", "1.5", "3000", "3001", 1650898340000),   # not a configured asset
         real[1]]
    b_new = _binance("BTCUSDT", "BUY", "0.5", "40000", "40100.5", 1650900000000)
    y = [fx(fixture, "bybit_ws_allLiquidation.json"),
         {"topic": "allLiquidation.BTCUSDT", "type": "snapshot", "ts": 1739502303704,
          "data": [{"T": 1739502303500, "s": "BTCUSDT", "S": "Buy", "v": "0.5", "p": "96000.1"},
                   {"T": 1739502303600, "s": "BTCUSDT", "S": "Buy", "v": "0.002", "p": "96010"}]}]
    y_new = {"topic": "allLiquidation.BTCUSDT", "type": "snapshot", "ts": 1739502400500,
             "data": [{"T": 1739502400000, "s": "BTCUSDT", "S": "Sell", "v": "1.25", "p": "97000"}]}
    o = [fx(fixture, "okx_ws_liquidation-orders.json"),          # IOST-USDT-SWAP: ctVal unknown -> quarantine
         _okx("BTC-USDT-SWAP", "net", "sell", "25", "60000.5", "1692266435000")]
    o_new = _okx("BTC-USDT-SWAP", "short", "buy", "3", "61000", "1692266436000")
    return {"binance-fstream": (b, b + [b_new]), "bybit-ws": (y, y + [y_new]), "okx-ws": (o, o + [o_new])}


class FakeVenues:
    """Serves the three liquidation streams on one loopback port. Connection 1 of each stream sends its
    messages, waits until the collector has flushed every first-connection message it keeps (so the
    repeats land in a later batch) and drops (1011); later connections send the messages again plus
    new ones, then stay open, recording what the client sends."""

    def __init__(self, script: dict, first_kept: int):
        self.script = script
        self.first_kept = first_kept
        self.flushed = 0
        self.cv = threading.Condition()
        self.conns = {k: 0 for k in script}
        self.paths: dict[str, list[str]] = {k: [] for k in script}
        self.subs: dict[str, list] = {k: [] for k in script}
        self.received: dict[str, list[str]] = {k: [] for k in script}
        self.sent_all = {k: threading.Event() for k in script}
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(5)

    def _run(self, ready):
        from websockets.asyncio.server import serve

        async def main():
            self.stopped = asyncio.Event()
            async with serve(self._handler, "127.0.0.1", 0) as server:
                self.port = server.sockets[0].getsockname()[1]
                ready.set()
                await self.stopped.wait()

        self.loop.run_until_complete(main())

    async def _handler(self, ws):
        from websockets.exceptions import ConnectionClosed

        path = ws.request.path
        kind = path.strip("/").split("/")[0]
        n = self.conns[kind]
        self.conns[kind] += 1
        self.paths[kind].append(path)
        first, later = self.script[kind]
        try:
            if kind != "binance-fstream":
                sub = json.loads(await ws.recv())
                self.subs[kind].append(sub)
                ack = ({"success": True, "ret_msg": "", "conn_id": "c", "op": "subscribe"} if kind == "bybit-ws"
                       else {"event": "subscribe", "arg": sub["args"][0], "connId": "c"})
                await ws.send(json.dumps(ack))
            for m in first if n == 0 else later:
                await ws.send(json.dumps(m))
            if n == 0:
                await asyncio.to_thread(self._wait_first_flushed)
                await ws.close(1011, "simulated drop")
                return
            self.sent_all[kind].set()
            async for msg in ws:
                self.received[kind].append(msg)
                if msg == "ping":
                    await ws.send("pong")
        except ConnectionClosed:
            pass

    def on_progress(self, msg: str) -> None:
        m = re.match(r"flushed (\d+) messages", msg)
        if m:
            with self.cv:
                self.flushed += int(m.group(1))
                self.cv.notify_all()

    def _wait_first_flushed(self) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.flushed >= self.first_kept, timeout=10)

    def env(self) -> dict[str, str]:
        base = f"ws://127.0.0.1:{self.port}"
        return {"PERPWATCH_URL_BINANCE_FSTREAM": f"{base}/binance-fstream", "PERPWATCH_URL_BYBIT_WS": f"{base}/bybit-ws",
                "PERPWATCH_URL_OKX_WS": f"{base}/okx-ws"}

    def stop_when_all_sent(self, stop: threading.Event, settle_s: float = 0.2) -> None:
        def watch():
            for e in self.sent_all.values():
                e.wait(15)
            time.sleep(settle_s)
            stop.set()
        threading.Thread(target=watch, daemon=True).start()

    def reset_round(self):
        for e in self.sent_all.values():
            e.clear()

    def close(self):
        self.loop.call_soon_threadsafe(self.stopped.set)
        self.thread.join(5)


def _landed(con, source: str) -> list:
    out = []
    for (body, enc) in con.execute("SELECT body, encoding FROM raw.payloads WHERE source = ? ORDER BY raw_id",
                                   [source]).fetchall():
        msgs = orjson.loads(warehouse.payload_body(body, enc))
        assert isinstance(msgs, list)
        out += msgs
    return out


def _liquidations(con) -> pl.DataFrame:
    return con.sql("SELECT venue, instrument, ts, side, price, qty_base, asset, usd FROM staging.liquidations "
                   "ORDER BY ALL").pl()


def _seed_okx_instruments(db, fixture) -> bool:
    """OKX ctVal (BTC-USDT-SWAP 0.01 BTC; IOST deliberately unknown) as `perpwatch run` loads it: the
    instruments body landed raw and loaded by sources.okx, so replay knows it too. Without sources.okx
    in the checkout the rows go straight to staging (replay then cannot size OKX). True = via raw."""
    with warehouse.session(db) as con:
        if importlib.util.find_spec("perpwatch.sources.okx") is not None:
            okx = sources.get("okx")
            ep = next((e for e in okx.INSTRUMENT_ENDPOINTS if "instruments" in e), None)
            if ep is not None:
                body = json.dumps(fx(fixture, "okx_api_v5_public_instruments.swap.json")).encode()
                raw_id = warehouse.land(con, "okx", ep, {"instType": "SWAP"}, 200, body)
                report = pipeline.RunReport("seed", "test")
                pipeline.load_parsed(con, report, [Fetched(raw_id, "okx", ep, {"instType": "SWAP"}, 200, body)], {})
                size = con.execute("SELECT contract_size FROM staging.instruments WHERE venue='okx' "
                                   "AND instrument='BTC-USDT-SWAP'").fetchone()
                assert size == (0.01,), report.warnings
                return True
        df = pl.DataFrame([{"venue": v, "instrument": i, **r} for (v, i), r in OKX_CTX.items()])
        with warehouse.transaction(con):
            warehouse.upsert(con, "staging.instruments", df)
    return False


@pytest.fixture
def venues_server(fixture, monkeypatch):
    srv = FakeVenues(script(fixture), first_kept=3 + 2 + 2)    # ETHUSDT is not kept
    for k, v in srv.env().items():
        monkeypatch.setenv(k, v)
    # fast heartbeats so the test sees them
    fast = {k: dataclasses.replace(v, ping_every_s=0.1 if v.ping_every_s else None)
            for k, v in streams.WS_VENUES.items()}
    monkeypatch.setattr(streams, "WS_VENUES", fast)
    yield srv
    srv.close()


def _collect(db, srv, stop: threading.Event | None = None):
    stop = stop or threading.Event()
    srv.reset_round()
    srv.stop_when_all_sent(stop)
    return collector.collect(db=db, venues=["binance", "bybit", "okx"], assets=["BTC", "ROSE", "IOST"],
                             seconds=20, flush_every_s=0.1, max_batch=500, stop_event=stop,
                             backoff_base_s=0.05, backoff_max_s=0.2, refresh_instruments=False,
                             progress=srv.on_progress)


def test_collector_reconnects_lands_raw_loads_once_and_replays(venues_server, tmp_path, fixture):
    srv, db = venues_server, tmp_path / "w.duckdb"
    okx_instruments_from_raw = _seed_okx_instruments(db, fixture)
    stop = threading.Event()
    t0 = time.monotonic()
    stats = _collect(db, srv, stop)
    elapsed = time.monotonic() - t0
    assert stop.is_set()        # ended because every scripted message was sent, not by the 20 s deadline
    with warehouse.session(db) as con:     # connected time was recorded per venue (perpwatch/ingest/coverage.py)
        covered = dict(con.execute("SELECT venue, sum(covered_s) FROM meta.liquidation_coverage GROUP BY venue").fetchall())
    assert set(covered) == {"binance", "bybit", "okx"} and all(0 < s <= elapsed for s in covered.values()), covered

    # the first connection was dropped; the collector reconnected and resubscribed
    assert stats.connects == {"binance_ws": 2, "bybit_ws": 2, "okx_ws": 2}
    assert stats.reconnects == {"binance_ws": 1, "bybit_ws": 1, "okx_ws": 1}
    assert srv.paths["binance-fstream"] == ["/binance-fstream/market/ws/!forceOrder@arr"] * 2
    assert srv.subs["bybit-ws"] == [{"op": "subscribe", "args": ["allLiquidation.BTCUSDT", "allLiquidation.IOSTUSDT",
                                                                  "allLiquidation.ROSEUSDT"]}] * 2
    assert srv.subs["okx-ws"] == [{"op": "subscribe",
                                   "args": [{"channel": "liquidation-orders", "instType": "SWAP"}]}] * 2
    assert '{"op":"ping"}' in srv.received["bybit-ws"] and "ping" in srv.received["okx-ws"]
    # data messages kept (3 + 4 Binance, 2 + 3 Bybit, 2 + 3 OKX); the ETHUSDT event twice skipped
    assert stats.messages == {"binance_ws": 7, "bybit_ws": 5, "okx_ws": 5}
    assert stats.skipped == {"binance_ws": 2, "bybit_ws": 0, "okx_ws": 0}

    with warehouse.session(db) as con:
        # raw: every kept message landed as received, in batches (>= 2 per stream: one per connection here)
        for src, n in stats.messages.items():
            assert len(_landed(con, src)) == n
            assert stats.batches[src] >= 2
        (params, endpoint), = set(con.execute(
            "SELECT params, endpoint FROM raw.payloads WHERE source='bybit_ws'").fetchall())
        assert (json.loads(params), endpoint) == ({"symbols": ["BTCUSDT", "IOSTUSDT", "ROSEUSDT"]}, "allLiquidation")
        assert _landed(con, "binance_ws")[:2] == srv.script["binance-fstream"][0][:2]     # as received

        got = _liquidations(con)
        run = con.execute("SELECT kind, status, rows_fetched, rows_loaded, rows_duplicate, rows_quarantined "
                          "FROM meta.runs WHERE run_id = ?", [stats.run_id]).fetchone()
        q = con.execute("SELECT source, instrument, dataset FROM quarantine.batches").fetchall()
    # 4 Binance + 4 Bybit + 2 OKX distinct liquidations, whatever was received twice
    assert got.height == 10
    assert got.filter(pl.col("venue") == "binance").select("ts", "side", "price", "qty_base").rows() == [
        (datetime(2019, 9, 9, 7, 34, 20, 893000, UTC), "long", 9910.0, 0.014),
        (datetime(2022, 4, 25, 14, 52, 9, 196000, UTC), "long", 39021.0, 0.288),
        (datetime(2022, 4, 25, 14, 52, 16, 320000, UTC), "long", 38986.5, 0.004),
        (datetime(2022, 4, 25, 15, 20, tzinfo=UTC), "short", 40100.5, 0.5)]
    byb = got.filter(pl.col("venue") == "bybit")
    assert byb.select("instrument", "side", "qty_base").rows() == [
        ("BTCUSDT", "long", 0.5), ("BTCUSDT", "long", 0.002), ("BTCUSDT", "short", 1.25),
        ("ROSEUSDT", "short", 20000.0)]
    assert byb["usd"].to_list() == pytest.approx([48000.05, 192.02, 121250.0, 899.8])
    okx = got.filter(pl.col("venue") == "okx")
    assert okx.select("instrument", "side").rows() == [("BTC-USDT-SWAP", "long"), ("BTC-USDT-SWAP", "short")]
    assert okx["qty_base"].to_list() == pytest.approx([0.25, 0.03])          # 25 and 3 contracts x 0.01 BTC
    assert okx["usd"].to_list() == pytest.approx([15000.125, 1830.0])
    # IOST-USDT-SWAP has no ctVal: that instrument alone is quarantined (once per batch), the rest loads
    assert set(q) == {("okx_ws", "IOST-USDT-SWAP", "liquidations")} and stats.quarantined == 2
    # rows parsed: 7 + 7 + 5; loaded once each; the repeats after the reconnect are duplicates
    assert (stats.fetched, stats.loaded, stats.duplicate) == (19, 10, 7)
    assert run == ("collect", "warning", 19, 10, 7, 2) and stats.status == "warning"

    # the same messages again in a second run: the upsert on the grain loads nothing new
    again = _collect(db, srv)
    assert again.connects == {"binance_ws": 1, "bybit_ws": 1, "okx_ws": 1}
    assert (again.fetched, again.loaded, again.duplicate, again.quarantined) == (4 + 4 + 3, 0, 10, 1)
    with warehouse.session(db) as con:
        assert _liquidations(con).equals(got)

    # replay: staging rebuilt from raw.payloads alone gives the same liquidations
    rep = pipeline.replay(db)
    with warehouse.session(db) as con:
        replayed = _liquidations(con)
    if okx_instruments_from_raw:
        assert replayed.equals(got)
    else:   # sources.okx not in this checkout: OKX ctVal is unknown to replay, those rows wait in quarantine
        assert replayed.equals(got.filter(pl.col("venue") != "okx"))
    assert rep.stats[("binance_ws", "liquidations")].loaded == 4
    assert rep.stats[("bybit_ws", "liquidations")].loaded == 4


# --------------------------------------------------------------------------- the simulator

@pytest.mark.skipif(importlib.util.find_spec("perpwatch.simulator.ws") is None, reason="simulator websockets not built yet")
def test_collector_against_simulator_with_drops(tmp_path, monkeypatch):
    from perpwatch.simulator.server import start

    # a fixed market minute: the first 12 messages of each connection always include OKX BTC (asserted below)
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    sim = start(port=0, seed=7, now=now, universe=["BTC", "ETH", "SOL"], ws_speed=3600, ws_drop_after=12)
    venues = ["binance", "bybit"] + (["okx"] if importlib.util.find_spec("perpwatch.sources.okx") else [])
    try:
        for k, v in sim.env().items():
            monkeypatch.setenv(k, v)
        db = tmp_path / "sim.duckdb"
        # OKX ctVal comes from the simulator's REST instruments (refresh_instruments), landed raw too
        stats = collector.collect(db=db, venues=venues, assets=["BTC", "ETH", "SOL"], seconds=2.0,
                                  flush_every_s=0.3, backoff_base_s=0.05, backoff_max_s=0.2)
    finally:
        sim.stop()
    # every connection replays the same market minutes from the frozen `now` and is dropped after 12
    # messages: reconnects happen and the repeats load once
    for v in venues:
        src = f"{v}_ws"
        assert stats.reconnects[src] >= 1 and stats.messages[src] >= 24, stats.as_dict()
    assert stats.status == "success" and stats.quarantined == 0, stats.as_dict()
    assert stats.duplicate > 0 and stats.fetched == stats.loaded + stats.duplicate
    with warehouse.session(db) as con:
        got = _liquidations(con)
        inst = pipeline.instrument_context(con)
        distinct = 0
        for v in venues:
            src = f"{v}_ws"
            ep = streams.WS_VENUES[v].endpoint
            df = liq.PARSERS[ep](_landed(con, src), {"symbols": stats.symbols[src]}, ctx(inst))["liquidations"]
            distinct += df.unique(GRAIN).height
    assert got.height == distinct == sum(d["loaded"] for d in stats.datasets if d["dataset"] == "liquidations")
    assert set(got["venue"]) == set(venues) and set(got["side"]) <= {"long", "short"}
    assert (got["usd"] - got["price"] * got["qty_base"]).abs().max() < 1e-6
    assert got["ts"].min() >= now
    if "okx" in venues:     # contracts x ctVal: BTC-USDT-SWAP trades in 0.01 BTC steps
        btc = got.filter(pl.col("instrument") == "BTC-USDT-SWAP")["qty_base"]
        assert btc.len() > 0 and ((btc / 0.01).round(6) % 1 == 0).all()
    rep = pipeline.replay(db)
    with warehouse.session(db) as con:
        assert _liquidations(con).equals(got)
    assert rep.status == "success"


# --------------------------------------------------------------------------- issue 14: paths and the silence watchdog

@pytest.mark.skipif(importlib.util.find_spec("perpwatch.simulator.ws") is None, reason="simulator websockets not built yet")
def test_current_binance_path_captures_and_a_silent_legacy_path_ends_warning(tmp_path, monkeypatch):
    """Binance serves !forceOrder@arr under /market since the 2026-04-23 split; the legacy path handshakes
    and stays silent. The watchdog reconnects a silent stream, counts it, and the run ends `warning`
    naming the stream; meta.ws_streams records what each stream delivered."""
    from perpwatch.simulator.server import start

    now = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    sim = start(port=0, seed=7, now=now, universe=["BTC", "ETH", "SOL"], ws_speed=3600)
    try:
        for k, v in sim.env().items():
            monkeypatch.setenv(k, v)
        good = collector.collect(db=tmp_path / "a.duckdb", venues=["binance"], assets=["BTC", "ETH", "SOL"],
                                 seconds=2.0, flush_every_s=0.5, silence_s=1.0, refresh_instruments=False)
        assert streams.WS_VENUES["binance"].path == "/market/ws/!forceOrder@arr"
        assert good.status == "success", good.as_dict()
        assert good.messages["binance_ws"] > 0 and good.loaded > 0 and good.silences["binance_ws"] == 0

        legacy = dataclasses.replace(streams.WS_VENUES["binance"], path="/ws/!forceOrder@arr")
        monkeypatch.setitem(streams.WS_VENUES, "binance", legacy)
        bad = collector.collect(db=tmp_path / "b.duckdb", venues=["binance"], assets=["BTC"], seconds=2.6,
                                flush_every_s=0.5, silence_s=0.8, backoff_base_s=0.01, backoff_max_s=0.02,
                                refresh_instruments=False)
    finally:
        sim.stop()
    assert bad.connects["binance_ws"] >= 2 and bad.silences["binance_ws"] >= 2, bad.as_dict()
    assert bad.messages["binance_ws"] == 0 and bad.loaded == 0
    assert bad.status == "warning", bad.as_dict()
    assert any("binance_ws !forceOrder@arr: captured nothing" in w and "/ws/!forceOrder@arr" in w
               for w in bad.warnings), bad.warnings
    assert any("silent for 0.8s" in w for w in bad.warnings)
    with warehouse.session(tmp_path / "b.duckdb") as con:
        row = con.execute("SELECT source, stream, messages, kept, last_message_at, silences FROM meta.ws_streams").fetchall()
    assert row == [("binance_ws", "!forceOrder@arr", 0, 0, None, bad.silences["binance_ws"])]
    with warehouse.session(tmp_path / "a.duckdb") as con:
        (n, kept, last) = con.execute("SELECT messages, kept, last_message_at FROM meta.ws_streams").fetchone()
    assert n == good.messages["binance_ws"] + good.skipped["binance_ws"] and kept == good.messages["binance_ws"]
    assert last is not None


# --------------------------------------------------------------------------- capture coverage


def _at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 3, 2 + day, hour, minute, tzinfo=UTC)


def test_coverage_accounts_connected_seconds_per_hour_and_records_outages():
    """Connected 10:00-10:50 and 11:40-12:05; flushes at 10:30, 11:20 (no messages, stream down) and 12:05.
    Hour 10: 1800 + 1200 = 3000 s; hour 11: 0 (written at the 11:20 flush) + 1200; hour 12: 300."""
    from perpwatch.ingest.coverage import Coverage

    cov = Coverage({"binance_ws": "binance"}, start=_at(0, 10))
    cov.connected("binance_ws", _at(0, 10))
    con = warehouse.connect(":memory:")
    try:
        Coverage.write(con, cov.take(_at(0, 10, 30)), now=_at(0, 10, 30))
        cov.disconnected("binance_ws", _at(0, 10, 50))
        cov.disconnected("binance_ws", _at(0, 10, 55))          # idempotent
        Coverage.write(con, cov.take(_at(0, 11, 20)), now=_at(0, 11, 20))
        assert con.execute("SELECT hour, covered_s FROM meta.liquidation_coverage ORDER BY hour").fetchall() == [
            (_at(0, 10), 3000.0), (_at(0, 11), 0.0)]             # the outage hour is on record, uncovered
        cov.connected("binance_ws", _at(0, 11, 40))
        Coverage.write(con, cov.take(_at(0, 12, 5)), now=_at(0, 12, 5))
        assert con.execute("SELECT hour, covered_s FROM meta.liquidation_coverage ORDER BY hour").fetchall() == [
            (_at(0, 10), 3000.0), (_at(0, 11), 1200.0), (_at(0, 12), 300.0)]
    finally:
        con.close()
    # a venue with two streams is covered only while both are connected: 00:05-00:20 and 00:40-01:00
    two = Coverage({"a_ws": "binance", "b_ws": "binance"}, start=_at(1))
    two.connected("a_ws", _at(1))                             # b not yet: not covered
    two.connected("b_ws", _at(1, 0, 5))
    two.disconnected("b_ws", _at(1, 0, 20))
    two.connected("b_ws", _at(1, 0, 40))
    assert two.take(_at(1, 1)) == {("binance", _at(1)): 900.0 + 1200.0}


def test_a_collector_outage_is_uncovered_and_makes_no_false_surge(tmp_path, monkeypatch):
    """Days 0-4 the collector is connected 00:00-12:00 and down 12:00-24:00 (flushing every 3 h, no
    messages while down), capturing 1000 / 1100 / 1000 / 1100 / 1000 USD an hour; day 5 it is up all day
    at 1050 an hour. Days 0-4 are half covered (12 of 24 hours): scaled to 24 000 / 26 400 / ...; day 5:
    25 200. z(day 5) = (25 200 - 24 960) / sd(24 000, 26 400, 24 000, 26 400, 24 000) = 240 / sqrt(1 728 000).
    Without the coverage rows the half days read 12 000-13 200 and day 5 is a z = 19.35 "surge"."""
    from perpwatch.ingest.coverage import Coverage
    from perpwatch.transforms import build_all
    from tests.test_signals import MARTS, add_closes, write_settings

    settings = tmp_path / "signals.toml"
    write_settings(settings, {"liquidations": {"zscore_window_days": 5, "zscore_min_days": 3, "surge_zscore": 2.0,
                                               "min_hour_coverage": 0.9, "min_day_coverage": 0.5}})
    monkeypatch.setenv("PERPWATCH_SIGNALS", str(settings))
    db = tmp_path / "w.duckdb"
    c = collector.Collector(db, [streams.WS_VENUES["binance"]], ["BTC"], 1, 1, backoff_base_s=0.1,
                            backoff_max_s=1, open_timeout_s=1, lock_wait_s=5, say=lambda _m: None)
    c.coverage = Coverage({"binance_ws": "binance"}, start=_at(0))
    events = [(_at(d), "up") for d in range(6)] + [(_at(d, 12), "down") for d in range(5)]
    events += [(_at(0) + (k + 1) * (_at(0, 3) - _at(0)), "flush") for k in range(48)]   # every 3 h to day 6 00:00
    for t, what in sorted(events, key=lambda e: (e[0], e[1] != "flush")):
        if what == "up":
            c.coverage.connected("binance_ws", t)
        elif what == "down":
            c.coverage.disconnected("binance_ws", t)
        else:
            assert c.flush_sync({}, c.coverage.take(t))       # a flush without messages still writes coverage
    con = warehouse.connect(db)
    try:
        cov = con.execute("SELECT covered_s, count(*) FROM meta.liquidation_coverage GROUP BY ALL ORDER BY 1").fetchall()
        assert cov == [(0.0, 60), (3600.0, 84)]              # 5 x 12 outage hours on record; 5 x 12 + 24 covered
        add_closes(con, "BTC", [100.0] * 6)
        for d, per_hour in enumerate([1000, 1100, 1000, 1100, 1000, 1050]):
            for h in range(12 if d < 5 else 24):
                con.execute("INSERT INTO staging.liquidations (venue, instrument, ts, side, price, qty_base, asset, usd)"
                            " VALUES ('binance', 'BTCUSDT', ?, 'long', 100, ?, 'BTC', ?)",
                            [_at(d, h, 30), per_hour / 100, float(per_hour)])
        build_all(con, only=MARTS)
        df = con.sql("SELECT * FROM marts.daily_signals ORDER BY date").pl()
        assert df["liquidation_coverage"].to_list() == [0.5] * 5 + [1.0]
        assert df["liquidations_usd_est"].to_list() == [24000.0, 26400.0, 24000.0, 26400.0, 24000.0, 25200.0]
        assert df["liquidation_zscore"][5] == pytest.approx(240 / 1728000 ** 0.5)
        assert df["liquidation_surge"][5] is False
        # the same captures without coverage rows: the outage reads as quiet half days
        con.execute("DELETE FROM meta.liquidation_coverage")
        build_all(con, only=MARTS)
        z = con.execute("SELECT liquidation_zscore, liquidation_surge FROM marts.daily_signals ORDER BY date").fetchall()[5]
        assert z[0] == pytest.approx((25200 - 12480) / 432000 ** 0.5) and z[1] is True
    finally:
        con.close()
