-- grain: date, asset
-- One row per asset per UTC day, computed only from data timestamped inside or before that
-- day. Thresholds come from perpwatch/signals.toml ({{section.key}}).
WITH price AS (
    SELECT date, asset, close_usd FROM marts.reference_close
),
oi AS (
    SELECT date, asset, sum(oi_usd) AS oi_usd, count(*) AS oi_venues,
           sum(inverse_oi_usd) AS inverse_oi_usd
    FROM marts.open_interest_by_venue GROUP BY ALL
),
oi_eod AS (   -- end-of-day OI per instrument, the weight for cross-venue averages
    SELECT venue, instrument, ts::DATE AS date, oi_usd
    FROM staging.open_interest WHERE oi_usd IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY venue, instrument, ts::DATE ORDER BY ts DESC) = 1
),
funding_inst AS (
    SELECT venue, instrument, asset, funding_time::DATE AS date, avg(rate_8h) AS rate_8h,
           avg(rate_annualized) AS rate_annualized
    FROM staging.funding_rates GROUP BY ALL
),
funding AS (   -- OI-weighted across venues; instruments with no OI that day weigh as the mean
    SELECT f.date, f.asset,
           coalesce(sum(f.rate_8h * o.oi_usd) / nullif(sum(o.oi_usd) FILTER (WHERE f.rate_8h IS NOT NULL), 0),
                    avg(f.rate_8h)) AS funding_rate_8h,
           coalesce(sum(f.rate_annualized * o.oi_usd) / nullif(sum(o.oi_usd) FILTER (WHERE f.rate_annualized IS NOT NULL), 0),
                    avg(f.rate_annualized)) AS funding_annualized,
           count(*) AS funding_instruments
    FROM funding_inst f LEFT JOIN oi_eod o USING (venue, instrument, date)
    GROUP BY ALL
),
ls_inst AS (
    SELECT venue, instrument, asset, population, ts::DATE AS date, ratio
    FROM staging.long_short_ratio
    QUALIFY row_number() OVER (PARTITION BY venue, instrument, population, ts::DATE ORDER BY ts DESC) = 1
),
ls AS (
    SELECT l.date, l.asset,
           coalesce(sum(l.ratio * o.oi_usd) FILTER (WHERE population = 'accounts')
                    / nullif(sum(o.oi_usd) FILTER (WHERE population = 'accounts'), 0),
                    avg(l.ratio) FILTER (WHERE population = 'accounts')) AS ls_ratio,
           avg(l.ratio) FILTER (WHERE population = 'top_accounts') AS ls_ratio_top_accounts,
           avg(l.ratio) FILTER (WHERE population = 'top_positions') AS ls_ratio_top_positions
    FROM ls_inst l LEFT JOIN oi_eod o USING (venue, instrument, date)
    GROUP BY ALL
),
liq AS (
    SELECT ts::DATE AS date, asset,
           sum(usd) FILTER (WHERE side = 'long') AS liquidations_long_usd,
           sum(usd) FILTER (WHERE side = 'short') AS liquidations_short_usd
    FROM staging.liquidations GROUP BY ALL
),
basis_candidates AS (   -- dated futures vs index at the day's last common hour, annualised to expiry
    SELECT f.asset, f.ts::DATE AS date, f.venue, f.instrument,
           (f.close / i.close - 1) * 365.0 / greatest(epoch(f.expiry - f.ts) / 86400.0, 1) AS basis_annualized,
           epoch(f.expiry - f.ts) / 86400.0 AS days_to_expiry
    FROM staging.prices f
    JOIN staging.prices i ON i.venue = f.venue AND i.asset = f.asset AND i.kind = 'index'
         AND i."interval" = f."interval" AND i.ts = f.ts
    WHERE f.kind = 'future' AND f."interval" = '1h' AND f.expiry IS NOT NULL AND f.expiry > f.ts
    QUALIFY row_number() OVER (PARTITION BY f.venue, f.instrument, f.ts::DATE ORDER BY f.ts DESC) = 1
),
basis AS (   -- nearest expiry at least 7 days out
    SELECT date, asset, basis_annualized, days_to_expiry AS basis_days_to_expiry
    FROM basis_candidates WHERE days_to_expiry >= 7
    QUALIFY row_number() OVER (PARTITION BY date, asset ORDER BY days_to_expiry, venue) = 1
),
premium AS (   -- perp vs index at the day's last hour (not annualised: a perp has no expiry)
    SELECT p.asset, p.ts::DATE AS date, avg(p.close / i.close - 1) AS perp_premium
    FROM staging.prices p
    JOIN staging.prices i ON i.venue = p.venue AND i.instrument = p.instrument AND i.kind = 'index'
         AND i."interval" = '1h' AND i.ts = p.ts
    WHERE p.kind = 'perp' AND p."interval" = '1h' AND hour(p.ts) = 23
    GROUP BY ALL
),
mcap AS (
    SELECT date, asset, market_cap_usd FROM staging.market_caps
),
joined AS (
    SELECT p.date, p.asset, p.close_usd,
           p.close_usd / lag(p.close_usd) OVER w - 1 AS return_1d_raw,
           lag(p.date) OVER w AS prev_date,
           o.oi_usd, o.oi_venues, o.inverse_oi_usd,
           f.funding_rate_8h, f.funding_annualized, f.funding_instruments,
           l.ls_ratio, l.ls_ratio_top_accounts, l.ls_ratio_top_positions,
           coalesce(q.liquidations_long_usd, 0) AS liquidations_long_usd,
           coalesce(q.liquidations_short_usd, 0) AS liquidations_short_usd,
           b.basis_annualized, b.basis_days_to_expiry, pr.perp_premium,
           m.market_cap_usd, o1.oi_usd AS oi_usd_1d_ago, o7.oi_usd AS oi_usd_7d_ago
    FROM price p
    LEFT JOIN oi o USING (date, asset)
    LEFT JOIN funding f USING (date, asset)
    LEFT JOIN ls l USING (date, asset)
    LEFT JOIN liq q USING (date, asset)
    LEFT JOIN basis b USING (date, asset)
    LEFT JOIN premium pr USING (date, asset)
    LEFT JOIN mcap m USING (date, asset)
    LEFT JOIN oi o1 ON o1.asset = p.asset AND o1.date = p.date - 1
    LEFT JOIN oi o7 ON o7.asset = p.asset AND o7.date = p.date - 7
    WINDOW w AS (PARTITION BY p.asset ORDER BY p.date)
),
changes AS (
    SELECT j.*,
           CASE WHEN prev_date = date - 1 THEN return_1d_raw END AS return_1d,
           j.oi_usd / nullif(j.oi_usd_1d_ago, 0) - 1 AS oi_change_1d,
           j.oi_usd / nullif(j.oi_usd_7d_ago, 0) - 1 AS oi_change_7d,
           quantile_cont(j.funding_rate_8h, {{funding.extreme_percentile}}) OVER pw AS funding_pctl_threshold,
           count(j.funding_rate_8h) OVER pw AS funding_history_days,
           (liquidations_long_usd + liquidations_short_usd) AS liquidations_usd,
           avg(liquidations_long_usd + liquidations_short_usd) OVER zw AS liq_mean,
           stddev_samp(liquidations_long_usd + liquidations_short_usd) OVER zw AS liq_std,
           count(*) OVER zw AS liq_days
    FROM joined j
    WINDOW pw AS (PARTITION BY asset ORDER BY date
                  RANGE BETWEEN INTERVAL ({{funding.percentile_window_days}}) DAY PRECEDING AND INTERVAL 1 DAY PRECEDING),
           zw AS (PARTITION BY asset ORDER BY date
                  RANGE BETWEEN INTERVAL ({{liquidations.zscore_window_days}}) DAY PRECEDING AND INTERVAL 1 DAY PRECEDING)
),
flags AS (
    SELECT c.*,
           CASE
             WHEN return_1d IS NULL OR oi_change_1d IS NULL THEN NULL
             WHEN abs(return_1d) < {{regime.min_price_move}} OR abs(oi_change_1d) < {{regime.min_oi_move}} THEN 'flat'
             WHEN oi_change_1d > 0 AND return_1d > 0 THEN 'rising_oi_rising_price'
             WHEN oi_change_1d < 0 AND return_1d < 0 THEN 'falling_oi_falling_price'
             WHEN oi_change_1d > 0 AND return_1d < 0 THEN 'rising_oi_falling_price'
             ELSE 'falling_oi_rising_price'
           END AS oi_price_regime,
           coalesce(abs(funding_rate_8h) > {{funding.extreme_rate_8h}}, false)
             OR coalesce(funding_history_days >= {{funding.percentile_min_days}}
                         AND funding_rate_8h >= funding_pctl_threshold AND funding_rate_8h > 0, false)
             AS funding_extreme,
           coalesce(abs(funding_rate_8h) > {{funding.extreme_rate_8h}}, false) AS funding_extreme_absolute,
           coalesce(ls_ratio > {{long_short.extreme_ratio}} OR ls_ratio < {{long_short.extreme_ratio_low}}, false) AS ls_extreme,
           CASE WHEN liq_days >= {{liquidations.zscore_min_days}} AND liq_std > 0
                THEN (liquidations_usd - liq_mean) / liq_std END AS liquidation_zscore,
           coalesce(abs(basis_annualized) > {{basis.extreme_annualized}}, false) AS basis_extreme,
           oi_usd / nullif(market_cap_usd, 0) AS oi_to_mcap
    FROM changes c
)
SELECT date, asset, close_usd, return_1d, oi_usd, oi_change_1d, oi_change_7d, oi_price_regime,
       funding_rate_8h, funding_annualized, funding_extreme, funding_extreme_absolute, funding_pctl_threshold,
       ls_ratio, ls_ratio_top_accounts, ls_ratio_top_positions, ls_extreme,
       liquidations_long_usd, liquidations_short_usd, liquidation_zscore,
       coalesce(liquidation_zscore >= {{liquidations.surge_zscore}}, false) AS liquidation_surge,
       basis_annualized, basis_days_to_expiry, basis_extreme, perp_premium, oi_to_mcap, oi_venues,
       (funding_extreme AND funding_rate_8h > 0 AND ls_ratio > {{long_short.extreme_ratio}}) AS overheating,
       CASE
         WHEN funding_extreme AND funding_rate_8h > 0 AND ls_ratio > {{long_short.extreme_ratio}} THEN 'overheated'
         WHEN oi_price_regime = 'falling_oi_falling_price'
              AND coalesce(liquidation_zscore >= {{liquidations.surge_zscore}}, false) THEN 'capitulation'
         WHEN oi_price_regime = 'falling_oi_falling_price' THEN 'deleveraging'
         WHEN oi_price_regime = 'rising_oi_rising_price' AND NOT funding_extreme THEN 'healthy_trend'
         WHEN oi_price_regime = 'rising_oi_rising_price' THEN 'crowded_trend'
         WHEN oi_price_regime = 'falling_oi_rising_price' THEN 'short_covering'
         WHEN oi_price_regime = 'rising_oi_falling_price' THEN 'shorts_building'
         ELSE 'neutral'
       END AS signal_state
FROM flags
ORDER BY asset, date
