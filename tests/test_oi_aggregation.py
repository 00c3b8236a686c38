"""Aggregated open interest equals the sum over venues computed independently from the raw payloads."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import duckdb
import pytest

from perpwatch import jobs, warehouse
from perpwatch.simulator.server import start

NOW = datetime(2026, 11, 20, tzinfo=UTC)
VENUES = ["binance", "binance_coinm", "bybit", "okx", "hyperliquid", "deribit"]


def _day(ms: int):
    return datetime.fromtimestamp(ms / 1000, UTC).date()


def independent_eod_oi(db) -> dict:
    """{(date, venue, instrument): USD} from raw.payloads, with the unit rules written out by hand."""
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT source, endpoint, params, body, encoding, fetched_at FROM raw.payloads "
                       "WHERE http_status = 200 ORDER BY raw_id").fetchall()
    con.close()
    snaps: dict[tuple, dict[int, float]] = defaultdict(dict)     # (venue, instrument) -> {ts_ms: usd}
    bybit_px: dict[tuple, dict[int, tuple[float, float]]] = defaultdict(dict)   # (sym) -> {start: (open, close)}
    bybit_oi: list[tuple] = []
    coinm_size: dict[str, float] = {}
    for source, endpoint, params, body, enc, fetched_at in rows:
        data = json.loads(warehouse.payload_body(body, enc))
        params = json.loads(params)
        if source == "binance" and endpoint == "/futures/data/openInterestHist":
            for r in data:          # USD-M: sumOpenInterestValue is USD
                snaps[("binance", r["symbol"])][int(r["timestamp"])] = float(r["sumOpenInterestValue"])
        elif source == "binance_coinm" and endpoint == "/dapi/v1/exchangeInfo":
            coinm_size.update({s["symbol"]: float(s["contractSize"]) for s in data["symbols"]})
        elif source == "binance_coinm" and endpoint == "/futures/data/openInterestHist":
            for r in data:          # COIN-M: sumOpenInterest is contracts of contractSize USD
                sym = f"{r['pair']}_PERP"
                snaps[("binance", sym)][int(r["timestamp"])] = ("coinm", float(r["sumOpenInterest"]))
        elif source == "bybit" and endpoint == "/v5/market/kline":
            for k in data["result"]["list"]:
                bybit_px[data["result"]["symbol"]][int(k[0])] = (float(k[1]), float(k[4]))
        elif source == "bybit" and endpoint == "/v5/market/open-interest":
            cat = params["category"]
            for r in data["result"]["list"]:   # both sides summed: one side is half (singleOpenInterest)
                one_side = float(r["singleOpenInterest"]) if "singleOpenInterest" in r else float(r["openInterest"]) / 2
                bybit_oi.append((cat, data["result"]["symbol"], int(r["timestamp"]), one_side))
        elif source == "okx" and endpoint == "/api/v5/rubik/stat/contracts/open-interest-history":
            for ts, _oi, _ccy, usd in data["data"]:
                snaps[("okx", params["instId"])][int(ts)] = float(usd)
        elif source == "hyperliquid" and endpoint == "/info" and params.get("type") == "metaAndAssetCtxs":
            meta, ctxs = data
            hour = int(fetched_at.timestamp() // 3600 * 3600 * 1000)
            for u, c in zip(meta["universe"], ctxs, strict=True):
                if not u.get("isDelisted"):
                    snaps[("hyperliquid", u["name"])][hour] = float(c["openInterest"]) * float(c["oraclePx"])
        elif source == "deribit" and endpoint == "/api/v2/public/get_book_summary_by_currency":
            for r in data["result"]:
                if r["instrument_name"].endswith("PERPETUAL"):     # inverse: open_interest is USD
                    hour = r["creation_timestamp"] // 3_600_000 * 3_600_000
                    snaps[("deribit", r["instrument_name"])][hour] = float(r["open_interest"])
    for cat, sym, ts, one_side in bybit_oi:
        if cat == "inverse":
            snaps[("bybit", sym)][ts] = one_side
        else:   # linear: coins x price at ts (close of the bar ending at ts, else open of the bar at ts)
            px = bybit_px[sym]
            price = px[ts - 3_600_000][1] if ts - 3_600_000 in px else px[ts][0]
            snaps[("bybit", sym)][ts] = one_side * price
    out = {}
    for (venue, sym), series in snaps.items():
        last = {}
        for ts in sorted(series):
            last[_day(ts)] = series[ts]
        for d, v in last.items():
            out[(d, venue, sym)] = coinm_size[sym] * v[1] if isinstance(v, tuple) else v
    return out


@pytest.mark.slow
def test_aggregate_oi_equals_independent_sum_and_shares_sum_to_one(tmp_path, monkeypatch):
    sim = start(port=0, seed=7, now=NOW)
    try:
        for k, v in sim.env().items():
            monkeypatch.setenv(k, v)
        db = tmp_path / "w.duckdb"
        report = jobs.run(kind="backfill", start=NOW - timedelta(days=2), end=NOW, venues=VENUES,
                              assets=["BTC"], db=db)
    finally:
        sim.stop()
    assert report.status == "success", report.errors + report.warnings
    expected = independent_eod_oi(db)
    con = duckdb.connect(str(db), read_only=True)
    signals = dict(con.execute("SELECT date, oi_usd FROM marts.daily_signals WHERE asset = 'BTC'").fetchall())
    by_venue = con.execute("SELECT date, venue, oi_usd, share FROM marts.open_interest_by_venue "
                           "WHERE asset = 'BTC'").fetchall()
    con.close()
    assert len(signals) >= 2
    btc = {k: v for k, v in expected.items() if k[2].startswith("BTC")}
    assert {v for (_, v, _) in btc} == {"binance", "bybit", "okx", "hyperliquid", "deribit"}
    for day, oi in signals.items():
        want = sum(v for (d, _, _), v in btc.items() if d == day)
        assert oi == pytest.approx(want, rel=1e-9), day
    shares = defaultdict(float)
    for day, _venue, _oi, share in by_venue:
        shares[day] += share
    assert shares and all(s == pytest.approx(1.0, abs=1e-12) for s in shares.values())
    # two contract conventions behind the binance figure: USD-M value + COIN-M 100-USD contracts
    assert any(s == "BTCUSD_PERP" for (_, v, s) in btc if v == "binance")
