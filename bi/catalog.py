"""Print every schema, table and column of a DuckDB file with its comment, through SQLAlchemy's
inspector and duckdb-engine — the path Superset, Metabase's JDBC-less tools, pandas `read_sql`
and most Python BI tools take. Runs in Superset's environment (it has duckdb-engine):

    .venv-bi/bin/python -m bi.catalog data/serving.duckdb          # JSON on stdout
"""

from __future__ import annotations

import json
import sys


def catalog(path: str) -> list[dict]:
    import sqlalchemy as sa

    engine = sa.create_engine(f"duckdb:///{path}", connect_args={"read_only": True})
    try:
        insp = sa.inspect(engine)
        out = []
        for schema in sorted(insp.get_schema_names()):
            for table in sorted(insp.get_table_names(schema=schema)):
                out.append({"schema": schema, "table": table,
                            "comment": insp.get_table_comment(table, schema=schema).get("text"),
                            "columns": [{"name": c["name"], "type": str(c["type"]), "comment": c.get("comment")}
                                        for c in insp.get_columns(table, schema=schema)]})
        return out
    finally:
        engine.dispose()


if __name__ == "__main__":
    json.dump(catalog(sys.argv[1] if len(sys.argv) > 1 else "data/serving.duckdb"), sys.stdout, indent=1)
    print()
