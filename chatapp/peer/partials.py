"""What the partials folder holds, for a user to see and to clear (issue 13 item 4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Partial:
    """A kept partial copy: ``peer``, ``name`` and ``size`` are those of the offer it came from
    ("" and 0 when this process did not see that offer, e.g. after a restart)."""

    peer: str
    name: str
    size: int
    kept: int  # bytes in the partial file
    modified: float  # its mtime
    path: str
