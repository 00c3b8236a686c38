-- grain: as_of
-- Public-company bitcoin treasuries summed per snapshot date (CoinGecko's list has no timestamp:
-- as_of is the UTC day it was fetched, one snapshot per day, the latest fetch of the day wins).
WITH t AS (
    SELECT as_of,
           sum(holdings_btc) AS total_holdings_btc,
           sum(value_usd) AS total_value_usd,
           count(*) AS n_companies,
           arg_max(company, holdings_btc) AS top_company,
           max(holdings_btc) AS top_holdings_btc
    FROM staging.treasury_holdings
    WHERE holdings_btc IS NOT NULL
    GROUP BY as_of
)
SELECT as_of, total_holdings_btc, total_value_usd, n_companies, top_company, top_holdings_btc,
       top_holdings_btc / nullif(total_holdings_btc, 0) AS top_company_share,
       total_holdings_btc / 21000000.0 AS share_of_max_supply,
       total_holdings_btc - lag(total_holdings_btc) OVER (ORDER BY as_of) AS change_btc,
       lag(as_of) OVER (ORDER BY as_of) AS previous_as_of
FROM t
ORDER BY as_of
