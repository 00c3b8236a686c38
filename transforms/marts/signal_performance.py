"""marts.signal_performance [signal, asset, horizon_days]: what happened after each signal fired.

For every signal of marts.daily_signals (SIGNALS below: the flags, each OI/price regime and
each signal_state) and every asset (plus asset = 'ALL', all assets pooled), over each
horizon h of [performance] horizons_days:

- events: days D the signal fired; forward return r = close(D + h) / close(D) - 1 (calendar
  days; an event without a close h days later is left out), max drawdown over the closes
  D .. D + h (largest fall from a running peak, a positive fraction);
- baseline: every day in the same period on which the signal *could* have fired (its inputs
  exist that day, e.g. funding for a funding rule) and that lies outside every event window of
  the same asset (not within the h - 1 days after an event, whose forward windows are mostly the
  event's own): the mean of the same forward return on ordinary days. Days *before* an event stay
  in: leaving out "days followed by an event within h - 1 days" selects on the future (an OI/price
  regime is itself a price move, so the baseline would lose exactly the days that precede rallies
  or drops); their overlap with the event's window is what the HAC errors below account for;
- hit_rate: share of events whose forward return has the sign the claim predicts
  (expected_sign, +1 up / -1 down; a zero return is a miss); NULL where no direction is
  claimed (then compare mean_abs_forward_return with baseline_mean_abs_return: the seed's
  "sharp moves"); baseline_hit_rate is the same share over baseline days;
- t_stat: the event-dummy coefficient of OLS r = a + b x event over event and baseline days
  (b = mean_forward_return - baseline_mean_return) over its HAC standard error: Newey-West with
  Bartlett weights and lag h - 1 over the date sequence (overlapping h-day windows are
  autocorrelated up to h - 1 days). In the pooled ALL row the scores are first summed per date
  (clustered by date: BTC/ETH/SOL firing the same day are one observation, not three), then
  Newey-West over dates (Driscoll-Kraay). n_episodes counts runs of consecutive event days;
- multiple testing: n_tests = rows with a t_stat in the table (signals x assets x horizons);
  p_value is two-sided (normal), significant_bonferroni = p_value < 0.05 / n_tests.

Forward returns use later prices by design (this is the evaluation); the signals themselves
are point-in-time (tests/test_point_in_time.py).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl

from perpwatch.core.settings import signal_settings

# An event study over all history, not a daily signal: `build_incremental` leaves it to full builds.
INCREMENTAL = "skip"
TABLE = "marts.signal_performance"
INPUTS = ["marts.daily_signals"]
POOLED = "ALL"

REGIMES = {
    "rising_oi_rising_price": (1, "seed", "rising OI with rising price = momentum"),
    "falling_oi_falling_price": (1, "seed", "falling OI in a correction = exhaustion, mean reversion"),
    "rising_oi_falling_price": (-1, "convention", "new shorts pressing a decline"),
    "falling_oi_rising_price": (-1, "convention", "short-covering rally without new money fades"),
    "flat": (0, "none", "moves inside the minimum-move band"),
}
STATES = {
    "overheated": (-1, "seed", "funding and long/short extremes together precede cascades"),
    "capitulation": (1, "seed", "long-liquidation surge in a deleveraging drop precedes a reversal"),
    "short_squeeze": (-1, "seed", "short-liquidation surge in a rally precedes a reversal"),
    "deleveraging": (1, "seed", "falling OI in a correction = exhaustion"),
    "healthy_trend": (1, "seed", "rising OI with rising price = momentum"),
    "crowded_trend": (0, "none", "momentum against crowded longs: no directional claim"),
    "short_covering": (-1, "convention", "short-covering rally fades"),
    "shorts_building": (-1, "convention", "new shorts pressing a decline"),
    "neutral": (0, "none", "no rule fired"),
}


@dataclass(frozen=True)
class Signal:
    name: str
    event: pl.Expr  # True on days the signal fired
    available: pl.Expr  # the signal's inputs exist that day: the baseline days
    expected_sign: int  # +1 up, -1 down, 0 no directional claim
    expected_from: str  # seed | convention | none
    claim: str


def signals(cfg: dict | None = None) -> list[Signal]:
    """Every evaluated signal with its expected direction (docs/signals.md has the table)."""
    cfg = cfg or signal_settings()
    c = pl.col
    funding = c("funding_rate_8h").is_not_null()
    ls = c("ls_ratio").is_not_null()
    liq = c("liquidation_zscore").is_not_null()
    hm = c("cluster_above_distance").is_not_null() | c("cluster_below_distance").is_not_null()
    near = cfg["alerts"]["heatmap_cluster_distance"]
    lsc = cfg["long_short"]
    out = [
        Signal(
            "overheating",
            c("overheating"),
            funding & ls,
            -1,
            "seed",
            "funding extreme AND long/short above threshold precede liquidation cascades",
        ),
        Signal(
            "cascade_risk_high",
            c("cascade_risk") >= cfg["alerts"]["cascade_risk_warning"],
            c("cascade_risk").is_not_null(),
            -1,
            "seed",
            "cascade-risk score at or above the alert level",
        ),
        Signal(
            "funding_extreme_high",
            c("funding_extreme_direction") == 1,
            funding,
            -1,
            "convention",
            "very positive funding: crowded longs, downside",
        ),
        Signal(
            "funding_extreme_low",
            c("funding_extreme_direction") == -1,
            funding,
            1,
            "convention",
            "very negative funding: crowded shorts, upside",
        ),
        Signal(
            "funding_absolute_high",
            c("funding_extreme_absolute") & (c("funding_extreme_direction") == 1),
            funding,
            -1,
            "seed",
            "the seed's 0.5 %/8h rule alone",
        ),
        Signal(
            "funding_percentile_high",
            c("funding_extreme_percentile") & (c("funding_rate_8h") > 0),
            funding,
            -1,
            "convention",
            "the rolling-percentile rule alone (positive side)",
        ),
        Signal(
            "ls_extreme_high",
            c("ls_ratio") > lsc["extreme_ratio"],
            ls,
            -1,
            "convention",
            "long/short accounts above 1.5: crowded longs",
        ),
        Signal(
            "ls_extreme_low",
            c("ls_ratio") < lsc["extreme_ratio_low"],
            ls,
            1,
            "convention",
            "long/short accounts below 1/1.5: crowded shorts",
        ),
        Signal(
            "ls_top_accounts_high",
            c("ls_ratio_top_accounts") > lsc["top_accounts_extreme_ratio"],
            c("ls_ratio_top_accounts").is_not_null(),
            -1,
            "convention",
            "top-trader accounts crowded long",
        ),
        Signal(
            "ls_top_accounts_low",
            c("ls_ratio_top_accounts") < lsc["top_accounts_extreme_ratio_low"],
            c("ls_ratio_top_accounts").is_not_null(),
            1,
            "convention",
            "top-trader accounts crowded short",
        ),
        Signal(
            "ls_top_positions_high",
            c("ls_ratio_top_positions") > lsc["top_positions_extreme_ratio"],
            c("ls_ratio_top_positions").is_not_null(),
            -1,
            "convention",
            "top-trader positions crowded long",
        ),
        Signal(
            "ls_top_positions_low",
            c("ls_ratio_top_positions") < lsc["top_positions_extreme_ratio_low"],
            c("ls_ratio_top_positions").is_not_null(),
            1,
            "convention",
            "top-trader positions crowded short",
        ),
        Signal(
            "liquidation_surge_long",
            c("liquidation_surge") & (c("liquidation_dominant_side") == "long"),
            liq,
            1,
            "seed",
            "long-liquidation surge precedes a reversal (up)",
        ),
        Signal(
            "liquidation_surge_short",
            c("liquidation_surge") & (c("liquidation_dominant_side") == "short"),
            liq,
            -1,
            "seed",
            "short-liquidation surge precedes a reversal (down)",
        ),
        Signal(
            "heatmap_cluster_near",
            (c("cluster_above_distance") <= near) | (c("cluster_below_distance") <= near),
            hm,
            0,
            "seed",
            "bright heatmap bands near price precede sharp moves (no direction)",
        ),
        Signal(
            "heatmap_cluster_above_near",
            c("cluster_above_distance") <= near,
            hm,
            1,
            "convention",
            "price is drawn to a nearby cluster above",
        ),
        Signal(
            "heatmap_cluster_below_near",
            c("cluster_below_distance") <= near,
            hm,
            -1,
            "convention",
            "price is drawn to a nearby cluster below",
        ),
        Signal(
            "basis_extreme_high",
            c("basis_extreme") & (c("basis_annualized") > 0),
            c("basis_annualized").is_not_null(),
            -1,
            "convention",
            "rich futures premium mean-reverts",
        ),
        Signal(
            "basis_extreme_low",
            c("basis_extreme") & (c("basis_annualized") < 0),
            c("basis_annualized").is_not_null(),
            1,
            "convention",
            "futures discount mean-reverts",
        ),
        Signal(
            "oi_to_mcap_extreme",
            c("oi_to_mcap_extreme"),
            c("oi_to_mcap_threshold").is_not_null(),
            0,
            "seed",
            "OI far above its usual share of market cap = dislocation risk (no direction)",
        ),
        Signal(
            "oi_milestone",
            c("oi_milestone_crossed").is_not_null(),
            c("oi_change_1d").is_not_null(),
            0,
            "none",
            "an aggregate OI milestone crossed from below",
        ),
    ]
    for regime, (sign, src, claim) in REGIMES.items():
        out.append(
            Signal(
                f"regime:{regime}",
                c("oi_price_regime") == regime,
                c("oi_price_regime").is_not_null(),
                sign,
                src,
                claim,
            )
        )
    # a state is only informative where its inputs exist: the OI/price regime, or the
    # funding + long/short pair behind "overheated"
    state_inputs = c("oi_price_regime").is_not_null() | (funding & ls)
    for state, (sign, src, claim) in STATES.items():
        out.append(Signal(f"state:{state}", c("signal_state") == state, state_inputs, sign, src, claim))
    return out


def horizons(cfg: dict | None = None) -> list[int]:
    cfg = cfg or signal_settings()
    hs = cfg["performance"]["horizons_days"]
    if not isinstance(hs, list) or not hs or not all(isinstance(h, int) and h >= 1 for h in hs):
        raise ValueError(f"[performance] horizons_days must be a list of positive integers, got {hs!r}")
    return sorted(set(hs))


def forward_paths(daily: pl.DataFrame, hs: list[int]) -> pl.DataFrame:
    """daily (asset, date, close_usd, ...) plus fwd_return_{h} and max_drawdown_{h} per horizon."""
    top = max(hs)
    closes = daily.select("asset", "date", pl.col("close_usd").alias("c"))
    frame = daily.sort("asset", "date")
    for k in range(1, top + 1):  # close k calendar days later (NULL when that day is missing)
        frame = frame.join(
            closes.with_columns(pl.col("date") - pl.duration(days=k)).rename({"c": f"__c{k}"}),
            on=["asset", "date"],
            how="left",
        )
    peak = pl.col("close_usd")
    dd: pl.Expr = pl.lit(0.0)
    cols = []
    for k in range(1, top + 1):
        ck = pl.col(f"__c{k}")
        peak = pl.max_horizontal(peak, ck)
        dd = pl.max_horizontal(dd, 1 - ck / peak)
        if k in hs:
            complete = pl.all_horizontal([pl.col(f"__c{j}").is_not_null() for j in range(1, k + 1)])
            cols += [
                (ck / pl.col("close_usd") - 1).alias(f"fwd_return_{k}"),
                pl.when(complete).then(dd).alias(f"max_drawdown_{k}"),
            ]
    return frame.with_columns(cols).drop([f"__c{k}" for k in range(1, top + 1)])


SCHEMA = {
    "signal": pl.String,
    "asset": pl.String,
    "horizon_days": pl.Int64,
    "expected_sign": pl.Int64,
    "expected_from": pl.String,
    "n_events": pl.Int64,
    "n_episodes": pl.Int64,
    "mean_forward_return": pl.Float64,
    "median_forward_return": pl.Float64,
    "baseline_n": pl.Int64,
    "baseline_mean_return": pl.Float64,
    "excess_return": pl.Float64,
    "hit_rate": pl.Float64,
    "baseline_hit_rate": pl.Float64,
    "t_stat": pl.Float64,
    "se_method": pl.String,
    "p_value": pl.Float64,
    "n_tests": pl.Int64,
    "significant_bonferroni": pl.Boolean,
    "mean_max_drawdown": pl.Float64,
    "baseline_mean_max_drawdown": pl.Float64,
    "mean_abs_forward_return": pl.Float64,
    "baseline_mean_abs_return": pl.Float64,
    "first_date": pl.Date,
    "last_date": pl.Date,
    "claim": pl.String,
}


def hac_tstat(dates: np.ndarray, y: np.ndarray, event: np.ndarray, lag: int) -> float | None:
    """t of b in OLS y = a + b*event, HAC: scores summed per date, Newey-West (Bartlett, `lag`) over dates."""
    X = np.column_stack([np.ones(y.size), event.astype(float)])
    if y.size < 3 or event.sum() < 2 or event.sum() == y.size:
        return None
    xtx = X.T @ X
    if abs(np.linalg.det(xtx)) < 1e-12:
        return None
    beta = np.linalg.solve(xtx, X.T @ y)
    u = y - X @ beta
    order = np.argsort(dates, kind="stable")
    d, scores = dates[order], (X * u[:, None])[order]
    uniq, idx = np.unique(d, return_inverse=True)
    G = np.zeros((uniq.size, 2))
    np.add.at(G, idx, scores)
    S = G.T @ G
    for k in range(1, min(lag, uniq.size - 1) + 1):
        w = 1 - k / (lag + 1)
        gk = G[k:].T @ G[:-k]
        S += w * (gk + gk.T)
    bread = np.linalg.inv(xtx)
    var = (bread @ S @ bread)[1, 1]
    return float(beta[1] / math.sqrt(var)) if var > 0 else None


def hac_tstats_by_group(group: np.ndarray, dates: np.ndarray, y: np.ndarray, event: np.ndarray,
                        lag: int) -> np.ndarray:
    """hac_tstat of every group at once: one t per run of equal `group` values (NaN where hac_tstat gives
    None); rows sorted by (group, date). Closed form of the one-dummy OLS: b = mean(y | event) -
    mean(y | no event), u = y minus its own (group, event) mean, X'X = [[n, n1], [n1, n1]] with
    det = n1 * n0, so b's sandwich variance is that of the score z = u / n1 on event rows and -u / n0 on
    the others (row 2 of (X'X)^-1 times [u, event * u]): summed per date, then Newey-West with Bartlett
    weights over the positions of the group's dates (not calendar days). Same None rules as hac_tstat."""
    if y.size == 0:
        return np.empty(0)
    event = event.astype(bool)
    first = np.ones(y.size, dtype=bool)
    first[1:] = group[1:] != group[:-1]
    starts = np.flatnonzero(first)
    count = np.diff(np.append(starts, y.size))
    e = event.astype(float)
    n, n1 = count.astype(float), np.add.reduceat(e, starts)
    n0, det = n - n1, n * n1 - n1 * n1
    ok = (n >= 3) & (n1 >= 2) & (n1 != n) & (np.abs(det) >= 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        # per (group, event) cell 2 * group + event: its mean and the weight of u in z
        mean = np.column_stack([np.add.reduceat(y * (1 - e), starts) / n0, np.add.reduceat(y * e, starts) / n1])
        weight = np.column_stack([-1 / n0, 1 / n1])
        cell = 2 * np.repeat(np.arange(starts.size), count) + event
        z = (y - mean.ravel()[cell]) * weight.ravel()[cell]
    new_date = first.copy()  # scores summed per (group, date)
    new_date[1:] |= dates[1:] != dates[:-1]
    if new_date.all():
        zd, dstarts = z, starts
    else:
        zd, dstarts = np.add.reduceat(z, np.flatnonzero(new_date)), np.flatnonzero(first[new_date])
    var = np.add.reduceat(zd * zd, dstarts)
    pair = np.zeros(zd.size)
    for k in range(1, min(lag, zd.size - 1) + 1):  # pairs k dates apart within the same group
        np.multiply(zd[k:], zd[:-k], out=pair[:-k])
        pair[-k:] = 0.0
        cross = (dstarts[1:, None] - np.arange(1, k + 1)).ravel()  # pairs reaching into the previous group
        pair[cross[cross >= 0]] = 0.0
        var += 2 * (1 - k / (lag + 1)) * np.add.reduceat(pair, dstarts)
    with np.errstate(invalid="ignore"):
        return np.where(ok & (var > 0), (mean[:, 1] - mean[:, 0]) / np.sqrt(np.where(var > 0, var, 1.0)), np.nan)


def _days_since_event(frame: pl.DataFrame) -> np.ndarray:
    """Per row: calendar days since the latest event of the same asset on an earlier date (a large number
    where there is none). One sorted search over (asset, day) keys for every row at once (a loop over
    assets scanned all rows per asset: quadratic in the number of assets)."""
    none = np.full(frame.height, np.iinfo(np.int64).max)
    ev = frame["__event"].to_numpy().astype(bool)
    if not ev.any():
        return none
    days = frame["date"].cast(pl.Int32).to_numpy().astype(np.int64)
    code = frame["asset"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    span = int(days.max() - days.min()) + 1  # keys of two assets never overlap
    key = code * span + (days - int(days.min()))
    ev_keys = key[ev]
    if (ev_keys[1:] < ev_keys[:-1]).any():   # rows sorted by (asset, date) give sorted keys: no sort then
        ev_keys = np.sort(ev_keys)
    i = np.searchsorted(ev_keys, key, "left") - 1  # the latest event key below the row's
    prev = ev_keys[np.maximum(i, 0)]
    return np.where((i >= 0) & (prev // span == code), key - prev, none)


def _near_events(frame: pl.DataFrame, h: int) -> np.ndarray:
    """True on non-event days inside an event window of the same asset: an event 1 .. h - 1 days
    earlier. Only earlier events: excluding days because an event follows would condition on the future."""
    return ~frame["__event"].to_numpy().astype(bool) & (_days_since_event(frame) <= h - 1)


def evaluate(daily: pl.DataFrame, sigs: list[Signal], hs: list[int]) -> pl.DataFrame:
    """The performance table for a daily_signals frame (pure: tests call it directly)."""
    if daily.height == 0:
        return pl.DataFrame(schema=SCHEMA)
    # every signal's masks in one pass over the wide frame, then work on a narrow one
    masks = daily.select(
        "asset",
        "date",
        "close_usd",
        *[s.available.fill_null(False).alias(f"__a{i}") for i, s in enumerate(sigs)],
        *[
            (s.event.fill_null(False) & s.available.fill_null(False)).alias(f"__e{i}")
            for i, s in enumerate(sigs)
        ],
    )
    paths = forward_paths(masks, hs).sort("asset", "date")
    value_cols = [f"{k}_{h}" for h in hs for k in ("fwd_return", "max_drawdown")]

    def one(i: int, s: Signal) -> list[pl.DataFrame]:
        """One signal's rows, every horizon."""
        parts: list[pl.DataFrame] = []
        base = paths.select(
            "asset",
            "date",
            *value_cols,
            pl.col(f"__e{i}").alias("__event"),
            pl.col(f"__a{i}").alias("__avail"),
        ).filter(pl.col("__avail"))
        if base.height == 0:
            return parts
        prev_same_asset = pl.col("asset").shift(1) == pl.col("asset")
        base = base.with_columns(  # an episode starts on an event day whose previous day was no event
            (
                pl.col("__event")
                & ~(
                    prev_same_asset.fill_null(False)
                    & pl.col("__event").shift(1).fill_null(False)
                    & (pl.col("date").shift(1) == pl.col("date") - pl.duration(days=1))
                )
            ).alias("__start")
        )
        multi = base["asset"].n_unique() > 1
        since, no_event = _days_since_event(base), ~base["__event"].to_numpy()
        ev = pl.col("__event")
        sign = s.expected_sign
        no_claim = pl.lit(None, dtype=pl.Float64)
        # every horizon in ONE aggregation per signal: a horizon's sample (days with a forward return that are
        # events or baseline days) is a mask inside each statistic, not a filtered copy of the frame
        near = {h: pl.Series(f"__near{h}", no_event & (since <= h - 1)) for h in hs}
        based = base.with_columns(*near.values())
        stats, kept = [], []
        for h in hs:
            r, dd = pl.col(f"fwd_return_{h}"), pl.col(f"max_drawdown_{h}")
            has_r = r.is_not_null()
            bl = ~ev & ~pl.col(f"__near{h}")
            on_ev, on_bl, in_sample = has_r & ev, has_r & bl, has_r & (ev | bl)
            hit = (r.sign() == sign).cast(pl.Float64)
            stats += [
                in_sample.sum().alias(f"__n_{h}"),
                on_ev.sum().cast(pl.Int64).alias(f"n_events_{h}"),
                (pl.col("__start") & on_ev).sum().cast(pl.Int64).alias(f"n_episodes_{h}"),
                r.filter(on_ev).mean().alias(f"mean_forward_return_{h}"),
                r.filter(on_ev).median().alias(f"median_forward_return_{h}"),
                on_bl.sum().cast(pl.Int64).alias(f"baseline_n_{h}"),
                r.filter(on_bl).mean().alias(f"baseline_mean_return_{h}"),
                (hit.filter(on_ev).mean() if sign else no_claim).alias(f"hit_rate_{h}"),
                (hit.filter(on_bl).mean() if sign else no_claim).alias(f"baseline_hit_rate_{h}"),
                dd.filter(on_ev).mean().alias(f"mean_max_drawdown_{h}"),
                dd.filter(on_bl).mean().alias(f"baseline_mean_max_drawdown_{h}"),
                r.abs().filter(on_ev).mean().alias(f"mean_abs_forward_return_{h}"),
                r.abs().filter(on_bl).mean().alias(f"baseline_mean_abs_return_{h}"),
                pl.col("date").filter(in_sample).min().alias(f"first_date_{h}"),
                pl.col("date").filter(in_sample).max().alias(f"last_date_{h}"),
            ]
            kept.append((h, has_r & (ev | bl)))
        agg = based.group_by("asset", maintain_order=True).agg(stats)
        if multi:  # the pooled row: all assets as one group (its t below: scores summed per date, Driscoll-Kraay)
            agg = pl.concat([agg, based.select(pl.lit(POOLED).alias("asset"), *stats)])
        masks = based.select(m.alias(f"__in{h}") for h, m in kept)
        asset_id = based["asset"].rle_id().to_numpy()  # rows sorted by asset: id i is the i-th asset
        run_names = np.asarray(based["asset"].unique(maintain_order=True).to_list(), dtype=object)
        all_dates = based["date"].cast(pl.Int32).to_numpy()
        event = based["__event"].to_numpy()
        # the pooled t's rows by date: one stable sort of all rows; a sample's date order is its rows in it
        by_date = np.argsort(all_dates, kind="stable") if multi else None
        for h in hs:
            keep = masks[f"__in{h}"].to_numpy()
            if not keep.any():
                continue
            y_all = based[f"fwd_return_{h}"].to_numpy()
            dates, y, e = all_dates[keep], y_all[keep], event[keep]
            ids = asset_id[keep]   # ascending (rows sorted by asset): its distinct values are its runs' first
            names = run_names[ids[np.r_[True, ids[1:] != ids[:-1]]]].tolist()
            t = hac_tstats_by_group(ids, dates, y, e, h - 1)
            methods = ["newey_west"] * len(names)
            if multi:
                o = by_date[keep[by_date]]
                t = np.append(t, hac_tstats_by_group(np.zeros(o.size, dtype=np.int64), all_dates[o], y_all[o], event[o],
                                                     h - 1))
                names.append(POOLED)
                methods.append("driscoll_kraay_by_date")
            tframe = pl.DataFrame({"asset": names, "t_stat": pl.Series(t).fill_nan(None), "se_method": methods})
            cols = [c for c in SCHEMA if f"{c}_{h}" in agg.columns]
            parts.append(
                agg.filter(pl.col(f"__n_{h}") > 0)
                .select("asset", *[pl.col(f"{c}_{h}").alias(c) for c in cols])
                .with_columns(
                    pl.lit(s.name).alias("signal"),
                    pl.lit(h, dtype=pl.Int64).alias("horizon_days"),
                    pl.lit(sign, dtype=pl.Int64).alias("expected_sign"),
                    pl.lit(s.expected_from).alias("expected_from"),
                    pl.lit(s.claim).alias("claim"),
                    (pl.col("mean_forward_return") - pl.col("baseline_mean_return")).alias("excess_return"),
                ).join(tframe, on="asset", how="left")
            )
        return parts

    # signals are independent: two at a time (polars and numpy release the GIL; one signal's work keeps ~1.3 cores
    # busy), results in signal order
    with ThreadPoolExecutor(min(2, os.cpu_count() or 1)) as pool:
        parts = [p for got in pool.map(one, range(len(sigs)), sigs) for p in got]
    if not parts:
        return pl.DataFrame(schema=SCHEMA)
    out = pl.concat(parts, how="diagonal_relaxed")
    n_tests = out["t_stat"].is_not_null().sum()
    p = pl.col("t_stat").abs().map_elements(lambda t: math.erfc(t / math.sqrt(2)), return_dtype=pl.Float64)
    out = out.with_columns(p.alias("p_value"), pl.lit(n_tests, dtype=pl.Int64).alias("n_tests"))
    out = out.with_columns((pl.col("p_value") < 0.05 / max(n_tests, 1)).alias("significant_bonferroni"))
    return out.select([pl.col(k).cast(v) for k, v in SCHEMA.items()]).sort("signal", "asset", "horizon_days")


def build(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    cfg = signal_settings()
    daily = con.sql("SELECT * FROM marts.daily_signals").pl()
    return evaluate(daily, signals(cfg), horizons(cfg))
