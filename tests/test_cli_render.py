"""Rendering: script lines, human lines, escaping of peer text, the status line; the line editor and the console."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from twisted.conch.insults import insults
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatapp.cli.editor import LineEditor, visible
from chatapp.cli.render import Event, eta, human_eta, human_line, human_rate, percent, script_line, status_line
from chatapp.cli.terminal import ConsoleProtocol
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


EVIL = "\x1b[2J\x1b]0;title\x07\u202e\r\n"


def test_script_lines_are_one_line_with_everything_escaped() -> None:
    assert script_line(Event("MSG", ("bob",), "hi there")) == "MSG bob hi there"
    line = script_line(Event("OFFER", ("1", "bob", "10"), f"a{EVIL}b.txt"))
    assert line == "OFFER 1 bob 10 a\\x1b[2J\\x1b]0;title\\x07\\u202e\\x0d\\x0ab.txt"
    assert (
        script_line(
            Event("X", ("two words", "")),
        )
        == "X two\\x20words -"
    )
    assert script_line(Event("MSG", ("bob",), "back\\slash")) == "MSG bob back\\\\slash"


@pytest.mark.parametrize(
    "event",
    [
        Event("MSG", (f"b{EVIL}",), EVIL),
        Event("OFFER", ("1", f"b{EVIL}", "10"), EVIL),
        Event("DONE", ("1", "receive", f"b{EVIL}", "10"), EVIL),
        Event("FAILED", ("1", "send", f"b{EVIL}", "failed"), EVIL),
        Event("LEFT", (EVIL,), EVIL),
        Event("JOINED", (EVIL,)),
        Event("REQUEST", (EVIL,)),
        Event("NOTICE", (), EVIL),
        Event("ERROR", (), EVIL),
        Event("WHO", (EVIL, "online")),
        Event("TRANSFER", ("1", "receive", EVIL, "done", "1", "2"), EVIL),
        Event("OK", ("msg", EVIL, "me"), EVIL),
        Event("HELP", (), EVIL),
        Event("WHATEVER", (EVIL,), EVIL),
    ],
)
def test_human_lines_never_carry_control_characters(event: Event) -> None:
    line = human_line(event, 0.0)
    assert line is not None
    assert all(c.isprintable() for c in line), repr(line)
    assert "\\x1b[2J" in line or "\\x1b]0;title" in line


def test_human_lines() -> None:
    assert human_line(Event("MSG", ("bob",), "hi"), 0.0).endswith(" <bob> hi")  # type: ignore[union-attr]
    offer = human_line(Event("OFFER", ("3", "bob", str(5 * 1024**2)), "x.pdf"), 0.0)
    assert offer is not None and offer.endswith("* bob offers x.pdf (5.0 MiB): /accept 3 or /reject 3")
    assert human_line(Event("PROGRESS", ("1",)), 0.0) is None
    auto = human_line(Event("OFFER", ("3", "bob", "10"), "x.pdf"), 0.0, auto_accept=True)
    assert auto is not None and auto.endswith("* bob sends x.pdf (10 B); accepting it (#3, /cancel 3 stops it)")


def transfer(size: int, done: int, rate: float, direction: Direction = Direction.RECEIVE) -> Any:
    return FakeTransfer("big.iso", size, done, rate, direction, TransferState.RECEIVING, "bob")


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
    line = status_line([(1, transfer(100 * 1024**2, 25 * 1024**2, 5 * 1024**2))])
    assert line == "[#1 big.iso <-bob 25% 5.0 MiB/s ETA 00:15]"
    out: Any = FakeTransfer(f"e{EVIL}", 10, 5, 1.0, Direction.SEND, TransferState.SENDING, "al")
    line = status_line([(1, transfer(10, 1, 1.0)), (2, out)], width=200)
    assert "\x1b" not in line and "[#2 e\\x1b[2J" in line and "->al 50%" in line
    assert len(status_line([(n, transfer(10, 1, 1.0)) for n in range(20)], width=60)) == 60


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
