"""Blocking questions on the terminal (the password, whether to trust a server), each in a thread of its own.

A daemon thread, not the reactor's pool: a Ctrl-C while a question waits
stops the reactor, and exiting must not wait for a line that never comes
(the pool's threads are joined at shutdown). The question is then answered
with :class:`Interrupted` before the reactor shuts down, so what waited for
the answer ends while the reactor still runs, instead of being dropped
half-way when the process exits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.python.failure import Failure

from .errors import EXIT_INTERRUPTED, Fatal

T = TypeVar("T")


class Interrupted(Fatal):
    """The program was stopped (Ctrl-C, SIGTERM) while a question waited for its answer."""

    def __init__(self) -> None:
        super().__init__(EXIT_INTERRUPTED, "interrupted")


def ask_in_thread(reactor: Any, ask: Callable[..., T], *args: Any, name: str = "question") -> defer.Deferred[T]:
    """``ask(*args)`` (blocking) in a daemon thread; fires with its answer, its error, or :class:`Interrupted`."""
    answer: defer.Deferred[T] = defer.Deferred()

    def interrupted() -> None:
        if not answer.called:
            answer.errback(Interrupted())

    trigger = reactor.addSystemEventTrigger("before", "shutdown", interrupted)

    def deliver(result: T | Failure) -> None:
        try:
            reactor.removeSystemEventTrigger(trigger)
        except (ValueError, KeyError):
            pass  # already run: the reactor is stopping
        if answer.called:
            return  # interrupted first: the late answer goes nowhere
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)

    def work() -> None:
        try:
            result: T | Failure = ask(*args)
        except BaseException:
            result = Failure()
        reactor.callFromThread(deliver, result)

    threading.Thread(target=work, name=name, daemon=True).start()
    return answer
