"""The server link's TLS on the server side: every endpoint wrapped, its certificate, its fingerprint."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from conftest import make_factory
from cryptography import x509
from line_client import connect_lines
from live_server import start_server
from processes import BIN, FINGERPRINT, LISTENING, stop, twistd, wait_for_output
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from chatapp import admin
from chatapp.server.factory import ServerConfig
from chatapp.server.protocol import ServerProtocol
from chatapp.server.tap import Options
from chatapp.tls.contexts import ServerLinkServerTLS
from chatapp.tls.fingerprint import fingerprint_of
from chatapp.tls.identity import identity_to_pem, new_identity
from chatapp.tls.paths import SERVER_CERTIFICATE_NAME


@pytest_twisted.ensureDeferred
async def test_the_certificate_is_made_once_0600_next_to_the_database_and_reused(tmp_path: Path) -> None:
    db = str(tmp_path / "chat.sqlite3")
    service, port = await start_server(db, tls=True)
    client = await connect_lines(port, tls=True)
    assert await client.ask("PING") == "OK PONG"
    await client.close()
    await service.stopService()
    path = tmp_path / SERVER_CERTIFICATE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = fingerprint_of(x509.load_pem_x509_certificate(path.read_bytes()))
    assert service.fingerprint == first
    again, _ = await start_server(db, tls=True)
    assert again.fingerprint == first  # reused, not made anew
    await again.stopService()


@pytest_twisted.ensureDeferred
async def test_tls_cert_is_used_as_given_and_nothing_is_created(tmp_path: Path) -> None:
    identity = new_identity("chat.example.org")
    given = tmp_path / "given.pem"
    given.write_bytes(identity_to_pem(identity))
    service, port = await start_server(str(tmp_path / "chat.sqlite3"), "--tls-cert", str(given), tls=True)
    client = await connect_lines(port, tls=True)
    await client.close()
    await service.stopService()
    assert service.fingerprint == identity.fingerprint
    assert not (tmp_path / SERVER_CERTIFICATE_NAME).exists()


@pytest_twisted.ensureDeferred
async def test_no_tls_serves_plain_tcp_and_warns_at_start(tmp_path: Path) -> None:
    seen: list[str] = []

    def observe(event: dict[str, object]) -> None:
        seen.append(str(event.get("log_format", "")))

    globalLogPublisher.addObserver(observe)  # type: ignore[arg-type]
    try:
        service, port = await start_server(str(tmp_path / "chat.sqlite3"), tls=False)  # --no-tls
    finally:
        globalLogPublisher.removeObserver(observe)  # type: ignore[arg-type]
    client = await connect_lines(port, tls=False)  # plain text: the greeting is read without TLS
    await client.close()
    await service.stopService()
    assert any("--no-tls" in line and "clear text" in line for line in seen)
    assert not (tmp_path / SERVER_CERTIFICATE_NAME).exists()


def test_an_ssl_endpoint_is_refused_pointing_to_tls_cert(tmp_path: Path) -> None:
    options = Options()
    with pytest.raises(usage.UsageError, match="--tls-cert PATH"):
        options.parseOptions(["--listen", "ssl:8750:privateKey=key.pem", "--db", str(tmp_path / "db")])


def test_a_handshake_that_never_ends_is_cut_by_the_login_timeout(tmp_path: Path, clock: Clock) -> None:
    factory = make_factory(str(tmp_path / "chat.sqlite3"), clock, ServerConfig(login_timeout=5, tls=True))
    wrapped = TLSMemoryBIOFactory(ServerLinkServerTLS(new_identity()), False, factory)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
    protocol = wrapped.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    protocol.makeConnection(transport)
    assert len(factory.connections) == 1  # a handshake in progress counts against the limits
    [server] = factory.connections
    assert isinstance(server, ServerProtocol)
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting  # cut at the login deadline, counted from the TCP connection
    assert transport.value() == b""  # and not a byte of the application was written
    factory.store.close()


def test_admin_prints_the_fingerprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    identity = new_identity()
    (tmp_path / SERVER_CERTIFICATE_NAME).write_bytes(identity_to_pem(identity))
    assert admin.main(["--db", str(tmp_path / "chatserver.sqlite3"), "fingerprint"]) == 0
    assert capsys.readouterr().out == identity.fingerprint + "\n"
    other = new_identity()
    (tmp_path / "other.pem").write_bytes(identity_to_pem(other))
    assert admin.main(["fingerprint", "--tls-cert", str(tmp_path / "other.pem")]) == 0
    assert capsys.readouterr().out == other.fingerprint + "\n"
    assert admin.main(["--db", str(tmp_path / "nowhere" / "db"), "fingerprint"]) == admin.EXIT_ERROR
    assert "give the server's --db (its certificate is made next to the database at its first start) or --tls-cert" in (
        capsys.readouterr().err
    )


def _s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.slow
def test_openssl_s_client_sees_tls13_and_the_logged_fingerprint(tmp_path: Path) -> None:
    process = twistd(
        "-n", "--pidfile=", "chatserver", "--listen", "tcp:0:interface=127.0.0.1", "--bcrypt-rounds", "4",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        logged = wait_for_output(process, FINGERPRINT).group(1)
        port = int(wait_for_output(process, LISTENING).group(1))
        result = _s_client(port, "-tls1_3")
        assert re.search(r"New, TLSv1\.3, Cipher is TLS_|Protocol\s*:\s*TLSv1\.3", result.stdout), result.stdout
        pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", result.stdout, re.DOTALL)
        assert pem is not None, result.stdout
        assert fingerprint_of(x509.load_pem_x509_certificate(pem.group(0).encode())) == logged
        refused = _s_client(port, "-tls1_2")
        assert refused.returncode != 0
        assert "BEGIN CERTIFICATE" not in refused.stdout
        printed = subprocess.run(
            [str(BIN / "chatapp-admin"), "--db", "chatserver.sqlite3", "fingerprint"],
            cwd=tmp_path, capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert printed.stdout.strip() == logged
    finally:
        stop(process)


@pytest_twisted.ensureDeferred
async def test_a_tls_client_told_the_server_speaks_plain_tcp(tmp_path: Path) -> None:
    from twisted.internet import reactor

    from chatapp.client import ConnectionClosed, ServerConnection
    from chatapp.tls.known_hosts import KnownServers

    service, port = await start_server(str(tmp_path / "chat.sqlite3"), tls=False)  # --no-tls
    known = KnownServers(tmp_path / "known_servers")
    conn = ServerConnection(reactor, f"127.0.0.1:{port}", known_servers=known, max_attempts=1, trust_on_first_use=True)
    try:
        with pytest.raises(ConnectionClosed) as caught:
            await conn.login("alice", "correct horse battery").addTimeout(10, reactor)
    finally:
        await conn.close()
        await service.stopService()
    assert "the server did not answer in TLS (a --no-tls server? then connect with --no-tls)" in str(caught.value)
    assert "SSL routines" not in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_no_tls_client_meeting_a_tls_server_is_told_it_may_speak_tls(tmp_path: Path) -> None:
    from twisted.internet import reactor

    from chatapp.client import ServerConnection

    service, port = await start_server(str(tmp_path / "chat.sqlite3"), tls=True)
    conn = ServerConnection(reactor, f"127.0.0.1:{port}", no_tls=True, max_attempts=1, hello_timeout=0.5)
    try:
        with pytest.raises(Exception, match=r"did not greet us \(it may speak TLS: leave out --no-tls\)"):
            await conn.login("alice", "correct horse battery").addTimeout(10, reactor)
    finally:
        await conn.close()
        await service.stopService()
