"""The peer handshake (PROTOCOL.md 3.1): reading HELLO and WELCOME, judging a token, and the
:class:`Handshake` of one session, which turns its lines before the chat opens into an open or a close."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp import PROTOCOL_VERSION
from chatapp.peer.deadline import Deadline
from chatapp.peer.errors import ServerUnavailable, VerifyRejected
from chatapp.peer.states import Role, SessionState
from chatapp.wire import (
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


def parse_hello(raw: bytes) -> tuple[str, str] | None:
    """(name, token) from a well-formed ``HELLO chatapp/1 <name> <token>``, else None."""
    try:
        verb, args = split_verb(decode_line(raw))
        if verb != "HELLO":
            return None
        version, name, token = fields(args, 3)
    except WireError:
        return None
    if version != PROTOCOL_VERSION or not valid_username(name) or not valid_urlsafe(token):
        return None
    return name, token


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


def judge_token(verify: Callable[[str], Any], token: str, name: str, me: str) -> defer.Deferred[tuple[bytes, str]]:
    """Ask ``verify`` (VERIFY on our server) about the token ``name`` sent in HELLO.

    Fires with the line to answer and why we refuse: ``(WELCOME..., "")``,
    ``(ERR 403 bad-token, "bad-token")`` when the server said no or issued
    the token to someone else, ``(ERR 503 server-unavailable,
    "server-unavailable")`` when it could not be asked. Never fails.
    """

    def failed(failure: Failure) -> tuple[bytes, str]:
        if failure.check(VerifyRejected):
            return format_error(403, "bad-token"), "bad-token"
        if failure.check(ServerUnavailable):  # expected while our server link is down: no traceback
            log.warn("could not verify a peer token: {reason}", reason=failure.getErrorMessage())
        else:
            log.failure("could not verify a peer token", failure)
        return format_error(503, "server-unavailable"), "server-unavailable"

    def answered(result: Any) -> tuple[bytes, str]:
        if isinstance(result, tuple) and isinstance(result[0], bytes):
            return result  # the refusal from failed()
        requester, proof = result
        if fold_name(requester) != fold_name(name) or not valid_urlsafe(proof):
            log.info("a token was issued to someone else than the peer who showed it")
            return format_error(403, "bad-token"), "bad-token"
        return format_line("WELCOME", PROTOCOL_VERSION, me, proof), ""

    d: defer.Deferred[Any] = defer.maybeDeferred(verify, token)
    d.addErrback(failed)  # first, so that it sees only what verify did
    return d.addCallback(answered)


class Handshake:
    """One session's way to OPEN: the connector's HELLO and its reading of WELCOME, the listener's
    reading of HELLO and its verdict, and the 30 s deadline over all of it."""

    def __init__(self, session: PeerSession, token: str | None, proof: str | None) -> None:
        self._session = session
        self._token = token
        self._proof = proof
        factory = session.factory
        self.deadline = Deadline(factory.clock, factory.handshake_timeout, self._timed_out)

    def start(self) -> None:
        """The connection is up: start the clock, and as connector say HELLO."""
        session = self._session
        self.deadline.start()
        if session.role is Role.CONNECTOR:
            assert self._token is not None
            session.send(format_line("HELLO", PROTOCOL_VERSION, session.factory.me, self._token))

    def done(self) -> None:
        """The session opened or is gone: stop the clock and forget the secrets."""
        self.deadline.stop()
        self._token = self._proof = None

    def line(self, raw: bytes) -> None:
        """A line that arrived before the session opened."""
        if self._session.role is Role.LISTENER:
            self._listener_line(raw)
        else:
            self._connector_line(raw)

    def _timed_out(self) -> None:
        session = self._session
        if session.state in (SessionState.HANDSHAKING, SessionState.VERIFYING):
            log.info("peer handshake timed out")
            session.lose("handshake-timeout")

    def _listener_line(self, raw: bytes) -> None:
        session = self._session
        if raw.split(b" ", 1)[0].upper() in (b"OK", b"ERR", b"*"):
            session.lose("not-authenticated")  # OK, ERR and * lines are never answered (section 1)
            return
        hello = parse_hello(raw) if session.state is SessionState.HANDSHAKING else None
        if hello is None:
            session.send(format_error(403, "not-authenticated"))
            session.lose("not-authenticated")
            return
        session.move(SessionState.VERIFYING)
        session.peer_name, token = hello
        judged = judge_token(session.factory.verify, token, session.peer_name, session.factory.me)
        judged.addCallback(self._judged)
        judged.addErrback(session.fail_inside, "verifying a peer")

    def _judged(self, verdict: tuple[bytes, str]) -> None:
        session = self._session
        if session.state is not SessionState.VERIFYING:
            return  # closed meanwhile
        line, refusal = verdict
        session.send(line)
        if refusal:
            session.lose(refusal)
        else:
            session.opened()

    def _connector_line(self, raw: bytes) -> None:
        session = self._session
        assert session.peer_name is not None and self._proof is not None
        name, refusal = read_welcome(raw, session.peer_name, self._proof)
        if name is None:
            if refusal == "bad-welcome":
                log.info("bad WELCOME from the peer we called {peer}", peer=session.who())
            session.lose(refusal)
            return
        session.peer_name = name
        session.opened()
