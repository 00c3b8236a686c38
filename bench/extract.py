"""Workload 3 — extraction against the limits: a 30-day backfill of N Binance instruments x 4
datasets from the simulator (real limit shapes, 50 ms latency), perpwatch's pipeline extraction vs
a sequential sleep-on-429 loop, each against a fresh simulator (same pre-generated market)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from perpwatch.bench.common import Sample

NOW = datetime(2026, 11, 20, tzinfo=UTC)
STREAMS = ("open_interest", "long_short_ratio/accounts", "funding_rates", "prices/perp")
# Binance limits as the simulator enforces them (x limits_scale; windows x window_scale): per bucket
# (capacity, window seconds) and what each endpoint costs there (klines limit 1000 = weight 5).
LIMITS = {"weight": (2400, 60.0), "futures_data": (1000, 300.0), "funding": (500, 300.0)}
COST = {"/fapi/v1/exchangeInfo": {"weight": 1}, "/fapi/v1/fundingInfo": {"weight": 1, "funding": 1},
        "/fapi/v1/fundingRate": {"weight": 1, "funding": 1}, "/futures/data/openInterestHist": {"futures_data": 1},
        "/futures/data/globalLongShortAccountRatio": {"futures_data": 1}, "/fapi/v1/klines": {"weight": 5}}


def _market(n: int):
    from perpwatch.simulator.market import Market, hour_of, synthetic

    m = Market(7, synthetic(n))
    h = hour_of(int(NOW.timestamp() * 1000))
    for a in m.universe:          # generate every series before timing (the server would do it lazily)
        m.data(a, h)
    return m


def _sim(market, latency_ms: float, limits_scale: float, window_scale: float):
    from perpwatch.simulator.server import start

    return start(port=0, seed=7, now=NOW, latency_ms=latency_ms, limits_scale=limits_scale,
                 window_scale=window_scale, ws_port=None, market=market)


def perpwatch_once(market, n: int, latency_ms: float, ls: float, ws: float, workdir: Path) -> dict:
    """The pipeline's own extraction: open_run -> refresh_instruments -> plan_units -> extract_unit on
    4 threads (one per source x dataset), every response landed in raw.payloads."""
    import perpwatch.sources.binance as binance
    from perpwatch.ingest import pipeline

    sim = _sim(market, latency_ms, ls, ws)
    old_env = {k: os.environ.get(k) for k in sim.env()}
    os.environ.update(sim.env())
    db = workdir / "extract.duckdb"
    for p in (db, db.with_name(db.name + ".wal")):
        p.unlink(missing_ok=True)
    try:
        assets = [a for a in market.universe]
        t0 = time.perf_counter()
        made = {}

        def scaled(module, lander):
            cl = made["binance"] = binance.make_client(lander, limits_scale=ls)
            for b in cl.budgets.values():
                b.window_s *= ws            # the simulator's windows are scaled the same way
            return cl

        plan = pipeline.prepare("bench", NOW - timedelta(days=30), NOW, ["binance"], assets, db,
                                client_factory=scaled)
        units = {(u.source, u.kind): u for u in plan.units if u.kind in STREAMS}
        pages = [p for r in pipeline.Runner(max_workers=4).map(pipeline.extract, [(plan.run_id, u)
                                                                              for u in units.values()])
                 for p in r.pages]
        wall = time.perf_counter() - t0
        pipeline.finish(plan.report, db)
        stats = sim.stats.as_dict()
        per_unit = {d: sum(1 for p in pages if p.stream and p.stream.split("/")[0] == d.split("/")[0]) for _s, d in units}
        endpoints: dict[str, int] = {}
        for p in pages:
            endpoints[p.endpoint] = endpoints.get(p.endpoint, 0) + 1
        endpoints["/fapi/v1/exchangeInfo"] = 1
        endpoints["/fapi/v1/fundingInfo"] = 1
        return {"wall_s": wall, "requests": sum(stats["requests"].values()), "429": stats["429"], "418": stats["418"],
                "pages": len(pages), "errors": plan.report.errors[:3], "endpoints": endpoints,
                "streams": sum(len(u.streams) for u in units.values()), "per_unit_pages": per_unit,
                "client_waited_s": {k: round(b.waited_s, 1) for k, b in made["binance"].budgets.items()}}
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sim.stop()


def sequential_once(market, n: int, latency_ms: float, ls: float, ws: float) -> dict:
    """What a ccxt-style script does: one loop over instruments and datasets, page by page, sleeping
    Retry-After on 429/418 and trying again."""
    sim = _sim(market, latency_ms, ls, ws)
    base = sim.env()["PERPWATCH_URL_BINANCE_FAPI"]
    s = requests.Session()
    sleeps = 0.0
    bodies = 0

    def get(path, params=None):
        nonlocal sleeps, bodies
        while True:
            r = s.get(base + path, params=params, timeout=30)
            if r.status_code in (429, 418):
                wait = float(r.headers.get("Retry-After", "1"))
                sleeps += wait
                time.sleep(wait)
                continue
            r.raise_for_status()
            bodies += 1
            return r.json()

    end = int(NOW.timestamp() * 1000)
    start = int((NOW - timedelta(days=30)).timestamp() * 1000)
    try:
        t0 = time.perf_counter()
        info = get("/fapi/v1/exchangeInfo")
        syms = [x["symbol"] for x in info["symbols"] if x["contractType"] == "PERPETUAL" and x["status"] == "TRADING"]
        for sym in syms:
            for path in ("/futures/data/openInterestHist", "/futures/data/globalLongShortAccountRatio"):
                cur = max(start, end - 30 * 86_400_000 + 3_600_000)
                while cur < end:
                    upto = min(cur + 499 * 3_600_000, end)
                    get(path, {"symbol": sym, "period": "1h", "startTime": cur, "endTime": upto, "limit": 500})
                    cur = upto + 3_600_000
            get("/fapi/v1/fundingRate", {"symbol": sym, "startTime": start, "endTime": end, "limit": 1000})
            get("/fapi/v1/klines", {"symbol": sym, "interval": "1h", "startTime": start, "endTime": end, "limit": 1000})
        wall = time.perf_counter() - t0
        stats = sim.stats.as_dict()
        return {"wall_s": wall, "requests": sum(stats["requests"].values()), "429": stats["429"], "418": stats["418"],
                "pages": bodies, "slept_s": sleeps, "instruments": len(syms)}
    finally:
        sim.stop()


def floors(endpoints: dict[str, int], ls: float, ws: float, latency_ms: float, per_unit_pages: dict[str, int]) -> dict:
    """The least wall time the limits allow: per bucket, cost / (capacity / window) (steady rate); and the
    latency floor of the busiest of the concurrent units (its pages one after another)."""
    used = {b: 0.0 for b in LIMITS}
    for ep, k in endpoints.items():
        for b, c in COST.get(ep, {}).items():
            used[b] += c * k
    rate = {b: used[b] * LIMITS[b][1] * ws / max(1, round(LIMITS[b][0] * ls)) for b in LIMITS}
    latency = max(per_unit_pages.values() or [0]) * latency_ms / 1000
    return {"used": used, "rate_floor_s": rate, "latency_floor_s": latency,
            "floor_s": max([latency, *rate.values()]), "binding": max(rate, key=rate.get) if max(rate.values()) > latency else "latency"}


def run(n: int, runs: int, latency_ms: float, ls: float, ws: float, workdir: Path, progress=print) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    market = _market(n)
    progress(f"extraction: market for {n} synthetic assets generated in {time.perf_counter() - t0:.1f}s")
    pw, seq = [], []
    for r in range(runs):
        pw.append(perpwatch_once(market, n, latency_ms, ls, ws, workdir))
        progress(f"  run {r + 1}/{runs} perpwatch: {pw[-1]['wall_s']:.1f}s, {pw[-1]['requests']} requests, "
                 f"429={pw[-1]['429']} 418={pw[-1]['418']}")
        seq.append(sequential_once(market, n, latency_ms, ls, ws))
        progress(f"  run {r + 1}/{runs} sequential loop: {seq[-1]['wall_s']:.1f}s, {seq[-1]['requests']} requests, "
                 f"429={seq[-1]['429']} 418={seq[-1]['418']}")
    for p in workdir.glob("extract.duckdb*"):
        p.unlink(missing_ok=True)
    fl = floors(pw[-1]["endpoints"], ls, ws, latency_ms, pw[-1]["per_unit_pages"])
    return {"instruments": n, "latency_ms": latency_ms, "limits_scale": ls, "window_scale": ws,
            "perpwatch": pw, "sequential": seq, "floor": fl,
            "perpwatch_wall": Sample([x["wall_s"] for x in pw]).as_dict(),
            "sequential_wall": Sample([x["wall_s"] for x in seq]).as_dict()}
