"""Buffers of one size that hold received file bytes until they are written, then hold the next ones.

Why not keep the pieces a session hands over: each is part of a new object
per socket read (Twisted's read, the TLS layer's joined records), and held
until its write, megabytes at a time, then freed. The C allocator then gives
that memory back to the system and asks for it again: a page fault and a
zeroed page per 4 KiB, 30,000 to 100,000 a GiB in ``bench/transfer.py``
(the ceiling, which writes each record at once: about 600). Copying each
piece into a slab kept for the next one costs a memcpy of bytes still in
the cache, and what a queue pins is what it counts, plus its last slab.

A :class:`SlabPool` is shared by the writers of a factory. It keeps at most
``keep`` free slabs for them, and none once no writer is open.
"""

from __future__ import annotations

SLAB = 256 * 1024
# Free slabs a pool keeps for the next bytes: what one fast transfer cycles through, writes in flight included.
KEEP = 64


class SlabPool:
    """Free slabs of ``size`` bytes, for the :class:`~chatapp.peer.writer.FileWriter` s that use it."""

    def __init__(self, size: int = SLAB, keep: int = KEEP) -> None:
        if size < 1 or keep < 0:
            raise ValueError("a slab holds at least a byte, and a pool keeps no fewer than none")
        self.size = size
        self.keep = keep
        self._free: list[bytearray] = []
        self._users = 0

    @property
    def free(self) -> int:
        """Slabs kept for the next bytes."""
        return len(self._free)

    def take(self) -> bytearray:
        """A slab of ``size`` bytes, to fill from its start; its old contents are to be overwritten."""
        return self._free.pop() if self._free else bytearray(self.size)

    def give(self, slab: bytearray) -> None:
        """``slab`` was written and no write uses it any more."""
        if len(self._free) < self.keep and self._users and len(slab) == self.size:
            self._free.append(slab)

    def attach(self) -> None:
        """A writer opened: it may take and give slabs until :meth:`detach`."""
        self._users += 1

    def detach(self) -> None:
        """A writer closed; with the last one gone the free slabs are let go (a pool holds nothing idle)."""
        self._users -= 1
        if self._users <= 0:
            self._users = 0
            self._free.clear()
