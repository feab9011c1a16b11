"""keep_freed_memory: freed buffers of a received file are used again without page faults (glibc)."""

from __future__ import annotations

import json
import subprocess
import sys

# What a receiver does: buffers of a socket read's size pile up while the disk catches up, then go together.
PROBE = """
import json, resource, sys
from chatapp.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round in range(30):
    if round == 10:
        start = faults()
    held = [bytes(256 * 1024 + round) for _ in range(32)]  # 8 MiB waiting for the disk
    del held
print(json.dumps({"kept": kept, "faults": faults() - start}))
"""


def probe(mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_freed_buffers_are_used_again_without_faulting_the_memory_in_again() -> None:
    default, kept = probe("default"), probe("keep")
    assert kept["kept"] is True
    # 20 rounds of 8 MiB: given back and faulted in each time (2,048 pages a round) unless kept
    assert int(default["faults"]) > 10 * 1000, default  # type: ignore[call-overload]
    assert int(kept["faults"]) < 1000, kept  # type: ignore[call-overload]
