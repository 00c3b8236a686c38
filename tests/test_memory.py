"""perpwatch.core.memory: a build reuses freed memory from glibc's heap and gives it back afterwards."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from perpwatch.core import memory

pytestmark = pytest.mark.skipif(memory._LIBC is None or not hasattr(memory._LIBC, "mallinfo2"),
                                reason="glibc >= 2.33 only")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap() -> dict[str, int]:
    """MiB: mmapped (blocks outside the heap), arena (the heap), free (free bytes kept in the heap)."""
    memory._LIBC.mallinfo2.restype = _MallInfo2
    m = memory._LIBC.mallinfo2()
    return {"mmapped": m.hblkhd >> 20, "arena": m.arena >> 20, "free": m.fordblks >> 20}


def test_a_large_array_is_reused_inside_and_given_back_after():
    # deltas, not levels: the process (a whole test session) holds other blocks of its own
    h0 = _heap()
    a = np.ones(1 << 24)  # 128 MiB
    assert _heap()["mmapped"] - h0["mmapped"] >= 128  # outside: glibc maps it on its own ...
    del a
    assert _heap()["mmapped"] - h0["mmapped"] < 128  # ... and unmaps it on free
    with memory.reuse_freed_memory() as applies:
        assert applies
        with memory.reuse_freed_memory():  # re-entrant: the inner block changes nothing on its way out
            a = np.ones(1 << 24)
        h1 = _heap()
        assert h1["mmapped"] - h0["mmapped"] < 128  # from the heap, not a mapping of its own
        del a
        assert _heap()["free"] >= 128  # kept for the next array
        b = np.ones(1 << 24)
        assert _heap()["arena"] - h1["arena"] < 64  # the next array reuses it: the heap did not grow again
        del b
    c = np.ones(1 << 24)
    assert _heap()["mmapped"] - h0["mmapped"] >= 128  # the defaults are back: glibc maps large arrays again
    del c
