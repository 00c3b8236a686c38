-- grain: date
-- US spot bitcoin ETF net flows per US trading day, all funds together (USD, negative = outflow).
-- A day's total is the sum of its per-ticker rows (Farside) when it has any, otherwise the
-- all-fund total reported by a totals-only source (ticker TOTAL: SoSoValue, the Date,Total CSV).
-- Holidays and unpublished days have no row. Averages and streaks count ETF trading days (rows),
-- and each row uses only that day and earlier days (no look-ahead). available_at: when the row's
-- numbers became known: the latest staging.etf_flows.available_at (or date + [availability]
-- etf_flow_lag_hours when a row has none) of this day AND every earlier day, because the averages
-- and the cumulative sum read them (a late-published Thursday delays Friday's row too); so it never
-- decreases with date. Marts join on it, not on date.
WITH per_day AS (
    SELECT date,
           sum(flow_usd) FILTER (WHERE ticker <> 'TOTAL') AS tickers_flow_usd,
           count(flow_usd) FILTER (WHERE ticker <> 'TOTAL') AS n_tickers,
           max(flow_usd) FILTER (WHERE ticker = 'TOTAL') AS reported_total_usd,
           max(coalesce(available_at, to_timestamp((date - DATE '1970-01-01') * 86400
                                                   + {{availability.etf_flow_lag_hours}} * 3600))) AS available_at
    FROM staging.etf_flows
    WHERE flow_usd IS NOT NULL
    GROUP BY date
),
daily AS (
    SELECT date,
           CASE WHEN n_tickers > 0 THEN tickers_flow_usd ELSE reported_total_usd END AS total_flow_usd,
           n_tickers, reported_total_usd, available_at,
           CASE WHEN n_tickers > 0 THEN 'tickers' ELSE 'reported_total' END AS total_basis
    FROM per_day
    WHERE n_tickers > 0 OR reported_total_usd IS NOT NULL
),
signed AS (   -- runs of same-sign days: a new island starts whenever the sign changes
    SELECT *, sign(total_flow_usd) AS s,
           CASE WHEN sign(total_flow_usd) IS DISTINCT FROM lag(sign(total_flow_usd)) OVER (ORDER BY date)
                THEN 1 ELSE 0 END AS new_run
    FROM daily
),
runs AS (
    SELECT *, sum(new_run) OVER (ORDER BY date ROWS UNBOUNDED PRECEDING) AS run_id FROM signed
)
SELECT date,
       total_flow_usd,
       sum(total_flow_usd) OVER (ORDER BY date ROWS UNBOUNDED PRECEDING) AS cumulative_flow_usd,
       CASE WHEN count(*) OVER w5 = 5 THEN avg(total_flow_usd) OVER w5 END AS flow_5d_avg_usd,
       CASE WHEN count(*) OVER w20 = 20 THEN avg(total_flow_usd) OVER w20 END AS flow_20d_avg_usd,
       CAST(CASE WHEN s > 0 THEN row_number() OVER (PARTITION BY run_id ORDER BY date)
                 WHEN s < 0 THEN -row_number() OVER (PARTITION BY run_id ORDER BY date)
                 ELSE 0 END AS INTEGER) AS streak_days,
       CASE WHEN s > 0 THEN 'inflow' WHEN s < 0 THEN 'outflow' ELSE 'flat' END AS flow_direction,
       n_tickers,
       reported_total_usd,
       total_basis,
       max(available_at) OVER (ORDER BY date ROWS UNBOUNDED PRECEDING) AS available_at
FROM runs
WINDOW w5 AS (ORDER BY date ROWS BETWEEN 4 PRECEDING AND CURRENT ROW),
       w20 AS (ORDER BY date ROWS BETWEEN 19 PRECEDING AND CURRENT ROW)
ORDER BY date
