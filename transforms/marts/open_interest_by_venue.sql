-- grain: date, asset, venue
-- Open interest in USD at the end of each UTC day per venue: the last snapshot inside the
-- day for each instrument, summed over the venue's instruments; share of the all-venue total
-- and the linear / inverse split.
WITH last_snap AS (
    SELECT venue, instrument, asset, margin, ts::DATE AS date, oi_usd, oi_base
    FROM staging.open_interest
    WHERE oi_usd IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY venue, instrument, ts::DATE ORDER BY ts DESC) = 1
),
by_venue AS (
    SELECT date, asset, venue,
           sum(oi_usd) AS oi_usd,
           sum(oi_base) AS oi_base,
           sum(CASE WHEN margin = 'inverse' THEN oi_usd ELSE 0 END) AS inverse_oi_usd,
           sum(CASE WHEN margin = 'inverse' THEN 0 ELSE oi_usd END) AS linear_oi_usd,
           count(*) AS instruments
    FROM last_snap
    GROUP BY ALL
)
SELECT date, asset, venue, oi_usd, oi_base, linear_oi_usd, inverse_oi_usd, instruments,
       oi_usd / nullif(sum(oi_usd) OVER (PARTITION BY date, asset), 0) AS share
FROM by_venue
