"""Column types of the staging tables, as warehouse/schema.sql declares them.

Parsers of staging-shaped files (sources/imports.py) cast to these types; they receive them in
their ParseContext (`columns`), filled by the ingest layer, so no venue or file-format module reads
the warehouse itself.
"""

from __future__ import annotations

from functools import cache

import duckdb

from perpwatch.warehouse import SCHEMA_FILE

LOAD_COLUMNS = ("raw_id", "ingested_at")   # set by the loader, never by a file


@cache
def _staging_columns() -> dict[str, dict[str, str]]:
    con = duckdb.connect()
    try:
        con.execute(SCHEMA_FILE.read_text())
        out: dict[str, dict[str, str]] = {}
        for t, c, ty in con.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                                    "WHERE table_schema='staging' ORDER BY table_name, ordinal_position").fetchall():
            if c not in LOAD_COLUMNS:
                out.setdefault(t, {})[c] = ty
        return out
    finally:
        con.close()


def staging_columns() -> dict[str, dict[str, str]]:
    """table -> {column: DuckDB type} for every staging table, in schema order (an in-memory
    DuckDB runs schema.sql once per process); load-time columns (raw_id, ingested_at) left out."""
    return {t: dict(cols) for t, cols in _staging_columns().items()}
