"""Batch parsing: one call per (source, endpoint) for all of a run's pages of that endpoint.

The high-volume endpoints (open interest, long/short ratios, funding, klines on every venue) are
parsed here in one pass: every page is JSON-decoded and its envelope checked (per page: a bad page
is reported in `BatchResult.errors` and quarantined alone, as before), then all pages' rows become
ONE polars frame built against the venue's asserted row shape (a fixed schema, no type inference
per page), and the per-page facts a parser needs (the symbol, the instrument's contract size, when
the page was fetched) ride along as columns joined on `_page`. Every frame a batch parser returns
carries `_page`, the index of the page in the list it was given, and keeps the pages' order and
each page's row order, so `pipeline.parse_all` can tag rows with their payload and the later
payload still wins on a repeated key.

Calling a `Parser` on one decoded page (tests, `PARSERS[endpoint](data, params, ctx)`) runs the
same batch function on a batch of one: there is no second, per-page implementation.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import polars as pl

PAGE = "_page"


@dataclass(frozen=True)
class Page:
    """One landed payload as a batch parser sees it: the body as landed, its request, when fetched."""

    body: bytes
    params: dict
    fetched_at: datetime


@dataclass
class BatchResult:
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)   # each with a `_page` column
    errors: dict[int, str] = field(default_factory=dict)             # page index -> why it was rejected

    def add(self, table: str, df: pl.DataFrame) -> None:
        if df.height:
            self.frames[table] = (pl.concat([self.frames[table], df], how="diagonal_relaxed")
                                  if table in self.frames else df)


BatchFn = Callable[[list[Page], Any], BatchResult]
_BAD = (ValueError, TypeError, KeyError, IndexError, AttributeError)


@dataclass
class Decoded:
    """All pages' rows, with which page each run of rows came from: Python rows (orjson) in `rows`,
    pages polars read straight from their bytes (decode(objects=...)) in `frames`."""

    rows: list = field(default_factory=list)
    pages: list[int] = field(default_factory=list)      # page index of each page that has rows, ascending
    counts: list[int] = field(default_factory=list)     # its number of rows
    meta: list = field(default_factory=list)            # what rows_of said about the page
    errors: dict[int, str] = field(default_factory=dict)
    frames: list[pl.DataFrame] = field(default_factory=list)    # polars-read pages (no `_page` yet)
    frame_pages: list[int] = field(default_factory=list)  # the page of each of `frames`
    row_pages: list[int] = field(default_factory=list)  # the pages (and counts) of `rows`
    row_counts: list[int] = field(default_factory=list)

    def page_col(self) -> pl.Series:
        return pl.Series(PAGE, np.repeat(np.asarray(self.row_pages, dtype=np.int64), self.row_counts))


def decode(pages: list[Page], rows_of: Callable[[Any, dict], tuple[list, Any]],
           objects: dict[str, pl.DataType] | None = None) -> Decoded:
    """orjson-decode each page and take its rows (rows_of checks the venue's envelope and raises
    ValueError for an error reply or a shape it does not know; a page with no rows is skipped).

    objects: for endpoints that answer with a bare JSON list of objects (rows_of takes any list as its
    rows, with no meta): a page whose body is a JSON array is read by polars' JSON reader straight into
    this schema (fields by name, extra fields ignored, a missing one null, numbers kept as their text
    where the schema says Utf8), with no Python object per row. Any other body (an error object) and
    any array polars will not read into the schema (malformed JSON, a row of another shape) takes the
    orjson path, where rows_of and `frame` reject it as before."""
    out = Decoded()
    read = _read_arrays(pages, objects) if objects is not None else {}
    for i, pg in enumerate(pages):
        if i in read:
            df = read[i]
            if df is not None:
                if df.height:
                    out.frames.append(df)
                    out.frame_pages.append(i)
                    out.pages.append(i)
                    out.counts.append(df.height)
                    out.meta.append(None)
                continue
        try:
            data = orjson.loads(pg.body)
        except orjson.JSONDecodeError as exc:
            out.errors[i] = f"response is not valid JSON ({exc}); {len(pg.body)} bytes"
            continue
        try:
            rows, meta = rows_of(data, pg.params)
        except _BAD as exc:
            out.errors[i] = str(exc) or type(exc).__name__
            continue
        if rows:
            out.rows.extend(rows)
            out.row_pages.append(i)
            out.row_counts.append(len(rows))
            out.pages.append(i)
            out.counts.append(len(rows))
            out.meta.append(meta)
    return out


_READERS = max(1, min(4, os.cpu_count() or 1))
_POOL: tuple[int, ThreadPoolExecutor] | None = None     # (the pid that made it: a forked child makes its own)


def _read_array(body: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
    try:
        return pl.read_json(io.BytesIO(body), schema=schema)
    except pl.exceptions.PolarsError:
        return None


def _read_arrays(pages: list[Page], schema: dict[str, pl.DataType]) -> dict[int, pl.DataFrame | None]:
    """polars' reading of every page whose body is a JSON array: page index -> its frame, or None where
    polars will not read it into the schema. A batch of many pages is read on a small thread pool (one
    thread per core, at most 4); the pages' order is kept."""
    idx = [i for i, pg in enumerate(pages) if pg.body.lstrip()[:1] == b"["]
    if len(idx) < 2 * _READERS or _READERS == 1:
        return {i: _read_array(pages[i].body, schema) for i in idx}
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(_READERS, thread_name_prefix="perpwatch-json"))
    chunk = -(-len(idx) // (4 * _READERS))
    read = _POOL[1].map(lambda part: [_read_array(pages[i].body, schema) for i in part],
                     [idx[k:k + chunk] for k in range(0, len(idx), chunk)])
    return dict(zip(idx, (df for part in read for df in part), strict=True))


def frame(dec: Decoded, schema: dict[str, pl.DataType], orient: str | None = None) -> pl.DataFrame:
    """The decoded rows as one frame of the asserted schema (dict rows: fields by name, extra fields
    ignored, a missing field is null; array rows: by position) plus `_page`, in page order. Numbers the
    venues send as strings are kept as strings (Utf8) and converted by the parsers' vectorised casts."""
    parts = []
    if dec.frames:
        read = pl.concat(dec.frames, how="vertical")
        counts = [f.height for f in dec.frames]
        parts.append(read.with_columns(pl.Series(PAGE, np.repeat(np.asarray(dec.frame_pages, dtype=np.int64), counts))))
    if dec.rows:
        parts.append(pl.DataFrame(dec.rows, schema=schema, orient=orient).with_columns(dec.page_col()))
    if not parts:
        return pl.DataFrame(schema={**schema, PAGE: pl.Int64})
    if len(parts) == 1:
        return parts[0]
    df = pl.concat(parts, how="vertical")
    return df if df[PAGE].is_sorted() else df.sort(PAGE, maintain_order=True)


def numbers(df: pl.DataFrame, cols: dict[str, pl.DataType]) -> pl.DataFrame:
    """Numeric text columns as numbers, exactly as normalize.num / ts_ms read them (surrounding whitespace
    allowed, anything else non-numeric raises): a strict cast first; only when it fails, strip (which copies
    every string) and cast again."""
    try:
        return df.with_columns(pl.col(c).cast(t) for c, t in cols.items())
    except pl.exceptions.PolarsError:
        return df.with_columns(pl.col(c).cast(pl.Utf8).str.strip_chars().cast(t) for c, t in cols.items())


def per_page(dec: Decoded, **cols: list) -> pl.DataFrame:
    """A frame of per-page constants (one row per page with rows), keyed by `_page`."""
    return pl.DataFrame({PAGE: pl.Series(dec.pages, dtype=pl.Int64), **cols}, strict=False)


def attach(df: pl.DataFrame, consts: pl.DataFrame) -> pl.DataFrame:
    """df with the per-page constants of its row's page (null where consts has no row for the page): a left join
    on `_page`. When consts covers every page of df once, in ascending page order (per_page, first_per_page), each
    row's constants are gathered by position instead of hashed through a join."""
    pages = consts[PAGE]
    if (df.height and pages.len() and not set(consts.columns) & set(df.columns) - {PAGE}
            and pages.is_sorted() and pages.n_unique() == pages.len()):
        pos = pages.search_sorted(df[PAGE], side="left")
        if (pos < pages.len()).all() and pages.gather(pos.clip(0, pages.len() - 1)).equals(df[PAGE], check_names=False):
            return df.with_columns(consts.drop(PAGE)[c].gather(pos) for c in consts.columns if c != PAGE)
    return df.join(consts, on=PAGE, how="left", maintain_order="left")


def reject(df: pl.DataFrame, errors: dict[int, str], bad: pl.Expr, message: Callable[[dict], str]) -> pl.DataFrame:
    """Pages with any row where `bad` holds are rejected whole (as the per-page parser raised for
    the page); message(first bad row) says why. Returns the rows of the other pages."""
    flagged = df.filter(bad)
    if flagged.height == 0:
        return df
    for r in flagged.unique(PAGE, keep="first", maintain_order=True).iter_rows(named=True):
        errors[r[PAGE]] = message(r)
    return df.filter(~pl.col(PAGE).is_in(list(errors)))


def require(df: pl.DataFrame, errors: dict[int, str], cols: list[str], what: str) -> pl.DataFrame:
    """A page none of whose rows has a required field is rejected (the field is missing from it)."""
    if df.height == 0 or all(df[c].null_count() == 0 for c in cols):   # no null anywhere: every page has them all
        return df
    present = df.group_by(PAGE, maintain_order=True).agg([pl.col(c).is_not_null().any().alias(c) for c in cols])
    miss = present.filter(~pl.all_horizontal(cols))
    if miss.height:
        for r in miss.iter_rows(named=True):
            errors[r[PAGE]] = f"{what}: missing field(s) {[c for c in cols if not r[c]]}"
        return df.filter(~pl.col(PAGE).is_in(miss[PAGE].to_list()))
    return df


def first_per_page(df: pl.DataFrame, col: str) -> pl.DataFrame:
    """The first row's value of `col` on each page, as a (`_page`, col) frame."""
    return df.group_by(PAGE, maintain_order=True).agg(pl.col(col).first())


class Frames(dict):
    """{table: frame} of one page; a table the page has no rows for reads as an empty frame."""

    def __missing__(self, table: str) -> pl.DataFrame:
        return pl.DataFrame()


def single(batch: BatchFn) -> Callable:
    """The batch parser applied to one already-decoded page: returns its frames (without `_page`)
    or raises ValueError with the reason the page was rejected."""
    def parse(data, params: dict, ctx) -> dict[str, pl.DataFrame]:
        res = batch([Page(orjson.dumps(data), params, ctx.fetched_at)], ctx)
        if res.errors:
            raise ValueError(res.errors[0])
        return Frames({t: df.drop(PAGE) for t, df in res.frames.items()})
    return parse


def isolate(batch: BatchFn, pages: list[Page], ctx) -> BatchResult:
    """Run a batch parser; if it fails as a whole (a shape the batch path does not assert, e.g. a
    field typed differently on one page), run it page by page so only the offending pages fail."""
    try:
        return batch(pages, ctx)
    except (*_BAD, pl.exceptions.PolarsError) as whole:
        if len(pages) == 1:
            return BatchResult(errors={0: str(whole) or type(whole).__name__})
        out = BatchResult()
        for i, pg in enumerate(pages):
            try:
                one = batch([pg], ctx)
            except (*_BAD, pl.exceptions.PolarsError) as exc:
                out.errors[i] = str(exc) or type(exc).__name__
                continue
            if one.errors:
                out.errors[i] = one.errors[0]
            for t, df in one.frames.items():
                out.add(t, df.with_columns(pl.lit(i, pl.Int64).alias(PAGE)))
        return out
