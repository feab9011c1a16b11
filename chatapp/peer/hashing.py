"""Hash the first bytes of a file in slices, one slice per reactor turn, so the reactor never blocks long."""

from __future__ import annotations

import hashlib
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

HASH_SLICE = 1024 * 1024


class ShortFile(OSError):
    """The file ended before the bytes to hash."""


def hash_prefix(
    clock: IReactorTime, source: IO[bytes], length: int, slice_size: int = HASH_SLICE
) -> defer.Deferred[Any]:
    """Read ``length`` bytes from ``source`` (from its current position) into a SHA-256.

    Fires with the hash object, left open so the caller can go on updating it,
    and ``source`` positioned right after those bytes. Fails with
    :class:`ShortFile` or the ``OSError`` of the read. Cancelling stops it.
    """
    hasher = hashlib.sha256()
    left = length
    pending: list[IDelayedCall] = []

    def cancel(_: defer.Deferred[Any]) -> None:
        for call in pending:
            if call.active():
                call.cancel()

    result: defer.Deferred[Any] = defer.Deferred(cancel)

    def step() -> None:
        nonlocal left
        pending.clear()
        try:
            data = source.read(min(slice_size, left))
        except OSError as e:
            result.errback(e)
            return
        if not data:
            result.errback(ShortFile(f"{left} bytes missing"))
            return
        hasher.update(data)
        left -= len(data)
        if left:
            pending.append(clock.callLater(0, step))
        else:
            result.callback(hasher)

    if length == 0:
        result.callback(hasher)
    else:
        pending.append(clock.callLater(0, step))
    return result


def hash_file_prefix(fd: int, length: int, slice_size: int = HASH_SLICE) -> Any:
    """Blocking (run it off the reactor thread): the SHA-256 object of the first ``length`` bytes of ``fd``,
    which it closes. Raises :class:`ShortFile` or the ``OSError`` of a read."""
    import os

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
