"""End to end on PostgreSQL: real ``twistd -n chatserver --db postgresql://…`` processes on one real database."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from processes import BIN, LineSocket, start_server, stop, tls_wrap
from services import free_port

PASSWORD = "correct horse battery"

pytestmark = pytest.mark.slow


class FromSocket(LineSocket):
    """A line client from a chosen loopback address (the server sees each as another client)."""

    def __init__(self, port: int, source: str) -> None:
        self.sock = tls_wrap(socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)))
        self.file = self.sock.makefile("rb")


def greeted(port: int, source: str = "127.0.0.1") -> LineSocket:
    client = FromSocket(port, source)
    assert client.line() == "* HELLO chatapp/2"
    return client


def test_signup_and_login_on_postgres_and_a_block_survives_a_restart(tmp_path: Path, postgres_url: str) -> None:
    args = ("--db", postgres_url, "--max-attempts", "2", "--block-time", "600")
    process, port = start_server(tmp_path, *args)
    try:
        alice = greeted(port)
        assert alice.ask(f"SIGNUP Alice {PASSWORD}") == "OK SIGNUP Alice"
        alice.close()
        again = greeted(port)
        assert again.ask(f"LOGIN alice {PASSWORD}") == "OK LOGIN Alice"
        again.close()
        attacker = greeted(port, "127.0.0.3")
        assert attacker.ask("LOGIN alice wrong-password").startswith("ERR 401 bad-credentials")
        assert attacker.ask("LOGIN alice wrong-password").startswith("ERR 429 blocked")
        attacker.close()
    finally:
        stop(process)
    # A second process (a restart, or another of N) reads the block and the account from the database.
    process, port = start_server(tmp_path, *args)
    try:
        blocked = FromSocket(port, "127.0.0.3")
        assert blocked.line().startswith("* BLOCKED ")
        blocked.close()
        elsewhere = greeted(port, "127.0.0.4")
        assert elsewhere.ask(f"LOGIN alice {PASSWORD}").startswith("ERR 429 locked")  # the name is locked too
        elsewhere.close()
    finally:
        stop(process)


def test_an_unreachable_postgres_stops_the_server_with_one_line(tmp_path: Path, postgres_service: object) -> None:
    url = f"postgresql://chatapp:s3cret@127.0.0.1:{free_port()}/chat"
    result = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "chatserver", "--db", url, "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    [line] = [line for line in output.splitlines() if "cannot open database" in line]
    assert line.endswith("Connection refused") or "Connection refused" in line
    assert "postgresql://chatapp:***@127.0.0.1:" in line
    assert "s3cret" not in output and "Traceback" not in output
    assert "listening on" not in output
