-- incremental: date
-- grain: date, asset, venue, instrument
-- Perpetual open interest in USD at the end of each UTC day per instrument: the last snapshot inside
-- the day (dated futures are left out: the headline number is aggregate *perpetual* OI). The unit of
-- like-for-like comparisons (docs/signals.md, "Coverage"): USD-M and COIN-M are both `binance`, so a
-- venue is too coarse. last_ts is the snapshot used. UTC days by epoch arithmetic.
WITH perp_oi AS (
    SELECT o.venue, o.instrument, o.asset, o.margin, o.ts, o.oi_usd, o.oi_base,
           DATE '1970-01-01' + CAST(floor(epoch_us(o.ts) / 86400000000) AS INTEGER) AS date
    FROM staging.open_interest o
    LEFT JOIN staging.instruments i ON i.venue = o.venue AND i.instrument = o.instrument
    WHERE o.oi_usd IS NOT NULL AND coalesce(i.kind, 'perp') = 'perp'
)
SELECT date, asset, venue, instrument, arg_max(margin, ts) AS margin,
       arg_max(oi_usd, ts) AS oi_usd, arg_max(oi_base, ts) AS oi_base, max(ts) AS last_ts
FROM perp_oi
GROUP BY venue, instrument, asset, date
