-- grain: date, ticker
-- US spot bitcoin ETF net flow per fund per trading day (USD), with the fund's running total
-- since its first row. Long table: one row per (date, ticker) that reported a value; the
-- all-fund TOTAL rows of totals-only sources are in marts.etf_flows_daily, not here.
SELECT date, ticker, issuer, flow_usd,
       sum(flow_usd) OVER (PARTITION BY ticker ORDER BY date ROWS UNBOUNDED PRECEDING) AS cumulative_flow_usd,
       source
FROM staging.etf_flows
WHERE ticker <> 'TOTAL' AND flow_usd IS NOT NULL
ORDER BY date, ticker
