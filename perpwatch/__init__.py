"""perpwatch: self-hosted derivatives-market intelligence pipeline."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

POLARS_DECAY_MS = 10_000  # the default of the polars_decay_ms setting (perpwatch/core/settings.py)

# polars' allocator (jemalloc) hands pages freed for longer than 0.5 s back to the OS (polars/__init__.py sets
# dirty_decay_ms:500,muzzy_decay_ms:1000 and appends _RJEM_MALLOC_CONF; polars issue 18088): a pipeline that
# parses, validates and loads batches of hundreds of MB one after the other then page-faults the same memory in
# again for every batch. It must be set before polars is imported, hence here rather than through Settings
# (which declares and documents PERPWATCH_POLARS_DECAY_MS); a _RJEM_MALLOC_CONF of the user's own is left alone.
if "polars" not in _sys.modules and "_RJEM_MALLOC_CONF" not in _os.environ:
    _decay = int(_os.environ.get("PERPWATCH_POLARS_DECAY_MS") or POLARS_DECAY_MS)
    if _decay > 0:
        _os.environ["_RJEM_MALLOC_CONF"] = f"dirty_decay_ms:{_decay},muzzy_decay_ms:{_decay}"

# One glibc arena for every thread started from here on (perpwatch/core/memory.py, `one_arena`): the build's
# worker threads then reuse freed memory like the main thread instead of faulting in fresh pages. A limit the
# environment sets (MALLOC_ARENA_MAX, glibc.malloc.arena_max in GLIBC_TUNABLES) is the user's and stays.
if "MALLOC_ARENA_MAX" not in _os.environ and "glibc.malloc.arena_max" not in _os.environ.get("GLIBC_TUNABLES", ""):
    from perpwatch.core import memory as _memory

    _memory.one_arena()
