"""Hash the first bytes of a file (a kept partial, or a file we send again) for a resume: blocking, so it
runs on the disk runner (``PeerFactory.prefix_hash``, ``PeerFactory.hash_source``), never the reactor."""

from __future__ import annotations

import hashlib
import os
from typing import Any

HASH_SLICE = 1024 * 1024  # bytes read and hashed at a time


class ShortFile(OSError):
    """The file ended before the bytes to hash."""


def hash_file_prefix(fd: int, length: int, slice_size: int = HASH_SLICE) -> Any:
    """Blocking (run it off the reactor thread): the SHA-256 object of the first ``length`` bytes of ``fd``,
    which it closes. Raises :class:`ShortFile` or the ``OSError`` of a read."""
    hasher = hashlib.sha256()
    try:
        left = length
        while left:
            data = os.read(fd, min(slice_size, left))
            if not data:
                raise ShortFile(f"{left} bytes missing")
            hasher.update(data)
            left -= len(data)
    finally:
        os.close(fd)
    return hasher
