"""What the console shows: events as stable script lines or as human lines, and the transfer status line.

Pure functions of their arguments (the time is passed in), so tests need no
terminal.  Everything that came from the network (names, messages, file names,
reasons) is escaped with :func:`~chatapp.wire.escape_for_terminal` here, at
the one place text becomes output (PROTOCOL.md section 1).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from chatapp.peer import Direction, Transfer
from chatapp.wire import escape_for_terminal


@dataclass(frozen=True)
class Event:
    """One thing to tell the user: a fixed word, single-token fields, and an optional free text last.

    Fields and text are stored as they came (unescaped); the renderers escape them.
    """

    kind: str
    fields: tuple[str, ...] = ()
    text: str = ""


def token(value: str) -> str:
    """A field that must stay one space-free token in script output."""
    escaped = escape_for_terminal(value)
    return escaped.replace(" ", "\\x20") if escaped else "-"


def script_line(event: Event) -> str:
    """``KIND field field... text``: one line, no control characters, the free text last."""
    parts = [event.kind, *(token(f) for f in event.fields)]
    if event.text:
        parts.append(escape_for_terminal(event.text))
    return " ".join(parts)


# -- human lines ------------------------------------------------------------------


def clock(now: float) -> str:
    return time.strftime("%H:%M", time.localtime(now))


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float) -> str:
    return f"{human_size(bytes_per_second)}/s"


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds + 0.999)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60:02d}:{s % 60:02d}"


def percent(transfer: Transfer) -> int:
    if transfer.size <= 0:
        return 100
    return min(100, transfer.bytes_done * 100 // transfer.size)


def eta(transfer: Transfer) -> float | None:
    left = transfer.size - transfer.bytes_done
    if left <= 0:
        return 0.0
    if transfer.rate <= 0:
        return None
    return left / transfer.rate


def transfer_summary(handle: int, transfer: Transfer) -> str:
    arrow = "->" if transfer.direction is Direction.SEND else "<-"
    return (
        f"#{handle} {escape_for_terminal(transfer.name)} {arrow} {escape_for_terminal(transfer.peer)} "
        f"{percent(transfer)}%"
    )


def status_line(transfers: Iterable[tuple[int, Transfer]], width: int = 80) -> str:
    """One line for the running transfers: name, direction, percent, rate, ETA; cut to ``width`` columns."""
    parts = []
    for handle, t in transfers:
        arrow = "->" if t.direction is Direction.SEND else "<-"
        parts.append(
            f"[#{handle} {escape_for_terminal(t.name)} {arrow}{escape_for_terminal(t.peer)} {percent(t)}% "
            f"{human_rate(t.rate)} ETA {human_eta(eta(t))}]"
        )
    line = " ".join(parts)
    if len(line) > width:
        line = line[: max(0, width - 1)] + "…"
    return line


_DIRECTION_WORD = {"send": "to", "receive": "from"}


def human_line(event: Event, now: float, auto_accept: bool = False) -> str | None:
    """The text an interactive user sees for ``event`` (None: show nothing), with a HH:MM time first."""
    f = [escape_for_terminal(x) for x in event.fields]
    text = escape_for_terminal(event.text)
    kind = event.kind
    if kind == "MSG":
        body = f"<{f[0]}> {text}"
    elif kind == "OK" and f and f[0] == "msg":
        body = f"<{f[2] if len(f) > 2 else 'me'} -> {f[1]}> {text}"
    elif kind == "JOINED":
        body = f"* chat with {f[0]} is open"
    elif kind == "LEFT":
        body = f"* chat with {f[0]} closed ({text})"
    elif kind == "REQUEST":
        body = f"* {f[0]} is opening a chat with you"
    elif kind == "OFFER":
        size = human_size(int(f[2]))
        if auto_accept:
            body = f"* {f[1]} sends {text} ({size}); accepting it (#{f[0]}, /cancel {f[0]} stops it)"
        else:
            body = f"* {f[1]} offers {text} ({size}): /accept {f[0]} or /reject {f[0]}"
    elif kind == "DONE":
        if f[1] == "send":
            body = f"* #{f[0]} sent to {f[2]} ({human_size(int(f[3]))})"
        else:
            body = f"* #{f[0]} received from {f[2]} ({human_size(int(f[3]))}): {text}"
    elif kind == "FAILED":
        body = f"* #{f[0]} {'to' if f[1] == 'send' else 'from'} {f[2]} ended: {text}"
    elif kind == "PROGRESS":
        return None
    elif kind == "NOTICE":
        body = f"* {text}"
    elif kind == "ERROR":
        body = f"! {text}"
    elif kind == "WHO":
        body = f"  {f[0]} ({f[1]})"
    elif kind == "TRANSFER":
        handle, direction, peer, state, done, size = f[:6]
        word = _DIRECTION_WORD.get(direction, direction)
        pct = 100 if int(size) == 0 else int(done) * 100 // int(size)
        body = f"  #{handle} {text} {word} {peer}: {state} {pct}% of {human_size(int(size))}"
    elif kind == "HELP":
        return text
    elif kind == "READY":
        where = f"listening on {f[2]}:{f[3]}" if len(f) >= 4 else "not listening (/listen on to accept chats)"
        body = f"* logged in as {f[0]}, {where}; /help lists the commands"
    elif kind == "OK":
        return _human_ok(f, text, now)
    else:
        body = " ".join([kind, *f, text]).strip()
    return f"{clock(now)} {body}"


def _human_ok(f: list[str], text: str, now: float) -> str | None:
    what = f[0] if f else ""
    if what == "who":
        return f"{clock(now)} * {f[1]} online"
    if what == "send":
        return f"{clock(now)} * #{f[1]} offered {text} to {f[2]} ({human_size(int(f[3]))}); waiting for them"
    if what == "chat":
        return f"{clock(now)} * chatting with {f[1]}; plain lines go to them"
    if what == "to":
        return f"{clock(now)} * plain lines now go to {f[1]}" if len(f) > 1 else f"{clock(now)} * no active chat"
    if what == "listen":
        if len(f) >= 4:
            return f"{clock(now)} * listening on {f[2]}:{f[3]}"
        return f"{clock(now)} * not listening: others cannot open chats with you"
    if what in ("accept", "reject", "cancel"):
        return f"{clock(now)} * #{f[1]} {what}{'ed' if what != 'cancel' else 'led'}"
    if what == "close":
        return f"{clock(now)} * closed the chat with {f[1]}"
    if what == "passwd":
        return f"{clock(now)} * password changed"
    if what in ("transfers", "help", "quit"):
        return None
    return f"{clock(now)} * {' '.join(f)} {text}".rstrip()
