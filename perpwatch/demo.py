"""`make demo`: simulator on a free loopback port -> 30-day backfill of BTC, ETH, SOL through the
Prefect flows -> marts -> the last 7 days of marts.daily_signals, printed. No network needed."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta

from perpwatch import quiet


def main() -> int:
    quiet.configure()
    os.environ.setdefault("PERPWATCH_ASSETS", "BTC,ETH,SOL")
    t0 = time.perf_counter()
    from simulator.server import start

    sim = start(port=0, seed=int(os.environ.get("PERPWATCH_SIM_SEED", "7")))
    os.environ.update(sim.env())
    print(f"simulator listening on {sim.base_url} (seed 7)")
    try:
        import polars as pl

        import warehouse
        from flows.daily import daily
        from perpwatch import settings

        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(days=30)
        print(f"backfilling {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC for "
              f"{','.join(settings.assets())} into {settings.db_path()} ...")
        result = daily(start=start, end=end)
        print(f"run {result['run_id']}: {result['status']} — fetched {result['fetched']}, loaded {result['loaded']}, "
              f"duplicate {result['duplicate']}, quarantined {result['quarantined']}")
        with warehouse.session(read_only=True) as con:
            df = con.sql("""
                SELECT date, asset, round(close_usd, 2) AS close, round(return_1d * 100, 2) AS "ret%",
                       round(oi_usd / 1e9, 3) AS "oi_bn", round(oi_change_1d * 100, 1) AS "oi_1d%",
                       oi_price_regime AS regime, round(funding_rate_8h * 100, 4) AS "fund8h%",
                       funding_extreme AS f_ext, round(ls_ratio, 2) AS ls, ls_extreme AS ls_ext,
                       round(basis_annualized * 100, 1) AS "basis%", overheating AS hot, signal_state
                FROM marts.daily_signals
                WHERE date > (SELECT max(date) FROM marts.daily_signals) - 7
                ORDER BY asset, date""").pl()
        with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200, tbl_hide_dataframe_shape=True,
                       tbl_hide_column_data_types=True):
            print("\nmarts.daily_signals — last 7 days")
            print(df)
        print(f"\nwarehouse: {settings.db_path()}   BI snapshot: {settings.serving_db_path()}   "
              f"exports: {settings.exports_dir()}/   ({time.perf_counter() - t0:.1f}s)")
        print("query it:  .venv/bin/python -c \"import duckdb; print(duckdb.connect('data/serving.duckdb', "
              "read_only=True).sql('from marts.daily_signals limit 5'))\"")
        return 0 if result["status"] != "failed" else 1
    finally:
        sim.stop()


if __name__ == "__main__":
    sys.exit(main())
