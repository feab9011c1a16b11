"""Start the real programs as subprocesses and talk to them over plain sockets (no reactor)."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
LISTENING = re.compile(r"chatserver listening on .*port=(\d+)")


def need_tool(name: str) -> None:
    """Fail (never skip) when a program the tests drive is missing: ``.ci/run`` installs it."""
    if shutil.which(name) is None:
        pytest.fail(f"{name} is not installed; the tests need it (.ci/run installs it, see README.md)")


def twistd(*args: str, cwd: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "twistd"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


_UNREAD: dict[int, list[str]] = {}


def wait_for_output(process: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float = 15.0) -> re.Match[str]:
    """Read the process's output until a line matches; fail with everything it said."""
    assert process.stdout is not None
    seen: list[str] = []
    # Lines read past an earlier match wait here for the next call.
    unread = _UNREAD.setdefault(process.pid, [])
    while unread:
        line = unread.pop(0)
        seen.append(line)
        match = pattern.search(line)
        if match:
            return match
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        buffer = b""
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for index, raw in enumerate(lines):
                line = raw.decode("utf-8", "replace")
                seen.append(line)
                match = pattern.search(line)
                if match:
                    unread.extend(later.decode("utf-8", "replace") for later in lines[index + 1 :])
                    return match
    raise AssertionError(f"no line matching {pattern.pattern!r}; output was:\n" + "\n".join(seen))


def start_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    process = twistd(
        "-n", "--pidfile=", "chatserver", "--listen", "tcp:0:interface=127.0.0.1", "--bcrypt-rounds", "4", *args,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        fingerprint = wait_for_output(process, FINGERPRINT).group(1)
        port = int(wait_for_output(process, LISTENING).group(1))
    except BaseException:
        stop(process)
        raise
    pin_server(port, fingerprint)
    return process, port


def pin_server(port: int, fingerprint: str, host: str = "127.0.0.1") -> None:
    """Trust the test server as a user who checked its fingerprint would: pinned in known_servers."""
    from chatapp.tls.known_hosts import KnownServers
    from chatapp.tls.paths import known_servers_path

    KnownServers(known_servers_path()).pin(host, port, fingerprint, replace=True)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    finally:
        if process.stdout is not None:
            process.stdout.close()


FINGERPRINT = re.compile(r"chatserver TLS fingerprint (sha256:[0-9a-f]{64})")


def tls_wrap(sock: socket.socket) -> ssl.SSLSocket:
    """Speak TLS 1.3 over ``sock`` as a test client: any certificate is accepted (tests check it themselves)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context.wrap_socket(sock)


def tls_connect(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> ssl.SSLSocket:
    return tls_wrap(socket.create_connection((host, port), timeout=timeout))


class LineSocket:
    """A blocking line client with a timeout on every read."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = tls_connect(port, host, timeout)
        self.file = self.sock.makefile("rb")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def line(self) -> str:
        raw = self.file.readline()
        if not raw:
            raise EOFError("connection closed")
        return raw.decode("utf-8").rstrip("\r\n")

    def ask(self, line: str) -> str:
        self.send(line)
        return self.line()

    def at_eof(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()
