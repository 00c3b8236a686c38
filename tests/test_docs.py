"""Every warehouse table and column is described (COMMENT ON), and docs/tables.md is current."""

from __future__ import annotations

from perpwatch import warehouse
from perpwatch.serving import docgen
from perpwatch.transforms import build_all

SCHEMAS = "('raw','staging','marts','meta','quarantine')"


def test_every_table_and_column_has_a_comment(tmp_path):
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        build_all(con)          # every mart, on empty staging
        tables = con.execute(
            "SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE database_name = current_database() "
            f"AND schema_name IN {SCHEMAS} AND comment IS NULL UNION ALL "
            "SELECT schema_name || '.' || view_name FROM duckdb_views() WHERE database_name = current_database() "
            f"AND schema_name IN {SCHEMAS} AND comment IS NULL").fetchall()
        columns = con.execute(
            "SELECT schema_name || '.' || table_name || '.' || column_name FROM duckdb_columns() "
            f"WHERE database_name = current_database() AND schema_name IN {SCHEMAS} AND comment IS NULL").fetchall()
        n = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                        "AND schema_name = 'marts'").fetchone()[0]
    finally:
        con.close()
    assert n >= 10
    assert tables == []
    assert columns == []


def test_tables_md_is_generated_from_the_docs():
    assert docgen.OUT.read_text() == docgen.render(), "run: .venv/bin/python -m perpwatch.serving.docgen"
