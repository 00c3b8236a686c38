"""Settings in one place: perpwatch/core/settings.py declares every environment variable perpwatch
reads, .env.example is generated from it, and no module reads the environment around it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from perpwatch.core import settings
from perpwatch.core.settings import ENV_EXAMPLE, ENV_NAMES, ROOT, Settings

# Folders holding perpwatch code and docs (the real folders, not the perpwatch/ symlinks to them).
SCANNED = ["perpwatch/core", "perpwatch/ingest", "perpwatch/serving", "sources", "warehouse", "transforms",
           "flows", "bench", "simulator", "tests", "docs", "expectations"]
SCANNED_FILES = ["README.md", "Makefile", "prefect.yaml", "pyproject.toml", "BENCHMARKS.md"]
SUFFIXES = {".py", ".sql", ".md", ".toml", ".yaml", ".yml", ".json", ".sh", ""}
NAME = re.compile(r"\bPERPWATCH_[A-Z0-9_]*[A-Z0-9]")
FAMILIES = {"PERPWATCH_URL"}   # written as PERPWATCH_URL_<SOURCE> / f"PERPWATCH_URL_{name}"
# Reading the environment (not writing it: setdefault/update/assignment are how the simulator,
# demo and benchmarks hand settings to the code under them).
READ = re.compile(r"os\.getenv\(|os\.environ\.get\(|environ\.get\(|os\.environ\[[^\]]+\](?!\s*=[^=])"
                  r"|\bin\s+os\.environ\b")
# Modules allowed to read os.environ: the settings module itself; bench/extract.py saves and restores
# the caller's values around a simulator run (copies, not settings).
# bi/browser.py runs inside Superset's own environment (.venv-bi), where perpwatch is not installed.
READ_ALLOWED = {"perpwatch/core/settings.py", "bench/extract.py", "bi/browser.py",
                "perpwatch/__init__.py"}   # polars_decay_ms: read before polars (and settings) is imported


def sources_text() -> dict[str, str]:
    files = [ROOT / f for f in SCANNED_FILES if (ROOT / f).exists()]
    files += sorted((ROOT / "perpwatch").glob("*.py"))     # cli, demo, deploy, jobs, __main__
    for d in SCANNED:
        files += [p for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in SUFFIXES
                  and "__pycache__" not in p.parts]
    return {str(p.relative_to(ROOT)): p.read_text(errors="replace") for p in files}


def python_modules() -> dict[str, str]:
    return {k: v for k, v in sources_text().items() if k.endswith(".py") and not k.startswith(("tests/", "docs/"))}


def test_the_scan_covers_every_package_module():
    scanned = set(python_modules())
    for must in ("perpwatch/cli.py", "perpwatch/deploy.py", "perpwatch/demo.py", "perpwatch/core/progress.py",
                 "sources/http.py", "flows/artifacts.py", "perpwatch/ingest/validate.py", "simulator/server.py"):
        assert must in scanned


# --------------------------------------------------------------------------- the declaration

def test_env_example_is_generated_from_settings():
    assert ENV_EXAMPLE.read_text() == settings.env_example(), \
        "stale .env.example: run .venv/bin/python -m perpwatch.core.settings --env-example"


def test_env_example_lists_every_variable_once_with_its_doc():
    text = settings.env_example()
    declared = [m.group(1) for m in re.finditer(r"^# ([A-Z][A-Z0-9_]*)=", text, re.M)]
    assert sorted(declared) == sorted(ENV_NAMES)
    assert len(declared) == len(set(declared))
    assert "# PERPWATCH_DB=data/perpwatch.duckdb\n" in text
    assert "# PERPWATCH_URL_OKX=https://www.okx.com\n" in text
    assert "# SOSOVALUE_API_KEY=\n" in text          # secrets never show a value
    for name, info in Settings.model_fields.items():
        assert info.description and info.description.endswith((".", ")")), name
        assert (info.json_schema_extra or {}).get("group"), name


def test_cli_writes_env_example(tmp_path):
    out = tmp_path / "env.example"
    assert settings.main(["--env-example", str(out)]) == 0
    assert out.read_text() == settings.env_example()


def test_every_perpwatch_variable_named_anywhere_is_declared():
    undeclared: dict[str, set[str]] = {}
    for path, text in sources_text().items():
        if path == "tests/test_settings.py":
            continue
        for name in NAME.findall(text):
            if name not in ENV_NAMES and name not in FAMILIES:
                undeclared.setdefault(name, set()).add(path)
    assert undeclared == {}, "declare these in perpwatch/core/settings.py (class Settings)"


def test_every_url_family_member_is_declared():
    for name in settings.DEFAULT_URLS:
        assert f"PERPWATCH_URL_{name}" in ENV_NAMES
    assert set(settings.DEFAULT_URLS) == set(settings.URL_DOCS)


def test_the_scan_would_catch_an_undeclared_read():
    bad = 'x = os.environ.get("PERPWATCH_' + 'NOT_A_SETTING", "1")\ny = os.environ["HOME"]\n'
    assert [n for n in NAME.findall(bad) if n not in ENV_NAMES] == ["PERPWATCH_" + "NOT_A_SETTING"]
    assert len(READ.findall(bad)) == 2
    writes = 'os.environ["A"] = "1"\nos.environ.setdefault("B", "2")\nos.environ.update(x)\n'
    assert READ.findall(writes) == []


def test_no_module_reads_the_environment_around_settings():
    readers = {path: [ln for ln in text.splitlines() if READ.search(ln)]
               for path, text in python_modules().items() if path not in READ_ALLOWED}
    assert {p: lines for p, lines in readers.items() if lines} == {}


# --------------------------------------------------------------------------- behaviour

def test_defaults(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    assert settings.db_path() == Path("data/perpwatch.duckdb")
    assert settings.serving_db_path() == Path("data/serving.duckdb")
    assert settings.exports_dir() == Path("data/exports")
    assert settings.reports_dir() == Path("data/reports")
    assert settings.gx_docs_dir() == Path("data/gx_docs")
    assert settings.expectations_dir() == ROOT / "expectations"
    assert settings.assets() == ["BTC", "ETH", "SOL"]
    assert settings.venues(["binance", "okx"]) == ["binance", "okx"]
    assert settings.providers(["fred", "stooq"]) == ["fred", "stooq"]
    assert settings.url("OKX_WS") == "wss://ws.okx.com:8443"
    assert not settings.url_configured("FARSIDE")
    assert settings.secret("stooq_api_key") == ""
    s = settings.get()
    assert (s.http_timeout, s.import_max_mb, s.sim_seed, s.prefect_port) == (30.0, 512, 7, 4200)
    assert s.fred_series == ["SP500", "NASDAQCOM", "DTWEXBGS"] and s.stooq_series == {}


def test_changes_to_the_environment_are_seen(monkeypatch, tmp_path):
    monkeypatch.setenv("PERPWATCH_DB", str(tmp_path / "a.duckdb"))
    assert settings.db_path() == tmp_path / "a.duckdb"
    monkeypatch.setenv("PERPWATCH_DB", str(tmp_path / "b.duckdb"))
    assert settings.db_path() == tmp_path / "b.duckdb"
    monkeypatch.setenv("PERPWATCH_EXPORTS", str(tmp_path / "x" / "exports"))
    assert settings.reports_dir() == tmp_path / "x" / "reports"      # derived default follows
    monkeypatch.setenv("PERPWATCH_REPORTS", str(tmp_path / "r"))
    assert settings.reports_dir() == tmp_path / "r"
    monkeypatch.delenv("PERPWATCH_DB")
    assert settings.db_path() == Path("data/perpwatch.duckdb")


def test_parsing(monkeypatch):
    monkeypatch.setenv("PERPWATCH_ASSETS", " btc, eth ,,doge")
    assert settings.assets() == ["BTC", "ETH", "DOGE"]
    monkeypatch.setenv("PERPWATCH_VENUES", "OKX, binance")
    assert settings.venues(["binance", "bybit", "okx"]) == ["okx", "binance"]
    monkeypatch.setenv("PERPWATCH_VENUES", "okx,kraken")
    with pytest.raises(ValueError, match=r"PERPWATCH_VENUES names unknown venues \['kraken'\]"):
        settings.venues(["binance", "okx"])
    monkeypatch.setenv("PERPWATCH_VENUES", " ")                      # empty = every venue
    assert settings.venues(["binance", "okx"]) == ["binance", "okx"]
    monkeypatch.setenv("PERPWATCH_PROVIDERS", "")                     # empty = none
    assert settings.providers(["fred", "stooq"]) == []
    monkeypatch.setenv("PERPWATCH_PROVIDERS", "fred,nope")
    with pytest.raises(ValueError, match="PERPWATCH_PROVIDERS names unknown providers"):
        settings.providers(["fred", "stooq"])
    monkeypatch.setenv("PERPWATCH_FRED_SERIES", "vixcls, dgs10")
    assert settings.get().fred_series == ["VIXCLS", "DGS10"]
    monkeypatch.setenv("PERPWATCH_FRED_SERIES", "")
    assert settings.get().fred_series == ["SP500", "NASDAQCOM", "DTWEXBGS"]
    monkeypatch.setenv("PERPWATCH_STOOQ_SERIES", "spx=^SPX, junk ,ndx = ^NDX")
    assert settings.get().stooq_series == {"SPX": "^spx", "NDX": "^ndx"}
    monkeypatch.setenv("PERPWATCH_HTTP_TIMEOUT", "")                  # blank = default
    assert settings.get().http_timeout == 30.0
    monkeypatch.setenv("PERPWATCH_HTTP_TIMEOUT", "7.5")
    assert settings.get().http_timeout == 7.5
    monkeypatch.setenv("PERPWATCH_URL_FARSIDE", "http://127.0.0.1:9/farside/")
    assert settings.url("FARSIDE") == "http://127.0.0.1:9/farside"
    assert settings.url_configured("FARSIDE")


def test_secrets_never_print(monkeypatch):
    monkeypatch.setenv("SOSOVALUE_API_KEY", " s3cret-soso ")
    monkeypatch.setenv("PERPWATCH_ALERT_WEBHOOK", "https://hooks.example/T0/s3cret-hook")
    s = settings.get()
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "s3cret" not in text
    assert settings.secret("sosovalue_api_key") == "s3cret-soso"
    assert settings.secret("alert_webhook") == "https://hooks.example/T0/s3cret-hook"


# --------------------------------------------------------------------------- signal settings

def test_signal_file_overlays_the_project_defaults(monkeypatch, tmp_path):
    project = settings.default_signal_settings()
    f = tmp_path / "mine.toml"
    f.write_text("[funding]\nextreme_rate_8h = 0.01\n\n[cross_market]\nwindows = [60]\n")
    monkeypatch.setenv("PERPWATCH_SIGNALS", str(f))
    cfg = settings.signal_settings()
    assert cfg["funding"]["extreme_rate_8h"] == 0.01
    assert cfg["funding"]["extreme_percentile"] == project["funding"]["extreme_percentile"] == 0.95
    assert cfg["cross_market"]["windows"] == [60]
    assert cfg["cross_market"]["coupled"] == 0.5
    assert cfg["heatmap"] == project["heatmap"]
    f.write_text("[funding]\nextreme_rate_8h = 0.02\n")             # edited: re-read
    os.utime(f, ns=(1, 1))
    assert settings.signal_settings()["funding"]["extreme_rate_8h"] == 0.02
    assert settings.signal_settings()["cross_market"]["windows"] == [30, 90]
    monkeypatch.delenv("PERPWATCH_SIGNALS")
    assert settings.signal_settings()["funding"]["extreme_rate_8h"] == 0.005


def test_no_threshold_defaults_left_in_python():
    """The correlation and heatmap marts take every value from signals.toml, not from Python."""
    from perpwatch.transforms import heatmap
    from perpwatch.transforms.marts import cross_market_correlation as cmc

    project = settings.default_signal_settings()
    assert cmc.DEFAULTS == project["cross_market"]
    assert not hasattr(heatmap, "DEFAULTS")
    assert set(heatmap.OPTIONAL) <= set(project["heatmap"])
    text = (ROOT / "transforms" / "marts" / "cross_market_correlation.py").read_text()
    assert not re.search(r'"(coupled|decoupled|inverse|min_coverage|max_gap_days)":\s*-?[0-9]', text)
