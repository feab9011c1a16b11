"""ChatClient instances for loopback tests, with an events recorder one can await on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor

from chatapp.app import ChatClient
from chatapp.peer import PeerSession, Transfer

PASSWORD = "correct horse battery"
TIMEOUT = 20.0


class Recorder:
    """Keeps every event as a tuple and wakes tests waiting for a condition on them."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    def _add(self, *event: Any) -> None:
        self.events.append(event)
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

    def messages(self) -> list[tuple[str, str]]:
        return [(e[1], e[2]) for e in self.events if e[0] == "message"]

    def ended(self) -> list[Transfer]:
        return [e[2] for e in self.events if e[0] == "ended"]

    # ChatEvents
    def request(self, user: str) -> None:
        self._add("request", user)

    def peer_joined(self, session: PeerSession) -> None:
        self._add("joined", session.peer_name)

    def peer_left(self, session: PeerSession, reason: str) -> None:
        self._add("left", session.peer_name, reason)

    def message(self, session: PeerSession, text: str) -> None:
        self._add("message", session.peer_name, text)

    def offer(self, handle: int, session: PeerSession, transfer: Transfer) -> None:
        self._add("offer", handle, transfer)

    def transfer_progress(self, handle: int, transfer: Transfer) -> None:
        self._add("progress", handle, transfer)

    def transfer_ended(self, handle: int, transfer: Transfer) -> None:
        self._add("ended", handle, transfer)

    def notice(self, text: str) -> None:
        self._add("notice", text)


async def start_client(
    port: int, name: str, tmp_path: Path, signup: bool = True, **options: Any
) -> tuple[ChatClient, Recorder]:
    recorder = Recorder()
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

    def write(fd: int, data: bytes | memoryview) -> None:
        real_write(fd, data)
        written[0] += len(data)
        if written[0] >= threshold:
            threads: Any = reactor
            threads.callFromThread(cut_once)

    downloads.write = write  # type: ignore[method-assign]
    return fired.addTimeout(TIMEOUT, reactor)
