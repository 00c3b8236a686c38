"""Write docs/tables.md from the warehouse table docs (warehouse/docs.toml + docs.d/*.toml).

    .venv/bin/python -m perpwatch.serving.docgen
"""

from __future__ import annotations

from pathlib import Path

from perpwatch import warehouse

OUT = Path(__file__).resolve().parents[2] / "docs" / "tables.md"


def render() -> str:
    docs = warehouse.table_docs()
    common = docs.pop("*", {}).get("columns", {})
    lines = ["# Warehouse tables", "",
             "Generated from `warehouse/docs.toml` and `warehouse/docs.d/*.toml` by `python -m perpwatch.serving.docgen`;",
             "the same text is attached to the warehouse with `COMMENT ON` (query `duckdb_tables()` /",
             "`duckdb_columns()` `comment`). Grain (the key, never duplicated) in brackets.", ""]
    lines += ["## Columns shared by many tables", "", "| column | meaning |", "|---|---|"]
    lines += [f"| `{c}` | {t} |" for c, t in common.items()]
    lines.append("")
    order = ["raw", "staging", "marts", "meta", "quarantine"]
    for schema in order:
        names = sorted(t for t in docs if t.startswith(schema + "."))
        if not names:
            continue
        lines += [f"## {schema}", ""]
        for name in names:
            d = docs[name]
            lines += [f"### `{name}`", "", d.get("description", ""), ""]
            cols = d.get("columns", {})
            if cols:
                lines += ["| column | meaning |", "|---|---|"]
                lines += [f"| `{c}` | {t} |" for c, t in cols.items()]
                lines.append("")
    return "\n".join(lines)


def main() -> None:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render())
    print(OUT)


if __name__ == "__main__":
    main()
