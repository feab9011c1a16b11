"""Contacts (PROTOCOL.md 4.4): the key remembered for each user we chatted with on one server.

The server vouches for every peer's key; a lying server could vouch for an attacker's. So the key
first seen for a contact is remembered (the known-peers file, ``chatapp.tls.known_hosts.KnownPeers``)
and a later, different vouched key stops the chat until the user accepts it with :meth:`Contacts.trust`.

The handshake asks :meth:`Contacts.changed` on the reactor thread, so the entries of this server are
held in memory, read once by :meth:`load`; every write of the file (flock, rewrite, fsync) runs on
``runner``, off the reactor thread, one at a time.

What :meth:`trust` accepts: the key most recently *refused* for that user in this run (one the user was
shown in a ``KeyChanged`` event). Accepting "whatever the server vouches for next" would let the very
server this guards against pick the key; a key never refused needs no trust.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet import defer
from twisted.logger import Logger

from chatapp.peer.errors import PeerError
from chatapp.runner import Runner
from chatapp.tls.fingerprint import same_fingerprint
from chatapp.tls.known_hosts import KnownKey, KnownPeers, normalise_host
from chatapp.wire import fold_name

log = Logger()

# Contacts remembered per server, in memory and added to the file: each one is a user who opened a
# chat with us (vouched for by the server), so many accounts made for it could otherwise grow both.
MAX_CONTACTS = 10_000
# Keys refused in this run and waiting for the user's /trust: the most recent ones are kept.
MAX_REFUSED = 64


class NothingToTrust(PeerError):
    """No changed key was refused for this user in this run: there is nothing to accept."""


class Contacts:
    """The remembered keys of the contacts on server ``host:port``."""

    def __init__(
        self,
        known: KnownPeers,
        host: str,
        port: int,
        runner: Runner,
        *,
        accept_changed: bool = False,
        max_contacts: int = MAX_CONTACTS,
    ) -> None:
        """``accept_changed``: a changed key is accepted and remembered (with a warning in the log)
        instead of refused: ``chatapp send``/``listen --accept-changed-keys``."""
        self.known = known
        self.host = host
        self.port = port
        self.accept_changed = accept_changed
        self.max_contacts = max_contacts
        self._runner = runner
        self._keys: dict[str, str] = {}  # case-folded user -> remembered fingerprint
        self._holders: dict[str, str] = {}  # the other way round (fingerprint in lower case -> user)
        self._refused: OrderedDict[str, tuple[str, str]] = OrderedDict()  # user -> (remembered, offered)
        self._full_logged = False

    def load(self) -> defer.Deferred[None]:
        """Read this server's entries from the file (off the reactor thread); bad lines are logged."""

        def loaded(keys: dict[str, str]) -> None:
            self._keys = {}
            self._holders = {}
            for user, fingerprint in keys.items():
                self._set(user, fingerprint)

        return self._runner.run(self._read).addCallback(loaded)

    def _read(self) -> dict[str, str]:
        contents = self.known.read()
        for bad in contents.bad_lines:
            log.warn(
                "{path} line {number} is ignored: {reason}",
                path=str(contents.path),
                number=bad.line_number,
                reason=bad.reason,
            )
        keys: dict[str, str] = {}
        host = normalise_host(self.host)
        for entry in contents.entries:
            if entry.user is not None and entry.host == host and entry.port == self.port:
                keys[entry.user] = entry.fingerprint
        return keys

    def remembered(self, user: str) -> str | None:
        """The key remembered for ``user``, if any."""
        return self._keys.get(fold_name(user))

    def holder(self, fingerprint: str) -> str | None:
        """The contact whose remembered key is ``fingerprint``, if any (for a notice: no trust is decided
        on it, so a dictionary lookup, not a constant-time comparison)."""
        return self._holders.get(fingerprint.lower())

    def _set(self, user: str, fingerprint: str) -> None:
        old = self._keys.get(user)
        if old is not None and self._holders.get(old.lower()) == user:
            del self._holders[old.lower()]
        self._keys[user] = fingerprint
        self._holders[fingerprint.lower()] = user

    def refused(self, user: str) -> tuple[str, str] | None:
        """``(remembered, offered)`` of the last key refused for ``user`` in this run, if any."""
        return self._refused.get(fold_name(user))

    def changed(self, user: str, vouched: str) -> str | None:
        """The remembered key if the server now vouches for another one, else None.

        Unless changes are accepted (:attr:`accept_changed`: the new key is remembered and the chat goes
        on) the chat is to be refused, and the refusal is kept for :meth:`trust`.
        """
        key = fold_name(user)
        remembered = self._keys.get(key)
        if remembered is None or same_fingerprint(remembered, vouched):
            return None
        if self.accept_changed:
            log.warn(
                "the key of {user} changed from {remembered} to {offered}: accepted as told",
                user=key,
                remembered=remembered,
                offered=vouched,
            )
            self._set(key, vouched)
            d = self._runner.run(self.known.remember, self.host, self.port, key, vouched, True)
            d.addErrback(lambda failure: log.failure("could not remember the key of {user}", failure, user=key))
            return remembered
        self._refused.pop(key, None)
        self._refused[key] = (remembered, vouched)
        while len(self._refused) > MAX_REFUSED:
            self._refused.popitem(last=False)
        return remembered

    def seen(self, user: str, fingerprint: str) -> None:
        """A chat with ``user`` opened on ``fingerprint``: remember it if ``user`` is new (in the background)."""
        key = fold_name(user)
        if key in self._keys:
            return
        if len(self._keys) >= self.max_contacts:
            if not self._full_logged:
                self._full_logged = True
                log.warn("limit contacts reached: {count} contacts remembered; new ones are not", count=len(self._keys))
            return
        self._set(key, fingerprint)
        d = self._runner.run(self.known.remember, self.host, self.port, key, fingerprint)
        d.addCallback(self._written, key)
        d.addErrback(lambda failure: log.failure("could not remember the key of {user}", failure, user=key))

    def _written(self, entry: KnownKey, key: str) -> None:
        # Another client may have remembered another key a moment earlier: the file decides.
        self._set(key, entry.fingerprint)

    def trust(self, user: str) -> defer.Deferred[str]:
        """Accept the key last refused for ``user``: it replaces the remembered one; fires with it.

        Fails with :class:`NothingToTrust` if no key was refused for ``user`` in this run.
        """
        key = fold_name(user)
        refused = self._refused.pop(key, None)
        if refused is None:
            return defer.fail(NothingToTrust(f"no changed key of {user} to accept"))
        offered = refused[1]
        self._set(key, offered)
        d = self._runner.run(self.known.remember, self.host, self.port, key, offered, True)
        return d.addCallback(lambda entry: entry.fingerprint)
