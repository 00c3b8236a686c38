"""Shared by the DuckLake tests: the PostgreSQL server they use, why they would skip, and a throwaway
catalog database per test (random name, dropped at the end)."""

from __future__ import annotations

import uuid

from perpwatch.core import settings
from perpwatch.warehouse import lake

PG = settings.get().test_pg


def unavailable() -> str | None:
    """None when PostgreSQL and the DuckLake extensions answer, else the reason to skip."""
    try:
        lake.create_database(f"{PG}/postgres")
        return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL/DuckLake not available: {exc}"


def lake_database(tmp_path, monkeypatch, prefix: str):
    """Generator for a pytest fixture: a fresh catalog URL, Parquet files under tmp_path, dropped after."""
    url = f"{PG}/{prefix}_{uuid.uuid4().hex[:10]}"
    lake.create_database(url)
    monkeypatch.setenv("PERPWATCH_DATA_PATH", str(tmp_path / "lakedata"))
    monkeypatch.delenv("PERPWATCH_CATALOG", raising=False)
    try:
        yield url
    finally:
        lake._initialised.discard(url)
        lake.drop_database(url)
