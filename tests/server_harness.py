"""Drive a ServerProtocol on a StringTransport: send bytes in chosen splits, read reply lines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from chatapp.server.factory import ServerFactory
from chatapp.server.passwords import PasswordHasher
from chatapp.server.protocol import ServerProtocol

PASSWORD = "correct horse battery"


def key_of(name: str) -> str:
    """A stand-in fingerprint for ``name``'s identity key: distinct per name, stable across calls."""
    import hashlib

    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


class Conn:
    """One client connection; ``split`` is "whole" (one segment) or "bytes" (one byte at a time)."""

    def __init__(self, factory: ServerFactory, host: str = "127.0.0.1", split: str = "whole") -> None:
        address = IPv6Address("TCP", host, 5000) if ":" in host else IPv4Address("TCP", host, 5000)
        self.transport = StringTransport(peerAddress=address)
        self.split = split
        proto = factory.buildProtocol(address)
        assert isinstance(proto, ServerProtocol)
        self.proto = proto
        self.lost = False
        proto.makeConnection(self.transport)

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if self.split == "bytes":
            for i in range(len(data)):
                self.proto.dataReceived(data[i : i + 1])
        else:
            self.proto.dataReceived(data)

    def lines(self) -> list[str]:
        """Lines written since the last call (each must end in CR LF)."""
        raw = self.transport.value()
        self.transport.clear()
        assert raw == b"" or raw.endswith(b"\r\n"), raw
        return [line.decode("utf-8") for line in raw.split(b"\r\n")[:-1]]

    def ask(self, *commands: str) -> list[str]:
        self.send("".join(c + "\r\n" for c in commands))
        return self.lines()

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting)

    def drop(self) -> None:
        """The client goes away (StringTransport never calls connectionLost by itself)."""
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))


def held_hasher(factory: ServerFactory, max_pending: int = 1000) -> HeldRunner:
    """Give ``factory`` a hasher whose bcrypt calls wait for the test: checks finish in a chosen order."""
    held = HeldRunner()
    factory.hasher = PasswordHasher(held, rounds=4, max_pending=max_pending)
    factory.hasher.start()
    held.release_all()
    held.finished.clear()
    return held


class HeldRunner:
    """A runner that keeps calls pending until the test releases them (a full bcrypt queue)."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]] = []
        self.finished: list[str] = []  # names of the functions run, in order ("_check": one password check)

    def run(self, func: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.held.append((func, args, d))
        return d

    def release_all(self) -> None:
        while self.held:
            self.release(0)

    def release(self, index: int = 0) -> None:
        """Finish one held call, chosen by its place among those held (-1: the latest)."""
        func, args, d = self.held.pop(index)
        self.finished.append(func.__name__)
        d.callback(func(*args))

    def held_checks(self) -> int:
        return sum(1 for func, _, _ in self.held if func.__name__ == "_check")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
