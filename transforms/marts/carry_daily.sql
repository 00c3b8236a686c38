-- incremental: date
-- grain: date, venue, instrument
-- Carry per instrument and day, before ranking: each perp's mean annualised funding (settlements with
-- funding_time inside the UTC day, with the day's highest and lowest single settlement, 8h-equivalent)
-- and each dated future's basis at the day's last hourly bar vs the index at the same hour, annualised
-- to expiry; futures closer than [basis] min_days_to_expiry are left out. marts.carry ranks these rows;
-- marts read this table when they need no rank (DuckDB evaluates a view's window columns even where the
-- reader selects none of them). A table, not a view: a view is evaluated over the inputs' whole history
-- by every reader (marts.carry, daily_signals, each publish of the serving copy and the exports), the
-- table once per build; a daily build recomputes its rows from the new day on (the header above).
-- UTC days and hours come from epoch arithmetic: TIMESTAMPTZ casts and interval maths go through
-- the time-zone library and cost 5-100x more per row at warehouse scale.
WITH funding AS (
    SELECT DATE '1970-01-01' + CAST(floor(epoch_us(funding_time) / 86400000000) AS INTEGER) AS date, venue, instrument, any_value(asset) AS asset,
           avg(rate_8h) AS funding_rate_8h, avg(rate_annualized) AS funding_annualized,
           max(rate_8h) AS funding_rate_8h_max, min(rate_8h) AS funding_rate_8h_min,
           count(*) AS funding_settlements
    FROM staging.funding_rates
    WHERE rate_annualized IS NOT NULL
    GROUP BY date, venue, instrument
),
fut_last AS (   -- last hourly bar of each dated future per UTC day
    SELECT venue, instrument, any_value(asset) AS asset, DATE '1970-01-01' + CAST(floor(epoch_us(ts) / 86400000000) AS INTEGER) AS date,
           max(ts) AS ts, arg_max(close, ts) AS close, arg_max(expiry, ts) AS expiry
    FROM staging.prices
    WHERE kind = 'future' AND "interval" = '1h' AND expiry IS NOT NULL AND close > 0
    GROUP BY venue, instrument, date
),
fut_ref AS (    -- the index at the same hour: same venue first, else the mean over venues
    SELECT f.venue, f.instrument, f.asset, f.date, f.ts, f.close, f.expiry,
           coalesce(avg(i.close) FILTER (WHERE i.venue = f.venue), avg(i.close)) AS index_close
    FROM fut_last f
    LEFT JOIN staging.prices i
           ON i.asset = f.asset AND i.ts = f.ts AND i.kind = 'index' AND i."interval" = '1h' AND i.close > 0
    GROUP BY f.venue, f.instrument, f.asset, f.date, f.ts, f.close, f.expiry
),
basis AS (
    SELECT date, venue, instrument, asset,
           (epoch(expiry) - epoch(ts) - 3600) / 86400.0 AS days_to_expiry,   -- from the bar's close
           (close / index_close - 1) * 365.0 / ((epoch(expiry) - epoch(ts) - 3600) / 86400.0) AS basis_annualized
    FROM fut_ref
    WHERE index_close IS NOT NULL
      AND (epoch(expiry) - epoch(ts) - 3600) / 86400.0 >= {{basis.min_days_to_expiry}}
),
oi_eod AS (      -- end-of-day OI: perps from marts.open_interest_by_instrument (one scan of staging serves every
                 -- mart), the other kinds (dated futures) from staging, last snapshot inside the UTC day
    SELECT venue, instrument, date, arg_max(oi_usd, last_ts) AS oi_usd
    FROM marts.open_interest_by_instrument WHERE oi_usd IS NOT NULL
    GROUP BY venue, instrument, date
    UNION ALL
    SELECT o.venue, o.instrument, DATE '1970-01-01' + CAST(epoch_us(o.ts) // 86400000000 AS INTEGER) AS date,
           arg_max(o.oi_usd, o.ts) AS oi_usd
    FROM staging.open_interest o
    JOIN staging.instruments i ON i.venue = o.venue AND i.instrument = o.instrument AND i.kind <> 'perp'
    WHERE o.oi_usd IS NOT NULL
    GROUP BY ALL
),
carry AS (
    SELECT date, venue, instrument, asset, 'perp' AS kind, funding_rate_8h, funding_rate_8h_max,
           funding_rate_8h_min, funding_annualized, funding_settlements,
           NULL::DOUBLE AS basis_annualized, NULL::DOUBLE AS days_to_expiry,
           funding_annualized AS carry_annualized
    FROM funding
    UNION ALL
    SELECT date, venue, instrument, asset, 'future', NULL, NULL, NULL, NULL, NULL, basis_annualized,
           days_to_expiry, basis_annualized
    FROM basis
)
SELECT c.date, c.asset, c.venue, c.instrument, c.kind, ins.margin,
       c.funding_rate_8h, c.funding_rate_8h_max, c.funding_rate_8h_min, c.funding_annualized,
       c.funding_settlements,
       c.basis_annualized, c.days_to_expiry, c.carry_annualized, o.oi_usd
FROM carry c
LEFT JOIN oi_eod o USING (date, venue, instrument)
LEFT JOIN staging.instruments ins USING (venue, instrument)
WHERE c.carry_annualized IS NOT NULL
