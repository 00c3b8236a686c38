"""hac_tstats_by_group (every group's HAC t at once) against hac_tstat, group by group, and evaluate's t_stat
column against hac_tstat on event and baseline rows rebuilt from the definitions."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from perpwatch.transforms.marts import signal_performance as sp

KINDS = ["sparse", "dense", "normal", "normal", "long", "tiny", "two_rows", "one_event", "all_events",
         "no_events", "flat", "nan"]
NONE_KINDS = {"tiny", "two_rows", "one_event", "all_events", "no_events", "flat", "nan"}


def random_panel(rng: np.random.Generator):
    """Groups (sorted by group, then date) with gaps in their dates, sparse and dense events, and groups for
    each None rule of hac_tstat: fewer than 3 rows, fewer than 2 events, only events, zero residuals
    (var 0), a NaN return (det(X'X) = n1 * n0 is below 1e-12 only when one of the event rules holds)."""
    kinds = rng.permutation(KINDS)
    groups, dates, ys, evs = [], [], [], []
    for g, kind in enumerate(kinds):
        n = {"tiny": 2, "two_rows": 2, "long": 300}.get(kind, int(rng.integers(3, 120)))
        d = np.sort(rng.choice(3 * n + 10, size=n, replace=False))  # gaps: positions are not calendar days
        p = {"sparse": 0.05, "dense": 0.8, "all_events": 1.0, "no_events": 0.0}.get(kind, 0.3)
        e = rng.random(n) < p
        if kind == "sparse":
            e[rng.choice(n, size=2, replace=False)] = True  # at least two events
        if kind == "one_event":
            e[:] = False
            e[rng.integers(n)] = True
        y = rng.normal(0.0, 0.05, n) + 0.02 * e
        if kind == "flat":
            y[:] = 0.0
        if kind == "nan":
            y[rng.integers(n)] = np.nan
        groups.append(np.full(n, g))
        dates.append(d)
        ys.append(y)
        evs.append(e)
    return kinds, np.concatenate(groups), np.concatenate(dates), np.concatenate(ys), np.concatenate(evs)


def reference(group, dates, y, event, lag):
    """hac_tstat group by group (groups in order of appearance), NaN for None."""
    _, first = np.unique(group, return_index=True)
    out = []
    for g in group[np.sort(first)]:
        m = group == g
        t = sp.hac_tstat(dates[m], y[m], event[m], lag)
        out.append(np.nan if t is None else t)
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_t_stats_equal_hac_tstat_per_group(seed):
    rng = np.random.default_rng(seed)
    kinds, group, dates, y, event = random_panel(rng)
    for lag in (0, 1, 2, 6, 400):  # 400: more lags than any group has dates
        want = reference(group, dates, y, event, lag)
        assert [k in NONE_KINDS for k in kinds] == np.isnan(want).tolist(), lag  # each None rule is met
        got = sp.hac_tstats_by_group(group, dates, y, event, lag)
        assert np.array_equal(np.isnan(got), np.isnan(want)), lag
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=0)
    t0, t6 = reference(group, dates, y, event, 0), reference(group, dates, y, event, 6)
    assert np.nanmax(np.abs(t0 / t6 - 1)) > 1e-3  # the lags matter: a wrong lag or weight shows


@pytest.mark.parametrize("seed", range(3))
def test_vectorised_t_stats_sum_scores_per_date(seed):
    """The pooled use: one group of several assets' rows sorted by date (dates repeat), and groups with
    repeated dates: scores are summed per date before Newey-West, as in hac_tstat."""
    rng = np.random.default_rng(100 + seed)
    n = 400
    dates = np.sort(rng.integers(0, 150, n))
    y, event = rng.normal(0.0, 0.05, n), rng.random(n) < 0.2
    for group in (np.zeros(n, dtype=np.int64), np.repeat(np.arange(4), n // 4)):
        order = np.lexsort((dates, group))
        g, d, yy, e = group[order], dates[order], y[order], event[order]
        assert (np.diff(d)[np.diff(g) == 0] == 0).any()
        for lag in (0, 2, 6):
            np.testing.assert_allclose(sp.hac_tstats_by_group(g, d, yy, e, lag), reference(g, d, yy, e, lag),
                                       rtol=1e-9, atol=0)


def test_evaluate_t_stats_equal_hac_tstat_on_the_rebuilt_samples():
    """Every t_stat of evaluate (per asset and pooled) equals hac_tstat on the event and baseline days
    rebuilt from the definitions: forward return h calendar days later, events on available days, baseline =
    available non-event days without an event of the same asset 1 .. h - 1 days earlier."""
    rng = np.random.default_rng(7)
    d0, rows = date(2024, 1, 1), []
    for a, p in (("BTC", 0.05), ("ETH", 0.3), ("SOL", 0.6), ("XRP", 0.02)):
        close = 100.0
        for d in range(150):
            close *= 1 + rng.normal(0.0, 0.03)
            if rng.random() < 0.85:  # missing days
                rows.append({"asset": a, "date": d0 + timedelta(days=d), "close_usd": close,
                             "flag": bool(rng.random() < p), "avail": bool(rng.random() < 0.9)})
    daily = pl.DataFrame(rows)
    sig = sp.Signal("test", pl.col("flag"), pl.col("avail"), 1, "seed", "test")
    out = sp.evaluate(daily, [sig], [1, 3, 7])
    close = {(r["asset"], r["date"]): r["close_usd"] for r in rows}
    checked = 0
    for h in (1, 3, 7):
        sample = []  # (asset, day, r, event)
        for r in rows:
            a, d = r["asset"], r["date"]
            if not r["avail"] or (a, d + timedelta(days=h)) not in close:
                continue
            ev = r["flag"]
            near = any(x["asset"] == a and x["flag"] and x["avail"] and 1 <= (d - x["date"]).days <= h - 1
                       for x in rows)
            if ev or not near:
                sample.append((a, (d - d0).days, close[(a, d + timedelta(days=h))] / r["close_usd"] - 1, ev))
        for a in ("BTC", "ETH", "SOL", "XRP", "ALL"):
            s = [x for x in sample if a in (x[0], "ALL")]
            want = sp.hac_tstat(np.array([x[1] for x in s]), np.array([x[2] for x in s]),
                                np.array([x[3] for x in s]), h - 1)
            got = out.filter((pl.col("asset") == a) & (pl.col("horizon_days") == h)).row(0, named=True)
            assert got["se_method"] == ("driscoll_kraay_by_date" if a == "ALL" else "newey_west")
            if want is None:
                assert got["t_stat"] is None, (a, h)
            else:
                assert got["t_stat"] == pytest.approx(want, rel=1e-9), (a, h)
                checked += 1
    assert checked >= 10
