-- view
-- incremental: date
-- grain: date, venue, instrument
-- Carry screen for arbitrage: what holding each perp or dated future short earns per year
-- (marts.carry_daily: perps' daily mean annualised funding, dated futures' basis annualised to expiry).
-- Ranked per (date, asset) over every instrument of every venue: rank 1 = richest carry
-- (best to be short / receive; ties broken by venue, instrument), with the spread between the
-- best and the worst.
SELECT c.date, c.asset, c.venue, c.instrument, c.kind, c.margin,
       c.funding_rate_8h, c.funding_rate_8h_max, c.funding_rate_8h_min, c.funding_annualized,
       c.funding_settlements,
       c.basis_annualized, c.days_to_expiry, c.carry_annualized, c.oi_usd,
       rank() OVER a AS carry_rank,
       count(*) OVER a AS instruments_ranked,
       max(c.carry_annualized) OVER a AS best_carry_annualized,
       min(c.carry_annualized) OVER a AS worst_carry_annualized,
       max(c.carry_annualized) OVER a - min(c.carry_annualized) OVER a AS carry_spread,
       first_value(c.venue || ':' || c.instrument) OVER a AS best_instrument,
       last_value(c.venue || ':' || c.instrument) OVER a AS worst_instrument,
       max(c.funding_annualized) OVER a - min(c.funding_annualized) OVER a AS perp_funding_spread
FROM marts.carry_daily c
WINDOW a AS (PARTITION BY c.date, c.asset ORDER BY c.carry_annualized DESC, c.venue, c.instrument
             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
