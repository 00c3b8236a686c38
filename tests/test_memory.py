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


# Threads allocate after the import; malloc_info lists one <heap nr=...> per arena.
ARENAS = r'''
import ctypes, os, sys, tempfile, threading
import numpy as np
if sys.argv[1] == "perpwatch":
    import perpwatch  # noqa: F401  (sets the arena limit)

def work():
    keep = [np.ones(1 << 17) for _ in range(8)]  # 1 MiB arrays: from the thread's arena, below the mmap threshold
    barrier.wait()  # every thread holds its memory at once, so glibc cannot hand one thread's arena to the next
    del keep

barrier = threading.Barrier(4)
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = os.path.join(tempfile.mkdtemp(), "malloc_info.xml")
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
print(open(path).read().count("<heap nr="))
'''


def _arenas(first_import: str, **env: str) -> int:
    import os

    got = subprocess.run([sys.executable, "-c", ARENAS, first_import], capture_output=True, text=True, check=True,
                         env={**{k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")},
                              **env})
    return int(got.stdout.strip().splitlines()[-1])


def test_threads_share_the_main_arena_once_perpwatch_is_imported():
    # control: numpy alone, glibc's defaults give the four threads arenas of their own
    assert _arenas("numpy") > 1
    # importing perpwatch first sets M_ARENA_MAX = 1: the threads allocate from the main arena (and reuse its memory)
    assert _arenas("perpwatch") == 1
    # a limit the environment sets is the user's: perpwatch leaves it as it is
    assert _arenas("perpwatch", MALLOC_ARENA_MAX="3") > 1
    assert _arenas("perpwatch", GLIBC_TUNABLES="glibc.malloc.arena_max=3") > 1


def test_flow_runs_start_with_one_arena(tmp_path):
    from perpwatch import deploy

    # the worker's environment (and so every flow run's) sets it from process start, where glibc reads it
    assert deploy.environment(tmp_path, "http://127.0.0.1:1/api", base={})["MALLOC_ARENA_MAX"] == "1"
    assert deploy.environment(tmp_path, "http://127.0.0.1:1/api", base={"MALLOC_ARENA_MAX": "4"})["MALLOC_ARENA_MAX"] == "4"
    assert _arenas("numpy", MALLOC_ARENA_MAX="1") == 1
