"""The event study on real history: `python -m perpwatch.serving.history [--data-dir DIR] [--db PATH]`.

Loads the real-data slices in data/history/ (provenance: data/history/PROVENANCE.md) into a scratch
warehouse the way a user would (`perpwatch import funding|prices` for the funding and close files; the
BTC open-interest series, whose vendor and venue are unknown, straight into staging.open_interest as
one instrument of venue `import`), builds marts.daily_signals and marts.signal_performance with the
signal settings in force (perpwatch/core/signals.toml unless PERPWATCH_SIGNALS overlays it), and
prints the multiple-testing summary and the table that docs/signals.md ("What real history says")
quotes. tests/test_signal_performance.py runs it on the same files and requires the doc to hold
exactly what it printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from perpwatch import warehouse
from perpwatch.core import settings
from perpwatch.ingest import importer
from perpwatch.transforms import build_all

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "data" / "history"
# (import kind, file, options) in load order; the funding files' +3 h local timestamps are detected
# and removed by the importer (docs/data.md, funding caveat)
FILES = [
    ("funding", "binance_BTC-USDT.csv", {"venue": "binance"}),
    ("funding", "binance_ETH-USDT.csv", {"venue": "binance"}),
    ("prices", "btc_daily.2019-03-01_2024-12-31.csv", {"asset": "BTC"}),
    ("prices", "eth_daily_coinbase.2019-12-01_2024-01-31.csv", {"asset": "ETH"}),
]
OI_FILE = "btc_open_interest_daily.csv"
OI_VENUE, OI_INSTRUMENT = "import", "BTC-OI-SUBSET"
# the build's clock: long after the last day, so every day is complete
BUILD_NOW = datetime(2025, 6, 1, tzinfo=UTC)
BEGIN, END = "<!-- history:begin (python -m perpwatch.serving.history) -->", "<!-- history:end -->"


def load_open_interest(con, path: Path) -> int:
    """`Date` (YYYY.M.D, UTF-8 BOM) and `Data` (USD notional, a subset of venues): one snapshot per day
    at 00:00 UTC, so each value is the end-of-day OI of its date and nothing later."""
    df = pl.read_csv(path.read_bytes().removeprefix(b"\xef\xbb\xbf"), schema={"Date": pl.Utf8, "Data": pl.Float64})
    df = df.select(
        pl.lit(OI_VENUE).alias("venue"), pl.lit(OI_INSTRUMENT).alias("instrument"),
        pl.col("Date").str.to_date("%Y.%-m.%-d").cast(pl.Datetime("us", "UTC")).alias("ts"),
        pl.lit("BTC").alias("asset"), pl.lit("linear").alias("margin"), pl.col("Data").alias("oi_usd"))
    con.register("__oi", df.to_arrow())
    try:
        con.execute("INSERT INTO staging.open_interest BY NAME SELECT * FROM __oi")
    finally:
        con.unregister("__oi")
    return df.height


def run(data_dir: Path = DATA_DIR, db: Path | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Load the files into `db` (a fresh scratch file when None), build, return (signal_performance, lines
    describing what was loaded)."""
    data_dir = Path(data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(db) if db else Path(tmp) / "history.duckdb"
        loaded = []
        for kind, name, opts in FILES:
            rep = importer.import_file(kind, data_dir / name, db=path, **opts)
            if rep.status not in ("success", "warning") or rep.quarantined:
                raise RuntimeError(f"import {kind} {name}: {rep.status} {rep.errors} quarantined={rep.quarantined}")
            loaded.append(f"{name}: {rep.loaded} rows ({kind})")
        con = warehouse.connect(path)
        try:
            n = load_open_interest(con, data_dir / OI_FILE)
            loaded.append(f"{OI_FILE}: {n} rows (open interest, venue {OI_VENUE})")
            build_all(con, only=["marts.daily_signals", "marts.signal_performance"], now=BUILD_NOW)
            perf = con.sql("SELECT * FROM marts.signal_performance").pl()
        finally:
            con.close()
    return perf, loaded


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:+.2f}".replace("-", "−")


def _hit(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}"


def _t(v) -> str:
    return "–" if v is None else f"{v:.2f}".replace("-", "−")


def summary(perf: pl.DataFrame) -> list[str]:
    tested = perf.filter(pl.col("t_stat").is_not_null())
    n = tested.height
    if n == 0:
        return ["no row has a t-statistic"]
    n_tests = int(tested["n_tests"][0])
    signals_n, assets = tested["signal"].n_unique(), sorted(tested["asset"].unique().to_list())
    hs = sorted(tested["horizon_days"].unique().to_list())
    t_bonf = _bonferroni_t(n_tests)
    lines = [
        f"tests: {n_tests} (signal, asset, horizon) rows with a t-statistic: {signals_n} signals, assets "
        f"{', '.join(assets)}, horizons {', '.join(map(str, hs))} days; a signal counts only for the assets "
        "with its inputs",
        f"|t| >= 1.96: {tested.filter(pl.col('t_stat').abs() >= 1.96).height} rows "
        f"(expected by chance alone: {0.05 * n_tests:.1f})",
        f"|t| >= 3: {tested.filter(pl.col('t_stat').abs() >= 3).height} rows",
    ]
    top = tested.sort(pl.col("t_stat").abs(), "signal", "asset", "horizon_days", descending=[True, False, False, False]).row(0, named=True)
    lines.append(f"largest |t|: {_t(top['t_stat'])} ({top['signal']} {top['asset']} {top['horizon_days']}d)")
    surv = tested.filter(pl.col("significant_bonferroni")).sort("signal", "asset", "horizon_days")
    names = ", ".join(f"{r['signal']} {r['asset']} {r['horizon_days']}d (t {_t(r['t_stat'])})"
                      for r in surv.iter_rows(named=True))
    lines.append(f"Bonferroni (p < 0.05 / {n_tests}, |t| >= {t_bonf:.2f}): {surv.height} rows"
                 + (f": {names}" if names else ""))
    return lines


def _bonferroni_t(n_tests: int) -> float:
    """The |t| at which the two-sided normal p equals 0.05 / n_tests (bisection on erfc)."""
    import math
    lo, hi, target = 0.0, 10.0, 0.05 / max(n_tests, 1)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erfc(mid / math.sqrt(2)) > target else (lo, mid)
    return hi


def table(perf: pl.DataFrame) -> list[str]:
    """One markdown row per (signal, asset) that fired, the horizons side by side."""
    hs = sorted(perf["horizon_days"].unique().to_list())
    head = ("| signal | asset | h | n (episodes) | mean | baseline | hit | base hit | t | Bonferroni |",
            "|---|---|---|---|---|---|---|---|---|---|")
    out = list(head)
    fired = perf.filter(pl.col("n_events") > 0)
    for (sig, asset), g in fired.sort("signal", "asset", "horizon_days").group_by(["signal", "asset"],
                                                                                  maintain_order=True):
        rows = {r["horizon_days"]: r for r in g.iter_rows(named=True)}
        first = rows[min(rows)]

        def col(f, key, rows=rows):
            return " / ".join(f(rows[h][key]) if h in rows else "–" for h in hs)

        out.append(
            f"| `{sig}` | {asset} | {' / '.join(map(str, hs))} | {first['n_events']} ({first['n_episodes']}) "
            f"| {col(_pct, 'mean_forward_return')} | {col(_pct, 'baseline_mean_return')} "
            f"| {col(_hit, 'hit_rate')} | {col(_hit, 'baseline_hit_rate')} | {col(_t, 't_stat')} "
            f"| {'yes' if g['significant_bonferroni'].any() else 'no'} |")
    never = sorted(set(perf.filter(pl.col("baseline_n") > 0)["signal"]) - set(fired["signal"]))
    out.append("")
    out.append("Evaluable but never fired: " + (", ".join(f"`{s}`" for s in never) or "none") + ".")
    return out


def report(perf: pl.DataFrame, loaded: list[str]) -> str:
    overlay = settings.get().signals
    lines = [BEGIN, "", "Loaded: " + "; ".join(loaded) + ".",
             "Settings: " + (f"PERPWATCH_SIGNALS={overlay} over the defaults" if overlay
                             else "perpwatch/core/signals.toml defaults") + ".", ""]
    lines += [f"- {s}" for s in summary(perf)]
    lines += ["", "Returns and hit rates in %; n and episodes at the shortest horizon.", ""]
    lines += table(perf)
    lines += ["", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perpwatch.serving.history", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with the files (default data/history)")
    p.add_argument("--db", type=Path, help="keep the scratch warehouse here (default: a temporary file)")
    args = p.parse_args(argv)
    perf, loaded = run(args.data_dir, args.db)
    sys.stdout.write(report(perf, loaded))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
