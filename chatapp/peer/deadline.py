"""A restartable deadline on an injected clock: call ``on_expiry`` unless stopped or restarted in time."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Deadline:
    def __init__(self, clock: IReactorTime, seconds: float, on_expiry: Callable[[], None]) -> None:
        self._clock = clock
        self.seconds = seconds
        self._on_expiry = on_expiry
        self._call: IDelayedCall | None = None

    @property
    def running(self) -> bool:
        return self._call is not None and self._call.active()

    def start(self) -> None:
        """Start, or start over with the full time."""
        if self._call is not None and self._call.active():
            self._call.reset(self.seconds)
        else:
            self._call = self._clock.callLater(self.seconds, self._expired)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _expired(self) -> None:
        self._call = None
        self._on_expiry()
