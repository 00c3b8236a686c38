"""`perpwatch report -o report.html`: one self-contained HTML page of the latest marts.

Inline CSS and JS, charts as base64 PNGs drawn with matplotlib (no pyplot state, Agg canvas),
no external URL anywhere, so the file can be mailed or opened offline. Sections: today's signals,
alerts, aggregated open interest vs price, funding by venue, long/short ratios, liquidations,
the liquidation heatmap, ETF flows, cross-market correlations and data freshness. A mart that
does not exist yet or is empty shows "no data yet" instead of failing.
"""

from __future__ import annotations

import base64
import html
import io
import os
import sys
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from perpwatch import warehouse
from perpwatch.core import settings
from perpwatch.serving.status import collect as collect_status
from perpwatch.serving.status import columns, open_readonly, table_exists

DAYS = 90                       # chart window
HEATMAP_DAYS = 7
MAX_ASSETS = 6
SIGNAL_FLAGS = ["funding_extreme", "ls_extreme", "liquidation_surge", "basis_extreme", "overheating"]
SIGNAL_VALUES = ["close_usd", "return_1d", "oi_usd", "oi_change_1d", "oi_price_regime", "funding_rate_8h",
                 "funding_annualized", "ls_ratio", "liquidation_zscore", "basis_annualized"]
VENUE_COLORS = {"binance": "#f0b90b", "bybit": "#f7a600", "okx": "#2f2f2f", "hyperliquid": "#50d2c1",
                "deribit": "#1464f4", "binance_coinm": "#a07a00"}
SECTIONS = [("signals", "Today's signals"), ("alerts", "Alerts"), ("oi", "Open interest vs price"),
            ("funding", "Funding by venue"), ("longshort", "Long/short ratio"), ("liquidations", "Liquidations"),
            ("heatmap", "Liquidation heatmap"), ("etf", "ETF flows"), ("correlations", "Cross-market correlations"),
            ("freshness", "Data freshness")]


def reports_dir() -> Path:
    """Where rendered images and reports go by default (PERPWATCH_REPORTS, else next to the exports)."""
    return settings.reports_dir()


# --------------------------------------------------------------------------- data

def _frame(con, sql: str, params: list | None = None) -> pl.DataFrame:
    return con.execute(sql, params or []).pl()


def assets(con) -> list[str]:
    if not table_exists(con, "marts.daily_signals"):
        return []
    have = [r[0] for r in con.execute("SELECT DISTINCT asset FROM marts.daily_signals WHERE asset IS NOT NULL"
                                      ).fetchall()]
    pref = settings.assets()
    return (sorted(have, key=lambda a: (pref.index(a) if a in pref else len(pref), a)))[:MAX_ASSETS]


# What `complete = false` on a marts.daily_signals / marts.alerts row means (docs/tables.md), as the report and
# `make demo` say it
NOT_COMPLETE = ("the day's last hourly close is not in yet (the day is in progress, ended less than [completeness] "
                "venue_lag_hours ago, or its price feed stopped early)")


def signals_today(con) -> tuple[date | None, list[dict]]:
    """The latest day of marts.daily_signals: per asset its state, the flags that fire and key values."""
    if not table_exists(con, "marts.daily_signals"):
        return None, []
    cols = set(columns(con, "marts.daily_signals"))
    day = con.execute("SELECT max(date) FROM marts.daily_signals").fetchone()[0]
    if day is None:
        return None, []
    flags = [f for f in SIGNAL_FLAGS if f in cols]
    values = [v for v in SIGNAL_VALUES if v in cols]
    want = (["asset"] + (["signal_state"] if "signal_state" in cols else []) + (["complete"] if "complete" in cols else [])
            + flags + values)
    df = _frame(con, f"SELECT {', '.join(want)} FROM marts.daily_signals WHERE date = ? ORDER BY asset", [day])
    out = []
    for r in df.iter_rows(named=True):
        firing = [f for f in flags if r.get(f)]
        state = r.get("signal_state")
        out.append({"date": day, "asset": r["asset"], "signal_state": state, "complete": r.get("complete"),
                    "firing": firing + ([state] if state and state != "neutral" else []),
                    **{v: r.get(v) for v in values}})
    return day, out


def alerts_today(con, day: date | None) -> list[dict] | None:
    """marts.alerts of the latest signal day (None when the mart does not exist yet)."""
    if not table_exists(con, "marts.alerts"):
        return None
    cols = columns(con, "marts.alerts")
    tcol = "date" if "date" in cols else ("ts" if "ts" in cols else None)   # date: the signal day
    if tcol is None:
        return None
    since = day or (datetime.now(UTC).date() - timedelta(days=1))
    df = _frame(con, f'SELECT * FROM marts.alerts WHERE CAST("{tcol}" AS DATE) >= ? ORDER BY "{tcol}" DESC LIMIT 200',
                [since])
    return df.to_dicts()


# --------------------------------------------------------------------------- charts

def _figure(n_rows: int, height: float = 2.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, max(height * n_rows, 2.8)), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str) -> str:
    return f'<img class="chart" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _usd_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _pos=None):
        for div, suf in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
            if abs(v) >= div:
                return f"${v / div:,.1f}{suf}"
        return f"${v:,.0f}"
    ax.yaxis.set_major_formatter(FuncFormatter(fmt))


def _dates(ax) -> None:
    import matplotlib.dates as mdates

    loc = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    ax.grid(alpha=0.25)


def chart_oi_price(con, names: list[str], since: date) -> str | None:
    if not names or not table_exists(con, "marts.daily_signals"):
        return None
    sig = _frame(con, "SELECT date, asset, close_usd, oi_usd FROM marts.daily_signals WHERE date >= ? ORDER BY date",
                 [since])
    by_venue = (_frame(con, "SELECT date, asset, venue, oi_usd FROM marts.open_interest_by_venue WHERE date >= ? "
                            "ORDER BY date", [since])
                if table_exists(con, "marts.open_interest_by_venue") else pl.DataFrame())
    if sig.filter(pl.col("oi_usd").is_not_null() | pl.col("close_usd").is_not_null()).height == 0:
        return None
    fig, axes = _figure(len(names))
    for ax, asset in zip(axes, names, strict=True):
        s = sig.filter(pl.col("asset") == asset)
        v = by_venue.filter(pl.col("asset") == asset) if by_venue.height else by_venue
        if v.height:
            wide = v.pivot(on="venue", index="date", values="oi_usd", aggregate_function="sum").sort("date").fill_null(0)
            venues = [c for c in wide.columns if c != "date"]
            ax.stackplot(wide["date"].to_list(), *[wide[c].to_numpy() for c in venues], labels=venues, alpha=0.8,
                         colors=[VENUE_COLORS.get(c, f"C{i}") for i, c in enumerate(venues)])
        elif s.height:
            ax.fill_between(s["date"].to_list(), s["oi_usd"].fill_null(0).to_numpy(), alpha=0.6, label="open interest")
        _usd_axis(ax)
        ax.set_ylabel(f"{asset} OI")
        ax2 = ax.twinx()
        ax2.plot(s["date"].to_list(), s["close_usd"].to_numpy(), color="#c0392b", lw=1.6, label="close")
        _usd_axis(ax2)
        ax2.set_ylabel("close")
        _dates(ax)
        ax.legend(loc="upper left", fontsize=8, ncols=4)
        ax.set_title(f"{asset}: open interest across venues (stacked) vs close", fontsize=10)
    return _png(fig)


def chart_funding(con, names: list[str], since: date) -> str | None:
    if not names or not table_exists(con, "staging.funding_rates"):
        return None
    df = _frame(con, """
        SELECT CAST(funding_time AS DATE) AS date, asset, venue, avg(rate_8h) AS rate_8h
        FROM staging.funding_rates WHERE funding_time >= ? AND rate_8h IS NOT NULL
        GROUP BY ALL ORDER BY date""", [datetime(since.year, since.month, since.day, tzinfo=UTC)])
    df = df.filter(pl.col("asset").is_in(names))
    if df.height == 0:
        return None
    shown = [a for a in names if a in set(df["asset"].to_list())]
    fig, axes = _figure(len(shown))
    for ax, asset in zip(axes, shown, strict=True):
        a = df.filter(pl.col("asset") == asset)
        for i, venue in enumerate(sorted(set(a["venue"].to_list()))):
            x = a.filter(pl.col("venue") == venue)
            ax.plot(x["date"].to_list(), (x["rate_8h"] * 100).to_numpy(), lw=1.4, label=venue,
                    color=VENUE_COLORS.get(venue, f"C{i}"))
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylabel("% per 8h")
        ax.set_title(f"{asset}: funding rate per 8h, daily mean by venue", fontsize=10)
        ax.legend(loc="upper left", fontsize=8, ncols=6)
        _dates(ax)
    return _png(fig)


def chart_long_short(con, names: list[str], since: date) -> str | None:
    if not names or not table_exists(con, "marts.daily_signals"):
        return None
    cols = [c for c in ("ls_ratio", "ls_ratio_top_accounts", "ls_ratio_top_positions")
            if c in columns(con, "marts.daily_signals")]
    if not cols:
        return None
    df = _frame(con, f"SELECT date, asset, {', '.join(cols)} FROM marts.daily_signals WHERE date >= ? ORDER BY date",
                [since])
    if df.select(pl.any_horizontal(pl.col(c).is_not_null() for c in cols).any()).item() is not True:
        return None
    fig, axes = _figure(len(names), 2.2)
    labels = {"ls_ratio": "accounts", "ls_ratio_top_accounts": "top accounts", "ls_ratio_top_positions": "top positions"}
    for ax, asset in zip(axes, names, strict=True):
        a = df.filter(pl.col("asset") == asset)
        for c in cols:
            ax.plot(a["date"].to_list(), a[c].to_numpy(), lw=1.4, label=labels[c])
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set_ylabel("long / short")
        ax.set_title(f"{asset}: long/short ratio", fontsize=10)
        ax.legend(loc="upper left", fontsize=8, ncols=3)
        _dates(ax)
    return _png(fig)


def chart_liquidations(con, names: list[str], since: date) -> str | None:
    if not names or not table_exists(con, "marts.daily_signals"):
        return None
    if not {"liquidations_long_usd", "liquidations_short_usd"} <= set(columns(con, "marts.daily_signals")):
        return None
    df = _frame(con, "SELECT date, asset, liquidations_long_usd AS l, liquidations_short_usd AS s "
                     "FROM marts.daily_signals WHERE date >= ? ORDER BY date", [since])
    if df.filter((pl.col("l").fill_null(0) + pl.col("s").fill_null(0)) > 0).height == 0:
        return None
    fig, axes = _figure(len(names), 2.2)
    for ax, asset in zip(axes, names, strict=True):
        a = df.filter(pl.col("asset") == asset)
        d = a["date"].to_list()
        ax.bar(d, a["l"].fill_null(0).to_numpy(), color="#c0392b", label="longs liquidated")
        ax.bar(d, -a["s"].fill_null(0).to_numpy(), color="#27ae60", label="shorts liquidated")
        _usd_axis(ax)
        ax.set_title(f"{asset}: liquidations per day (longs up, shorts down)", fontsize=10)
        ax.legend(loc="upper left", fontsize=8, ncols=2)
        _dates(ax)
    return _png(fig)


def chart_heatmaps(con, names: list[str]) -> list[tuple[str, str]]:
    """(asset, base64 PNG) for each asset with heatmap rows, drawn by perpwatch.serving.render."""
    if not names or not table_exists(con, "marts.liquidation_heatmap"):
        return []
    from perpwatch.serving.render import render

    have = {r[0] for r in con.execute("SELECT DISTINCT asset FROM marts.liquidation_heatmap").fetchall()}
    out = []
    with tempfile.TemporaryDirectory(prefix="perpwatch-report-") as tmp:
        for asset in [a for a in names if a in have]:
            path = render(con, asset, HEATMAP_DAYS, Path(tmp) / f"heatmap-{asset}.png")
            out.append((asset, base64.b64encode(path.read_bytes()).decode()))
    return out


def chart_etf(con, since: date) -> str | None:
    if not table_exists(con, "marts.etf_flows_daily"):
        return None
    cols = columns(con, "marts.etf_flows_daily")
    if "total_flow_usd" not in cols:
        return None
    cum = "cumulative_flow_usd" if "cumulative_flow_usd" in cols else "NULL"
    df = _frame(con, f"SELECT date, total_flow_usd AS f, {cum} AS c FROM marts.etf_flows_daily WHERE date >= ? "
                     "ORDER BY date", [since])
    if df.height == 0:
        return None
    fig, (ax,) = _figure(1, 3.2)
    d = df["date"].to_list()
    f = df["f"].fill_null(0).to_numpy()
    ax.bar(d, f, color=["#27ae60" if v >= 0 else "#c0392b" for v in f], label="net flow")
    _usd_axis(ax)
    ax.set_title("Spot bitcoin ETFs: daily net flow (bars) and cumulative (line)", fontsize=10)
    if df["c"].is_not_null().any():
        ax2 = ax.twinx()
        ax2.plot(d, df["c"].to_numpy(), color="#34495e", lw=1.6, label="cumulative")
        _usd_axis(ax2)
    _dates(ax)
    return _png(fig)


def chart_correlations(con, names: list[str], since: date) -> str | None:
    if not names or not table_exists(con, "marts.cross_market_correlation"):
        return None
    if not {"date", "asset", "benchmark", "correlation"} <= set(columns(con, "marts.cross_market_correlation")):
        return None
    df = _frame(con, "SELECT * FROM marts.cross_market_correlation WHERE date >= ? AND correlation IS NOT NULL "
                     "ORDER BY date", [since]).filter(pl.col("asset").is_in(names))
    if df.height == 0:
        return None
    if "window_days" in df.columns:   # one window per chart: the shortest (most responsive)
        df = df.filter(pl.col("window_days") == df["window_days"].min())
    shown = [a for a in names if a in set(df["asset"].to_list())]
    fig, axes = _figure(len(shown), 2.2)
    for ax, asset in zip(axes, shown, strict=True):
        a = df.filter(pl.col("asset") == asset)
        for bench in sorted(set(a["benchmark"].to_list())):
            x = a.filter(pl.col("benchmark") == bench)
            ax.plot(x["date"].to_list(), x["correlation"].to_numpy(), lw=1.4, label=bench)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylim(-1, 1)
        win = f", {int(df['window_days'][0])}-day window" if "window_days" in df.columns else ""
        ax.set_title(f"{asset}: correlation of daily returns{win}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8, ncols=6)
        _dates(ax)
    return _png(fig)


# --------------------------------------------------------------------------- html

CSS = """
body{font:14px/1.45 -apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f5f6f8;color:#1d232b}
header{background:#1d232b;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b9c2cc}nav{padding:8px 28px;background:#fff;border-bottom:1px solid #dde1e6}
nav a{margin-right:14px;color:#2c5aa0;text-decoration:none}main{padding:10px 28px 40px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:16px 0;padding:6px 18px 14px}
section h2{font-size:17px;margin:10px 0;cursor:pointer}section h2::before{content:"\\25BE  ";color:#8a96a3}
section.collapsed h2::before{content:"\\25B8  "}section.collapsed .body{display:none}
img.chart{max-width:100%;height:auto;display:block;margin:6px 0}
table{border-collapse:collapse;font-size:13px}th,td{padding:4px 10px;border-bottom:1px solid #e6e9ed;text-align:left}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.nodata{color:#7b8794;font-style:italic}.flag{display:inline-block;background:#fdecea;color:#b03a2e;border-radius:3px;
padding:0 6px;margin:1px 2px;font-size:12px}.ok{color:#1e8449}.stale{color:#b03a2e;font-weight:600}
footer{color:#7b8794;font-size:12px;padding:0 28px 24px}.scroll{overflow-x:auto}
"""

JS = """
document.querySelectorAll('section h2').forEach(function(h){
  h.addEventListener('click',function(){h.parentElement.classList.toggle('collapsed');});
});
"""


def _esc(v) -> str:
    return html.escape("" if v is None else str(v))


def _fmt(key: str, v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if key.endswith("_usd"):
            return f"${v:,.0f}"
        if key.startswith(("return", "oi_change", "funding", "basis")):
            return f"{v * 100:.3f}%" if key.startswith("funding_rate") else f"{v * 100:.2f}%"
        return f"{v:,.3f}"
    return str(v)


def _table(rows: list[dict], keys: list[str], headers: list[str] | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in (headers or keys))
    body = []
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cells.append(f'<td class="num">{_esc(_fmt(k, v))}</td>' if num else f"<td>{_esc(_fmt(k, v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _nodata(what: str) -> str:
    return f'<p class="nodata">no data yet — {_esc(what)}</p>'


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{_esc(title)}</h2><div class="body">{body}</div></section>'


def signals_html(day, rows: list[dict]) -> str:
    if not rows:
        return _nodata("marts.daily_signals is empty: run a backfill and `perpwatch build`")
    # the mart's own verdict (`complete`: the day's last bar is in and the venues' lag has passed); a warehouse built
    # before the column existed: the wall clock's UTC day
    known = [r["complete"] for r in rows if r.get("complete") is not None]
    in_progress = (not all(known)) if known else day == datetime.now(UTC).date()
    partial = f" — <b>provisional</b>: {NOT_COMPLETE}, so its states and flags can still change" if in_progress else ""
    keys = ["asset", "signal_state", "firing"] + [k for k in SIGNAL_VALUES if k in rows[0]]
    body = []
    for r in rows:
        firing = "".join(f'<span class="flag">{_esc(f)}</span>' for f in r["firing"]) or "none"
        cells = [f"<td><b>{_esc(r['asset'])}</b></td>", f"<td>{_esc(r['signal_state'])}</td>", f"<td>{firing}</td>"]
        for k in keys[3:]:
            v = r.get(k)
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cells.append(f'<td class="num">{_esc(_fmt(k, v))}</td>' if num else f"<td>{_esc(_fmt(k, v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    return (f"<p>UTC day <b>{_esc(day)}</b>{partial}. Thresholds: perpwatch/core/signals.toml.</p>"
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def alerts_html(alerts: list[dict] | None) -> str:
    if alerts is None:
        return _nodata("marts.alerts is not built in this warehouse")
    if not alerts:
        return '<p class="ok">No alerts for the latest day.</p>'
    keys = [k for k in ("ts", "date", "asset", "complete", "rule", "severity", "value", "threshold", "message")
            if k in alerts[0]]   # complete = false: a provisional alert (NOT_COMPLETE)
    return _table(alerts, keys)


def freshness_html(st: dict) -> str:
    rows = []
    for f in st["freshness"]:
        lag = timedelta(seconds=f["lag_s"]) if f["lag_s"] is not None else None
        cls = "stale" if f["stale"] else "ok"
        rows.append(f"<tr><td>{_esc(f['source'])}</td><td>{_esc(f['dataset'])}</td><td>{_esc(f['schedule'])}</td>"
                    f"<td>{_esc(f['newest'].strftime('%Y-%m-%d %H:%M') if f['newest'] else '-')}</td>"
                    f'<td class="num">{_esc(str(lag).split(".")[0] if lag else "-")}</td>'
                    f'<td class="{cls}">{"STALE" if f["stale"] else "ok"}</td></tr>')
    if not rows:
        return _nodata("nothing loaded yet")
    q = st["quarantine_open"]
    return ("<table><thead><tr><th>source</th><th>dataset</th><th>schedule</th><th>newest (UTC)</th><th>lag</th>"
            f"<th>status</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<p>{q} open quarantined batch{'es' if q != 1 else ''} (perpwatch status).</p>")


def build_html(con, where: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    names = assets(con)
    day, sig = signals_today(con)
    since = (day or now.date()) - timedelta(days=DAYS)
    body: dict[str, str] = {"signals": signals_html(day, sig), "alerts": alerts_html(alerts_today(con, day))}

    def chart(key, b64, alt, missing):
        body[key] = _img(b64, alt) if b64 else _nodata(missing)

    chart("oi", chart_oi_price(con, names, since), "open interest vs price", "no open interest or prices in the marts")
    chart("funding", chart_funding(con, names, since), "funding by venue", "no funding rates loaded")
    chart("longshort", chart_long_short(con, names, since), "long/short ratio", "no long/short ratios loaded")
    chart("liquidations", chart_liquidations(con, names, since), "liquidations",
          "no liquidations captured (perpwatch collect)")
    maps = chart_heatmaps(con, names)
    body["heatmap"] = ("".join(f"<h3>{_esc(a)}</h3>{_img(b, f'liquidation heatmap {a}')}" for a, b in maps)
                       if maps else _nodata("marts.liquidation_heatmap is empty"))
    chart("etf", chart_etf(con, since), "ETF flows", "marts.etf_flows_daily is empty or not built")
    chart("correlations", chart_correlations(con, names, since), "cross-market correlations",
          "marts.cross_market_correlation is empty or not built")
    body["freshness"] = freshness_html(collect_status(con, now))
    nav = "".join(f'<a href="#{k}">{_esc(t)}</a>' for k, t in SECTIONS)
    sections = "".join(_section(k, t, body[k]) for k, t in SECTIONS)
    through = f"data through {day}" if day else "no daily signals yet"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>perpwatch report {_esc(day or "")}'
            f'</title><meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f"<body><header><h1>perpwatch — derivatives market report</h1><p>{_esc(through)} · "
            f"{_esc(', '.join(names) or 'no assets')} · generated {now:%Y-%m-%d %H:%M} UTC from {_esc(where)}</p>"
            f"</header><nav>{nav}</nav><main>{sections}</main><footer>Charts cover the last {DAYS} days (heatmap "
            f"{HEATMAP_DAYS}). Click a section title to fold it.</footer><script>{JS}</script></body></html>")


def write(con, out: Path, where: str) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(build_html(con, where), encoding="utf-8")
    os.replace(tmp, out)
    return out


def main(args) -> int:
    try:
        con, path, snapshot = open_readonly(getattr(args, "db", None))
    except (FileNotFoundError, warehouse.WarehouseLocked) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    try:
        out = write(con, Path(args.output), f"{path}{' (serving snapshot)' if snapshot else ''}")
    finally:
        con.close()
    print(out)
    return 0
