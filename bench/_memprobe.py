"""Run a server with a memory probe: on SIGUSR1 it writes what its process holds to a report file.

    python bench/_memprobe.py REPORT_DIR [--trace FRAMES] -- twistd ARGS... | lineserver ARGS...

Each SIGUSR1 runs a full garbage collection and writes ``REPORT_DIR/<k>.json`` (k = 0, 1, ...; written
under a temporary name and renamed, so a reader never sees half a file): VmRSS, glibc's ``mallinfo2()``
(heap in use, free, mmapped), pymalloc's statistics (``sys._debugmallocstats()``), the count of live
Python objects of each type, and the same RSS and ``mallinfo2()`` again after ``malloc_trim(0)`` (what
of the free heap malloc could give back).  With
``--trace FRAMES`` tracemalloc runs from before the server is imported, keeping FRAMES frames per
allocation, and each report also dumps a snapshot to ``REPORT_DIR/<k>.snapshot``; bench/idle_memory.py
diffs two of them.  Tracing costs memory of its own (its traces live on the C heap), so the heap and
RSS figures come from untraced runs.

The probe runs inside the signal handler, between two bytecodes of the reactor's thread: nothing else of
the server runs meanwhile, so the numbers are of one instant.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

BENCH = Path(__file__).resolve().parent
MALLINFO2_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS]


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = _MallInfo2
_libc.malloc_trim.argtypes = [ctypes.c_size_t]


def mallinfo2() -> dict[str, int]:
    info = _libc.mallinfo2()
    return {name: int(getattr(info, name)) for name in MALLINFO2_FIELDS}


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pymalloc_stats() -> str:
    """``sys._debugmallocstats()``, which CPython prints to the C stderr, captured as text."""
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        return out.read().decode(errors="replace")


def _types() -> dict[str, int]:
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    return dict(counts)


class Probe:
    def __init__(self, directory: Path, tracing: bool) -> None:
        self.directory = directory
        self.tracing = tracing
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        gc.collect()
        report: dict[str, object] = {}
        if self.tracing:
            # First, before this report's own objects exist; dumped to a file so no snapshot stays in memory.
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(str(self.directory / f"{self.count}.snapshot"))
            del snapshot
            gc.collect()
            report["tracemalloc_kib"] = tracemalloc.get_tracemalloc_memory() // 1024
        report["rss_kib"] = rss_kib()
        report["mallinfo2"] = mallinfo2()
        report["pymalloc"] = pymalloc_stats()
        report["types"] = _types()
        _libc.malloc_trim(0)
        report["trimmed_rss_kib"] = rss_kib()
        report["trimmed_mallinfo2"] = mallinfo2()
        partial = self.directory / f"{self.count}.json.part"
        partial.write_text(json.dumps(report))
        partial.rename(self.directory / f"{self.count}.json")
        self.count += 1


def main() -> None:
    args = sys.argv[1:]
    directory = Path(args.pop(0))
    frames = 0
    if args[0] == "--trace":
        frames = int(args[1])
        args = args[2:]
    if args.pop(0) != "--":
        raise SystemExit(__doc__)
    if frames:
        tracemalloc.start(frames)
    signal.signal(signal.SIGUSR1, Probe(directory, bool(frames)))
    program, *rest = args
    if program == "twistd":
        from twisted.scripts.twistd import run

        sys.argv = ["twistd", *rest]
        run()
    elif program == "lineserver":
        sys.argv = [str(BENCH / "_lineserver.py"), *rest]
        runpy.run_path(str(BENCH / "_lineserver.py"), run_name="__main__")
    else:
        raise SystemExit(f"unknown server {program!r}")


if __name__ == "__main__":
    main()
