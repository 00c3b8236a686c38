-- incremental: date
-- grain: date, asset
-- Reference daily close per asset (UTC day), used by every return computation.
-- Precedence (lower wins): Binance spot, Binance USDT perp, Binance COIN-M perp, Bybit perp, OKX perp,
-- other venues' perps, then any imported daily spot series (interval '1d', e.g. `perpwatch import prices`)
-- for days no venue covers. A day's close is the last hourly close inside that day.
-- UTC days by epoch arithmetic and arg_max (no time-zone library and no window sort per row).
WITH hourly AS (
    SELECT venue, instrument, kind, asset,
           DATE '1970-01-01' + CAST(floor(epoch_us(ts) / 86400000000) AS INTEGER) AS date,
           arg_max(close, ts) AS close
    FROM staging.prices
    WHERE "interval" = '1h' AND kind IN ('spot', 'perp') AND close > 0
    GROUP BY venue, instrument, kind, asset, date
),
daily AS (
    SELECT date, asset, venue, kind, close,
           CASE WHEN venue = 'binance' AND kind = 'spot' THEN 1
                WHEN venue = 'binance' AND kind = 'perp' AND instrument LIKE '%USDT' THEN 2
                WHEN venue = 'binance' AND kind = 'perp' THEN 3
                WHEN venue = 'bybit' AND kind = 'perp' THEN 4
                WHEN venue = 'okx' AND kind = 'perp' THEN 5
                ELSE 6 END AS precedence
    FROM hourly
    UNION ALL
    SELECT DATE '1970-01-01' + CAST(floor(epoch_us(ts) / 86400000000) AS INTEGER) AS date,
           asset, venue, kind, close, 7 AS precedence
    FROM staging.prices
    WHERE "interval" = '1d' AND kind IN ('spot', 'perp') AND close > 0
)
SELECT date, asset, close AS close_usd, venue AS source_venue, kind AS source_kind
FROM daily
QUALIFY row_number() OVER (PARTITION BY date, asset ORDER BY precedence, venue) = 1
