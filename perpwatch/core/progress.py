"""Terminal progress for long work (backfills, imports, replays).

A bar (or a spinner when the total is unknown) on stderr when stderr is a terminal; nothing
when it is not (cron, CI, pipes) or when the process is a flow run started by a Prefect worker
(its logs are the record there). PERPWATCH_PROGRESS=0 turns bars off, =1 forces them on.

    with progress.bar(len(chunks), "backfill", unit="chunk") as bar:
        for c in chunks:
            ...
            bar.advance(1, f"{c} done")

    for item in progress.track(items, "importing", unit="file"): ...

    with progress.reporter("backfill") as say:      # a jobs.run(progress=...) callback
        jobs.run(..., progress=say)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from perpwatch.core import settings

T = TypeVar("T")


def enabled(stream=None) -> bool:
    """Whether to draw: forced by PERPWATCH_PROGRESS, off under a Prefect worker, else only on a TTY."""
    s = settings.get()
    forced = s.progress.strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in ("1", "true", "yes", "on"):
        return True
    if s.prefect_flow_run_id:   # set in processes a worker starts for a flow run
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Bar:
    """What a caller drives: advance by n, optionally with a short note; `done` counts so far."""

    def __init__(self, total: int | None = None):
        self.total = total
        self.done = 0
        self.last_note = ""

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.last_note = note

    def note(self, text: str) -> None:
        self.last_note = text

    def log(self, text: str) -> None:
        """A line that should stay on screen (printed above the bar; to stderr when there is no bar)."""
        print(text, file=sys.stderr)


class _RichBar(Bar):
    def __init__(self, prog, task_id, total):
        super().__init__(total)
        self._prog, self._task = prog, task_id

    def advance(self, n: int = 1, note: str | None = None) -> None:
        super().advance(n, note)
        self._prog.update(self._task, advance=n, note=self.last_note)

    def note(self, text: str) -> None:
        super().note(text)
        self._prog.update(self._task, note=text)

    def log(self, text: str) -> None:
        self._prog.console.print(text, markup=False, highlight=False)


@contextmanager
def bar(total: int | None, desc: str, unit: str = "item", stream=None) -> Iterator[Bar]:
    """A progress bar of `total` units (a spinner with a count when total is None)."""
    if not enabled(stream):
        yield Bar(total)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=stream if stream is not None else sys.stderr)
    cols = [SpinnerColumn(), TextColumn("[bold]{task.description}")]
    if total is not None:
        cols += [BarColumn(), MofNCompleteColumn(), TextColumn(unit + "s"), TimeRemainingColumn()]
    else:
        cols += [TextColumn("{task.completed} " + unit + "s")]
    cols += [TimeElapsedColumn(), TextColumn("[dim]{task.fields[note]}")]
    with Progress(*cols, console=console, transient=False) as prog:
        task_id = prog.add_task(desc, total=total, note="")
        yield _RichBar(prog, task_id, total)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "item") -> Iterator[T]:
    """Iterate `items` with a bar (total taken from len() when possible)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, unit) as b:
        for item in items:
            yield item
            b.advance(1)


@contextmanager
def reporter(desc: str, unit: str = "step") -> Iterator[Callable[[str], None]]:
    """A `progress=` callback for pipeline.run / pipeline.replay: every message is kept on screen
    (stderr), and on a terminal a spinner below counts the steps with the elapsed time."""
    with bar(None, desc, unit) as b:
        def say(message: str) -> None:
            b.log(message)
            b.advance(1, message[:80])
        yield say
