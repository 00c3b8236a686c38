"""perpwatch command line. Every command has --help; flags share names across commands."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from perpwatch.core import quiet


def _date(s: str) -> datetime:
    try:
        return datetime.fromisoformat(s).replace(tzinfo=UTC) if "T" not in s and len(s) == 10 \
            else datetime.fromisoformat(s).astimezone(UTC)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD or ISO time): {s!r}") from exc


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _common(p: argparse.ArgumentParser, venues: bool = True) -> None:
    p.add_argument("--db", help="warehouse file (default $PERPWATCH_DB or data/perpwatch.duckdb)")
    if venues:
        p.add_argument("--venues", type=lambda s: [v.lower() for v in _list(s)],
                       help="comma-separated venues (default $PERPWATCH_VENUES or all implemented)")
        p.add_argument("--assets", type=lambda s: [a.upper() for a in _list(s)],
                       help="comma-separated assets (default $PERPWATCH_ASSETS or BTC,ETH,SOL)")


def _ok_warnings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ok-warnings", action="store_true",
                   help="exit 0 on a warning (default 3: something was quarantined or is still missing); "
                        "failed is always 1 (perpwatch/core/outcome.py)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="perpwatch", description="Derivatives-market intelligence pipeline.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="one incremental pass: extract -> land -> validate -> load -> build -> publish")
    _common(p)
    p.add_argument("--end", type=_date, help="run as of this time (UTC; default now): windows end here")
    p.add_argument("--no-build", action="store_true", help="skip building marts")
    p.add_argument("--no-prefect", action="store_true", help="run the same steps without Prefect")
    _ok_warnings(p)

    p = sub.add_parser("backfill", help="like run, over a window, respecting each venue's history depth")
    _common(p)
    p.add_argument("--start", type=_date, required=True, help="YYYY-MM-DD (UTC)")
    p.add_argument("--end", type=_date, help="YYYY-MM-DD (UTC, exclusive; default now)")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-prefect", action="store_true")
    p.add_argument("--heal", action=argparse.BooleanOptionalAction, default=True,
                   help="re-read the window's open gaps and failed chunks, up to 3 passes (default on)")
    _ok_warnings(p)

    p = sub.add_parser("build", help="rebuild the marts from staging and publish the serving snapshot")
    _common(p, venues=False)
    p.add_argument("--no-publish", action="store_true")
    p.add_argument("--since", type=_date, help="incremental: recompute date-partitioned marts from this day on "
                                               "(marts with an `-- incremental:` header; the rest in full)")

    p = sub.add_parser("replay", help="rebuild staging from the landed raw payloads, no network")
    _common(p, venues=False)
    p.add_argument("--no-build", action="store_true")
    _ok_warnings(p)

    p = sub.add_parser("quarantine", help="list, release (re-validate and load after a fix) or drop quarantined batches")
    _common(p, venues=False)
    qs = p.add_subparsers(dest="action", required=True)
    q = qs.add_parser("list", help="open batches (--all: released and dropped too)")
    q.add_argument("--all", action="store_true")
    q.add_argument("--json", action="store_true")
    q = qs.add_parser("release", help="re-parse the batch's raw payloads, validate with today's suite, load what passes")
    q.add_argument("batch_id")
    q = qs.add_parser("drop", help="close the batch without loading it (raw payloads stay)")
    q.add_argument("batch_id")

    p = sub.add_parser("sim", help="run the venue simulator on loopback")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--now", help="freeze the simulator clock at this ISO time")
    p.add_argument("--faults", help="fault profiles NAME[,NAME] or all (see docs/reliability.md)")
    p.add_argument("--fault-rate", type=float, help="share of request attempts faulted (default 0.05)")
    p.add_argument("--fault-seed", type=int, help="seed of the fault draws (default: --seed)")
    p.add_argument("--env", action="store_true", help="print the export lines for this port and exit")

    p = sub.add_parser("import", help="load a CSV/Parquet/vendor file through validate -> load")
    _common(p, venues=False)
    p.add_argument("kind", help="funding, open-interest, long-short, liquidations, prices, instruments, "
                                "etf-flows, macro, treasuries, market-caps")
    p.add_argument("file")
    p.add_argument("--venue", help="venue for rows that lack one")
    p.add_argument("--asset", help="asset for rows that lack one")
    p.add_argument("--series", help="series code for single-series macro files")
    p.add_argument("--tz-offset", help="hours naive timestamps run ahead of UTC (default: auto-detect)")
    p.add_argument("--max-size", type=float, help="refuse files above this size in MB (default 512)")
    p.add_argument("--no-build", action="store_true")
    _ok_warnings(p)

    p = sub.add_parser("heatmap", help="render the estimated liquidation heatmap")
    _common(p, venues=False)
    p.add_argument("asset")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("-o", "--output", required=True)

    p = sub.add_parser("status", help="freshness per source, row counts, last runs, quarantined batches")
    _common(p, venues=False)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("report", help="self-contained HTML report of the latest marts")
    _common(p, venues=False)
    p.add_argument("-o", "--output", required=True)

    p = sub.add_parser("query", help="read-only SQL on the warehouse (--as-of: a past lake snapshot)")
    _common(p, venues=False)
    p.add_argument("sql")
    p.add_argument("--as-of", help="DuckLake backend only: snapshot id or ISO timestamp (UTC) to read as of")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")

    p = sub.add_parser("migrate", help="copy a DuckDB-file warehouse into a DuckLake catalog, verified, rerunnable")
    _common(p, venues=False)
    p.add_argument("--to", required=True, help="catalog URL postgresql://user@host:port/db ($PERPWATCH_CATALOG)")

    p = sub.add_parser("maintain", help="DuckLake maintenance: compact, expire snapshots, delete old files")
    _common(p, venues=False)
    p.add_argument("--retention-days", type=float,
                   help="keep snapshots this long (default $PERPWATCH_LAKE_RETENTION_DAYS or 7)")

    p = sub.add_parser("collect", help="capture liquidation websocket streams for a duration")
    _common(p)
    p.add_argument("--seconds", type=float, default=60.0)
    p = sub.add_parser("bi", help="Apache Superset on loopback with the perpwatch dashboards (bi/superset.py)")
    p.add_argument("--port", type=int, default=None, help="loopback port (default 8088, PERPWATCH_BI_PORT; 0 = any)")
    return ap


def _print_report(report) -> None:
    t = report.totals()
    print(f"run {report.run_id}: {report.status} — fetched {t['fetched']}, loaded {t['loaded']}, "
          f"duplicate {t['duplicate']}, quarantined {t['quarantined']}, "
          f"payloads_quarantined {t['payloads_quarantined']}, gaps_open {t['gaps_open']}")
    for e in report.errors:
        print(f"  ERROR {e}", file=sys.stderr)
    for w in report.warnings:
        print(f"  WARNING {w}", file=sys.stderr)


def _ingest_command(args) -> int:
    """`run` and `backfill`: the same jobs with or without Prefect (--no-prefect runs them in process)."""
    from perpwatch.core import outcome
    start, end = getattr(args, "start", None), getattr(args, "end", None)
    code = lambda status: outcome.exit_code(status, args.ok_warnings)  # noqa: E731
    if args.no_prefect:
        from perpwatch import jobs
        from perpwatch.core import progress
        if args.cmd == "backfill":
            with progress.reporter("backfill") as say:
                res = jobs.backfill(start, end, args.venues, args.assets, args.db, build=not args.no_build,
                                    progress=lambda i, n, rep: say(f"chunk {i}/{n}: {rep.run_id} {rep.status}"),
                                    heal=args.heal)
            print(json.dumps(res.as_dict(), default=str))
            _backfill_notes(res.as_dict())
            return code(res.status)
        with progress.reporter(args.cmd) as say:
            report = jobs.run(args.cmd, start, end, args.venues, args.assets, args.db, build=not args.no_build,
                              publish=not args.no_build, progress=say)
        _print_report(report)
        return code(report.status)
    if args.cmd == "backfill":   # chunked (30 days) with a progress bar on a terminal
        from perpwatch.flows.backfill import backfill
        state = backfill(start=start, end=end, venues=args.venues, assets=args.assets, db=args.db,
                         build=not args.no_build, heal=args.heal, return_state=True)
        res = _flow_result(state)
        print(json.dumps(res, default=str))
        _backfill_notes(res)
        return code(res["status"])
    from perpwatch.flows.build import build
    from perpwatch.flows.ingest import ingest
    res = _flow_result(ingest(start=start, end=end, venues=args.venues, assets=args.assets, db=args.db,
                              kind=args.cmd, return_state=True))
    print(json.dumps(res, default=str))
    if not args.no_build:
        build(db=args.db, publish=True)
    return code(res["status"])


def _flow_result(state) -> dict:
    """The outcome dict a flow run returned, from its final state (a Failed state carries it too)."""
    from perpwatch.flows.ingest import state_outcome
    return state_outcome(state)


def _backfill_notes(res: dict) -> None:
    if res.get("failed"):
        print(f"backfill failed: {len(res['failed'])} of {res['chunks']} chunks failed "
              f"({', '.join(res['failed'])}); see perpwatch status and meta.runs", file=sys.stderr)
    for g in res.get("missing", [])[:20]:
        print(f"  MISSING ({g.get('status', 'open')}) {g['source']} {g['dataset']} [{g['instrument']}] {g['gap_start']} .. {g['gap_end']}"
              + (f" ({g['missing']} rows)" if g.get("missing") is not None else ""), file=sys.stderr)
    if res.get("gaps_open"):
        print(f"backfill: {res['gaps_open']} gap(s) still open after {res.get('heal_passes', 0)} heal pass(es)",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet.configure()
    if args.cmd in ("run", "backfill"):
        return _ingest_command(args)
    if args.cmd == "build":
        from perpwatch import jobs
        done = jobs.after_load(args.db, True, not args.no_publish, since=args.since)
        for name, secs in done.marts.items():
            print(f"{name:40s} {secs:6.2f}s")
        if done.delivery.get("enabled"):
            print(f"alerts delivered: {done.delivery['sent']}, pending {done.delivery['pending']}")
        return 0
    if args.cmd == "replay":
        from perpwatch import jobs
        from perpwatch.core import progress
        from perpwatch.ingest import pipeline
        with progress.reporter("replay") as say:
            report = pipeline.replay(args.db, progress=say)
        _print_report(report)
        if not args.no_build:
            jobs.after_load(args.db, True, True)
        from perpwatch.core import outcome
        return outcome.exit_code(report.status, args.ok_warnings)
    if args.cmd == "quarantine":
        return _quarantine_command(args)
    if args.cmd == "sim":
        from perpwatch.simulator.server import main as sim_main
        argv2 = ["--port", str(args.port), "--seed", str(args.seed)]
        if args.now:
            argv2 += ["--now", args.now]
        if args.faults:
            argv2 += ["--faults", args.faults]
        if args.fault_rate is not None:
            argv2 += ["--fault-rate", str(args.fault_rate)]
        if args.fault_seed is not None:
            argv2 += ["--fault-seed", str(args.fault_seed)]
        if args.env:
            argv2.append("--env")
        return sim_main(argv2)
    if args.cmd == "import":
        from perpwatch.ingest.importer import main as import_main
        code = import_main(args)
        if code in (0, 3) and not args.no_build:   # loaded something: warning (3) too
            from perpwatch import jobs
            jobs.after_load(args.db, True, True)
        return code
    if args.cmd == "heatmap":
        from perpwatch import warehouse
        from perpwatch.serving.render import render
        with warehouse.session(args.db, read_only=True) as con:
            out = render(con, args.asset.upper(), args.days, args.output)
        print(out)
        return 0
    if args.cmd == "status":
        from perpwatch.serving.status import main as status_main
        return status_main(args)
    if args.cmd == "report":
        from perpwatch.serving.report import main as report_main
        return report_main(args)
    if args.cmd in ("query", "migrate", "maintain"):
        from perpwatch.warehouse import ops
        if args.cmd == "query":
            sys.stdout.write(ops.query(args.sql, db=args.db, as_of=ops.parse_as_of(args.as_of), fmt=args.format))
            return 0
        if args.cmd == "migrate":
            counts = ops.migrate(args.db, args.to)
            print(f"migrated {len(counts)} tables, {sum(counts.values())} rows, verified row for row")
            return 0
        ops.maintain(args.db, args.retention_days, say=print)
        return 0
    if args.cmd == "collect":
        from perpwatch.ingest.collector import main as collect_main
        return collect_main(args)
    if args.cmd == "bi":
        from perpwatch.bi.superset import main as bi_main
        return bi_main([] if args.port is None else ["--port", str(args.port)])
    return 2


def _quarantine_command(args) -> int:
    from perpwatch import warehouse
    from perpwatch.core import outcome
    from perpwatch.ingest import quarantine
    try:
        if args.action == "list":
            with warehouse.session(args.db) as con:
                batches = quarantine.list_batches(con, include_closed=args.all)
            if args.json:
                print(json.dumps(batches, default=str))
                return 0
            for b in batches:
                refs = b["row_refs"]
                unit = (f"{b['rows']} row(s): " + "; ".join(f"raw_id {r['raw_id']} row {','.join(map(str, r['rows'][:10]))}"
                                                        for r in refs[:5])) if refs is not None \
                    else f"payload(s) raw_id {','.join(map(str, b['raw_ids'][:10]))}"
                print(f"{b['batch_id']}  {b['status']:8s} {b['received_at']:%Y-%m-%d %H:%M}  {b['source']}/{b['dataset']} "
                      f"[{b['instrument'] or '-'}]  {unit}\n    {b['message'][:300]}")
            print(f"{len(batches)} batch(es)" + ("" if args.all else " open"))
            return 0
        if args.action == "drop":
            print(json.dumps(quarantine.drop(args.db, args.batch_id)))
            return 0
        rel = quarantine.release(args.db, args.batch_id)
    except (KeyError, ValueError) as exc:
        print(f"quarantine {args.action}: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    from dataclasses import asdict
    print(json.dumps(asdict(rel), default=str))
    return outcome.exit_code(rel.status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
