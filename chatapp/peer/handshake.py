"""The peer handshake (PROTOCOL.md 3.1): reading HELLO and WELCOME, judging a token, and the
:class:`Handshake` of one session, which turns its lines before the chat opens into an open or a close."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp import PROTOCOL_VERSION
from chatapp.events import KeyChanged
from chatapp.peer.deadline import Deadline
from chatapp.peer.errors import ServerUnavailable, VerifyRejected
from chatapp.peer.states import Role, SessionState
from chatapp.tls.fingerprint import same_fingerprint
from chatapp.wire import (
    UNANSWERED,
    BadArguments,
    WireError,
    decode_line,
    fields,
    fold_name,
    format_error,
    format_line,
    split_verb,
    valid_urlsafe,
    valid_username,
)

if TYPE_CHECKING:
    from chatapp.peer.session import PeerSession

log = Logger()


def parse_hello(raw: bytes) -> tuple[str, str, str] | None:
    """(version, name, token) from a well-formed ``HELLO <version> <name> <token>``, else None."""
    try:
        verb, args = split_verb(decode_line(raw))
        if verb != "HELLO":
            return None
        version, name, token = fields(args, 3)
    except WireError:
        return None
    if not valid_username(name) or not valid_urlsafe(token):
        return None
    return version, name, token


def read_welcome(raw: bytes, target: str, proof: str) -> tuple[str | None, str]:
    """The connector's first line: ``(peer name as spelled, "")`` for a WELCOME from ``target``
    with our ``proof``, else ``(None, reason)``: the reason of an ``ERR``, or ``bad-welcome``."""
    try:
        verb, args = split_verb(decode_line(raw))
        if verb == "ERR":
            parts = (args or "").split(" ")
            return None, parts[1] if len(parts) > 1 and valid_urlsafe(parts[1], 64) else "refused"
        if verb != "WELCOME":
            raise BadArguments()
        version, name, their_proof = fields(args, 3)
    except WireError:
        return None, "bad-welcome"
    same_name = valid_username(name) and fold_name(name) == fold_name(target)
    same_proof = hmac.compare_digest(their_proof.encode("utf-8"), proof.encode("utf-8"))
    if version != PROTOCOL_VERSION or not same_name or not same_proof:
        return None, "bad-welcome"
    return name, ""


@dataclass(frozen=True)
class Verdict:
    """The server's word on a HELLO's token: a refusal (``refusal`` and the ``line`` to answer), or
    the ``proof`` for WELCOME and the ``vouched`` fingerprint of the peer's key."""

    refusal: str = ""
    line: bytes = b""
    proof: str = ""
    vouched: str | None = None


def judge_token(verify: Callable[[str], Any], token: str, name: str) -> defer.Deferred[Verdict]:
    """Ask ``verify`` (VERIFY on our server) about the token ``name`` sent in HELLO.

    ``verify`` yields ``(requester, proof, fingerprint)``. A refusal is ``bad-token`` (``ERR 403``)
    when the server said no or issued the token to someone else, ``server-unavailable``
    (``ERR 503``) when it could not be asked. Never fails.
    """

    def failed(failure: Failure) -> Verdict:
        if failure.check(VerifyRejected):
            return Verdict("bad-token", format_error(403, "bad-token"))
        if failure.check(ServerUnavailable):  # expected while our server link is down: no traceback
            log.warn("could not verify a peer token: {reason}", reason=failure.getErrorMessage())
        else:
            log.failure("could not verify a peer token", failure)
        return Verdict("server-unavailable", format_error(503, "server-unavailable"))

    def answered(result: Any) -> Verdict:
        if isinstance(result, Verdict):
            return result  # the refusal from failed()
        requester, proof, fingerprint = result
        if fold_name(requester) != fold_name(name) or not valid_urlsafe(proof):
            log.info("a token was issued to someone else than the peer who showed it")
            return Verdict("bad-token", format_error(403, "bad-token"))
        return Verdict(proof=proof, vouched=fingerprint)

    d: defer.Deferred[Any] = defer.maybeDeferred(verify, token)
    d.addErrback(failed)  # first, so that it sees only what verify did
    return d.addCallback(answered)


class Handshake:
    """One session's way to OPEN (PROTOCOL.md 3.1 and 4.3, 4.4).

    The connector waits for the TLS handshake, checks the listener's key against the ticket's
    fingerprint and the remembered one, then says HELLO and reads WELCOME. The listener reads HELLO,
    asks its server, checks the connector's key against the vouched and the remembered one, then
    answers WELCOME or a refusal. A deadline covers all of it, the TLS handshake included.
    """

    def __init__(self, session: PeerSession, token: str | None, proof: str | None, fingerprint: str | None) -> None:
        self._session = session
        self._token = token
        self._proof = proof
        self._vouched = fingerprint  # the connector's ticket: the listener's key as the server vouched for it
        self.key: str | None = None  # the peer's key, once checked
        factory = session.factory
        self.deadline = Deadline(factory.clock, factory.handshake_timeout, self._timed_out)
        # the listener's shorter clock for the first bytes: TLS done and HELLO in (a silent socket goes soon)
        self.hello_deadline = Deadline(factory.clock, factory.hello_timeout, self._no_hello)

    def start(self) -> None:
        """The connection is up (TLS still handshaking): start the clocks."""
        self.deadline.start()
        if self._session.role is Role.LISTENER:
            self.hello_deadline.start()

    def secured(self) -> None:
        """The TLS handshake completed: as connector, check the listener's key, then say HELLO."""
        session = self._session
        if session.role is not Role.CONNECTOR or session.state is not SessionState.HANDSHAKING:
            return
        assert session.peer_name is not None and self._token is not None
        if self._check_key(session.peer_name, self._vouched) is not None:
            session.lose(session.close_reason or "bad-key")  # not a word to a peer that is not the one
            return
        session.send(format_line("HELLO", PROTOCOL_VERSION, session.factory.me, self._token))

    def done(self) -> None:
        """The session opened or is gone: stop the clock and forget the secrets."""
        self.deadline.stop()
        self.hello_deadline.stop()
        self._token = self._proof = None

    def line(self, raw: bytes) -> None:
        """A line that arrived before the session opened."""
        if self._session.role is Role.LISTENER:
            self._listener_line(raw)
        else:
            self._connector_line(raw)

    def _check_key(self, user: str, vouched: str | None) -> bytes | None:
        """None if the peer's TLS key is ``vouched`` and not a changed key of a remembered contact;
        else the refusal line (the session's ``close_reason`` and ``refused_keys`` say why)."""
        session = self._session
        factory = session.factory
        try:
            offered = factory.peer_key(session)
        except (ValueError, TypeError):  # no TLS layer, or no certificate: nothing to check against
            offered = ""
        if vouched is None or not same_fingerprint(offered, vouched):
            log.warn("the key of {peer} is not the one the server vouched for", peer=session.who())
            session.close_reason = "bad-key"
            session.refused_keys = (vouched or "(none)", offered or "(none)")
            return format_error(403, "bad-key")
        contacts = factory.contacts
        remembered = contacts.changed(user, offered) if contacts is not None else None
        if remembered is not None and contacts is not None and contacts.accept_changed:
            session.emit(KeyChanged(user, remembered, offered, accepted=True))  # said, never silent
        elif remembered is not None:
            log.warn("the key of {peer} changed: the chat is refused until the user trusts it", peer=session.who())
            session.close_reason = "key-changed"
            session.refused_keys = (remembered, offered)
            session.emit(KeyChanged(user, remembered, offered))
            return format_error(403, "key-changed")
        self.key = offered
        return None

    def _timed_out(self) -> None:
        session = self._session
        if session.state in (SessionState.HANDSHAKING, SessionState.VERIFYING):
            log.info("peer handshake timed out")
            session.lose("handshake-timeout")

    def _no_hello(self) -> None:
        session = self._session
        if session.state is SessionState.HANDSHAKING:
            session.factory.limit_hit("peer-hello-timeout", "a peer connection sent no HELLO in time: closing it")
            session.lose("hello-timeout", abort=True)

    def _listener_line(self, raw: bytes) -> None:
        session = self._session
        if raw.split(b" ", 1)[0].upper().decode("ascii", "replace") in UNANSWERED:
            session.lose("not-authenticated")  # OK, ERR and * lines are never answered (section 1)
            return
        hello = parse_hello(raw) if session.state is SessionState.HANDSHAKING else None
        if hello is None:
            session.send(format_error(403, "not-authenticated"))
            session.lose("not-authenticated")
            return
        version, name, token = hello
        if version != PROTOCOL_VERSION:  # section 4.5: no fallback to an older version
            session.send(format_line("ERR", "400", "unsupported-version", f"this peer speaks {PROTOCOL_VERSION}"))
            session.lose("unsupported-version")
            return
        session.move(SessionState.VERIFYING)
        self.hello_deadline.stop()
        session.peer_name = name
        judged = judge_token(session.factory.verify, token, session.peer_name)
        judged.addCallback(self._judged)
        judged.addErrback(session.fail_inside, "verifying a peer")

    def _judged(self, verdict: Verdict) -> None:
        session = self._session
        if session.state is not SessionState.VERIFYING:
            return  # closed meanwhile
        assert session.peer_name is not None
        refusal = verdict.line if verdict.refusal else self._check_key(session.peer_name, verdict.vouched)
        if refusal is not None:
            session.send(refusal)
            session.lose(verdict.refusal or session.close_reason)
            return
        session.send(format_line("WELCOME", PROTOCOL_VERSION, session.factory.me, verdict.proof))
        session.opened()

    def _connector_line(self, raw: bytes) -> None:
        session = self._session
        assert session.peer_name is not None and self._proof is not None
        if self.key is None:
            session.lose("not-authenticated")  # a line before we said HELLO: TLS was not even checked
            return
        name, refusal = read_welcome(raw, session.peer_name, self._proof)
        if name is None:
            if refusal == "bad-welcome":
                log.info("bad WELCOME from the peer we called {peer}", peer=session.who())
            session.lose(refusal)
            return
        session.peer_name = name
        session.opened()
