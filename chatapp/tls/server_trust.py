"""The client's decision about the server's certificate, in the order of PROTOCOL.md 4.1.

In ``handshakeCompleted``, before sending anything::

    verdict = trust.check(self.transport, creator)   # creator: the ServerLinkClientTLS of this link
    match verdict:
        case Trusted(): ...                           # go on (LOGIN may be sent now)
        case Unknown(fingerprint): ...                # ask on a terminal / --trust-on-first-use, then
                                                      # trust.pin(fingerprint); otherwise refuse
        case Mismatch(): ...                          # refuse loudly; never ask

``Trusted(by="given")`` means ``--server-fingerprint`` matched on first contact: pin it with
``trust.pin``. Pinning is left to the caller so that the decision itself writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from chatapp.tls.contexts import ServerLinkClientTLS
from chatapp.tls.fingerprint import fingerprint_of, parse_fingerprint, same_fingerprint
from chatapp.tls.known_hosts import KnownKey, KnownServers
from chatapp.tls.transports import peer_certificate


@dataclass(frozen=True)
class Trusted:
    """Go on: the certificate chains to the trust roots, matches the pin, or matches ``--server-fingerprint``."""

    by: Literal["roots", "pin", "given"]
    fingerprint: str


@dataclass(frozen=True)
class Unknown:
    """First contact and nothing to compare with: ask the user, or trust on first use, or refuse."""

    fingerprint: str


@dataclass(frozen=True)
class Mismatch:
    """The offered key is not the expected one: refuse, showing both.

    ``file`` and ``line_number`` name the pin to remove if the change is expected; both are None when
    the expected fingerprint came from ``--server-fingerprint``.
    """

    expected: str
    offered: str
    file: Path | None
    line_number: int | None
    # --server-fingerprint names the offered key, but a pin says otherwise: the pin still wins (an option
    # typed in, or left in a script, must not replace a pinned key silently); the message says so
    given_matches: bool = False


Verdict = Trusted | Unknown | Mismatch


class ServerTrust:
    """What one client knows about one server (``host:port``) before it connects."""

    def __init__(self, known_servers: KnownServers, host: str, port: int, given: str | None = None) -> None:
        """``given`` is ``--server-fingerprint``; a malformed one raises ``BadFingerprint`` here, at start."""
        self.known_servers = known_servers
        self.host = host
        self.port = port
        self.given = parse_fingerprint(given) if given is not None else None

    def decide(self, certificate: x509.Certificate, trusted_by_roots: bool) -> Verdict:
        """The verdict for ``certificate``; ``trusted_by_roots`` is the chain and host name check."""
        offered = fingerprint_of(certificate)
        if trusted_by_roots:
            return Trusted("roots", offered)
        pinned = self.known_servers.lookup(self.host, self.port)
        if pinned is not None:
            if same_fingerprint(pinned.fingerprint, offered):
                return Trusted("pin", offered)
            given_matches = self.given is not None and same_fingerprint(self.given, offered)
            return Mismatch(pinned.fingerprint, offered, self.known_servers.path, pinned.line_number, given_matches)
        if self.given is not None:
            if same_fingerprint(self.given, offered):
                return Trusted("given", offered)
            return Mismatch(self.given, offered, None, None)
        return Unknown(offered)

    def check(self, transport: Any, creator: ServerLinkClientTLS) -> Verdict:
        """``decide`` for the server certificate on ``transport``, after ``handshakeCompleted``."""
        return self.decide(peer_certificate(transport), creator.trusted_by_roots(transport))

    def pin(self, fingerprint: str) -> KnownKey:
        """Remember ``fingerprint`` for this server; returns the entry in effect (another client's pin,
        made a moment earlier, wins: compare its fingerprint with yours)."""
        return self.known_servers.pin(self.host, self.port, fingerprint)
