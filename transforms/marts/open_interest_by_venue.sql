-- incremental: date
-- grain: date, asset, venue
-- Perpetual open interest in USD at the end of each UTC day per venue: the last snapshot inside
-- the day for each perpetual instrument (dated futures are left out: the headline number is
-- aggregate *perpetual* OI), summed over the venue's instruments; share of the all-venue total
-- and the linear / inverse split. UTC days by epoch arithmetic (no time-zone library per row).
WITH perp_oi AS (
    SELECT o.venue, o.instrument, o.asset, o.margin, o.ts, o.oi_usd, o.oi_base,
           DATE '1970-01-01' + CAST(floor(epoch_us(o.ts) / 86400000000) AS INTEGER) AS date
    FROM staging.open_interest o
    LEFT JOIN staging.instruments i ON i.venue = o.venue AND i.instrument = o.instrument
    WHERE o.oi_usd IS NOT NULL AND coalesce(i.kind, 'perp') = 'perp'
),
last_snap AS (
    SELECT venue, instrument, asset, date, arg_max(margin, ts) AS margin,
           arg_max(oi_usd, ts) AS oi_usd, arg_max(oi_base, ts) AS oi_base
    FROM perp_oi
    GROUP BY venue, instrument, asset, date
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
