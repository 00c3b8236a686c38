"""Vectorised helpers shared by the venue parsers (polars expressions, no per-row Python)."""

from __future__ import annotations

import polars as pl

UTC_MS = pl.Datetime("ms", "UTC")
HOURS_PER_YEAR = 24 * 365


def ts_ms(col: str | pl.Expr) -> pl.Expr:
    """Epoch milliseconds given as int or numeric string -> UTC timestamp[ms]."""
    e = pl.col(col) if isinstance(col, str) else col
    return e.cast(pl.Utf8).str.strip_chars().cast(pl.Int64).cast(UTC_MS)


def num(col: str | pl.Expr) -> pl.Expr:
    """Numeric string or number -> Float64 (strict: a non-numeric string raises)."""
    e = pl.col(col) if isinstance(col, str) else col
    return e.cast(pl.Utf8).str.strip_chars().cast(pl.Float64)


def funding_derived(rate: pl.Expr, interval_hours: pl.Expr) -> list[pl.Expr]:
    """rate_8h = rate x 8 / interval; annualised = rate x 24 x 365 / interval."""
    return [
        (rate * 8.0 / interval_hours).alias("rate_8h"),
        (rate * HOURS_PER_YEAR / interval_hours).alias("rate_annualized"),
    ]


def interval_from_spacing(df: pl.DataFrame, time_col: str, group: str, fallback: pl.Expr,
                          allowed=(1.0, 2.0, 4.0, 6.0, 8.0)) -> pl.Expr:
    """Funding interval per row from the spacing of consecutive settlements of one instrument.

    The gap to the previous row decides. A gap that is not a real interval (a missing settlement)
    keeps the last real interval of the same instrument before it: what was in force then, known at
    that time, whereas `fallback` (the instrument's metadata) is its interval *now* and may have
    changed since (a venue moving a contract from 8 h to 4 h would halve every older rate_8h after a
    gap). Only without any earlier real gap in the batch (the first rows of a page) the gap to the
    next row decides, then `fallback`.
    """
    prev = (pl.col(time_col) - pl.col(time_col).shift(1).over(group, order_by=time_col)).dt.total_minutes() / 60.0
    nxt = (pl.col(time_col).shift(-1).over(group, order_by=time_col) - pl.col(time_col)).dt.total_minutes() / 60.0
    ok = list(allowed)
    real_prev = pl.when(prev.round(2).is_in(ok)).then(prev.round(2))
    last_real = real_prev.forward_fill().over(group, order_by=time_col)
    return pl.coalesce(last_real, pl.when(nxt.round(2).is_in(ok)).then(nxt.round(2)), fallback)


def empty(schema: dict) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)
