"""Rendering: script lines, human lines, escaping of peer text, the status line; the line editor and the console."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import pytest
from twisted.conch.insults import insults
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatapp.cli.editor import LineEditor, visible
from chatapp.cli.events import (
    ActiveChat,
    ChatClosed,
    ChatOpened,
    CommandFailed,
    FileOfferSent,
    FingerprintShown,
    HelpLine,
    HelpShown,
    IdentityMade,
    KeyTrusted,
    ListenState,
    LoggedInAgain,
    MessageSent,
    OfferTimedOut,
    PartialRow,
    PartialsCleaned,
    PartialsListed,
    PasswordChanged,
    Progress,
    Quitting,
    Ready,
    SessionReplaced,
    Shown,
    TransferAnswered,
    TransferCancelled,
    TransferResuming,
    TransferRow,
    TransfersListed,
    TransferStalled,
    WhoListed,
    WhoRow,
)
from chatapp.cli.rates import TransferSummary
from chatapp.cli.render import clock, eta, human_eta, human_line, human_rate, percent, script_line, status_line
from chatapp.cli.terminal import ConsoleProtocol
from chatapp.cli.width import width as cells
from chatapp.client import ConnectionClosed
from chatapp.events import (
    ChatRequested,
    FileOffered,
    GaveUp,
    KeyChanged,
    KeyRefused,
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
from chatapp.peer import Direction, TransferState


@dataclass
class FakeTransfer:
    name: str
    size: int
    bytes_done: int
    rate: float
    direction: Direction
    state: TransferState
    peer: str
    handle: int = 1
    reason: str = ""
    path: str | None = None
    offset: int = 0
    started: float | None = None
    kept: int = 0
    already: int = 0

    @property
    def finished(self) -> bool:
        return self.state.final


@dataclass
class FakeSession:
    peer_name: str | None


EVIL = "\x1b[2J\x1b]0;title\x07\u202e\r\n"


def session(name: str | None) -> Any:
    return FakeSession(name)


def transfer(
    size: int,
    done: int,
    rate: float,
    direction: Direction = Direction.RECEIVE,
    state: TransferState = TransferState.RECEIVING,
    **more: Any,
) -> Any:
    name, peer = more.pop("name", "big.iso"), more.pop("peer", "bob")
    return FakeTransfer(name, size, done, rate, direction, state, peer, **more)


BOB = session("bob")
OFFERED = transfer(10, 0, 0.0, state=TransferState.OFFERED, handle=3, name="x.pdf")
DONE_IN = transfer(10, 10, 0.0, state=TransferState.DONE, handle=4, path="/home/al/x.txt", name="x.txt")
FAILED_OUT = transfer(10, 3, 0.0, Direction.SEND, state=TransferState.REJECTED, handle=5, reason="too-large")

# every kind of line, byte for byte as docs/console.md documents it
SCRIPT_LINES: list[tuple[Shown, str]] = [
    (Ready("alice", ("192.0.2.7", 40123)), "READY alice listening 192.0.2.7 40123"),
    (Ready("alice", None), "READY alice online"),
    (WhoListed(2), "OK who 2"),
    (ChatOpened("bob"), "OK chat bob"),
    (MessageSent("bob", "alice", "hi  bob"), "OK msg bob alice hi  bob"),
    (ActiveChat("bob"), "OK to bob"),
    (ActiveChat(None), "OK to"),
    (FileOfferSent(1, "bob", 1048600, "slides 2.pdf"), "OK send 1 bob 1048600 slides 2.pdf"),
    (TransferAnswered("accept", 3), "OK accept 3"),
    (TransferAnswered("reject", 3), "OK reject 3"),
    (TransferAnswered("cancel", 3), "OK cancel 3"),
    (TransfersListed(0), "OK transfers 0"),
    (ChatClosed("bob"), "OK close bob"),
    (ListenState(("192.0.2.7", 40123)), "OK listen on 192.0.2.7 40123"),
    (ListenState(None), "OK listen off"),
    (PasswordChanged(), "OK passwd"),
    (HelpShown(), "OK help"),
    (Quitting(), "OK quit"),
    (CommandFailed("/msg nobody: there is no such user (404 no-such-user)"),
     "ERROR /msg nobody: there is no such user (404 no-such-user)"),
    (WhoRow("bob", "listening"), "WHO bob listening"),
    (TransferRow(transfer(2048, 1024, 9.0, handle=2)), "TRANSFER 2 receive bob receiving 1024 2048 big.iso"),
    (HelpLine("/who  who is online"), "HELP /who  who is online"),
    (ChatRequested("bob"), "REQUEST bob"),
    (PeerJoined(BOB), "JOINED bob"),
    (PeerLeft(BOB, "connection-lost"), "LEFT bob connection-lost"),
    (PeerLeft(BOB, ""), "LEFT bob closed"),
    (MessageReceived(BOB, "hi there"), "MSG bob hi there"),
    (FileOffered(BOB, OFFERED), "OFFER 3 bob 10 x.pdf"),
    (TransferProgress(transfer(2048, 1024, 99.7, handle=2)), "PROGRESS 2 receive bob receiving 1024 2048 99"),
    (TransferEnded(DONE_IN), "DONE 4 receive bob 10 /home/al/x.txt"),
    (TransferEnded(FAILED_OUT), "FAILED 5 send bob rejected too-large"),
    (PeerNotice(BOB, "the disk is full"), "NOTICE bob: the disk is full"),
    (ServerLost(ConnectionClosed("gone")),
     "NOTICE lost the server connection (the server closed the connection (gone)); open chats go on"),
    (Reconnecting(1.37, 3), "NOTICE reconnecting to the server in 1.4 s (attempt 3)"),
    (Reconnected("alice", ("192.0.2.7", 40123)),
     "NOTICE reconnected to the server as alice, listening on 192.0.2.7:40123"),
    (Reconnected("alice", None), "NOTICE reconnected to the server as alice"),
    (GaveUp(RuntimeError("logged in elsewhere")), "NOTICE gave up reconnecting to the server: logged in elsewhere"),
    (TransferCancelled(2, 1024, False), "OK cancel 2 kept 1024"),
    (TransferCancelled(2, None, True), "OK cancel 2 discarded"),
    (TransferCancelled(5, None, False), "OK cancel 5"),
    (PartialRow("bob", "big iso", 100, 400, 1767268800.5), "PARTIAL bob 100 400 1767268800 big iso"),
    (PartialsListed(1), "OK partials 1"),
    (PartialsCleaned(3), "OK partials clean 3"),
    (LoggedInAgain("alice", ("192.0.2.7", 40123)), "OK reconnect alice listening 192.0.2.7 40123"),
    (LoggedInAgain("alice", None), "OK reconnect alice online"),
    (TransferResuming(transfer(4096, 1024, 0.0, handle=2, offset=1024)), "RESUME 2 receive bob 1024 4096"),
    (Progress(transfer(2048, 1024, 99.7, handle=2), 512.4), "PROGRESS 2 receive bob receiving 1024 2048 512"),
    (TransferStalled(transfer(2048, 1024, 9.0, handle=2), 12.3), "STALLED 2 receive bob 12"),
    (TransferSummary(DONE_IN, 10, 2.0, 5.0), "SUMMARY 4 receive bob 10 2.0 5"),
    (OfferTimedOut(OFFERED, 300.0), "TIMEOUT 3 bob 300 x.pdf"),
    (SessionReplaced("you logged in elsewhere"), "NOTICE you logged in elsewhere"),
    (KeyRefused("alice"), "KEYREFUSED alice"),
    (
        IdentityMade("alice", "sha256:" + "ab" * 32, "/home/a/.local/share/chatapp/identity/h_1/alice.pem"),
        "NOTICE made a new identity key for alice on this server: sha256:" + "ab" * 32
        + " (kept in /home/a/.local/share/chatapp/identity/h_1/alice.pem); contacts compare it with /fingerprint,"
        " and those who chatted with you before see a changed key",
    ),
    (
        KeyChanged("bob", "sha256:" + "a" * 64, "sha256:" + "b" * 64),
        f"KEYCHANGED bob sha256:{'a' * 64} sha256:{'b' * 64}",
    ),
    (
        KeyChanged("bob", "sha256:" + "a" * 64, "sha256:" + "b" * 64, accepted=True),
        f"KEYCHANGED bob sha256:{'a' * 64} sha256:{'b' * 64} accepted",
    ),
    (KeyTrusted("bob", "sha256:" + "a" * 64, "sha256:" + "b" * 64), f"OK trust bob sha256:{'b' * 64}"),
    (FingerprintShown(None, "sha256:" + "c" * 64), f"OK fingerprint sha256:{'c' * 64}"),
    (FingerprintShown("bob", None), "OK fingerprint bob none"),
]  # fmt: skip


@pytest.mark.parametrize(("event", "line"), SCRIPT_LINES)
def test_script_lines_keep_their_documented_format(event: Shown, line: str) -> None:
    assert script_line(event) == line


def test_every_kind_of_event_has_a_script_line_test() -> None:
    assert {type(e) for e, _ in SCRIPT_LINES} == set(get_args(Shown))


def test_script_lines_are_one_line_with_everything_escaped() -> None:
    offer = FileOffered(BOB, transfer(10, 0, 0.0, state=TransferState.OFFERED, name=f"a{EVIL}b.txt"))
    assert script_line(offer) == "OFFER 1 bob 10 a\\x1b[2J\\x1b]0;title\\x07\\u202e\\x0d\\x0ab.txt"
    assert script_line(WhoRow("two words", "")) == "WHO two\\x20words -"
    assert script_line(MessageReceived(BOB, "back\\slash")) == "MSG bob back\\\\slash"
    assert script_line(PeerJoined(session(None))) == "JOINED ?"


def test_a_message_with_line_separators_stays_one_script_line() -> None:
    line = script_line(MessageReceived(BOB, "hi\u2028OFFER 9 mallory 1 x\u2029done \U0001f469\u200d\U0001f4bb"))
    assert line.splitlines() == [line]
    assert line == "MSG bob hi\\u2028OFFER 9 mallory 1 x\\u2029done \U0001f469\u200d\U0001f4bb"


EVIL_BOB = session(f"b{EVIL}")


@pytest.mark.parametrize(
    "event",
    [
        MessageReceived(EVIL_BOB, EVIL),
        FileOffered(EVIL_BOB, transfer(10, 0, 0.0, state=TransferState.OFFERED, name=EVIL, peer=f"b{EVIL}")),
        TransferEnded(transfer(10, 10, 0.0, state=TransferState.DONE, path=EVIL, peer=f"b{EVIL}")),
        TransferEnded(transfer(10, 1, 0.0, Direction.SEND, state=TransferState.FAILED, reason=EVIL, peer=f"b{EVIL}")),
        PeerLeft(EVIL_BOB, EVIL),
        PeerJoined(EVIL_BOB),
        ChatRequested(EVIL),
        PeerNotice(EVIL_BOB, EVIL),
        ServerLost(ConnectionClosed(EVIL)),
        GaveUp(ConnectionClosed(EVIL)),
        Reconnected(EVIL, (EVIL, 1)),
        CommandFailed(EVIL),
        WhoRow(EVIL, "online"),
        TransferRow(transfer(2, 1, 0.0, state=TransferState.DONE, name=EVIL, peer=EVIL)),
        MessageSent(EVIL, "me", EVIL),
        FileOfferSent(1, EVIL, 10, EVIL),
        ChatOpened(EVIL),
        ActiveChat(EVIL),
        ChatClosed(EVIL),
        ListenState((EVIL, 1)),
        Ready(EVIL, (EVIL, 1)),
        HelpLine(EVIL),
    ],
)
def test_human_lines_never_carry_control_characters(event: Shown) -> None:
    line = human_line(event, 0.0)
    assert line is not None
    assert all(c.isprintable() for c in line), repr(line)
    assert "\\x1b[2J" in line or "\\x1b]0;title" in line


def test_human_lines() -> None:
    assert human_line(MessageReceived(BOB, "hi"), 0.0).endswith(" <bob> hi")  # type: ignore[union-attr]
    offered = transfer(5 * 1024**2, 0, 0.0, state=TransferState.OFFERED, handle=3, name="x.pdf")
    offer = human_line(FileOffered(BOB, offered), 0.0)
    assert offer is not None and offer.endswith("* bob offers x.pdf (5.0 MiB): /accept 3 or /reject 3")
    offered.already = 1024**2
    again = human_line(FileOffered(BOB, offered), 0.0) or ""
    assert again.endswith(
        "* bob offers x.pdf (5.0 MiB; 1.0 MiB of it already here, /accept resumes): /accept 3 or /reject 3"
    )
    assert human_line(TransferProgress(offered), 0.0) is None
    auto = human_line(FileOffered(BOB, OFFERED), 0.0, auto_accept=True)
    assert auto is not None and auto.endswith("* bob sends x.pdf (10 B); accepting it (#3, /cancel 3 stops it)")
    expected: list[tuple[Shown, str | None]] = [
        (MessageSent("bob", "alice", "hey"), "<alice -> bob> hey"),
        (TransferEnded(DONE_IN), "* #4 received from bob (10 B): /home/al/x.txt"),
        (TransferEnded(FAILED_OUT), "* #5 to bob ended: too-large"),
        (TransferRow(transfer(2048, 1024, 0.0, handle=2)), "  #2 big.iso from bob: receiving 50% of 2.0 KiB"),
        (Ready("al", None), "* logged in as al, not listening (/listen on to accept chats); /help lists the commands"),
        (ListenState(("h", 1)), "* listening on h:1"),
        (ChatClosed("bob"), "* closed the chat with bob; a plain line to bob opens it again"),
        (PeerLeft(BOB, "closed"), None),  # we closed it: the line above said so
        (PeerLeft(BOB, "bye"), "* chat with bob closed (bye)"),
        (
            KeyRefused("al"),
            "! al connected and left without a word: most likely al's client refuses your key, which is not"
            " the one it remembers for you (a new identity key?). Show al your /fingerprint; al can /trust you"
            " once it matches",
        ),
        (
            IdentityMade("al", "sha256:" + "cd" * 32, "/h/al.pem"),
            "* made a new identity key for al on this server (/fingerprint shows it);"
            " contacts you chatted with before will see it as a changed key",
        ),
        (  # at signup nobody knows an older key: nothing changes for anyone
            IdentityMade("al", "sha256:" + "cd" * 32, "/h/al.pem", new_account=True),
            "* made your identity key on this server (/fingerprint shows it, for contacts to compare)",
        ),
        (ListenState(("2001:db8::7", 7000)), "* listening on [2001:db8::7]:7000"),  # the port is not part of it
        (Ready("al", ("::1", 40123)), "* logged in as al, listening on [::1]:40123; /help lists the commands"),
        (LoggedInAgain("al", ("fe80::1", 9)), "* logged in again as al, listening on [fe80::1]:9"),
        (Reconnected("al", ("::1", 2)), "* reconnected to the server as al, listening on [::1]:2"),
        (TransferAnswered("cancel", 2), "* #2 cancelled"),
        (WhoListed(3), "* 3 online"),
        (PasswordChanged(), "* password changed"),
        (Reconnecting(0.6, 1), "* reconnecting to the server in 0.6 s (attempt 1)"),
        (TransfersListed(1), None),  # the rows said it all
        (TransfersListed(0), "* no transfers yet"),
        (Quitting(), None),
    ]
    for event, body in expected:
        assert human_line(event, 0.0) == (None if body is None else f"{clock(0.0)} {body}")
    assert human_line(HelpLine("/who  who is online"), 0.0) == "/who  who is online"  # no time on help lines


def test_percent_rate_eta() -> None:
    t = transfer(1000, 250, 50.0)
    assert percent(t) == 25
    assert eta(t) == 15.0
    assert human_eta(eta(t)) == "00:15"
    assert human_eta(3725) == "1:02:05"
    assert human_eta(None) == "--:--"
    assert eta(transfer(1000, 0, 0.0)) is None
    assert percent(transfer(0, 0, 0.0)) == 100
    assert human_rate(1.5 * 1024**2) == "1.5 MiB/s"
    assert human_rate(12) == "12 B/s"


def test_status_line() -> None:
    line = status_line([transfer(100 * 1024**2, 25 * 1024**2, 5 * 1024**2)])
    assert line == "[#1 big.iso <-bob 25% 5.0 MiB/s ETA 00:15]"
    out: Any = FakeTransfer(f"e{EVIL}", 10, 5, 1.0, Direction.SEND, TransferState.SENDING, "al", handle=2)
    line = status_line([transfer(10, 1, 1.0), out], width=200)
    assert "\x1b" not in line and "[#2 e\\x1b[2J" in line and "->al 50%" in line
    crowded = status_line([transfer(10, 1, 1.0, handle=n) for n in range(20)], width=60)
    assert len(crowded) <= 60 and crowded.endswith(" more")


# -- the line editor -------------------------------------------------------------------


def test_editing_keys() -> None:
    e = LineEditor()
    e.insert("hello world")
    e.home()
    e.delete()
    e.insert("H")
    e.end()
    e.kill_word()
    assert e.text == "Hello "
    e.left()
    e.backspace()
    assert (e.text, e.cursor) == ("Hell ", 4)
    e.kill_to_end()
    e.insert("é日")
    assert e.text == "Hellé日" and e.cursor == 6
    e.kill_to_start()
    assert e.text == ""


def test_history() -> None:
    e = LineEditor()
    for line in ["one", "two", "two", "  "]:
        e.insert(line)
        e.submit()
    assert e.history == ["one", "two"]
    e.insert("draft")
    e.up()
    assert e.text == "two"
    e.up()
    e.up()
    assert e.text == "one"
    e.down()
    e.down()
    assert e.text == "draft"
    e.insert("!")
    assert e.submit(remember=False) == "draft!" and e.history == ["one", "two"]


def test_completion() -> None:
    e = LineEditor()
    e.insert("/msg b")
    assert e.complete(lambda before: ["bob", "bea"]) == ["bob", "bea"]
    e.set_text("/msg bo")
    assert e.complete(lambda before: ["bob"]) == []
    assert e.text == "/msg bob "
    e.set_text("/c")
    assert e.complete(lambda before: ["/chat", "/change"]) == []
    assert e.text == "/cha"


def test_a_long_line_scrolls_sideways() -> None:
    chars = list("abcdefghijklmnopqrstuvwxyz")
    assert visible(chars, 3, 10) == ("abcdefghij", 3)
    shown, column = visible(chars, 26, 10)
    assert shown == "rstuvwxyz" and column == 9
    shown, column = visible(list("日本語です"), 5, 6)
    assert column <= 5 and shown.endswith("す")


# -- the console on a fake terminal ---------------------------------------------------------


class Console:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.quit = 0
        self.clock = Clock()
        self.console = ConsoleProtocol(
            self.lines.append, self._quit, lambda b: ["/who"], self.clock, self.clock.seconds
        )
        self.server = insults.ServerProtocol(lambda: self.console)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)

    def _quit(self) -> None:
        self.quit += 1

    def type(self, data: bytes) -> None:
        self.server.dataReceived(data)

    def output(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out


def test_incoming_lines_go_above_what_is_being_typed() -> None:
    c = Console()
    c.output()
    c.type(b"hel")
    assert c.console.editor.text == "hel"
    c.output()
    c.console.show("12:00 <bob> hi")
    out = c.output()
    # clear the input row, print the line, then draw the prompt with the half-typed text again
    assert out.startswith(b"\r\x1b[2K12:00 <bob> hi\r\n> hel")
    c.type(b"lo\r")
    assert c.lines == ["hello"]
    assert c.console.editor.text == ""


def test_keys_arrows_utf8_and_control_keys() -> None:
    c = Console()
    c.type("hé".encode())
    c.type(b"\x1b[D")  # left arrow
    c.type(b"\x7f")  # backspace
    assert c.console.editor.text == "é"
    c.type(b"\x01X\x05Y")  # Ctrl-A, Ctrl-E
    assert c.console.editor.text == "XéY"
    c.type(b"\x1b]0;x\x07")  # an escape sequence typed or pasted is not inserted as text
    assert "\x1b" not in c.console.editor.text
    c.type(b"\x15/w\t")  # Ctrl-U, then Tab completes
    assert c.console.editor.text == "/who "
    c.type(b"\x03")  # Ctrl-C clears a line
    assert c.console.editor.text == "" and c.quit == 0
    c.type(b"\x04")  # Ctrl-D on an empty line quits
    assert c.quit == 1


def test_secret_input_is_not_echoed_or_remembered() -> None:
    c = Console()
    d = c.console.ask_secret("new password: ")
    c.output()
    c.type(b"sekrit pw")
    assert b"sekrit" not in c.output()
    c.type(b"\r")
    assert d.result == "sekrit pw"
    assert c.lines == [] and c.console.editor.history == []


def test_an_unknown_server_is_asked_about_in_the_screen_once_it_owns_the_terminal() -> None:
    """A /reconnect to a server with a key not known yet: the question is in the input line, typed answers
    are shown, and nothing is read from stdin by a thread racing the screen."""
    from chatapp.cli.trust import AGAIN, QUESTION, TerminalTrust

    c = Console()
    trust = TerminalTrust(reactor=None)  # no thread pool is needed once a console is there
    trust.console = c.console
    fingerprint = "sha256:" + "ab" * 32
    d = trust("chat.example:7000", fingerprint)
    out = c.output().decode()
    assert "The chat server at chat.example:7000 is not known yet" in out and fingerprint in out
    assert out.endswith(f"\r\x1b[2K{QUESTION}\r\x1b[{len(QUESTION)}C")  # the input line is the question
    c.type(b"maybe")
    assert b"maybe" in c.output()  # shown while typed, unlike a password
    c.type(b"\r")
    assert not d.called and AGAIN in c.output().decode()
    c.type(b"yes\r")
    assert d.result is True
    assert c.lines == [] and c.console.editor.history == []  # answers are not chat lines
    refused = trust("chat.example:7000", fingerprint)
    c.type(b"\x03")  # Ctrl-C: no
    assert refused.result is False


def test_the_status_line_is_redrawn_at_most_ten_times_a_second() -> None:
    c = Console()
    c.output()
    status = ["[#1 a 1%]"]
    c.console.watch_status(lambda width: status[0])
    c.console.status_changed()
    assert c.output() == b"\r\x1b[2K[#1 a 1%]\r\n> \r\x1b[2C"
    status[0] = "[#1 a 2%]"
    c.console.status_changed()
    c.console.status_changed()
    assert c.output() == b""  # too soon: one redraw is scheduled
    c.clock.advance(0.1)
    assert b"[#1 a 2%]" in c.output()
    status[0] = ""
    c.clock.advance(1)
    c.console.status_changed()
    out = c.output()
    assert b"\x1b[1A" in out and b"[#1" not in out  # the status row is gone


def test_a_cancel_reads_as_a_cancel_on_both_sides() -> None:
    theirs = transfer(10, 3, 0.0, Direction.SEND, state=TransferState.REJECTED, handle=6, reason="cancelled")
    assert script_line(TransferEnded(theirs)) == "FAILED 6 send bob cancelled cancelled"
    assert script_line(TransferRow(theirs)) == "TRANSFER 6 send bob cancelled 3 10 big.iso"
    assert "cancelled 30%" in (human_line(TransferRow(theirs), 0.0) or "")


def test_resume_and_summary_lines_for_people() -> None:
    giant = transfer(4 * 1024**3, 1181116006, 0.0, handle=7, offset=1181116006)
    assert human_line(TransferResuming(giant), 0.0)[6:] == "* #7 big.iso resuming at 27 % (1.1 GiB already here)"  # type: ignore[index]
    sent = transfer(4 * 1024**3, 1181116006, 0.0, Direction.SEND, handle=8, offset=1181116006)
    assert "(1.1 GiB already there)" in (human_line(TransferResuming(sent), 0.0) or "")
    summary = TransferSummary(DONE_IN, 200 * 1024**2, 12.4, 200 * 1024**2 / 12.4)
    assert human_line(summary, 0.0)[6:] == "* #4 200.0 MiB in 12 s, average 16.1 MiB/s"  # type: ignore[index]
    kept = human_line(TransferCancelled(9, 1024**3, False), 0.0) or ""
    assert "1.0 GiB on disk are kept" in kept and "/partials clean" in kept


def test_a_long_name_gives_way_so_the_numbers_always_show_at_40_columns() -> None:
    long = transfer(100 * 1024**2, 25 * 1024**2, 5 * 1024**2, name="a-very-long-file-name-of-a-holiday-video-2024.mkv")
    line = status_line([long], width=39)
    assert cells(line) <= 39
    assert line == "[#1 a-very-… <-bob 25% 5.0 MiB/s 00:15]"  # 39 cells: the word ETA went, then the name
    line = status_line([long], width=60)
    assert line.startswith("[#1 a-very-long") and line.endswith("… <-bob 25% 5.0 MiB/s ETA 00:15]")
    wide = transfer(100, 50, 10.0, name="日本語のファイル名😀😀😀😀😀.bin", handle=2)
    line = status_line([wide], width=39)
    assert cells(line) <= 39 and line.endswith("日本語… <-bob 50% 10 B/s ETA 00:05]")
    # no room left for any of the name: an ellipsis stands for it, never a gap
    assert status_line([long], width=32) == "[#1 … <-bob 25% 5.0 MiB/s 00:15]"


def test_two_transfers_at_110_both_keep_their_numbers_and_too_many_say_how_many_more() -> None:
    first = transfer(100, 25, 5.0, name="x" * 80)
    second = transfer(100, 50, 10.0, Direction.SEND, TransferState.SENDING, name="y" * 80, peer="carol", handle=2)
    line = status_line([first, second], width=109)
    assert cells(line) <= 109
    assert "<-bob 25% 5 B/s ETA 00:15]" in line and line.endswith("->carol 50% 10 B/s ETA 00:05]")
    many = [transfer(100, 25, 5.0, name=f"file{n}.bin", handle=n) for n in range(1, 9)]
    line = status_line(many, width=109)
    assert cells(line) <= 109 and line.endswith(" more")
    shown = line.count("[#")
    assert 1 <= shown < 8 and line.endswith(f"+{8 - shown} more")
    assert line.count("ETA 00:15]") == shown  # whole entries only
    assert status_line(many, width=39) == "[#1 fil… <-bob 25% 5 B/s 00:15] +7 more"  # "ETA" went first


def test_who_stopped_a_transfer_is_said_in_words() -> None:
    by_sender = transfer(10, 3, 0.0, state=TransferState.CANCELLED, reason="cancelled", handle=7)
    by_receiver = transfer(10, 3, 0.0, Direction.SEND, TransferState.REJECTED, reason="cancelled", handle=8)
    timed_out = transfer(10, 0, 0.0, Direction.SEND, TransferState.CANCELLED, reason="timed-out", handle=9)
    assert (human_line(TransferEnded(by_sender), 0) or "").endswith("#7 from bob ended: cancelled by the sender")
    assert (human_line(TransferEnded(by_receiver), 0) or "").endswith("#8 to bob ended: cancelled by the receiver")
    late = human_line(TransferEnded(timed_out), 0) or ""
    assert late.endswith("#9 to bob ended: nobody answered the offer in time")
    by_sender.kept = 3
    ours_out = transfer(10, 3, 0.0, Direction.SEND, TransferState.CANCELLED, reason="cancelled", handle=10)
    ours_in = transfer(10, 3, 0.0, state=TransferState.REJECTED, reason="cancelled", handle=11)
    assert human_line(TransferEnded(ours_out), 0) is None  # "#10 cancelled" (the command's line) says it
    assert human_line(TransferEnded(ours_in), 0) is None
    left = transfer(10, 3, 0.0, state=TransferState.CANCELLED, reason="bye", handle=12)
    assert (human_line(TransferEnded(left), 0) or "").endswith("#12 from bob ended: bob closed the chat")
    assert (human_line(TransferEnded(by_sender), 0) or "").endswith(
        "#7 from bob ended: cancelled by the sender; the 3 B received are kept: the same offer again resumes"
    )


def test_a_summary_under_a_second_and_the_reason_of_an_ended_transfer_in_transfers() -> None:
    quick = TransferSummary(DONE_IN, 1000, 0.3, 3333.0)
    assert human_line(quick, 0.0)[6:].startswith("* #4 1000 B in under 1 s")  # type: ignore[index]
    broken = transfer(10, 10, 0.0, state=TransferState.FAILED, reason="hash-mismatch", handle=6)
    row = human_line(TransferRow(broken), 0.0) or ""
    assert row.endswith("#6 big.iso from bob: failed (hash-mismatch) 100% of 10 B")
    assert (human_line(TransferRow(FAILED_OUT), 0.0) or "").endswith(": rejected (too-large) 30% of 10 B")
    cancelled = transfer(10, 3, 0.0, state=TransferState.REJECTED, reason="cancelled", handle=7)
    assert (human_line(TransferRow(cancelled), 0.0) or "").endswith(": cancelled 30% of 10 B")
