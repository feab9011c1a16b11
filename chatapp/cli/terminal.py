"""Interactive mode: a line editor at the bottom of the terminal, events printed above it, a transfer status line.

Built on Twisted's own terminal layer: ``twisted.conch.insults.insults.ServerProtocol``
decodes the keys (arrows, Home/End, Delete...) and offers the cursor
commands, ``twisted.internet.stdio.StandardIO`` feeds it from the terminal,
which is in raw mode for the whole session (restored on every way out; see
:class:`RawMode`).  The editing itself is :class:`~chatapp.cli.editor.LineEditor`.

Screen layout, bottom up: the input row (prompt, then a sideways-scrolling
window of the line), and while files move, one status row above it.  An
event clears those rows, prints its line (which scrolls the screen up) and
draws them again, so what is being typed is never broken.
"""

from __future__ import annotations

import atexit
import codecs
import fcntl
import os
import signal
import struct
import sys
import termios
import tty
from collections.abc import Callable
from typing import Any, get_args

from twisted.conch.insults import insults
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.stdio import StandardIO
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp.app import ChatClient
from chatapp.events import FileOffered, TransferEnded, TransferProgress
from chatapp.peer import TransferState
from chatapp.wire import escape_for_terminal

from .commands import CommandError, Conversations, Dispatcher, complete, console_sink
from .editor import LineEditor, visible
from .errors import EXIT_OK
from .events import CommandSucceeded, Shown
from .render import human_line, status_line
from .run import Run, ready_event

log = Logger()

STATUS_INTERVAL = 0.1  # at most ten status-line redraws a second
_RUNNING = {TransferState.ACCEPTED, TransferState.SENDING, TransferState.RECEIVING, TransferState.ENDED}


class RawMode:
    """Puts a terminal in raw mode and always puts it back (explicitly, at exit, and after errors)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def enter(self) -> None:
        self.saved = termios.tcgetattr(self.fd)
        atexit.register(self.restore)
        tty.setraw(self.fd, termios.TCSANOW)

    def restore(self) -> None:
        saved, self.saved = self.saved, None
        if saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSANOW, saved)
            except termios.error:
                pass


_raw: RawMode | None = None
_console: ConsoleProtocol | None = None


def restore_terminal() -> None:
    """Called by main() on its way out, whatever happened (a signal may have cut the session short)."""
    if _raw is not None and _raw.saved is not None:
        _raw.restore()
        if _console is not None and not _console.cleared:
            try:  # leave the half-drawn input row (stdout may be closed by now; stderr is the same terminal)
                if os.isatty(2):
                    os.write(2, b"\r\n")
            except OSError:
                pass


def terminal_size(fd: int = 1) -> tuple[int, int]:
    try:
        rows, cols, _, _ = struct.unpack("hhhh", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return 80, 24
    return (cols or 80), (rows or 24)


class ConsoleProtocol(insults.TerminalProtocol):
    """Keys in, screen out.  ``on_line`` gets each finished line; ``on_quit`` is Ctrl-D (or Ctrl-C) on an empty line."""

    def __init__(
        self,
        on_line: Callable[[str], None],
        on_quit: Callable[[], None],
        candidates: Callable[[str], list[str]],
        clock: Any,
        now: Callable[[], float],
    ) -> None:
        self.editor = LineEditor()
        self.on_line = on_line
        self.on_quit = on_quit
        self.candidates = candidates
        self.clock = clock
        self.now = now
        self.prompt = "> "
        self.status = ""
        self.width, self.height = 80, 24
        self._status_shown = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._secret: tuple[str, defer.Deferred[str]] | None = None
        self._status_source: Callable[[int], str] = lambda width: ""
        self._status_timer: IDelayedCall | None = None
        self._status_drawn_at = float("-inf")
        self.closed = False
        self.cleared = False  # close() has wiped the input row
        self.lost: defer.Deferred[None] = defer.Deferred()

    # -- screen ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.width, self.height = terminal_size()
        self._draw()

    def _clear(self) -> None:
        t = self.terminal
        t.write(b"\r")
        t.eraseLine()
        if self._status_shown:
            t.cursorUp(1)
            t.eraseLine()
            self._status_shown = False

    def _draw(self) -> None:
        t = self.terminal
        if self.status:
            t.write(self.status.encode("utf-8") + b"\n")  # insults writes LF as CR LF
            self._status_shown = True
        prompt = self._secret[0] if self._secret is not None else self.prompt
        if self._secret is not None:
            shown, column = "", 0
        else:
            shown, column = visible(self.editor.chars, self.editor.cursor, self.width - len(prompt) - 1)
        t.write((prompt + shown).encode("utf-8"))
        t.write(b"\r")
        if len(prompt) + column:
            t.cursorForward(len(prompt) + column)

    def redraw(self) -> None:
        if self.closed:
            return
        self._clear()
        self._draw()

    def show(self, line: str) -> None:
        """Print ``line`` (already escaped) above the input, which stays as it was."""
        if self.closed:
            return
        self._clear()
        self.terminal.write(line.encode("utf-8") + b"\n")
        self._draw()

    def set_prompt(self, prompt: str) -> None:
        if prompt != self.prompt:
            self.prompt = prompt
            self.redraw()

    def watch_status(self, source: Callable[[int], str]) -> None:
        self._status_source = source

    def status_changed(self) -> None:
        """Redraw the status row now, or within STATUS_INTERVAL if it was drawn just before."""
        if self._status_timer is not None and self._status_timer.active():
            return
        wait = self._status_drawn_at + STATUS_INTERVAL - self.clock.seconds()
        if wait > 0:
            self._status_timer = self.clock.callLater(wait, self._update_status)
        else:
            self._update_status()

    def _update_status(self) -> None:
        self._status_timer = None
        self._status_drawn_at = self.clock.seconds()
        try:
            status = self._status_source(self.width - 1)
        except Exception:  # a bug in a timer call would only reach the reactor's log; keep the old row
            log.failure("computing the status line")
            return
        if status != self.status:
            self._clear()
            self.status = status
            self._draw()

    def terminalSize(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.redraw()

    def close(self) -> None:
        if self._status_timer is not None and self._status_timer.active():
            self._status_timer.cancel()
        if not self.closed:
            self._clear()
            self.cleared = True
            self.closed = True

    # -- keys ------------------------------------------------------------------------

    def ask_secret(self, prompt: str) -> defer.Deferred[str]:
        """The next line typed, not echoed and not kept in the history (for /passwd)."""
        d: defer.Deferred[str] = defer.Deferred()
        self._secret = (prompt, d)
        self.redraw()
        return d

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        try:
            self._key(keyID, modifier)
        except Exception:
            log.failure("handling a key")
        self.redraw()

    def _key(self, key: Any, modifier: Any) -> None:
        t = self.terminal
        e = self.editor
        special: dict[Any, Callable[[], None]] = {
            t.LEFT_ARROW: e.left,
            t.RIGHT_ARROW: e.right,
            t.HOME: e.home,
            t.END: e.end,
            t.DELETE: e.delete,
            t.UP_ARROW: e.up,
            t.DOWN_ARROW: e.down,
            b"\x01": e.home,  # Ctrl-A
            b"\x05": e.end,  # Ctrl-E
            b"\x02": e.left,  # Ctrl-B
            b"\x06": e.right,  # Ctrl-F
            b"\x0b": e.kill_to_end,  # Ctrl-K
            b"\x15": e.kill_to_start,  # Ctrl-U
            b"\x17": e.kill_word,  # Ctrl-W
            b"\x10": e.up,  # Ctrl-P
            b"\x0e": e.down,  # Ctrl-N
        }
        action = special.get(key)
        if action is not None:
            action()
            return
        if not isinstance(key, bytes) or len(key) != 1:  # other function keys (insults names them b"[F1]"...)
            return
        if modifier is not None:  # Alt-something: nothing bound
            return
        if key in (b"\r", b"\n"):
            self._submit()
        elif key in (b"\x7f", b"\x08"):
            e.backspace()
        elif key == b"\t":
            choices = e.complete(self.candidates)
            if choices:
                self.show("  ".join(escape_for_terminal(c) for c in choices))
        elif key == b"\x0c":
            self.terminal.eraseDisplay()
            self.terminal.cursorHome()
            self._status_shown = False
        elif key == b"\x03":  # Ctrl-C: clear the line; on an empty line, quit
            if e.chars or self._secret is not None:
                e.submit(remember=False)
                self._cancel_secret()
            else:
                self.on_quit()
        elif key == b"\x04":  # Ctrl-D: quit on an empty line, else delete
            if e.chars:
                e.delete()
            elif self._secret is None:
                self.on_quit()
        elif key >= b"\x80" or key >= b" ":
            text = self._decoder.decode(key)
            if text and text.isprintable():
                e.insert(text)

    def _cancel_secret(self) -> None:
        if self._secret is not None:
            _, d = self._secret
            self._secret = None
            d.errback(CommandError("cancelled"))

    def _submit(self) -> None:
        if self._secret is not None:
            _, d = self._secret
            self._secret = None
            d.callback(self.editor.submit(remember=False))
            return
        line = self.editor.submit()
        if line.strip().startswith("/"):
            self.show(f"{self.prompt}{escape_for_terminal(line)}")
        self.on_line(line)

    def unhandledControlSequence(self, seq: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        if not self.lost.called:
            self.lost.callback(None)
        self.on_quit()


# what may change the status row: transfer news, and any command that succeeded (an OK line)
_STATUS_NEWS = (TransferProgress, TransferEnded, FileOffered, *get_args(CommandSucceeded))


class Interactive:
    """Glue: client events become lines above the input; typed lines become commands."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.reactor = run.reactor
        self.console: ConsoleProtocol | None = None
        self.early: list[Shown] = []
        self.done: defer.Deferred[None] = defer.Deferred()
        self.client: ChatClient | None = None
        self.chats = Conversations()

    def show(self, event: Shown) -> None:
        if self.console is None:
            self.early.append(event)
            return
        if isinstance(event, _STATUS_NEWS):
            self.console.status_changed()
        line = human_line(event, self.reactor.seconds(), self.run.settings.accept_files)
        if line is not None:
            self.console.show(line)
        active = self.chats.active
        self.console.set_prompt(f"[{escape_for_terminal(active)}] > " if active else "> ")

    def status(self, width: int) -> str:
        if self.client is None:
            return ""
        return status_line([t for t in self.client.transfers() if t.state in _RUNNING], width)

    def quit(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    async def new_password(self) -> tuple[str, str]:
        """(current, new): the server checks the current one like a login before it takes the new one."""
        assert self.console is not None
        current = await self.console.ask_secret("current password: ")
        first = await self.console.ask_secret("new password: ")
        second = await self.console.ask_secret("new password again: ")
        if first != second:
            raise CommandError("the two passwords differ; nothing changed")
        return current, first


def run_lines(dispatcher: Dispatcher, quit: Callable[[], None]) -> Callable[[str], None]:
    """What the console does with each typed line: run it; quit after a /quit that took."""

    def line(text: str) -> None:
        d = defer.ensureDeferred(dispatcher.run_line(text))
        d.addCallback(lambda _: quit() if dispatcher.quitting else None)
        d.addErrback(_line_failed, quit)

    return line


def _line_failed(failure: Failure, quit: Callable[[], None]) -> None:
    log.failure("running a typed line", failure)
    quit()


async def run_interactive(run: Run) -> int:
    global _raw, _console
    ui = Interactive(run)
    client = await run.start(console_sink(ui.chats, ui.show))
    ui.client = client
    dispatcher = Dispatcher(client, ui.chats, ui.show, ui.new_password)
    dispatcher.confirm_quit = True
    run.stop_on_shutdown()

    console = ConsoleProtocol(run_lines(dispatcher, ui.quit), ui.quit,
                              lambda before: complete(before, dispatcher.users()), run.reactor,
                              run.reactor.seconds)  # fmt: skip
    console.watch_status(ui.status)
    _console = console
    _raw = RawMode(sys.stdin.fileno())
    _raw.enter()
    previous = signal.signal(signal.SIGWINCH, lambda *_: run.reactor.callFromThread(_resized, console))
    # a closed terminal window: log out cleanly like SIGTERM (the reactor only handles INT and TERM)
    previous_hup = signal.signal(signal.SIGHUP, lambda *_: run.reactor.callFromThread(run.reactor.stop))
    stdio = StandardIO(insults.ServerProtocol(lambda: console), reactor=run.reactor)
    try:
        ui.console = console
        for event in ui.early:
            ui.show(event)
        ui.show(await ready_event(client))
        await ui.done
        console.close()
        await run.stop()
    finally:
        signal.signal(signal.SIGWINCH, previous)
        signal.signal(signal.SIGHUP, previous_hup)
        console.closed = True
        stdio.loseConnection()
        restore_terminal()
    try:
        await console.lost.addTimeout(2, run.reactor)  # what is left to write has been written
    except defer.TimeoutError:
        pass
    return EXIT_OK


def _resized(console: ConsoleProtocol) -> None:
    width, height = terminal_size()
    console.terminalSize(width, height)
