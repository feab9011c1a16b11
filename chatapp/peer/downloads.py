"""The download folder: partial files in a hidden folder, and safe, atomic placement of finished files.

Every file operation here is relative to a descriptor of the download folder
or of its partial folder (``dir_fd``), with a name that has no path
separator, so no byte lands outside them even if a folder is swapped for a
link meanwhile. Links are never followed: the partial folder is opened with
``O_NOFOLLOW``, partials with ``O_NOFOLLOW`` (and ``O_EXCL`` when new), and a
finished file is put in place with ``os.link`` (not following links), which
fails rather than replace anything that exists under the name, a planted link
included.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from twisted.logger import Logger

from chatapp.peer.names import numbered_names
from chatapp.wire import escape_for_terminal

log = Logger()

PARTIAL_DIR = ".chatapp-partial"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_BINARY = getattr(os, "O_BINARY", 0)
MAX_NUMBERED = 10_000
# Pieces per writev call: POSIX promises at least 16, Linux takes 1,024.
IOV_LIMIT = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


class DownloadDir:
    """Where received files go. ``write`` is the one place bytes hit the disk and ``fsync`` the one
    place they are made durable (tests may replace either). Both may run on a writer thread.

    Partials are named by ``path`` (for messages) but always reached through
    a descriptor of the partial folder, opened for each operation (so nothing
    stays open, and a folder recreated meanwhile is simply used).
    """

    def __init__(self, root: str, max_partial_bytes: int, max_partials: int = 64) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.partial_root = os.path.join(self.root, PARTIAL_DIR)
        self.max_partial_bytes = max_partial_bytes
        self.max_partials = max_partials

    def ensure(self) -> None:
        """Create the folders if needed; raises OSError if the partial folder is not a real folder."""
        os.makedirs(self.root, exist_ok=True)
        with self._folders(create=True):
            pass

    @contextmanager
    def _folders(self, create: bool = False) -> Iterator[tuple[int, int]]:
        """(download folder fd, partial folder fd); the partial folder is never reached through a link."""
        root_fd = os.open(self.root, os.O_RDONLY | _DIRECTORY)
        try:
            if create:
                try:
                    os.mkdir(PARTIAL_DIR, 0o700, dir_fd=root_fd)
                except FileExistsError:
                    pass
            partial_fd = os.open(PARTIAL_DIR, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=root_fd)
            try:
                yield root_fd, partial_fd
            finally:
                os.close(partial_fd)
        finally:
            os.close(root_fd)

    def partial_path(self, key: str) -> str:
        return os.path.join(self.partial_root, key)

    def kept_size(self, path: str) -> int | None:
        """Size of a kept partial at ``path``, or None; anything but a plain file there is removed."""
        try:
            with self._folders() as (_, partials):
                info = os.stat(os.path.basename(path), dir_fd=partials, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            self.remove(path)
            return None
        return info.st_size

    def open_new(self, path: str) -> int:
        self.remove(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY
        with self._folders() as (_, partials):
            return os.open(os.path.basename(path), flags, 0o600, dir_fd=partials)

    def open_append(self, path: str, expected_size: int) -> int:
        with self._folders() as (_, partials):
            fd = os.open(os.path.basename(path), os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _BINARY, dir_fd=partials)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != expected_size:
            os.close(fd)
            raise OSError(errno.ESTALE, "partial file changed", path)
        return fd

    def open_read(self, path: str) -> int:
        with self._folders() as (_, partials):
            return os.open(os.path.basename(path), os.O_RDONLY | _NOFOLLOW | _BINARY, dir_fd=partials)

    def write(self, fd: int, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """Write ``pieces`` one after another at ``fd`` (blocking: run it off the reactor thread).

        One ``writev`` for up to :data:`IOV_LIMIT` pieces; a short write goes on from where it stopped.
        """
        views = [memoryview(piece) for piece in pieces if len(piece)]
        first = 0  # views before it are written
        while first < len(views):
            written = os.writev(fd, views[first : first + IOV_LIMIT])
            while first < len(views) and written >= len(views[first]):
                written -= len(views[first])
                first += 1
            if written:
                views[first] = views[first][written:]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def place(self, partial: str, name: str) -> str:
        """Give the finished ``partial`` its final name, or ``name (1).ext``, ...; return the path.

        ``os.link`` fails if anything exists under the name, even if it
        appeared a moment ago, so nothing is ever replaced; it does not follow
        a link at the source either. The download folder is fsynced before
        the partial's name goes, so after a crash the file is under one name
        or the other. (The caller fsyncs the file itself first.) Blocking:
        run it off the reactor thread.
        """
        source = os.path.basename(partial)
        with self._folders() as (root, partials):
            for count, candidate in enumerate(numbered_names(name)):
                if count > MAX_NUMBERED:
                    break
                try:
                    os.link(source, candidate, src_dir_fd=partials, dst_dir_fd=root, follow_symlinks=False)
                except FileExistsError:
                    continue
                self.fsync(root)
                os.unlink(source, dir_fd=partials)
                return os.path.join(self.root, candidate)
        raise OSError(errno.EEXIST, "no free name", name)

    def remove(self, path: str) -> bool:
        """Delete the partial at ``path`` (never through a link); True if it was there and is gone."""
        try:
            with self._folders() as (_, partials):
                os.unlink(os.path.basename(path), dir_fd=partials)
        except FileNotFoundError:
            return False
        except OSError as e:
            log.warn("cannot remove {path}: {error}", path=escape_for_terminal(path), error=escape_for_terminal(str(e)))
            return False
        return True

    def listing(self) -> list[tuple[str, int, float]]:
        """(path, size, mtime) of every plain file in the partial folder (bounded by prune: quick)."""
        found: list[tuple[str, int, float]] = []
        try:
            with self._folders() as (_, partials):
                for name in os.listdir(partials):
                    try:
                        info = os.stat(name, dir_fd=partials, follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(info.st_mode):
                        found.append((os.path.join(self.partial_root, name), info.st_size, info.st_mtime))
        except OSError:
            return []
        return found

    def prune(self, in_use: set[str]) -> None:
        """Delete the oldest kept partials (not in use) until at most max_partials total at most max_partial_bytes."""
        try:
            with self._folders() as (_, partials):
                self._prune(partials, {os.path.basename(p) for p in in_use})
        except OSError:
            return

    def _prune(self, partials: int, in_use: set[str]) -> None:
        entries = []
        total = 0
        for name in os.listdir(partials):
            try:
                info = os.stat(name, dir_fd=partials, follow_symlinks=False)
            except OSError:
                continue
            total += info.st_size
            if name not in in_use:
                entries.append((info.st_mtime, name, info.st_size))
        entries.sort()
        count = len(entries) + len(in_use)
        for _, name, size in entries:
            if total <= self.max_partial_bytes and count <= self.max_partials:
                break
            try:
                os.unlink(name, dir_fd=partials)
            except OSError:
                continue
            total -= size
            count -= 1
