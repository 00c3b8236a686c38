"""marts.signal_performance: forward returns, drawdowns, hit rates and t-stats on hand-built closes."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest

from perpwatch import warehouse
from perpwatch.transforms import build_all
from perpwatch.transforms.marts import signal_performance as sp

ROOT = Path(__file__).resolve().parent.parent
D0 = date(2026, 1, 5)


def frame(
    asset: str, closes: dict[int, float], flags: set[int], avail: set[int] | None = None
) -> pl.DataFrame:
    days = sorted(closes)
    return pl.DataFrame(
        {
            "date": [D0 + timedelta(days=i) for i in days],
            "asset": asset,
            "close_usd": [float(closes[i]) for i in days],
            "flag": [i in flags for i in days],
            "avail": [avail is None or i in avail for i in days],
        }
    )


SIG_DOWN = sp.Signal("down_after", pl.col("flag"), pl.col("avail"), -1, "seed", "test: falls after")
SIG_NODIR = sp.Signal("size_after", pl.col("flag"), pl.col("avail"), 0, "none", "test: no direction")
CLOSES = {0: 100, 1: 110, 2: 99, 3: 99, 4: 120, 5: 90, 6: 90, 7: 100, 8: 100, 9: 100}


def one(df: pl.DataFrame, signal: str, asset: str, h: int) -> dict:
    out = df.filter((pl.col("signal") == signal) & (pl.col("asset") == asset) & (pl.col("horizon_days") == h))
    assert out.height == 1
    return out.row(0, named=True)


def reference_hac_t(y, x, dates, lag):
    """Reference Newey-West t of b in y = a + b x: plain numpy, scores summed per date, Bartlett weights."""
    import numpy as np

    y, x, dates = np.asarray(y, float), np.asarray(x, float), np.asarray(dates)
    X = np.column_stack([np.ones_like(y), x])
    b = np.linalg.inv(X.T @ X) @ X.T @ y
    u = y - X @ b
    uniq = np.unique(dates)
    G = np.array([(X[dates == d] * u[dates == d][:, None]).sum(axis=0) for d in uniq])
    S = sum(np.outer(G[t], G[t]) for t in range(len(uniq)))
    for k in range(1, lag + 1):
        w = 1 - k / (lag + 1)
        for t in range(k, len(uniq)):
            S = S + w * (np.outer(G[t], G[t - k]) + np.outer(G[t - k], G[t]))
    B = np.linalg.inv(X.T @ X)
    return b[1] / math.sqrt((B @ S @ B)[1, 1])


def test_hac_t_stat_matches_a_reference_on_overlapping_windows():
    """h = 3 forward returns of events on days 2, 3 (one episode) and 10 overlap: lag 2 Newey-West."""
    closes = {i: 100.0 + 3 * ((i * 7) % 5) - (4 if i in (4, 5, 12) else 0) for i in range(16)}
    out = sp.evaluate(frame("BTC", closes, flags={2, 3, 10}), [SIG_DOWN], [3])
    r = one(out, "down_after", "BTC", 3)
    fwd = {i: closes[i + 3] / closes[i] - 1 for i in range(13)}
    # baseline: days with a 3-day return outside the 2 days after an event: 0, 1, 6, 7, 8, 9
    # (4, 5 follow events 2-3, 11, 12 follow event 10; 1 and 8, 9 precede events and stay in)
    base_days = [0, 1, 6, 7, 8, 9]
    assert (r["n_events"], r["n_episodes"], r["baseline_n"]) == (3, 2, 6)
    days = [2, 3, 10] + base_days
    y, x = [fwd[i] for i in days], [1, 1, 1, 0, 0, 0, 0, 0, 0]
    t = reference_hac_t(y, x, days, 2)
    assert r["t_stat"] == pytest.approx(t, rel=1e-9)
    naive = (sum(y[:3]) / 3 - sum(y[3:]) / 6) / (statistics.stdev(y[:3]) / math.sqrt(3))
    assert abs(r["t_stat"] - naive) > 1e-6          # not the old iid t
    assert r["se_method"] == "newey_west" and r["n_tests"] == 1


def test_pooled_t_stat_clusters_same_day_events_by_date():
    closes = {i: 100.0 + 3 * ((i * 7) % 5) for i in range(12)}
    eth = {i: 50.0 + 2 * ((i * 3) % 4) for i in range(12)}
    daily = pl.concat([frame("BTC", closes, flags={2, 8}), frame("ETH", eth, flags={2, 8})])
    out = sp.evaluate(daily, [SIG_DOWN], [1])
    r = one(out, "down_after", "ALL", 1)
    ys, xs, ds = [], [], []
    for c in (closes, eth):
        for i in range(11):
            ys.append(c[i + 1] / c[i] - 1)
            xs.append(1.0 if i in (2, 8) else 0.0)
            ds.append(i)
    assert r["t_stat"] == pytest.approx(reference_hac_t(ys, xs, ds, 0), rel=1e-9)
    assert r["se_method"] == "driscoll_kraay_by_date"


def test_event_and_baseline_statistics_by_hand():
    daily = frame("BTC", CLOSES, flags={1, 2, 4, 9})  # day 9 has no close 1 day later: not an event
    out = sp.evaluate(daily, [SIG_DOWN], [1, 2])
    r = one(out, "down_after", "BTC", 1)
    events = [99 / 110 - 1, 0.0, 90 / 120 - 1]  # -0.1, 0, -0.25
    base = [0.1, 99 / 110 - 1, 0.0, 120 / 99 - 1, 90 / 120 - 1, 0.0, 100 / 90 - 1, 0.0, 0.0]
    # baseline: available days outside event windows (h = 1: the non-event days 0, 3, 5, 6, 7, 8)
    assert (r["n_events"], r["n_episodes"], r["baseline_n"]) == (3, 2, 6)  # days 1-2 are one episode
    assert r["mean_forward_return"] == pytest.approx(-0.35 / 3)
    assert r["median_forward_return"] == pytest.approx(-0.1)
    base = [b for i, b in enumerate(base) if i not in (1, 2, 4)]   # events left out of the baseline
    assert r["baseline_mean_return"] == pytest.approx(sum(base) / 6)
    assert r["excess_return"] == pytest.approx(-0.35 / 3 - sum(base) / 6)
    assert r["hit_rate"] == pytest.approx(2 / 3)  # a zero return is a miss
    assert r["baseline_hit_rate"] == pytest.approx(0 / 6)
    # h = 1: lag 0, so the HAC variance is White's: sum of squared OLS scores, sandwich
    y = events + base
    x = [1.0] * 3 + [0.0] * 6
    assert r["t_stat"] == pytest.approx(reference_hac_t(y, x, list(range(9)), 0))
    assert r["mean_max_drawdown"] == pytest.approx((0.1 + 0.0 + 0.25) / 3)
    assert r["mean_abs_forward_return"] == pytest.approx(0.35 / 3)
    assert r["baseline_mean_abs_return"] == pytest.approx(sum(abs(x) for x in base) / 6)
    assert (r["first_date"], r["last_date"]) == (D0, D0 + timedelta(days=8))
    assert (r["expected_sign"], r["expected_from"]) == (-1, "seed")

    r2 = one(out, "down_after", "BTC", 2)
    assert r2["n_events"] == 3
    assert r2["mean_forward_return"] == pytest.approx((99 / 110 - 1 + 120 / 99 - 1 + 90 / 120 - 1) / 3)
    # drawdowns over 2 days: day 1 110 -> 99 -> 99 = 10 %; day 2 99 -> 99 -> 120 = 0; day 4 120 -> 90 -> 90 = 25 %
    assert r2["mean_max_drawdown"] == pytest.approx(0.35 / 3)
    # baseline day 3: 99 -> 120 -> 90 falls 25 % from the new peak, not 9 % from the entry
    mdd = [0.1, 0.1, 0.0, 0.25, 0.25, 0.0, 0.0, 0.0]  # days 0..7
    # h = 2 baseline: days 3 and 5 are the day after an event (2, 4): days 0, 6, 7 remain (day 0
    # precedes event 1 and stays: dropping it would select baseline days on what happens next)
    assert r2["baseline_n"] == 3
    assert r2["baseline_mean_max_drawdown"] == pytest.approx((mdd[0] + mdd[6] + mdd[7]) / 3)


def test_missing_days_break_forward_windows_and_availability_defines_the_baseline():
    # day 2 missing: day 1 has no 1-day return, its 2-day return exists but its drawdown path is incomplete
    daily = frame("ETH", {0: 100, 1: 200, 3: 100, 4: 50, 5: 50}, flags={1, 3}, avail={1, 3, 4})
    out = sp.evaluate(daily, [SIG_DOWN], [1, 2])
    r1 = one(out, "down_after", "ETH", 1)
    assert (r1["n_events"], r1["baseline_n"]) == (1, 1)  # day 1 dropped; baseline = available non-event day 4
    assert r1["mean_forward_return"] == pytest.approx(-0.5)
    assert r1["baseline_mean_return"] == pytest.approx(0.0)  # day 4: 50 -> 50
    r2 = one(out, "down_after", "ETH", 2)
    assert r2["n_events"] == 2  # day 1 (100 / 200 - 1) and day 3 (50 / 100 - 1)
    assert r2["mean_forward_return"] == pytest.approx(-0.5)
    assert r2["mean_max_drawdown"] == pytest.approx(0.5)  # only day 3 has a complete path: 100 -> 50 -> 50
    assert r2["t_stat"] is None  # both events -0.5: zero spread


def test_no_direction_claim_has_no_hit_rate_and_pooled_rows():
    daily = pl.concat([frame("BTC", CLOSES, flags={1, 4}), frame("ETH", CLOSES, flags={2})])
    out = sp.evaluate(daily, [SIG_NODIR], [1])
    r = one(out, "size_after", "BTC", 1)
    assert r["hit_rate"] is None and r["baseline_hit_rate"] is None
    assert r["mean_abs_forward_return"] == pytest.approx((0.1 + 0.25) / 2)
    pooled = one(out, "size_after", "ALL", 1)
    assert (pooled["n_events"], pooled["n_episodes"], pooled["baseline_n"]) == (3, 3, 15)
    assert pooled["mean_forward_return"] == pytest.approx((99 / 110 - 1 + 0.0 + 90 / 120 - 1) / 3)
    assert sorted(out["asset"].unique()) == ["ALL", "BTC", "ETH"]


def test_signal_list_is_consistent_and_documented():
    sigs = sp.signals()
    names = [s.name for s in sigs]
    assert len(names) == len(set(names))
    assert all(
        s.expected_sign in (-1, 0, 1) and s.expected_from in ("seed", "convention", "none") for s in sigs
    )
    doc = (ROOT / "docs" / "signals.md").read_text()
    undocumented = [n for n in names if f"`{n}`" not in doc]
    assert not undocumented, f"signals missing from docs/signals.md: {undocumented}"
    assert {
        "regime:rising_oi_rising_price",
        "state:overheated",
        "overheating",
        "funding_absolute_high",
        "funding_percentile_high",
        "liquidation_surge_long",
        "heatmap_cluster_near",
    } <= set(names)


def test_mart_builds_from_daily_signals():
    con = warehouse.connect(":memory:")
    try:
        # BTC: day 1 rising OI + rising price (+6.25 %, +12.5 %), day 2 falls 6.25 %
        for i, (close, oi) in enumerate([(128.0, 1024.0), (136.0, 1152.0), (127.5, 1152.0), (127.5, 1152.0)]):
            ts = datetime.combine(D0 + timedelta(days=i), time(23), UTC)
            con.execute(
                'INSERT INTO staging.prices (venue, instrument, kind, "interval", ts, asset, close) '
                "VALUES ('binance', 'BTCUSDT', 'spot', '1h', ?, 'BTC', ?)",
                [ts, close],
            )
            con.execute(
                "INSERT INTO staging.open_interest (venue, instrument, ts, asset, oi_usd) "
                "VALUES ('binance', 'BTCUSDT', ?, 'BTC', ?)",
                [ts, oi],
            )
        build_all(
            con,
            only=[
                "marts.reference_close",
                "marts.open_interest_by_venue",
                "marts.carry",
                "marts.oi_milestones",
                "marts.daily_heatmap_clusters",
                "marts.liquidation_heatmap",
                "marts.daily_signals",
                "marts.signal_performance",
            ],
        )
        perf = con.sql("SELECT * FROM marts.signal_performance").pl()
    finally:
        con.close()
    r = one(perf, "regime:rising_oi_rising_price", "BTC", 1)
    assert (r["n_events"], r["baseline_n"]) == (1, 1)  # regime known on days 1-3; day 3 has no next close
    assert r["mean_forward_return"] == pytest.approx(127.5 / 136 - 1)
    assert r["hit_rate"] == 0.0 and r["expected_sign"] == 1
    assert list(perf.columns[:3]) == ["signal", "asset", "horizon_days"]
    assert perf.select(pl.struct("signal", "asset", "horizon_days").is_duplicated().any()).item() is False


# --------------------------------------------------------------------------- real history (docs/signals.md)


@pytest.fixture(scope="module")
def history_output(tmp_path_factory):
    """`python -m perpwatch.serving.history` on data/history/ with the default settings (about 20 s)."""
    import contextlib
    import io

    from perpwatch.serving import history

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PERPWATCH_SIGNALS", raising=False)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert history.main(["--db", str(tmp_path_factory.mktemp("history") / "h.duckdb")]) == 0
    return out.getvalue()


def _history_section() -> str:
    text = (ROOT / "docs" / "signals.md").read_text()
    return text[text.index("## What real history says"):]


def test_the_real_history_block_in_the_docs_is_what_the_script_prints(history_output):
    from perpwatch.serving import history

    doc = _history_section()
    begin, end = doc.index(history.BEGIN), doc.index(history.END) + len(history.END)
    assert doc[begin:end] + "\n" == history_output, "re-run: python -m perpwatch.serving.history"


def test_real_history_headline_numbers(history_output):
    """The verdicts the prose states, read back from the printed summary."""
    import re

    assert "- tests: 66 (signal, asset, horizon) rows with a t-statistic: 16 signals" in history_output
    assert "- |t| >= 3: 0 rows" in history_output
    assert "- Bonferroni (p < 0.05 / 66, |t| >= 3.37): 0 rows" in history_output
    assert "- |t| >= 1.96: 11 rows (expected by chance alone: 3.3)" in history_output
    assert "- largest |t|: 2.82 (regime:falling_oi_rising_price BTC 7d)" in history_output
    assert "| `funding_extreme_low` | BTC | 1 / 3 / 7 | 80 (48) |" in history_output
    # every decimal figure of the prose around the block is one the script printed (rule thresholds
    # quoted from signals.toml excepted)
    doc = _history_section()
    prose = doc[:doc.index("<!-- history:begin")] + doc[doc.index("<!-- history:end"):]
    printed = set(re.findall(r"\d+\.\d+", history_output))
    figures = set(re.findall(r"\d+\.\d+", prose)) - {"0.5", "1.5"}
    assert figures and figures <= printed, sorted(figures - printed)


def test_near_event_days_match_the_definition_on_random_gappy_histories():
    """_near_events (one sorted search) against its definition, row by row: a non-event day of an asset with an
    event of the same asset 1 .. h-1 calendar days earlier. Several assets, missing days, unsorted rows."""
    import numpy as np

    from perpwatch.transforms.marts.signal_performance import _near_events

    rng = np.random.default_rng(5)
    rows = []
    for a in ("BTC", "ETH", "SOL", "DOGE"):
        for d in range(200):
            if rng.random() < 0.8:                       # about one day in five missing
                rows.append({"asset": a, "date": date(2024, 1, 1) + timedelta(days=d), "__event": bool(rng.random() < 0.1)})
    frame = pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=1)
    events = {(r["asset"], r["date"]) for r in frame.iter_rows(named=True) if r["__event"]}
    for h in (1, 2, 3, 7):
        want = [not r["__event"] and any((r["asset"], r["date"] - timedelta(days=k)) in events for k in range(1, h))
                for r in frame.iter_rows(named=True)]
        got = _near_events(frame, h)
        assert got.tolist() == want, h
        assert h == 1 or 0 < sum(want) < frame.height
