"""Phase checkpoints: with PERPWATCH_PHASE_LOG set, every phase a process enters is appended to that file
as `<pid> <phase>` and flushed before the phase starts, so a watcher (an operator's `tail -f`, the crash
tests in tests/test_reliability.py) knows where a run is without sleeping and guessing.

Phases: extract, load (ingest), build, publish (after the load), lock-wait (connect() found the
warehouse locked and waits). Without the setting this is a no-op."""

from __future__ import annotations

import os

from perpwatch.core import settings


def mark(phase: str) -> None:
    path = settings.get().phase_log
    if path is None:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {phase}\n".encode())   # one write() on O_APPEND: lines never interleave
    finally:
        os.close(fd)
