"""A real ``chatapp listen`` whose stdout nobody reads, flooded by a peer: it stays bounded and keeps serving.

The attacker is a raw peer (the server link through TLS, the peer handshake
by hand); the victim's stdout is a pipe the test reads only at the end.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_processes import CHATAPP, PASSWORD
from processes import LineSocket, start_server, stop

from chatapp.tls.identity import identity_to_pem, new_identity

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
LINE = b"MSG " + b"x" * 1000 + b"\r\n"
FLOOD_BYTES = 64 * MiB  # 8 times what the victim may hold; the kernel takes far less once it stops reading
FLOOD_SECONDS = 4.0
# the victim's peak RSS over its quiet baseline: 16 MiB of output at the very most, plus slack
RSS_GROWTH_MIB = 40


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    process, port = start_server(tmp_path)
    yield port
    stop(process)


def status_kib(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def read_until(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while marker not in data:
            assert selector.select(max(0.0, deadline - time.monotonic())), f"no {marker!r} in {data[-500:]!r}"
            chunk = os.read(fd, 65536)
            assert chunk, f"EOF before {marker!r}: {data[-500:]!r}"
            data += chunk
    return data


class RawPeer:
    """A raw client with an identity: it publishes its key on the server link and shows it to peers."""

    def __init__(self, port: int, name: str, folder: Path) -> None:
        self.name = name
        identity = new_identity(name)
        self.pem = folder / f"{name}.pem"
        self.pem.write_bytes(identity_to_pem(identity))
        self.server = LineSocket(port)
        assert self.server.line().startswith("* HELLO")
        assert self.server.ask(f"SIGNUP {name} {PASSWORD}") == f"OK SIGNUP {name}"
        assert self.server.ask(f"KEY {identity.fingerprint}") == "OK KEY"

    def close(self) -> None:
        self.server.close()


def peer(raw: RawPeer, timeout: float = 5.0) -> ssl.SSLSocket:
    """A finished peer handshake with the victim, as ``raw`` (TLS with its published key)."""
    reply = raw.server.ask("CONNECT victim").split(" ")
    assert reply[:2] == ["OK", "CONNECT"], reply
    host, port, token = reply[3], int(reply[4]), reply[5]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # this test checks the victim's behaviour, not its key
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(str(raw.pem))
    sock = context.wrap_socket(socket.create_connection((host, port), timeout=timeout))
    name = raw.name
    sock.sendall(f"HELLO chatapp/2 {name} {token}\r\n".encode())
    assert sock.makefile("rb").readline().startswith(b"WELCOME "), f"{name}: no WELCOME"
    return sock


def flood(sock: ssl.SSLSocket) -> int:
    """Send MSG lines without reading until FLOOD_BYTES or FLOOD_SECONDS; the bytes the kernel took."""
    stream = LINE * (MiB // len(LINE) + 1)
    sent = 0
    sock.setblocking(False)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + FLOOD_SECONDS
        while sent < FLOOD_BYTES and time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                break
            offset = sent % len(LINE)
            try:
                sent += sock.send(stream[offset:])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                continue
    sock.setblocking(True)
    return sent


def test_listen_with_an_unread_stdout_stays_bounded_and_serves_others(server: int, tmp_path: Path) -> None:
    err = open(tmp_path / "victim.err", "wb")
    victim = subprocess.Popen(
        [str(CHATAPP), "listen", "--server", f"127.0.0.1:{server}", "--user", "victim", "--signup",
         "--listen", "tcp:0:interface=127.0.0.1", "--downloads", str(tmp_path / "in")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
        env=dict(os.environ, CHATAPP_PASSWORD=PASSWORD),
    )  # fmt: skip
    try:
        assert victim.stdout is not None
        out = victim.stdout.fileno()
        head = read_until(out, b"READY victim listening")
        raws = [RawPeer(server, n, tmp_path) for n in ("mallory", "bob", "carol")]
        mallory, bob = peer(raws[0]), peer(raws[1])
        baseline = status_kib(victim.pid, "VmRSS")

        sent = flood(mallory)  # from here on, the victim's stdout is not read

        assert sent < FLOOD_BYTES, "the victim read everything: it did not stop reading the flood"
        bob.settimeout(1.0)
        bob.sendall(b"PING\r\n")
        assert bob.makefile("rb").readline() == b"PONG\r\n"  # the reactor is not blocked
        carol = peer(raws[2])  # nor are new peers kept out
        growth_mib = (status_kib(victim.pid, "VmHWM") - baseline) / 1024
        assert growth_mib < RSS_GROWTH_MIB, f"the victim grew {growth_mib:.0f} MiB"
        assert victim.poll() is None, (tmp_path / "victim.err").read_text()

        # the reader comes back: every whole line the flood got in arrives, then a clean exit
        rest = -sent % len(LINE)  # what is missing of the line the flood cut
        finish = threading.Thread(target=mallory.sendall, args=(LINE[len(LINE) - rest :],), daemon=True)
        finish.start()
        expected = (sent + rest) // len(LINE)
        data = head
        with selectors.DefaultSelector() as selector:
            selector.register(out, selectors.EVENT_READ)
            deadline = time.monotonic() + 60
            while data.count(b"\nMSG mallory ") < expected:
                assert selector.select(max(0.0, deadline - time.monotonic())), "the flood did not all arrive"
                data += os.read(out, 1 << 20)
        finish.join(10)
        for sock in (mallory, bob, carol):
            sock.close()
        for raw in raws:
            raw.close()
        victim.send_signal(signal.SIGTERM)
        rest_out, _ = victim.communicate(timeout=20)
        assert victim.returncode == 0, (tmp_path / "victim.err").read_text()
        assert (data + rest_out).count(b"\nMSG mallory ") == expected
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.communicate()
        err.close()
