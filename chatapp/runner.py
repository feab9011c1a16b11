"""Where blocking work runs: a bounded pool of threads, never the reactor thread.

Both the password hasher and the SQLite store take a runner, so tests can
hand them :class:`InlineRunner` (real bcrypt, real SQLite, run at once on the
calling thread) and stay deterministic under a ``task.Clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class Runner(Protocol):
    def run(self, func: Callable[..., T], *args: Any) -> defer.Deferred[T]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class ThreadRunner:
    """A named Twisted thread pool of ``threads`` threads, started and stopped with its service.

    It also stops when the reactor shuts down, as the reactor's own pool does: its threads are not
    daemon threads, and one left waiting for work keeps the process from exiting. An owner whose own
    stop was given up (a timeout) must not leave a program that cannot end.
    """

    def __init__(self, reactor: Any, threads: int, name: str) -> None:
        """``reactor``: an IReactorThreads that is also an IReactorCore (the real reactor)."""
        self._reactor: IReactorThreads = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        self._at_shutdown: Any = None  # the reactor's trigger that stops us, while started
        self._stopped = False

    def run(self, func: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, func, *args)

    def start(self) -> None:
        self._pool.start()
        self._at_shutdown = self._reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
            "during", "shutdown", self._shutting_down
        )

    def _shutting_down(self) -> None:
        self._at_shutdown = None  # fired: nothing to remove
        self.stop()

    def stop(self) -> None:
        # Waits for the work in flight (a commit, a hash) to finish: nothing is cut in half.
        if self._at_shutdown is not None:
            trigger, self._at_shutdown = self._at_shutdown, None
            self._reactor.removeSystemEventTrigger(trigger)  # type: ignore[attr-defined]
        if not self._stopped:
            self._stopped = True
            self._pool.stop()


class InlineRunner:
    """Runs each call at once on the calling thread (tests only: it blocks)."""

    def run(self, func: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return defer.maybeDeferred(func, *args)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ReactorPool:
    """A :class:`Runner` on the reactor's own thread pool (started and stopped with the reactor)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def run(self, func: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), func, *args)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
