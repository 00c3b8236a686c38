"""What `make demo` prints of the signals and alerts marks an in-progress day as provisional (`complete`)."""

from __future__ import annotations

from datetime import date

import duckdb

from perpwatch import demo


def _warehouse() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA marts")
    con.execute("""CREATE TABLE marts.daily_signals (date DATE, asset VARCHAR, complete BOOLEAN, close_usd DOUBLE,
        return_1d DOUBLE, oi_usd DOUBLE, oi_change_1d DOUBLE, oi_price_regime VARCHAR, funding_rate_8h DOUBLE,
        funding_extreme BOOLEAN, ls_ratio DOUBLE, ls_extreme BOOLEAN, basis_annualized DOUBLE, overheating BOOLEAN,
        signal_state VARCHAR)""")
    # nine days of BTC: the last one in progress
    for d in range(1, 10):
        con.execute("INSERT INTO marts.daily_signals VALUES (?, 'BTC', ?, 90000 + ?, 0.01, 2e10, 0.02, 'flat', 0.0001,"
                    " false, 1.1, false, 0.1, false, 'neutral')", [date(2026, 12, d), d < 9, d])
    con.execute("""CREATE TABLE marts.alerts (date DATE, asset VARCHAR, complete BOOLEAN, rule VARCHAR,
        severity VARCHAR, message VARCHAR)""")
    con.execute("""INSERT INTO marts.alerts VALUES ('2026-12-08', 'BTC', true, 'ls_extreme', 'warning', 'final'),
        ('2026-12-09', 'BTC', false, 'ls_extreme', 'warning', 'provisional'),
        ('2026-12-09', 'BTC', false, 'cascade_risk', 'info', 'not shown')""")
    return con


def test_signals_show_which_days_are_complete():
    df = demo.latest_signals(_warehouse())
    assert df.columns[:3] == ["date", "asset", "complete"]
    assert df["date"].to_list() == [date(2026, 12, d) for d in range(3, 10)]      # the last 7 days
    assert df["complete"].to_list() == [True] * 6 + [False]
    assert df["close"].to_list()[-1] == 90009


def test_alerts_show_which_are_provisional():
    df = demo.latest_alerts(_warehouse())
    assert df.select("date", "complete", "message").rows() == [
        (date(2026, 12, 9), False, "provisional"), (date(2026, 12, 8), True, "final")]
