-- view
-- grain: date, asset, benchmark
-- BI-friendly wide view of marts.cross_market_correlation: the 30- and 90-trading-day correlations
-- side by side with their regime labels. `regime` is the 30-day label (the current state);
-- labels: risk-on coupled (equity benchmark, corr > 0.5), coupled (other benchmark, > 0.5),
-- loosely coupled, decoupled (|corr| < 0.2), loosely inverse, inverse (< -0.3), insufficient data.
-- Thresholds: [cross_market] in perpwatch/core/signals.toml.
SELECT date, asset, benchmark,
       max(correlation) FILTER (WHERE window_days = 30) AS corr_30d,
       max(correlation) FILTER (WHERE window_days = 90) AS corr_90d,
       max(n_obs) FILTER (WHERE window_days = 30) AS n_obs_30d,
       max(n_obs) FILTER (WHERE window_days = 90) AS n_obs_90d,
       max(regime) FILTER (WHERE window_days = 30) AS regime_30d,
       max(regime) FILTER (WHERE window_days = 90) AS regime_90d,
       max(regime) FILTER (WHERE window_days = 30) AS regime
FROM marts.cross_market_correlation
GROUP BY date, asset, benchmark
