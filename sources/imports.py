"""Parsers for files loaded with `perpwatch import KIND FILE` (raw.payloads source "import").

The importer (perpwatch/ingest/importer.py) lands the file bytes as a raw payload with endpoint
`file:<kind>` and params {"path", "kind", "venue", "asset", "series", "tz_offset"}; everything
here is a pure function of (bytes, params, ParseContext), so `perpwatch replay` re-parses an
import exactly like the import did (this module is registered in sources.ALL_MODULES as "import",
not in PROVIDER_MODULES: `perpwatch run` never "fetches" it).

Accepted files, per kind (column names are case-insensitive):
- any kind: CSV, Parquet or a JSON list of records whose columns are the staging table's columns
  (warehouse/schema.sql). Columns left out that the pipeline derives are derived the same way as for
  fetched data: funding `interval_hours` from settlement spacing (fallback: the instrument's known
  interval, else 8) then `rate_8h`/`rate_annualized` (sources.normalize.funding_derived); `asset` from
  the instrument (perpwatch.core.assets.canonical); liquidation `usd` = price x qty; long/short `ratio`
  from the shares or the shares from the ratio; `oi_usd` is filled after the load from the perp close
  of that hour when prices are known (pipeline.enrich_open_interest_usd). Missing key columns come
  from --venue / --asset / --series.
- etf-flows: Farside HTML page, Farside cell strings as JSON/CSV (`Date` + one column per ticker,
  US$ millions, `(x)` negatives, `-`, thousands separators, summary/holiday/placeholder rows), the
  btabiado CSV (ISO dates, numeric US$ m, holidays as 0), the 0xLearn2Earn `Date,Total` CSV
  (`"20240111T"`, US$ m, stored under ticker TOTAL), a SoSoValue historicalInflowChart body (USD).
- macro: FRED CSV (`observation_date`/`DATE`, empty or `.` = missing), Stooq CSV (English or Polish
  headers), two-column `date,<name>` files (series = --series or the column name), `as_of,value,status`
  files (needs --series).
- prices: daily vendor files (`date,price[,volume]`, `as_of,value,status`, FRED `DATE,CBETHUSD`) become
  kind 'spot', interval '1d', venue --venue or 'import', instrument <ASSET>USD, open=high=low=close
  (close-only series; the prices suite requires OHLC), volume in USD.
- funding: `Symbol,Date,Funding Rate` exports (e.g. tests/fixtures/shared_data/binance_BTC-USDT.head30.csv;
  venue from --venue or the file name, `BTC-USDT` -> the venue's symbol `BTCUSDT`).
- treasuries / market-caps: CoinGecko JSON bodies (public_treasury; market_chart with --asset; /global).

Naive timestamps are UTC, except funding files in auto mode (tz_offset "auto", the default): if every
settlement sits at the same non-zero hour modulo 8 (or 4), the file was written in a local time zone and
is shifted back (the Binance/Bybit exports of docs/data.md sit at 03/11/19h = UTC+3). An explicit tz_offset
(hours, e.g. "3" or "-5") applies to every naive timestamp of any kind.

Row checks here (every "bad" problem names the row: the N-th data record, header excluded — line N+1
of a CSV): unparseable date/time or number, conflicting duplicate key within the file. The table's
expectation suite (expectations/<table>.json) is Great Expectations' job, not this module's: the
importer validates the parsed frame and quarantines exactly the rows GX rejects, with their row
numbers; on replay each row is its own validation group, so the same rows are dropped again.
Column types come from the ParseContext (`ctx.columns`, warehouse/schema.sql via the ingest layer):
this module reads neither the warehouse nor the ingest engine.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import PurePath

import polars as pl

from perpwatch.core import tables
from perpwatch.core.assets import canonical
from perpwatch.sources import coingecko, farside, fred, sosovalue, stooq
from perpwatch.sources.base import ParseContext, Parser
from perpwatch.sources.normalize import UTC_MS, funding_derived, interval_from_spacing

SOURCE = "import"
VENUE = "import"
KINDS = {
    "funding": "funding_rates", "open-interest": "open_interest", "long-short": "long_short_ratio",
    "liquidations": "liquidations", "prices": "prices", "instruments": "instruments",
    "etf-flows": "etf_flows", "macro": "macro_closes", "treasuries": "treasury_holdings",
    "market-caps": "market_caps",
}
ALIASES = {**{t: k for k, t in KINDS.items()}, **{t.replace("_", "-"): k for k, t in KINDS.items()},
           "open_interest": "open-interest", "long_short": "long-short", "etf": "etf-flows",
           "treasury": "treasuries", "mcap": "market-caps", "market_caps": "market-caps"}
INSTRUMENT_ENDPOINTS = ("file:instruments",)
UNSUPPORTED: dict[str, str] = {}
DATASETS = tuple(KINDS.values())
KNOWN_VENUES = ("binance", "binance_coinm", "bybit", "okx", "hyperliquid", "deribit")
MAX_NAMED = 1000     # problems listed per import (the count is always exact)


def kind_of(name: str) -> str:
    k = name.strip().lower()
    k = ALIASES.get(k, k)
    if k not in KINDS:
        raise ValueError(f"unknown import kind {name!r}; one of {', '.join(KINDS)}")
    return k


@dataclass
class ImportResult:
    table: str
    frame: pl.DataFrame                      # staging columns + `_row`
    problems: list[dict] = field(default_factory=list)   # {row, level: bad|skip, reason}
    fmt: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def bad(self) -> list[dict]:
        return [p for p in self.problems if p["level"] == "bad"]


def table_columns(ctx: ParseContext, table: str) -> dict[str, str]:
    """{column: DuckDB type} of staging.<table>, from the ParseContext (the ingest layer fills it
    from warehouse/schema.sql: perpwatch.warehouse.columns.staging_columns)."""
    try:
        return ctx.columns[table]
    except KeyError:
        raise ValueError(f"no column types for staging.{table} in the ParseContext (the caller fills "
                         f"ctx.columns with perpwatch.warehouse.columns.staging_columns())") from None


def keys(table: str) -> list[str]:
    return tables.key(table)


# --------------------------------------------------------------------------- reading files

def sniff(body: bytes) -> str:
    head = body[:4096].lstrip(b"\xef\xbb\xbf \r\n\t")
    if body[:4] == b"PAR1":
        return "parquet"
    if head[:1] in (b"[", b"{"):
        return "json"
    low = head[:2048].lower()
    if head[:1] == b"<" or b"<table" in low or b"<html" in low:
        return "html"
    return "csv"


def read_table(body: bytes, fmt: str) -> pl.DataFrame:
    """CSV (all columns as text) or Parquet (typed), with `_row` = 1-based data record number.
    Blank CSV lines keep their number but are dropped."""
    if fmt == "parquet":
        df = pl.read_parquet(io.BytesIO(body))
        return df.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64))
    text = body.decode("utf-8-sig", "replace")
    df = pl.read_csv(io.StringIO(text), infer_schema=False, truncate_ragged_lines=True)
    df = df.rename({c: c.strip().strip('"') for c in df.columns})
    df = df.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64))
    data_cols = [c for c in df.columns if c != "_row"]
    return df.filter(~pl.all_horizontal([pl.col(c).is_null() | (pl.col(c).str.strip_chars() == "")
                                         for c in data_cols]))


def records_table(records: list) -> pl.DataFrame:
    if not records or not all(isinstance(r, dict) for r in records):
        raise ValueError("JSON import: expected a non-empty list of objects")
    cols = list(dict.fromkeys(k for r in records for k in r))
    df = pl.DataFrame({c: [None if r.get(c) is None else str(r.get(c)) for r in records] for c in cols},
                      schema={c: pl.Utf8 for c in cols})
    return df.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64))


# --------------------------------------------------------------------------- converting columns

def _text(s: pl.Series) -> pl.Series:
    return s.cast(pl.Utf8).str.strip_chars()


def _blank(s: pl.Series) -> pl.Series:
    t = _text(s)
    return (t.is_null() | t.is_in(["", ".", "NA", "N/A", "NaN", "nan", "null", "None"])).fill_null(True)


def conv_float(s: pl.Series) -> pl.Series:
    """Numbers, or numeric text ('1,045.0' thousands separators allowed; blank/'.'/NA -> null)."""
    if s.dtype.is_numeric():
        return s.cast(pl.Float64)
    t = _text(s)
    t = pl.DataFrame({"t": t}).select(
        pl.when(pl.col("t").str.contains(r"^[+-]?\d{1,3}(,\d{3})+(\.\d*)?$"))
        .then(pl.col("t").str.replace_all(",", "")).otherwise(pl.col("t"))).to_series()
    return pl.DataFrame({"t": t, "b": _blank(s)}).select(
        pl.when(pl.col("b")).then(None).otherwise(pl.col("t").cast(pl.Float64, strict=False))).to_series()


def conv_time(s: pl.Series, offset_hours: float = 0.0) -> tuple[pl.Series, pl.Series]:
    """Any time column -> (UTC Datetime[ms], was_naive). Naive values are local time at `offset_hours`
    ahead of UTC. Accepts datetimes, dates, epoch s/ms integers and ISO-like strings."""
    if isinstance(s.dtype, pl.Datetime):
        aware = s.dtype.time_zone is not None
        v = s.dt.convert_time_zone("UTC") if aware else s.dt.replace_time_zone("UTC")
        v = v.dt.cast_time_unit("ms")
        if not aware and offset_hours:
            v = v - timedelta(hours=offset_hours)
        return v, pl.Series([not aware] * len(s), dtype=pl.Boolean)
    if s.dtype == pl.Date:
        v = s.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC")
        return (v - timedelta(hours=offset_hours) if offset_hours else v), pl.Series([True] * len(s))
    t = _text(s)
    if s.dtype.is_integer():
        t = s.cast(pl.Utf8)
    frame = pl.DataFrame({"t": t})
    # ISO 8601 / RFC 3339 as databases and spreadsheets write them: 'T' or ' ', 'Z'/'UTC', offsets
    # +HH:MM, +HHMM or +HH (DuckDB and PostgreSQL print TIMESTAMPTZ as '2020-01-01 00:00:00+00'),
    # fractional seconds of any length; the offset only after a time of day (never a date's '-01')
    norm = (pl.col("t").str.strip_chars().str.replace(r"^(\d{4}-\d{2}-\d{2})[Tt]", "$1 ")
            .str.replace(r"(?i)\s*(z|utc)$", "+00:00")
            .str.replace(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*([+-]\d{2})(\d{2})$", "$1$2:$3")
            .str.replace(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*([+-]\d{2})$", "$1$2:00"))
    aware_fmt = pl.coalesce([norm.str.strptime(pl.Datetime("ms", "UTC"), f, strict=False)
                             for f in ("%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M%:z")])
    naive = pl.coalesce([norm.str.strptime(pl.Datetime("ms"), f, strict=False)
                         for f in ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y%m%d", "%Y.%m.%d",
                                   "%d %b %Y", "%Y/%m/%d", "%Y%m%dT")])
    digits = pl.col("t").str.contains(r"^\d{9,13}$")
    epoch = pl.col("t").cast(pl.Int64, strict=False)
    epoch_ms = pl.when(digits & (pl.col("t").str.len_chars() <= 10)).then(epoch * 1000).when(digits).then(epoch)
    out = frame.select(
        pl.coalesce([aware_fmt, epoch_ms.cast(UTC_MS),
                     (naive - pl.duration(milliseconds=int(offset_hours * 3_600_000))).dt.replace_time_zone("UTC")])
        .alias("v"),
        (aware_fmt.is_null() & ~digits.fill_null(False)).alias("naive"))
    return out["v"], out["naive"]


def conv_date(s: pl.Series) -> pl.Series:
    if s.dtype == pl.Date:
        return s
    if isinstance(s.dtype, pl.Datetime):
        return (s.dt.convert_time_zone("UTC") if s.dtype.time_zone else s).dt.date()
    t = _text(s).str.strip_chars('"')
    fmts = ("%Y-%m-%d", "%Y%m%dT", "%Y%m%d", "%Y.%m.%d", "%d %b %Y", "%d %B %Y", "%Y/%m/%d", "%m/%d/%Y")
    d = pl.DataFrame({"t": t}).select(pl.coalesce([pl.col("t").str.strptime(pl.Date, f, strict=False)
                                                   for f in fmts])).to_series()
    # full timestamps in a date column: their UTC calendar date
    dt, _ = conv_time(t)
    return pl.DataFrame({"d": d, "dt": dt}).select(pl.coalesce([pl.col("d"), pl.col("dt").dt.date()])).to_series()


def convert(df: pl.DataFrame, types: dict[str, str], offset_hours: float) -> tuple[pl.DataFrame, list[dict]]:
    """Cast the file's staging columns to the table's types; name every cell that does not parse."""
    problems: list[dict] = []
    out = {"_row": df["_row"]}
    for col, ty in types.items():
        if col not in df.columns:
            continue
        s = df[col]
        blank = _blank(s) if not s.dtype.is_numeric() and not s.dtype.is_temporal() else s.is_null()
        if ty == "DATE":
            v = conv_date(s)
            what = "date"
        elif ty.startswith("TIMESTAMP"):
            v, _naive = conv_time(s, offset_hours)
            what = "date/time"
        elif ty in ("DOUBLE", "BIGINT", "INTEGER"):
            v = conv_float(s)
            what = "number"
        else:
            v = pl.DataFrame({"t": _text(s), "b": blank}).select(
                pl.when(pl.col("b")).then(None).otherwise(pl.col("t"))).to_series()
            what = None
        if what:
            bad = v.is_null() & ~blank
            for row, cell in zip(df["_row"].filter(bad).to_list(), s.filter(bad).to_list(), strict=True):
                problems.append({"row": row, "level": "bad", "reason": f"unparseable {what}: {cell!r} in {col}"})
        out[col] = v.alias(col)
    return pl.DataFrame(out), problems


# --------------------------------------------------------------------------- row checks

def duplicate_problems(df: pl.DataFrame, table: str) -> tuple[list[dict], list[int]]:
    """Key repeated inside the file: identical repeats keep the first row ('skip'); conflicting
    repeats are all 'bad' (the file does not say which one is right)."""
    key = keys(table)
    if df.height == 0 or any(k not in df.columns for k in key):
        return [], []
    content = [c for c in df.columns if c not in ("_row",)]
    g = (df.group_by(key).agg(pl.col("_row").alias("rows"), pl.struct(content).n_unique().alias("variants"))
         .filter(pl.col("rows").list.len() > 1))
    problems, drop = [], []
    for r in g.iter_rows(named=True):
        rows = sorted(r["rows"])
        label = ", ".join(f"{k}={r[k]}" for k in key)
        if r["variants"] == 1:
            for x in rows[1:]:
                problems.append({"row": x, "level": "skip", "reason": f"identical duplicate: ({label}) repeats row {rows[0]}"})
                drop.append(x)
        else:
            for x in rows:
                others = ", ".join(str(o) for o in rows if o != x)
                problems.append({"row": x, "level": "bad",
                                 "reason": f"duplicate key within the file: ({label}) with different values on row(s) {others}"})
    return problems, drop


# --------------------------------------------------------------------------- per-kind shaping

def _lower_cols(df: pl.DataFrame) -> pl.DataFrame:
    return df.rename({c: c.strip().lower().replace(" ", "_") for c in df.columns if c != "_row"})


def _stem(params: dict) -> str:
    return PurePath(str(params.get("path", "file"))).name.split(".")[0].lower()


def _infer_venue(params: dict) -> str | None:
    if params.get("venue"):
        return str(params["venue"]).lower()
    first = re.split(r"[_\-.]", _stem(params))[0]
    return first if first in KNOWN_VENUES else None


def _infer_asset(params: dict, hint: str | None = None) -> str | None:
    if params.get("asset"):
        return str(params["asset"]).upper()
    for token in [hint or "", *re.split(r"[_\-.]", _stem(params))]:
        t = token.upper()
        for a in ("BTC", "ETH", "SOL", "XRP", "BNB", "DOGE"):
            if t == a or (t.startswith("CB") and t.endswith(a + "USD")):
                return a
    return None


def venue_symbol(venue: str, symbol: str) -> str:
    """ccxt-like 'BTC-USDT' / 'BTC/USDT' -> the venue's own perp symbol."""
    s = symbol.strip().split(":")[0].replace("/", "-").upper()
    if "-" not in s:
        return s
    base, quote = s.split("-", 1)
    if venue in ("binance", "bybit"):
        return base + quote
    if venue == "okx":
        return f"{base}-{quote}-SWAP"
    if venue == "hyperliquid":
        return base
    if venue == "deribit":
        return f"{base}-PERPETUAL"
    return s


def _offset(params: dict) -> float | None:
    raw = params.get("tz_offset", "auto")
    if raw in (None, "", "auto"):
        return None
    try:
        return float(str(raw).replace("h", ""))
    except ValueError as exc:
        raise ValueError(f"tz_offset must be hours (e.g. 3, -5, 0) or 'auto', got {raw!r}") from exc


def detect_settlement_offset(times: pl.Series) -> float:
    """Hours a naive funding time series runs ahead of UTC, from its settlement hours.

    Settlements happen on the UTC 8h (or 4h) grid; if every row sits at the same non-zero hour
    modulo 8 (or 4), that hour is the offset (03/11/19h -> +3). Returns 0 when the hours are on the
    grid, mixed (1h funding), or the offset would be ambiguous."""
    hours = times.drop_nulls().dt.hour()
    if hours.len() < 2:
        return 0.0
    for m in (8, 4):
        res = (hours % m).unique()
        if res.len() == 1:
            c = int(res[0])
            if c == 0:
                return 0.0
            return float(c if c <= m // 2 else c - m)
    return 0.0


def shape_generic(df: pl.DataFrame, table: str, params: dict, ctx: ParseContext,
                  notes: list[str]) -> tuple[pl.DataFrame, list[dict]]:
    """A file with (some of) the staging table's columns -> full staging rows with derived columns."""
    df = _lower_cols(df)
    types = table_columns(ctx, table)
    offset = _offset(params)
    auto_funding = table == "funding_rates" and offset is None and "funding_time" in df.columns \
        and not df["funding_time"].dtype.is_integer()
    if auto_funding:
        probe, naive = conv_time(df["funding_time"], 0.0)
        if naive.all():
            offset = detect_settlement_offset(probe)
            if offset:
                notes.append(f"funding_time: naive times at {sorted(set(probe.drop_nulls().dt.hour().to_list()))}h "
                             f"-> local time UTC{offset:+g}, shifted to UTC (override with tz_offset)")
    frame, problems = convert(df, types, offset or 0.0)
    if not offset:   # values without a UTC offset are read as UTC: say so, per column
        for col, ty in types.items():
            if ty.startswith("TIMESTAMP") and col in df.columns and not df[col].dtype.is_integer() \
                    and not (isinstance(df[col].dtype, pl.Datetime) and df[col].dtype.time_zone):
                _v, naive = conv_time(df[col], 0.0)
                n = int((naive & _v.is_not_null()).sum())
                if n:
                    notes.append(f"{col}: {n} value(s) without a UTC offset read as UTC (tz_offset shifts them)")
    bad = {p["row"] for p in problems}
    frame = frame.filter(~pl.col("_row").is_in(sorted(bad)))
    lit = {"venue": _infer_venue(params) if not tables.table(table).provider else None,
           "asset": _infer_asset(params), "series": params.get("series")}
    for col, val in lit.items():
        if col in types and val:
            frame = frame.with_columns((pl.col(col).fill_null(val) if col in frame.columns else pl.lit(val)).alias(col))
    frame = derive(frame, table, ctx)
    return typed(frame, types), problems


def derive(df: pl.DataFrame, table: str, ctx: ParseContext) -> pl.DataFrame:
    """Columns the fetch parsers compute, computed the same way for imported rows."""
    def has(c):
        return c in df.columns

    if has("instrument") and has("venue") and (not has("asset") or df["asset"].null_count()):
        pairs = df.select("venue", "instrument").unique().drop_nulls()
        amap = {(v, i): canonical(v, i)[0] for v, i in pairs.iter_rows()}
        derived = [amap.get((v, i)) for v, i in df.select("venue", "instrument").iter_rows()]
        a = pl.Series("a", derived, dtype=pl.Utf8)
        df = df.with_columns((pl.col("asset").fill_null(a) if has("asset") else a).alias("asset"))
    if table == "funding_rates" and has("funding_time"):
        df = df.with_columns(pl.col("funding_time").dt.truncate("1h"))
        known = pl.Series([float(ctx.instrument(v, i).get("funding_interval_hours") or 8.0)
                           for v, i in df.select("venue", "instrument").iter_rows()], dtype=pl.Float64) \
            if has("venue") and has("instrument") else pl.Series([8.0] * df.height)
        df = df.with_columns(known.alias("_known"))
        if not has("interval_hours"):
            df = df.with_columns(pl.lit(None, pl.Float64).alias("interval_hours"))
        if df.height:
            grp = (pl.col("venue") + "|" + pl.col("instrument")) if has("venue") and has("instrument") else pl.lit("x")
            df = df.with_columns(grp.alias("_grp"))
            spacing = interval_from_spacing(df, "funding_time", "_grp", pl.col("_known"))
            df = df.with_columns(pl.col("interval_hours").fill_null(spacing)).drop("_grp")
        derived = funding_derived(pl.col("funding_rate"), pl.col("interval_hours"))
        df = df.with_columns([(pl.col(e.meta.output_name()).fill_null(e) if has(e.meta.output_name()) else e)
                              for e in derived]).drop("_known")
    if table == "liquidations" and has("price") and has("qty_base"):
        usd = pl.col("price") * pl.col("qty_base")
        df = df.with_columns((pl.col("usd").fill_null(usd) if has("usd") else usd).alias("usd"))
        if has("side"):
            df = df.with_columns(pl.col("side").str.to_lowercase())
    if table == "long_short_ratio":
        if has("long_share") and has("short_share"):
            r = pl.col("long_share") / pl.col("short_share")
            df = df.with_columns((pl.col("ratio").fill_null(r) if has("ratio") else r).alias("ratio"))
        elif has("ratio"):
            df = df.with_columns((pl.col("ratio") / (1 + pl.col("ratio"))).alias("long_share"),
                                 (1 / (1 + pl.col("ratio"))).alias("short_share"))
    if table == "open_interest" and has("venue") and has("instrument"):
        meta = [ctx.instrument(v, i) for v, i in df.select("venue", "instrument").iter_rows()]
        if not has("margin"):
            df = df.with_columns(pl.Series("margin", [m.get("margin") for m in meta], dtype=pl.Utf8))
        if has("oi_contracts") and (not has("oi_base") or df["oi_base"].null_count()):
            size = pl.Series([m.get("contract_size") if m.get("contract_unit", "base") == "base" else None
                              for m in meta], dtype=pl.Float64)
            base = pl.col("oi_contracts") * size
            df = df.with_columns((pl.col("oi_base").fill_null(base) if has("oi_base") else base).alias("oi_base"))
    if table == "instruments" and has("venue") and has("instrument"):
        mult = pl.Series([canonical(v, i)[1] for v, i in df.select("venue", "instrument").iter_rows()],
                         dtype=pl.Float64)
        df = df.with_columns((pl.col("multiplier").fill_null(mult) if has("multiplier") else mult).alias("multiplier"))
        if not has("as_of"):
            df = df.with_columns(pl.lit(ctx.fetched_at).cast(UTC_MS).alias("as_of"))
    if table == "prices" and has("ts"):
        if not has("kind"):
            df = df.with_columns(pl.lit("spot").alias("kind"))
        if not has("interval"):
            daily = df.height > 0 and bool((df["ts"].dt.truncate("1d") == df["ts"]).all())
            df = df.with_columns(pl.lit("1d" if daily else "1h").alias("interval"))
    if table == "treasury_holdings" and not has("as_of"):
        df = df.with_columns(pl.lit(ctx.fetched_at.astimezone(UTC).date(), pl.Date).alias("as_of"))
        if not has("available_at"):   # a snapshot dated by its import is known from the import on
            df = df.with_columns(pl.lit(ctx.fetched_at).cast(UTC_MS).alias("available_at"))
    if tables.table(table).provider and not has("source"):
        df = df.with_columns(pl.lit(SOURCE).alias("source"))
    if table == "etf_flows" and has("ticker"):
        df = df.with_columns(pl.col("ticker").str.to_uppercase())
        iss = pl.col("ticker").replace_strict(farside.ISSUERS, default=None, return_dtype=pl.Utf8)
        df = df.with_columns((pl.col("issuer").fill_null(iss) if has("issuer") else iss).alias("issuer"))
    return df


def _rename_first(df: pl.DataFrame, names: tuple[str, ...], to: str) -> pl.DataFrame:
    for c in df.columns:
        if c.lower() in names:
            return df.rename({c: to})
    return df


def _value_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in df.columns if c != "_row"]


def shape_prices_daily(df: pl.DataFrame, params: dict, notes: list[str]) -> pl.DataFrame:
    """date + one value column (+ volume): a close-only daily spot series."""
    cols = {c.lower(): c for c in _value_columns(df)}
    dcol = next(cols[c] for c in ("date", "as_of", "observation_date", "day", "time") if c in cols)
    vcol = next((cols[c] for c in ("close", "price", "value", "close_usd") if c in cols), None)
    if vcol is None:
        others = [c for c in _value_columns(df) if c not in (dcol,) and c.lower() not in ("volume", "status")]
        if len(others) != 1:
            raise ValueError(f"prices: cannot tell the close column among {others}")
        vcol = others[0]
    asset = _infer_asset(params, vcol)
    if not asset:
        raise ValueError("prices: pass --asset (the file has no instrument/asset column and its name does not say)")
    venue = str(params.get("venue") or "import").lower()
    notes.append(f"daily close-only series -> venue {venue!r}, instrument {asset}USD, kind spot, interval 1d, "
                 f"open=high=low=close")
    volcol = cols.get("volume") or cols.get("volume_usd")
    return df.select("_row", pl.col(dcol).alias("ts"), pl.col(vcol).alias("close"),
                     *([pl.col(volcol).alias("volume_usd")] if volcol else [])).with_columns(
        pl.lit(venue).alias("venue"), pl.lit(f"{asset}USD").alias("instrument"), pl.lit(asset).alias("asset"),
        pl.lit("spot").alias("kind"), pl.lit("1d").alias("interval"))


def _fill_ohlc(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns([pl.col(c).fill_null(pl.col("close")) for c in ("open", "high", "low")])


def parse_file(kind: str, body: bytes, params: dict, ctx: ParseContext) -> ImportResult:
    """Parse one imported file. Pure: the same bytes and params give the same result."""
    kind = kind_of(kind)
    table = KINDS[kind]
    fmt = sniff(body)
    notes: list[str] = []
    problems: list[dict] = []
    frame: pl.DataFrame | None = None
    cols_lower: set[str] = set()
    df: pl.DataFrame | None = None
    data = None
    if fmt == "json":
        data = json.loads(body.decode("utf-8-sig"))
    elif fmt in ("csv", "parquet"):
        df = read_table(body, fmt)
        cols_lower = {c.lower() for c in df.columns}
    staging_cols = set(table_columns(ctx, table))

    if kind == "etf-flows":
        if fmt == "html":
            frame, problems = farside.wide_records_to_frame(farside.html_records(body), source=SOURCE)
            fmt = "Farside HTML table (US$ m)"
        elif fmt == "json" and isinstance(data, dict):
            frame = sosovalue.parse_inflow_chart(data, {}, ctx)["etf_flows"]
            frame = frame.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64),
                                                                         pl.lit(SOURCE).alias("source"))
            fmt = "SoSoValue historicalInflowChart (USD, total)"
        else:
            if fmt == "json":
                df = records_table(data)
                cols_lower = {c.lower() for c in df.columns}
            if {"date", "ticker", "flow_usd"} <= cols_lower:
                frame, problems = shape_generic(df, table, params, ctx, notes)
                fmt = f"{fmt} with staging columns (USD)"
            else:
                frame, problems = farside.wide_records_to_frame(df, source=SOURCE)
                fmt = f"{fmt}, Farside layout (date + tickers/Total, US$ m)"
        frame = frame.with_columns(pl.col("ticker").str.to_uppercase())
        early = frame.filter(pl.col("date") < farside.LAUNCH)
        problems += [{"row": r, "level": "bad",
                      "reason": f"absurd date (before the US spot bitcoin ETFs launched on {farside.LAUNCH}): {d}"}
                     for r, d in early.select("_row", "date").unique().sort("_row").iter_rows()]
    elif kind == "macro":
        series = params.get("series")
        if fmt == "csv" and fred.is_fred_header(body.decode("utf-8-sig", "replace").lstrip().split("\n", 1)[0]) \
                and all(c == c.upper() for c in _value_columns(df)[1:]):
            frame, problems = fred.csv_frame(body, series=series)
            fmt = "FRED CSV"
        elif fmt == "csv" and ({"close", "zamkniecie"} & cols_lower) and ({"date", "data"} & cols_lower) \
                and ({"open", "otwarcie"} & cols_lower):
            if not series:
                raise ValueError("macro: a Stooq OHLC file needs --series (e.g. GOLD)")
            frame, problems = stooq.csv_frame(body, str(series).upper(), f"{SOURCE}:{_stem(params)}")
            fmt = "Stooq CSV"
        else:
            if fmt == "json":
                df = records_table(data if isinstance(data, list) else [])
                cols_lower = {c.lower() for c in df.columns}
            if {"date", "series", "close"} <= cols_lower:
                frame, problems = shape_generic(df, table, params, ctx, notes)
                fmt = f"{fmt} with staging columns"
            else:
                vals = [c for c in _value_columns(df) if c.lower() not in ("status",)]
                dcol = next((c for c in vals if c.lower() in ("date", "as_of", "observation_date", "day")), None)
                others = [c for c in vals if c != dcol]
                if dcol is None or len(others) != 1:
                    raise ValueError(f"macro: expected date + one value column (or date,series,close), got {vals}")
                name = others[0]
                code = str(series or ("" if name.lower() in ("value", "close", "price") else name)).upper()
                if not code:
                    raise ValueError(f"macro: column {name!r} does not name the series: pass --series")
                src = f"{SOURCE}:{_stem(params)}"
                g = df.select("_row", pl.col(dcol).alias("date"), pl.col(name).alias("close"))
                frame, problems = shape_generic(g.with_columns(pl.lit(code).alias("series"), pl.lit(src).alias("source")),
                                                table, params, ctx, notes)
                missing = frame.filter(pl.col("close").is_null()).height
                frame = frame.filter(pl.col("close").is_not_null())
                if missing:
                    problems.append({"row": None, "level": "skip", "reason": f"{missing} blank values skipped"})
                fmt = f"{fmt} date + {name!r} -> series {code}"
    elif kind == "prices" and fmt != "json" and not ({"ts", "open"} <= cols_lower or "instrument" in cols_lower):
        if fred.is_fred_header(",".join(_value_columns(df))) and len(_value_columns(df)) == 2:
            df = df.rename({_value_columns(df)[0]: "date"})
        frame, problems = shape_generic(shape_prices_daily(df, params, notes), table, params, ctx, notes)
        frame = _fill_ohlc(frame)
        dropped = frame.filter(pl.col("close").is_null()).height
        frame = frame.filter(pl.col("close").is_not_null())
        if dropped:
            problems.append({"row": None, "level": "skip", "reason": f"{dropped} blank closes skipped"})
        fmt = f"{fmt} daily close series"
    elif kind == "funding" and fmt == "csv" and {"symbol", "date", "funding rate"} <= cols_lower:
        venue = _infer_venue(params)
        if not venue:
            raise ValueError("funding: pass --venue (binance, bybit, ...): the file does not name it")
        src = {c.lower(): c for c in df.columns}
        syms = df[src["symbol"]].unique().drop_nulls().to_list()
        mapping = {s: venue_symbol(venue, s) for s in syms}
        g = df.select("_row", pl.col(src["symbol"]).replace_strict(mapping, default=None).alias("instrument"),
                      pl.col(src["date"]).alias("funding_time"), pl.col(src["funding rate"]).alias("funding_rate"))
        frame, problems = shape_generic(g.with_columns(pl.lit(venue).alias("venue")), table, params, ctx, notes)
        notes.append(f"symbols {mapping} on venue {venue}")
        fmt = "funding export (Symbol, Date, Funding Rate)"
    elif kind == "treasuries" and fmt == "json" and isinstance(data, dict):
        frame = coingecko.parse_treasury(data, {}, ctx)["treasury_holdings"]
        frame = frame.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64))
        notes.append(f"CoinGecko treasury body: as_of = import date {ctx.fetched_at.astimezone(UTC).date()} "
                     "(the body has no timestamp)")
        fmt = "CoinGecko public_treasury JSON"
    elif kind == "market-caps" and fmt == "json" and isinstance(data, dict):
        if "market_caps" in data:
            asset = _infer_asset(params)
            if not asset:
                raise ValueError("market-caps: a market_chart body needs --asset")
            frame = coingecko.chart_frame(data["market_caps"], asset, SOURCE)
            fmt = "CoinGecko market_chart JSON"
        else:
            frame = coingecko.parse_global(data, {}, ctx)["market_caps"]
            fmt = "CoinGecko /global JSON"
        frame = frame.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64))
    else:
        if fmt == "html":
            raise ValueError(f"{kind}: an HTML file is only understood for etf-flows (Farside)")
        if fmt == "json":
            df = records_table(data if isinstance(data, list) else [])
            cols_lower = {c.lower() for c in df.columns}
        known = cols_lower & staging_cols
        if not known:
            raise ValueError(f"{kind}: no column of staging.{table} in the file (columns "
                             f"{sorted(cols_lower - {'_row'})}); "
                             f"expected some of {sorted(staging_cols)}")
        if table == "prices" and "ts" not in cols_lower and "date" in cols_lower:
            df = df.rename({next(c for c in df.columns if c.lower() == "date"): "ts"})
        frame, problems = shape_generic(df, table, params, ctx, notes)
        if table == "prices":
            frame = _fill_ohlc(frame)
        fmt = f"{fmt} with staging columns"

    return finish(table, frame, problems, ctx, fmt, notes)


CASTS = {"VARCHAR": pl.Utf8, "DOUBLE": pl.Float64, "DATE": pl.Date, "BIGINT": pl.Int64,
         "TIMESTAMP WITH TIME ZONE": UTC_MS}


def typed(frame: pl.DataFrame, types: dict[str, str]) -> pl.DataFrame:
    """`_row` + every staging column of the table, in schema order, with the schema's types."""
    missing = [pl.lit(None).alias(c) for c in types if c not in frame.columns]
    if missing:
        frame = frame.with_columns(missing)
    return frame.select("_row", *[pl.col(c).cast(CASTS.get(t, pl.Utf8)) for c, t in types.items()])


def finish(table: str, frame: pl.DataFrame, problems: list[dict], ctx: ParseContext, fmt: str,
           notes: list[str]) -> ImportResult:
    """Drop rows that did not convert, then settle duplicate keys within the file. The table's
    expectation suite is not checked here: the importer validates the result with Great
    Expectations and quarantines the rows it rejects (perpwatch.ingest.importer)."""
    frame = typed(frame, table_columns(ctx, table))
    bad_rows = {p["row"] for p in problems if p["level"] == "bad" and p["row"] is not None}
    frame = frame.filter(~pl.col("_row").is_in(sorted(bad_rows)))
    dup, drop = duplicate_problems(frame, table)
    problems += dup
    bad_rows |= {p["row"] for p in dup if p["level"] == "bad"}
    frame = frame.filter(~pl.col("_row").is_in(sorted(bad_rows | set(drop))))
    problems.sort(key=lambda p: (p["row"] is None, p["row"] or 0))
    return ImportResult(table, frame.sort("_row"), problems, fmt, notes)


def _parser(kind: str) -> Parser:
    def parse(data: bytes, params: dict, ctx: ParseContext) -> dict[str, pl.DataFrame]:
        """The replay parser: each file row is its own validation group (`_instrument` "row N"), so
        Great Expectations quarantines exactly the rows it rejects, as the import did."""
        res = parse_file(kind, data, {**params, "kind": kind}, ctx)
        return {res.table: res.frame.with_columns(pl.format("row {}", pl.col("_row")).alias("_instrument"))
                .drop("_row")}
    return Parser(parse, raw_body=True)


PARSERS = {f"file:{k}": _parser(k) for k in KINDS}
