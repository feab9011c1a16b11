"""What a test left behind on the global reactor: timers that are still due to fire, sockets still open."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReadDescriptor


@dataclass(frozen=True)
class ReactorState:
    calls: frozenset[IDelayedCall]
    sockets: frozenset[IReadDescriptor]

    def left_since(self, before: ReactorState) -> Leaks:
        return Leaks(
            calls=[call for call in self.calls - before.calls if call.active()],
            sockets=list(self.sockets - before.sockets),
        )


@dataclass(frozen=True)
class Leaks:
    calls: list[IDelayedCall]
    sockets: list[IReadDescriptor]

    def empty(self) -> bool:
        return not self.calls and not self.sockets


def reactor_state() -> ReactorState:
    """What is pending on the global reactor, the one pytest-twisted runs every test on."""
    from twisted.internet import reactor

    # Only TCP ports and connections: the reactor's own waker is a reader too, and stays.
    return ReactorState(
        calls=frozenset(reactor.getDelayedCalls()),
        sockets=frozenset(r for r in reactor.getReaders() if isinstance(r, (tcp.Port, tcp.Connection))),
    )
