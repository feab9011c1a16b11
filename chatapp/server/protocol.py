"""One client connection to the server: framing, dispatch in order, and the commands of section 2.3.

Commands run strictly one after another: a command that must wait (bcrypt,
the database) holds the ones pipelined behind it, so replies always come in
the order the commands were sent.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatapp import PROTOCOL_VERSION
from chatapp.addresses import counted_as, normalize_host
from chatapp.server.limits import seconds_left
from chatapp.server.lockout import Attempt, Refusal, Refused, Settlement, Verdict
from chatapp.server.passwords import Busy
from chatapp.server.registry import TokenWait
from chatapp.server.store import ADDRESS, NAME, UserExists
from chatapp.tls.fingerprint import BadFingerprint, parse_fingerprint
from chatapp.tls.transports import inner_transport
from chatapp.wire import (
    SERVER_MAX_LINE,
    UNANSWERED,
    BadArguments,
    LineBuffer,
    LineTooLong,
    WireError,
    decode_line,
    fields,
    fields_and_rest,
    fold_name,
    format_error,
    format_line,
    is_number,
    parse_number,
    split_verb,
    strip_crlf,
    valid_password,
    valid_urlsafe,
    valid_username,
)

if TYPE_CHECKING:
    from chatapp.server.factory import ServerFactory

log = Logger()
T = TypeVar("T")

# A client that stops reading gets this much more output (events, replies
# already due) before it is dropped: its socket buffer must not grow forever.
MAX_UNREAD_OUTPUT = 256 * 1024
# Lines (and bytes) a client may have waiting behind a slow command before the server stops
# reading from it: pipelining works, and one that never stops sending holds no more than this.
MAX_QUEUED_LINES = 16
MAX_QUEUED_BYTES = 16 * 1024  # more than the longest line, so a line can always complete
CLOSE_GRACE = 10.0  # seconds a closing connection has to take its last line before it is cut
BEFORE_LOGIN = frozenset({"SIGNUP", "LOGIN", "PING", "QUIT"})


class _Closed(Exception):
    """The command ended the connection; nothing more is to be written."""


@functools.lru_cache(maxsize=65536)
def _who_row(name: str, listening: bool) -> bytes:
    # WHO lists everyone online: formatting each row anew on every call was most of its cost.
    return format_line("+", "USER", name, "listening" if listening else "online")


def _busy() -> WireError:
    return WireError(503, "busy", "the server is busy; try again")


def _blocked_line(seconds: int) -> bytes:
    return format_error(429, "blocked", f"{seconds} too many failed logins from your address")


def _locked(seconds: int) -> WireError:
    return WireError(429, "locked", f"{seconds} this account is locked after failed logins")


def parse_passwd(args: str | None) -> tuple[str, str]:
    """``<n> <current-password><SP><new-password…>``: ``<n>`` is the current password's length in bytes.

    Both passwords may hold spaces, so the length says where the first ends.
    """
    (length,), rest = fields_and_rest(args, 1)
    size = parse_number(length)
    raw = rest.encode("utf-8")
    if len(raw) <= size or raw[size : size + 1] != b" ":
        raise BadArguments("PASSWD <n> <current-password> <new-password>: no space after the first <n> bytes")
    try:
        current = raw[:size].decode("utf-8")
    except UnicodeDecodeError:
        raise BadArguments("<n> ends inside a character") from None
    new = raw[size + 1 :].decode("utf-8")  # whole characters: the cut is at an ASCII space
    if not valid_password(current) or not valid_password(new):
        raise WireError(400, "bad-password", "passwords are 8-72 bytes")
    return current, new


class _Pause(enum.Enum):
    OUTPUT = "output"  # the client does not read: run nothing more until it does
    INPUT = "input"  # too many lines wait behind a slow command


class Phase(enum.Enum):
    GREETING = "greeting"  # the block list is being read; commands wait in the queue
    ANONYMOUS = "anonymous"  # greeted: SIGNUP, LOGIN, PING and QUIT only
    LOGGED_IN = "logged-in"
    CLOSING = "closing"  # the last line is written: nothing more is read or written
    GONE = "gone"  # the transport is closed


_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.GREETING: frozenset({Phase.ANONYMOUS, Phase.CLOSING, Phase.GONE}),
    Phase.ANONYMOUS: frozenset({Phase.LOGGED_IN, Phase.CLOSING, Phase.GONE}),
    Phase.LOGGED_IN: frozenset({Phase.CLOSING, Phase.GONE}),
    Phase.CLOSING: frozenset({Phase.GONE}),
    Phase.GONE: frozenset(),
}
_TALKING = frozenset({Phase.ANONYMOUS, Phase.LOGGED_IN})


class IllegalMove(Exception):
    """A bug: the connection was asked to move between phases that do not follow each other."""


_NOT_READ = object()  # the block list has not been read yet
# Shared by every connection until it first pauses or hits a limit (few ever do): an empty set of its own
# would cost each idle connection 216 bytes.
_NO_PAUSES: frozenset[_Pause] = frozenset()
_NO_LIMITS: frozenset[str] = frozenset()


@implementer(IPushProducer, IHandshakeListener)
class ServerProtocol(Protocol):
    """Also the producer of its own replies: while the client does not read, no command runs.

    Inside TLS (``config.tls``) ``connectionMade`` comes with the TCP connection, before the handshake:
    the login timeout starts there, and the greeting waits for ``handshakeCompleted``. So does the
    producer registration: TLS pauses a registered producer while it holds writes made before the
    handshake, and pausing stops reading the socket, which would stall the handshake for good.
    """

    factory: ServerFactory

    def __init__(self, factory: ServerFactory, address: str) -> None:
        self.factory = factory
        self.address = address  # the client's IP address as the server sees it
        self.address_key = counted_as(address)  # what it is counted and blocked under (an IPv6 /64)
        self.user: str | None = None  # the account name as signed up, once logged in
        self.key: str | None = None  # the fingerprint published with KEY for this login (never stored)
        self.phase = Phase.GREETING
        # Bytes received and not yet run as commands: bounded by pausing the transport (_bound_input).
        self._lines = LineBuffer(SERVER_MAX_LINE)
        self._pauses = _NO_PAUSES  # why the transport is not read; read again when empty
        self._limits_logged = _NO_LIMITS  # limits this connection hit, logged once each
        self._running: defer.Deferred[None] | None = None  # the slow command whose reply is still due
        self._unread_output: int | None = None  # bytes written since the transport paused us; None: not paused
        # The login deadline, then, reset at login, the idle one: one timer, not a second one made at login
        # while the first stays in the reactor's heap until a cleanup, on every idle connection.
        self._deadline: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._handshake_done = not factory.config.tls
        self._producing = False  # registered as the transport's producer
        self._block_read: object = _NOT_READ  # what the block list said, until both it and TLS are ready

    def _move(self, to: Phase) -> None:
        if to not in _MOVES[self.phase]:
            raise IllegalMove(f"{self.phase.value} -> {to.value}")
        self.phase = to
        if to is Phase.CLOSING or to is Phase.GONE:
            self._lines.clear()

    @property
    def gone(self) -> bool:
        return self.phase is Phase.GONE

    @property
    def waiting_to_log_in(self) -> bool:
        """Not logged in, and no command of it is running (a LOGIN in the password check is running)."""
        return self.user is None and self._running is None and not self._ended

    @property
    def _ended(self) -> bool:
        return self.phase is Phase.CLOSING or self.phase is Phase.GONE

    # -- connection life --------------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        tcp = inner_transport(self.transport)
        if ITCPTransport.providedBy(tcp):
            tcp.setTcpNoDelay(True)  # replies are small: never wait for a delayed ACK
        if self._handshake_done:
            self._register_producer()
        if not self.factory.connection_opened(self):
            self._say_bye("too-many-connections")
            return
        clock = self.factory.clock
        self._deadline = clock.callLater(self.factory.config.login_timeout, self._deadline_passed)
        d = defer.ensureDeferred(self._read_block_list())
        d.addCallback(self._block_list_read)
        d.addErrback(self._greet_failed)
        d.addErrback(self._crashed)

    def _register_producer(self) -> None:
        if not self._producing and self.transport is not None and not self._ended:
            self._producing = True
            self.transport.registerProducer(self, True)  # type: ignore[attr-defined]

    def handshakeCompleted(self) -> None:
        self._handshake_done = True
        if self._ended:
            return
        self._register_producer()
        if self._block_read is not _NOT_READ:
            self._greet(self._block_read)  # type: ignore[arg-type]

    async def _read_block_list(self) -> Refused | None:
        until = await self.factory.store.block_until(ADDRESS, self.address_key, self.factory.clock.seconds())
        return await self.factory.lockout.address_refusal(self.address_key, until)

    def _block_list_read(self, refused: Refused | None) -> None:
        self._block_read = refused
        if self._handshake_done:
            self._greet(refused)

    def _greet(self, refused: Refused | None) -> None:
        if self._ended:
            return
        if refused is not None:
            log.info("refused connection from blocked address {address}", address=self.address)
            self._send(format_line("*", "BLOCKED", str(refused.seconds)))
            self._close()
            return
        self._send(format_line("*", "HELLO", PROTOCOL_VERSION))
        self._move(Phase.ANONYMOUS)
        self._dispatch()

    def _greet_failed(self, failure: Failure) -> None:
        log.failure("greeting {address} failed", failure, address=self.address)
        if not self._ended:
            # No command was sent yet, so an ERR would answer nothing: say goodbye instead.
            self._say_bye("internal-error")

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.gone:
            self._move(Phase.GONE)
        for timer in (self._deadline, self._abort_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.factory.connection_closed(self)

    def _deadline_passed(self) -> None:
        if self.phase is Phase.LOGGED_IN:
            self._idle_timed_out()
        else:
            self._login_timed_out()

    def _login_timed_out(self) -> None:
        if not self._handshake_done:
            # A TLS handshake that never ended: no line could reach the client anyway.
            self._abort()
        elif self.phase is Phase.GREETING or self.phase is Phase.ANONYMOUS:
            self._say_bye("login-timeout")

    def _idle_timed_out(self) -> None:
        if not self._ended:
            self._say_bye("idle-timeout")

    def kick(self, reason: str) -> None:
        """End this connection with ``* BYE <reason>``, dropping whatever it still had queued."""
        if not self._ended:
            self._say_bye(reason)

    def event(self, *parts: str) -> None:
        if not self._ended:
            self._send(format_line("*", *parts))

    def _log_limit_once(self, limit: str, text: str, **fields: object) -> None:
        """Log that this connection hit ``limit`` the first time only: hitting it must not fill the log."""
        if limit not in self._limits_logged:
            self._limits_logged = self._limits_logged | {limit}
            log.info(text, address=self.address, **fields)

    def _say_bye(self, reason: str) -> None:
        self._send(format_line("*", "BYE", reason))
        self._close()

    def _send(self, line: bytes) -> None:
        if self.transport is None or self._ended:
            return
        if self._unread_output is not None:
            self._unread_output += len(line)
            if self._unread_output > MAX_UNREAD_OUTPUT:
                log.warn("dropping {address}: it does not read what it is sent", address=self.address)
                self._abort()
                return
        self.transport.write(line)

    def _close(self) -> None:
        if self._ended:
            return
        self._move(Phase.CLOSING)
        if self.transport is not None:
            if self._producing:
                # TLS shuts down (and so sends the last line) only once no producer is registered.
                self._producing = False
                self.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.transport.loseConnection()
            self._abort_timer = self.factory.clock.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        if not self._ended:
            self._move(Phase.CLOSING)
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None and not self.gone:
            abort()

    def _crashed(self, failure: Failure) -> None:
        """Last errback of every chain this connection starts: a bug must not leave it open and stuck."""
        log.failure("connection from {address} failed; closing it", failure, address=self.address)
        self._close()

    # -- IPushProducer: the transport's write buffer is full, or has drained ---

    def pauseProducing(self) -> None:
        if self._unread_output is None:
            self._unread_output = 0
        self._stop_reading(_Pause.OUTPUT)

    def resumeProducing(self) -> None:
        self._unread_output = None
        self._dispatch()  # before reading again: the queue may be full
        self._start_reading(_Pause.OUTPUT)

    def stopProducing(self) -> None:
        if not self._ended:
            self._move(Phase.CLOSING)

    # -- reading, paused for either of two reasons --------------------------------

    def _stop_reading(self, reason: _Pause) -> None:
        if not self._pauses and self.transport is not None and not self._ended:
            self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._pauses = self._pauses | {reason}

    def _start_reading(self, reason: _Pause) -> None:
        self._pauses = (self._pauses - {reason}) or _NO_PAUSES
        if not self._pauses and self.transport is not None and not self._ended:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _bound_input(self) -> None:
        """Stop reading while the lines waiting behind a slow command pass the bound; read again once they fit."""
        lines = self._lines
        full = lines.buffered > MAX_QUEUED_BYTES or lines.complete_lines() > MAX_QUEUED_LINES
        if full and _Pause.INPUT not in self._pauses:
            self._log_limit_once("input", "{address} sends commands faster than they run: reading paused")
            self._stop_reading(_Pause.INPUT)
        elif not full and _Pause.INPUT in self._pauses:
            self._start_reading(_Pause.INPUT)

    # -- framing and dispatch -----------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return
        # Before login the deadline is the login one, which traffic does not extend.
        if self.phase is Phase.LOGGED_IN and self._deadline is not None and self._deadline.active():
            self._deadline.reset(self.factory.config.idle_timeout)
        self._lines.push(data)
        self._dispatch()

    def _dispatch(self) -> None:
        """Run waiting lines until one must wait; the one that waits calls this again when it is done."""
        while self._running is None and self.phase in _TALKING and self._unread_output is None:
            try:
                raw = self._lines.next_line()
            except LineTooLong:
                self._send(format_error(413, "line-too-long", f"lines are at most {SERVER_MAX_LINE} bytes"))
                self._close()
                return
            if raw is None:
                break
            running = self._run_line(raw)
            if running is not None and not running.called:
                self._running = running
                running.addCallback(self._command_finished)
                running.addErrback(self._crashed)
                break
        if not self._ended:
            self._bound_input()

    def _command_finished(self, _: object) -> None:
        self._running = None
        self._dispatch()

    def _run_line(self, raw: bytes) -> defer.Deferred[None] | None:
        """Run one line; return a Deferred if its reply comes later."""
        if not raw:
            return None
        try:
            line = decode_line(raw)
            verb, args = split_verb(line)
            if verb in UNANSWERED:
                return None
            handler = self._handlers.get(verb)
            if handler is None:
                raise WireError(400, "unknown-command", "unknown command")
            if self.phase is Phase.ANONYMOUS and verb not in BEFORE_LOGIN:
                raise WireError(403, "not-logged-in", "log in first")
            if self.phase is Phase.LOGGED_IN and verb in ("SIGNUP", "LOGIN"):
                raise WireError(409, "already-logged-in", "this connection is logged in already")
            outcome = handler(self, args)
        except WireError as e:
            self._send(e.line())
            return None
        except Exception:
            log.failure("command from {address} failed", address=self.address)
            self._send(format_error(500, "internal-error", "internal error"))
            return None
        if outcome is None:
            return None
        d: defer.Deferred[None] = defer.ensureDeferred(outcome)
        d.addErrback(self._command_failed)
        return d

    def _command_failed(self, failure: Failure) -> None:
        if failure.check(_Closed) or self._ended:
            return
        if failure.check(WireError):
            error: WireError = failure.value  # type: ignore[assignment]
            self._send(error.line())
            return
        log.failure("command from {address} failed", failure, address=self.address)
        self._send(format_error(500, "internal-error", "internal error"))

    # -- accounts -----------------------------------------------------------

    def _check_credentials_syntax(self, args: str | None) -> tuple[str, str]:
        (name,), password = fields_and_rest(args, 1)
        if not valid_username(name):
            raise WireError(400, "bad-username", "user names are 1-32 of A-Z a-z 0-9 _ . - (not starting with . or -)")
        if not valid_password(password):
            raise WireError(400, "bad-password", "passwords are 8-72 bytes")
        return name, password

    def _refuse(self, refused: Refused, folded: str) -> Exception:
        """Say the refusal; the exception to raise so that the command ends here."""
        if refused.reason is Refusal.LOCKED:
            log.info("refused a login for locked user {user} from {address}", user=folded, address=self.address)
            return _locked(refused.seconds)
        log.info("refused a login or signup from blocked address {address}", address=self.address)
        self._send(_blocked_line(refused.seconds))
        self._close()
        return _Closed()

    async def _refuse_if_address_blocked(self) -> None:
        until = await self.factory.store.block_until(ADDRESS, self.address_key, self.factory.clock.seconds())
        refused = await self.factory.lockout.address_refusal(self.address_key, until)
        if refused is not None:
            raise self._refuse(refused, "")

    def cmd_signup(self, args: str | None) -> Coroutine[Any, Any, None]:
        name, password = self._check_credentials_syntax(args)
        return self._signup(name, password)

    async def _signup(self, name: str, password: str) -> None:
        factory = self.factory
        await self._refuse_if_address_blocked()
        now = factory.clock.seconds()
        slot, wait_for = await factory.signups.reserve(self.address_key, now)
        if slot is None:
            wait = seconds_left(now + wait_for, now)
            log.info("refused a signup from {address}: too many this hour", address=self.address)
            raise WireError(429, "slow-down", f"{wait} too many new accounts from your address; try later")
        created = False
        try:
            if await factory.store.get_account(name) is not None:
                raise WireError(409, "user-exists", "that name is taken")
            hashed = await self._busy_is_503(factory.hasher.hash(password))
            try:
                account = await factory.store.create_account(name, hashed, factory.clock.seconds())
            except UserExists:
                raise WireError(409, "user-exists", "that name is taken") from None
            created = True
        finally:
            if not created:
                self._background(factory.signups.release(self.address_key, slot), "giving back a signup slot")
        log.info("signup {user} from {address}", user=account.name, address=self.address)
        if self._ended:
            return
        await self._logged_in(account.name)
        self._send(format_line("OK", "SIGNUP", account.name))

    async def _busy_is_503(self, work: defer.Deferred[T]) -> T:
        try:
            return await work
        except Busy:
            if self.factory.limit_log.first("busy", self.factory.clock.seconds()):
                log.warn("password checks queue full: answering busy (first: {address})", address=self.address)
            raise _busy() from None

    def cmd_login(self, args: str | None) -> Coroutine[Any, Any, None]:
        name, password = self._check_credentials_syntax(args)
        return self._login(name, password)

    async def _login(self, name: str, password: str) -> None:
        factory = self.factory
        folded = fold_name(name)
        attempt = await self._admit(folded)
        if attempt is None:
            return
        try:
            account = await factory.store.get_account(name)
            ok = await self._busy_is_503(factory.hasher.check(password, account.password_hash if account else None))
        except BaseException:
            self._background(factory.lockout.abandon(attempt), "abandoning a login attempt")
            raise
        settlement = await factory.lockout.settle(attempt, account is not None and ok)
        if settlement.verdict is Verdict.SUCCESS:
            assert account is not None
            await self._logged_in_after_check(account.name)
        else:
            await self._login_failed(name, settlement)

    async def _admit(self, folded: str) -> Attempt | None:
        """Reserve a login attempt, waiting while the limits are taken by checks in flight; None if we left."""
        lockout = self.factory.lockout
        while True:
            decision = await lockout.admit(self.address_key, folded)
            if isinstance(decision, Refused):
                raise self._refuse(decision, folded)
            if isinstance(decision, Attempt):
                break
            await decision.turn
            if self._ended:
                return None
        # Read only now: a block stored after this read was decided while the attempt was admitted.
        # (The store is read for every attempt: an admin may have added a block since.)
        try:
            now = self.factory.clock.seconds()
            address_until = await self.factory.store.block_until(ADDRESS, self.address_key, now)
            name_until = await self.factory.store.block_until(NAME, folded, now)
        except BaseException:
            self._background(lockout.abandon(decision), "abandoning a login attempt")
            raise
        refused = await lockout.check_stored(decision, address_until, name_until)
        if refused is not None:
            raise self._refuse(refused, folded)
        return decision

    async def _logged_in_after_check(self, name: str) -> None:
        if self._ended:  # the client left while bcrypt ran: register nothing
            return
        await self.factory.store.record_login(name, self.factory.clock.seconds())
        if self._ended:
            return
        log.info("login {user} from {address}", user=name, address=self.address)
        await self._logged_in(name)
        self._send(format_line("OK", "LOGIN", name))

    async def _login_failed(self, name: str, settlement: Settlement) -> None:
        log.warn("failed login for {user} from {address}", user=strip_crlf(name), address=self.address)
        lockout = self.factory.lockout
        for block in settlement.store:
            try:
                await self.factory.store.set_block(block.kind, block.key, block.until, self.factory.clock.seconds())
            except BaseException:
                for unsaved in settlement.store[settlement.store.index(block) :]:
                    self._background(lockout.store_failed(unsaved), "keeping a block that was not stored")
                raise
            await lockout.stored(block)
            if block.kind == ADDRESS:
                log.warn("blocked address {address} for {seconds} s", address=block.key, seconds=settlement.seconds)
            else:
                log.warn("locked user {user} for {seconds} s", user=strip_crlf(block.key), seconds=settlement.seconds)
        if settlement.verdict is Verdict.BLOCKED:
            self._send(_blocked_line(settlement.seconds))
            self._close()
        elif settlement.verdict is Verdict.LOCKED:
            raise _locked(settlement.seconds)
        else:
            raise WireError(401, "bad-credentials", f"{settlement.tries_left} wrong user name or password")

    async def _logged_in(self, name: str) -> None:
        self.user = name  # set first: a connection lost from here on logs out (factory.connection_closed)
        self.factory.logged_in(self)
        self._move(Phase.LOGGED_IN)
        idle_timeout = self.factory.config.idle_timeout
        if self._deadline is not None and self._deadline.active():
            self._deadline.reset(idle_timeout)
        else:
            self._deadline = self.factory.clock.callLater(idle_timeout, self._deadline_passed)
        registry = self.factory.registry
        await registry.login(name, self)  # an older login of the name, anywhere, gets "* BYE replaced"
        if self.gone:
            # Lost while the login was being registered: the logout may have run first.
            await registry.logout(name, self)

    def _background(self, work: defer.Deferred[None], what: str) -> None:
        """Let ``work`` finish on its own (the command is already ending); log it if it fails."""
        work.addErrback(
            lambda failure: log.failure("{what} failed ({address})", failure, what=what, address=self.address)
        )

    def cmd_passwd(self, args: str | None) -> Coroutine[Any, Any, None]:
        current, new = parse_passwd(args)
        return self._passwd(current, new)

    async def _passwd(self, current: str, new: str) -> None:
        """Check ``current`` exactly as a LOGIN of this name from this address would, then set ``new``."""
        assert self.user is not None
        factory = self.factory
        name = self.user
        attempt = await self._admit(fold_name(name))
        if attempt is None:
            return
        try:
            account = await factory.store.get_account(name)
            if account is None:
                if factory.hasher.full:  # limits answer before the command's own conditions
                    raise _busy()
                raise WireError(404, "no-such-user", "this account no longer exists")
            ok = await self._busy_is_503(factory.hasher.check(current, account.password_hash))
        except BaseException:
            self._background(factory.lockout.abandon(attempt), "abandoning a login attempt")
            raise
        settlement = await factory.lockout.settle(attempt, ok)
        if settlement.verdict is not Verdict.SUCCESS:
            await self._login_failed(name, settlement)
            return
        hashed = await self._busy_is_503(factory.hasher.hash(new))
        if not await factory.store.set_password(name, hashed):
            raise WireError(404, "no-such-user", "this account no longer exists")
        log.info("password changed for {user} from {address}", user=name, address=self.address)
        self._send(format_line("OK", "PASSWD"))

    # -- registry -----------------------------------------------------------

    def cmd_key(self, args: str | None) -> Coroutine[Any, Any, None]:
        assert self.user is not None
        (text,) = fields(args, 1)
        try:
            key = parse_fingerprint(text)
        except BadFingerprint:
            raise WireError(400, "bad-fingerprint", "fingerprints are sha256: and 64 hex digits") from None
        return self._key(self.user, key)

    async def _key(self, user: str, key: str) -> None:
        self.key = key
        await self.factory.registry.set_key(user, self, key)
        self._send(format_line("OK", "KEY"))

    def _need_key(self) -> str:
        if self.key is None:
            raise WireError(409, "no-key", "publish your key with KEY first")
        return self.key

    def cmd_listen(self, args: str | None) -> Coroutine[Any, Any, None]:
        assert self.user is not None
        parts = fields(args, 1, optional=1)
        if not is_number(parts[0]) or not 1024 <= int(parts[0]) <= 65535:
            raise WireError(400, "bad-port", "ports are 1024-65535")
        port = int(parts[0])
        host = self.address
        if len(parts) == 2:
            try:
                advertised = normalize_host(parts[1])
            except ValueError:
                raise WireError(400, "bad-host", "the host must be an IP address") from None
            if advertised != host and not self.factory.config.allow_advertised_hosts:
                raise WireError(400, "bad-host", f"this server only accepts your own address {host}")
            host = advertised
        self._need_key()
        return self._listen(self.user, host, port)

    async def _listen(self, user: str, host: str, port: int) -> None:
        await self.factory.registry.listen(user, self, host, port)
        self._send(format_line("OK", "LISTEN", host, str(port)))

    def cmd_unlisten(self, args: str | None) -> Coroutine[Any, Any, None]:
        assert self.user is not None
        fields(args, 0)
        return self._unlisten(self.user)

    async def _unlisten(self, user: str) -> None:
        await self.factory.registry.unlisten(user, self)
        self._send(format_line("OK", "UNLISTEN"))

    def cmd_who(self, args: str | None) -> Coroutine[Any, Any, None]:
        fields(args, 0)
        return self._who()

    async def _who(self) -> None:
        rows = await self.factory.registry.online()
        out = [_who_row(p.name, p.listening is not None) for p in rows]
        out.append(format_line("OK", "WHO", str(len(rows))))
        self._send(b"".join(out))

    def cmd_connect(self, args: str | None) -> Coroutine[Any, Any, None]:
        assert self.user is not None
        (name,) = fields(args, 1)
        if not valid_username(name):
            raise WireError(400, "bad-username", "no such user name can exist")
        if fold_name(name) == fold_name(self.user):
            raise BadArguments("you cannot connect to yourself")
        key = self._need_key()
        return self._connect(self.user, name, key)

    def _slow_down(self, user: str, wait: float, now: float) -> WireError:
        self._log_limit_once("tokens", "{address} ({user}) holds all the tokens it may", user=user)
        seconds = seconds_left(now + wait, now)
        return WireError(429, "slow-down", f"{seconds} too many connection requests; wait for one to expire")

    async def _connect(self, user: str, name: str, key: str) -> None:
        registry = self.factory.registry
        now = self.factory.clock.seconds()
        # Limits answer before the command's own conditions; issue() below checks again, atomically.
        wait = await registry.token_wait(user, now)
        if wait is not None:
            raise self._slow_down(user, wait, now)
        presence = await registry.get(name)
        if presence is None:
            await self._connect_offline(name)
            return
        if presence.listening is None or presence.key is None:  # LISTEN needs a KEY: listening has a key
            raise WireError(409, "not-listening", f"{presence.name} is online but not accepting chats")
        host, port = presence.listening
        issued = await registry.issue(user, presence.name, now, key)
        if isinstance(issued, TokenWait):
            raise self._slow_down(user, issued.seconds, now)
        token, proof = issued.token, issued.proof
        self._send(format_line("OK", "CONNECT", presence.name, host, str(port), token, proof, presence.key))
        if issued.first:  # one "* REQUEST" per burst of CONNECTs
            await registry.tell(presence.name, "REQUEST", user)

    async def _connect_offline(self, name: str) -> None:
        account = await self.factory.store.get_account(name)
        if account is None:
            raise WireError(404, "no-such-user", "there is no such user")
        raise WireError(409, "not-online", f"{account.name} is not online")

    def cmd_verify(self, args: str | None) -> Coroutine[Any, Any, None]:
        assert self.user is not None
        (token,) = fields(args, 1)
        if not valid_urlsafe(token):
            raise BadArguments("tokens are URL-safe text")
        return self._verify(self.user, token)

    async def _verify(self, user: str, token: str) -> None:
        ticket = await self.factory.registry.redeem(token, user, self.factory.clock.seconds())
        if ticket is None:
            raise WireError(403, "bad-token", "unknown, expired or not yours")
        self._send(format_line("OK", "VERIFY", ticket.requester, ticket.proof, ticket.fingerprint))

    # -- the rest -----------------------------------------------------------

    def cmd_ping(self, args: str | None) -> None:
        fields(args, 0)
        self._send(format_line("OK", "PONG"))

    def cmd_quit(self, args: str | None) -> None:
        fields(args, 0)
        self._send(format_line("OK", "QUIT"))
        self._close()

    _handlers: dict[str, Callable[[ServerProtocol, str | None], Coroutine[Any, Any, None] | None]] = {
        "SIGNUP": cmd_signup,
        "LOGIN": cmd_login,
        "PASSWD": cmd_passwd,
        "KEY": cmd_key,
        "LISTEN": cmd_listen,
        "UNLISTEN": cmd_unlisten,
        "WHO": cmd_who,
        "CONNECT": cmd_connect,
        "VERIFY": cmd_verify,
        "PING": cmd_ping,
        "QUIT": cmd_quit,
    }
