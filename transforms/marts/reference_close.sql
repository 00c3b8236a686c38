-- incremental: date lookback 1
-- grain: date, asset
-- Reference daily close per asset (UTC day), used by every return computation.
-- Precedence (lower wins): Binance spot, Binance USDT perp, Binance COIN-M perp, Bybit perp, OKX perp,
-- other venues' perps, then any imported daily spot series (interval '1d', e.g. `perpwatch import prices`)
-- for days no venue covers. A day's close is the close of its LAST hourly bar, the 23:00 UTC bar that
-- ends at D + 1 00:00: a source whose last bar of the day is earlier (a feed that stopped mid-day, or
-- the day in progress) is `close_complete = false` and loses to any source with a complete day, whatever
-- its precedence. An imported '1d' bar is a whole day by construction.
-- return_1d is computed on ONE source: D's chosen source when it also has a close on D - 1 (preferring
-- a complete one there); only when it has none does the return fall back to D - 1's chosen close, and
-- then `return_mixed_source` is true (spot vs perp, or two venues, inside one return).
-- UTC days by epoch arithmetic and arg_max (no time-zone library and no window sort per row).
WITH hourly AS (   -- per instrument and UTC day (integer day number: grouped before any DATE is built) the last
                  -- close and its hour; one equality per kind, which DuckDB pushes into the scan (an IN list
                  -- it evaluates row by row)
    SELECT venue, instrument, kind, asset, DATE '1970-01-01' + CAST(day_n AS INTEGER) AS date, close, last_hour
    FROM (
        SELECT venue, instrument, kind, asset, epoch_us(ts) // 86400000000 AS day_n, arg_max(close, ts) AS close,
               CAST(max(epoch_us(ts)) // 3600000000 % 24 AS INTEGER) AS last_hour
        FROM (SELECT * FROM staging.prices WHERE "interval" = '1h' AND kind = 'spot' AND close > 0
              UNION ALL
              SELECT * FROM staging.prices WHERE "interval" = '1h' AND kind = 'perp' AND close > 0)
        GROUP BY venue, instrument, kind, asset, day_n
    )
),
daily AS (
    SELECT date, asset, venue, instrument, kind, close, last_hour = 23 AS close_complete,
           CASE WHEN venue = 'binance' AND kind = 'spot' THEN 1
                WHEN venue = 'binance' AND kind = 'perp' AND instrument LIKE '%USDT' THEN 2
                WHEN venue = 'binance' AND kind = 'perp' THEN 3
                WHEN venue = 'bybit' AND kind = 'perp' THEN 4
                WHEN venue = 'okx' AND kind = 'perp' THEN 5
                ELSE 6 END AS precedence
    FROM hourly
    UNION ALL
    SELECT DATE '1970-01-01' + CAST(floor(epoch_us(ts) / 86400000000) AS INTEGER) AS date,
           asset, venue, instrument, kind, close, true AS close_complete, 7 AS precedence
    FROM staging.prices
    WHERE "interval" = '1d' AND kind IN ('spot', 'perp') AND close > 0
),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY date, asset
                                 ORDER BY close_complete DESC, precedence, venue, instrument) AS rk
    FROM daily
),
chosen AS (SELECT * FROM ranked WHERE rk = 1)
SELECT c.date, c.asset, c.close AS close_usd, c.venue AS source_venue, c.kind AS source_kind,
       c.instrument AS source_instrument, c.close_complete,
       coalesce(s.close, p.close) AS prev_close_usd,
       CASE WHEN s.close IS NOT NULL THEN c.close / s.close - 1
            WHEN p.close IS NOT NULL THEN c.close / p.close - 1 END AS return_1d,
       s.close IS NULL AND p.close IS NOT NULL AS return_mixed_source
FROM chosen c
LEFT JOIN (SELECT * FROM daily QUALIFY row_number() OVER (PARTITION BY date, asset, venue, instrument, kind
                                                          ORDER BY close_complete DESC, precedence) = 1) s
       ON s.asset = c.asset AND s.date = c.date - 1 AND s.venue = c.venue AND s.instrument = c.instrument
          AND s.kind = c.kind AND s.precedence = c.precedence
LEFT JOIN chosen p ON p.asset = c.asset AND p.date = c.date - 1
