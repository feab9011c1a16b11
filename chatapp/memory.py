"""Freed memory kept for the next bytes, instead of given back to the system and faulted in again.

A received file passes through buffers of a few hundred KiB (each socket read, the TLS layer's joined
records), megabytes of which wait for the disk at a time and are then freed together. glibc gives such
a stretch back to the system at once (its trim threshold follows the largest buffer freed, a few
hundred KiB) and asks for it again a moment later: a page fault and a zeroed page per 4 KiB, 25,000 to
130,000 a GiB in ``bench/transfer.py`` (the minimal Twisted receiver, which writes each record at once:
about 500). :func:`keep_freed_memory` raises the thresholds so that buffers up to :data:`HEAP_UP_TO`
come from the heap and up to :data:`KEEP_FREE` of freed heap stays with the process; measured, 1,800
faults a GiB and 4-15 % less receiver CPU (BENCHMARKS.md). The program calls it; the library does not
(it is the process's allocator, not the library's).
"""

from __future__ import annotations

import ctypes
import sys

from chatapp.peer.backlog import LIMIT

MiB = 1024 * 1024
# Allocations below this come from the heap, not from mmap (glibc's own limit for it is 32 MiB).
HEAP_UP_TO = 4 * MiB
# Freed heap kept at its top: as much as received files may hold waiting for the disk in all, which the
# process may use anyway.
KEEP_FREE = LIMIT
_M_TRIM_THRESHOLD = -1  # malloc.h
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (see the module); False where there is no glibc ``mallopt`` to ask."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library to load, or one without mallopt (musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_UP_TO) == 1 and mallopt(_M_TRIM_THRESHOLD, KEEP_FREE) == 1)
