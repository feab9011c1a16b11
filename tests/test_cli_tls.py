"""The console against a real ``twistd chatserver`` over TLS: no terminal and no way to confirm an
unknown server, a changed key, a wrong or right ``--server-fingerprint`` (exit code 11 when refused)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_processes import Chatapp
from processes import FINGERPRINT, LISTENING, stop, twistd, wait_for_output

from chatapp.tls.identity import new_identity
from chatapp.tls.known_hosts import KnownServers
from chatapp.tls.paths import known_servers_path

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A real server whose key nobody has pinned yet: (port, fingerprint as logged)."""
    process = twistd(
        "-n", "--pidfile=", "chatserver", "--listen", "tcp:0:interface=127.0.0.1", "--bcrypt-rounds", "4",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        fingerprint = wait_for_output(process, FINGERPRINT).group(1)
        port = int(wait_for_output(process, LISTENING).group(1))
        yield port, fingerprint
    finally:
        stop(process)


def run(tmp_path: Path, port: int, *args: str) -> tuple[int, str]:
    p = Chatapp("--server", f"127.0.0.1:{port}", "--user", "alice", *args, cwd=tmp_path, stdin=subprocess.DEVNULL)
    code, _out, err = p.finish()
    assert "Traceback" not in err
    return code, err


def test_first_contact_without_a_terminal_is_refused_with_the_fingerprint(
    server: tuple[int, str], tmp_path: Path
) -> None:
    port, fingerprint = server
    code, err = run(tmp_path, port, "--signup")
    assert code == 11
    assert f"is not known yet and its key could not be confirmed: {fingerprint}" in err
    assert KnownServers(known_servers_path()).lookup("127.0.0.1", port) is None


def test_a_wrong_server_fingerprint_is_refused_and_the_right_one_pinned(
    server: tuple[int, str], tmp_path: Path
) -> None:
    port, fingerprint = server
    wrong = new_identity().fingerprint
    code, err = run(tmp_path, port, "--signup", "--server-fingerprint", wrong)
    assert code == 11 and f"Expected: {wrong}  offered: {fingerprint}" in err
    code, err = run(tmp_path, port, "--signup", "--server-fingerprint", fingerprint)
    assert (code, err) == (0, "")
    assert KnownServers(known_servers_path()).lookup("127.0.0.1", port).fingerprint == fingerprint  # type: ignore[union-attr]


def test_a_changed_key_is_refused_loudly_even_with_trust_on_first_use(server: tuple[int, str], tmp_path: Path) -> None:
    port, fingerprint = server
    pinned = new_identity().fingerprint
    KnownServers(known_servers_path()).pin("127.0.0.1", port, pinned)
    code, err = run(tmp_path, port, "--signup", "--trust-on-first-use")
    assert code == 11
    assert err == (
        f"chatapp: REFUSED: the chat server at 127.0.0.1:{port} presented a different key than the one pinned. "
        f"Someone may be intercepting the connection. Pinned: {pinned}  offered: {fingerprint}. "
        f"If the server's key was changed on purpose, remove line 1 of {known_servers_path()} "
        "and connect again.\n"
    )


def test_trust_on_first_use_names_the_key_it_remembered(server: tuple[int, str], tmp_path: Path) -> None:
    port, fingerprint = server
    code, err = run(tmp_path, port, "--signup", "--trust-on-first-use")
    assert code == 0
    assert err == f"chatapp: trusting the chat server at 127.0.0.1:{port} on first use: {fingerprint}\n"
    assert KnownServers(known_servers_path()).lookup("127.0.0.1", port).fingerprint == fingerprint  # type: ignore[union-attr]
    code, err = run(tmp_path, port, "--trust-on-first-use")  # known now: nothing to say
    assert (code, err) == (0, "")
