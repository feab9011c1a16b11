"""Receiving files: the incoming transfer, writing into its partial file and hashing as bytes arrive."""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from chatapp.peer.states import Direction
from chatapp.peer.transfer import Transfer

if TYPE_CHECKING:
    from chatapp.peer.downloads import DownloadDir
    from chatapp.peer.session import PeerSession


class IncomingTransfer(Transfer):
    """``name`` is the cleaned name (``None`` never: bad names are rejected before this exists)."""

    def __init__(
        self, session: PeerSession, transfer_id: str, offered_name: str, name: str, size: int, partial: str
    ) -> None:
        super().__init__(session, transfer_id, name, size, Direction.RECEIVE)
        self.offered_name = offered_name
        self.partial = partial  # path of the partial file
        self.fd: int | None = None
        self.hasher: Any = hashlib.sha256()
        self.ready = False  # ACCEPT has been sent: DATA may come
        self.preparing: Any = None  # Deferred of hashing a kept partial before ACCEPT

    def open(self, downloads: DownloadDir, offset: int) -> None:
        """Open the partial: new (offset 0) or to append after ``offset`` kept bytes."""
        if offset:
            self.fd = downloads.open_append(self.partial, offset)
        else:
            self.fd = downloads.open_new(self.partial)

    def write(self, downloads: DownloadDir, data: bytes | memoryview) -> None:
        assert self.fd is not None
        downloads.write(self.fd, data)
        self.hasher.update(data)

    def close_file(self) -> None:
        if self.preparing is not None:
            self.preparing.cancel()
            self.preparing = None
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
