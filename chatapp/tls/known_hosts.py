"""The known-servers and known-peers files: keys remembered per server (4.1) and per contact (4.4).

Known servers (``paths.known_servers_path()``), one a line, ``#`` starts a comment::

    chat.example.org:7000 sha256:<64 hex>
    [2001:db8::1]:7000 sha256:<64 hex>

Known peers (``paths.known_peers_path()``) add the contact's user name, case-folded::

    chat.example.org:7000 alice sha256:<64 hex>

A line that cannot be read (or repeats an earlier host/user) is reported with its line number in
``KnownKeysFile.bad_lines`` and otherwise ignored; it is never dropped: every rewrite keeps all other
lines verbatim. Writers take an ``flock`` on ``<file>.lock``, read the file again under it, and replace
it atomically (mode 0600), so two clients adding at once both end up in the file. Readers take no lock:
they always see a whole file, old or new. All of this is blocking file I/O (see ``private_files``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from chatapp.tls.fingerprint import BadFingerprint, parse_fingerprint
from chatapp.tls.private_files import exclusive_lock, replace_private_file

# (host, port) for a server, (host, port, user) for a contact on a server.
EntryKey = tuple[str, int] | tuple[str, int, str]


def normalise_host(host: str) -> str:
    """A host as the files store it: IP addresses in their compressed form, names in lower case."""
    bare = host.strip().removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare.lower()


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets: ``[::1]:7000``."""
    normal = normalise_host(host)
    return f"[{normal}]:{port}" if ":" in normal else f"{normal}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """``(host, port)`` from ``host:port`` or ``[v6addr]:port``; raise ``ValueError`` if it is neither."""
    if text.startswith("["):
        inside, bracket, port_text = text[1:].partition("]:")
        if not bracket:
            raise ValueError(f"expected [v6addr]:port, got {text!r}")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {inside!r}") from None
        host = inside
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"expected host:port, got {text!r}")
        if ":" in host:
            raise ValueError(f"an IPv6 address needs brackets: [{host}]:{port_text}")
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"not a port number: {port_text!r}")
    return normalise_host(host), int(port_text)


@dataclass(frozen=True)
class KnownKey:
    """One remembered key; ``user`` is None in the known-servers file."""

    host: str
    port: int
    user: str | None
    fingerprint: str
    line_number: int

    @property
    def key(self) -> EntryKey:
        return (self.host, self.port) if self.user is None else (self.host, self.port, self.user)


@dataclass(frozen=True)
class BadLine:
    """A line that was skipped, and why; it stays in the file as it is."""

    line_number: int
    text: str
    reason: str


@dataclass(frozen=True)
class KnownKeysFile:
    """One reading of a known-keys file (empty if it does not exist)."""

    path: Path
    entries: tuple[KnownKey, ...]
    bad_lines: tuple[BadLine, ...]
    lines: tuple[str, ...]  # every line verbatim, for rewriting

    def lookup(self, key: EntryKey) -> KnownKey | None:
        """The entry for ``(host, port)`` or ``(host, port, user)``, as given by the user or a server."""
        wanted = _normalise_key(key)
        for entry in self.entries:
            if entry.key == wanted:
                return entry
        return None


def _normalise_key(key: EntryKey) -> EntryKey:
    if len(key) == 2:
        return (normalise_host(key[0]), int(key[1]))
    return (normalise_host(key[0]), int(key[1]), key[2].casefold())


def _parse_line(line: str, line_number: int, with_user: bool) -> KnownKey | str | None:
    """The entry on ``line``, None for a blank or comment line, or the reason it is bad."""
    content = line.strip()
    if not content or content.startswith("#"):
        return None
    fields = content.split()
    expected = 3 if with_user else 2
    if len(fields) != expected:
        shape = "host:port user sha256:..." if with_user else "host:port sha256:..."
        return f"expected {shape}, found {len(fields)} fields"
    try:
        host, port = parse_address(fields[0])
        fingerprint = parse_fingerprint(fields[-1])
    except (ValueError, BadFingerprint) as error:
        return str(error)
    user = fields[1].casefold() if with_user else None
    return KnownKey(host, port, user, fingerprint, line_number)


def _read(path: Path, with_user: bool) -> KnownKeysFile:
    try:
        # surrogateescape: a stray non-UTF-8 byte makes its line bad, and still goes back out unchanged
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    except FileNotFoundError:
        text = ""
    lines = tuple(text.splitlines())
    entries: list[KnownKey] = []
    bad: list[BadLine] = []
    first_line_of: dict[EntryKey, int] = {}
    for number, line in enumerate(lines, start=1):
        parsed = _parse_line(line, number, with_user)
        if parsed is None:
            continue
        if isinstance(parsed, str):
            bad.append(BadLine(number, line, parsed))
        elif parsed.key in first_line_of:
            # The first line decides, so a mismatch message can name the one line to remove.
            bad.append(BadLine(number, line, f"repeats line {first_line_of[parsed.key]}, which is the one used"))
        else:
            first_line_of[parsed.key] = number
            entries.append(parsed)
    return KnownKeysFile(path, tuple(entries), tuple(bad), lines)


class _KnownKeys:
    def __init__(self, path: Path, with_user: bool) -> None:
        self.path = path
        self._with_user = with_user

    def read(self) -> KnownKeysFile:
        """The file as it is now; bad lines are in ``bad_lines`` for the caller to report."""
        return _read(self.path, self._with_user)

    def _add(self, key: EntryKey, fingerprint: str, replace: bool) -> KnownKey:
        canonical = parse_fingerprint(fingerprint)
        key = _normalise_key(key)
        if any(not part or any(c.isspace() for c in part) for part in key if isinstance(part, str)):
            raise ValueError(f"a host or user name with spaces cannot go into {self.path}: {key!r}")
        new_line = " ".join([format_address(key[0], key[1]), *([key[2]] if len(key) == 3 else []), canonical])
        with exclusive_lock(self.path.with_name(self.path.name + ".lock")):
            current = _read(self.path, self._with_user)
            existing = current.lookup(key)
            lines = list(current.lines)
            if existing is None:
                lines.append(new_line)
                line_number = len(lines)
            elif replace:
                lines[existing.line_number - 1] = new_line
                line_number = existing.line_number
            else:
                return existing
            data = "".join(line + "\n" for line in lines).encode("utf-8", errors="surrogateescape")
            replace_private_file(self.path, data)
        user = key[2] if len(key) == 3 else None
        return KnownKey(key[0], key[1], user, canonical, line_number)


class KnownServers(_KnownKeys):
    """The known-servers file: one pinned fingerprint per ``host:port``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, with_user=False)

    def lookup(self, host: str, port: int) -> KnownKey | None:
        return self.read().lookup((host, port))

    def pin(self, host: str, port: int, fingerprint: str, replace: bool = False) -> KnownKey:
        """Remember ``fingerprint`` for ``host:port`` and return the entry now in the file.

        Without ``replace``, a fingerprint already pinned (perhaps by another client a moment ago)
        stays and is returned: compare it with yours. ``replace=True`` is the user's explicit "trust
        the new key"; the pin keeps its line.
        """
        return self._add((host, port), fingerprint, replace)


class KnownPeers(_KnownKeys):
    """The known-peers file: the key first seen for each contact (user, case-folded) on each server."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, with_user=True)

    def lookup(self, host: str, port: int, user: str) -> KnownKey | None:
        return self.read().lookup((host, port, user))

    def remember(self, host: str, port: int, user: str, fingerprint: str, replace: bool = False) -> KnownKey:
        """Remember ``fingerprint`` for ``user`` on ``host:port`` and return the entry now in the file.

        Without ``replace`` a key already remembered stays and is returned (compare it with yours);
        ``replace=True`` is the user's explicit ``/trust USER``.
        """
        return self._add((host, port, user), fingerprint, replace)
