"""Freed memory kept for reuse, on glibc (Linux).

unweave's CPU work allocates and frees the same large tensors again and again (the logits
over the vocabulary of every step a quantisation search tries, each batch's codes). glibc
serves a block above its mmap threshold (at most 32 MiB by default) with a fresh mapping
and unmaps it when freed, so every reuse faults each page in again: on a 2-core machine
a fifth of `unweave mdl`'s CPU time went to the kernel doing that. With higher thresholds
freed blocks stay in the heap for the next allocation of their size. The `unweave`
command sets them at start (`UNWEAVE_KEEP_FREED_MEMORY=0` leaves glibc's defaults);
elsewhere (macOS, Windows, musl) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, from glibc's malloc.h
MMAP_THRESHOLD = 2**30  # blocks under 1 GiB come from the heap
TRIM_THRESHOLD = 2**31 - 1  # free memory at the heap's top is kept up to 2 GiB (mallopt takes an int)


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True when both were set."""
    if not sys.platform.startswith("linux") or os.environ.get("UNWEAVE_KEEP_FREED_MEMORY") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
