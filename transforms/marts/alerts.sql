-- incremental: date
-- grain: ts, asset, rule        time column: ts
-- Every rule that fires on a day of marts.daily_signals, one row per (day, asset, rule): a
-- rule fires at most once per asset per day by construction. ts is the END of the UTC day
-- (D + 1 at 00:00 UTC), the first moment all of day D's inputs are known; `date` is D.
-- Market-wide rules (the OI milestone of the sum over assets) use asset = 'ALL'.
-- streak_days counts consecutive days the same (asset, rule) has fired, this day included. An
-- incremental build recomputes the days from `since` on and carries on the streaks stored for since - 1.
-- complete: the day's row of marts.daily_signals is complete (for 'ALL': every asset's row is); an
-- alert of an incomplete (in-progress) day is provisional and is delivered only as such
-- (perpwatch/serving/alerts.py), with its final version or withdrawal sent once the day is complete.
-- Rules, thresholds and severities: docs/signals.md; thresholds: perpwatch/core/signals.toml.
WITH s AS (
    SELECT *,
           CASE WHEN funding_extreme_absolute THEN
                     CASE WHEN funding_extreme_direction = 1 THEN funding_rate_8h_max ELSE funding_rate_8h_min END
                ELSE funding_rate_8h END AS funding_value,
           CASE WHEN funding_extreme_absolute THEN funding_extreme_direction * {{funding.extreme_rate_8h}}
                WHEN funding_extreme_direction = 1 THEN greatest(funding_pctl_threshold, {{funding.percentile_floor_8h}})
                ELSE least(funding_pctl_threshold_low, 0) END AS funding_threshold,
           CASE WHEN funding_extreme_absolute THEN 'the absolute threshold'
                ELSE 'its trailing ' || {{funding.percentile_window_days}}::INT || '-day '
                     || round(100 * {{funding.extreme_percentile}})::INT || 'th percentile' END AS funding_rule
    FROM marts.daily_signals
),
fired AS (
    SELECT date, asset, 'overheating' AS rule, funding_value AS value, funding_threshold AS threshold,
           'critical' AS severity,
           format('{} overheated: funding {:.4f} %/8h beyond {} ({:.4f} %) with the long/short ratio {:.2f} above {:.2f}; the seed reads this pair as a liquidation-cascade precursor (cascade risk {}/100)',
                  asset, 100 * funding_value, funding_rule, 100 * funding_threshold, ls_ratio,
                  {{long_short.extreme_ratio}}, coalesce(cascade_risk::VARCHAR, 'n/a')) AS message
    FROM s WHERE overheating
    UNION ALL
    SELECT date, asset, 'cascade_risk', cascade_risk, {{alerts.cascade_risk_warning}},
           CASE WHEN cascade_risk >= {{alerts.cascade_risk_critical}} THEN 'critical' ELSE 'warning' END,
           format('{} cascade risk {:.0f}/100 (funding {:.2f}, long/short {:.2f}, OI build-up {:.2f}, basis {:.2f} of their thresholds)',
                  asset, cascade_risk, coalesce(cascade_funding_component, 'NaN'::DOUBLE),
                  coalesce(cascade_ls_component, 'NaN'::DOUBLE), coalesce(cascade_oi_component, 'NaN'::DOUBLE),
                  coalesce(cascade_basis_component, 'NaN'::DOUBLE))
    FROM s WHERE cascade_risk >= {{alerts.cascade_risk_warning}}
    UNION ALL
    SELECT date, asset, 'funding_extreme', funding_value, funding_threshold,
           CASE WHEN funding_extreme_absolute THEN 'critical' ELSE 'warning' END,
           format('{} funding {:.4f} %/8h ({:.1f} % a year) is {} {} ({:.4f} %): {} pay',
                  asset, 100 * funding_value, 100 * funding_annualized,
                  CASE WHEN funding_extreme_direction = 1 THEN 'above' ELSE 'below' END, funding_rule,
                  100 * funding_threshold, CASE WHEN funding_extreme_direction = 1 THEN 'longs' ELSE 'shorts' END)
    FROM s WHERE funding_extreme
    UNION ALL
    SELECT date, asset, 'ls_extreme', ls_ratio,
           CASE WHEN ls_extreme_direction = 1 THEN {{long_short.extreme_ratio}} ELSE {{long_short.extreme_ratio_low}} END,
           'warning',
           format('{} long/short account ratio {:.2f} is {} {:.2f}: crowded {}', asset, ls_ratio,
                  CASE WHEN ls_extreme_direction = 1 THEN 'above' ELSE 'below' END,
                  CASE WHEN ls_extreme_direction = 1 THEN {{long_short.extreme_ratio}} ELSE {{long_short.extreme_ratio_low}} END,
                  CASE WHEN ls_extreme_direction = 1 THEN 'longs' ELSE 'shorts' END)
    FROM s WHERE ls_extreme
    UNION ALL
    SELECT date, asset, 'ls_extreme_top_accounts', ls_ratio_top_accounts,
           CASE WHEN ls_ratio_top_accounts > 1 THEN {{long_short.top_accounts_extreme_ratio}}
                ELSE {{long_short.top_accounts_extreme_ratio_low}} END,
           'warning',
           format('{} top-trader account ratio {:.2f} is {} {:.2f}', asset, ls_ratio_top_accounts,
                  CASE WHEN ls_ratio_top_accounts > 1 THEN 'above' ELSE 'below' END,
                  CASE WHEN ls_ratio_top_accounts > 1 THEN {{long_short.top_accounts_extreme_ratio}}
                       ELSE {{long_short.top_accounts_extreme_ratio_low}} END)
    FROM s WHERE ls_extreme_top_accounts
    UNION ALL
    SELECT date, asset, 'ls_extreme_top_positions', ls_ratio_top_positions,
           CASE WHEN ls_ratio_top_positions > 1 THEN {{long_short.top_positions_extreme_ratio}}
                ELSE {{long_short.top_positions_extreme_ratio_low}} END,
           'warning',
           format('{} top-trader position ratio {:.2f} is {} {:.2f}', asset, ls_ratio_top_positions,
                  CASE WHEN ls_ratio_top_positions > 1 THEN 'above' ELSE 'below' END,
                  CASE WHEN ls_ratio_top_positions > 1 THEN {{long_short.top_positions_extreme_ratio}}
                       ELSE {{long_short.top_positions_extreme_ratio_low}} END)
    FROM s WHERE ls_extreme_top_positions
    UNION ALL
    SELECT date, asset, 'liquidation_surge', liquidation_zscore, {{liquidations.surge_zscore}},
           CASE WHEN liquidation_zscore >= {{alerts.liquidation_critical_zscore}} THEN 'critical' ELSE 'warning' END,
           format('{} liquidations ${:,.0f} (longs ${:,.0f}, shorts ${:,.0f}) are {:.1f} standard deviations above the trailing {}-day mean; the seed reads surges as reversal precursors',
                  asset, liquidations_usd, liquidations_long_usd, liquidations_short_usd, liquidation_zscore,
                  {{liquidations.zscore_window_days}}::INT)
    FROM s WHERE liquidation_surge
    UNION ALL
    SELECT date, asset, 'heatmap_cluster_above', cluster_above_distance, {{alerts.heatmap_cluster_distance}}, 'info',
           format('{} estimated liquidation cluster ${:,.0f} at {:,.2f}, {:.2f} % above the close', asset,
                  cluster_above_usd, cluster_above_price, 100 * cluster_above_distance)
    FROM s WHERE cluster_above_distance <= {{alerts.heatmap_cluster_distance}}
    UNION ALL
    SELECT date, asset, 'heatmap_cluster_below', cluster_below_distance, {{alerts.heatmap_cluster_distance}}, 'info',
           format('{} estimated liquidation cluster ${:,.0f} at {:,.2f}, {:.2f} % below the close', asset,
                  cluster_below_usd, cluster_below_price, 100 * cluster_below_distance)
    FROM s WHERE cluster_below_distance <= {{alerts.heatmap_cluster_distance}}
    UNION ALL
    SELECT date, asset, 'oi_milestone', oi_usd, oi_milestone_crossed, 'info',
           format('{} open interest ${:,.0f} crossed the ${:,.0f} milestone', asset, oi_usd, oi_milestone_crossed)
    FROM s WHERE oi_milestone_crossed IS NOT NULL
    UNION ALL
    SELECT DISTINCT date, 'ALL', 'oi_milestone', market_oi_usd, market_oi_milestone_crossed, 'info',
           format('Aggregate open interest over tracked assets ${:,.0f} crossed the ${:,.0f} milestone',
                  market_oi_usd, market_oi_milestone_crossed)
    FROM s WHERE market_oi_milestone_crossed IS NOT NULL
    UNION ALL
    SELECT date, asset, 'basis_extreme', basis_annualized,
           CASE WHEN basis_annualized > 0 THEN {{basis.extreme_annualized}} ELSE -{{basis.extreme_annualized}} END,
           'info',
           format('{} dated-futures basis {:.1f} % a year ({:.0f} days to expiry) is beyond ±{:.0f} %', asset,
                  100 * basis_annualized, basis_days_to_expiry, 100 * {{basis.extreme_annualized}})
    FROM s WHERE basis_extreme
    UNION ALL
    SELECT date, asset, 'oi_to_mcap_extreme', oi_to_mcap, oi_to_mcap_threshold, 'warning',
           format('{} open interest is {:.2f} % of market cap, at or above its trailing percentile ({:.2f} %): dislocation risk',
                  asset, 100 * oi_to_mcap, 100 * oi_to_mcap_threshold)
    FROM s WHERE oi_to_mcap_extreme
),
day_complete AS (
    SELECT date, asset, complete FROM marts.daily_signals
    UNION ALL
    SELECT date, 'ALL', bool_and(complete) FROM marts.daily_signals GROUP BY date
),
streaks AS (
    SELECT *, date - CAST(row_number() OVER (PARTITION BY asset, rule ORDER BY date) AS INTEGER) AS island
    FROM fired
)
{{#incremental}}
, carried AS (     -- streaks that ran on the day before the first rebuilt one: the run starting on that day goes on
    SELECT asset, rule, streak_days AS carried_days FROM marts.alerts WHERE date = {{build.since}} - 1
)
{{/incremental}}
SELECT timezone('UTC', (date + 1)::TIMESTAMP) AS ts, date, asset, rule, value, threshold, severity, message,
       row_number() OVER (PARTITION BY asset, rule, island ORDER BY date)
{{#incremental}}
         + CASE WHEN island = {{build.since}} - 1 THEN coalesce(k.carried_days, 0) ELSE 0 END
{{/incremental}}
         AS streak_days,
       coalesce(c.complete, false) AS complete
FROM streaks LEFT JOIN day_complete c USING (date, asset)
{{#incremental}}
LEFT JOIN carried k USING (asset, rule)
{{/incremental}}
ORDER BY ts, asset, rule
