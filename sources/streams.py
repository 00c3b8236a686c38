"""The websocket venue table: per venue, where its public liquidation stream is, how to subscribe,
keep it alive and tell data from control messages. The runtime (connect, reconnect, buffer, flush)
is perpwatch/ingest/collector.py; the landed batches are parsed by sources/liquidations.py.

| venue   | URL setting       | path                   | subscription                                   |
|---------|-------------------|------------------------|------------------------------------------------|
| binance | BINANCE_FSTREAM   | /market/ws/!forceOrder@arr | none (the path is the stream)              |
| bybit   | BYBIT_WS          | /v5/public/linear      | {"op":"subscribe","args":["allLiquidation.BTCUSDT",...]} |
| okx     | OKX_WS            | /ws/v5/public          | {"op":"subscribe","args":[{"channel":"liquidation-orders","instType":"SWAP"}]} |

Venue documentation the rules below follow:
- Binance USD-M "All Market Liquidation Order Streams" (`!forceOrder@arr`): no subscription message,
  events {"e":"forceOrder","o":{"s":...}}; combined streams wrap them as {"stream":..,"data":..}; a
  SUBSCRIBE reply is {"result":null,"id":..} or {"error":{...}}.
- Bybit v5 public "All Liquidation" (`allLiquidation.{symbol}`): subscribe with {"op":"subscribe",
  "args":[topics]}, at most 10 args per request; replies {"op":"subscribe","success":bool,"ret_msg":..};
  the connection needs an application ping {"op":"ping"} every 20 s.
- OKX v5 public "Liquidation orders channel": one subscription for all SWAP instruments; replies
  {"event":"subscribe"|"error",...}; the connection drops after 30 s without traffic, so the client
  sends the text "ping" (answered "pong") more often than that.

Every venue's raw.payloads.source and endpoint come from this table (the endpoint is the key of the
venue's parser in sources.liquidations.PARSERS).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from perpwatch.core import settings

BYBIT_ARGS_PER_REQUEST = 10     # Bybit v5: "up to 10 args for each subscription request" (stated for spot; kept for all)


@dataclass(frozen=True)
class WsVenue:
    """One venue's public liquidation stream. Subclasses hold the per-venue protocol."""

    venue: str
    source: str         # raw.payloads.source
    url_name: str       # PERPWATCH_URL_<url_name>
    path: str
    endpoint: str       # raw.payloads.endpoint = key in sources.liquidations.PARSERS
    ping_every_s: float | None = None   # application-level heartbeat the venue requires

    def url(self) -> str:
        return settings.url(self.url_name) + self.path

    def default_symbol(self, asset: str) -> str:
        """The asset's linear USDT perp when staging.instruments does not know the venue yet."""
        return f"{asset}USDT"

    def subscribe_messages(self, symbols: list[str]) -> list[str]:
        """Text frames to send after every (re)connect."""
        return []

    def ping_message(self) -> str | None:
        """The application heartbeat frame, sent every `ping_every_s`."""
        return None

    def classify(self, m) -> tuple[str, set[str], str | None]:
        """(kind, instruments, problem) of one decoded message; kind is data | control | other."""
        raise NotImplementedError


@dataclass(frozen=True)
class BinanceStream(WsVenue):
    def classify(self, m) -> tuple[str, set[str], str | None]:
        if isinstance(m, dict) and "stream" in m and "data" in m:
            m = m["data"]
        events = m if isinstance(m, list) else [m]
        syms = {e["o"].get("s") for e in events
                if isinstance(e, dict) and e.get("e") == "forceOrder" and isinstance(e.get("o"), dict)}
        if syms:
            return "data", syms, None
        if isinstance(m, dict) and ("result" in m or "error" in m):
            return "control", set(), str(m["error"]) if m.get("error") else None
        return "other", set(), None


@dataclass(frozen=True)
class BybitStream(WsVenue):
    def subscribe_messages(self, symbols: list[str]) -> list[str]:
        topics = [f"allLiquidation.{s}" for s in symbols]
        return [orjson.dumps({"op": "subscribe", "args": topics[i:i + BYBIT_ARGS_PER_REQUEST]}).decode()
                for i in range(0, len(topics), BYBIT_ARGS_PER_REQUEST)]

    def ping_message(self) -> str | None:
        return '{"op":"ping"}'

    def classify(self, m) -> tuple[str, set[str], str | None]:
        if not isinstance(m, dict):
            return "other", set(), None
        topic = str(m.get("topic", ""))
        if topic.startswith("allLiquidation."):
            rows = m.get("data")
            rows = [rows] if isinstance(rows, dict) else rows if isinstance(rows, list) else []
            return "data", {r.get("s") for r in rows if isinstance(r, dict)} | {topic.split(".", 1)[1]}, None
        if "op" in m or "success" in m:
            bad = m.get("op") == "subscribe" and m.get("success") is False
            return "control", set(), f"subscribe refused: {m.get('ret_msg')}" if bad else None
        return "other", set(), None


@dataclass(frozen=True)
class OkxStream(WsVenue):
    def default_symbol(self, asset: str) -> str:
        return f"{asset}-USDT-SWAP"

    def subscribe_messages(self, symbols: list[str]) -> list[str]:
        return [orjson.dumps({"op": "subscribe",
                              "args": [{"channel": "liquidation-orders", "instType": "SWAP"}]}).decode()]

    def ping_message(self) -> str | None:
        return "ping"

    def classify(self, m) -> tuple[str, set[str], str | None]:
        if not isinstance(m, dict):
            return "other", set(), None
        if "event" in m:
            bad = m.get("event") == "error"
            return "control", set(), f"error {m.get('code')}: {m.get('msg')}" if bad else None
        if (m.get("arg") or {}).get("channel") == "liquidation-orders" and isinstance(m.get("data"), list):
            return "data", {d.get("instId") for d in m["data"] if isinstance(d, dict)}, None
        return "other", set(), None


WS_VENUES: dict[str, WsVenue] = {
    # the /market base since Binance's 2026-04-23 split of the USD-M websocket hosts (docs/venues.md, upstream
    # changes): the legacy /ws path still completes the handshake but never pushes a message
    "binance": BinanceStream("binance", "binance_ws", "BINANCE_FSTREAM", "/market/ws/!forceOrder@arr", "!forceOrder@arr"),
    "bybit": BybitStream("bybit", "bybit_ws", "BYBIT_WS", "/v5/public/linear", "allLiquidation", ping_every_s=20.0),
    "okx": OkxStream("okx", "okx_ws", "OKX_WS", "/ws/v5/public", "liquidation-orders", ping_every_s=25.0),
}


def symbols_for(venue: str, assets: list[str], ctx_instruments: dict) -> list[str]:
    """Linear USDT perps of the assets: from staging.instruments when known, else the usual name
    (1000PEPEUSDT and the like are only found through the instruments table)."""
    out = []
    for asset in assets:
        known = sorted(inst for (v, inst), r in ctx_instruments.items()
                       if v == venue and r.get("asset") == asset and r.get("kind") == "perp"
                       and r.get("margin") in (None, "linear") and r.get("quote") in (None, "USDT")
                       and r.get("status") in (None, "trading"))
        out += known or [WS_VENUES[venue].default_symbol(asset)]
    return sorted(set(out))
