"""The download folder: partial files in a hidden folder, and safe, atomic placement of finished files.

Every path built here is the folder joined with a name that has no path
separator, so no byte lands outside it. Links are never followed: partials are
opened with ``O_NOFOLLOW`` (and ``O_EXCL`` when new), and a finished file is
put in place with ``os.link``, which fails rather than replace anything that
exists under the name, a planted link included.
"""

from __future__ import annotations

import errno
import os
import stat

from twisted.logger import Logger

from chatapp.peer.names import numbered_names
from chatapp.wire import escape_for_terminal

log = Logger()

PARTIAL_DIR = ".chatapp-partial"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)
MAX_NUMBERED = 10_000


class DownloadDir:
    """Where received files go. ``write`` is the one place bytes hit the disk (tests may replace it)."""

    def __init__(self, root: str, max_partial_bytes: int) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.partial_root = os.path.join(self.root, PARTIAL_DIR)
        self.max_partial_bytes = max_partial_bytes

    def ensure(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        try:
            os.mkdir(self.partial_root, 0o700)
        except FileExistsError:
            pass
        info = os.lstat(self.partial_root)
        if not stat.S_ISDIR(info.st_mode):
            raise OSError(errno.ENOTDIR, "partial folder is not a folder", self.partial_root)

    def partial_path(self, key: str) -> str:
        return os.path.join(self.partial_root, key)

    def kept_size(self, path: str) -> int | None:
        """Size of a kept partial at ``path``, or None; anything but a plain file there is removed."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            self.remove(path)
            return None
        return info.st_size

    def open_new(self, path: str) -> int:
        self.remove(path)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o600)

    def open_append(self, path: str, expected_size: int) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _BINARY)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != expected_size:
            os.close(fd)
            raise OSError(errno.ESTALE, "partial file changed", path)
        return fd

    def open_read(self, path: str) -> int:
        return os.open(path, os.O_RDONLY | _NOFOLLOW | _BINARY)

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def place(self, partial: str, name: str) -> str:
        """Give the finished ``partial`` its final name, or ``name (1).ext``, ...; return the path.

        ``os.link`` fails if anything exists under the name, even if it
        appeared a moment ago, so nothing is ever replaced.
        """
        for count, candidate in enumerate(numbered_names(name)):
            if count > MAX_NUMBERED:
                break
            target = os.path.join(self.root, candidate)
            try:
                os.link(partial, target)
            except FileExistsError:
                continue
            self.remove(partial)
            return target
        raise OSError(errno.EEXIST, "no free name", name)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warn("cannot remove {path}: {error}", path=escape_for_terminal(path), error=escape_for_terminal(str(e)))

    def prune(self, in_use: set[str]) -> None:
        """Delete the oldest kept partials (not in use) until they total at most max_partial_bytes."""
        try:
            names = os.listdir(self.partial_root)
        except OSError:
            return
        entries = []
        total = 0
        for name in names:
            path = os.path.join(self.partial_root, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            total += info.st_size
            if path not in in_use:
                entries.append((info.st_mtime, path, info.st_size))
        entries.sort()
        for _, path, size in entries:
            if total <= self.max_partial_bytes:
                break
            self.remove(path)
            total -= size
