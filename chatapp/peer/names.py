"""Safe file names for received files (PROTOCOL.md 3.3) and keys for kept partial files."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterator

from chatapp.wire import fold_name

MAX_NAME_BYTES = 200
_MAX_EXTENSION_BYTES = 32  # a longer "extension" is not one worth keeping
_SEPARATORS = re.compile(r"[/\\]")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits in ``max_bytes`` of UTF-8."""
    return text.encode("utf-8")[: max(max_bytes, 0)].decode("utf-8", errors="ignore")


def _split_extension(name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(name)
    if not stem or _utf8_len(ext) > _MAX_EXTENSION_BYTES:
        return name, ""
    return stem, ext


def shorten(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """Cut ``name`` to at most ``max_bytes`` of UTF-8, keeping its extension."""
    if _utf8_len(name) <= max_bytes:
        return name
    stem, ext = _split_extension(name)
    return _cut_utf8(stem, max_bytes - _utf8_len(ext)) + ext


_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _without_removed(name: str) -> str:
    return "".join(c for c in name if unicodedata.category(c) not in _REMOVED_CATEGORIES)


def clean_name(offered: str) -> str | None:
    """The name a received file may have in the download folder, or None (``bad-name``).

    Cut to the last path component after ``/`` and ``\\``, Unicode Cc, Cf, Zl
    and Zp characters removed (PROTOCOL.md 3.3: a name must not carry a line
    break, even one only ``str.splitlines()`` sees), shortened to 200 bytes of
    UTF-8 keeping the extension.
    """
    base = _SEPARATORS.split(offered)[-1]
    base = _without_removed(base)
    base = shorten(base)
    if base in ("", ".", ".."):
        return None
    return base


def numbered_names(name: str) -> Iterator[str]:
    """``name``, then ``stem (1).ext``, ``stem (2).ext``, ... each within the length limit."""
    yield name
    stem, ext = _split_extension(name)
    number = 1
    while True:
        suffix = f" ({number}){ext}"
        yield _cut_utf8(stem, MAX_NAME_BYTES - _utf8_len(suffix)) + suffix
        number += 1


def partial_key(sender: str, name: str, size: int) -> str:
    """File name of the partial copy of (sender case-folded, cleaned name, size)."""
    material = "\0".join((fold_name(sender), name, str(size))).encode("utf-8")
    return hashlib.sha256(material).hexdigest() + ".part"


def offer_name(path: str) -> str:
    """The name to offer for a local file: its base name with control characters removed."""
    base = _without_removed(os.path.basename(path))
    return base or "file"
