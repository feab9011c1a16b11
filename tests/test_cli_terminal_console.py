"""The interactive console on a fake terminal (StringTransport): bracketed paste, one redraw per read,
joiners, widths, windows, activity, bell, /lastlog, chat logs, completion."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatapp.cli import terminal
from chatapp.cli.chatlog import ChatLog
from chatapp.cli.commands import CommandError
from chatapp.cli.completion import console_complete, path_candidates
from chatapp.cli.events import ChatOpened, MessageSent, WhoListed
from chatapp.cli.terminal import (
    BRACKETED_PASTE_OFF,
    BRACKETED_PASTE_ON,
    MAX_PASTE_BYTES,
    ConsoleProtocol,
    ConsoleServerProtocol,
    Interactive,
    PasteSplitter,
)
from chatapp.cli.width import width
from chatapp.cli.windows import MAX_LINES, Windows
from chatapp.events import MessageReceived, TransferEnded
from chatapp.peer import Direction, TransferState

START, END = b"\x1b[200~", b"\x1b[201~"
CLEAR = b"\r\x1b[2K"  # every redraw starts by wiping the input row


class Console:
    def __init__(self, cols: int = 80) -> None:
        self.lines: list[str] = []
        self.windows: list[int] = []
        self.quit = 0
        self.clock = Clock()
        self.console = ConsoleProtocol(
            self.lines.append, self._quit, lambda b: [], self.clock, self.clock.seconds, on_window=self.windows.append
        )
        self.server = ConsoleServerProtocol(lambda: self.console)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.console.terminalSize(cols, 24)

    def _quit(self) -> None:
        self.quit += 1

    def type(self, data: bytes) -> None:
        self.server.dataReceived(data)

    def output(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out


def test_bracketed_paste_is_switched_on_at_start_and_off_on_close() -> None:
    c = Console()
    assert BRACKETED_PASTE_ON in c.output()
    c.console.close()
    assert BRACKETED_PASTE_OFF in c.output()


def test_a_10000_character_paste_in_4k_reads_goes_in_whole_with_one_redraw_per_read() -> None:
    c = Console()
    data = START + b"x" * 10_000 + END
    pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]
    pieces = [START[:3], START[3:] + pieces[0][len(START) :], *pieces[1:-1], pieces[-1][:-2], pieces[-1][-2:]]
    c.output()
    redraws = []
    for piece in pieces:
        c.type(piece)
        redraws.append(c.output().count(CLEAR))
    assert c.console.editor.text == "x" * 10_000
    assert c.lines == []
    assert all(n <= 1 for n in redraws) and redraws[-1] == 1  # per read, never per character
    assert not c.server.splitter.pasting


def test_typed_text_arriving_in_one_read_is_drawn_once() -> None:
    c = Console()
    c.output()
    c.type(b"a" * 3000)
    assert c.output().count(CLEAR) == 1
    assert c.console.editor.text == "a" * 3000


def test_a_multi_line_paste_asks_before_sending() -> None:
    c = Console()
    c.type(START + b"one\n\ntwo\n" + END)
    assert c.lines == [] and c.console.editor.text == ""
    assert b"paste of 3 lines: send 2 as 2 messages? (y/n)" in c.output()
    c.type(b"y")
    assert c.lines == ["one", "two"]
    c.type(START + b"three\nfour" + END)
    c.type(b"n")
    assert c.lines == ["one", "two"] and c.console.editor.text == ""
    assert b"paste not sent" in c.output()


def test_a_paste_past_the_cap_is_cut_and_said_once() -> None:
    c = Console()
    big = b"y" * (MAX_PASTE_BYTES + 5000)
    for _ in range(2):
        c.type(START)
        for i in range(0, len(big), 65536):
            c.type(big[i : i + 65536])
            assert c.console._paste_size <= MAX_PASTE_BYTES  # held until the end marker, bounded
        c.type(END)
        assert len(c.console.editor.text) in (MAX_PASTE_BYTES, 2 * MAX_PASTE_BYTES)
    assert c.output().count(b"paste cut") == 1


def test_a_paste_cut_inside_a_utf8_character_is_decoded_whole() -> None:
    c = Console()
    text = "日本語👩\u200d💻".encode()
    c.type(START + text[:4])
    c.type(text[4:] + END)
    assert c.console.editor.text == "日本語👩\u200d💻"


# an emoji ZWJ sequence and Persian with a ZWNJ ("I want"), written with escapes for the linter
PERSIAN = "👩\u200d💻 \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"


def test_typed_joiners_reach_the_line_and_the_peer() -> None:
    c = Console()
    typed = PERSIAN.encode()
    for i in range(len(typed)):
        c.type(typed[i : i + 1])  # one byte per read, as a slow terminal delivers it
    c.type(b"\r")
    assert c.lines == [PERSIAN]


def test_alt_digit_switches_windows() -> None:
    c = Console()
    c.type(b"\x1b3")
    c.type(b"\x1bx")
    assert c.windows == [3]
    assert c.console.editor.text == ""


def test_the_splitter_keeps_a_marker_cut_anywhere() -> None:
    data = b"ab" + START + b"p\r" + END + b"c"
    for cut in range(len(data) + 1):
        s = PasteSplitter()
        parts = s.feed(data[:cut]) + s.feed(data[cut:])
        typed = b"".join(p for p, pasting in parts if not pasting)
        pasted = b"".join(p for p, pasting in parts if pasting)
        assert (typed, pasted) == (b"abc", b"p\r"), cut
        assert parts.count((b"", True)) == 1


def rows_drawn(out: bytes) -> list[str]:
    """The text of each row written, escape sequences left out."""
    import re

    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", out).decode()
    return [row for row in text.replace("\r", "\n").split("\n") if row]


def test_a_wide_status_and_prompt_never_take_more_than_the_screen() -> None:
    c = Console(cols=30)
    c.console.watch_status(lambda cells: "[#1 日本語のファイル名😀😀😀😀.bin <-bob 12% 1.0 MiB/s ETA 00:10]")
    c.console.set_prompt("[日本語の長い名前の人] > ")
    c.console.status_changed()
    c.type("字".encode() * 40)
    for row in rows_drawn(c.output()):
        assert width(row) <= 29, row


# -- windows -----------------------------------------------------------------------------


class FakeSession:
    def __init__(self, name: str) -> None:
        self.peer_name = name


def interactive() -> tuple[Interactive, Console]:
    run: Any = SimpleNamespace(reactor=Clock(), settings=SimpleNamespace(accept_files=False))
    ui = Interactive(run)
    c = Console()
    ui.console = c.console
    c.console.on_window = ui.alt_window
    c.console.watch_status(ui.status)
    return ui, c


def test_the_first_chat_is_shown_as_before_and_a_second_one_gets_a_window_with_activity_and_a_bell() -> None:
    ui, c = interactive()
    ui.show(WhoListed(2))
    c.output()
    ui.show(MessageReceived(FakeSession("bob"), "hi"))  # type: ignore[arg-type]
    out = c.output()
    assert b"<bob> hi" in out and b"\x1b[2J" not in out  # shown at once, the screen not cleared
    assert ui.chats.active == "bob" and c.console.prompt == "[bob] > "
    ui.show(MessageReceived(FakeSession("carol"), "psst"))  # type: ignore[arg-type]
    out = c.output()
    assert b"psst" not in out and b"\x07" in out  # not shown, but rung
    assert ui.status(80) == "act: 3:carol(1)*"
    c.type(b"\x1b3")  # Alt-3
    out = c.output()
    assert b"\x1b[2J" in out and b"<carol> psst" in out and b"<bob>" not in out
    assert ui.chats.active == "carol" and ui.status(80) == ""
    ui.show(MessageSent("bob", "me", "back"))
    assert b"<me -> bob> back" in c.output()  # echoed where it was typed
    assert ui.status(80) == ""  # and no news waiting in bob's window: we wrote it
    ui.switch_window("bob")
    out = c.output()
    assert b"<bob> hi" in out and b"back" in out
    with pytest.raises(CommandError):
        ui.switch_window("9")
    with pytest.raises(CommandError):
        ui.switch_window("dave")


def test_opening_a_chat_switches_to_its_window() -> None:
    ui, _ = interactive()
    ui.show(MessageReceived(FakeSession("bob"), "hi"))  # type: ignore[arg-type]
    ui.show(ChatOpened("carol"))
    assert ui.windows.current.name == "carol" and ui.chats.active == "carol"


def test_lastlog_searches_every_window() -> None:
    ui, c = interactive()
    ui.show(MessageReceived(FakeSession("bob"), "the Key is here"))  # type: ignore[arg-type]
    ui.show(MessageReceived(FakeSession("carol"), "no KEY"))  # type: ignore[arg-type]
    ui.show(MessageReceived(FakeSession("carol"), "nothing"))  # type: ignore[arg-type]
    c.output()
    ui.lastlog("key")
    out = c.output().decode()
    assert "2:bob: " in out and "3:carol: " in out and "nothing" not in out and "2 line(s)" in out


def test_windows_lines_and_names_are_bounded() -> None:
    w = Windows(max_windows=5, max_lines=10)
    for n in range(100):
        window = w.open(f"user{n}")
        for i in range(50):
            w.add(window, f"line {i}")
    assert len(w.windows) == 5
    assert all(len(window.lines) <= 10 for window in w.windows)
    assert w.open("user99") is w.status  # past the cap, new chats share window 1
    assert len(w.lastlog("line", limit=7)) == 7
    assert MAX_LINES == 2000
    for n in range(2000):
        w.remember(f"u{n}")
    assert len(w.names()) == 500 and "u1999" in w.names()


# -- chat logs --------------------------------------------------------------------------


def test_chat_logs_are_appended_per_peer_0600_in_order_and_bounded(tmp_path: Path) -> None:
    waiting: list[tuple[defer.Deferred[None], Any, tuple[Any, ...]]] = []

    def in_thread(f: Any, *args: Any) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        waiting.append((d, f, args))
        return d

    chatlog = ChatLog(str(tmp_path / "logs"), None, in_thread=in_thread, now=lambda: 0.0, max_pending=100)
    chatlog.open()
    chatlog.write("Bob", "12:00 <bob> one")
    chatlog.write("bob", "12:01 <bob> two")  # queued while the first write is out
    for n in range(20):
        chatlog.write("carol", f"12:02 <carol> line {n}")
    assert chatlog.pending_bytes <= 100  # a slow disk: the queue stops growing
    assert len(waiting) == 1
    stopped = chatlog.stop()
    while waiting:
        d, f, args = waiting.pop(0)
        f(*args)
        d.callback(None)
    assert stopped.called
    path = tmp_path / "logs" / "bob.log"
    assert path.read_text().splitlines()[0].endswith("12:00 <bob> one")
    assert path.read_text().splitlines()[1].endswith("12:01 <bob> two")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    chatlog.write("../evil", "x")
    assert not waiting  # not a user name: never a path


# -- completion ---------------------------------------------------------------------------


class T:
    def __init__(self, handle: int, direction: Direction, state: TransferState) -> None:
        self.handle, self.direction, self.state = handle, direction, state
        self.finished = state in (TransferState.DONE, TransferState.FAILED)


def test_tab_completes_paths_after_send_and_handles_after_accept(tmp_path: Path, monkeypatch: Any) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photo.jpg").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert path_candidates("~/pho") == ["~/photo.jpg", "~/photos/"]
    assert path_candidates("~/") == ["~/photo.jpg", "~/photos/"]
    monkeypatch.chdir(tmp_path)
    assert console_complete("/send bob ph", [], list) == ["photo.jpg", "photos/"]
    transfers: Any = [
        T(1, Direction.RECEIVE, TransferState.OFFERED),
        T(2, Direction.SEND, TransferState.OFFERED),
        T(3, Direction.RECEIVE, TransferState.DONE),
        T(12, Direction.RECEIVE, TransferState.RECEIVING),
    ]
    assert console_complete("/accept ", [], lambda: transfers) == ["1"]
    assert console_complete("/cancel 1", [], lambda: transfers) == ["1", "12"]
    assert console_complete("/win b", [], list, ["bob", "carol"]) == ["bob"]
    assert console_complete("/msg b", ["bob"], list) == ["bob"]


def test_people_who_wrote_stay_in_completion_after_who() -> None:
    ui, _ = interactive()
    ui.show(MessageReceived(FakeSession("zed"), "hi"))  # type: ignore[arg-type]
    dispatcher: Any = SimpleNamespace(users=lambda: ["amy"])
    assert ui.candidates("/msg z", dispatcher) == ["zed"]


def test_restore_terminal_turns_bracketed_paste_off(monkeypatch: Any) -> None:
    written: list[bytes] = []
    raw: Any = SimpleNamespace(saved=[1], restore=lambda: None)
    monkeypatch.setattr(terminal, "_raw", raw)
    monkeypatch.setattr(terminal, "_console", None)
    monkeypatch.setattr(terminal.os, "isatty", lambda fd: True)

    def write(fd: int, data: bytes) -> int:
        written.append(data)
        return len(data)

    monkeypatch.setattr(terminal.os, "write", write)
    terminal.restore_terminal()
    assert BRACKETED_PASTE_OFF in written


def test_ctrl_z_wipes_the_rows_turns_paste_off_gives_the_modes_back_then_stops_and_sigcont_redraws() -> None:
    c = Console()
    c.console.watch_status(lambda cells: "[#1 a.bin <-bob 12% 1.0 MiB/s ETA 00:10]")
    c.console.status_changed()
    c.type(b"typed")
    c.output()
    steps: list[Any] = []
    raw: Any = SimpleNamespace(cooked=lambda: steps.append("cooked"), again=lambda: steps.append("raw"))
    suspender = terminal.Suspender(raw, c.console, lambda: steps.append("repaint"), steps.append,
                                   lambda: steps.append("stop"))  # fmt: skip
    c.console.on_suspend = suspender.suspend
    c.type(b"\x1a")
    written, *rest = steps
    assert rest == ["cooked", "stop"]  # the screen first, then the modes, then the stop
    assert written == b"\r\x1b[2K\x1b[1A\x1b[2K" + BRACKETED_PASTE_OFF  # input and status rows wiped
    assert c.console.editor.text == "typed"  # nothing typed is lost
    steps.clear()
    suspender.resumed()
    assert steps == ["raw", "repaint"]
    out = c.output()
    assert BRACKETED_PASTE_ON in out and b"> typed" in out


def test_a_second_offer_refused_busy_says_why_and_shows_where_the_user_is() -> None:
    from test_cli_render import FakeTransfer

    ui, c = interactive()
    ui.show(MessageReceived(FakeSession("bob"), "hi"))  # type: ignore[arg-type]
    ui.show(MessageReceived(FakeSession("carol"), "hey"))  # type: ignore[arg-type]
    ui.switch_window("carol")  # the user looks at carol's window
    first = FakeTransfer("a.iso", 100, 10, 1.0, Direction.SEND, TransferState.SENDING, "bob", handle=1)
    again = FakeTransfer("a.iso", 100, 0, 0.0, Direction.SEND, TransferState.REJECTED, "bob", handle=2, reason="busy")
    ui.client = SimpleNamespace(transfers=lambda: [first, again])  # type: ignore[assignment]
    c.output()
    ui.show(TransferEnded(again))  # type: ignore[arg-type]
    out = c.output().decode()
    assert "#2 a.iso not sent: bob is already receiving a file of that name and size from you" in out
    assert ui.windows.current.name == "carol"
    assert any("already receiving" in line for line in ui.windows.find("bob").lines)  # type: ignore[union-attr]
    # busy for another reason: the receiver's word, explained
    other = FakeTransfer("b.iso", 100, 0, 0.0, Direction.SEND, TransferState.REJECTED, "bob", handle=3, reason="busy")
    ui.show(TransferEnded(other))  # type: ignore[arg-type]
    assert "#3 to bob ended: bob is busy (receiving that file from you already, or too many" in c.output().decode()


def test_text_typed_before_a_multi_line_paste_stays_in_the_line_and_is_not_glued_to_it() -> None:
    c = Console()
    c.type(b"typed ")
    c.type(START + b"one\ntwo" + END)
    c.type(b"y")
    assert c.lines == ["one", "two"]  # the lines asked about, exactly
    assert c.console.editor.text == "typed "  # still there, to finish or send on its own
    c.type(b"\r")
    assert c.lines == ["one", "two", "typed "]


def test_notices_go_to_window_1_and_mark_it_unless_about_the_chat_shown() -> None:
    from chatapp.client import ConnectionClosed
    from chatapp.events import ChatRequested, Reconnecting, ServerLost

    ui, c = interactive()
    ui.show(MessageReceived(FakeSession("bob"), "hi"))  # type: ignore[arg-type]
    ui.show(MessageReceived(FakeSession("carol"), "hey"))  # type: ignore[arg-type]
    ui.switch_window("bob")
    c.output()
    ui.show(ServerLost(ConnectionClosed(None, "reset")))
    ui.show(Reconnecting(1.5, 1))
    ui.show(ChatRequested("carol"))
    out = c.output()
    assert b"lost the server" not in out and b"reconnecting" not in out and b"carol is opening" not in out
    assert ui.windows.status.unread == 3 and ui.status(80).startswith("act: 1:status(3)")
    ui.show(ChatRequested("bob"))  # about the chat shown: shown here
    assert b"bob is opening a chat with you" in c.output()
    ui.show(WhoListed(2))  # the answer to a command: where you are
    assert b"2 online" in c.output()
    from chatapp.cli.events import SessionReplaced

    ui.show(SessionReplaced("you logged in elsewhere: the server closed this session; /reconnect logs in here again"))
    assert b"you logged in elsewhere" in c.output()  # cut off from the server: said where you are too
    assert ui.windows.status.lines[-1].endswith("/reconnect logs in here again")


def test_a_login_elsewhere_is_one_line_not_three() -> None:
    from chatapp.cli.commands import Conversations, console_sink
    from chatapp.cli.events import SessionReplaced
    from chatapp.client import ConnectionClosed
    from chatapp.events import GaveUp, ServerLost

    shown: list[Any] = []
    hear = console_sink(Conversations(), shown.append)
    closed = ConnectionClosed("replaced", "")
    hear(ServerLost(closed))
    hear(GaveUp(closed))
    assert len(shown) == 1 and isinstance(shown[0], SessionReplaced)
    assert "/reconnect logs in here again" in shown[0].text
    hear(ServerLost(ConnectionClosed(None, "reset")))  # any other loss is still said
    assert isinstance(shown[-1], ServerLost)


def test_win_alone_lists_the_windows() -> None:
    ui, c = interactive()
    ui.show(MessageReceived(FakeSession("bob"), "hi"))  # type: ignore[arg-type]
    ui.show(MessageReceived(FakeSession("carol"), "hey"))  # type: ignore[arg-type]
    c.output()
    ui.list_windows()
    rows = rows_drawn(c.output())
    assert "  1:status" in rows and "  2:bob (shown)" in rows and "  3:carol, 1 unread, a message for you" in rows


def test_nothing_is_drawn_after_close_not_even_a_status_row_that_changed() -> None:
    """Quitting with a transfer running: the transfer ends while the client stops, after the rows were
    wiped; drawing its changed status row then left it and a prompt above the shell's."""
    c = Console()
    status = ["[#9 big.bin ->bob 17% stalled 15 s]"]
    c.console.watch_status(lambda width: status[0])
    c.console.status_changed()
    c.clock.advance(5)
    assert b"big.bin" in c.output()
    c.console.close()
    c.output()
    status[0] = ""
    c.console.status_changed()
    c.clock.advance(5)
    assert c.output() == b""


def test_quitting_says_what_becomes_of_each_running_transfer() -> None:
    from chatapp.cli.render import quit_lines

    sending = SimpleNamespace(
        handle=9, name="big.bin", peer="bob", direction=Direction.SEND, state=TransferState.SENDING,
        bytes_done=17, size=100, finished=False, offset=0,
    )  # fmt: skip
    receiving = SimpleNamespace(**vars(sending))
    receiving.handle, receiving.direction, receiving.state = 3, Direction.RECEIVE, TransferState.RECEIVING
    receiving.bytes_done, receiving.size = 64 * 1024**2, 300 * 1024**2
    offered = SimpleNamespace(**{**vars(sending), "handle": 4, "state": TransferState.OFFERED, "bytes_done": 0})
    done = SimpleNamespace(**{**vars(sending), "handle": 5, "finished": True})
    lines = quit_lines([sending, receiving, offered, done], 0.0)  # type: ignore[list-item]
    assert [line.split(" * ", 1)[1] for line in lines] == [
        "#9 big.bin to bob stops at 17%: sending it again resumes if the receiver kept it",
        "#3 big.bin from bob stops at 21%; the 64.0 MiB received are kept: the same offer again resumes",
        "#4 big.bin to bob: the offer ends unanswered",
    ]


def test_a_line_sent_from_another_window_is_echoed_where_it_was_typed() -> None:
    ui, c = interactive()
    ui.show(MessageReceived(FakeSession("bob"), "hi"))  # type: ignore[arg-type]
    ui.show(MessageReceived(FakeSession("carol"), "hey"))  # type: ignore[arg-type]
    ui.switch_window("1")  # the status window; plain lines still go to the active chat
    c.output()
    ui.show(MessageSent("bob", "alice", "after trust: hello again"))
    assert b"<alice -> bob> after trust: hello again" in c.output()
    bob = ui.windows.find("bob")
    assert bob is not None and bob.lines[-1].endswith("<alice -> bob> after trust: hello again")
    assert bob.unread == 0  # our own line is not news waiting in bob's window
    with pytest.raises(LookupError, match="no window for dave: /chat dave opens one"):
        ui.windows.switch("dave")


def test_a_typed_command_stays_on_the_screen_after_a_redraw() -> None:
    ui, c = interactive()
    c.console.on_echo = ui.windows.keep_echo
    ui.show(MessageReceived(FakeSession("bob"), "hi"))  # type: ignore[arg-type]
    c.type(b"/who\r")
    c.output()
    ui.repaint()  # what a resize, fg, or Alt-1 and back do
    out = c.output()
    assert b"<bob> hi" in out and b"/who" in out
    assert ui.windows.lastlog("who") == []  # the command typed is not a line /lastlog finds
