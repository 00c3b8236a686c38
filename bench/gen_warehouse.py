"""A generated warehouse at scale, written by DuckDB SQL (range + hash noise) straight into staging.

Shape (per asset, per venue, hourly unless noted) — `years` x `assets` x the 5 venues:

| table | series | cadence |
|---|---|---|
| staging.open_interest | every venue x asset perp (deribit inverse, the rest linear) | 1 h |
| staging.prices | perp close/OHLC for every perp; binance index; binance spot; binance quarterly future for the first 2 assets | 1 h |
| staging.funding_rates | every perp | 8 h (hyperliquid 1 h) |
| staging.long_short_ratio | binance accounts, top_accounts, top_positions | 1 h |
| staging.liquidations | binance, bybit, okx: one event per 8 h per asset | 8 h |
| staging.market_caps | per asset | 1 d |

Values are deterministic (hash noise on (series, hour)), positive, and roughly realistic
(random-walk prices, OI ~ 1-5 % daily moves, funding around 0.01 %/8h), so every mart has work to do.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

VENUES = ("binance", "bybit", "okx", "hyperliquid", "deribit")
END = datetime(2026, 11, 20, tzinfo=UTC)


def instrument_sql(venue: str, asset: str = "a.asset") -> str:
    return {"binance": f"{asset} || 'USDT'", "bybit": f"{asset} || 'USDT'", "okx": f"{asset} || '-USDT-SWAP'",
            "hyperliquid": asset, "deribit": f"{asset} || '-PERPETUAL'"}[venue]


def _noise(expr: str) -> str:
    """Deterministic uniform noise in [-0.5, 0.5) from an expression."""
    return f"((hash({expr}) % 1000003)::DOUBLE / 1000003.0 - 0.5)"


CHUNK_HOURS = 24 * 90


def generate(con, days: int, assets: int, end: datetime = END, venues=VENUES, progress=None) -> dict[str, int]:
    """Fill staging.* of an (empty) warehouse. Returns rows per table."""
    say = progress or (lambda _m: None)
    end = end.replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    hours = days * 24
    t0 = time.perf_counter()
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __assets AS
        SELECT i AS aid, 'G' || lpad(i::VARCHAR, 3, '0') AS asset,
               exp(ln(0.05) + (hash(i, 'p') % 10000) / 10000.0 * ln(2e6)) AS p0,
               2e7 + (hash(i, 'oi') % 1000) * 1e7 AS oi0
        FROM range({assets}) t(i)""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __venues AS
        SELECT * FROM (VALUES {', '.join(f"({k}, '{v}')" for k, v in enumerate(venues))}) v(vid, venue)""")
    # asset x hour truth: a random walk of the log price and a slow OI walk
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __truth AS
        WITH steps AS (
            SELECT a.aid, a.asset, a.p0, a.oi0, h,
                   TIMESTAMPTZ '{start:%Y-%m-%d %H:%M:%S}+00' + to_hours(h) AS ts,
                   0.012 * {_noise("a.aid, h, 'r'")} AS r,
                   0.02 * {_noise("a.aid, h, 'o'")} AS dr
            FROM __assets a, range({hours}) t(h)
        )
        SELECT aid, asset, h, ts,
               p0 * exp(sum(r) OVER w) AS close,
               p0 * exp(sum(r) OVER w - r) AS open,
               oi0 * exp(0.3 * sin(h / 900.0 + aid) + 0.2 * {_noise("aid, h // 24, 'd'")} + 0.05 * sum(dr) OVER w / sqrt(h + 1)) AS oi_usd
        FROM steps WINDOW w AS (PARTITION BY aid ORDER BY h ROWS UNBOUNDED PRECEDING)
        ORDER BY h, aid""")
    say(f"truth {time.perf_counter() - t0:.1f}s")
    inst_case = "CASE v.venue " + " ".join(f"WHEN '{v}' THEN {instrument_sql(v, 'a.asset')}" for v in venues) + " END"
    con.execute(f"""INSERT INTO staging.instruments (venue, instrument, asset, quote, settle, margin, kind, contract_size,
                       contract_unit, multiplier, funding_interval_hours, expiry, status, as_of, raw_id, ingested_at)
        SELECT v.venue, {inst_case}, a.asset, CASE WHEN v.venue IN ('hyperliquid') THEN 'USDC' WHEN v.venue = 'deribit' THEN 'USD' ELSE 'USDT' END,
               CASE WHEN v.venue = 'deribit' THEN a.asset ELSE 'USDT' END,
               CASE WHEN v.venue = 'deribit' THEN 'inverse' ELSE 'linear' END, 'perp', 1.0, 'base', 1.0,
               CASE WHEN v.venue = 'hyperliquid' THEN 1.0 ELSE 8.0 END, NULL, 'trading', TIMESTAMPTZ '{end:%Y-%m-%d %H:%M:%S}+00', 0, now()
        FROM __assets a, __venues v""")
    vmult = f"(1 + 0.0004 * {_noise('v.vid, t.aid, t.h')})"
    # Staging is written in time order, 90 days at a time (hour-sorted inside), as daily loading writes it: a
    # recent-days filter then skips the older row groups (zone maps), as it does on a real warehouse.
    for lo in range(0, hours, CHUNK_HOURS):
        _fill_chunk(con, f"t.h >= {lo} AND t.h < {lo + CHUNK_HOURS}", inst_case, vmult)
    say(f"open_interest, prices, funding, long_short, liquidations {time.perf_counter() - t0:.1f}s")
    con.execute("""INSERT INTO staging.market_caps (date, asset, market_cap_usd, source, raw_id, ingested_at)
        SELECT ts::DATE, asset, close * 1e8, 'coingecko', 0, now() FROM __truth WHERE hour(ts) = 0 ORDER BY ts""")
    con.execute("DROP TABLE __truth; DROP TABLE __assets; DROP TABLE __venues")
    con.execute("CHECKPOINT")
    return {t: con.execute(f"SELECT count(*) FROM staging.{t}").fetchone()[0]
            for t in ("instruments", "open_interest", "prices", "funding_rates", "long_short_ratio", "liquidations",
                      "market_caps")}


def _fill_chunk(con, cond: str, inst_case: str, vmult: str) -> None:
    """The staging rows of the hours `cond` selects (t.h), ordered by time."""
    con.execute(f"""INSERT INTO staging.open_interest (venue, instrument, ts, asset, margin, oi_contracts, oi_base, oi_usd, raw_id, ingested_at)
        SELECT v.venue, {inst_case.replace('a.asset', 't.asset')}, t.ts, t.asset,
               CASE WHEN v.venue = 'deribit' THEN 'inverse' ELSE 'linear' END,
               t.oi_usd * (0.1 + 0.1 * v.vid) / t.close, t.oi_usd * (0.1 + 0.1 * v.vid) / t.close, t.oi_usd * (0.1 + 0.1 * v.vid),
               0, now()
        FROM __truth t, __venues v WHERE {cond} ORDER BY t.h""")
    con.execute(f"""INSERT INTO staging.prices (venue, instrument, kind, "interval", ts, asset, open, high, low, close, volume_base, volume_usd, expiry, raw_id, ingested_at)
        SELECT * FROM (
        SELECT v.venue, {inst_case.replace('a.asset', 't.asset')}, 'perp', '1h', t.ts, t.asset,
               t.open * {vmult}, greatest(t.open, t.close) * 1.003 * {vmult}, least(t.open, t.close) * 0.997 * {vmult}, t.close * {vmult},
               1000 + 500 * {_noise("v.vid, t.aid, t.h, 'v'")}, (1000 + 500 * {_noise("v.vid, t.aid, t.h, 'v'")}) * t.close, NULL, 0, now()
        FROM __truth t, __venues v WHERE {cond}
        UNION ALL
        SELECT 'binance', t.asset || 'USDT', k.kind, '1h', t.ts, t.asset,
               t.open * (1 - 0.0002 * k.s), greatest(t.open, t.close) * 1.003, least(t.open, t.close) * 0.997, t.close * (1 - 0.0002 * k.s),
               CASE WHEN k.kind = 'spot' THEN 800.0 END, CASE WHEN k.kind = 'spot' THEN 800.0 * t.close END, NULL, 0, now()
        FROM __truth t, (VALUES ('index', 1), ('spot', 2)) k(kind, s) WHERE {cond}
        UNION ALL
        SELECT 'binance', t.asset || 'USDT_' || strftime(date_trunc('quarter', t.ts) + INTERVAL 3 MONTH, '%y%m%d'), 'future', '1h', t.ts, t.asset,
               t.open * 1.01, greatest(t.open, t.close) * 1.013, least(t.open, t.close) * 1.007, t.close * 1.01, 10.0, 10.0 * t.close,
               date_trunc('quarter', t.ts) + INTERVAL 3 MONTH + INTERVAL 8 HOUR, 0, now()
        FROM __truth t WHERE t.aid < 2 AND {cond}) ORDER BY ts""")
    con.execute(f"""INSERT INTO staging.funding_rates (venue, instrument, funding_time, asset, funding_rate, interval_hours, rate_8h, rate_annualized, mark_price, raw_id, ingested_at)
        SELECT venue, instrument, ts, asset, rate, ih, rate * 8 / ih, rate * 8760 / ih, mark, 0, now() FROM (
            SELECT v.venue, {inst_case.replace('a.asset', 't.asset')} AS instrument, t.ts, t.asset,
                   CASE WHEN v.venue = 'hyperliquid' THEN 1.0 ELSE 8.0 END AS ih,
                   (0.0001 + 0.0004 * {_noise("v.vid, t.aid, t.h, 'f'")} + 0.0002 * sin(t.h / 200.0 + t.aid))
                     * CASE WHEN v.venue = 'hyperliquid' THEN 0.125 ELSE 1.0 END AS rate,
                   t.close AS mark
            FROM __truth t, __venues v
            WHERE (v.venue = 'hyperliquid' OR t.h % 8 = 0) AND {cond}) ORDER BY ts""")
    con.execute(f"""INSERT INTO staging.long_short_ratio (venue, instrument, ts, population, asset, long_share, short_share, ratio, raw_id, ingested_at)
        SELECT 'binance', t.asset || 'USDT', t.ts, t.population, t.asset, ls, 1 - ls, ls / (1 - ls), 0, now() FROM (
            SELECT t.*, p.population, 0.5 + 0.1 * sin(t.h / 150.0 + t.aid + p.k) + 0.05 * {_noise("t.aid, t.h, p.k, 'l'")} AS ls
            FROM __truth t, (VALUES ('accounts', 0), ('top_accounts', 1), ('top_positions', 2)) p(population, k)
            WHERE {cond}) t ORDER BY t.ts""")
    con.execute(f"""INSERT INTO staging.liquidations (venue, instrument, ts, side, price, qty_base, asset, usd, raw_id, ingested_at)
        SELECT v.venue, {inst_case.replace('a.asset', 't.asset')}, t.ts + to_seconds((hash(t.aid, t.h, v.vid) % 3600)::BIGINT),
               CASE WHEN hash(t.aid, t.h, v.vid, 's') % 2 = 0 THEN 'long' ELSE 'short' END,
               t.close, q, t.asset, q * t.close, 0, now()
        FROM (SELECT *, t.oi_usd / t.close * 0.0001 * (1 + {_noise("t.aid, t.h, 'q'")}) AS q FROM __truth t
              WHERE t.h % 8 = 3 AND {cond}) t,
             __venues v WHERE v.venue IN ('binance', 'bybit', 'okx') ORDER BY 3""")


def append_day(con, day: datetime, assets: int | None = None) -> int:
    """Append one more day after the last OI hour (copy of the previous day shifted +24 h with new noise):
    what a daily run adds. Returns rows added."""
    added = 0
    spec = {
        "open_interest": ("ts", "oi_usd = oi_usd * (1 + 0.01 * sin(epoch(ts)))"),
        "prices": ("ts", None),
        "funding_rates": ("funding_time", None),
        "long_short_ratio": ("ts", None),
        "liquidations": ("ts", None),
    }
    for table, (tcol, _) in spec.items():
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema='staging' AND table_name=? "
            "ORDER BY ordinal_position", [table]).fetchall()]
        sel = ", ".join(f'"{c}" + INTERVAL 1 DAY' if c == tcol else
                        ("now()" if c == "ingested_at" else f'"{c}"') for c in cols)
        added += con.execute(f"""INSERT INTO staging.{table} SELECT {sel} FROM staging.{table}
            WHERE "{tcol}" >= TIMESTAMPTZ '{day - timedelta(days=1):%Y-%m-%d}' AND "{tcol}" < TIMESTAMPTZ '{day:%Y-%m-%d}'""").fetchone()[0]
    added += con.execute(f"""INSERT INTO staging.market_caps SELECT date + 1, asset, market_cap_usd * 1.01, source, raw_id, now()
        FROM staging.market_caps WHERE date = DATE '{day - timedelta(days=1):%Y-%m-%d}'""").fetchone()[0]
    return added
