"""dlt baseline for the load-path benchmark. Runs inside the separate bench venv (dlt is never a
perpwatch dependency): `.bench-venv/bin/python bench/dlt_baseline.py '<json args>'`.

Loads the same openInterestHist pages (one JSON page per line of `pages_file`) into DuckDB with
write_disposition="merge" on the staging grain (venue, instrument, ts), normalising each row the
way a dlt resource does (plain Python per row). Prints one JSON line: seconds for a fresh load and
for a reload of the same pages (which must leave the row count unchanged).
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


def main() -> None:
    args = json.loads(sys.argv[1])
    lines = Path(args["pages_file"]).read_bytes().splitlines()
    work = Path(args["workdir"])

    @dlt.resource(name="open_interest", write_disposition="merge", primary_key=("venue", "instrument", "ts"))
    def open_interest():
        for line in lines:
            rows = orjson.loads(line)
            yield [{"venue": "binance", "instrument": r["symbol"],
                    "ts": datetime.fromtimestamp(int(r["timestamp"]) / 1000, UTC),
                    "asset": r["symbol"][:-4], "margin": "linear",
                    "oi_contracts": float(r["sumOpenInterest"]), "oi_base": float(r["sumOpenInterest"]),
                    "oi_usd": float(r["sumOpenInterestValue"])} for r in rows]

    results = []
    for run in range(int(args.get("runs", 3))):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        db = work / "dlt.duckdb"
        pipe = dlt.pipeline(pipeline_name=f"bench_oi_{run}", destination=dlt.destinations.duckdb(str(db)),
                            dataset_name="staging", pipelines_dir=str(work / "pipelines"))
        t0 = time.perf_counter()
        pipe.run(open_interest())
        fresh = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipe.run(open_interest())
        reload = time.perf_counter() - t0
        con = duckdb.connect(str(db), read_only=True)
        n = con.execute("SELECT count(*) FROM staging.open_interest").fetchone()[0]
        con.close()
        results.append({"fresh_s": fresh, "reload_s": reload, "rows_in_table": n})
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"dlt": dlt.__version__, "duckdb": duckdb.__version__, "runs": results}))


if __name__ == "__main__":
    main()
