"""`make demo`: simulator on a free loopback port -> 30-day backfill of BTC, ETH, SOL through the
Prefect flows -> marts -> the last 7 days of marts.daily_signals, printed. No network needed."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime, timedelta

from perpwatch.core import quiet, settings

DEMO_HISTORY_DAYS = 150
DEMO_COLLECT_SECONDS = 15.0   # the simulated streams run at a busy market's rate: dozens of events in 15 s


def latest_signals(con):
    """The last 7 days of marts.daily_signals as the demo prints them, with `complete` beside each day so an
    in-progress day's signal_state is not read as final."""
    return con.sql("""
        SELECT date, asset, complete, round(close_usd, 2) AS close, round(return_1d * 100, 2) AS "ret%",
               round(oi_usd / 1e9, 3) AS "oi_bn", round(oi_change_1d * 100, 1) AS "oi_1d%",
               oi_price_regime AS regime, round(funding_rate_8h * 100, 4) AS "fund8h%",
               funding_extreme AS f_ext, round(ls_ratio, 2) AS ls, ls_extreme AS ls_ext,
               round(basis_annualized * 100, 1) AS "basis%", overheating AS hot, signal_state
        FROM marts.daily_signals
        WHERE date > (SELECT max(date) FROM marts.daily_signals) - 7
        ORDER BY asset, date""").pl()


def latest_alerts(con):
    """The newest warning and critical alerts of the last 7 days (at most 12), with `complete` (false: a
    provisional alert, report.NOT_COMPLETE)."""
    return con.sql("""
        SELECT date, asset, complete, rule, severity, message FROM marts.alerts
        WHERE date > (SELECT max(date) FROM marts.alerts) - 7 AND severity IN ('warning', 'critical')
        ORDER BY date DESC, severity, asset LIMIT 12""").pl()


def main() -> int:
    quiet.configure()
    os.environ.setdefault("PERPWATCH_ASSETS", "BTC,ETH,SOL")
    t0 = time.perf_counter()
    from perpwatch.simulator.server import start

    seed = settings.get().sim_seed
    sim = start(port=0, seed=seed)
    os.environ.update(sim.env())
    print(f"simulator listening on {sim.base_url} (seed {seed})")
    try:
        import polars as pl

        from perpwatch import sources, warehouse
        from perpwatch.flows.build import build
        from perpwatch.flows.ingest import ingest, state_outcome

        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(days=30)
        long_start = end - timedelta(days=DEMO_HISTORY_DAYS)
        venues = list(sources.available(("venues",)))
        providers = list(sources.available(("providers",)))
        print(f"backfilling {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC for {','.join(settings.assets())} "
              f"from {', '.join(venues)} into {settings.db_path()} ...")
        # Prices, funding and the macro/ETF providers go back further so 30/90-day correlations have
        # enough history; every venue's own history depth (Binance OI: 30 days) still applies.
        # Liquidations exist only as live websocket streams: a few seconds of them are captured while the
        # two backfills run (all three wait on the network and the venues' rate limits, not on the CPU).
        from concurrent.futures import ThreadPoolExecutor

        # Prefect's local server (a fresh PREFECT_HOME migrates its database) starts here, once: two flows
        # asking for it at the same moment race ("Server process did not start").
        from prefect.client.orchestration import get_client

        from perpwatch.ingest.collector import collect

        with get_client(sync_client=True) as client:
            client.api_healthcheck()
        with ThreadPoolExecutor(3, thread_name_prefix="demo") as pool:
            captured = pool.submit(collect, seconds=DEMO_COLLECT_SECONDS, flush_every_s=2, progress=lambda _m: None)
            runs = [pool.submit(lambda: state_outcome(ingest(start=long_start, end=end, venues=["binance", *providers],
                                                             kind="backfill", return_state=True))),
                    pool.submit(lambda: state_outcome(ingest(start=start, end=end,
                                                             venues=[v for v in venues if v != "binance"],
                                                             kind="backfill", return_state=True)))]
            results = [f.result() for f in runs]
            cap = captured.result()
        print(f"liquidation streams ({', '.join(sorted(cap.messages)) or 'none'}): {cap.fetched} liquidations "
              f"captured in {DEMO_COLLECT_SECONDS:.0f}s, {cap.loaded} loaded ({cap.status})")
        build(publish=True)
        for result in results:
            print(f"run {result['run_id']}: {result['status']} — fetched {result['fetched']}, "
                  f"loaded {result['loaded']}, duplicate {result['duplicate']}, quarantined {result['quarantined']}")
        status = "failed" if any(r["status"] == "failed" for r in results) else "ok"
        from perpwatch.serving.report import NOT_COMPLETE

        provisional = (f"complete = false: {NOT_COMPLETE}; its values, signal_state and alerts are provisional and "
                       "can still change")
        with warehouse.session(read_only=True) as con:
            df = latest_signals(con)
        with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200, tbl_hide_dataframe_shape=True,
                       tbl_hide_column_data_types=True):
            print("\nmarts.daily_signals — last 7 days")
            print(df)
            if not df["complete"].all():
                print(provisional)
        with warehouse.session(read_only=True) as con:
            # the latest day: Hyperliquid and Deribit serve OI snapshots only, so they appear from today on
            day = con.sql("SELECT max(date) FROM marts.open_interest_by_venue").fetchone()[0]
            venues = con.sql("""
                SELECT asset, venue, round(oi_usd / 1e9, 3) AS oi_bn, round(share * 100, 1) AS "share%",
                       round(linear_oi_usd / 1e9, 3) AS linear_bn, round(inverse_oi_usd / 1e9, 3) AS inverse_bn,
                       instruments
                FROM marts.open_interest_by_venue WHERE date = ? ORDER BY asset, oi_usd DESC""", params=[day]).pl()
            alerts = latest_alerts(con)
            liq = con.sql("""
                SELECT venue, asset, side, count(*) AS events, round(sum(usd) / 1e3, 1) AS "usd_k",
                       min(ts) AS first, max(ts) AS last
                FROM staging.liquidations GROUP BY ALL ORDER BY venue, asset, side""").pl()
            etf = con.sql("""
                SELECT date, round(total_flow_usd / 1e6, 1) AS "flow_musd", round(flow_5d_avg_usd / 1e6, 1) AS "5d_avg",
                       round(flow_20d_avg_usd / 1e6, 1) AS "20d_avg", round(cumulative_flow_usd / 1e9, 2) AS "cum_busd"
                FROM marts.etf_flows_daily ORDER BY date DESC LIMIT 5""").pl()
            corr = con.sql("""
                SELECT asset, benchmark, window_days, round(correlation, 3) AS correlation, n_obs, date
                FROM marts.cross_market_correlation
                QUALIFY row_number() OVER (PARTITION BY asset, benchmark, window_days ORDER BY date DESC) = 1
                ORDER BY asset, benchmark, window_days""").pl()
            reports = settings.db_path().parent / "reports"
            from perpwatch.serving import render, report
            png = render.render(con, "BTC", 7, reports / "heatmap-BTC.png")
            html = report.write(con, reports / "report.html", str(settings.db_path()))
        with pl.Config(tbl_rows=100, tbl_cols=20, tbl_width_chars=200, tbl_hide_dataframe_shape=True,
                       tbl_hide_column_data_types=True, fmt_str_lengths=110):
            print(f"\nopen interest by venue — {day} (latest snapshot of the day, USD bn)")
            print(venues)
            print(f"\nliquidations captured from the websocket streams ({DEMO_COLLECT_SECONDS:.0f}s), by side")
            print(liq)
            print("\nalerts — last 7 days (warning and critical)")
            print(alerts)
            if not alerts["complete"].all():
                print(provisional)
            print("\nspot bitcoin ETF flows (US$ m) — latest days")
            print(etf)
            print("\ncross-market correlation of daily log returns — latest")
            print(corr)
        print(f"\nheatmap: {png}   report: {html}")
        print(f"\nwarehouse: {settings.db_path()}   BI snapshot: {settings.serving_db_path()}   "
              f"exports: {settings.exports_dir()}/   ({time.perf_counter() - t0:.1f}s)")
        print("query it:  .venv/bin/python -c \"import duckdb; print(duckdb.connect('data/serving.duckdb', "
              "read_only=True).sql('from marts.daily_signals limit 5'))\"")
        return 0 if status != "failed" else 1
    finally:
        sim.stop()


if __name__ == "__main__":
    sys.exit(main())
