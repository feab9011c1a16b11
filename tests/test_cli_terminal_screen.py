"""Interactive mode on a real pseudo-terminal (tmux): a 10,000-character bracketed paste, wide names in a
narrow window, windows per chat.  The screen is asserted (capture-pane), never a timing."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_processes import CHATAPP, PASSWORD, Chatapp
from processes import start_server, stop
from test_cli_terminal import Tmux, last_line

pytestmark = [
    pytest.mark.slow,
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
                # the name gave way, not the numbers: percent, rate and ETA (or a stall) are on the row
                # ("ETA" itself goes first when the row is short of room)
                assert re.search(r"<-bob \d+% (\S+ \S+/s (ETA )?\S+]|stalled|starting])", rows[status_rows[0]]), screen
        final = term.wait_for(lambda s: "#1 received" in s and "[#1" not in s)
        assert "[#1" not in final  # no stale copy of the status row anywhere
        assert (tmp_path / "alice" / big.name).stat().st_size == big.stat().st_size
        raw = term.raw.read_bytes().decode("utf-8", "replace")
        assert "[#1 日本…" in raw  # the status row was drawn, its name cut to fit
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
        # "carol is opening a chat with you" marks window 1 (a notice), her message window 3
        screen = term.wait_for(lambda s: re.search(r"act: 1:status\(1\) 3:carol\(\d+\)\*", s) is not None)
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


def test_ctrl_z_gives_the_shell_a_cooked_terminal_and_fg_brings_raw_mode_and_the_screen_back(
    server: int, tmp_path: Path
) -> None:
    bob = start_bob(server, tmp_path)
    # an interactive shell with job control, as a user has: Ctrl-Z stops the job, `fg` continues it
    term = Tmux(tmp_path, "env PS1='$ ' bash --norc --noprofile -i")
    try:
        term.wait_for(lambda s: last_line(s) == "$")
        term.keys(alice_command(server, tmp_path).split(";")[0])
        term.enter()
        term.wait_for(lambda s: "logged in as alice" in s)
        term.keys("/chat bob")
        term.enter()
        term.wait_for(lambda s: last_line(s) == "[bob] >")
        term.keys("before")
        term.tmux("send-keys", "-t", "t", "C-z")
        screen = term.wait_for(lambda s: "Stopped" in s and last_line(s) == "$")
        assert "[bob] > before" not in screen  # the input row was wiped before the shell got the terminal
        mode = term.tmux("display-message", "-p", "-t", "t", "#{pane_tty}").strip()
        stty = subprocess.run(["stty", "-F", mode, "-a"], capture_output=True, text=True, check=True).stdout
        # readline has the prompt (its own -icanon -echo), but it starts from what we left: output
        # processing and signal keys on, as before chatapp (raw mode turns both off)
        assert re.search(r"(?<!-)opost", stty) and re.search(r"(?<!-)isig", stty), stty
        term.keys("fg")
        term.enter()
        # the screen is drawn again: the window's lines and the line being typed
        screen = term.wait_for(lambda s: last_line(s) == "[bob] > before" and "chatting with bob" in s)
        assert "Stopped" not in screen
        # raw mode again: arrows and editing keys work (cooked mode would send "before ac\x1b[Db")
        term.tmux("send-keys", "-t", "t", "C-u")
        term.keys("ac")
        term.tmux("send-keys", "-t", "t", "Left")
        term.keys("b")
        term.enter()
        bob.expect("^MSG alice abc$")
        term.keys("/quit")
        term.enter()
        term.wait_for(lambda s: last_line(s) == "$")
    finally:
        term.close()
        bob.kill()


def test_after_a_sigstop_and_sigcont_the_console_is_raw_again_and_redrawn(server: int, tmp_path: Path) -> None:
    bob = start_bob(server, tmp_path)
    term = Tmux(tmp_path, alice_command(server, tmp_path))
    try:
        term.wait_for(lambda s: "logged in as alice" in s)
        term.keys("/chat bob")
        term.enter()
        term.wait_for(lambda s: last_line(s) == "[bob] >")
        shell = term.tmux("display-message", "-p", "-t", "t", "#{pane_pid}").strip()
        pid = int(subprocess.run(["pgrep", "-P", shell], capture_output=True, text=True, check=True).stdout.split()[0])
        tty_path = term.tmux("display-message", "-p", "-t", "t", "#{pane_tty}").strip()
        # a SIGSTOP nobody can catch; meanwhile the terminal is made cooked (as a shell does) and cleared
        os.kill(pid, signal.SIGSTOP)
        subprocess.run(["stty", "-F", tty_path, "sane"], check=True)
        term.tmux("clear-history", "-t", "t")
        term.tmux("send-keys", "-t", "t", "-R")
        term.wait_for(lambda s: "chatting with bob" not in s)
        os.kill(pid, signal.SIGCONT)
        term.wait_for(lambda s: last_line(s) == "[bob] >" and "chatting with bob" in s)
        term.keys("xz")
        term.tmux("send-keys", "-t", "t", "Left")
        term.keys("y")
        term.enter()
        bob.expect("^MSG alice xyz$")
        term.keys("/quit")
        term.enter()
        term.wait_for(lambda s: "EXIT=0" in s)
    finally:
        term.close()
        bob.kill()


def test_narrowing_the_window_leaves_no_stale_copy_of_the_input_row(server: int, tmp_path: Path) -> None:
    bob = start_bob(server, tmp_path)
    term = Tmux(tmp_path, alice_command(server, tmp_path))
    try:
        term.wait_for(lambda s: "logged in as alice" in s)
        term.keys("/chat bob")
        term.enter()
        term.wait_for(lambda s: last_line(s) == "[bob] >")
        term.tmux("resize-window", "-t", "t", "-x", "40", "-y", "12")
        term.keys("a line being typed, long enough to fill the row")
        term.wait_for(lambda s: last_line(s).startswith("[bob] > ") and len(last_line(s)) > 30)
        term.tmux("resize-window", "-t", "t", "-x", "25", "-y", "12")
        screen = term.wait_for(lambda s: "chatting with bob" in s and last_line(s).startswith("[bob] >"))
        rows = screen.splitlines()
        # one input row, at the bottom; no rewrapped piece of the old one above it
        assert sum("[bob] >" in row for row in rows) == 1, screen
        assert not any("long enough" in row for row in rows[:-1] if not row.startswith("[bob] >")), screen
        term.enter()
        bob.expect("^MSG alice a line being typed, long enough to fill the row$")
    finally:
        term.close()
        bob.kill()
