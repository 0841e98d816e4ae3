"""glibc malloc tuning for inference loops.

With default glibc settings, every large per-edge tensor is mmap'ed and returned to the
kernel on each call; on the 960-atom acac box that doubled MD step time (kernel time), for
MACE and for mlip alike. Keeping large blocks on the heap (M_MMAP_MAX = 0) and never
trimming it (a huge M_TRIM_THRESHOLD) is what ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000`` does from the environment; this does it in-process.
It changes a process-wide setting, so the library never calls it: a script calls it for its
own process, and ``mlip md`` does for its own (``--no-malloc-tuning`` or
``MLIP_NO_MALLOC_TUNING=1`` to opt out). A no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_done = False


def tune_glibc_malloc() -> bool:
    """Apply the settings once per process; returns whether they are in effect."""
    global _done
    if _done:
        return True
    if os.environ.get("MLIP_NO_MALLOC_TUNING"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _done = ok
    return ok
