"""The input line of the interactive mode: editing, history and completion, as a pure object (no terminal).

:class:`LineEditor` holds text as a list of characters (not bytes, so a
typed ``é`` or ``日`` is one character) and a cursor; :func:`visible` picks
the slice of a long line that fits the screen with the cursor in it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable


def cell_width(char: str) -> int:
    """Columns a character takes: 0 for combining marks, 2 for wide East Asian characters, else 1."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(cell_width(c) for c in text)


def common_prefix(words: list[str]) -> str:
    if not words:
        return ""
    first, last = min(words), max(words)
    n = 0
    while n < len(first) and n < len(last) and first[n] == last[n]:
        n += 1
    return first[:n]


class LineEditor:
    """One line being typed, plus the lines typed before (history, oldest first)."""

    def __init__(self, history_size: int = 500) -> None:
        self.chars: list[str] = []
        self.cursor = 0
        self.history: list[str] = []
        self.history_size = history_size
        self._position = 0  # index into history; len(history) means the line being typed
        self._draft = ""  # what was typed before walking into the history

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def set_text(self, text: str) -> None:
        self.chars = list(text)
        self.cursor = len(self.chars)

    def insert(self, text: str) -> None:
        for char in text:
            self.chars.insert(self.cursor, char)
            self.cursor += 1

    def backspace(self) -> None:
        if self.cursor > 0:
            self.cursor -= 1
            del self.chars[self.cursor]

    def delete(self) -> None:
        if self.cursor < len(self.chars):
            del self.chars[self.cursor]

    def left(self) -> None:
        self.cursor = max(0, self.cursor - 1)

    def right(self) -> None:
        self.cursor = min(len(self.chars), self.cursor + 1)

    def home(self) -> None:
        self.cursor = 0

    def end(self) -> None:
        self.cursor = len(self.chars)

    def kill_to_start(self) -> None:
        del self.chars[: self.cursor]
        self.cursor = 0

    def kill_to_end(self) -> None:
        del self.chars[self.cursor :]

    def kill_word(self) -> None:
        start = self.cursor
        while start > 0 and self.chars[start - 1] == " ":
            start -= 1
        while start > 0 and self.chars[start - 1] != " ":
            start -= 1
        del self.chars[start : self.cursor]
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
        self.chars = []
        self.cursor = 0
        self._position = len(self.history)
        self._draft = ""
        return line

    def complete(self, candidates: Callable[[str], list[str]]) -> list[str]:
        """Complete the word before the cursor; returns the choices when there is more than one."""
        before = "".join(self.chars[: self.cursor])
        choices = candidates(before)
        word = before.split(" ")[-1]
        if not choices:
            return []
        if len(choices) == 1:
            self._replace_word(word, choices[0] + " ")
            return []
        prefix = common_prefix(choices)
        if len(prefix) > len(word):
            self._replace_word(word, prefix)
            return []
        return choices

    def _replace_word(self, word: str, replacement: str) -> None:
        start = self.cursor - len(word)
        self.chars[start : self.cursor] = list(replacement)
        self.cursor = start + len(replacement)


def visible(chars: list[str], cursor: int, room: int) -> tuple[str, int]:
    """The part of the line to draw in ``room`` columns, and the cursor's column in it.

    A line that does not fit scrolls sideways (like readline's horizontal
    scroll mode), so the input always stays on one screen row.
    """
    room = max(room, 2)
    start = 0
    # move the window right until the text before the cursor fits, leaving a column for the cursor
    while text_width("".join(chars[start:cursor])) > room - 1:
        start += 1
    shown: list[str] = []
    width = 0
    for char in chars[start:]:
        w = cell_width(char)
        if width + w > room:
            break
        shown.append(char)
        width += w
    return "".join(shown), text_width("".join(chars[start:cursor]))
