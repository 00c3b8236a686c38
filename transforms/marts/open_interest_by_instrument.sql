-- incremental: date
-- grain: date, asset, venue, instrument
-- Perpetual open interest in USD at the end of each UTC day per instrument: the last snapshot inside
-- the day (dated futures are left out: the headline number is aggregate *perpetual* OI). The unit of
-- like-for-like comparisons (docs/signals.md, "Coverage"): USD-M and COIN-M are both `binance`, so a
-- venue is too coarse. last_ts is the snapshot used. UTC days by epoch arithmetic.
WITH eod AS (      -- aggregate first, then look up the kind: the join runs on one row per instrument-day
    SELECT venue, instrument, asset, epoch_us(ts) // 86400000000 AS day_n, arg_max(margin, ts) AS margin,
           arg_max(oi_usd, ts) AS oi_usd, arg_max(oi_base, ts) AS oi_base, max(ts) AS last_ts
    FROM staging.open_interest
    WHERE oi_usd IS NOT NULL
    GROUP BY venue, instrument, asset, day_n
)
SELECT DATE '1970-01-01' + CAST(o.day_n AS INTEGER) AS date, o.asset, o.venue, o.instrument, o.margin,
       o.oi_usd, o.oi_base, o.last_ts
FROM eod o
LEFT JOIN staging.instruments i ON i.venue = o.venue AND i.instrument = o.instrument
WHERE coalesce(i.kind, 'perp') = 'perp'
