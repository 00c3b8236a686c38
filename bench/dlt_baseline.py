"""dlt baseline for the load-path benchmark. Runs inside the separate bench venv (dlt is never a
perpwatch dependency): `.bench-venv/bin/python bench/dlt_baseline.py '<json args>'`.

Loads the same openInterestHist pages (one JSON page per line of `pages_file`) into DuckDB with
write_disposition="merge" on the staging grain (venue, instrument, ts), through two routes:

- dict: the resource yields Python dicts, normalised per row (dlt's default route: its normaliser
  infers and coerces every row);
- arrow: the resource yields one pyarrow Table per page, columns computed with pyarrow.compute
  (dlt's documented fast route: Arrow tables go to Parquet load files without row normalisation).

For each route and each size in `sizes` (rows; the first size/500 pages): a fresh pipeline directory
and database, then `setup_s` = a run of the first page alone (pipeline state, schema, tables and the
destination created: one-off cost), `fresh_s` = the run of all the pages (a merge of N rows, 500 of
which are already there), `reload_s` = the same pages again (the row count must not change). Prints
one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

import dlt  # noqa: E402
import duckdb  # noqa: E402
import orjson  # noqa: E402

KEY = ("venue", "instrument", "ts")


def dict_rows(lines):
    for line in lines:
        rows = orjson.loads(line)
        yield [{"venue": "binance", "instrument": r["symbol"],
                "ts": datetime.fromtimestamp(int(r["timestamp"]) / 1000, UTC),
                "asset": r["symbol"][:-4], "margin": "linear",
                "oi_contracts": float(r["sumOpenInterest"]), "oi_base": float(r["sumOpenInterest"]),
                "oi_usd": float(r["sumOpenInterestValue"])} for r in rows]


def arrow_tables(lines):
    import pyarrow as pa
    import pyarrow.compute as pc

    for line in lines:
        t = pa.Table.from_pylist(orjson.loads(line))
        sym = t["symbol"]
        n = t.num_rows
        oi = pc.cast(t["sumOpenInterest"], pa.float64())
        yield pa.table({
            "venue": pa.array(["binance"] * n),
            "instrument": sym,
            "ts": pc.cast(pc.cast(t["timestamp"], pa.int64()), pa.timestamp("ms", tz="UTC")),
            "asset": pc.utf8_slice_codeunits(sym, 0, -4),
            "margin": pa.array(["linear"] * n),
            "oi_contracts": oi, "oi_base": oi,
            "oi_usd": pc.cast(t["sumOpenInterestValue"], pa.float64()),
        })


ROUTES = {"dict": dict_rows, "arrow": arrow_tables}


def one(route: str, lines: list[bytes], work: Path, tag: str) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    gen = ROUTES[route]

    def resource(pages):
        return dlt.resource(gen(pages), name="open_interest", write_disposition="merge", primary_key=KEY)

    t0 = time.perf_counter()
    pipe = dlt.pipeline(pipeline_name=f"bench_{tag}", destination=dlt.destinations.duckdb(str(work / "dlt.duckdb")),
                        dataset_name="staging", pipelines_dir=str(work / "pipelines"))
    pipe.run(resource(lines[:1]))
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe.run(resource(lines))
    fresh = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe.run(resource(lines))
    reload = time.perf_counter() - t0
    con = duckdb.connect(str(work / "dlt.duckdb"), read_only=True)
    n = con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0]
    con.close()
    shutil.rmtree(work, ignore_errors=True)
    return {"setup_s": setup, "fresh_s": fresh, "reload_s": reload, "rows_in_table": n}


def main() -> None:
    args = json.loads(sys.argv[1])
    lines = Path(args["pages_file"]).read_bytes().splitlines()
    work = Path(args["workdir"])
    sizes = args.get("sizes") or [sum(len(orjson.loads(x)) for x in lines)]
    out: dict = {"dlt": dlt.__version__, "duckdb": duckdb.__version__, "routes": {}}
    for route in args.get("routes", list(ROUTES)):
        for size in sizes:
            pages = lines[: max(1, size // 500)]
            rows = sum(len(orjson.loads(x)) for x in pages)
            runs = [one(route, pages, work, f"{route}_{size}_{r}") for r in range(int(args.get("runs", 3)))]
            out["routes"].setdefault(route, {})[str(rows)] = runs
            print(f"{route} {rows}: " + ", ".join(f"{x['fresh_s']:.2f}s" for x in runs), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
