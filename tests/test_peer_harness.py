"""Shared helpers for the peer tests (no tests here): a recording event sink, factories, session pairs."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test.iosim import connectedServerAndClient

from chatapp.events import (
    ChatEvent,
    FileOffered,
    MessageReceived,
    PeerJoined,
    PeerLeft,
    PeerNotice,
    TransferEnded,
    TransferProgress,
)
from chatapp.peer import PeerFactory, PeerSession, Role, SessionState, Transfer, VerifyRejected
from chatapp.peer.names import partial_key
from chatapp.runner import InlineRunner
from chatapp.tls.identity import Identity, new_identity

_IDENTITIES: dict[str, Identity] = {}


def identity_of(name: str) -> Identity:
    """A TLS identity per user name, made once per test run (key generation costs a millisecond)."""
    key = name.lower()
    if key not in _IDENTITIES:
        _IDENTITIES[key] = new_identity(key)
    return _IDENTITIES[key]


def key_of(name: str) -> str:
    return identity_of(name).fingerprint


TOKENS = {"tok-alice": ("alice", "proof-alice"), "tok-bob": ("bob", "proof-bob")}


class Recorder:
    """An event sink (call it with an event) that remembers every event, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.messages: list[str] = []
        self.offers: list[Transfer] = []
        self.progress: list[tuple[str, int]] = []
        self.ended: list[Transfer] = []
        self.notices: list[str] = []
        self.left: list[str] = []
        self.joined: list[str] = []

    def __call__(self, event: ChatEvent) -> None:
        if isinstance(event, PeerJoined):
            self.peer_joined(event.session)
        elif isinstance(event, PeerLeft):
            self.peer_left(event.session, event.reason)
        elif isinstance(event, MessageReceived):
            self.message(event.session, event.text)
        elif isinstance(event, FileOffered):
            self.offer(event.session, event.transfer)
        elif isinstance(event, TransferProgress):
            self.transfer_progress(event.transfer)
        elif isinstance(event, TransferEnded):
            self.transfer_ended(event.transfer)
        elif isinstance(event, PeerNotice):
            self.notice(event.session, event.text)

    def peer_joined(self, session: PeerSession) -> None:
        self.joined.append(session.peer_name or "")
        self.events.append(("joined", session.peer_name))

    def peer_left(self, session: PeerSession, reason: str) -> None:
        self.left.append(reason)
        self.events.append(("left", session.peer_name, reason))

    def message(self, session: PeerSession, text: str) -> None:
        self.messages.append(text)
        self.events.append(("message", text))

    def offer(self, session: PeerSession, transfer: Transfer) -> None:
        self.offers.append(transfer)
        self.events.append(("offer", transfer.id))

    def transfer_progress(self, transfer: Transfer) -> None:
        self.progress.append((transfer.id, transfer.bytes_done))

    def transfer_ended(self, transfer: Transfer) -> None:
        self.ended.append(transfer)
        self.events.append(("ended", transfer.id, transfer.state.value, transfer.reason))

    def notice(self, session: PeerSession, text: str) -> None:
        self.notices.append(text)


def dict_verify(tokens: dict[str, tuple[str, str]]) -> Any:
    """VERIFY against ``tokens`` (token -> (requester, proof)); the server vouches for ``key_of(requester)``."""

    def verify(token: str) -> defer.Deferred[tuple[str, str, str]]:
        if token in tokens:
            requester, proof = tokens[token]
            return defer.succeed((requester, proof, key_of(requester)))
        return defer.fail(VerifyRejected())

    return verify


def make_peer(tmp_path: Path, me: str, clock: Any, verify: Any = None, **kw: Any) -> tuple[PeerFactory, Recorder]:
    """A factory on ``clock`` whose disk work runs inline (deterministic), and its recorder.

    For the line-protocol tests without TLS the peer's key is taken to be ``key_of`` its name.
    """
    events = Recorder()
    kw.setdefault("runner", InlineRunner())
    kw.setdefault("identity", identity_of(me))
    factory = PeerFactory(
        me, verify or dict_verify(TOKENS), str(tmp_path / me / "downloads"), events, clock, **kw
    )
    factory.peer_key = lambda session: key_of(session.peer_name or "")
    return factory, events


def connector(
    factory: PeerFactory, target: str = "bob", token: str = "tok-alice", proof: str = "proof-alice"
) -> PeerSession:
    """A connector session calling ``target`` with a ticket that vouches for ``key_of(target)``."""
    return PeerSession(factory, Role.CONNECTOR, target, token, proof, key_of(target))


def secure(session: PeerSession) -> None:
    """What the TLS layer does once its handshake is through (no TLS in the line-protocol tests)."""
    session.handshakeCompleted()


class Pair:
    """alice (connector) and bob (listener), connected in memory and open."""

    def __init__(self, tmp_path: Path, clock: Clock, alice_kw: Any = None, bob_kw: Any = None) -> None:
        self.clock = clock
        self.fa, self.ea = make_peer(tmp_path, "alice", clock, **(alice_kw or {}))
        self.fb, self.eb = make_peer(tmp_path, "bob", clock, **(bob_kw or {}))
        a = connector(self.fa)
        b = self.fb.buildProtocol(None)
        self.a, self.b, self.pump = connectedServerAndClient(lambda: b, lambda: a, clock=clock)
        secure(self.a)
        self.pump.flush()
        assert self.a.state is SessionState.OPEN and self.b.state is SessionState.OPEN

    def flush(self) -> None:
        self.pump.flush()

    @property
    def a_out(self) -> str:
        return str(self.fa.downloads.root)

    @property
    def b_out(self) -> str:
        return str(self.fb.downloads.root)


def open_listener(
    factory: PeerFactory, peer: str = "alice", ticket: str = "tok-alice", host: str | None = None
) -> tuple[PeerSession, StringTransport]:
    """bob's side of a connection from ``peer`` (from ``host``, else StringTransport's address) on a
    StringTransport, handshake done, transport cleared."""
    session = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 1)) if host else StringTransport()
    session.makeConnection(transport)
    session.dataReceived(f"HELLO chatapp/2 {peer} {ticket}\r\n".encode())
    assert session.state is SessionState.OPEN, transport.value()
    transport.clear()
    return session, transport


def open_connector(
    factory: PeerFactory, target: str = "bob", proof: str = "proof-alice"
) -> tuple[PeerSession, StringTransport]:
    """alice's side of a call to ``target`` on a StringTransport, handshake done, transport cleared."""
    session = connector(factory, target, proof=proof)
    transport = StringTransport()
    session.makeConnection(transport)
    secure(session)
    session.dataReceived(f"WELCOME chatapp/2 {target} {proof}\r\n".encode())
    assert session.opened_at is not None  # the handshake is done (a crossing call may be closing already)
    transport.clear()
    return session, transport


def lose(session: PeerSession, transport: StringTransport) -> None:
    """StringTransport never calls connectionLost; tests must."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    session.connectionLost(Failure(ConnectionDone()))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sender_stream(transfer_id: str, content: bytes, name: str, chunk: int = 7) -> tuple[bytes, bytes]:
    """What a sender puts on the wire for one file: (OFFER line, DATA chunks + END line)."""
    offer = f"OFFER {transfer_id} {len(content)} {name}\r\n".encode()
    body = b""
    for start in range(0, len(content), chunk):
        piece = content[start : start + chunk]
        body += f"DATA {transfer_id} {len(piece)}\r\n".encode() + piece
    body += f"END {transfer_id} {sha(content)}\r\n".encode()
    return offer, body


def partial_path(factory: PeerFactory, sender: str, name: str, size: int) -> str:
    factory.downloads.ensure()
    return factory.downloads.partial_path(partial_key(sender, name, size))


def files_in(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory) if n != ".chatapp-partial")


def partials_in(factory: PeerFactory) -> list[str]:
    try:
        return sorted(os.listdir(factory.downloads.partial_root))
    except FileNotFoundError:
        return []


def write_file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def tls(endpoint: Any, name: str = "alice") -> Any:
    """``endpoint`` with TLS as a peer connector presenting ``identity_of(name)`` (for hostile test clients)."""
    from twisted.internet.endpoints import wrapClientTLS

    from chatapp.tls.contexts import PeerConnectorTLS

    return wrapClientTLS(PeerConnectorTLS(identity_of(name)), endpoint)


@contextlib.contextmanager
def prefix_hashes_counted() -> Iterator[list[int]]:
    """The lengths of every kept-partial (or sent-file) prefix the factory hashes while inside."""
    import chatapp.peer.factory as factory_module

    lengths: list[int] = []
    real = factory_module.hash_file_prefix

    def counted(fd: int, length: int) -> Any:
        lengths.append(length)
        return real(fd, length)

    factory_module.hash_file_prefix = counted  # type: ignore[assignment]
    try:
        yield lengths
    finally:
        factory_module.hash_file_prefix = real
