-- grain: date, asset
-- Reference daily close per asset (UTC day), used by every return computation.
-- Precedence (lower wins): Binance spot, Binance USDT perp, Binance COIN-M perp, Bybit perp, OKX perp, other venues'
-- perps, then any imported daily spot series (interval '1d', e.g. `perpwatch import prices`)
-- for days no venue covers. A day's close is the last hourly close inside that day.
WITH hourly AS (
    SELECT venue, instrument, kind, asset, ts::DATE AS date, close,
           row_number() OVER (PARTITION BY venue, instrument, kind, ts::DATE ORDER BY ts DESC) AS rn
    FROM staging.prices
    WHERE "interval" = '1h' AND kind IN ('spot', 'perp') AND close > 0
),
daily AS (
    SELECT date, asset, venue, kind, close,
           CASE WHEN venue = 'binance' AND kind = 'spot' THEN 1
                WHEN venue = 'binance' AND kind = 'perp' AND instrument LIKE '%USDT' THEN 2
                WHEN venue = 'binance' AND kind = 'perp' THEN 3
                WHEN venue = 'bybit' AND kind = 'perp' THEN 4
                WHEN venue = 'okx' AND kind = 'perp' THEN 5
                ELSE 6 END AS precedence
    FROM hourly WHERE rn = 1
    UNION ALL
    SELECT ts::DATE AS date, asset, venue, kind, close, 7 AS precedence
    FROM staging.prices
    WHERE "interval" = '1d' AND kind IN ('spot', 'perp') AND close > 0
)
SELECT date, asset, close AS close_usd, venue AS source_venue, kind AS source_kind
FROM daily
QUALIFY row_number() OVER (PARTITION BY date, asset ORDER BY precedence, venue) = 1
