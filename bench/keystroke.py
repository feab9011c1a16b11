"""The console's line editor: the cost of a keystroke, of a 10,000-character paste, and the reactor stall while pasting.

A keystroke is what the console does for one typed character: insert it at
the cursor (at the end of the line, the worst place for the window) and
compute the redraw (the visible window, encoded as the terminal gets it).
Two kinds of line: ``ascii``, and ``mixed`` (Latin with accents, CJK, an
emoji ZWJ sequence every few words), which takes the grapheme path.  The old
editor (``chatapp/cli/editor.py`` at ``--old-rev``, loaded from git) is
timed in the same rounds, interleaved, at 100 and 400 characters only: it
is cubic in the line length.

The stall: a real reactor runs a 10 ms LoopingCall and records how late it
fires while 10,000 characters arrive in 4 KiB reads, one read per reactor
turn, as a terminal delivers a paste:

- ``bracketed``: the reads are collected and go to ``LineEditor.paste`` once,
  then one redraw (what the console does with bracketed paste on);
- ``key + redraw per key``: every character is a keystroke followed by a
  redraw (what the console did before);
- ``key, redraw per read``: every character is a keystroke, one redraw per read;
- ``console, bracketed`` / ``console, unbracketed``: the real terminal path, the
  bytes going through ``ConsoleServerProtocol`` (paste splitter, insults' key
  decoder) into ``ConsoleProtocol`` and its redraws onto a StringTransport,
  with and without the bracketed-paste markers around them.

    python bench/keystroke.py            # about 3 minutes (the old editor takes most of it)
    python bench/keystroke.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatapp.cli import editor as new_editor  # noqa: E402

OLD_REV = "71a524c"  # the last commit before the editor was made linear
ROOM = 100  # cells of the input row
READ_SIZE = 4096
_MIXED_WORDS = ["héllo", "日本語", "👩\u200d💻", "cafe\u0301", "텍스트", "wörld", "🇫🇷", "plain"]


def line_of(kind: str, length: int) -> str:
    if kind == "ascii":
        return ("the quick brown fox jumps over the lazy dog " * (length // 44 + 1))[:length]
    words: list[str] = []
    size = 0
    n = 0
    while size < length:
        word = _MIXED_WORDS[n % len(_MIXED_WORDS)] + " "
        words.append(word)
        size += len(word)
        n += 1
    return "".join(words)[:length]


def load_old_editor(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:chatapp/cli/editor.py"], check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("old_editor")
    exec(compile(source, f"{rev}:chatapp/cli/editor.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


def new_keystroke(text: str) -> Callable[[], Any]:
    e = new_editor.LineEditor()
    e.set_text(text)

    def keystroke() -> bytes:
        e.insert("x")
        shown, _ = e.visible(ROOM)
        return shown.encode("utf-8")

    return keystroke


def old_keystroke(old: types.ModuleType, text: str) -> Callable[[], Any]:
    e = old.LineEditor()
    e.set_text(text)

    def keystroke() -> bytes:
        e.insert("x")
        shown, _ = old.visible(e.chars, e.cursor, ROOM)
        return shown.encode("utf-8")

    return keystroke


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def new_paste(text: str) -> Callable[[], Any]:
    e = new_editor.LineEditor()

    def paste() -> bytes:
        e.paste(text)
        shown, _ = e.visible(ROOM)
        return shown.encode("utf-8")

    return paste


def keystroke_table(rounds: int, old: types.ModuleType) -> list[tuple[str, str, str, str]]:
    sizes = [100, 400, 1000, 10_000]
    samples: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(rounds):
        for size in sizes:
            for kind in ("ascii", "mixed"):
                text = line_of(kind, size)
                samples.setdefault(("new", kind, size), []).append(timed(new_keystroke(text)))
                if size <= 400:
                    samples.setdefault(("old", kind, size), []).append(timed(old_keystroke(old, text)))
        for kind in ("ascii", "mixed"):
            samples.setdefault(("paste", kind, 10_000), []).append(timed(new_paste(line_of(kind, 10_000))))
    rows = []

    def ms(key: tuple[str, str, int]) -> str:
        return f"{statistics.median(samples[key]) * 1000:.3f}" if key in samples else "-"

    for size in sizes:
        rows.append((f"keystroke, {size} chars", ms(("old", "ascii", size)), ms(("old", "mixed", size)),
                     f"{ms(('new', 'ascii', size))} / {ms(('new', 'mixed', size))}"))  # fmt: skip
    rows.append(
        (
            "paste 10,000 chars + redraw",
            "-",
            "-",
            f"{ms(('paste', 'ascii', 10_000))} / {ms(('paste', 'mixed', 10_000))}",
        )
    )
    return rows


def reads_of(text: str) -> list[bytes]:
    data = text.encode("utf-8")
    return [data[n : n + READ_SIZE] for n in range(0, len(data), READ_SIZE)]


def stall(reactor: Any, mode: str, text: str, old: types.ModuleType | None = None) -> defer.Deferred[float]:
    """Feed ``text`` in reads, one per reactor turn, through an editor; fires with the longest lateness of a tick."""
    e = (old or new_editor).LineEditor()
    reads = reads_of(text)
    ticks: list[float] = []
    latest = [0.0]

    def tick() -> None:
        now = time.perf_counter()
        if latest[0]:
            ticks.append(now - latest[0] - 0.010)
        latest[0] = now

    def redraw() -> None:
        if old is not None:
            shown, _ = old.visible(e.chars, e.cursor, ROOM)
        else:
            shown, _ = e.visible(ROOM)
        shown.encode("utf-8")

    pasted: list[bytes] = []
    done: defer.Deferred[float] = defer.Deferred()
    loop = task.LoopingCall(tick)
    loop.clock = reactor

    def feed(index: int) -> None:
        if index == len(reads):
            if mode == "bracketed":
                e.paste(b"".join(pasted).decode("utf-8"))
                redraw()
            reactor.callLater(0.1, finish)
            return
        data = reads[index]
        if mode == "bracketed":
            pasted.append(data)
        else:
            # a read can end inside a UTF-8 sequence; the console's incremental decoder carries it over
            for char in data.decode("utf-8", "ignore"):
                e.insert(char)
                if mode == "key + redraw per key":
                    redraw()
            if mode == "key, redraw per read":
                redraw()
        reactor.callLater(0, feed, index + 1)

    def finish() -> None:
        loop.stop()
        assert e.text or mode != "bracketed"
        done.callback(max(ticks))

    loop.start(0.010)
    reactor.callLater(0.1, feed, 0)
    return done


def console_stall(reactor: Any, text: str, bracketed: bool) -> defer.Deferred[float]:
    """``stall`` through the console itself: bytes in, screen bytes out."""
    from twisted.internet.testing import StringTransport

    from chatapp.cli.terminal import PASTE_END, PASTE_START, ConsoleProtocol, ConsoleServerProtocol

    lines: list[str] = []
    console = ConsoleProtocol(lines.append, lambda: None, lambda before: [], reactor, reactor.seconds)
    server = ConsoleServerProtocol(lambda: console)
    server.makeConnection(StringTransport())
    console.terminalSize(ROOM + 10, 24)
    data = text.encode("utf-8")
    if bracketed:
        data = PASTE_START + data + PASTE_END
    reads = [data[n : n + READ_SIZE] for n in range(0, len(data), READ_SIZE)]
    ticks: list[float] = []
    latest = [0.0]

    def tick() -> None:
        now = time.perf_counter()
        if latest[0]:
            ticks.append(now - latest[0] - 0.010)
        latest[0] = now

    done: defer.Deferred[float] = defer.Deferred()
    loop = task.LoopingCall(tick)
    loop.clock = reactor

    def feed(index: int) -> None:
        if index == len(reads):
            reactor.callLater(0.1, finish)
            return
        server.dataReceived(reads[index])
        server.transport.clear()  # type: ignore[attr-defined]
        reactor.callLater(0, feed, index + 1)

    def finish() -> None:
        loop.stop()
        assert console.editor.text == text.replace("\t", " ") and not lines
        done.callback(max(ticks))

    loop.start(0.010)
    reactor.callLater(0.1, feed, 0)
    return done


async def stall_table(reactor: Any, rounds: int, old: types.ModuleType) -> list[tuple[str, str, str]]:
    rows = []
    # the case: an 803-character paste with the old editor, a keystroke and a redraw per character
    cells = [
        f"{await stall(reactor, 'key + redraw per key', line_of(kind, 803), old) * 1000:.1f}"
        for kind in ("ascii", "mixed")
    ]
    rows.append(("old editor: paste 803 chars, key + redraw per key", *cells))
    for mode in ("bracketed", "key, redraw per read", "key + redraw per key"):
        cells = []
        for kind in ("ascii", "mixed"):
            text = line_of(kind, 10_000)
            worst = [await stall(reactor, mode, text) for _ in range(rounds if mode != "key + redraw per key" else 1)]
            cells.append(f"{statistics.median(worst) * 1000:.1f}")
        rows.append((f"new editor: paste 10,000 chars, {mode}", cells[0], cells[1]))
    for bracketed in (True, False):
        cells = []
        for kind in ("ascii", "mixed"):
            text = line_of(kind, 10_000)
            worst = [await console_stall(reactor, text, bracketed) for _ in range(rounds)]
            cells.append(f"{statistics.median(worst) * 1000:.1f}")
        label = "bracketed" if bracketed else "unbracketed"
        rows.append((f"console (terminal path): paste 10,000 chars, {label}", cells[0], cells[1]))
    return rows


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--old-rev", default=OLD_REV)
    options = parser.parse_args()
    rounds = 3 if options.quick else options.rounds
    old = load_old_editor(options.old_rev)
    print(f"python {sys.version.split()[0]}, room {ROOM} cells, median of {rounds} rounds, times in ms\n")
    print_table(("", f"old ascii ({options.old_rev})", "old mixed", "new ascii / mixed"), keystroke_table(rounds, old))

    def run(reactor: Any) -> defer.Deferred[None]:
        async def go() -> None:
            print_table(
                ("longest reactor stall (10 ms tick)", "ascii", "mixed"), await stall_table(reactor, rounds, old)
            )

        return defer.ensureDeferred(go())

    task.react(run)


if __name__ == "__main__":
    main()
