"""ChatClient instances for loopback tests, with an event recorder one can await on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import defer, reactor

from chatapp.app import ChatClient
from chatapp.events import ChatEvent, EventSink, MessageReceived, TransferEnded, ignore
from chatapp.peer import Transfer

E = TypeVar("E")

PASSWORD = "correct horse battery"
TIMEOUT = 20.0


class Recorder:
    """An ``emit`` that keeps every event (and hands it on to ``forward``) and wakes tests waiting on them."""

    def __init__(self, forward: EventSink = ignore) -> None:
        self.events: list[ChatEvent] = []
        self.forward = forward
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def __call__(self, event: ChatEvent) -> None:
        self.events.append(event)
        self.forward(event)
        for waiter in list(self._waiters):
            check, d = waiter
            if check():
                self._waiters.remove(waiter)
                d.callback(None)

    async def until(self, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        if check():
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((check, d))
        await d.addTimeout(timeout, reactor)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one kind, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def messages(self) -> list[tuple[str | None, str]]:
        return [(e.session.peer_name, e.text) for e in self.of(MessageReceived)]

    def ended(self) -> list[Transfer]:
        return [e.transfer for e in self.of(TransferEnded)]


async def start_client(
    port: int, name: str, tmp_path: Path, signup: bool = True, forward: EventSink = ignore, **options: Any
) -> tuple[ChatClient, Recorder]:
    recorder = Recorder(forward)
    options.setdefault("listen", "tcp:0:interface=127.0.0.1")
    options.setdefault("reconnect_delay", 0.2)
    client = ChatClient(
        reactor, f"tcp:host=127.0.0.1:port={port}", recorder, downloads=str(tmp_path / name / "downloads"), **options
    )
    await defer.ensureDeferred(client.start(name, PASSWORD, signup=signup)).addTimeout(TIMEOUT, reactor)
    return client, recorder


def cut_when_written(receiver: ChatClient, threshold: float, cut: Callable[[], None]) -> defer.Deferred[None]:
    """Call ``cut`` once the receiver has written ``threshold`` bytes of files to disk.

    Progress events are throttled (a fast loopback transfer can finish between
    two of them), so the cut hooks the one place received bytes hit the disk.
    That runs on a writer thread: the cut goes to the reactor thread.
    """
    assert receiver.peers is not None
    downloads = receiver.peers.downloads
    real_write = downloads.write
    written = [0]
    fired: defer.Deferred[None] = defer.Deferred()

    def cut_once() -> None:
        if not fired.called:
            cut()
            fired.callback(None)

    def write(fd: int, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        real_write(fd, pieces)
        written[0] += sum(map(len, pieces))
        if written[0] >= threshold:
            threads: Any = reactor
            threads.callFromThread(cut_once)

    downloads.write = write  # type: ignore[method-assign]
    return fired.addTimeout(TIMEOUT, reactor)
