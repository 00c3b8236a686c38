"""Every registered source keeps the declared interface (perpwatch.sources.interface): each module of
sources.ALL_MODULES, each REST venue/provider, each websocket venue of sources.streams.WS_VENUES."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl
import pytest

from perpwatch import sources, warehouse
from perpwatch.core.assets import validate_instrument
from perpwatch.sources import liquidations, streams
from perpwatch.sources.base import ParseContext, Parser, Stream
from perpwatch.sources.http import VenueClient
from perpwatch.sources.interface import ParsingSource, RestSource, StreamSource

REST = {**sources.VENUE_MODULES, **sources.PROVIDER_MODULES}
SOURCES_DIR = Path(sources.__file__).resolve().parent


@pytest.fixture(scope="module")
def con():
    c = warehouse.connect(":memory:")
    yield c
    c.close()


@pytest.fixture(scope="module")
def staging_tables(con) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'staging'").fetchall()}


def test_every_module_with_parsers_is_registered():
    """A venue module nobody registered would never be run or replayed."""
    with_parsers = set()
    for path in SOURCES_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, (ast.Assign, ast.AnnAssign)) and any(
                isinstance(t, ast.Name) and t.id == "PARSERS"
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])) for n in tree.body):
            with_parsers.add(f"perpwatch.sources.{path.stem}")
    assert with_parsers == set(sources.ALL_MODULES.values())
    assert set(sources.VENUE_MODULES).isdisjoint(sources.PROVIDER_MODULES)
    assert set(sources.STREAM_MODULES) == {v.source for v in streams.WS_VENUES.values()}


# --------------------------------------------------------------------------- every module: replayable

@pytest.mark.parametrize("name", sorted(sources.ALL_MODULES))
def test_parsing_source(name, staging_tables):
    m = sources.get(name)
    assert isinstance(m, ParsingSource)
    assert isinstance(m.SOURCE, str) and m.SOURCE
    if name in REST:
        assert m.SOURCE == name              # raw.payloads.source resolves back to this module

    assert isinstance(m.DATASETS, tuple) and m.DATASETS and len(set(m.DATASETS)) == len(m.DATASETS)
    for d in m.DATASETS:
        assert d in staging_tables, f"{name}: DATASETS entry {d!r} is not a staging table"

    assert isinstance(m.UNSUPPORTED, Mapping)
    for d, reason in m.UNSUPPORTED.items():
        assert isinstance(d, str) and d.strip()
        if name in sources.VENUE_MODULES:    # the venue matrix: per staging table (providers name any gap)
            assert d in staging_tables, f"{name}: UNSUPPORTED key {d!r} is not a staging table"
        assert d not in m.DATASETS, f"{name}: {d!r} is both extracted and unsupported"
        assert isinstance(reason, str) and reason.strip(), f"{name}: UNSUPPORTED[{d!r}] gives no reason"

    assert isinstance(m.PARSERS, Mapping) and m.PARSERS
    for endpoint, parser in m.PARSERS.items():
        assert isinstance(endpoint, str) and endpoint
        assert isinstance(parser, Parser), f"{name} {endpoint}: {parser!r} is not a Parser"
        assert isinstance(parser.raw_body, bool)
        assert not hasattr(parser.fn, "raw_body"), f"{name} {endpoint}: option set as a function attribute"
        inspect.signature(parser.fn).bind(None, {}, None)     # parse(data, params, ctx)

    assert isinstance(m.INSTRUMENT_ENDPOINTS, tuple)
    for endpoint in m.INSTRUMENT_ENDPOINTS:
        assert endpoint in m.PARSERS, f"{name}: instrument endpoint {endpoint!r} has no parser"
    if m.INSTRUMENT_ENDPOINTS:
        assert "instruments" in m.DATASETS


# --------------------------------------------------------------------------- REST venues and providers

@pytest.mark.parametrize("name", sorted(REST))
def test_rest_source(name, con):
    m = sources.get(name)
    assert isinstance(m, RestSource)
    assert isinstance(m.VENUE, str) and m.VENUE
    assert inspect.isgeneratorfunction(m.fetch), f"{name}: fetch must page lazily (a generator)"

    cl = m.make_client(lambda *a, **k: 0)
    assert isinstance(cl, VenueClient) and cl.source == m.SOURCE
    cl.session.close()

    empty = con.sql("SELECT * FROM staging.instruments").pl()
    assert empty.height == 0
    streams_planned = m.plan(empty, ["BTC", "ETH"])
    assert isinstance(streams_planned, list)
    for s in streams_planned:     # only what needs no instrument list (providers, venue-wide snapshots)
        assert isinstance(s, Stream) and s.source == m.SOURCE and s.dataset in m.DATASETS
        assert s.name.split("/", 1)[0] == s.dataset
        validate_instrument(s.instrument)


@pytest.mark.parametrize("name", sorted(sources.VENUE_MODULES))
def test_venue_plans_every_dataset_for_a_trading_perp_and_nothing_else(name, con):
    """A trading perp of a configured asset gets a stream for every dataset the venue declares; the same
    instrument delisted, or of an asset not configured, gets none."""
    m = sources.get(name)
    inverse = name in ("binance_coinm", "deribit")      # these venues follow their inverse contracts
    row = {"venue": m.VENUE, "instrument": "XYZ-PERP", "asset": "XYZ", "quote": "USD" if inverse else "USDT",
           "settle": "XYZ" if inverse else "USDT", "margin": "inverse" if inverse else "linear", "kind": "perp",
           "contract_size": 1.0, "funding_interval_hours": 8.0, "status": "trading"}
    base = con.sql("SELECT * FROM staging.instruments").pl()

    def plan(status, assets):
        return m.plan(pl.concat([base, pl.DataFrame([{**row, "status": status}])], how="diagonal_relaxed"), assets)

    planned = plan("trading", ["XYZ"])
    assert {s.dataset for s in planned} == set(m.DATASETS) - {"instruments"}
    # venue-wide OI snapshots: per currency (deribit "XYZ"), for all coins (hyperliquid SNAPSHOT_STREAM)
    venue_wide = {"XYZ", getattr(m, "SNAPSHOT_STREAM", None)}
    assert all(s.source == m.SOURCE and s.instrument in {"XYZ-PERP"} | venue_wide for s in planned)
    assert all(validate_instrument(s.instrument) for s in planned)
    assert len({s.name for s in planned}) == len(planned)          # one watermark per stream
    assert plan("delisted", ["XYZ"]) == [] and plan("trading", ["BTC"]) == []


# --------------------------------------------------------------------------- websocket venues

STREAM_FIXTURES = {   # venue -> (a data message as the venue sends it, the instrument it carries)
    "binance": ("liquidations/binance_ws_forceOrder.json", "BTCUSDT"),
    "bybit": ("liquidations/bybit_ws_allLiquidation.json", "ROSEUSDT"),
    "okx": ("liquidations/okx_ws_liquidation-orders.json", "IOST-USDT-SWAP"),
}


def test_stream_table_covers_the_stream_parsers():
    endpoints = [v.endpoint for v in streams.WS_VENUES.values()]
    assert len(set(endpoints)) == len(endpoints)
    assert set(endpoints) == set(liquidations.PARSERS)
    assert set(STREAM_FIXTURES) == set(streams.WS_VENUES)


@pytest.mark.parametrize("venue", sorted(streams.WS_VENUES))
def test_stream_source(venue, fixture):
    v = streams.WS_VENUES[venue]
    assert isinstance(v, StreamSource)
    assert v.venue == venue
    assert sources.get(v.source) is liquidations and v.endpoint in liquidations.PARSERS
    url = v.url()
    assert url.startswith(("ws://", "wss://")) and url.endswith(v.path)

    # heartbeat: both or neither; OKX drops a connection silent for 30 s, so stay well under it
    assert (v.ping_every_s is None) == (v.ping_message() is None)
    assert v.ping_every_s is None or 0 < v.ping_every_s < 30

    symbols = [v.default_symbol("BTC"), v.default_symbol("ETH")]
    assert [validate_instrument(s) for s in symbols] == symbols and len(set(symbols)) == 2
    assert streams.symbols_for(venue, ["ETH", "BTC"], {}) == sorted(symbols)
    for frame in v.subscribe_messages(symbols):
        assert isinstance(orjson.loads(frame), dict)

    # classify agrees with the parser on what is data and which instrument it is about
    msg, inst = STREAM_FIXTURES[venue]
    data = fixture(msg)
    kind, syms, problem = v.classify(data)
    assert (kind, syms, problem) == ("data", {inst}, None)
    ctx = ParseContext(datetime(2026, 1, 1, tzinfo=UTC), {})
    parsed = liquidations.PARSERS[v.endpoint]([data], {}, ctx)["liquidations"]
    assert set(parsed["instrument"]) == syms
    for other in ("pong", 42, [], {"unrelated": True}):
        assert v.classify(other)[0] == "other"
