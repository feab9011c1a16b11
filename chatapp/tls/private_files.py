"""Files only their owner can read, written so that no reader ever sees half of one.

Every write goes to a temporary file in the same folder (created 0600 with O_EXCL, so nothing at its name
is followed or reused), is flushed to disk, and then takes the final name in one step: ``os.replace``
for a rewrite, ``os.link`` for a first creation that must not overwrite a file another process made in
the meantime. Neither follows a symbolic link at the final name. These are blocking calls that take
milliseconds (fsync): run them at start-up or in a thread, not in a busy reactor loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700


class SymlinkRefused(OSError):
    """A private file's name is a symbolic link; we neither read nor write through it."""


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents with mode 0700; folders that exist are left as they are."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            continue  # another process made it between our check and our mkdir
        os.chmod(path, FOLDER_MODE)  # the umask may have taken bits away; make it exactly 0700


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk too.
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temporary(folder: Path, name: str, data: bytes) -> Path:
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return Path(temporary)


def replace_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` as ``path`` (mode 0600), replacing what was there in one atomic step."""
    make_private_folder(path.parent)
    temporary = _write_temporary(path.parent, path.name, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


def create_private_file(path: Path, data: bytes) -> bool:
    """Write ``data`` as ``path`` (mode 0600) unless something already has that name.

    Returns True if this call created the file, False if a file (or a symbolic link) was already there:
    when two processes race, exactly one creates it and the other finds a complete file.
    """
    make_private_folder(path.parent)
    temporary = _write_temporary(path.parent, path.name, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    _fsync_folder(path.parent)
    return True


def read_private_file(path: Path) -> bytes:
    """The contents of ``path``, refusing a symbolic link there (``SymlinkRefused``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise SymlinkRefused(errno.ELOOP, "refusing to follow a symbolic link", str(path)) from None
        raise
    with os.fdopen(fd, "rb") as stream:
        return stream.read()


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0600 if missing) for the ``with`` block.

    The lock file is never removed: removing it would let two writers lock two different files.
    """
    make_private_folder(lock_path.parent)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the only descriptor of this open file releases the lock
