# ruff: noqa: F401, F811  (pytest fixtures imported from tests/test_signals.py)
"""Issue 13: alerts only for finished days, coverage changes that are not market moves, and
liquidation capture gaps that are missing data, not quiet days. Expected values are written out.

Helpers and pinned settings come from tests/test_signals.py (same hand-built staging frames).
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from perpwatch.serving import alerts as delivery
from perpwatch.transforms import build_all
from tests.test_signals import (  # noqa: F401 - fixtures
    MARTS,
    add_closes,
    add_ls,
    add_oi,
    add_price,
    at,
    con,
    day,
    hook,
    pin,
    row,
    signals,
)


def _alerts(con):
    return con.execute("SELECT date, asset, rule, value, complete FROM marts.alerts ORDER BY ts, rule").fetchall()


# --------------------------------------------------------------------------- 1. completeness


def _day1_in_progress(con):
    """BTC: day 0 complete (23:00 bar); day 1 has bars 00:00-02:00 only; ls 1.6 on both days."""
    add_closes(con, "BTC", [100.0])
    for h in range(3):
        add_price(con, "BTC", 1, 101.0 + h, hour=h)
    add_ls(con, "BTC", 0, 1.6)
    add_ls(con, "BTC", 1, 1.6, hour=2)


def test_a_build_at_0300_utc_marks_the_day_in_progress_provisional(con, pin):
    _day1_in_progress(con)
    clock = at(1, 3)                                   # 03:00 UTC of day 1 (the 23:15 New York build)
    build_all(con, only=MARTS, now=clock)
    df = con.sql("SELECT * FROM marts.daily_signals ORDER BY date").pl()
    assert df.filter(pl.col("date") == day(0))["complete"].to_list() == [True]
    r1 = row(df, "BTC", 1)
    assert (r1["complete"], r1["close_complete"], r1["close_usd"]) == (False, False, 103.0)
    assert _alerts(con) == [(day(0), "BTC", "ls_extreme", 1.6, True), (day(1), "BTC", "ls_extreme", 1.6, False)]
    # the same data built at 00:59 of day 1 is not complete for day 0 either (1 h venue lag)
    build_all(con, only=MARTS, now=datetime(2026, 3, 3, 0, 59, tzinfo=UTC))
    assert con.execute("SELECT complete FROM marts.daily_signals WHERE date = ?", [day(0)]).fetchone() == (False,)


def test_delivery_at_0300_sends_only_the_finished_day_then_the_final_version(con, pin, hook, monkeypatch):
    url, handler = hook
    monkeypatch.setenv(delivery.WEBHOOK_ENV, url)
    _day1_in_progress(con)
    build_all(con, only=MARTS, now=at(1, 3))
    first = delivery.deliver(con, now=at(1, 3))
    assert first.sent == 1
    assert [(b["date"], b["status"], b["complete"]) for b in handler.bodies] == [("2026-03-02", "final", True)]
    # rebuild at 03:30 with the same data: nothing is resent, the provisional day still waits
    build_all(con, only=MARTS, now=at(1, 3).replace(minute=30))
    assert delivery.deliver(con, now=at(1, 3).replace(minute=30)).sent == 0
    # the day ends: its 23:00 bar and last ratio (1.75) arrive; built at 01:30 of day 2
    add_price(con, "BTC", 1, 104.0, hour=23)
    add_ls(con, "BTC", 1, 1.75, hour=23)
    build_all(con, only=MARTS, now=at(2, 1).replace(minute=30))
    second = delivery.deliver(con, now=at(2, 1).replace(minute=30))
    assert second.sent == 1
    b = handler.bodies[-1]
    assert (b["date"], b["status"], b["value"], b["revised"]) == ("2026-03-03", "final", 1.75, False)
    assert b["text"] == "[WARNING] BTC long/short account ratio 1.75 is above 1.50: crowded longs"
    # a later rebuild of the same data never resends
    build_all(con, only=MARTS, now=at(3, 12))
    assert delivery.deliver(con, now=at(3, 12)).sent == 0
    log = con.execute("SELECT date_part('day', ts), status FROM meta.alert_deliveries ORDER BY seq").fetchall()
    assert log == [(3, "final"), (4, "final")]


def test_provisional_delivery_is_followed_by_a_revision_or_a_withdrawal(con, pin, hook, monkeypatch):
    url, handler = hook
    monkeypatch.setenv(delivery.WEBHOOK_ENV, url)
    pin({"alerts": {"deliver_provisional": 1}})
    _day1_in_progress(con)
    add_closes(con, "ETH", [10.0])
    for h in range(3):
        add_price(con, "ETH", 1, 10.0, hour=h)
    add_ls(con, "ETH", 1, 0.5, hour=2)                 # crowded shorts so far today
    build_all(con, only=MARTS, now=at(1, 3))
    assert delivery.deliver(con, now=at(1, 3)).sent == 3
    assert [(b["asset"], b["date"], b["status"]) for b in handler.bodies] == [
        ("BTC", "2026-03-02", "final"), ("BTC", "2026-03-03", "provisional"), ("ETH", "2026-03-03", "provisional")]
    assert handler.bodies[1]["text"].startswith("[WARNING PROVISIONAL] BTC")
    # by the end of day 1: BTC ends at 1.75 (revised), ETH's ratio recovered to 1.0 (stopped firing)
    add_price(con, "BTC", 1, 104.0, hour=23)
    add_ls(con, "BTC", 1, 1.75, hour=23)
    add_price(con, "ETH", 1, 10.0, hour=23)
    add_ls(con, "ETH", 1, 1.0, hour=23)
    build_all(con, only=MARTS, now=at(2, 2))
    assert delivery.deliver(con, now=at(2, 2)).sent == 2
    tail = [(b["asset"], b["status"], b["value"], b["revised"]) for b in handler.bodies[3:]]
    assert tail == [("BTC", "final", 1.75, True), ("ETH", "withdrawn", 0.5, True)]
    assert handler.bodies[3]["text"].startswith("[WARNING REVISED] BTC")
    assert handler.bodies[4]["text"].startswith("[WARNING WITHDRAWN] ETH")
    assert delivery.deliver(con, now=at(2, 3)).sent == 0


# --------------------------------------------------------------------------- 2. coverage


def test_binance_history_starting_on_day_31_of_a_60_day_backfill_fires_nothing(con, pin):
    """OKX from day 1 (index 0), Binance USD-M + COIN-M from day 31 (index 30), 60 days."""
    pin({"leverage": {"oi_to_mcap_percentile": 0.95, "oi_to_mcap_window_days": 20, "oi_to_mcap_min_days": 5},
         "milestones": {"oi_usd": [2000, 8000], "rearm_days": 5}})
    for i in range(60):
        add_price(con, "BTC", i, 100.0 * (1.1 if i >= 30 else 1.0))   # +10 % on day 30: a regime-sized move
        con.execute("INSERT INTO staging.market_caps (date, asset, market_cap_usd) VALUES (?, 'BTC', 100000)", [day(i)])
        add_oi(con, "BTC", i, 1000.0 + (i % 3), venue="okx", instrument="BTC-USDT-SWAP")
        add_ls(con, "BTC", i, 1.2, venue="okx", instrument="BTC-USDT-SWAP")
        if i >= 30:
            add_oi(con, "BTC", i, 3000.0, venue="binance", instrument="BTCUSDT")
            add_ls(con, "BTC", i, 2.0, venue="binance", instrument="BTCUSDT")
            if i != 45:                                # COIN-M misses day 45
                add_oi(con, "BTC", i, 1000.0, venue="binance", instrument="BTCUSD_PERP")
    df = signals(con)
    r29, r30, r31 = row(df, "BTC", 29), row(df, "BTC", 30), row(df, "BTC", 31)
    assert r29["oi_to_mcap_threshold"] is not None    # the rule is live before the new venue
    # day 30 (the 31st day): OI 1000 + 0 (30 % 3) -> 5000 with Binance, but like for like only OKX moved
    assert r30["oi_usd"] == 5000.0 and r30["oi_instruments"] == 3 and r30["oi_venues"] == 2
    assert r30["oi_coverage_changed"] is True and r30["oi_like_share_1d"] == pytest.approx(0.2)
    assert r30["oi_change_1d"] == pytest.approx(1000 / 1002 - 1)          # OKX 1002 -> 1000
    assert r30["oi_price_regime"] == "flat"                                # |OI move| 0.2 % < 12.5 % band
    assert r30["oi_to_mcap"] == pytest.approx(0.05) and r30["oi_to_mcap_threshold"] is None
    assert r30["oi_to_mcap_extreme"] is False
    assert r30["oi_milestone_crossed"] is None and r30["market_oi_milestone_crossed"] is None
    # the OI-weighted ratio jumps to (1.2 x 1000 + 2.0 x 3000) / 4000 = 1.8, but like for like it is 1.2
    assert r30["ls_ratio"] == pytest.approx(1.8) and r30["ls_coverage_changed"] is True
    assert r30["ls_extreme"] is False
    assert r31["ls_extreme"] is True                   # same set on days 30 and 31: 1.8 is a level
    rules = {r[2] for r in _alerts(con) if r[0] == day(30)}
    assert not rules & {"oi_to_mcap_extreme", "oi_milestone", "ls_extreme", "overheating"}, rules
    # COIN-M missing on day 45 and back on 46: OKX and USD-M alone decide both changes
    assert row(df, "BTC", 45)["oi_change_1d"] == pytest.approx((1000 + 3000) / (1002 + 3000) - 1)
    assert row(df, "BTC", 46)["oi_change_1d"] == pytest.approx((1001 + 3000) / (1000 + 3000) - 1)
    assert row(df, "BTC", 46)["oi_milestone_crossed"] is None


# --------------------------------------------------------------------------- 4. liquidation coverage


def _cover(con, i, hours, seconds=3600.0):
    for h in hours:
        con.execute("INSERT INTO meta.liquidation_coverage (venue, hour, covered_s) VALUES ('binance', ?, ?)",
                    [at(i, h), seconds])


def _liq_hours(con, i, hours, usd):
    for h in hours:
        con.execute("INSERT INTO staging.liquidations (venue, instrument, ts, side, price, qty_base, asset, usd)"
                    " VALUES ('binance', 'BTCUSDT', ?, 'long', 100, ?, 'BTC', ?)", [at(i, h), usd / 100, usd])


def test_a_collector_gap_does_not_create_a_surge(con, pin):
    pin({"liquidations": {"zscore_window_days": 5, "zscore_min_days": 3, "surge_zscore": 2.0,
                          "min_hour_coverage": 0.9, "min_day_coverage": 0.5}})
    add_closes(con, "BTC", [100.0] * 8)
    for i, rate in enumerate([1000, 1100, 1000, 1100, 1000]):   # days 0-4: collector up 00:00-11:59 only
        _cover(con, i, range(12))
        _liq_hours(con, i, range(12), rate)
    _liq_hours(con, 2, [15], 5000)          # caught during a 10-minute reconnect: hour not covered
    _cover(con, 2, [15], 600)
    _cover(con, 5, range(24))
    _liq_hours(con, 5, range(24), 1050)     # day 5: first full day, 25 200
    # day 6: collector down all day (no coverage, no rows); day 7: full day at 1000/h
    _cover(con, 7, range(24))
    _liq_hours(con, 7, range(24), 1000)
    df = signals(con)
    est = [row(df, "BTC", i)["liquidations_usd_est"] for i in range(8)]
    assert est == [24000.0, 26400.0, 24000.0, 26400.0, 24000.0, 25200.0, None, 24000.0]
    assert row(df, "BTC", 2)["liquidations_usd"] == 17000.0           # what was captured, shown as is
    assert [row(df, "BTC", i)["liquidation_coverage"] for i in (0, 5, 6)] == [0.5, 1.0, 0.0]
    # day 5 vs days 0-4 (24000, 26400, 24000, 26400, 24000): mean 24960, sd sqrt(6912000 / 4)
    assert row(df, "BTC", 5)["liquidation_zscore"] == pytest.approx(240 / 1728000 ** 0.5)
    # counting the half-covered days as 12 000-13 200 would have made day 5 a z = 19.4 "surge"
    assert row(df, "BTC", 5)["liquidation_surge"] is False
    assert row(df, "BTC", 6)["liquidation_zscore"] is None and row(df, "BTC", 6)["liquidation_surge"] is False
    # day 7 vs days 2-5 (day 6 excluded, not zero): mean 24900, sd sqrt(3960000 / 3)
    assert row(df, "BTC", 7)["liquidation_zscore"] == pytest.approx(-900 / 1320000 ** 0.5)
    assert not any(r[2] == "liquidation_surge" for r in _alerts(con))


# --------------------------------------------------------------------------- 5. funding interval, point in time


def test_a_missing_settlement_keeps_the_interval_in_force_not_the_current_metadata():
    """Binance fundingRate page of an 8 h perp whose metadata now says 4 h (the venue moved it later).
    Settlements 00:00, 08:00, [16:00 missing], 00:00, 08:00 of 2026-03-02/03, each rate 0.0004.
    The 00:00 row after the gap (16 h, not an interval) keeps the 8 h in force before it: rate_8h
    0.0004, annualised 0.0004 x 3 x 365 = 0.438. The old fallback to the current metadata (4 h) made
    it 0.0008 and 0.876."""
    from perpwatch.sources import binance
    from perpwatch.sources.base import ParseContext

    ms = [int(datetime(2026, 3, d, h, tzinfo=UTC).timestamp() * 1000) for d, h in ((2, 0), (2, 8), (3, 0), (3, 8))]
    page = [{"symbol": "BTCUSDT", "fundingTime": t, "fundingRate": "0.00040000", "markPrice": "100.0"} for t in ms]
    ctx = ParseContext(datetime(2026, 6, 1, tzinfo=UTC), instruments={("binance", "BTCUSDT"): {"funding_interval_hours": 4.0}})
    out = binance.parse_funding_rate(page, {}, ctx)["funding_rates"]
    assert out["interval_hours"].to_list() == [8.0, 8.0, 8.0, 8.0]   # first row: the gap to the next (8 h)
    assert out["rate_8h"].to_list() == pytest.approx([0.0004] * 4)
    assert out["rate_annualized"][2] == pytest.approx(0.438)
    # nothing but the gap known: a lone settlement takes the metadata (the only source left)
    lone = binance.parse_funding_rate(page[2:3], {}, ctx)["funding_rates"]
    assert (lone["interval_hours"][0], lone["rate_8h"][0]) == (4.0, pytest.approx(0.0008))
    # a page starting right after the gap: first row 00:00 (gap to next 8 h) -> 8, not 4
    tail = binance.parse_funding_rate(page[2:], {}, ctx)["funding_rates"]
    assert tail["interval_hours"].to_list() == [8.0, 8.0]
    # a real switch is a real gap: 8 h settlements, then 4 h ones, are read as such
    switch = [int(datetime(2026, 3, 2, h, tzinfo=UTC).timestamp() * 1000) for h in (0, 8, 16, 20)]
    sw = binance.parse_funding_rate([{**page[0], "fundingTime": t} for t in switch], {}, ctx)["funding_rates"]
    assert sw["interval_hours"].to_list() == [8.0, 8.0, 8.0, 4.0]
