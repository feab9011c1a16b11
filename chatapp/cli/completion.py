"""Tab completion of the interactive console: commands and user names (:func:`~chatapp.cli.commands.complete`),
file paths after ``/send USER``, transfer numbers after ``/accept``, ``/reject`` and ``/cancel``, window names.

Each function returns the candidates that would replace the last word of the
line before the cursor (:meth:`~chatapp.cli.editor.LineEditor.complete`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from chatapp.peer import Direction, Transfer, TransferState

from .commands import ALIASES, complete

MAX_PATH_CANDIDATES = 1000  # entries read from one folder per Tab (a huge folder must not stall the reactor)


def path_candidates(word: str, listdir: Callable[[str], Iterable[tuple[str, bool]]] | None = None) -> list[str]:
    """Paths starting with ``word`` (``~`` expanded for the lookup, kept as typed); folders end with ``/``."""
    folder, _, start = word.rpartition("/")
    if "/" in word:
        folder += "/"
    look_in = os.path.expanduser(folder) if folder else "."
    entries = (listdir or _listdir)(look_in)
    found = []
    for name, is_dir in entries:
        if name.startswith(start) and (start.startswith(".") or not name.startswith(".")):
            found.append(folder + name + ("/" if is_dir else ""))
    return sorted(found)


def _listdir(folder: str) -> list[tuple[str, bool]]:
    entries: list[tuple[str, bool]] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                entries.append((entry.name, is_dir))
                if len(entries) >= MAX_PATH_CANDIDATES:
                    break
    except OSError:
        return []
    return entries


def handle_candidates(command: str, transfers: Iterable[Transfer], start: str) -> list[str]:
    """Transfer numbers a ``/accept``, ``/reject`` (offers waiting for us) or ``/cancel`` (not ended) applies to."""
    numbers = []
    for t in transfers:
        if t.finished:
            continue
        if command in ("accept", "reject") and not (
            t.direction is Direction.RECEIVE and t.state is TransferState.OFFERED
        ):
            continue
        numbers.append(str(t.handle))
    return [n for n in numbers if n.startswith(start.lstrip("#"))]


def console_complete(
    before: str,
    users: list[str],
    transfers: Callable[[], Iterable[Transfer]],
    windows: list[str] | None = None,
    listdir: Callable[[str], Iterable[tuple[str, bool]]] | None = None,
) -> list[str]:
    """Candidates for the last word of ``before`` (the line up to the cursor)."""
    words = before.split(" ")
    command = ""
    if words[0].startswith("/"):
        command = ALIASES.get(words[0][1:].lower(), words[0][1:].lower())
    last = words[-1]
    if command == "send" and len(words) >= 3 and words[1]:
        if len(words) > 3:
            return []  # a path with spaces: too ambiguous to complete word by word
        return path_candidates(last, listdir)
    if command in ("accept", "reject", "cancel") and len(words) == 2:
        return handle_candidates(command, transfers(), last)
    if command == "win" and len(words) == 2:
        return sorted(n for n in windows or [] if n.lower().startswith(last.lower()))
    return complete(before, users)
