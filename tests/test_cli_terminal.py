"""Interactive mode on a real pseudo-terminal (tmux): typing survives incoming lines, status line, escaping."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_processes import CHATAPP, PASSWORD, Chatapp
from processes import need_tool, start_server, stop

pytestmark = [
    pytest.mark.slow,
]


class Tmux:
    """One tmux server of our own, one window running a command; the screen and every raw byte written."""

    def __init__(self, tmp_path: Path, command: str) -> None:
        need_tool("tmux")
        self.socket = f"chatapp-test-{os.getpid()}-{time.monotonic_ns()}"
        self.raw = tmp_path / "tty.raw"
        self.raw.touch()
        self.tmux("new-session", "-d", "-x", "100", "-y", "24", "-s", "t", command)
        self.tmux("pipe-pane", "-o", "-t", "t", f"cat >> {shlex.quote(str(self.raw))}")

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], check=True, capture_output=True, text=True, timeout=10
        ).stdout

    def keys(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)

    def enter(self) -> None:
        self.tmux("send-keys", "-t", "t", "Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, check: Callable[[str], bool], timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never got there:\n{screen}")
            time.sleep(0.05)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    process, port = start_server(tmp_path)
    yield port
    stop(process)


def last_line(screen: str) -> str:
    lines = [line for line in screen.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_typing_survives_incoming_lines_and_peers_cannot_drive_the_terminal(server: int, tmp_path: Path) -> None:
    common = ["--server", f"127.0.0.1:{server}", "--listen", "tcp:0:interface=127.0.0.1"]
    bob = Chatapp(*common, "--user", "bob", "--signup", "--downloads", str(tmp_path / "bob"), cwd=tmp_path)
    bob.expect("^READY bob")
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(200 * 1024 * 1024)
    command = " ".join(
        shlex.quote(a)
        for a in [
            "env", f"CHATAPP_PASSWORD={PASSWORD}", str(CHATAPP), *common,
            "--user", "alice", "--signup", "--downloads", str(tmp_path / "alice"),
        ]
    )  # fmt: skip
    term = Tmux(tmp_path, f"{command}; echo EXIT=$?; stty -a | grep -o -- ' -*icanon '; sleep 60")
    try:
        # alice's signup: she is told her identity key was just made (and, being new, that nothing changed)
        first = term.wait_for(lambda s: "logged in as alice" in s and "made your identity key" in s)
        assert "made your identity key on this server (/fingerprint shows it, for contacts to compare)" in first
        term.keys("hel")
        term.wait_for(lambda s: last_line(s) == "> hel")
        bob.send("/msg alice look \x1b[2J\x1b]0;owned\x07 here")
        bob.expect("^OK msg alice")
        # the message is printed above the input line, escaped; the half-typed line is still there
        screen = term.wait_for(lambda s: "<bob> look" in s)
        assert "<bob> look \\x1b[2J\\x1b]0;owned\\x07 here" in screen
        assert last_line(screen) == "[bob] > hel"  # plain lines now go to bob
        term.keys("lo")
        term.enter()
        bob.expect("^MSG alice hello$")
        term.wait_for(lambda s: "<alice -> bob> hello" in s)
        # a file with a status line while it moves
        bob.send(f"/send alice {big}")
        term.wait_for(lambda s: "/accept 1" in s)
        term.keys("/accept 1")
        term.enter()
        term.wait_for(lambda s: "#1 received from bob" in s, timeout=30)
        assert (tmp_path / "alice" / "big.bin").stat().st_size == big.stat().st_size
        # Tab completes a command and a user name
        term.keys("/ms")
        term.tmux("send-keys", "-t", "t", "Tab")
        term.keys("b")
        term.tmux("send-keys", "-t", "t", "Tab")
        term.wait_for(lambda s: last_line(s) == "[bob] > /msg bob")
        term.tmux("send-keys", "-t", "t", "C-u")
        term.keys("/quit")
        term.enter()
        screen = term.wait_for(lambda s: "EXIT=0" in s and "icanon" in s)
        assert "\n icanon" in screen  # the terminal is back in line mode (not -icanon)
        raw = term.raw.read_bytes()
        assert b"\x1b]0;owned" not in raw  # the peer's escape sequences never reached the terminal raw
        assert b"\x1b[2J" not in raw
        assert re.search(rb"\[#1 big\.bin <-bob \d+% [0-9.]+ \w+/s ETA [0-9:-]+\]", raw), raw[-2000:]
    finally:
        term.close()
        bob.kill()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_sigterm_logs_out_and_gives_the_terminal_back(server: int, tmp_path: Path) -> None:
    command = " ".join(
        shlex.quote(a)
        for a in ["env", f"CHATAPP_PASSWORD={PASSWORD}", str(CHATAPP), "--server", f"127.0.0.1:{server}",
                  "--user", "zoe", "--signup", "--no-listen", "--downloads", str(tmp_path / "zoe")]
    )  # fmt: skip
    term = Tmux(tmp_path, f"{command}; echo EXIT=$?; stty -a | grep -o -- ' -*icanon '; sleep 60")
    try:
        term.wait_for(lambda s: "logged in as zoe, not listening" in s)
        term.keys("half a line")
        term.wait_for(lambda s: last_line(s) == "> half a line")
        shell = int(term.tmux("list-panes", "-t", "t", "-F", "#{pane_pid}").strip())
        (client,) = children(shell)
        os.kill(client, signal.SIGTERM)
        screen = term.wait_for(lambda s: "EXIT=" in s and "icanon" in s)
        assert "\nEXIT=0\n" in screen
        assert "\n icanon" in screen
    finally:
        term.close()


def test_ctrl_c_at_the_trust_question_stops_at_once_with_130_and_no_traceback(server: int, tmp_path: Path) -> None:
    """The question waits in a thread of its own: Ctrl-C ends the program without waiting for a line, the
    login that waited on the answer ends cleanly (no "Exception ignored" from a half-run coroutine), and
    nothing is pinned."""
    config = tmp_path / "fresh-config"  # this server is unknown here
    command = " ".join(
        shlex.quote(a)
        for a in ["env", f"CHATAPP_PASSWORD={PASSWORD}", f"XDG_CONFIG_HOME={config}", str(CHATAPP),
                  "--server", f"127.0.0.1:{server}", "--user", "yan", "--signup", "--no-listen",
                  "--downloads", str(tmp_path / "yan")]
    )  # fmt: skip
    term = Tmux(tmp_path, f"{command}; echo EXIT=$?; sleep 60")
    try:
        term.wait_for(lambda s: "trust this server?" in s)
        term.tmux("send-keys", "-t", "t", "C-c")
        screen = term.wait_for(lambda s: "EXIT=" in s)
        assert "\nEXIT=130\n" in screen, screen
        assert "chatapp: interrupted" in screen
        assert "Traceback" not in screen and "Exception ignored" not in screen
        assert not (config / "chatapp" / "known_servers").exists() or not (
            config / "chatapp" / "known_servers"
        ).read_text().strip()
    finally:
        term.close()
