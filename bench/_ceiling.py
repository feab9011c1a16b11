"""The ceiling's receiver, shared by bench/transfer.py and bench/receive_path.py: the least a Twisted
program can do to take a file (a raw-mode ``LineReceiver`` writing and hashing each piece as it comes)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from twisted.protocols.basic import LineReceiver


class CeilingReceiver(LineReceiver):
    """Takes ``<word> <size>\\n`` and then ``size`` raw bytes into ``folder/name`` (through a partial file);
    ``done(digest)`` is called with the hex SHA-256 once the file has its name."""

    delimiter = b"\n"

    def __init__(self, folder: str, name: str, done: Callable[[str], None]) -> None:
        self.folder = folder
        self.name = name
        self.done = done

    def lineReceived(self, line: bytes) -> None:
        self.left = int(line.split()[1])
        self.hasher = hashlib.sha256()
        self.partial = os.path.join(self.folder, "." + self.name + ".part")
        self.fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.hasher.update(data)
        self.left -= len(data)
        if self.left == 0:
            os.close(self.fd)
            os.rename(self.partial, os.path.join(self.folder, self.name))
            self.done(self.hasher.hexdigest())
