"""Interactive mode on a real pseudo-terminal (tmux): a 10,000-character bracketed paste, wide names in a
narrow window, windows per chat.  The screen is asserted (capture-pane), never a timing."""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_processes import CHATAPP, PASSWORD, Chatapp
from processes import start_server, stop
from test_cli_terminal import Tmux, last_line

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    process, port = start_server(tmp_path)
    yield port
    stop(process)


def alice_command(server: int, tmp_path: Path, *extra: str) -> str:
    args = ["env", f"CHATAPP_PASSWORD={PASSWORD}", str(CHATAPP), "--server", f"127.0.0.1:{server}",
            "--listen", "tcp:0:interface=127.0.0.1", "--user", "alice", "--signup",
            "--downloads", str(tmp_path / "alice"), *extra]  # fmt: skip
    return " ".join(shlex.quote(a) for a in args) + "; echo EXIT=$?; sleep 60"


def start_bob(server: int, tmp_path: Path) -> Chatapp:
    bob = Chatapp("--server", f"127.0.0.1:{server}", "--listen", "tcp:0:interface=127.0.0.1", "--user", "bob",
                  "--signup", "--downloads", str(tmp_path / "bob"), cwd=tmp_path)  # fmt: skip
    bob.expect("^READY bob")
    return bob


def test_a_10000_character_paste_stays_one_row_and_arrives_whole(server: int, tmp_path: Path) -> None:
    bob = start_bob(server, tmp_path)
    term = Tmux(tmp_path, alice_command(server, tmp_path))
    try:
        term.wait_for(lambda s: "logged in as alice" in s)
        term.keys("/chat bob")
        term.enter()
        term.wait_for(lambda s: last_line(s) == "[bob] >")
        text = "".join(f"{n:05d}" for n in range(2000))  # 10,000 characters, every part recognisable
        term.tmux("set-buffer", "-b", "big", text)
        term.tmux("paste-buffer", "-p", "-b", "big", "-t", "t")  # -p: bracketed, since the console asked for it
        screen = term.wait_for(lambda s: last_line(s).endswith("01999"))
        assert last_line(screen).startswith("[bob] > ")
        assert len(last_line(screen)) < 100  # one row, scrolled sideways
        above = [row for row in screen.splitlines() if row.strip()][:-1]
        assert not any("01998" in row for row in above)  # nothing of it spilled above the input
        term.enter()
        bob.expect(f"^MSG alice {text}$")
        # a pasted line break does not send by itself: it asks first
        term.tmux("set-buffer", "-b", "two", "first\nsecond")
        term.tmux("paste-buffer", "-p", "-b", "two", "-t", "t")
        term.wait_for(lambda s: "send 2 as 2 messages? (y/n)" in s)
        term.keys("y")
        bob.expect("^MSG alice first$")
        bob.expect("^MSG alice second$")
        term.keys("/quit")
        term.enter()
        term.wait_for(lambda s: "EXIT=0" in s)
        assert b"\x1b[?2004l" in term.raw.read_bytes()  # bracketed paste is off again for the shell
    finally:
        term.close()
        bob.kill()


def test_a_wide_file_name_in_a_narrow_window_keeps_the_status_row_one_row(server: int, tmp_path: Path) -> None:
    bob = start_bob(server, tmp_path)
    big = tmp_path / "日本語のファイル名😀.bin"
    with open(big, "wb") as f:
        f.truncate(300 * 1024 * 1024)
    term = Tmux(tmp_path, alice_command(server, tmp_path))
    term.tmux("resize-window", "-t", "t", "-x", "40", "-y", "12")
    try:
        term.wait_for(lambda s: "logged in as alice" in s)
        bob.send(f"/send alice {big}")
        term.wait_for(lambda s: "/accept 1" in s)
        term.keys("/accept 1")
        term.enter()
        screens = []
        while True:
            screen = term.screen()
            screens.append(screen)
            if "#1 received from bob" in screen:
                break
            assert len(screens) < 2000, screen
            rows = screen.splitlines()
            status_rows = [i for i, row in enumerate(rows) if "[#1" in row]
            # at most one status row, and it is the row right above the input
            assert len(status_rows) <= 1, screen
            if status_rows:
                assert rows[status_rows[0] + 1].rstrip() in ("[bob] >", ">")
        final = term.wait_for(lambda s: "#1 received" in s and "[#1" not in s)
        assert "[#1" not in final  # no stale copy of the status row anywhere
        assert (tmp_path / "alice" / big.name).stat().st_size == big.stat().st_size
        raw = term.raw.read_bytes().decode("utf-8", "replace")
        assert "[#1 日本語" in raw  # the status row was drawn, cut to fit
    finally:
        term.close()
        bob.kill()


def test_a_second_chat_gets_its_own_window(server: int, tmp_path: Path) -> None:
    bob = start_bob(server, tmp_path)
    carol = Chatapp("--server", f"127.0.0.1:{server}", "--no-listen", "--user", "carol", "--signup",
                    "--downloads", str(tmp_path / "carol"), cwd=tmp_path)  # fmt: skip
    carol.expect("^READY carol")
    term = Tmux(tmp_path, alice_command(server, tmp_path))
    try:
        term.wait_for(lambda s: "logged in as alice" in s)
        bob.send("/msg alice hello from bob")
        term.wait_for(lambda s: "<bob> hello from bob" in s and last_line(s) == "[bob] >")
        carol.send("/msg alice a word from carol")
        carol.expect("^OK msg alice")
        screen = term.wait_for(lambda s: re.search(r"act: 3:carol\(\d+\)\*", s) is not None)
        assert "a word from carol" not in screen
        term.tmux("send-keys", "-t", "t", "M-3")
        screen = term.wait_for(lambda s: "<carol> a word from carol" in s)
        assert "hello from bob" not in screen and last_line(screen) == "[carol] >"
        term.keys("hi carol")
        term.enter()
        carol.expect("^MSG alice hi carol$")
        term.keys("/win 2")
        term.enter()
        screen = term.wait_for(lambda s: "hello from bob" in s and last_line(s) == "[bob] >")
        term.keys("/lastlog carol")
        term.enter()
        term.wait_for(lambda s: "3:carol: " in s and "hi carol" in s)
    finally:
        term.close()
        bob.kill()
        carol.kill()
