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
from chatapp.server.protocol import ServerProtocol

PASSWORD = "correct horse battery"


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


class HeldRunner:
    """A runner that keeps calls pending until the test releases them (a full bcrypt queue)."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]] = []

    def run(self, func: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.held.append((func, args, d))
        return d

    def release_all(self) -> None:
        while self.held:
            func, args, d = self.held.pop(0)
            d.callback(func(*args))

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
