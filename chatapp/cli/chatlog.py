"""``--log-dir``: the lines of each chat appended to ``DIR/<user>.log`` (mode 0600), written off the reactor thread.

Lines are queued and written in batches by a worker thread, one batch at a
time, each file opened, appended to and closed (no descriptor stays open per
peer).  The queue is bounded (:data:`MAX_PENDING_BYTES`): a disk that cannot
keep up loses lines from the log, said once, and never stalls the chat.  The
lines are the ones shown on screen, already escaped, so a log holds no
terminal control sequence.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from chatapp.runner import ReactorPool
from chatapp.wire import fold_name, valid_username

log = Logger()

MAX_PENDING_BYTES = 1024 * 1024  # lines waiting for the disk; beyond that they are dropped from the log

Batch = list[tuple[str, bytes]]


def write_batch(directory: str, batch: Batch) -> None:
    """Append each file's lines (in the worker thread)."""
    by_file: dict[str, list[bytes]] = {}
    for name, data in batch:
        by_file.setdefault(name, []).append(data)
    for name, chunks in by_file.items():
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(os.path.join(directory, name), flags, 0o600)
        try:
            os.write(fd, b"".join(chunks))
        finally:
            os.close(fd)


class ChatLog:
    """Appends chat lines to one file per peer, in order, without waiting for the disk on the reactor thread."""

    def __init__(
        self,
        directory: str,
        reactor: Any,
        in_thread: Callable[..., defer.Deferred[None]] | None = None,
        now: Callable[[], float] = time.time,
        max_pending: int = MAX_PENDING_BYTES,
    ) -> None:
        self.directory = os.path.expanduser(directory)
        self.reactor = reactor
        self.now = now
        self.max_pending = max_pending
        self._in_thread = in_thread or self._thread_pool
        self._pending: Batch = []
        self._pending_bytes = 0
        self._writing: defer.Deferred[None] | None = None
        self._dropped = 0
        self._failed = False
        self._idle: list[defer.Deferred[None]] = []

    def _thread_pool(self, f: Callable[..., None], *args: Any) -> defer.Deferred[None]:
        return ReactorPool(self.reactor).run(f, *args)

    def open(self) -> None:
        """Create the folder (mode 0700) before the session starts, so a bad --log-dir fails at once."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def write(self, peer: str, line: str) -> None:
        if self._failed or not valid_username(peer):  # names are checked at the server; this keeps paths plain
            return
        stamp = time.strftime("%Y-%m-%d ", time.localtime(self.now()))
        data = (stamp + line + "\n").encode("utf-8", "replace")
        if self._pending_bytes + len(data) > self.max_pending:
            if not self._dropped:
                log.warn("chat log: the disk is behind by {limit} bytes; lines are left out", limit=self.max_pending)
            self._dropped += 1
            return
        self._pending.append((fold_name(peer) + ".log", data))
        self._pending_bytes += len(data)
        self._next()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def _next(self) -> None:
        if self._writing is not None:
            return
        if not self._pending:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
            return
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        d = self._in_thread(write_batch, self.directory, batch)
        self._writing = d
        d.addErrback(self._write_failed)
        d.addBoth(self._written)

    def _write_failed(self, failure: Any) -> None:
        self._failed = True  # one message, then no more tries: a full or read-only disk would fail every line
        self._pending, self._pending_bytes = [], 0
        log.failure("chat log: cannot write to {directory}; logging stops", failure, directory=self.directory)

    def _written(self, _: object) -> None:
        self._writing = None
        self._next()

    def stop(self) -> defer.Deferred[None]:
        """Fires once every queued line is written (or dropped after a failure)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._writing is None and not self._pending:
            d.callback(None)
        else:
            self._idle.append(d)
        return d
