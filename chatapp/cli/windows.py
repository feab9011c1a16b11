"""Conversations as windows, as irssi and weechat users expect: one view per chat, an activity list, ``/lastlog``.

Pure bookkeeping (no terminal): :class:`Windows` keeps, per window, the
lines that were shown in it (escaped, as drawn) and what the user has not
seen yet.  Window 1 is the status window (the server, commands, notices);
every chat gets the next number the first time something is said in it, and
keeps it.  Everything an outsider controls here is bounded: the number of
windows (a peer opening chat after chat cannot grow the list; past the cap
their lines go to window 1), the lines kept per window, the names
remembered for completion and the ``/lastlog`` answer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from twisted.logger import Logger

from chatapp.wire import escape_for_terminal, fold_name

from .width import fit_ellipsis

log = Logger()

MAX_WINDOWS = 50  # window 1 plus 49 chats; more chats share window 1
MAX_LINES = 2000  # lines kept per window for redrawing it and for /lastlog
MAX_LASTLOG = 200  # lines /lastlog shows at most (the last matches)
MAX_REMEMBERED = 500  # names of people who contacted us, kept for Tab completion


class Echo(str):
    """A window line that is a command as the user typed it."""

    __slots__ = ()


@dataclass
class Window:
    number: int
    name: str | None  # the peer's user name; None for window 1
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_LINES))
    unread: int = 0
    for_you: bool = False  # a message (or an offer) came while the window was not shown

    @property
    def label(self) -> str:
        return f"{self.number}:{self.name or 'status'}"


class Windows:
    """The windows of one console and which one is shown."""

    def __init__(self, max_windows: int = MAX_WINDOWS, max_lines: int = MAX_LINES) -> None:
        self.max_windows = max(max_windows, 1)
        self.max_lines = max_lines
        self.windows: list[Window] = [Window(1, None, deque(maxlen=max_lines))]
        self.current = self.windows[0]
        self.contacted: dict[str, str] = {}  # folded name -> name, oldest first
        self._full_logged = False

    @property
    def status(self) -> Window:
        return self.windows[0]

    def find(self, name: str) -> Window | None:
        key = fold_name(name)
        for window in self.windows[1:]:
            if window.name is not None and fold_name(window.name) == key:
                return window
        return None

    def open(self, name: str) -> Window:
        """The window of the chat with ``name``, new if needed (window 1 once there are ``max_windows``)."""
        self.remember(name)
        window = self.find(name)
        if window is not None:
            return window
        if len(self.windows) >= self.max_windows:
            if not self._full_logged:
                self._full_logged = True
                log.warn("{count} windows open: further chats show in window 1", count=len(self.windows))
            return self.status
        window = Window(len(self.windows) + 1, name, deque(maxlen=self.max_lines))
        self.windows.append(window)
        return window

    def remember(self, name: str) -> None:
        """Keep ``name`` for Tab completion (the oldest is forgotten past MAX_REMEMBERED)."""
        key = fold_name(name)
        self.contacted.pop(key, None)
        self.contacted[key] = name
        while len(self.contacted) > MAX_REMEMBERED:
            del self.contacted[next(iter(self.contacted))]

    def names(self) -> list[str]:
        return list(self.contacted.values())

    def add(self, window: Window, line: str, for_you: bool = False, news: bool = True) -> bool:
        """Keep ``line`` in ``window``; True when it is the window shown (so the line is to be drawn).

        A line that is no ``news`` (one we sent ourselves) is not counted as unread there."""
        window.lines.append(line)
        if window is self.current:
            return True
        if not news:
            return False
        window.unread += 1
        window.for_you = window.for_you or for_you
        return False

    def switch(self, target: str | int) -> Window:
        """Show window ``target`` (a number or a peer's name); raises LookupError with a hint if there is none."""
        window: Window | None
        if isinstance(target, int) or (target.isascii() and target.isdigit()):
            number = int(target)
            window = self.windows[number - 1] if 1 <= number <= len(self.windows) else None
            if window is None:
                raise LookupError(f"no window {number} (there are {len(self.windows)})")
        else:
            window = self.find(target)
            if window is None:
                name = escape_for_terminal(target)
                raise LookupError(f"no window for {name}: /chat {name} opens one")
        self.show(window)
        return window

    def show(self, window: Window) -> None:
        self.current = window
        window.unread = 0
        window.for_you = False

    def activity(self) -> list[Window]:
        """The windows with lines not seen yet, by number."""
        return [w for w in self.windows if w.unread and w is not self.current]

    def activity_text(self, columns: int) -> str:
        """``act: 2:bob(3)* 4:carol(1)`` in at most ``columns`` cells; ``*``: a message for you is waiting there."""
        active = self.activity()
        if not active:
            return ""
        parts = [f"{w.number}:{w.name or 'status'}({w.unread}){'*' if w.for_you else ''}" for w in active]
        return fit_ellipsis("act: " + " ".join(parts), columns)

    def keep_echo(self, line: str) -> None:
        """A command as typed, shown above the input: kept in the window shown, for redraws."""
        self.current.lines.append(Echo(line))

    def lastlog(self, text: str, limit: int = MAX_LASTLOG) -> list[str]:
        """The lines shown in any window that contain ``text`` (any case), labelled, at most the last ``limit``;
        the commands typed are not searched (``/lastlog x`` would find itself)."""
        needle = text.casefold()
        found: deque[str] = deque(maxlen=limit)
        for window in self.windows:
            for line in window.lines:
                if needle in line.casefold() and not isinstance(line, Echo):
                    found.append(f"{window.label}: {line}")
        return list(found)
