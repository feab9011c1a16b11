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
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.stdio import StandardIO
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp.app import ChatClient
from chatapp.events import (
    ChatRequested,
    FileOffered,
    GaveUp,
    MessageReceived,
    PeerJoined,
    PeerLeft,
    PeerNotice,
    Reconnected,
    Reconnecting,
    ServerLost,
    TransferEnded,
    TransferProgress,
)
from chatapp.peer import Direction, Transfer, TransferState
from chatapp.wire import escape_for_terminal

from .chatlog import ChatLog
from .commands import CommandError, Conversations, Dispatcher, OfferTimers, console_sink
from .completion import console_complete
from .editor import LineEditor
from .errors import EXIT_OK
from .events import (
    ActiveChat,
    ChatClosed,
    ChatOpened,
    CommandFailed,
    CommandSucceeded,
    MessageSent,
    SessionReplaced,
    Shown,
)
from .output import PeerThrottle
from .rates import Rates
from .render import busy_again_line, human_line, quit_lines, status_line
from .run import Run, login_news
from .screen import ScreenOutput
from .width import fit_ellipsis, width
from .width import width as width_of
from .windows import Window, Windows

log = Logger()

STATUS_INTERVAL = 0.1  # at most ten status-line redraws a second
PASTE_START, PASTE_END = b"\x1b[200~", b"\x1b[201~"
BRACKETED_PASTE_ON, BRACKETED_PASTE_OFF = b"\x1b[?2004h", b"\x1b[?2004l"
# A paste bigger than this is cut (the rest dropped, said once on screen): it is held
# whole until its end marker, and a terminal that never sends one must not grow it forever.
MAX_PASTE_BYTES = 1024 * 1024
_RUNNING = {
    TransferState.PREPARING,
    TransferState.ACCEPTED,
    TransferState.SENDING,
    TransferState.RECEIVING,
    TransferState.ENDED,
}


class RawMode:
    """Puts a terminal in raw mode and always puts it back (explicitly, at exit, and after errors)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def enter(self) -> None:
        self.saved = termios.tcgetattr(self.fd)
        atexit.register(self.restore)
        tty.setraw(self.fd, termios.TCSANOW)

    def again(self) -> None:
        """Raw mode once more, after a suspend: the shell put the terminal back in cooked mode for itself."""
        if self.saved is not None:
            try:
                tty.setraw(self.fd, termios.TCSANOW)
            except termios.error:
                pass

    def cooked(self) -> None:
        """The terminal as it was before us, but still ours to put back in raw mode (a suspend)."""
        if self.saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
            except termios.error:
                pass

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
        try:  # the terminal would otherwise wrap every later paste in the shell with ESC[200~
            if os.isatty(1):
                os.write(1, BRACKETED_PASTE_OFF)
        except OSError:
            pass
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


class PasteSplitter:
    """Cuts a terminal's input into (bytes, inside a bracketed paste) parts; a marker may be split across reads."""

    def __init__(self) -> None:
        self.pasting = False
        self._held = b""  # the start of a marker that the next read may complete

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """The parts of ``data``; ``(b"", True)`` stands for the end of a paste."""
        data = self._held + data
        self._held = b""
        parts: list[tuple[bytes, bool]] = []
        while data:
            marker = PASTE_END if self.pasting else PASTE_START
            at = data.find(marker)
            if at < 0:
                keep = next((n for n in range(len(marker) - 1, 0, -1) if data.endswith(marker[:n])), 0)
                if keep:
                    data, self._held = data[:-keep], data[-keep:]
                if data:
                    parts.append((data, self.pasting))
                break
            if at:
                parts.append((data[:at], self.pasting))
            if self.pasting:
                parts.append((b"", True))
            self.pasting = not self.pasting
            data = data[at + len(marker) :]
        return parts


class ConsoleServerProtocol(insults.ServerProtocol):
    """insults' key decoder, plus one redraw per read (not per key) and bracketed paste cut out before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.splitter = PasteSplitter()
        self.screen: ScreenOutput | None = None  # bounds what waits for a terminal that stopped reading

    def write(self, data: bytes) -> None:
        if self.screen is None or self.screen.passes(len(data)):
            super().write(data)

    def dataReceived(self, data: bytes) -> None:
        console = self.terminalProtocol
        if not isinstance(console, ConsoleProtocol):
            super().dataReceived(data)
            return
        console.batch_begin()
        try:
            for part, in_paste in self.splitter.feed(data):
                if in_paste:
                    console.paste_data(part)
                else:
                    super().dataReceived(part)
        finally:
            console.batch_end()


class ConsoleProtocol(insults.TerminalProtocol):
    """Keys in, screen out.  ``on_line`` gets each finished line; ``on_quit`` is Ctrl-D (or Ctrl-C) on an empty line.

    ``on_window`` gets N for Alt-N (switch to window N).
    """

    def __init__(
        self,
        on_line: Callable[[str], None],
        on_quit: Callable[[], None],
        candidates: Callable[[str], list[str]],
        clock: Any,
        now: Callable[[], float],
        on_window: Callable[[int], None] = lambda n: None,
        on_suspend: Callable[[], None] = lambda: None,
    ) -> None:
        self.editor = LineEditor()
        self.on_suspend = on_suspend
        self.on_echo: Callable[[str], None] = lambda line: None  # a typed command, shown: keep it with the window
        self.suspended = False
        self.on_line = on_line
        self.on_quit = on_quit
        self.on_window = on_window
        self.candidates = candidates
        self.clock = clock
        self.now = now
        self.prompt = "> "
        self.status = ""
        self.width, self.height = 80, 24
        self._status_shown = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._paste_decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._paste: list[str] = []
        self._paste_size = 0
        self._paste_cut = False
        self._paste_cut_told = False
        self._confirm: list[str] | None = None  # the lines of a multi-line paste, waiting for y/n
        self._batching = False
        self._dirty = False
        self._secret: tuple[str, defer.Deferred[str]] | None = None  # a question the next line answers
        self._hidden = True  # that answer is not shown while typed (a password)
        self._status_source: Callable[[int], str] = lambda width: ""
        self._status_timer: IDelayedCall | None = None
        self._status_drawn_at = float("-inf")
        self.closed = False
        self.cleared = False  # close() has wiped the input row
        self.lost: defer.Deferred[None] = defer.Deferred()

    # -- screen ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.width, self.height = terminal_size()
        self.terminal.write(BRACKETED_PASTE_ON)  # a paste then arrives as ESC[200~ ... ESC[201~
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
            # never wider than the screen: a row that wraps leaves a stale copy at each redraw
            t.write(fit_ellipsis(self.status, self.width - 1).encode("utf-8") + b"\n")  # insults writes CR LF
            self._status_shown = True
        prompt = self._secret[0] if self._secret is not None else self.prompt
        prompt = fit_ellipsis(prompt, max(self.width // 2, 1))
        prompt_cells = width(prompt)
        if self._secret is not None and self._hidden:
            shown, column = "", 0
        else:
            shown, column = self.editor.visible(self.width - prompt_cells - 1)
        t.write((prompt + shown).encode("utf-8"))
        t.write(b"\r")
        if prompt_cells + column:
            t.cursorForward(prompt_cells + column)

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

    def repaint(self, lines: list[str]) -> None:
        """Clear the screen and show ``lines`` (the last ones that fit) above the input: another window."""
        if self.closed:
            return
        t = self.terminal
        t.eraseDisplay()
        t.cursorHome()
        self._status_shown = False
        rows = max(self.height - 2, 0)
        for line in lines[-rows:] if rows else []:
            t.write(line.encode("utf-8") + b"\n")
        self._draw()

    def leave_for_suspend(self) -> bytes:
        """What to write, at once, before the terminal goes back to the shell: the input rows wiped, paste off.

        Returned rather than written through the transport, which writes later, when the reactor
        runs again, and that is after the process stopped.
        """
        self.suspended = True
        out = b"\r\x1b[2K"
        if self._status_shown:
            out += b"\x1b[1A\x1b[2K"
            self._status_shown = False
        return out + BRACKETED_PASTE_OFF

    def come_back(self) -> None:
        """After SIGCONT: bracketed paste on again (the shell turned it off) and the rows drawn anew."""
        self.suspended = False
        if self.closed:
            return
        self.width, self.height = terminal_size()  # the window may have been resized meanwhile
        self.terminal.write(BRACKETED_PASTE_ON)
        self.redraw()

    def bell(self) -> None:
        if not self.closed:
            self.terminal.write(b"\x07")

    def set_prompt(self, prompt: str) -> None:
        if prompt != self.prompt:
            self.prompt = prompt
            self.redraw()

    def watch_status(self, source: Callable[[int], str]) -> None:
        self._status_source = source

    def status_changed(self) -> None:
        """Redraw the status row now, or within STATUS_INTERVAL if it was drawn just before."""
        if self.closed:
            return  # transfers ending while we quit must not draw the rows close() wiped
        if self._status_timer is not None and self._status_timer.active():
            return
        wait = self._status_drawn_at + STATUS_INTERVAL - self.clock.seconds()
        if wait > 0:
            self._status_timer = self.clock.callLater(wait, self._update_status)
        else:
            self._update_status()

    def _update_status(self) -> None:
        self._status_timer = None
        if self.closed:
            return
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
            self.terminal.write(BRACKETED_PASTE_OFF)
            self.cleared = True
            self.closed = True

    # -- keys ------------------------------------------------------------------------

    def ask_secret(self, prompt: str) -> defer.Deferred[str]:
        """The next line typed, not echoed and not kept in the history (for /passwd).

        Ctrl-C or Esc on it fails the Deferred with ``CommandError("cancelled")``.
        """
        return self._ask(prompt, hidden=True)

    def ask_line(self, prompt: str) -> defer.Deferred[str]:
        """The next line typed, shown as it is typed but not kept in the history (a yes/no question)."""
        return self._ask(prompt, hidden=False)

    def _ask(self, prompt: str, hidden: bool) -> defer.Deferred[str]:
        self._cancel_secret()  # one question at a time: an older one is cancelled
        d: defer.Deferred[str] = defer.Deferred()
        self._secret, self._hidden = (prompt, d), hidden
        self.redraw()
        return d

    def batch_begin(self) -> None:
        """A read starts: keys only mark the screen dirty, :meth:`batch_end` redraws once."""
        self._batching = True
        self._dirty = False

    def batch_end(self) -> None:
        self._batching = False
        if self._dirty:
            self._dirty = False
            self.redraw()

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        try:
            self._key(keyID, modifier)
        except Exception:
            log.failure("handling a key")
        if self._batching:
            self._dirty = True
        else:
            self.redraw()

    def paste_data(self, part: bytes) -> None:
        """Bytes of a bracketed paste; ``b""`` is its end, when the whole paste goes to the editor at once."""
        self._dirty = True
        if part:
            if self._paste_size + len(part) > MAX_PASTE_BYTES:
                part = part[: max(MAX_PASTE_BYTES - self._paste_size, 0)]
                self._paste_cut = True
            self._paste_size += len(part)
            if part:
                self._paste.append(self._paste_decoder.decode(part))
            return
        text = "".join(self._paste) + self._paste_decoder.decode(b"", final=True)
        cut = self._paste_cut
        self._paste, self._paste_size, self._paste_cut = [], 0, False
        self._paste_decoder.reset()
        if cut and not self._paste_cut_told:  # once: a terminal that keeps pasting must not fill the screen
            self._paste_cut_told = True
            self.show(f"-- paste cut to its first {MAX_PASTE_BYTES} bytes")
        if self._confirm is not None:
            return  # still waiting for y/n about the previous paste: this one is dropped, not mixed in
        if self._secret is not None:
            self.editor.insert(text.splitlines()[0] if text else "")
            return
        self._pasted(self.editor.paste(text))

    def _pasted(self, lines: list[str]) -> None:
        if not lines:
            return  # a paste without a line break: inserted into the line
        # as irssi does: ask before sending several messages; the line being typed stays as it was,
        # and is not part of them
        sending = [line for line in lines if line.strip()]
        if not sending:
            return
        self._confirm = sending
        self.show(f"-- paste of {len(lines)} lines: send {len(sending)} as {len(sending)} messages? (y/n)")

    def _answer_paste(self, key: Any) -> None:
        lines, self._confirm = self._confirm or [], None
        if key in (b"y", b"Y"):  # what was typed before the paste stays in the line
            for line in lines:
                self.on_line(line)
        else:
            self.show("-- paste not sent")

    def _key(self, key: Any, modifier: Any) -> None:
        if self._confirm is not None:
            self._answer_paste(key)
            return
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
        if modifier is not None:  # Alt-1..9: window 1..9; other Alt keys: nothing bound
            if modifier == t.ALT and b"1" <= key <= b"9":
                self.on_window(int(key))
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
        elif key == b"\x1a":  # Ctrl-Z: raw mode gets it as a key, not as SIGTSTP
            self.on_suspend()
        elif key == b"\x03":  # Ctrl-C: clear the line; on an empty line, quit
            if e.text or self._secret is not None:
                e.submit(remember=False)
                self._cancel_secret()
            else:
                self.on_quit()
        elif key == b"\x04":  # Ctrl-D: quit on an empty line, else delete
            if e.text:
                e.delete()
            elif self._secret is None:
                self.on_quit()
        elif key >= b" ":
            text = self._decoder.decode(key)
            if text:
                e.insert(text)  # the editor keeps Cc out; ZWJ/ZWNJ (Cf) must go in

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
            echo = f"{self.prompt}{escape_for_terminal(line)}"
            self.show(echo)
            self.on_echo(echo)  # so a redraw (a resize, fg, another window and back) shows it again
        self.on_line(line)

    def unhandledControlSequence(self, seq: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        if not self.lost.called:
            self.lost.callback(None)
        self.on_quit()


def _write_now(data: bytes) -> None:
    try:  # a few bytes to a terminal that reads: one write takes them (fd 1 is non-blocking now)
        os.write(1, data)
    except OSError:
        pass


def _stop_self() -> None:
    """Stop as the shell's Ctrl-Z would: SIGTSTP with its default action, so the shell sees "Stopped"."""
    previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    try:
        os.kill(os.getpid(), signal.SIGTSTP)  # delivered before kill() returns: we stop here until SIGCONT
    finally:
        signal.signal(signal.SIGTSTP, previous)


class Suspender:
    """Ctrl-Z (or a SIGTSTP) hands the terminal back to the shell, then stops; SIGCONT takes it back and redraws.

    Raw mode turns Ctrl-Z into a key, so the console stops itself: input rows wiped,
    bracketed paste off, the terminal's own modes back, then SIGTSTP.  On SIGCONT
    (``fg``, or a ``kill -CONT`` after a SIGSTOP that nobody could catch) the
    shell has left the terminal cooked: raw mode again, paste on, the screen redrawn.
    """

    def __init__(
        self,
        raw: RawMode,
        console: ConsoleProtocol,
        repaint: Callable[[], None],
        write_now: Callable[[bytes], None] = _write_now,
        stop: Callable[[], None] = _stop_self,
    ) -> None:
        self.raw = raw
        self.console = console
        self.repaint = repaint
        self.write_now = write_now
        self.stop = stop

    def suspend(self) -> None:
        if self.console.closed:
            return
        self.write_now(self.console.leave_for_suspend())
        self.raw.cooked()
        self.stop()

    def resumed(self) -> None:
        if self.console.closed:
            return
        self.raw.again()
        self.console.come_back()
        self.repaint()  # the shell wrote over our screen ("Stopped", "fg")


# what may change the status row: transfer news, and any command that succeeded (an OK line)
_STATUS_NEWS = (TransferProgress, TransferEnded, FileOffered, *get_args(CommandSucceeded))
# news from the server link, or someone knocking: window 1's, not the chat shown's
_NOTICES = (ServerLost, Reconnecting, Reconnected, GaveUp, SessionReplaced, ChatRequested)
# news that cuts this session from the server: said in window 1 and where you are (commands fail until /reconnect)
_CUT_OFF = (SessionReplaced, GaveUp)
# a line of these kinds marks its window in the activity list: something is waiting for you there
_FOR_YOU = (MessageReceived, FileOffered)


def _our_offer(event: Shown) -> bool:
    return isinstance(event, TransferEnded) and event.transfer.direction is Direction.SEND


def chat_of(event: Shown) -> tuple[str | None, bool]:
    """The peer whose window ``event`` is shown in (None: the window shown), and whether it opens that window."""
    match event:
        case MessageReceived(session) | PeerJoined(session):
            return session.peer_name, True
        case MessageSent(to):
            return to, True
        case ChatOpened(user):
            return user, True
        case PeerLeft(session) | PeerNotice(session):
            return session.peer_name, False
        case FileOffered(_, t) | TransferEnded(t):
            return t.peer, False
        case ChatClosed(user) | ChatRequested(user):
            return user, False
    return None, False


class Interactive:
    """Glue: client events become lines in their windows; typed lines become commands."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.reactor = run.reactor
        self.console: ConsoleProtocol | None = None
        self.early: list[Shown] = []
        self.done: defer.Deferred[None] = defer.Deferred()
        self.client: ChatClient | None = None
        self.chats = Conversations()
        self.windows = Windows()
        self.chatlog: ChatLog | None = None
        self.rates = Rates(run.reactor)

    def show(self, event: Shown) -> None:
        if self.console is None:
            self.early.append(event)
            return
        if isinstance(event, _STATUS_NEWS):
            self.console.status_changed()
        line = human_line(event, self.reactor.seconds(), self.run.settings.accept_files)
        if isinstance(event, TransferEnded) and self._sending_again(event.transfer):
            line = busy_again_line(event.transfer, self.reactor.seconds())
        name, opens = chat_of(event)
        windows = self.windows
        window = windows.current
        created = False
        if name:
            count = len(windows.windows)
            found = windows.open(name) if opens else windows.find(name)
            created = len(windows.windows) > count
            window = found or window
        if isinstance(event, _NOTICES) and not (name and windows.find(name) is windows.current):
            # news that is no answer to what you typed: window 1 (marked in the activity list),
            # unless it is about the chat shown
            window = windows.status
        if created and windows.current is windows.status and len(windows.windows) == 2:
            # the first conversation: go there, as before there were windows (the screen stays as it is)
            self._select(window)
        elif isinstance(event, ChatOpened) or (isinstance(event, ActiveChat) and event.user):
            target = windows.find(event.user or "")
            if target is not None and target is not windows.current:
                self._switch(target)
        if line is not None:
            # what we just sent (typed in another window), how an offer of ours ended, and losing the
            # server for good answer what we typed or matter to what we type next: shown where we are, too
            shown_here = _our_offer(event) or isinstance(event, (MessageSent, *_CUT_OFF))
            if shown_here and window is not windows.current:
                windows.add(windows.current, line)
                self.console.show(line)
            if windows.add(window, line, for_you=isinstance(event, _FOR_YOU), news=not isinstance(event, MessageSent)):
                self.console.show(line)
            elif isinstance(event, MessageSent):
                pass  # our own line, echoed where we are: nothing new in its window
            else:
                self.console.status_changed()  # the activity list
                if isinstance(event, MessageReceived):
                    self.console.bell()
            if self.chatlog is not None and name and window.name is not None:
                self.chatlog.write(name, line)
        self._prompt()

    def _sending_again(self, t: Transfer) -> bool:
        """``t`` is our offer refused busy while an offer of ours of the same name and size to them runs."""
        if t.direction is not Direction.SEND or t.state is not TransferState.REJECTED or t.reason != "busy":
            return False
        if self.client is None:
            return False
        return any(o is not t and o.direction is Direction.SEND and not o.finished and o.peer == t.peer
                   and o.name == t.name and o.size == t.size for o in self.client.transfers())  # fmt: skip

    def _prompt(self) -> None:
        assert self.console is not None
        active = self.chats.active
        self.console.set_prompt(f"[{escape_for_terminal(active)}] > " if active else "> ")

    def _select(self, window: Window) -> None:
        self.windows.show(window)
        if window.name is not None:
            self.chats.active = window.name  # plain lines go to the chat shown

    def _switch(self, window: Window) -> None:
        """Show ``window``: the screen is redrawn with its lines."""
        assert self.console is not None
        self._select(window)
        self.console.repaint(list(window.lines))
        self._prompt()
        self.console.status_changed()

    def switch_window(self, target: str) -> None:
        try:
            window = self.windows.switch(target)
        except LookupError as e:
            raise CommandError(str(e)) from None
        self._switch(window)

    def alt_window(self, number: int) -> None:
        if number > len(self.windows.windows):
            if self.console is not None:
                self.console.bell()
            return
        self.switch_window(str(number))

    def list_windows(self) -> None:
        assert self.console is not None
        for window in self.windows.windows:
            shown = " (shown)" if window is self.windows.current else ""
            unread = f", {window.unread} unread" if window.unread else ""
            mark = ", a message for you" if window.for_you else ""
            name = escape_for_terminal(window.name) if window.name is not None else "status"
            self.console.show(f"  {window.number}:{name}{shown}{unread}{mark}")

    def lastlog(self, text: str) -> None:
        assert self.console is not None
        found = self.windows.lastlog(text)
        shown = escape_for_terminal(text)
        self.console.show(f"-- lastlog {shown}: {len(found)} line(s)" if found else f"-- no line contains {shown}")
        for line in found:
            self.console.show(line)

    def status(self, width: int) -> str:
        running = [t for t in self.client.transfers() if t.state in _RUNNING] if self.client is not None else []
        # the activity list takes a third of the row at most when files move, so their numbers show
        activity = self.windows.activity_text(width // 3 if running else width)
        room = width - (width_of(activity) + 1 if activity else 0)
        transfers = status_line(running, room, speeds=self.rates.speed) if running else ""
        return fit_ellipsis(" ".join(p for p in (activity, transfers) if p), width)

    def candidates(self, before: str, dispatcher: Dispatcher) -> list[str]:
        users = sorted(set(dispatcher.users()) | set(self.windows.names()))
        transfers = self.client.transfers if self.client is not None else list
        names = [w.name for w in self.windows.windows if w.name is not None]
        return console_complete(before, users, transfers, names)

    def repaint(self) -> None:
        """The window shown, drawn again from its lines (after a suspend)."""
        if self.console is not None:
            self.console.repaint(list(self.windows.current.lines))

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


def _open_chatlog(run: Run) -> tuple[ChatLog | None, str | None]:
    """The --log-dir writer, or None and why not (shown once the screen is up)."""
    if not run.settings.log_dir:
        return None, None
    chatlog = ChatLog(run.settings.log_dir, run.reactor)
    try:
        chatlog.open()
    except OSError as e:
        return None, f"--log-dir {run.settings.log_dir}: {e.strerror or e}; chats are not logged"
    return chatlog, None


async def run_interactive(run: Run) -> int:
    global _raw, _console
    ui = Interactive(run)
    screen = ScreenOutput(ui.repaint)
    throttle = PeerThrottle(screen)
    client = await run.start(throttle.sink(console_sink(ui.chats, ui.show, ui.rates)))
    ui.client = client
    throttle.client = client
    ui.chatlog, chatlog_error = _open_chatlog(run)
    dispatcher = Dispatcher(client, ui.chats, ui.show, ui.new_password, run.password)
    dispatcher.offer_timers = OfferTimers(client, run.reactor, run.settings.offer_timeout, ui.show)
    dispatcher.confirm_quit = True
    dispatcher.views = ui
    run.stop_on_shutdown()

    console = ConsoleProtocol(run_lines(dispatcher, ui.quit), ui.quit,
                              lambda before: ui.candidates(before, dispatcher), run.reactor,
                              run.reactor.seconds, on_window=ui.alt_window)  # fmt: skip
    console.watch_status(ui.status)
    console.on_echo = ui.windows.keep_echo
    if run.trust_question is not None:  # the screen owns the terminal now: a trust question goes to it
        run.trust_question.console = console
    # a stall shows even when no event comes: the status row is recomputed every second
    status_ticks = task.LoopingCall(console.status_changed)
    status_ticks.clock = run.reactor
    status_ticks.start(1.0, now=False)
    _console = console
    _raw = RawMode(sys.stdin.fileno())
    _raw.enter()
    previous = signal.signal(signal.SIGWINCH, lambda *_: run.reactor.callFromThread(_resized, console, ui.repaint))
    # a closed terminal window: log out cleanly like SIGTERM (the reactor only handles INT and TERM)
    previous_hup = signal.signal(signal.SIGHUP, lambda *_: run.reactor.callFromThread(run.reactor.stop))
    suspender = Suspender(_raw, console, ui.repaint)
    console.on_suspend = suspender.suspend
    previous_tstp = signal.signal(signal.SIGTSTP, lambda *_: run.reactor.callFromThread(suspender.suspend))
    previous_cont = signal.signal(signal.SIGCONT, lambda *_: run.reactor.callFromThread(suspender.resumed))
    server_protocol = ConsoleServerProtocol(lambda: console)
    server_protocol.screen = screen
    stdio = StandardIO(server_protocol, reactor=run.reactor)
    screen.attach(stdio)  # its writer says when its buffer is full and when it drained
    try:
        ui.console = console
        for event in ui.early:
            ui.show(event)
        if chatlog_error is not None:
            ui.show(CommandFailed(chatlog_error))
        for news in login_news(client):
            ui.show(news)
        await ui.done
        status_ticks.stop()
        for line in quit_lines(client.transfers(), run.reactor.seconds()):
            console.show(line)  # kept above the shell's prompt: what became of each transfer
        console.close()
        await run.stop()
        if ui.chatlog is not None:
            await _settle(ui.chatlog.stop(), run.reactor)
    finally:
        if run.trust_question is not None:
            run.trust_question.console = None
        if status_ticks.running:
            status_ticks.stop()
        dispatcher.offer_timers.stop()
        signal.signal(signal.SIGWINCH, previous)
        signal.signal(signal.SIGHUP, previous_hup)
        signal.signal(signal.SIGTSTP, previous_tstp)
        signal.signal(signal.SIGCONT, previous_cont)
        console.closed = True
        stdio.loseConnection()
        restore_terminal()
    await _settle(console.lost, run.reactor)  # what is left to write has been written
    return EXIT_OK


async def _settle(d: defer.Deferred[None], reactor: Any) -> None:
    try:
        await d.addTimeout(2, reactor)
    except defer.TimeoutError:
        pass


def _resized(console: ConsoleProtocol, repaint: Callable[[], None]) -> None:
    """A new size: the screen is drawn anew, since a terminal that rewraps its rows (tmux, most emulators)
    has cut the old input and status rows into several, which erasing the bottom row would leave behind."""
    width, height = terminal_size()
    console.width, console.height = width, height
    repaint()
