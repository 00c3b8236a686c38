-- incremental: date
-- grain: date, asset, venue
-- Perpetual open interest in USD at the end of each UTC day per venue: the last snapshot inside
-- the day for each perpetual instrument (marts.open_interest_by_instrument) (dated futures are left out: the headline number is
-- aggregate *perpetual* OI), summed over the venue's instruments; share of the all-venue total
-- and the linear / inverse split. UTC days by epoch arithmetic (no time-zone library per row).
WITH last_snap AS (   -- one row per perp instrument and day (marts.open_interest_by_instrument)
    SELECT venue, instrument, asset, date, margin, oi_usd, oi_base FROM marts.open_interest_by_instrument
),
by_venue AS (
    SELECT date, asset, venue,
           sum(oi_usd) AS oi_usd,
           sum(oi_base) AS oi_base,
           sum(CASE WHEN margin = 'inverse' THEN oi_usd ELSE 0 END) AS inverse_oi_usd,
           sum(CASE WHEN margin = 'inverse' THEN 0 ELSE oi_usd END) AS linear_oi_usd,
           count(*) AS instruments
    FROM last_snap
    GROUP BY date, asset, venue
)
SELECT date, asset, venue, oi_usd, oi_base, linear_oi_usd, inverse_oi_usd, instruments,
       oi_usd / nullif(sum(oi_usd) OVER (PARTITION BY date, asset), 0) AS share
FROM by_venue
