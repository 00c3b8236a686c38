"""`perpwatch status` and `perpwatch report` on a small warehouse built from the simulator
(binance, BTC, 2026-11-10 .. 2026-11-20), plus the terminal progress helpers."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from perpwatch import jobs, warehouse
from perpwatch.core import progress
from perpwatch.serving import report, status

NOW = datetime(2026, 11, 20, tzinfo=UTC)
TITLES = ["Today's signals", "Alerts", "Open interest vs price", "Funding by venue", "Long/short ratio",
          "Liquidations", "Liquidation heatmap", "ETF flows", "Cross-market correlations", "Data freshness"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from perpwatch.simulator.server import start

    sim = start(port=0, seed=7, now=NOW)
    old = {k: os.environ.get(k) for k in sim.env()}
    os.environ.update(sim.env())
    db = tmp_path_factory.mktemp("wh") / "perpwatch.duckdb"
    try:
        rep = jobs.run(kind="backfill", start=NOW - timedelta(days=10), end=NOW, venues=["binance"],
                           assets=["BTC"], db=db, build=True, publish=False)
        assert rep.status == "success", rep.errors + rep.warnings
    finally:
        sim.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return db


@pytest.fixture
def wh(built, tmp_path) -> Path:
    """A private copy of the built warehouse, with a failed run and two quarantined batches (one resolved)."""
    db = tmp_path / "perpwatch.duckdb"
    shutil.copy(built, db)
    con = warehouse.connect(db)
    try:
        warehouse.start_run(con, "run-test-failed", "run")       # the newest run
        warehouse.finish_run(con, "run-test-failed", "failed", 10, 7, 3, 0, "extract failed: bybit 503")
        con.execute("UPDATE meta.runs SET finished_at = started_at + INTERVAL 42 SECOND "
                    "WHERE run_id = 'run-test-failed'")
        for batch, resolved in (("b-open", None), ("b-done", "2026-11-20 01:30:00+00")):
            warehouse.quarantine(con, batch_id=batch, run_id="run-test-failed", source="bybit", dataset="funding_rates",
                                 endpoint="/v5/market/funding/history", instrument="BTCUSDT", raw_ids=[1],
                                 failed=[{"expectation": "expect_column_values_to_not_be_null"}], rows=3,
                                 sample=[], message=f"bybit BTCUSDT funding_rates: failed validation ({batch})")
            if resolved:
                con.execute("UPDATE quarantine.batches SET resolved_at = ?::TIMESTAMPTZ WHERE batch_id = ?",
                            [resolved, batch])
    finally:
        con.close()
    return db


# --------------------------------------------------------------------------- status

def fresh_by(st: dict) -> dict[str, dict]:
    return {f"{f['source']}:{f['dataset']}": f for f in st["freshness"]}


def test_status_freshness_against_the_schedule(wh):
    con = warehouse.connect(wh, read_only=True)
    try:
        early = status.collect(con, NOW + timedelta(hours=2))
        late = status.collect(con, NOW + timedelta(hours=4))
        counts = {t: con.execute(f"SELECT count(*) FROM staging.{t}").fetchone()[0] for t in status.STAGING}
    finally:
        con.close()
    f = fresh_by(early)
    # newest loaded: OI snapshot of 2026-11-20 00:00, last closed 1h bar 2026-11-19 23:00, funding 16:00
    assert f["binance:open_interest"]["newest"] == NOW
    assert f["binance:prices/perp"]["newest"] == NOW - timedelta(hours=1)
    assert f["binance:funding_rates"]["newest"] == NOW - timedelta(hours=8)
    assert f["binance:open_interest"]["lag_s"] == 2 * 3600
    assert f["binance:prices/perp"]["lag_s"] == 3 * 3600 and f["binance:prices/perp"]["max_lag_s"] == 3 * 3600
    assert f["binance:funding_rates"]["lag_s"] == 10 * 3600 and f["binance:funding_rates"]["max_lag_s"] == 11 * 3600
    assert early["stale"] == 0 and not any(x["stale"] for x in early["freshness"])
    assert f["binance:prices/future"]["instruments"] == 2        # the two quarterlies
    g = fresh_by(late)
    assert g["binance:open_interest"]["stale"] and g["binance:prices/perp"]["stale"]
    assert g["binance:funding_rates"]["stale"]                   # 12 h old, paid every 8 h: 11 h allowed
    assert late["stale"] == len(late["freshness"]) == 10
    rows = {t["table"]: t["rows"] for t in early["tables"]}
    assert rows == {f"staging.{t}": n for t, n in counts.items()}
    assert rows["staging.open_interest"] == 241                  # hourly 2026-11-10 00:00 .. 2026-11-20 00:00
    assert rows["staging.funding_rates"] == 30                   # 3 a day for 10 days
    assert rows["staging.long_short_ratio"] == 3 * 241
    assert early["runs"][0]["run_id"] == "run-test-failed" and early["runs"][0]["status"] == "failed"
    assert early["runs"][0]["seconds"] == 42
    assert early["quarantine_open"] == 1
    assert [q["batch_id"] for q in early["quarantine"]] == ["b-open"]
    assert not early["ok"]


def run_main(module, **kw) -> tuple[int, str]:
    buf = io.StringIO()
    old, sys.stdout = sys.stdout, buf
    try:
        code = module.main(argparse.Namespace(**kw))
    finally:
        sys.stdout = old
    return code, buf.getvalue()


def test_status_text_is_aligned_and_json_parses(wh):
    code, text = run_main(status, db=str(wh), json=False, now=NOW + timedelta(hours=4))
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == f"perpwatch status — {wh} — 2026-11-20 04:00 UTC"
    i = lines.index("Staging tables")
    header, rule = lines[i + 1], lines[i + 2]
    assert header.split() == ["table", "rows", "newest", "(UTC)", "venues/sources"]
    # right-aligned 'rows' column: every row ends its count where the header's 'rows' ends
    end = header.index("rows") + len("rows")
    body = lines[i + 3:i + 3 + len(status.STAGING)]
    assert all(ln[end - 1] != " " and ln[end] == " " for ln in body)
    assert set(rule.replace(" ", "")) == {"-"}
    oi = next(ln for ln in lines if ln.startswith("binance  open_interest"))
    assert re.search(r"2026-11-20 00:00\s+4h00m\s+3h00m\s+STALE$", oi), oi
    assert "Open quarantined batches: 1" in text
    assert "bybit BTCUSDT funding_rates: failed validation (b-open)" in text
    assert "b-done" not in text
    code, out = run_main(status, db=str(wh), json=True, now=NOW + timedelta(hours=4))
    data = json.loads(out)
    assert data["warehouse"] == str(wh) and data["snapshot"] is False
    assert data["quarantine_open"] == 1 and data["ok"] is False
    assert {"freshness", "tables", "runs", "quarantine", "stale", "now"} <= set(data)
    assert data["runs"][0]["run_id"] == "run-test-failed" and data["runs"][0]["seconds"] == 42
    assert datetime.fromisoformat(data["runs"][1]["started_at"]).tzinfo is not None


def test_status_falls_back_to_the_serving_snapshot_when_locked(wh, tmp_path, monkeypatch):
    serving = tmp_path / "serving.duckdb"
    monkeypatch.setenv("PERPWATCH_SERVING_DB", str(serving))
    warehouse.publish(db=wh, serving=serving, exports=tmp_path / "exports")
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('locked', flush=True); time.sleep(60)", str(wh)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, out = run_main(status, db=str(wh), json=True, now=NOW)
    finally:
        holder.kill()
        holder.wait()
    data = json.loads(out)
    assert code == 0 and data["snapshot"] is True and data["warehouse"] == str(serving)
    assert data["quarantine_open"] == 1          # the snapshot carries meta and quarantine too


def test_status_without_a_warehouse(tmp_path, capsys):
    code = status.main(argparse.Namespace(db=str(tmp_path / "missing.duckdb"), json=False))
    assert code == 1
    assert "no warehouse at" in capsys.readouterr().err
    assert not (tmp_path / "missing.duckdb").exists()


# --------------------------------------------------------------------------- report

def test_report_is_self_contained_with_every_section(wh, tmp_path):
    out = tmp_path / "report.html"
    code, printed = run_main(report, db=str(wh), output=str(out))
    assert code == 0 and printed.strip() == str(out)
    page = out.read_text()
    for title in TITLES:
        assert f"<h2>{title.replace(chr(39), '&#x27;')}</h2>" in page, title
    assert not re.search(r"https?://", page)                 # no external URL at all
    assert "<link" not in page and 'src="http' not in page
    # charts: OI vs price, funding, long/short and the BTC heatmap; binance-only data has no
    # liquidations, ETF flows or correlations yet
    assert page.count('src="data:image/png;base64,') == 4
    for section in ("liquidations", "etf", "correlations"):
        body = page.split(f'<section id="{section}">')[1].split("</section>")[0]
        assert "no data yet" in body, section
    con = warehouse.connect(wh, read_only=True)
    try:
        day, state = con.execute("SELECT date, signal_state FROM marts.daily_signals "
                                 "WHERE date = (SELECT max(date) FROM marts.daily_signals)").fetchone()
        alerts = con.execute("SELECT message FROM marts.alerts WHERE date = ?", [day]).fetchall() \
            if status.table_exists(con, "marts.alerts") else None
    finally:
        con.close()
    signals = page.split('<section id="signals">')[1].split("</section>")[0]
    assert f"UTC day <b>{day}</b>" in signals and f"<td>{state}</td>" in signals
    alert_html = page.split('<section id="alerts">')[1].split("</section>")[0]
    if alerts:
        for (msg,) in alerts:
            assert report.html.escape(msg) in alert_html
    else:
        assert "No alerts" in alert_html or "no data yet" in alert_html


def test_report_on_an_empty_warehouse_says_no_data_yet(tmp_path):
    db = tmp_path / "empty.duckdb"
    warehouse.connect(db).close()                 # schema only: no marts at all
    out = tmp_path / "r.html"
    code, _ = run_main(report, db=str(db), output=str(out))
    page = out.read_text()
    assert code == 0
    assert page.count("no data yet") == 10        # every section
    assert "nothing loaded yet" in page and "base64" not in page


def _png_stats(path: Path) -> tuple[float, float]:
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(path)[..., :3]
    nonwhite = float((img.min(axis=2) < 0.9).mean())
    return float(np.var(img)), nonwhite


@pytest.mark.slow
def test_report_renders_in_headless_chromium(wh, tmp_path):
    if shutil.which("chromium") is None:     # a system package: `make system-deps` (part of `make test`)
        pytest.skip("chromium is not installed: run `make system-deps`")
    out = tmp_path / "report.html"
    assert run_main(report, db=str(wh), output=str(out))[0] == 0
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chr'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1400,3000", out.as_uri()], check=True,
                   capture_output=True, timeout=120)
    var, nonwhite = _png_stats(shot)
    assert var > 0.01 and nonwhite > 0.15, (var, nonwhite)     # charts and the heatmap, not a blank page
    dom = subprocess.run(base + ["--dump-dom", out.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    for title in TITLES:
        assert f"<h2>{title}</h2>" in dom.replace("&#x27;", "'").replace("&#39;", "'"), title
    assert dom.count("<img ") == 4 and "perpwatch — derivatives market report" in dom


# --------------------------------------------------------------------------- progress

def test_progress_is_quiet_off_a_terminal_and_under_a_worker(monkeypatch):
    monkeypatch.delenv("PERPWATCH_PROGRESS", raising=False)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress.enabled(io.StringIO()) is False
    assert progress.enabled(Tty()) is True
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "0b2f")
    assert progress.enabled(Tty()) is False
    monkeypatch.setenv("PERPWATCH_PROGRESS", "1")
    assert progress.enabled(io.StringIO()) is True
    monkeypatch.setenv("PERPWATCH_PROGRESS", "0")
    assert progress.enabled(Tty()) is False


def test_progress_bar_counts_and_draws_on_a_terminal(monkeypatch):
    monkeypatch.setenv("PERPWATCH_PROGRESS", "1")
    tty = io.StringIO()
    with progress.bar(3, "backfill", unit="chunk", stream=tty) as b:
        for i in range(3):
            b.advance(1, f"chunk {i}")
    assert b.done == 3 and b.last_note == "chunk 2"
    assert "backfill" in tty.getvalue() and "3/3" in tty.getvalue()
    monkeypatch.setenv("PERPWATCH_PROGRESS", "0")
    assert list(progress.track(range(4), "x")) == [0, 1, 2, 3]


def test_reporter_keeps_messages_when_quiet(monkeypatch, capsys):
    monkeypatch.setenv("PERPWATCH_PROGRESS", "0")
    with progress.reporter("replay") as say:
        say("replaying 12 payloads")
        say("loaded")
    assert capsys.readouterr().err.splitlines() == ["replaying 12 payloads", "loaded"]


def test_duckdb_snapshot_is_readable_while_warehouse_is_written(wh, tmp_path):
    """The fallback path of status/report: a reader of the snapshot never needs the warehouse lock."""
    serving = tmp_path / "serving.duckdb"
    warehouse.publish(db=wh, serving=serving, exports=tmp_path / "exports")
    writer = warehouse.connect(wh)
    try:
        con = duckdb.connect(str(serving), read_only=True)
        assert con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0] == 241
        con.close()
    finally:
        writer.close()


def test_status_reports_open_gaps(tmp_path):
    from datetime import UTC, datetime

    from perpwatch import warehouse
    from perpwatch.serving import status

    con = warehouse.connect(tmp_path / "g.duckdb")
    try:
        con.execute("INSERT INTO meta.gaps (source, dataset, instrument, gap_start, gap_end, missing, status, attempts) "
                    "VALUES ('bybit', 'open_interest', 'BTCUSDT', '2026-11-18 03:00:00+00', '2026-11-18 05:00:00+00', 3, 'open', 1)")
        st = status.collect(con, now=datetime(2026, 11, 20, tzinfo=UTC))
        text = status.render_text(st, "test")
    finally:
        con.close()
    assert [(g["source"], g["instrument"], g["missing"]) for g in st["gaps"]] == [("bybit", "BTCUSDT", 3)]
    assert "Gaps in stored series (re-requested by the next run): 1" in text
    assert "2026-11-18 03:00" in text and "open_interest" in text


def test_report_marks_a_provisional_day_and_alert_by_the_marts_complete_flag():
    from datetime import date

    row = {"date": date(2026, 11, 19), "asset": "BTC", "signal_state": "deleveraging", "firing": ["deleveraging"]}
    final = report.signals_html(date(2026, 11, 19), [{**row, "complete": True}])
    provisional = report.signals_html(date(2026, 11, 19), [{**row, "complete": True}, {**row, "asset": "ETH", "complete": False}])
    assert "provisional" not in final and "UTC day <b>2026-11-19</b>. " in final
    assert "UTC day <b>2026-11-19</b> — <b>provisional</b>: the day's last hourly close is not in yet" in provisional
    # a warehouse without the column: the wall clock decides (a past day is not in progress)
    assert "provisional" not in report.signals_html(date(2026, 11, 19), [row])
    alerts = report.alerts_html([{"date": date(2026, 11, 19), "asset": "ETH", "complete": False, "rule": "ls_extreme",
                                  "severity": "warning", "message": "ETH long/short account ratio 1.53 is above 1.50"}])
    head = alerts.split("<thead>")[1].split("</thead>")[0]
    assert head == "<tr><th>date</th><th>asset</th><th>complete</th><th>rule</th><th>severity</th><th>message</th></tr>"
    assert "<td>2026-11-19</td><td>ETH</td><td>no</td><td>ls_extreme</td>" in alerts     # booleans read yes / no
