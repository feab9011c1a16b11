"""The real server service (threads for bcrypt and SQLite) in this process, on a 127.0.0.1 port."""

from __future__ import annotations

from line_client import connect_lines
from processes import pin_server
from twisted.internet import reactor

from chatapp.server.tap import ChatServerService, Options, build_service


async def start_server(db: str, *args: str, tls: bool = True) -> tuple[ChatServerService, int]:
    """The server on 127.0.0.1 port 0, inside TLS with its fingerprint pinned for 127.0.0.1 (``tls=False``:
    ``--no-tls``, for the tests of ``--no-tls`` itself)."""
    options = Options()
    argv = ["--listen", "tcp:0:interface=127.0.0.1", "--db", db, "--bcrypt-rounds", "4", *args]
    options.parseOptions(argv if tls else [*argv, "--no-tls"])
    service = build_service(options, reactor)
    service.privilegedStartService()
    service.startService()
    await service.whenStarted()
    assert service.port is not None
    port: int = service.port.getHost().port  # type: ignore[attr-defined]
    # The greeting waits for the store; one round trip proves the server is ready.
    if service.fingerprint is not None:
        pin_server(port, service.fingerprint)
    probe = await connect_lines(port, tls=tls)
    await probe.close()
    return service, port
