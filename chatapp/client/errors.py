"""Everything the client library raises, as types whose ``str()`` is one clear line for the user.

Two halves:

- :class:`ServerError` and its subclasses are the server's ``ERR`` replies
  (PROTOCOL.md 2.4): one class per reason family, each carrying the numeric
  ``code``, the ``reason`` token, the extra ``fields`` (the seconds of a 429)
  and the server's human ``text``.
- :class:`ClientError` and its subclasses are problems found on this side:
  an argument that cannot be sent, a connection that is gone or never came.

Everything derives from :class:`ChatClientError`, so a console can catch that
one class and print ``str(error)``.  Text that came from the server is
escaped for the terminal (PROTOCOL.md section 1) before it is shown.
"""

from __future__ import annotations

from chatapp.wire import escape_for_terminal


class ChatClientError(Exception):
    """Something went wrong talking to the chat server."""

    def __str__(self) -> str:
        if self.args and isinstance(self.args[0], str) and self.args[0]:
            return self.args[0]
        return (type(self).__doc__ or type(self).__name__).strip().splitlines()[0]


# -- problems found on this side ----------------------------------------------


class ClientError(ChatClientError):
    """The client could not do what was asked."""


class InvalidArgument(ClientError, ValueError):
    """That value cannot be sent to the server."""


class NotConnected(ClientError):
    """Not connected to the chat server."""


class ConnectFailed(NotConnected):
    """Could not reach the chat server."""


class ServerNotTrusted(ClientError):
    """The server's TLS certificate was not accepted; nothing was sent to it (PROTOCOL.md 4.1)."""


class ServerKeyChanged(ServerNotTrusted):
    """The server offered another key than the one pinned (or given): someone may be intercepting.

    Never asked about: the message names both fingerprints and the line to remove if the change is expected.
    """

    def __init__(self, message: str, expected: str, offered: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.offered = offered


class ServerKeyUnknown(ServerNotTrusted):
    """First contact with a server whose key nobody confirmed (no terminal, no --server-fingerprint)."""

    def __init__(self, message: str, offered: str) -> None:
        super().__init__(message)
        self.offered = offered


_BYE_TEXT = {
    "replaced": "you logged in from somewhere else, so the server closed this connection",
    "shutdown": "the server is shutting down",
    "idle-timeout": "the server closed the connection after a long silence",
    "login-timeout": "the server closed the connection because nobody logged in in time",
    "too-many-connections": "the server refused the connection: too many connections (from your address, or in all)",
}


class ConnectionClosed(ClientError):
    """The connection to the chat server was closed.

    ``bye`` is the reason of the server's ``* BYE <reason>`` if one came
    (``replaced``, ``shutdown``, ``idle-timeout``, ...), else None;
    ``detail`` says more about how the connection ended, if anything is known.
    """

    def __init__(self, bye: str | None = None, detail: str = "") -> None:
        super().__init__(bye, detail)
        self.bye = bye
        self.detail = detail

    def __str__(self) -> str:
        if self.bye is not None:
            text = _BYE_TEXT.get(self.bye, f"the server closed the connection ({escape_for_terminal(self.bye)})")
        else:
            text = "the connection to the chat server was closed"
        if self.detail:
            text = f"{text}: {self.detail}"
        return text


class ProtocolViolation(ConnectionClosed):
    """The server sent something this client does not understand, so the client hung up."""

    def __init__(self, detail: str) -> None:
        super().__init__(None, detail)

    def __str__(self) -> str:
        return f"the server sent something unexpected, so the connection was dropped: {self.detail}"


# -- the server's ERR replies -------------------------------------------------


class ServerError(ChatClientError):
    """The server refused the request."""

    default_text = "the server refused the request"

    def __init__(self, code: int, reason: str, fields: tuple[str, ...] = (), text: str = "") -> None:
        super().__init__(code, reason, fields, text)
        self.code = code
        self.reason = reason
        self.fields = fields
        self.text = text

    def __str__(self) -> str:
        text = escape_for_terminal(self.text) if self.text else self.default_text
        return f"{text} ({self.code} {escape_for_terminal(self.reason)})"


class BadRequest(ServerError):
    """The server could not take the request (400): a malformed or unknown command or argument."""

    default_text = "the server could not take that request"


class BadCredentials(ServerError):
    """Wrong user name or password (401).

    ``tries_left``: the wrong passwords this address may still send, the last
    of which blocks it (PROTOCOL.md 2.3); None if the server did not say.
    """

    default_text = "wrong user name or password"

    def __init__(self, code: int, reason: str, fields: tuple[str, ...] = (), text: str = "") -> None:
        super().__init__(code, reason, fields, text)
        self.tries_left: int | None = int(fields[0]) if fields and fields[0].isdigit() else None

    def __str__(self) -> str:
        base = super().__str__()
        if self.tries_left is None:
            return base
        if self.tries_left <= 1:
            return f"{base}; one more wrong password blocks your address"
        return f"{base}; {self.tries_left} more wrong passwords block your address"


class Forbidden(ServerError):
    """Not allowed (403)."""

    default_text = "not allowed"


class NotLoggedIn(Forbidden):
    """Log in first (403 not-logged-in)."""

    default_text = "log in first"


class BadToken(Forbidden):
    """The connection token is unknown, expired or not meant for you (403 bad-token)."""

    default_text = "that connection token is unknown, expired or not meant for you"


class NoSuchUser(ServerError):
    """There is no such user (404)."""

    default_text = "there is no such user"


class Conflict(ServerError):
    """The request conflicts with the current state (409)."""

    default_text = "that conflicts with the current state"


class UserExists(Conflict):
    """That user name is taken (409 user-exists)."""

    default_text = "that user name is taken"


class AlreadyLoggedIn(Conflict):
    """This connection is logged in already (409 already-logged-in)."""

    default_text = "this connection is logged in already"


class NotOnline(Conflict):
    """That user is not online (409 not-online)."""

    default_text = "that user is not online"


class NotListening(Conflict):
    """That user is online but not accepting chats (409 not-listening)."""

    default_text = "that user is online but not accepting chats"


class LineTooLong(ServerError):
    """The server got a line that was too long and closed the connection (413)."""

    default_text = "a line was too long for the server"


class RateLimited(ServerError):
    """Too many attempts; ``seconds`` says how long to wait (429)."""

    default_text = "too many attempts"

    def __init__(self, code: int, reason: str, fields: tuple[str, ...] = (), text: str = "") -> None:
        super().__init__(code, reason, fields, text)
        self.seconds: int | None = int(fields[0]) if fields and fields[0].isdigit() else None

    def __str__(self) -> str:
        base = super().__str__()
        if self.seconds is None:
            return base
        return f"{base}; try again in {_duration(self.seconds)}"


class Blocked(RateLimited):
    """Too many failed logins from your address: it is blocked for a while (429 blocked)."""

    default_text = "too many failed logins from your address"


class Locked(RateLimited):
    """This account is locked for a while after failed logins (429 locked)."""

    default_text = "this account is locked after failed logins"


class SlowDown(RateLimited):
    """Too many new accounts from your address; wait a while (429 slow-down)."""

    default_text = "too many new accounts from your address"


class InternalError(ServerError):
    """The server had an internal error (500)."""

    default_text = "the server had an internal error"


class Busy(ServerError):
    """The server is busy; try again shortly (503)."""

    default_text = "the server is busy; try again"


_BY_CODE: dict[int, type[ServerError]] = {
    400: BadRequest,
    401: BadCredentials,
    403: Forbidden,
    404: NoSuchUser,
    409: Conflict,
    413: LineTooLong,
    429: RateLimited,
    500: InternalError,
    503: Busy,
}

_BY_REASON: dict[tuple[int, str], type[ServerError]] = {
    (403, "not-logged-in"): NotLoggedIn,
    (403, "bad-token"): BadToken,
    (409, "user-exists"): UserExists,
    (409, "already-logged-in"): AlreadyLoggedIn,
    (409, "not-online"): NotOnline,
    (409, "not-listening"): NotListening,
    (429, "blocked"): Blocked,
    (429, "locked"): Locked,
    (429, "slow-down"): SlowDown,
}

#: Reasons whose first field after the reason is a number of seconds (PROTOCOL.md 2.1).
FIELD_COUNTS: dict[int, int] = {429: 1}
#: Reasons with a number field that an older server may leave out: ``bad-credentials <tries-left>``.
OPTIONAL_FIELDS: dict[tuple[int, str], int] = {(401, "bad-credentials"): 1}


def error_class(code: int, reason: str) -> type[ServerError]:
    """The exception class for an ``ERR <code> <reason>``: the reason's own, its family's, or the base."""
    return _BY_REASON.get((code, reason)) or _BY_CODE.get(code, ServerError)


def server_error(code: int, reason: str, fields: tuple[str, ...] = (), text: str = "") -> ServerError:
    """Build the typed exception for one ``ERR`` reply."""
    return error_class(code, reason)(code, reason, fields, text)


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    minutes = -(-seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{-(-minutes // 60)} h"
