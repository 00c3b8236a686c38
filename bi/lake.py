"""Superset's DuckDB reads the DuckLake (PERPWATCH_CATALOG): its extensions, installed offline.

Runs inside Superset's environment (`.venv-bi/bin/python -m bi.lake EXTENSION_DIR`), which has the
registry packages duckdb-extensions, duckdb-extension-ducklake and duckdb-extension-postgres
(pinned to duckdb 1.5.5 in bi/constraints.txt). `duckdb_extensions.import_extension` runs
`INSTALL '<the package's .duckdb_extension file>'` — no download — into EXTENSION_DIR, as
warehouse/lake.py does for the pipeline. Superset's database entry for the lake then opens
`ducklake:postgres:<catalog>` read-only with `extension_directory` = EXTENSION_DIR and
`autoinstall_known_extensions` off: DuckDB loads ducklake and postgres_scanner from there on every
connection and never fetches an extension from the network.

Prints one JSON object: the extensions installed and where.
"""

from __future__ import annotations

import json
import sys


def install(extension_dir: str) -> dict[str, str]:
    import duckdb
    import duckdb_extensions

    con = duckdb.connect(config={"extension_directory": extension_dir, "autoinstall_known_extensions": False})
    try:
        for package in ("ducklake", "postgres"):
            duckdb_extensions.import_extension(package, con=con)
        con.execute("LOAD ducklake; LOAD postgres_scanner")
        return dict(con.execute("SELECT extension_name, install_path FROM duckdb_extensions() "
                                "WHERE extension_name IN ('ducklake', 'postgres_scanner')").fetchall())
    finally:
        con.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bi.lake EXTENSION_DIR")
    print(json.dumps(install(sys.argv[1])))
