"""Recorded-looking Binance /futures/data/openInterestHist pages, as the venue returns them."""

from __future__ import annotations

import numpy as np
import orjson

ENDPOINT = "/futures/data/openInterestHist"
HOUR_MS = 3_600_000
T0_MS = 1_735_689_600_000   # 2025-01-01T00:00Z


def oi_pages(rows: int, page_size: int = 500, symbols: int | None = None, seed: int = 7) -> list[tuple[dict, bytes]]:
    """(params, body) per page: `rows` hourly rows spread over `symbols` symbols, 500 per page, with
    the real field shapes (numbers as strings with 8 decimals, integer timestamp, CMCCirculatingSupply)."""
    rng = np.random.default_rng(seed)
    symbols = symbols or max(1, min(100, rows // 10_000))   # 1 M rows: 100 symbols x 20 full pages
    per_symbol = -(-rows // symbols)
    out: list[tuple[dict, bytes]] = []
    left = rows
    for s in range(symbols):
        sym = f"S{s + 1:03d}USDT"
        n_sym = min(per_symbol, left)
        left -= n_sym
        base = float(rng.uniform(1e3, 1e6))
        price = float(rng.uniform(0.1, 1e4))
        for start in range(0, n_sym, page_size):
            n = min(page_size, n_sym - start)
            ts = T0_MS + (start + np.arange(n, dtype=np.int64)) * HOUR_MS
            oi = base * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
            val = oi * price * np.exp(rng.normal(0, 0.005, n))
            rows_ = [{"symbol": sym, "sumOpenInterest": f"{a:.8f}", "sumOpenInterestValue": f"{v:.8f}",
                      "CMCCirculatingSupply": "165880.538", "timestamp": int(t)}
                     for a, v, t in zip(oi.tolist(), val.tolist(), ts.tolist(), strict=True)]
            params = {"symbol": sym, "period": "1h", "startTime": int(ts[0]), "endTime": int(ts[-1]), "limit": 500}
            out.append((params, orjson.dumps(rows_)))
        if left <= 0:
            break
    return out

