"""perpwatch.core.memory: a build reuses freed memory from glibc's heap and gives it back afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from perpwatch.core import memory

pytestmark = pytest.mark.skipif(memory._LIBC is None or not hasattr(memory._LIBC, "mallinfo2"),
                                reason="glibc >= 2.33 only")

# Run in a fresh interpreter: in a test session earlier builds leave free chunks in the heap that glibc
# serves before it maps anything, so "outside a build a large array is mapped" holds only in a clean process.
PROBE = r'''
import ctypes, json
import numpy as np
from perpwatch.core import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]

memory._LIBC.mallinfo2.restype = MallInfo2

def heap():
    m = memory._LIBC.mallinfo2()
    return {"mmapped": m.hblkhd >> 20, "arena": m.arena >> 20, "free": m.fordblks >> 20}

out = {"before": heap()}
a = np.ones(1 << 24)  # 128 MiB
out["outside"] = heap()
del a
out["outside_freed"] = heap()
with memory.reuse_freed_memory() as applies:
    out["applies"] = applies
    with memory.reuse_freed_memory():  # re-entrant: the inner block changes nothing on its way out
        a = np.ones(1 << 24)
    out["inside"] = heap()
    del a
    out["inside_freed"] = heap()
    b = np.ones(1 << 24)
    out["inside_again"] = heap()
    del b
out["after_exit"] = heap()
c = np.ones(1 << 24)
out["after"] = heap()
print(json.dumps(out))
'''


def test_a_large_array_is_reused_inside_and_given_back_after():
    got = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    h = json.loads(got.stdout.strip().splitlines()[-1])
    base = h["before"]["mmapped"]
    assert h["outside"]["mmapped"] - base >= 128  # outside a build glibc maps a large array on its own ...
    assert h["outside_freed"]["mmapped"] - base < 128  # ... and unmaps it on free
    assert h["applies"] is True
    assert h["inside"]["mmapped"] - base < 128 and h["inside"]["arena"] >= 128  # inside: from the heap
    assert h["inside_freed"]["free"] >= 128  # kept for the next array
    assert h["inside_again"]["arena"] - h["inside"]["arena"] < 64  # which reuses it: the heap did not grow
    assert h["after_exit"]["free"] < 128 or h["after_exit"]["arena"] < h["inside"]["arena"]  # trimmed on exit
    assert h["after"]["mmapped"] - base >= 128  # the defaults are back: a large array is mapped again
