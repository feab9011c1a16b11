"""The systemd units in contrib/systemd: they verify, and the server runs socket-activated as they say.

``systemd-analyze verify`` needs no running systemd (PID 1 here is not), but it
insists that ExecStart's binary exists, so the units are checked in a copy
whose ExecStart points at this venv's twistd. The socket-activation test uses
``systemd-socket-activate``, which listens like the .socket unit and execs the
service's command line in place on the first connection.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import need_tool, tls_wrap

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
INSTALLED_TWISTD = "/opt/chatapp/venv/bin/twistd"
# systemd-socket-activate clears the environment: without PYTHONPATH, twistd would run the chatapp
# installed in the venv instead of the code under test.
PASS_ENV = [f"--setenv=PYTHONPATH={os.environ['PYTHONPATH']}"] if os.environ.get("PYTHONPATH") else []
TWISTD = Path(sys.executable).parent / "twistd"
SERVICE = "chatserver.service"
SOCKET = "chatserver.socket"
STANDALONE = "chatserver-standalone.service"


def directives(unit: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every setting of a unit file, repeated keys included."""
    section = ""
    out = []
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(unit: str, section: str, key: str) -> list[str]:
    return [v for s, k, v in directives(unit) if s == section and k == key]


def one(unit: str, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{unit}: [{section}] {key}= appears {len(found)} times"
    return found[0]


def exec_start(unit: str) -> list[str]:
    return shlex.split(one(unit, "Service", "ExecStart"))


@pytest.mark.parametrize("unit", [SERVICE, STANDALONE])
def test_service_runs_installed_twistd_hardened(unit: str) -> None:
    argv = exec_start(unit)
    assert argv[0] == INSTALLED_TWISTD
    assert argv[1:4] == ["--nodaemon", "--pidfile=", "chatserver"]
    assert argv[argv.index("--db") + 1] == "/var/lib/chatapp/chatserver.sqlite3"
    expected = {
        "DynamicUser": "yes",
        "User": "chatapp",
        "StateDirectory": "chatapp",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    assert "@system-service" in values(unit, "Service", "SystemCallFilter")


def test_socket_unit_owns_port_8750_for_the_service() -> None:
    assert one(SOCKET, "Socket", "ListenStream") == "8750"
    assert values(SOCKET, "Socket", "Accept") in ([], ["no"])
    argv = exec_start(SERVICE)
    # ListenStream=8750 is one dual-stack [::] socket: it must be adopted as INET6.
    assert argv[argv.index("--listen") + 1] == "systemd:domain=INET6:index=0"
    assert one(SERVICE, "Unit", "Requires") == SOCKET


def test_standalone_service_listens_itself() -> None:
    argv = exec_start(STANDALONE)
    assert argv[argv.index("--listen") + 1] == "tcp:8750"
    assert not values(STANDALONE, "Unit", "Requires")


@pytest.mark.slow
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    need_tool("systemd-analyze")
    for unit in (SERVICE, SOCKET, STANDALONE):
        text = (UNITS / unit).read_text().replace(INSTALLED_TWISTD, str(TWISTD))
        (tmp_path / unit).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / u) for u in (SOCKET, SERVICE, STANDALONE))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    # verify exits 0 on unknown keys and bad values, but names the file: any such line is a failure.
    complaints = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert complaints == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def activated_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The service's own command line under systemd-socket-activate, listening like the .socket unit."""
    need_tool("systemd-socket-activate")
    argv = exec_start(SERVICE)
    argv[0] = str(TWISTD)
    argv[argv.index("--db") + 1] = str(tmp_path / "chatserver.sqlite3")
    argv += ["--bcrypt-rounds", "4"]
    listen = one(SOCKET, "Socket", "ListenStream")
    assert listen.isdigit()
    log = tmp_path / "server.log"
    for _attempt in range(5):
        # A port freed a moment ago can be taken again by anyone else: on a clash, try another.
        port = free_port()
        with log.open("wb") as out:
            # --fdname: systemd always sets LISTEN_FDNAMES (the socket unit's name), and Twisted's
            # systemd: endpoint ignores inherited sockets without it; the tool only sets it when asked.
            process = subprocess.Popen(
                ["systemd-socket-activate", *PASS_ENV, f"--fdname={SOCKET}", "-l", str(port), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        try:
            deadline = time.monotonic() + 10
            while "Listening on" not in log.read_text() and process.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            if process.poll() is None:
                yield process, port, log
                return
            assert "in use" in log.read_text(), log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
    pytest.fail(f"no free port after 5 tries:\n{log.read_text()}")


def connect(port: int) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.slow
def test_socket_activated_server_serves_and_says_bye(
    activated_server: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    process, port, log = activated_server
    # The twistd process only starts on this first connection, which then waits in the backlog.
    with tls_wrap(connect(port)) as conn, conn.makefile("rb") as lines:
        assert lines.readline() == b"* HELLO chatapp/2\r\n", log.read_text()
        conn.sendall(b"SIGNUP alice correct horse battery\r\n")
        assert lines.readline() == b"OK SIGNUP alice\r\n"
        # exec in place: the pid systemd-socket-activate started as is now twistd.
        os.kill(process.pid, signal.SIGTERM)
        assert lines.readline() == b"* BYE shutdown\r\n"
        assert lines.readline() == b""
    # twistd re-raises the signal it stopped on; systemd counts death by SIGTERM as a clean stop.
    assert process.wait(timeout=15) in (0, -signal.SIGTERM)
    text = log.read_text()
    assert re.search(r"chatserver listening on IPv6Address\(type='TCP', host='::', port=" + str(port), text), text
    assert "signup alice from 127.0.0.1" in text


@pytest.mark.slow
def test_a_socket_adopted_with_the_wrong_domain_is_a_usage_error(tmp_path: Path) -> None:
    need_tool("systemd-socket-activate")
    port = free_port()
    log = tmp_path / "server.log"
    argv = [str(TWISTD), "--nodaemon", "--pidfile=", "chatserver", "--listen", "systemd:domain=INET6:index=0"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["systemd-socket-activate", *PASS_ENV, f"--fdname={SOCKET}", "-l", f"127.0.0.1:{port}", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        with connect(port):  # twistd starts on the first connection, and refuses the IPv4 socket
            assert process.wait(timeout=15) != 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    text = log.read_text()
    assert "the inherited socket is INET; say domain=INET" in text, text
    assert "Traceback" not in text
