-- incremental: date lookback 11
-- grain: date, asset
-- Institutional and cross-market inputs per asset per UTC day, for marts.daily_signals to join on
-- [date, asset]. Every value is one KNOWN by the end of day D (D + 1 00:00 UTC), joined on its
-- publication time (available_at), not on its date label: the market cap of D (else the latest of
-- the previous 3 days); US spot bitcoin ETF flows (BTC rows only) of the latest ETF trading day
-- published by then (normally D - 1: Farside publishes D the next US morning), at most 7 days old;
-- per benchmark, the latest 30/90-trading-day correlation published by then (its closes' available_at:
-- FRED posts the dollar index about a week late), at most 10 days old. Rows published together
-- (FRED releases a week of the dollar index at once; both input marts' available_at never decreases
-- with date) resolve to the latest date among them, not to whichever the as-of join meets first.
WITH spine0 AS (
    SELECT date, asset FROM marts.reference_close
    UNION
    SELECT date, asset FROM staging.market_caps WHERE asset <> 'TOTAL'
),
spine AS (SELECT date, asset, to_timestamp((date - DATE '1970-01-01' + 1) * 86400) AS day_end FROM spine0),
etf AS (
    SELECT 'BTC' AS asset, date AS etf_date, total_flow_usd, flow_5d_avg_usd, flow_20d_avg_usd,
           cumulative_flow_usd, streak_days, available_at AS etf_available_at
    FROM marts.etf_flows_daily
    QUALIFY date = max(date) OVER (PARTITION BY available_at)
),
cb AS (   -- one row per (date, asset, benchmark) with both windows
    SELECT date AS corr_date, asset, benchmark,
           max(correlation) FILTER (WHERE window_days = 30) AS c30,
           max(correlation) FILTER (WHERE window_days = 90) AS c90,
           max(regime) FILTER (WHERE window_days = 30) AS regime30,
           max(available_at) AS corr_available_at
    FROM marts.cross_market_correlation
    GROUP BY date, asset, benchmark
    QUALIFY corr_date = max(corr_date) OVER (PARTITION BY asset, benchmark, corr_available_at)
),
spx AS (SELECT * FROM cb WHERE benchmark = 'SPX'),
ndx AS (SELECT * FROM cb WHERE benchmark = 'NDX'),
gold AS (SELECT * FROM cb WHERE benchmark = 'GOLD'),
dxy AS (SELECT * FROM cb WHERE benchmark = 'DXY'),
mcap AS (
    SELECT date AS mcap_date, asset, market_cap_usd FROM staging.market_caps
)
SELECT s.date, s.asset,
       CASE WHEN s.date - m.mcap_date <= 3 THEN m.market_cap_usd END AS market_cap_usd,
       CASE WHEN s.date - e.etf_date <= 7 THEN e.total_flow_usd END AS etf_flow_usd,
       CASE WHEN s.date - e.etf_date <= 7 THEN e.flow_5d_avg_usd END AS etf_flow_5d_avg_usd,
       CASE WHEN s.date - e.etf_date <= 7 THEN e.flow_20d_avg_usd END AS etf_flow_20d_avg_usd,
       CASE WHEN s.date - e.etf_date <= 7 THEN e.flow_5d_avg_usd - e.flow_20d_avg_usd END AS etf_flow_momentum_usd,
       CASE WHEN s.date - e.etf_date <= 7 THEN e.cumulative_flow_usd END AS etf_cumulative_flow_usd,
       CASE WHEN s.date - e.etf_date <= 7 THEN e.streak_days END AS etf_flow_streak_days,
       CASE WHEN s.date - e.etf_date <= 7 THEN e.etf_date END AS etf_flows_as_of,
       CASE WHEN s.date - spx.corr_date <= 10 THEN spx.c30 END AS corr_spx_30d,
       CASE WHEN s.date - spx.corr_date <= 10 THEN spx.c90 END AS corr_spx_90d,
       CASE WHEN s.date - ndx.corr_date <= 10 THEN ndx.c30 END AS corr_ndx_30d,
       CASE WHEN s.date - ndx.corr_date <= 10 THEN ndx.c90 END AS corr_ndx_90d,
       CASE WHEN s.date - gold.corr_date <= 10 THEN gold.c30 END AS corr_gold_30d,
       CASE WHEN s.date - gold.corr_date <= 10 THEN gold.c90 END AS corr_gold_90d,
       CASE WHEN s.date - dxy.corr_date <= 10 THEN dxy.c30 END AS corr_dxy_30d,
       CASE WHEN s.date - dxy.corr_date <= 10 THEN dxy.c90 END AS corr_dxy_90d,
       CASE WHEN s.date - spx.corr_date <= 10 THEN spx.regime30 END AS regime_spx_30d,
       CASE WHEN s.date - ndx.corr_date <= 10 THEN ndx.regime30 END AS regime_ndx_30d
FROM spine s
ASOF LEFT JOIN mcap m ON m.asset = s.asset AND m.mcap_date <= s.date
ASOF LEFT JOIN etf e ON e.asset = s.asset AND e.etf_available_at <= s.day_end
ASOF LEFT JOIN spx ON spx.asset = s.asset AND spx.corr_available_at <= s.day_end
ASOF LEFT JOIN ndx ON ndx.asset = s.asset AND ndx.corr_available_at <= s.day_end
ASOF LEFT JOIN gold ON gold.asset = s.asset AND gold.corr_available_at <= s.day_end
ASOF LEFT JOIN dxy ON dxy.asset = s.asset AND dxy.corr_available_at <= s.day_end
ORDER BY s.asset, s.date
