"""marts.cross_market_correlation against a plain numpy reference: gaps, holidays, source switches,
too-short windows, and no look-ahead."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from perpwatch import warehouse
from perpwatch.transforms import build_all
from perpwatch.transforms.marts import cross_market_correlation as cmc

START = date(2024, 1, 1)
DAYS = 200
HOLIDAYS = {date(2024, 1, 15), date(2024, 2, 19), date(2024, 3, 29), date(2024, 5, 27), date(2024, 6, 19)}
BTC_MISSING = {date(2024, 2, 7), date(2024, 3, 10), date(2024, 4, 2), date(2024, 4, 3)}   # Wed, Sun, Tue, Wed
ETH_FIRST = date(2024, 2, 1)
GOLD_SWITCH = date(2024, 4, 15)                  # stooq -> PAXG: no return across the switch
GOLD_HOLE = (date(2024, 5, 6), date(2024, 5, 17))   # 12 days without data: the next return is NULL


def series():
    rng = np.random.default_rng(42)
    days = [START + timedelta(days=i) for i in range(DAYS)]
    common = rng.normal(0, 0.01, DAYS)
    btc = 40_000 * np.exp(np.cumsum(0.8 * common + rng.normal(0, 0.02, DAYS)))
    eth = 2_000 * np.exp(np.cumsum(0.5 * common + rng.normal(0, 0.03, DAYS)))
    spx = 4_700 * np.exp(np.cumsum(common + rng.normal(0, 0.004, DAYS)))
    gold = 2_000 * np.exp(np.cumsum(-0.3 * common + rng.normal(0, 0.008, DAYS)))
    crypto = {"BTC": {d: float(p) for d, p in zip(days, btc, strict=True) if d not in BTC_MISSING},
              "ETH": {d: float(p) for d, p in zip(days, eth, strict=True) if d >= ETH_FIRST}}
    trading = [i for i, d in enumerate(days) if d.weekday() < 5 and d not in HOLIDAYS]
    bench = {
        "SPX": [(days[i], float(spx[i]), "fred:SP500") for i in trading],
        "GOLD": [(days[i], float(gold[i]) * (1.01 if days[i] >= GOLD_SWITCH else 1.0),
                  "binance:PAXGUSDT" if days[i] >= GOLD_SWITCH else "stooq:xauusd")
                 for i in trading if not GOLD_HOLE[0] <= days[i] <= GOLD_HOLE[1]],
    }
    return crypto, bench


def load(con, crypto, bench, until: date | None = None) -> None:
    rows = [{"venue": "import", "instrument": f"{a}USD", "kind": "spot", "interval": "1d",
             "ts": datetime(d.year, d.month, d.day, tzinfo=UTC), "asset": a, "open": p, "high": p, "low": p,
             "close": p} for a, s in crypto.items() for d, p in s.items() if until is None or d <= until]
    macro = [{"date": d, "series": k, "close": c, "source": s} for k, v in bench.items() for d, c, s in v
             if until is None or d <= until]
    with warehouse.transaction(con):
        con.execute("DELETE FROM staging.prices")
        con.execute("DELETE FROM staging.macro_closes")
        warehouse.upsert(con, "staging.prices", pl.DataFrame(rows))
        warehouse.upsert(con, "staging.macro_closes", pl.DataFrame(macro))


def reference(closes: dict[date, float], bench: list, window: int, min_cov=0.8, max_gap=7) -> list[tuple]:
    """Row per benchmark trading day inside the asset's history: (date, corr or None, n_obs)."""
    first, last = min(closes), max(closes)
    rb, ra, dates = [], [], []
    for k, (d, c, s) in enumerate(bench):
        if k == 0:
            b = a = math.nan
        else:
            pd_, pc, ps = bench[k - 1]
            b = math.log(c / pc) if ps == s and (d - pd_).days <= max_gap else math.nan
            a = math.log(closes[d] / closes[pd_]) if d in closes and pd_ in closes else math.nan
        if first <= d <= last:
            rb.append(b)
            ra.append(a)
            dates.append(d)
    need = math.ceil(min_cov * window - 1e-9)
    out = []
    for i, d in enumerate(dates):
        x = np.array(ra[max(0, i - window + 1): i + 1])
        y = np.array(rb[max(0, i - window + 1): i + 1])
        ok = np.isfinite(x) & np.isfinite(y)
        n = int(ok.sum())
        c = float(np.corrcoef(x[ok], y[ok])[0, 1]) if n >= need else None
        out.append((d, c, n))
    return out


@pytest.fixture
def con(tmp_path):
    c = warehouse.connect(tmp_path / "w.duckdb")
    yield c
    c.close()


def mart(con, cfg=None) -> pl.DataFrame:
    if cfg is None:
        build_all(con, only=["marts.reference_close", "marts.cross_market_correlation"])
        return con.sql("SELECT * FROM marts.cross_market_correlation").pl()
    build_all(con, only=["marts.reference_close"])
    return con.sql(cmc.build_sql({**cmc.DEFAULTS, **cfg})).pl()


def check(df: pl.DataFrame, crypto, bench, windows) -> int:
    checked = 0
    for asset, closes in crypto.items():
        for b, rows in bench.items():
            for w in windows:
                got = df.filter((pl.col("asset") == asset) & (pl.col("benchmark") == b) & (pl.col("window_days") == w)) \
                    .sort("date").select("date", "correlation", "n_obs").rows()
                want = reference(closes, rows, w)
                assert [g[0] for g in got] == [x[0] for x in want]
                assert [g[2] for g in got] == [x[2] for x in want], (asset, b, w)
                for (d, c, _), (_, cw, _) in zip(got, want, strict=True):
                    if cw is None:
                        assert c is None, (asset, b, w, d)
                    else:
                        assert c == pytest.approx(cw, abs=1e-9), (asset, b, w, d)
                checked += len(got)
    return checked


def test_small_windows_match_numpy_reference(con):
    crypto, bench = series()
    load(con, crypto, bench)
    df = mart(con, {"windows": [5, 10]})
    assert check(df, crypto, bench, [5, 10]) > 500
    btc_spx = df.filter((pl.col("asset") == "BTC") & (pl.col("benchmark") == "SPX") & (pl.col("window_days") == 10))
    first = btc_spx.sort("date").head(9)
    # the first day has no return; days 2..8 have 1..7 returns (< 8 = 80 % of 10): NULL; day 9 has 8
    assert first["correlation"].head(8).null_count() == 8
    assert first.row(8, named=True)["n_obs"] == 8 and first.row(8, named=True)["correlation"] is not None
    # BTC has no close on Tue 04-02 and Wed 04-03: the returns of 04-02, 04-03 and 04-04 are missing,
    # so the 10-day window ending Thu 04-04 holds 7 pairs (< 8): NULL; one day later still 7
    row = btc_spx.filter(pl.col("date") == date(2024, 4, 4)).row(0, named=True)
    assert row["n_obs"] == 7 and row["correlation"] is None
    assert btc_spx.filter(pl.col("date") == date(2024, 4, 8))["n_obs"][0] == 7
    gold = df.filter((pl.col("asset") == "BTC") & (pl.col("benchmark") == "GOLD") & (pl.col("window_days") == 5))
    assert gold.filter(pl.col("date") == GOLD_SWITCH)["n_obs"][0] == 4      # the switch day has no return
    assert gold.filter(pl.col("date") == date(2024, 5, 20))["n_obs"][0] == 4  # first day after the 12-day hole


def test_default_30_and_90_day_windows_match_reference(con):
    crypto, bench = series()
    load(con, crypto, bench)
    df = mart(con)
    assert set(df["window_days"].unique()) == {30, 90}
    assert check(df, crypto, bench, [30, 90]) > 900
    eth = df.filter((pl.col("asset") == "ETH") & (pl.col("benchmark") == "SPX") & (pl.col("window_days") == 90))
    assert eth["date"].min() == ETH_FIRST                    # rows start with the asset's history
    assert eth.filter(pl.col("n_obs") < 72)["correlation"].null_count() == eth.filter(pl.col("n_obs") < 72).height
    assert eth["correlation"].drop_nulls().len() > 0


def test_no_look_ahead(con):
    crypto, bench = series()
    cut = date(2024, 5, 31)
    load(con, crypto, bench, until=cut)
    early = mart(con).filter(pl.col("date") <= cut).sort("asset", "benchmark", "window_days", "date")
    load(con, crypto, bench)
    full = mart(con).filter(pl.col("date") <= cut).sort("asset", "benchmark", "window_days", "date")
    assert early.equals(full)


def test_regime_labels():
    c = cmc.DEFAULTS
    import duckdb
    rows = duckdb.sql(f"""SELECT benchmark, correlation, {cmc.regime_sql(c)} AS regime FROM (VALUES
        ('SPX', 0.62), ('GOLD', 0.62), ('NDX', 0.35), ('DXY', 0.05), ('DXY', -0.25), ('DXY', -0.45),
        ('SPX', NULL)) t(benchmark, correlation)""").fetchall()
    assert [r[2] for r in rows] == ["risk-on coupled", "coupled", "loosely coupled", "decoupled",
                                    "loosely inverse", "inverse", "insufficient data"]
