"""One status vocabulary for every run: what a command prints, its exit code, meta.runs.status and the
Prefect flow-run state all say the same thing (README "Exit codes", docs/contract.md).

  success  everything fetched loaded; nothing quarantined, no gap left open       exit 0, flow Completed
  warning  data loaded, but something was quarantined or is still missing          exit 3, flow Completed
           (payloads or rows quarantined, open gaps, a degraded source)                 with the message
  failed   an error: extraction failed, reconciliation failed, the run aborted     exit 1, flow Failed

`--ok-warnings` on run / backfill / replay / import makes a warning exit 0 (for callers that only care
whether the command failed).
"""

from __future__ import annotations

STATUSES = ("success", "warning", "failed")
EXIT = {"success": 0, "warning": 3, "failed": 1}


def exit_code(status: str, ok_warnings: bool = False) -> int:
    """The process exit code for a run status (unknown statuses count as failed)."""
    if status == "warning" and ok_warnings:
        return 0
    return EXIT.get(status, 1)


def worst(statuses) -> str:
    """The most severe of several statuses (a backfill's chunks); 'success' for none."""
    rank = {s: i for i, s in enumerate(STATUSES)}
    out = "success"
    for s in statuses:
        s = s if s in rank else "failed"
        if rank[s] > rank[out]:
            out = s
    return out
