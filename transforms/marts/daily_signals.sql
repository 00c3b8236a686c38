-- incremental: date lookback 7
-- grain: date, asset          time column: date (UTC day)
-- One row per asset per UTC day that has a reference close, computed only from data
-- timestamped inside or before that day (tests/test_point_in_time.py proves it): every
-- rolling window ends the day before, every "last value of the day" is taken inside the day.
-- Thresholds come from perpwatch/core/signals.toml ({{section.key}}); rules, formulas and which
-- comparisons are strict: docs/signals.md. Weighted means are rounded to 1e-12 so averaging
-- noise cannot move a value across a threshold it equals. UTC days/hours use epoch arithmetic
-- (DATE '1970-01-01' + whole days): TIMESTAMPTZ casts go through the time-zone library and cost
-- 3-5x more per row, and this way the day is UTC whatever the session time zone.
-- Incremental build (transforms/__init__.py): a day's inputs reach back 7 days (oi_change_7d); the
-- trailing windows read the rows this mart already holds for the days before the first rebuilt
-- one (the same day values a full build computes) and are evaluated for the rebuilt days only;
-- when capture started per asset and venue is read from all of staging.liquidations.
WITH price AS (      -- complete-day close and a one-source return (marts.reference_close)
    SELECT date, asset, close_usd, close_complete, return_1d, return_mixed_source FROM marts.reference_close
),
oi_inst AS (       -- end-of-day perp OI per instrument: the unit of like-for-like comparison
    SELECT date, asset, venue, instrument, oi_usd FROM marts.open_interest_by_instrument WHERE oi_usd IS NOT NULL
),
oi AS (            -- aggregate open interest, end of day, summed over instruments, with its coverage:
                   -- the key identifies the exact instrument set, so level rules compare like with like
    SELECT date, asset, sum(oi_usd) AS oi_usd, count(DISTINCT venue) AS oi_venues, count(*) AS oi_instruments,
           -- the (venue, instrument) pairs sorted as structs: the string
           -- string_agg(venue || ':' || instrument, ',' ORDER BY venue, instrument) gives, without an ordered aggregate
           md5(array_to_string(list_transform(list_sort(list({'v': venue, 'i': instrument})), x -> x.v || ':' || x.i),
                               ',')) AS oi_coverage_key
    FROM oi_inst GROUP BY date, asset
),
oi_like AS (       -- OI changes like for like: only INSTRUMENTS reporting on both days, so an instrument
                   -- whose history starts later (Binance's 30 days, a snapshot-only venue) or misses a day
                   -- is not a move; oi_like_share_1d = share of today's OI in that common set
    SELECT v.date, v.asset,
           sum(v.oi_usd) FILTER (WHERE v1.oi_usd IS NOT NULL) / nullif(sum(v1.oi_usd), 0) - 1 AS oi_change_1d,
           sum(v.oi_usd) FILTER (WHERE v7.oi_usd IS NOT NULL) / nullif(sum(v7.oi_usd), 0) - 1 AS oi_change_7d,
           sum(v.oi_usd) FILTER (WHERE v1.oi_usd IS NOT NULL) / nullif(sum(v.oi_usd), 0) AS oi_like_share_1d
    FROM oi_inst v
    LEFT JOIN oi_inst v1 ON v1.asset = v.asset AND v1.venue = v.venue AND v1.instrument = v.instrument
                        AND v1.date = v.date - 1
    LEFT JOIN oi_inst v7 ON v7.asset = v.asset AND v7.venue = v.venue AND v7.instrument = v.instrument
                        AND v7.date = v.date - 7
    GROUP BY v.date, v.asset
),
market AS (        -- sum over every tracked asset
    SELECT date, sum(oi_usd) AS market_oi_usd, sum(oi_instruments) AS market_oi_instruments FROM oi GROUP BY date
),
oi_eod AS (        -- end-of-day perp OI per instrument: the weight of cross-venue means (long/short ratios are
                   -- perp positioning); from marts.open_interest_by_instrument, not another scan of staging
    SELECT venue, instrument, date, arg_max(oi_usd, last_ts) AS oi_usd
    FROM marts.open_interest_by_instrument WHERE oi_usd IS NOT NULL
    GROUP BY venue, instrument, date
),
carry AS MATERIALIZED (   -- a view: read it once for funding and basis, only the columns used here
    SELECT date, asset, venue, instrument, kind, funding_rate_8h, funding_annualized, funding_rate_8h_max,
           funding_rate_8h_min, oi_usd, basis_annualized, days_to_expiry
    FROM marts.carry_daily   -- not marts.carry: its ranking windows would run for columns nobody reads
),
funding AS (       -- OI-weighted over perps (marts.carry_daily: each perp's daily mean funding)
    SELECT date, asset,
           round(coalesce(sum(funding_rate_8h * oi_usd) FILTER (WHERE funding_rate_8h IS NOT NULL)
                          / nullif(sum(oi_usd) FILTER (WHERE funding_rate_8h IS NOT NULL), 0),
                          avg(funding_rate_8h)), 12) AS funding_rate_8h,
           round(coalesce(sum(funding_annualized * oi_usd) / nullif(sum(oi_usd), 0),
                          avg(funding_annualized)), 12) AS funding_annualized,
           round(coalesce(sum(funding_rate_8h_max * oi_usd) / nullif(sum(oi_usd), 0),
                          avg(funding_rate_8h_max)), 12) AS funding_rate_8h_max,
           round(coalesce(sum(funding_rate_8h_min * oi_usd) / nullif(sum(oi_usd), 0),
                          avg(funding_rate_8h_min)), 12) AS funding_rate_8h_min,
           count(*) AS funding_instruments
    FROM carry WHERE kind = 'perp'
    GROUP BY date, asset
),
ls_inst AS (       -- last ratio of the day per instrument and population
    SELECT venue, instrument, any_value(asset) AS asset, population, DATE '1970-01-01' + CAST(floor(epoch_us(ts) / 86400000000) AS INTEGER) AS date,
           arg_max(ratio, ts) AS ratio
    FROM staging.long_short_ratio WHERE ratio IS NOT NULL
    GROUP BY venue, instrument, population, date
),
ls_w AS (         -- each instrument's ratio with its end-of-day OI weight, and whether it reported on D - 1
    SELECT l.date, l.asset, l.population, l.venue, l.instrument, l.ratio, o.oi_usd,
           p.ratio IS NOT NULL AS seen_prev
    FROM ls_inst l
    LEFT JOIN oi_eod o USING (venue, instrument, date)
    LEFT JOIN ls_inst p ON p.venue = l.venue AND p.instrument = l.instrument AND p.population = l.population
                       AND p.date = l.date - 1
),
ls_pop AS (        -- OI-weighted over instruments; a plain mean when no instrument has OI that day.
                   -- ratio_like: the same over instruments that also reported on D - 1; the set changed
                   -- when an instrument appeared or left (then only a like-for-like extreme counts)
    SELECT l.date, l.asset, l.population,
           round(coalesce(sum(l.ratio * l.oi_usd) / nullif(sum(l.oi_usd), 0), avg(l.ratio)), 12) AS ratio,
           round(coalesce(sum(l.ratio * l.oi_usd) FILTER (WHERE seen_prev)
                          / nullif(sum(l.oi_usd) FILTER (WHERE seen_prev), 0),
                          avg(l.ratio) FILTER (WHERE seen_prev)), 12) AS ratio_like,
           count(*) AS n_instruments,
           any_value(prev.n) IS NOT NULL AND (count(*) FILTER (WHERE NOT seen_prev) > 0
                                              OR count(*) < any_value(prev.n)) AS coverage_changed
    FROM ls_w l
    LEFT JOIN (SELECT date, asset, population, count(*) AS n FROM ls_inst GROUP BY ALL) prev
           ON prev.asset = l.asset AND prev.population = l.population AND prev.date = l.date - 1
    GROUP BY l.date, l.asset, l.population
),
ls AS (
    SELECT date, asset,
           any_value(ratio) FILTER (WHERE population = 'accounts') AS ls_ratio,
           any_value(ratio) FILTER (WHERE population = 'top_accounts') AS ls_ratio_top_accounts,
           any_value(ratio) FILTER (WHERE population = 'top_positions') AS ls_ratio_top_positions,
           any_value(CASE WHEN coverage_changed THEN ratio_like ELSE ratio END) FILTER (WHERE population = 'accounts') AS ls_ratio_gate,
           any_value(CASE WHEN coverage_changed THEN ratio_like ELSE ratio END) FILTER (WHERE population = 'top_accounts') AS ls_ratio_top_accounts_gate,
           any_value(CASE WHEN coverage_changed THEN ratio_like ELSE ratio END) FILTER (WHERE population = 'top_positions') AS ls_ratio_top_positions_gate,
           any_value(n_instruments) FILTER (WHERE population = 'accounts') AS ls_instruments,
           coalesce(any_value(coverage_changed) FILTER (WHERE population = 'accounts'), false) AS ls_coverage_changed
    FROM ls_pop GROUP BY date, asset
),
liq AS (
    SELECT DATE '1970-01-01' + CAST(floor(epoch_us(ts) / 86400000000) AS INTEGER) AS date, asset,
           coalesce(sum(usd) FILTER (WHERE side = 'long'), 0) AS liquidations_long_usd,
           coalesce(sum(usd) FILTER (WHERE side = 'short'), 0) AS liquidations_short_usd
    FROM staging.liquidations GROUP BY date, asset
),
liq_first AS (     -- first liquidation per asset and venue, over all history (first-seen: never cut)
    SELECT asset, venue, min(ts) AS first_ts FROM {{whole staging.liquidations}} GROUP BY asset, venue
),
liq_start AS (     -- capture starts on an asset's first liquidation day: before it, unknown (NULL)
    SELECT asset, DATE '1970-01-01' + CAST(floor(epoch_us(min(first_ts)) / 86400000000) AS INTEGER) AS first_date FROM liq_first GROUP BY asset
),
-- Capture coverage (meta.liquidation_coverage, written by the collector: seconds each venue's stream was
-- connected in each UTC hour). An hour counts when covered_s >= [liquidations] min_hour_coverage x 3600.
-- A venue with coverage rows is "tracked": only its covered hours count, from its first covered hour on.
-- A venue without any (hand-loaded or imported rows) counts every hour from its first liquidation day.
liq_hour AS (
    SELECT venue, asset, epoch_us(ts) // 3600000000 AS hour_n, sum(usd) AS usd
    FROM staging.liquidations GROUP BY ALL
),
cov_hour AS (
    SELECT venue, epoch_us(hour) // 3600000000 AS hour_n
    FROM meta.liquidation_coverage WHERE covered_s >= {{liquidations.min_hour_coverage}} * 3600
),
tracked AS (
    SELECT venue, DATE '1970-01-01' + CAST(floor(epoch_us(min(hour)) / 86400000000) AS INTEGER) AS start_date
    FROM meta.liquidation_coverage WHERE covered_s > 0 GROUP BY venue
),
liq_venues AS (    -- venues that capture an asset, and the day capture started
    SELECT l.asset, l.venue,
           coalesce(t.start_date, DATE '1970-01-01' + CAST(floor(epoch_us(l.first_ts) / 86400000000) AS INTEGER)) AS start_date,
           t.venue IS NOT NULL AS is_tracked
    FROM liq_first l LEFT JOIN tracked t USING (venue)
),
cov_day AS (
    SELECT venue, hour_n // 24 AS day_n, count(*) AS hours FROM cov_hour GROUP BY ALL
),
liq_day AS (       -- USD per venue, asset and day: all captured, and inside covered hours only
    SELECT h.venue, h.asset, h.hour_n // 24 AS day_n, sum(h.usd) AS usd_all,
           coalesce(sum(h.usd) FILTER (WHERE c.hour_n IS NOT NULL), 0) AS usd_covered
    FROM liq_hour h LEFT JOIN cov_hour c USING (venue, hour_n) GROUP BY ALL
),
liq_vday AS (      -- per asset, venue and day: covered hours and the USD captured inside them
    SELECT p.date, p.asset, v.venue,
           CASE WHEN v.is_tracked THEN coalesce(cd.hours, 0) ELSE 24 END AS covered_hours,
           CASE WHEN v.is_tracked THEN coalesce(ld.usd_covered, 0) ELSE coalesce(ld.usd_all, 0) END AS usd
    FROM price p
    JOIN liq_venues v ON v.asset = p.asset AND p.date >= v.start_date
    LEFT JOIN cov_day cd ON cd.venue = v.venue AND cd.day_n = p.date - DATE '1970-01-01'
    LEFT JOIN liq_day ld ON ld.venue = v.venue AND ld.asset = p.asset AND ld.day_n = p.date - DATE '1970-01-01'
),
liq_cov AS (       -- day's coverage share and the full-day estimate (each venue scaled to 24 covered hours)
    SELECT date, asset,
           sum(covered_hours) AS liquidation_covered_hours,
           sum(covered_hours) / (24.0 * count(*)) AS liquidation_coverage,
           sum(usd * 24.0 / covered_hours) FILTER (WHERE covered_hours > 0) AS liq_usd_est
    FROM liq_vday GROUP BY date, asset
),
basis AS (         -- nearest dated future at least [basis] min_days_to_expiry out (marts.carry_daily)
    SELECT date, asset, basis_annualized, days_to_expiry AS basis_days_to_expiry
    FROM carry WHERE kind = 'future'
    QUALIFY row_number() OVER (PARTITION BY date, asset ORDER BY days_to_expiry, venue, instrument) = 1
),
bar23 AS MATERIALIZED (   -- the 23:00 hourly bars of perps and indexes. One equality per kind: DuckDB pushes
                          -- `kind = '...'` into the scan, an IN list or OR it evaluates row by row
    SELECT venue, instrument, kind, asset, ts, close FROM staging.prices
    WHERE kind = 'perp' AND "interval" = '1h' AND epoch_us(ts) // 3600000000 % 24 = 23
    UNION ALL
    SELECT venue, instrument, kind, asset, ts, close FROM staging.prices
    WHERE kind = 'index' AND "interval" = '1h' AND epoch_us(ts) // 3600000000 % 24 = 23
),
premium AS (       -- perp vs index at the day's 23:00 bar (not annualised: a perp has no expiry)
    SELECT p.asset, DATE '1970-01-01' + CAST(floor(epoch_us(p.ts) / 86400000000) AS INTEGER) AS date, avg(p.close / i.close - 1) AS perp_premium
    FROM bar23 p
    JOIN bar23 i ON i.venue = p.venue AND i.instrument = p.instrument AND i.kind = 'index' AND i.ts = p.ts AND i.close > 0
    WHERE p.kind = 'perp'
    GROUP BY p.asset, date
),
milestone AS (
    SELECT date, asset, max(milestone_usd) AS milestone_usd
    FROM marts.oi_milestones GROUP BY date, asset
),
joined AS (
    SELECT p.date, p.asset, p.close_usd,
           p.return_1d, p.return_mixed_source, p.close_complete,
           o.oi_usd, o.oi_venues, o.oi_instruments, o.oi_coverage_key,
           o.oi_coverage_key IS DISTINCT FROM lag(o.oi_coverage_key) OVER w
             OR lag(p.date) OVER w IS DISTINCT FROM p.date - 1 AS oi_coverage_changed,
           lk.oi_change_1d, lk.oi_change_7d, lk.oi_like_share_1d,
           mk.market_oi_usd, mk.market_oi_instruments,
           f.funding_rate_8h, f.funding_annualized, f.funding_rate_8h_max, f.funding_rate_8h_min,
           f.funding_instruments,
           l.ls_ratio, l.ls_ratio_top_accounts, l.ls_ratio_top_positions,
           l.ls_ratio_gate, l.ls_ratio_top_accounts_gate, l.ls_ratio_top_positions_gate,
           l.ls_instruments, l.ls_coverage_changed,
           lc.liquidation_covered_hours, lc.liquidation_coverage,
           CASE WHEN lc.liquidation_coverage >= {{liquidations.min_day_coverage}} THEN lc.liq_usd_est END
             AS liquidations_usd_est,
           CASE WHEN p.date >= ls0.first_date THEN coalesce(q.liquidations_long_usd, 0) END AS liquidations_long_usd,
           CASE WHEN p.date >= ls0.first_date THEN coalesce(q.liquidations_short_usd, 0) END AS liquidations_short_usd,
           b.basis_annualized, b.basis_days_to_expiry, pr.perp_premium,
           m.market_cap_usd, o.oi_usd / nullif(m.market_cap_usd, 0) AS oi_to_mcap,
           ma.milestone_usd AS oi_milestone_crossed,
           mm.milestone_usd AS market_oi_milestone_crossed,
           hc.cluster_above_price, hc.cluster_above_usd, hc.cluster_above_distance,
           hc.cluster_below_price, hc.cluster_below_usd, hc.cluster_below_distance
    FROM price p
    LEFT JOIN oi o USING (date, asset)
    LEFT JOIN oi_like lk ON lk.asset = p.asset AND lk.date = p.date
    LEFT JOIN market mk ON mk.date = p.date
    LEFT JOIN funding f USING (date, asset)
    LEFT JOIN ls l USING (date, asset)
    LEFT JOIN liq q USING (date, asset)
    LEFT JOIN liq_start ls0 ON ls0.asset = p.asset
    LEFT JOIN liq_cov lc ON lc.asset = p.asset AND lc.date = p.date
    LEFT JOIN basis b USING (date, asset)
    LEFT JOIN premium pr USING (date, asset)
    LEFT JOIN staging.market_caps m ON m.asset = p.asset AND m.date = p.date
    LEFT JOIN milestone ma ON ma.asset = p.asset AND ma.date = p.date
    LEFT JOIN milestone mm ON mm.asset = 'ALL' AND mm.date = p.date
    LEFT JOIN marts.daily_heatmap_clusters hc ON hc.asset = p.asset AND hc.date = p.date
    WINDOW w AS (PARTITION BY p.asset ORDER BY p.date)
),
{{^incremental}}
windows AS (       -- trailing windows end the day before: the day never sees itself
    SELECT j.*,
           liquidations_long_usd + liquidations_short_usd AS liquidations_usd,
           quantile_cont(funding_rate_8h, {{funding.extreme_percentile}}) OVER fw AS funding_pctl_high,
           quantile_cont(funding_rate_8h, 1 - {{funding.extreme_percentile}}) OVER fw AS funding_pctl_low,
           count(funding_rate_8h) OVER fw AS funding_history_days,
           avg(liquidations_usd_est) OVER zw AS liq_mean,
           stddev_samp(liquidations_usd_est) OVER zw AS liq_std,
           count(liquidations_usd_est) OVER zw AS liq_history_days,
           quantile_cont(oi_to_mcap, {{leverage.oi_to_mcap_percentile}}) OVER mw AS oi_to_mcap_pctl_threshold,
           count(oi_to_mcap) OVER mw AS oi_to_mcap_history_days
    FROM joined j
    WINDOW fw AS (PARTITION BY asset ORDER BY date
                  RANGE BETWEEN INTERVAL ({{funding.percentile_window_days}}) DAY PRECEDING AND INTERVAL 1 DAY PRECEDING),
           zw AS (PARTITION BY asset ORDER BY date
                  RANGE BETWEEN INTERVAL ({{liquidations.zscore_window_days}}) DAY PRECEDING AND INTERVAL 1 DAY PRECEDING),
           mw AS (PARTITION BY asset, oi_coverage_key ORDER BY date
                  RANGE BETWEEN INTERVAL ({{leverage.oi_to_mcap_window_days}}) DAY PRECEDING AND INTERVAL 1 DAY PRECEDING)
),
{{/incremental}}
{{#incremental}}
history AS (       -- the windows' day values: this mart's stored rows before the first rebuilt day, then the rebuilt days
    SELECT date, asset, oi_coverage_key, funding_rate_8h, liquidations_usd_est, oi_to_mcap FROM marts.daily_signals
    WHERE date < {{build.since}} AND date >= {{build.since}} - INTERVAL (greatest({{funding.percentile_window_days}},
          {{liquidations.zscore_window_days}}, {{leverage.oi_to_mcap_window_days}})) DAY
    UNION ALL
    SELECT date, asset, oi_coverage_key, funding_rate_8h, liquidations_usd_est, oi_to_mcap FROM joined
    WHERE date >= {{build.since}}
),
trailing_stats AS ( -- the full build's windows fw, zw and mw, as aggregates over the same days, rebuilt days only
    SELECT j.date, j.asset,
           quantile_cont(h.funding_rate_8h, {{funding.extreme_percentile}})
             FILTER (WHERE h.date >= j.date - INTERVAL ({{funding.percentile_window_days}}) DAY) AS funding_pctl_high,
           quantile_cont(h.funding_rate_8h, 1 - {{funding.extreme_percentile}})
             FILTER (WHERE h.date >= j.date - INTERVAL ({{funding.percentile_window_days}}) DAY) AS funding_pctl_low,
           count(h.funding_rate_8h)
             FILTER (WHERE h.date >= j.date - INTERVAL ({{funding.percentile_window_days}}) DAY) AS funding_history_days,
           avg(h.liquidations_usd_est)
             FILTER (WHERE h.date >= j.date - INTERVAL ({{liquidations.zscore_window_days}}) DAY) AS liq_mean,
           stddev_samp(h.liquidations_usd_est)
             FILTER (WHERE h.date >= j.date - INTERVAL ({{liquidations.zscore_window_days}}) DAY) AS liq_std,
           count(h.liquidations_usd_est)
             FILTER (WHERE h.date >= j.date - INTERVAL ({{liquidations.zscore_window_days}}) DAY) AS liq_history_days,
           quantile_cont(h.oi_to_mcap, {{leverage.oi_to_mcap_percentile}})
             FILTER (WHERE h.date >= j.date - INTERVAL ({{leverage.oi_to_mcap_window_days}}) DAY
                       AND h.oi_coverage_key IS NOT DISTINCT FROM j.oi_coverage_key) AS oi_to_mcap_pctl_threshold,
           count(h.oi_to_mcap)
             FILTER (WHERE h.date >= j.date - INTERVAL ({{leverage.oi_to_mcap_window_days}}) DAY
                       AND h.oi_coverage_key IS NOT DISTINCT FROM j.oi_coverage_key) AS oi_to_mcap_history_days
    FROM joined j
    LEFT JOIN history h ON h.asset = j.asset AND h.date < j.date
          AND h.date >= j.date - INTERVAL (greatest({{funding.percentile_window_days}}, {{liquidations.zscore_window_days}},
                                                    {{leverage.oi_to_mcap_window_days}})) DAY
    WHERE j.date >= {{build.since}}
    GROUP BY j.date, j.asset
),
windows AS (
    SELECT j.*, liquidations_long_usd + liquidations_short_usd AS liquidations_usd, t.* EXCLUDE (date, asset)
    FROM joined j JOIN trailing_stats t USING (date, asset)
),
{{/incremental}}
flags AS (
    SELECT w.*,
           CASE
             WHEN return_1d IS NULL OR oi_change_1d IS NULL THEN NULL
             WHEN abs(return_1d) < {{regime.min_price_move}} OR abs(oi_change_1d) < {{regime.min_oi_move}} THEN 'flat'
             WHEN oi_change_1d > 0 AND return_1d > 0 THEN 'rising_oi_rising_price'
             WHEN oi_change_1d < 0 AND return_1d < 0 THEN 'falling_oi_falling_price'
             WHEN oi_change_1d > 0 AND return_1d < 0 THEN 'rising_oi_falling_price'
             ELSE 'falling_oi_rising_price'
           END AS oi_price_regime,
           CASE WHEN funding_rate_8h_max > {{funding.extreme_rate_8h}} THEN 1
                WHEN funding_rate_8h_min < -{{funding.extreme_rate_8h}} THEN -1
                ELSE 0 END AS funding_abs_dir,
           CASE WHEN funding_history_days < {{funding.percentile_min_days}} THEN 0
                WHEN funding_rate_8h >= funding_pctl_high AND funding_rate_8h > {{funding.percentile_floor_8h}} THEN 1
                WHEN funding_rate_8h <= funding_pctl_low AND funding_rate_8h < 0 THEN -1
                ELSE 0 END AS funding_pctl_dir,
           CASE WHEN ls_ratio > {{long_short.extreme_ratio}} AND ls_ratio_gate > {{long_short.extreme_ratio}} THEN 1
                WHEN ls_ratio < {{long_short.extreme_ratio_low}} AND ls_ratio_gate < {{long_short.extreme_ratio_low}} THEN -1
                ELSE 0 END AS ls_extreme_direction,
           CASE WHEN liq_history_days >= {{liquidations.zscore_min_days}} AND liq_std > 0
                THEN (liquidations_usd_est - liq_mean) / liq_std END AS liquidation_zscore,
           CASE WHEN oi_to_mcap_history_days >= {{leverage.oi_to_mcap_min_days}}
                THEN oi_to_mcap_pctl_threshold END AS oi_to_mcap_threshold
    FROM windows w
),
scored AS (
    SELECT f.*,
           CASE WHEN funding_abs_dir <> 0 THEN funding_abs_dir ELSE funding_pctl_dir END AS funding_extreme_direction,
           coalesce(liquidation_zscore >= {{liquidations.surge_zscore}}, false) AS liquidation_surge,
           CASE WHEN liquidations_usd > 0 THEN
                CASE WHEN liquidations_long_usd >= liquidations_short_usd THEN 'long' ELSE 'short' END
           END AS liquidation_dominant_side,
           -- cascade-risk components, each clamped to [0, 1]; NULL when the input is missing
           -- (least/greatest skip NULLs, hence the explicit IS NULL checks)
           CASE WHEN funding_rate_8h IS NULL THEN NULL
                WHEN funding_abs_dir = 1 OR funding_pctl_dir = 1 THEN 1.0
                ELSE least(greatest(funding_rate_8h / least({{funding.extreme_rate_8h}},
                       CASE WHEN funding_history_days >= {{funding.percentile_min_days}}
                            THEN greatest(funding_pctl_high, {{funding.percentile_floor_8h}}) END), 0), 1)
           END AS cascade_funding_component,
           CASE WHEN ls_ratio IS NOT NULL
                THEN least(greatest((ls_ratio - 1) / ({{long_short.extreme_ratio}} - 1), 0), 1) END AS cascade_ls_component,
           CASE WHEN oi_change_7d IS NOT NULL
                THEN least(greatest(oi_change_7d / {{cascade.oi_build_7d}}, 0), 1) END AS cascade_oi_component,
           CASE WHEN basis_annualized IS NOT NULL
                THEN least(greatest(basis_annualized / {{basis.extreme_annualized}}, 0), 1) END AS cascade_basis_component
    FROM flags f
),
risk AS (
    SELECT s.*,
           (cascade_funding_component IS NOT NULL)::INT + (cascade_ls_component IS NOT NULL)::INT
             + (cascade_oi_component IS NOT NULL)::INT + (cascade_basis_component IS NOT NULL)::INT
             AS cascade_components,
           ( coalesce({{cascade.weight_funding}} * cascade_funding_component, 0)
           + coalesce({{cascade.weight_long_short}} * cascade_ls_component, 0)
           + coalesce({{cascade.weight_oi}} * cascade_oi_component, 0)
           + coalesce({{cascade.weight_basis}} * cascade_basis_component, 0) )
           / nullif( {{cascade.weight_funding}} * (cascade_funding_component IS NOT NULL)::INT
                   + {{cascade.weight_long_short}} * (cascade_ls_component IS NOT NULL)::INT
                   + {{cascade.weight_oi}} * (cascade_oi_component IS NOT NULL)::INT
                   + {{cascade.weight_basis}} * (cascade_basis_component IS NOT NULL)::INT, 0)
             AS cascade_share,
           funding_extreme_direction = 1 AND ls_extreme_direction = 1 AS overheating
    FROM scored s
),
final AS (
SELECT date, asset,
       -- complete: the close is the day's last hourly bar and the build ran at least
       -- [completeness] venue_lag_hours after the day ended; otherwise the row is provisional
       close_complete AND {{build.now_us}} >= ((date - DATE '1970-01-01') + 1) * 86400000000::BIGINT
                                              + {{completeness.venue_lag_hours}} * 3600000000 AS complete,
       close_usd, close_complete, return_1d, return_mixed_source,
       oi_usd, oi_venues, oi_instruments, oi_coverage_key, oi_coverage_changed, oi_like_share_1d,
       oi_change_1d, oi_change_7d, oi_price_regime,
       funding_rate_8h, funding_annualized, funding_rate_8h_max, funding_rate_8h_min, funding_instruments,
       funding_extreme_direction <> 0 AS funding_extreme,
       funding_extreme_direction,
       funding_abs_dir <> 0 AS funding_extreme_absolute,
       funding_pctl_dir <> 0 AS funding_extreme_percentile,
       funding_pctl_high AS funding_pctl_threshold, funding_pctl_low AS funding_pctl_threshold_low,
       funding_history_days,
       ls_ratio, ls_ratio_top_accounts, ls_ratio_top_positions,
       ls_extreme_direction <> 0 AS ls_extreme, ls_extreme_direction,
       coalesce(ls_ratio_top_accounts > {{long_short.top_accounts_extreme_ratio}}
                  AND ls_ratio_top_accounts_gate > {{long_short.top_accounts_extreme_ratio}}
                OR ls_ratio_top_accounts < {{long_short.top_accounts_extreme_ratio_low}}
                  AND ls_ratio_top_accounts_gate < {{long_short.top_accounts_extreme_ratio_low}}, false) AS ls_extreme_top_accounts,
       coalesce(ls_ratio_top_positions > {{long_short.top_positions_extreme_ratio}}
                  AND ls_ratio_top_positions_gate > {{long_short.top_positions_extreme_ratio}}
                OR ls_ratio_top_positions < {{long_short.top_positions_extreme_ratio_low}}
                  AND ls_ratio_top_positions_gate < {{long_short.top_positions_extreme_ratio_low}}, false) AS ls_extreme_top_positions,
       ls_instruments, ls_coverage_changed,
       liquidations_long_usd, liquidations_short_usd, liquidations_usd,
       liquidations_usd_est, liquidation_covered_hours, liquidation_coverage,
       liquidation_zscore, liquidation_surge, liquidation_dominant_side,
       basis_annualized, basis_days_to_expiry,
       coalesce(abs(basis_annualized) > {{basis.extreme_annualized}}, false) AS basis_extreme,
       perp_premium,
       market_cap_usd, oi_to_mcap, oi_to_mcap_threshold,
       coalesce(oi_to_mcap >= oi_to_mcap_threshold, false) AS oi_to_mcap_extreme,
       oi_milestone_crossed, market_oi_usd, market_oi_instruments, market_oi_milestone_crossed,
       cluster_above_price, cluster_above_usd, cluster_above_distance,
       cluster_below_price, cluster_below_usd, cluster_below_distance,
       cascade_funding_component, cascade_ls_component, cascade_oi_component, cascade_basis_component,
       cascade_components,
       CASE WHEN cascade_components >= {{cascade.min_components}} THEN round(100 * cascade_share, 2) END AS cascade_risk,
       overheating,
       CASE
         WHEN overheating THEN 'overheated'
         WHEN oi_price_regime = 'falling_oi_falling_price' AND liquidation_surge
              AND liquidation_dominant_side = 'long' THEN 'capitulation'
         WHEN oi_price_regime = 'falling_oi_rising_price' AND liquidation_surge
              AND liquidation_dominant_side = 'short' THEN 'short_squeeze'
         WHEN oi_price_regime = 'falling_oi_falling_price' THEN 'deleveraging'
         WHEN oi_price_regime = 'rising_oi_rising_price'
              AND funding_extreme_direction < 1 AND ls_extreme_direction < 1 THEN 'healthy_trend'
         WHEN oi_price_regime = 'rising_oi_rising_price' THEN 'crowded_trend'
         WHEN oi_price_regime = 'falling_oi_rising_price' THEN 'short_covering'
         WHEN oi_price_regime = 'rising_oi_falling_price' THEN 'shorts_building'
         ELSE 'neutral'
       END AS signal_state
FROM risk
)
-- Institutional and cross-market context (marts.daily_institutional, as of D; ETF flows BTC only)
SELECT f.*,
       di.etf_flow_usd, di.etf_flow_5d_avg_usd, di.etf_flow_20d_avg_usd, di.etf_flow_momentum_usd,
       di.etf_cumulative_flow_usd, di.etf_flow_streak_days,
       di.corr_spx_30d, di.corr_spx_90d, di.corr_ndx_30d, di.corr_ndx_90d,
       di.corr_gold_30d, di.corr_gold_90d, di.corr_dxy_30d, di.corr_dxy_90d, di.regime_spx_30d
FROM final f
LEFT JOIN marts.daily_institutional di USING (date, asset)
ORDER BY asset, date
