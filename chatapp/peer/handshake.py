"""The peer handshake's rules, apart from the connection: reading HELLO and WELCOME, judging a token."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp import PROTOCOL_VERSION
from chatapp.peer.errors import ServerUnavailable, VerifyRejected
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

log = Logger()


def parse_hello(raw: bytes) -> tuple[str, str] | None:
    """(name, token) from a well-formed ``HELLO chatapp/<version> <name> <token>``, else None."""
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
