"""Reuse freed memory during a build instead of handing it back to the kernel and faulting it in again.

A mart build allocates and frees numpy arrays of hundreds of MB over and over (the heatmap's hour x
series grids and level arrays; DuckDB and polars bring their own allocators and are not affected). glibc
serves each one with a fresh mmap and unmaps it on free, so every array costs new page faults, which are
expensive on a small VM. Inside `reuse_freed_memory()` glibc takes
large blocks from its heap and keeps what is freed there for the next array (mallopt M_MMAP_MAX = 0, a
high M_TRIM_THRESHOLD); on the way out the defaults come back and malloc_trim(0) returns the free heap
pages, so the process does not keep the build's peak after it. Anything but glibc: a no-op.

That covers glibc's main arena only. A thread's first allocation gets an arena of its own (up to 8 per core),
whose heaps glibc unmaps as soon as they are empty, whatever the trim threshold: the heatmap's worker threads
(death-hour search, binned snapshots) faulted their temporaries in afresh on every call, ~300 k minor faults
per stage at 200 assets (issue 16's notes: 282-426 k in snapshots, 27-28 k and 1.5-2 k with one arena).
`one_arena()`, called when perpwatch is imported, sets M_ARENA_MAX to 1 so threads started afterwards share the
main arena and the reuse above. The bulk allocators are not glibc's (DuckDB and polars bring jemalloc, Python
objects pymalloc); DuckDB's small C++ allocations are, and the load path and the daily pass measured within their
run-to-run spread with one arena (same notes).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP = 2**31 - 1  # the largest trim threshold mallopt takes (an int): ~2 GiB may stay free on top of the heap
_lock = threading.Lock()
_depth = 0


def _glibc():
    try:
        # the process's own symbols (libc is linked into the interpreter): no find_library, which runs ldconfig
        # in a subprocess, now that every `import perpwatch` loads this module (one_arena)
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (AttributeError off glibc)
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def one_arena() -> bool:
    """Every thread that gets its arena from now on allocates from glibc's main arena (mallopt M_ARENA_MAX = 1):
    glibc reads the limit whenever a thread needs an arena, until it has made more than eight; a thread that already
    has one keeps it, so perpwatch/__init__.py calls this on import (unless the environment set MALLOC_ARENA_MAX or
    glibc.malloc.arena_max itself). Returns whether it was set (False off glibc)."""
    return _LIBC is not None and _LIBC.mallopt(_M_ARENA_MAX, 1) == 1


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within the block, large allocations come from (and return to) glibc's heap. Yields whether it applies
    (glibc). Re-entrant: only the outermost block changes and restores the settings."""
    global _depth
    if _LIBC is None:
        yield False
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _KEEP)
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
                _LIBC.malloc_trim(0)
