"""The input line of the interactive mode: editing, history, completion and paste, as a pure object (no terminal).

:class:`LineEditor` holds the line as one ``str`` and the cursor as an
index into it, so inserting a keystroke or a whole paste is one string
copy, whatever its length.  The cursor moves over grapheme clusters: an
emoji sequence (``👩‍💻``), a flag or a letter with its accents is one step,
as on screen.  :func:`visible` picks the part of a long line that fits the
screen with the cursor in it, measured in display cells
(:mod:`chatapp.cli.width`), in one pass over the line.

Nothing here filters format characters: the zero-width joiner and
non-joiner (U+200D, U+200C) that emoji sequences and Persian text need
stay as typed.  Only control characters (Unicode Cc: the line is one line
and is drawn raw) are kept out; a tab becomes a space.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

from wcwidth import grapheme_boundary_before, iter_graphemes

from chatapp.wire import BIDI_CONTROLS

from .width import cluster_width

# Cc: C0, DEL and C1.  Tab is the one control a paste commonly holds; it becomes a space.
_CONTROLS: dict[int, str | None] = {code: None for code in [*range(0x20), *range(0x7F, 0xA0)]}
_CONTROLS[ord("\t")] = " "
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_JOINERS = frozenset("\u200c\u200d")
# Shown escaped in the input row, as peers will show them (PROTOCOL.md section 1): a
# raw bidi control would reorder the rest of the row on a terminal that does bidi.
# Each of these is a grapheme cluster of its own (Unicode's Control break class).
_SHOWN_ESCAPED = BIDI_CONTROLS | {"\u2028", "\u2029"}


def without_controls(text: str) -> str:
    """``text`` with control characters (Cc) removed and tabs turned into spaces."""
    return text.translate(_CONTROLS)


def common_prefix(words: list[str]) -> str:
    if not words:
        return ""
    first, last = min(words), max(words)
    n = 0
    while n < len(first) and n < len(last) and first[n] == last[n]:
        n += 1
    return first[:n]


def _undoes_one_code_point(char: str) -> bool:
    """A joiner or mark: the last key of a sequence being typed, which Backspace takes back on its own."""
    return char in _JOINERS or unicodedata.category(char) in ("Mn", "Mc", "Me")


class LineEditor:
    """One line being typed, plus the lines typed before (history, oldest first)."""

    def __init__(self, history_size: int = 500) -> None:
        self.text = ""
        self.cursor = 0  # index into text, in code points; always on a cluster boundary after a move
        self.history: list[str] = []
        self.history_size = history_size
        self._position = 0  # index into history; len(history) means the line being typed
        self._draft = ""  # what was typed before walking into the history

    @property
    def chars(self) -> str:
        """The line (an older name of :attr:`text`, still used by the console's redraw)."""
        return self.text

    def set_text(self, text: str) -> None:
        self.text = without_controls(text)
        self.cursor = len(self.text)

    def insert(self, text: str) -> None:
        """Insert at the cursor: one string copy, however long ``text`` is."""
        text = without_controls(text)
        self.text = self.text[: self.cursor] + text + self.text[self.cursor :]
        self.cursor += len(text)

    def paste(self, text: str) -> list[str]:
        """Take a bracketed paste.  Returns ``[]`` when it was inserted, else the lines it would send.

        A paste without a line break (one trailing line break is dropped:
        copying a whole line takes it along) is inserted at the cursor.  One
        with line breaks is not inserted: the editor is left as it was and
        the lines are returned so that the console can ask before sending
        them as several messages.  They are the pasted lines alone: what was
        typed stays in the line, to be sent (or not) on its own — gluing it to
        the first pasted line would send a message nobody saw asked about.
        Empty lines are kept; the caller decides.
        """
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith(("\r", "\n")):
            text = text[:-1]
        lines = _LINE_BREAK.split(text)
        if len(lines) == 1:
            self.insert(text)
            return []
        return [without_controls(line) for line in lines]

    def _cluster_start_before(self, position: int) -> int:
        return grapheme_boundary_before(self.text, position) if position > 0 else 0

    def _cluster_end_after(self, position: int) -> int:
        for cluster in iter_graphemes(self.text, position):
            return position + len(cluster)
        return position

    def backspace(self) -> None:
        """Delete the cluster before the cursor, or only its last joiner or mark (a mistyped one)."""
        if self.cursor == 0:
            return
        if _undoes_one_code_point(self.text[self.cursor - 1]):
            start = self.cursor - 1
        else:
            start = self._cluster_start_before(self.cursor)
        self.text = self.text[:start] + self.text[self.cursor :]
        self.cursor = start

    def delete(self) -> None:
        end = self._cluster_end_after(self.cursor)
        self.text = self.text[: self.cursor] + self.text[end:]

    def left(self) -> None:
        self.cursor = self._cluster_start_before(self.cursor)

    def right(self) -> None:
        self.cursor = self._cluster_end_after(self.cursor)

    def home(self) -> None:
        self.cursor = 0

    def end(self) -> None:
        self.cursor = len(self.text)

    def kill_to_start(self) -> None:
        self.text = self.text[self.cursor :]
        self.cursor = 0

    def kill_to_end(self) -> None:
        self.text = self.text[: self.cursor]

    def kill_word(self) -> None:
        before = self.text[: self.cursor]
        start = len(before.rstrip(" "))
        start = before.rfind(" ", 0, start) + 1
        self.text = self.text[:start] + self.text[self.cursor :]
        self.cursor = start

    def up(self) -> None:
        if self._position == 0:
            return
        if self._position == len(self.history):
            self._draft = self.text
        self._position -= 1
        self.set_text(self.history[self._position])

    def down(self) -> None:
        if self._position >= len(self.history):
            return
        self._position += 1
        self.set_text(self._draft if self._position == len(self.history) else self.history[self._position])

    def submit(self, remember: bool = True) -> str:
        """The finished line; the editor is empty again.  ``remember=False`` keeps it out of the history."""
        line = self.text
        if remember and line.strip() and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[: -self.history_size]
        self.text = ""
        self.cursor = 0
        self._position = len(self.history)
        self._draft = ""
        return line

    def complete(self, candidates: Callable[[str], list[str]]) -> list[str]:
        """Complete the word before the cursor; returns the choices when there is more than one."""
        before = self.text[: self.cursor]
        choices = candidates(before)
        word = before.split(" ")[-1]
        if not choices:
            return []
        if len(choices) == 1:
            # a folder stays open for the next Tab; anything else is a finished word
            self._replace_word(word, choices[0] if choices[0].endswith("/") else choices[0] + " ")
            return []
        prefix = common_prefix(choices)
        if len(prefix) > len(word):
            self._replace_word(word, prefix)
            return []
        return choices

    def _replace_word(self, word: str, replacement: str) -> None:
        start = self.cursor - len(word)
        replacement = without_controls(replacement)
        self.text = self.text[:start] + replacement + self.text[self.cursor :]
        self.cursor = start + len(replacement)

    def visible(self, room: int) -> tuple[str, int]:
        """What to draw of this line in ``room`` cells, and the cursor's cell in it (see :func:`visible`)."""
        return visible(self.text, self.cursor, room)


def _shown(cluster: str) -> tuple[str, int]:
    if cluster in _SHOWN_ESCAPED:
        escaped = f"\\u{ord(cluster):04x}"
        return escaped, len(escaped)
    return cluster, cluster_width(cluster)


def visible(text: str | Sequence[str], cursor: int, room: int) -> tuple[str, int]:
    """The part of the line to draw in ``room`` cells, and the cursor's cell in it.

    A line that does not fit scrolls sideways (like readline's horizontal
    scroll mode), so the input always stays on one screen row: the window
    starts at the line's start while the cursor fits, else the cursor sits
    at its right edge.  What is drawn never takes more than ``room`` cells
    and never cuts a cluster.  The cost is one pass over the clusters up to
    the cursor and ``room`` cells beyond it.
    """
    if not isinstance(text, str):
        text = "".join(text)
    room = max(room, 2)
    if text.isascii() and text.isprintable():  # one cell per character: plain slicing
        start = max(0, cursor - (room - 1))
        return text[start : start + room], cursor - start
    shown: list[str] = []
    cells: list[int] = []
    before = 0  # clusters that end at or before the cursor
    position = 0
    cells_after = 0
    for cluster in iter_graphemes(text):
        position += len(cluster)
        drawn, drawn_cells = _shown(cluster)
        shown.append(drawn)
        cells.append(drawn_cells)
        if position <= cursor:
            before = len(shown)
        else:
            cells_after += drawn_cells
            if cells_after > room:  # past the cursor by more than a screen: the rest is never drawn
                break
    # leave a cell for the cursor itself: the window holds at most room - 1 cells before it
    start = before
    column = 0
    while start > 0 and column + cells[start - 1] <= room - 1:
        start -= 1
        column += cells[start]
    end = start
    used = 0
    while end < len(shown) and used + cells[end] <= room:
        used += cells[end]
        end += 1
    return "".join(shown[start:end]), column
