"""bcrypt hashing and checking, off the reactor thread, with a bound on pending work."""

from __future__ import annotations

import bcrypt
from twisted.internet import defer

from chatapp.runner import Runner


class Busy(Exception):
    """More password checks are pending than the server allows."""


class PasswordHasher:
    """Runs bcrypt in ``runner``; refuses new work once ``max_pending`` calls are in flight.

    Unknown users are checked against a dummy hash of the same cost, so a
    wrong name and a wrong password take the same time.
    """

    def __init__(self, runner: Runner, rounds: int, max_pending: int) -> None:
        self._runner = runner
        self.rounds = rounds
        self.max_pending = max_pending
        self.pending = 0
        self._dummy_hash: bytes | None = None
        self._dummy_waiting: list[defer.Deferred[bytes]] = []

    def start(self) -> defer.Deferred[None]:
        self._runner.start()
        d = self._runner.run(bcrypt.hashpw, b"chatapp dummy password", bcrypt.gensalt(self.rounds))

        def _keep(hashed: bytes) -> None:
            self._dummy_hash = hashed
            waiting, self._dummy_waiting = self._dummy_waiting, []
            for w in waiting:
                w.callback(hashed)

        return d.addCallback(_keep)

    def _dummy(self) -> defer.Deferred[bytes]:
        if self._dummy_hash is not None:
            return defer.succeed(self._dummy_hash)
        d: defer.Deferred[bytes] = defer.Deferred()
        self._dummy_waiting.append(d)
        return d

    @property
    def full(self) -> bool:
        """True if new work would be refused with :class:`Busy`."""
        return self.pending >= self.max_pending

    def stop(self) -> None:
        self._runner.stop()

    def _submit(self, func, *args) -> defer.Deferred:  # type: ignore[no-untyped-def]
        if self.pending >= self.max_pending:
            return defer.fail(Busy())
        self.pending += 1

        def _done(result: object) -> object:
            self.pending -= 1
            return result

        return self._runner.run(func, *args).addBoth(_done)

    def hash(self, password: str) -> defer.Deferred[bytes]:
        return self._submit(bcrypt.hashpw, password.encode("utf-8"), bcrypt.gensalt(self.rounds))

    def check(self, password: str, hashed: bytes | None) -> defer.Deferred[bool]:
        """True if ``password`` matches ``hashed``; ``None`` means no such user (always False)."""
        if hashed is None:
            if self.pending >= self.max_pending:
                return defer.fail(Busy())
            d = self._dummy()
            d.addCallback(lambda dummy: self._submit(_check, password.encode("utf-8"), dummy))
            return d.addCallback(lambda _: False)
        return self._submit(_check, password.encode("utf-8"), hashed)


def _check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a damaged hash in the database: treat as a wrong password
        return False
