"""A byte framer for the peer protocol: lines, or exactly n raw bytes, switched at any offset.

Unlike ``LineReceiver.setRawMode`` this never copies the unread buffer when
the mode changes: it keeps one buffer and an offset into it. When everything
fed before has been taken (the usual case while a file streams), the new
segment itself becomes the buffer and raw pieces are zero-copy views of it;
only a leftover (a line or block cut by the segment's end) is copied, once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    """One complete line, without its CR LF or LF."""

    data: bytes


class Raw:
    """A piece of the raw block being read; ``last`` is True for the piece that completes it.

    ``data`` may be a memoryview of the fed segment: use it at once (write it,
    hash it) or copy it with ``bytes()``. A plain slotted class, not a frozen dataclass: one is made
    per TLS record of a file (64 Ki a GiB) and a frozen dataclass costs three times as much to make.
    """

    __slots__ = ("data", "last")

    def __init__(self, data: bytes | memoryview, last: bool) -> None:
        self.data = data
        self.last = last

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Raw) and (self.data, self.last) == (other.data, other.last)

    def __repr__(self) -> str:
        return f"Raw({len(self.data)} bytes, last={self.last})"


class TooLong:
    """The peer sent more than the longest line allowed without an LF."""


TOO_LONG = TooLong()
Item = Line | Raw | TooLong


class Framer:
    """Feed bytes with :meth:`feed`, then take items with :meth:`next` until it returns None.

    After a line, the caller may call :meth:`expect_raw` (n bytes); the next
    items are then :class:`Raw` pieces of exactly n bytes in total, and lines
    resume right after them.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer: bytes | bytearray = b""
        self._pos = 0  # first unread byte
        self._scanned = 0  # bytes after _pos already known to hold no LF
        self._raw_left = 0
        self._broken = False

    @property
    def raw_left(self) -> int:
        return self._raw_left

    def feed(self, data: bytes) -> None:
        if self._broken:
            return
        if not isinstance(data, bytes):
            data = bytes(data)  # never keep (and later resize) a caller's mutable buffer
        buffer = self._buffer
        if self._pos == len(buffer):
            self._buffer = data  # all taken: the segment is the buffer, no copy
        elif isinstance(buffer, bytearray):
            del buffer[: self._pos]  # raw pieces of a bytearray are copies, so it may be resized
            buffer += data
        else:
            leftover = bytearray(memoryview(buffer)[self._pos :])
            leftover += data
            self._buffer = leftover
        self._pos = 0

    def expect_raw(self, count: int) -> None:
        """Read the next ``count`` bytes as a raw block (count >= 1)."""
        if count < 1:
            raise ValueError("a raw block has at least one byte")
        self._raw_left = count
        self._scanned = 0

    def next(self) -> Item | None:
        if self._broken:
            return None
        buffer = self._buffer
        available = len(buffer) - self._pos
        if self._raw_left:
            if not available:
                return None
            take = min(available, self._raw_left)
            start = self._pos
            piece: bytes | memoryview
            if isinstance(buffer, bytes):
                piece = buffer if take == len(buffer) else memoryview(buffer)[start : start + take]
            else:
                piece = bytes(buffer[start : start + take])
            self._pos += take
            self._raw_left -= take
            return Raw(piece, self._raw_left == 0)
        end = buffer.find(b"\n", self._pos + self._scanned)
        if end < 0:
            self._scanned = available
            if available > self.max_line + 2:
                return self._break()
            return None
        start = self._pos
        line_end = end - 1 if end > start and buffer[end - 1] == 0x0D else end
        if line_end - start > self.max_line:
            return self._break()
        self._pos = end + 1
        self._scanned = 0
        return Line(bytes(buffer[start:line_end]))

    def _break(self) -> TooLong:
        self._broken = True
        self._buffer = b""
        self._pos = 0
        return TOO_LONG
