"""The client's side of the server link's TLS (PROTOCOL.md 4.1): one connection creator per server, and
the trust decision made in ``handshakeCompleted`` before a single byte is sent.

:class:`ServerLinkTLS` is built once per :class:`~chatapp.client.connection.ServerConnection` (its OpenSSL
context is reused on every reconnection). :meth:`ServerLinkTLS.accept` runs the order of
``chatapp.tls.server_trust``: system roots and host name; else the pin in the known-servers file; else
first contact, settled by ``--server-fingerprint``, by the application's ``confirm`` callback (a prompt
on a terminal) or by ``trust_on_first_use``, and pinned; otherwise refused. File reads and writes run in
a thread: a pin is fsynced.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from chatapp.client.errors import ServerKeyChanged, ServerKeyUnknown, ServerNotTrusted
from chatapp.runner import ReactorPool
from chatapp.tls.contexts import ServerLinkClientTLS
from chatapp.tls.fingerprint import same_fingerprint
from chatapp.tls.known_hosts import KnownServers, format_address
from chatapp.tls.paths import known_servers_path
from chatapp.tls.server_trust import Mismatch, ServerTrust, Trusted, Unknown, Verdict
from chatapp.tls.transports import peer_certificate

log = Logger()

# Asked on first contact with (host:port, fingerprint); fires True to trust and pin, False to refuse.
Confirm = Callable[[str, str], "defer.Deferred[bool]"]


def changed_key_message(
    where: str, expected: str, offered: str, file: Path | None, line: int | None, given_matches: bool = False
) -> str:
    """The loud refusal of a changed server key: both fingerprints and what to do if the change is expected."""
    if file is not None:
        remedy = f"If the server's key was changed on purpose, remove line {line} of {file} and connect again."
        if given_matches:
            remedy += (
                " The key you gave (--server-fingerprint) is the offered one, but a pinned key is only"
                " replaced by removing its line."
            )
        known = "pinned"
    else:
        remedy = "Check the fingerprint you were given (--server-fingerprint)."
        known = "expected"
    return (
        f"REFUSED: the chat server at {where} presented a different key than the one {known}. "
        f"Someone may be intercepting the connection. {known.capitalize()}: {expected}  offered: {offered}. {remedy}"
    )


def unknown_key_message(where: str, offered: str) -> str:
    return (
        f"the chat server at {where} is not known yet and its key could not be confirmed: {offered}. "
        f"Compare it with the one the server's operator publishes (chatapp-admin fingerprint), then connect "
        f"with --server-fingerprint {offered} (or --trust-on-first-use)"
    )


class ServerLinkTLS:
    """TLS for the link to one server (``host:port``) and the decision about its certificate."""

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        *,
        server_fingerprint: str | None = None,
        trust_on_first_use: bool = False,
        confirm: Confirm | None = None,
        known_servers: KnownServers | None = None,
        trust_roots: Any = None,
    ) -> None:
        """``server_fingerprint`` (``--server-fingerprint``): a malformed one raises ``BadFingerprint`` here."""
        self.reactor = reactor
        self.where = format_address(host, port)
        self.creator = ServerLinkClientTLS(host, trust_roots)
        self.trust = ServerTrust(known_servers or KnownServers(known_servers_path()), host, port, server_fingerprint)
        self.trust_on_first_use = trust_on_first_use
        self.confirm = confirm
        self.server_key: str | None = None  # the fingerprint of the server's key, once a connection accepted it

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return ReactorPool(self.reactor).run(f, *args)

    async def accept(self, transport: Any) -> str:
        """After the handshake: the server's fingerprint if it is trusted; else raise ``ServerNotTrusted``."""
        self.server_key = await self._decide(transport)
        return self.server_key

    def other_names(self) -> list[tuple[str, int]]:
        """Other ``host:port`` spellings pinned with this server's key (``localhost`` for ``127.0.0.1``...):
        the same server. Reads the known-servers file: call it off the reactor thread."""
        if self.server_key is None:
            return []
        here = (self.trust.host, self.trust.port)
        return [
            (entry.host, entry.port)
            for entry in self.trust.known_servers.read().entries
            if same_fingerprint(entry.fingerprint, self.server_key) and (entry.host, entry.port) != here
        ]

    async def _decide(self, transport: Any) -> str:
        certificate = peer_certificate(transport)
        by_roots = self.creator.trusted_by_roots(transport)
        verdict: Verdict = await self._in_thread(self.trust.decide, certificate, by_roots)
        if isinstance(verdict, Trusted):
            if verdict.by == "given":
                await self._pin(verdict.fingerprint)
            return verdict.fingerprint
        if isinstance(verdict, Mismatch):
            log.error(
                "the chat server at {where} offered key {offered}, not the expected {expected}",
                where=self.where,
                offered=verdict.offered,
                expected=verdict.expected,
            )
            message = changed_key_message(
                self.where, verdict.expected, verdict.offered, verdict.file, verdict.line_number, verdict.given_matches
            )
            raise ServerKeyChanged(message, verdict.expected, verdict.offered)
        assert isinstance(verdict, Unknown)
        offered = verdict.fingerprint
        if self.confirm is not None:
            if not await self.confirm(self.where, offered):
                raise ServerNotTrusted(f"not trusting the chat server at {self.where} ({offered}); nothing was sent")
        elif not self.trust_on_first_use:
            raise ServerKeyUnknown(unknown_key_message(self.where, offered), offered)
        await self._pin(offered)
        return offered

    async def _pin(self, fingerprint: str) -> None:
        entry = await self._in_thread(self.trust.pin, fingerprint)
        if entry.fingerprint != fingerprint:  # another client pinned another key a moment ago
            message = changed_key_message(
                self.where, entry.fingerprint, fingerprint, self.trust.known_servers.path, entry.line_number
            )
            raise ServerKeyChanged(message, entry.fingerprint, fingerprint)
        log.info("trusting the chat server at {where}: {fingerprint}", where=self.where, fingerprint=fingerprint)
