"""The real ``twistd chatserver`` as a subprocess, as users and systemd start it."""

from __future__ import annotations

import signal
import subprocess

import pytest
from processes import BIN, LineSocket, start_server, stop

PASSWORD = "correct horse battery"

pytestmark = pytest.mark.slow


def test_sigterm_says_bye_shutdown(tmp_path) -> None:
    process, port = start_server(tmp_path)
    try:
        client = LineSocket(port)
        assert client.line() == "* HELLO chatapp/2"
        assert client.ask(f"SIGNUP alice {PASSWORD}") == "OK SIGNUP alice"
        process.send_signal(signal.SIGTERM)
        assert client.line() == "* BYE shutdown"
        assert client.at_eof()
        client.close()
        # twistd ends by re-raising the signal it got, as a well-behaved daemon should
        assert process.wait(15) == -signal.SIGTERM
        assert process.stdout is not None
        assert "chatserver stopped" in process.stdout.read().decode()
    finally:
        stop(process)
    assert (tmp_path / "chatserver.sqlite3").exists()  # the default database, in the working directory


def test_signup_that_got_ok_survives_kill_9(tmp_path) -> None:
    process, port = start_server(tmp_path, "--db", "accounts.db")
    try:
        client = LineSocket(port)
        client.line()
        assert client.ask(f"SIGNUP alice {PASSWORD}") == "OK SIGNUP alice"
    finally:
        stop(process, signal.SIGKILL)
    process, port = start_server(tmp_path, "--db", "accounts.db")
    try:
        client = LineSocket(port)
        client.line()
        assert client.ask(f"LOGIN alice {PASSWORD}") == "OK LOGIN alice"
        client.close()
    finally:
        stop(process)


def run_twistd(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "chatserver", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "missing/dir/x.sqlite3"], "does not exist"),
        (["--db", "garbage.sqlite3"], "file is not a database"),
        (["--db", "a-folder"], "unable to open database file"),
        (["--bcrypt-rounds", "3"], "out of range (4..31)"),
        (["--max-attempts", "many"], "is not a whole number"),
        (["--block-time", "-5"], "out of range"),
        (["--listen", "bogus:1"], "not a valid server endpoint"),
        (["--listen", "systemd:domain=INET:index=0"], "no such inherited socket"),
    ],
)
def test_startup_errors_are_one_line_not_a_traceback(tmp_path, args: list[str], message: str) -> None:
    (tmp_path / "garbage.sqlite3").write_bytes(b"this is not sqlite" * 100)
    (tmp_path / "a-folder").mkdir()
    result = run_twistd(tmp_path, *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output
    assert "Traceback" not in output


def test_port_in_use_is_one_line(tmp_path) -> None:
    process, port = start_server(tmp_path)
    try:
        result = run_twistd(tmp_path, "--db", "other.sqlite3", "--listen", f"tcp:{port}:interface=127.0.0.1")
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "Address already in use" in output
        assert f"(--listen tcp:{port}:interface=127.0.0.1)" in output
        assert "Traceback" not in output
    finally:
        stop(process)


def test_a_store_that_cannot_open_stops_the_server_with_one_line(tmp_path) -> None:
    (tmp_path / "garbage.sqlite3").write_bytes(b"this is not sqlite" * 100)
    result = run_twistd(tmp_path, "--db", "garbage.sqlite3", "--listen", "tcp:0:interface=127.0.0.1")
    output = result.stdout + result.stderr
    assert result.returncode == 1
    reason = [line for line in output.splitlines() if "file is not a database" in line]
    assert len(reason) == 1 and reason[0].endswith(
        "chatserver: cannot use database 'garbage.sqlite3': file is not a database"
    )
    assert "chatserver stopped" in output and "listening on" not in output
