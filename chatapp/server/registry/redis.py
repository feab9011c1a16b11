"""The registry, lockout counters and signup windows in Redis, shared by several server processes.

``--registry redis://host:port/N``. Each process has an id and a heartbeat key
(``chatapp:alive:<id>``) whose TTL it refreshes; presence entries name their
process, so WHO and CONNECT skip the entries of a process that died (kill -9)
as soon as its key runs out, and every process's sweeper deletes them.

Events for a user logged in on another process (``* REQUEST``, ``* BYE
replaced``) go to that process's own pub/sub channel, naming the login
session, so an event never reaches a later login of the same name. Lockout
turns (an attempt settled, a block stored) go to one channel every process
reads, to wake the LOGINs waiting for them.

The client is txredisapi: Twisted-native (Deferreds on the reactor the server
already runs), where redis-py would need the asyncio reactor under twistd.
It uses the global reactor for its sockets; timers here use the clock given.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic
from urllib.parse import urlsplit

import txredisapi
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from chatapp.server.limits import HOUR, LimitLog, seconds_left
from chatapp.server.lockout import Attempt, Refusal, Refused, Settlement, Verdict, Wait
from chatapp.server.registry import lua
from chatapp.server.registry.base import (
    TOKEN_LIFETIME,
    TOKENS_PER_REQUESTER,
    C,
    Connection,
    Issued,
    Presence,
    Ticket,
    TokenWait,
)
from chatapp.server.store import ADDRESS, NAME, Block

log = Logger()

HEARTBEAT_TTL = 10.0  # seconds a process's users stay in WHO after it dies without a word
HEARTBEAT_EVERY = 3.0  # seconds between refreshes (and sweeps of dead processes' users)
# Unexpired tokens of all requesters together in the shared registry (each one holds 16 at most).
SHARED_MAX_TOKENS = 262_144
FAILURE_MEMORY = 86_400  # seconds a failure count is kept without a new failure (memory bound in Redis)
STORING_TTL = 30  # seconds a decided block may take to be stored before LOGINs it covers go on
ATTEMPT_DEADLINE = 600.0  # a password check still unsettled after this (its process hung) frees its slot
WAIT_POLL = 1.0  # a waiting LOGIN asks again after this even if no turn was announced (a process died)
POOL_SIZE = 4  # connections to Redis per process: commands of different clients go out in parallel
REPLY_TIMEOUT = 10  # seconds Redis may take to answer before the command fails


class BadRedisURL(ValueError):
    pass


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://host[:port][/N]``; the port defaults to 6379 and N to 0."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise BadRedisURL(f"{url}: give redis://host:port/N")
    try:
        port = parts.port or 6379
        path = parts.path.strip("/")
        db = int(path) if path else 0
    except ValueError:
        raise BadRedisURL(f"{url}: the port and the database number are whole numbers") from None
    if not 0 <= db < 16384:
        raise BadRedisURL(f"{url}: database {db} is out of range")
    return RedisAddress(parts.hostname, port, db)


class _Subscriber(txredisapi.SubscriberProtocol):
    """The pub/sub connection: hands every message to ``on_message``; says when it is lost."""

    def __init__(self, on_message: Callable[[str, str], None], on_lost: Callable[[Failure], None]) -> None:
        super().__init__(charset="utf-8", convertNumbers=False)
        self._on_message = on_message
        self._on_lost = on_lost

    def messageReceived(self, pattern: object, channel: str, message: str) -> None:
        self._on_message(channel, message)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._on_lost(reason)


class RedisLink:
    """One process's hold on Redis: a connection pool, a pub/sub connection, the heartbeat, its id."""

    def __init__(self, address: RedisAddress, clock: IReactorTime, reactor: Any = None) -> None:
        self.address = address
        self.clock = clock
        self._reactor = reactor
        self.process = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # Pub/sub channels are not per database: the number keeps two setups on one Redis apart.
        self.channel = f"chatapp:{address.db}:process:{self.process}"
        self.turns_channel = f"chatapp:{address.db}:turns"
        self.pool: Any = None
        self._subscriber: _Subscriber | None = None
        self._handlers: dict[str, Callable[[str], None]] = {}
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self._closing = False
        self._limit_log = LimitLog()
        self._beating: defer.Deferred[None] | None = None
        self._lost_reconnect: IDelayedCall | None = None

    def on(self, channel: str, handler: Callable[[str], None]) -> None:
        self._handlers[channel] = handler

    async def open(self) -> None:
        from twisted.internet import reactor as global_reactor

        reactor = self._reactor or global_reactor
        self.pool = await txredisapi.ConnectionPool(
            self.address.host,
            self.address.port,
            self.address.db,
            poolsize=POOL_SIZE,
            reconnect=True,
            convertNumbers=False,
            replyTimeout=REPLY_TIMEOUT,
        )
        await self._subscribe(reactor)
        await self._beat_once()
        self._heartbeat.start(HEARTBEAT_EVERY, now=False)
        log.info("registry in {address}, this process is {process}", address=str(self.address), process=self.process)

    async def _subscribe(self, reactor: Any) -> None:
        endpoint = HostnameEndpoint(reactor, self.address.host, self.address.port, timeout=REPLY_TIMEOUT)
        subscriber = await connectProtocol(endpoint, _Subscriber(self._message, self._subscriber_lost))
        await subscriber.whenConnected()
        await subscriber.subscribe([self.channel, self.turns_channel])
        self._subscriber = subscriber

    def _message(self, channel: str, message: str) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(message)
        except Exception:
            log.failure("a message on {channel} could not be handled", channel=channel)

    def _subscriber_lost(self, reason: Failure) -> None:
        self._subscriber = None
        if self._closing:
            return
        log.error("lost the Redis pub/sub connection ({reason}); reconnecting", reason=reason.getErrorMessage())
        self._lost_reconnect = self.clock.callLater(1.0, self._resubscribe)

    def _resubscribe(self) -> None:
        from twisted.internet import reactor as global_reactor

        self._lost_reconnect = None
        d = defer.ensureDeferred(self._subscribe(self._reactor or global_reactor))

        def failed(failure: Failure) -> None:
            if not self._closing:
                log.error("Redis pub/sub: {reason}; trying again", reason=failure.getErrorMessage())
                self._lost_reconnect = self.clock.callLater(1.0, self._resubscribe)

        d.addErrback(failed)

    def run(self, script: str, keys: list[str], args: list[object]) -> defer.Deferred[Any]:
        return self.pool.eval(script, keys, [str(a) for a in args])

    def publish(self, channel: str, message: str) -> defer.Deferred[Any]:
        return self.pool.publish(channel, message)

    async def _beat_once(self) -> None:
        alive = lua.ALIVE + self.process
        await self.pool.set(alive, "1", pexpire=int(HEARTBEAT_TTL * 1000))
        await self.pool.sadd(lua.PROCESSES, self.process)
        swept = await self.run(lua.SWEEP, [lua.PROCESSES, lua.PRESENCE], [])
        if swept:
            log.info("removed {count} users of server processes that stopped answering", count=swept)

    def _beat(self) -> defer.Deferred[None] | None:
        if self._beating is not None:
            return None  # the last one has not come back: Redis is slow; do not pile up
        self._beating = defer.ensureDeferred(self._beat_once())

        def done(result: object) -> None:
            self._beating = None
            if isinstance(result, Failure) and self._limit_log.first("heartbeat", self.clock.seconds()):
                log.error(
                    "cannot refresh this process's heartbeat in Redis ({reason}): after {ttl} s the other "
                    "processes stop listing its users",
                    reason=result.getErrorMessage(),
                    ttl=HEARTBEAT_TTL,
                )

        self._beating.addBoth(done)
        return None

    async def close(self) -> None:
        """Announce this process gone (its users leave WHO now), then disconnect."""
        self._closing = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._lost_reconnect is not None and self._lost_reconnect.active():
            self._lost_reconnect.cancel()
        if self.pool is not None:
            try:
                await self.pool.delete(lua.ALIVE + self.process)
                await self.run(lua.SWEEP, [lua.PROCESSES, lua.PRESENCE], [])
            except Exception:
                log.failure("could not remove this process's users from Redis; they go when its heartbeat runs out")
            await self.pool.disconnect()
        if self._subscriber is not None and self._subscriber.transport is not None:
            lost = self._subscriber.whenDisconnected()
            self._subscriber.transport.loseConnection()
            await lost


def _entry(data: str) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("a presence entry is a JSON object")
    return value


class RedisRegistry(Generic[C]):
    """Presence and tokens in Redis; the connections of this process's users in ``_local``."""

    def __init__(
        self,
        link: RedisLink,
        per_requester: int = TOKENS_PER_REQUESTER,
        max_tokens: int = SHARED_MAX_TOKENS,
    ) -> None:
        self.link = link
        self.per_requester = per_requester
        self.max_tokens = max_tokens
        # Case-folded name -> (session, connection) of the logins this process holds.
        self._local: dict[str, tuple[str, C]] = {}
        self._sessions = 0
        link.on(link.channel, self._event_arrived)

    def open(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.link.open())

    def close(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.link.close())

    def _session_of(self, folded: str, connection: C) -> str | None:
        held = self._local.get(folded)
        return held[0] if held is not None and held[1] is connection else None

    # -- presence -----------------------------------------------------------------

    async def _login(self, name: str, connection: C) -> None:
        folded = name.lower()
        self._sessions += 1
        session = f"{self.link.process}/{self._sessions}"
        before = self._local.get(folded)
        self._local[folded] = (session, connection)
        entry = json.dumps({"n": name, "p": self.link.process, "s": session})
        users = lua.USERS_OF + self.link.process
        old = await self.link.run(lua.LOGIN, [lua.PRESENCE, users], [folded, entry])
        if before is not None and before[1] is not connection:
            _as_connection(before[1]).kick("replaced")
        if old is not None:
            replaced = _entry(old)
            if replaced.get("p") != self.link.process:
                message = json.dumps({"n": folded, "s": replaced.get("s"), "e": ["BYE", "replaced"]})
                await self.link.publish(f"chatapp:{self.link.address.db}:process:{replaced.get('p')}", message)
        if self._session_of(folded, connection) != session:
            # Logged out (or replaced here) while the entry was being written: take it back.
            await self.link.run(lua.LOGOUT, [lua.PRESENCE, users], [folded, session])

    def login(self, name: str, connection: C) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._login(name, connection))

    def logout(self, name: str, connection: C) -> defer.Deferred[None]:
        folded = name.lower()
        session = self._session_of(folded, connection)
        if session is None:
            return defer.succeed(None)  # replaced already: the entry is another login's
        del self._local[folded]
        users = lua.USERS_OF + self.link.process
        return self.link.run(lua.LOGOUT, [lua.PRESENCE, users], [folded, session]).addCallback(lambda _: None)

    def _presence(self, data: str) -> Presence[C]:
        entry = _entry(data)
        held = self._local.get(entry["n"].lower())
        connection = held[1] if held is not None and held[0] == entry["s"] else None
        listening = (str(entry["h"]), int(entry["o"])) if "h" in entry and "o" in entry else None
        return Presence(str(entry["n"]), connection, listening, entry.get("k"))

    def get(self, name: str) -> defer.Deferred[Presence[C] | None]:
        d = self.link.run(lua.GET, [lua.PRESENCE], [name.lower()])
        return d.addCallback(lambda data: None if data is None else self._presence(data))

    def _update(self, name: str, connection: C, what: str, *values: object) -> defer.Deferred[None]:
        folded = name.lower()
        session = self._session_of(folded, connection)
        if session is None:
            return defer.succeed(None)
        d = self.link.run(lua.UPDATE, [lua.PRESENCE], [folded, session, what, *values])
        return d.addCallback(lambda _: None)

    def set_key(self, name: str, connection: C, key: str) -> defer.Deferred[None]:
        return self._update(name, connection, "k", key)

    def listen(self, name: str, connection: C, host: str, port: int) -> defer.Deferred[None]:
        return self._update(name, connection, "l", host, port)

    def unlisten(self, name: str, connection: C) -> defer.Deferred[None]:
        return self._update(name, connection, "u")

    def online(self) -> defer.Deferred[list[Presence[C]]]:
        d = self.link.run(lua.ONLINE, [lua.PRESENCE], [])
        return d.addCallback(lambda rows: [self._presence(row) for row in rows or ()])

    # -- events -------------------------------------------------------------------

    def tell(self, name: str, *event: str) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._tell(name.lower(), list(event)))

    async def _tell(self, folded: str, event: list[str]) -> None:
        held = self._local.get(folded)
        data = await self.link.run(lua.GET, [lua.PRESENCE], [folded])
        if data is None:
            return
        entry = _entry(data)
        if entry.get("p") == self.link.process:
            if held is not None and held[0] == entry.get("s"):
                _as_connection(held[1]).event(*event)
            return
        message = json.dumps({"n": folded, "s": entry.get("s"), "e": event})
        await self.link.publish(f"chatapp:{self.link.address.db}:process:{entry.get('p')}", message)

    def _event_arrived(self, message: str) -> None:
        data = _entry(message)
        held = self._local.get(str(data.get("n")))
        event = data.get("e")
        if held is None or held[0] != data.get("s") or not isinstance(event, list) or not event:
            return  # that login has ended here since
        connection = _as_connection(held[1])
        if event == ["BYE", "replaced"]:
            connection.kick("replaced")
        else:
            connection.event(*(str(part) for part in event))

    # -- tokens -------------------------------------------------------------------

    def token_wait(self, requester: str, now: float) -> defer.Deferred[float | None]:
        d = self.link.run(lua.TOKEN_WAIT, [], [requester.lower(), now, self.per_requester, self.max_tokens])
        return d.addCallback(lambda seconds: None if seconds is None else float(seconds))

    def issue(
        self, requester: str, target: str, now: float, fingerprint: str = ""
    ) -> defer.Deferred[Issued | TokenWait]:
        token = secrets.token_urlsafe(16)
        proof = secrets.token_urlsafe(16)
        ticket = {
            "r": requester,
            "rf": requester.lower(),
            "t": target,
            "tf": target.lower(),
            "p": proof,
            "e": repr(now + TOKEN_LIFETIME),
            "f": fingerprint,
        }
        args: list[object] = [requester.lower(), now, self.per_requester, self.max_tokens]
        args += [target.lower(), TOKEN_LIFETIME, token, json.dumps(ticket)]

        def issued(reply: list[str]) -> Issued | TokenWait:
            if reply[0] == "wait":
                return TokenWait(float(reply[1]))
            return Issued(token, proof, reply[1] == "1")

        return self.link.run(lua.ISSUE, [], args).addCallback(issued)

    def redeem(self, token: str, asker: str, now: float) -> defer.Deferred[Ticket | None]:
        def ticket(data: str | None) -> Ticket | None:
            if data is None:
                return None
            t = _entry(data)
            return Ticket(str(t["r"]), str(t["t"]), str(t["p"]), float(t["e"]), str(t["f"]))

        return self.link.run(lua.REDEEM, [], [token, asker.lower(), now]).addCallback(ticket)


def _as_connection(connection: object) -> Connection:
    return connection  # type: ignore[return-value]


class RedisLockout:
    """The lockout of chatapp/server/lockout.py with its counters in Redis: exact across processes.

    Failure counts, attempts being checked and blocks being stored are keys
    per address and per name; admission and settlement are Lua scripts, so
    at most ``max_attempts`` wrong passwords are checked per address and per
    name across every process before its block or lock is decided.
    """

    def __init__(self, link: RedisLink, max_attempts: int, block_time: float) -> None:
        self.link = link
        self.max_attempts = max_attempts
        self.block_time = block_time
        self._attempts = 0
        # "kind key" -> the LOGINs of this process waiting for a turn of that key.
        self._waiting: dict[str, list[defer.Deferred[None]]] = {}
        link.on(link.turns_channel, self._turn)

    @property
    def _clock(self) -> IReactorTime:
        return self.link.clock

    def _turn(self, message: str) -> None:
        for turn in self._waiting.pop(message, ()):
            self._fire(turn)

    def _wait(self, kinds: list[str], address: str, name: str) -> Wait:
        turn: defer.Deferred[None] = defer.Deferred()
        for kind in kinds:
            key = f"{kind} {address if kind == ADDRESS else name}"
            self._waiting.setdefault(key, []).append(turn)
        # A process that died holding a slot announces no turn: ask again after a while anyway.
        poll = self._clock.callLater(WAIT_POLL, self._fire, turn)
        turn.addBoth(self._turned, turn, poll)
        return Wait(turn)

    @staticmethod
    def _fire(turn: defer.Deferred[None]) -> None:
        if not turn.called:
            turn.callback(None)

    def _turned(self, result: object, turn: defer.Deferred[None], poll: IDelayedCall) -> object:
        if poll.active():
            poll.cancel()
        self._forget_waiter(turn)
        return result

    def _forget_waiter(self, turn: defer.Deferred[None]) -> None:
        for key in [k for k, turns in self._waiting.items() if turn in turns]:
            turns = self._waiting[key]
            turns.remove(turn)
            if not turns:
                del self._waiting[key]

    def _refusal(self, kind: str, until: float) -> Refused | None:
        now = self._clock.seconds()
        if until <= now:
            return None
        return Refused(Refusal.BLOCKED if kind == ADDRESS else Refusal.LOCKED, seconds_left(until, now))

    def address_refusal(self, address: str, stored_until: float | None) -> defer.Deferred[Refused | None]:
        def judge(unstored: str | None) -> Refused | None:
            return self._refusal(ADDRESS, max(float(unstored or 0.0), stored_until or 0.0))

        return self.link.pool.get(f"{lua.LOCK}{ADDRESS}:{address}:unstored").addCallback(judge)

    def admit(self, address: str, name: str) -> defer.Deferred[Refused | Wait | Attempt]:
        self._attempts += 1
        attempt_id = f"{self.link.process}|{self._attempts}"
        attempt = Attempt(address, name, ref=attempt_id)
        now = self._clock.seconds()
        args: list[object] = [address, name, now, self.max_attempts, attempt_id, now + ATTEMPT_DEADLINE]
        args.append(ATTEMPT_DEADLINE)

        def decided(reply: list[str]) -> Refused | Wait | Attempt:
            if reply[0] == "refused":
                refused = self._refusal(reply[1], float(reply[2]))
                if refused is not None:
                    return refused
                return self._wait([reply[1]], address, name)  # ran out meanwhile: ask again
            if reply[0] == "wait":
                return self._wait(list(reply[1:]), address, name)
            return attempt

        return self.link.run(lua.ADMIT, [], args).addCallback(decided)

    def check_stored(
        self, attempt: Attempt, address_until: float | None, name_until: float | None
    ) -> defer.Deferred[Refused | None]:
        refused = self._refusal(ADDRESS, address_until or 0.0) or self._refusal(NAME, name_until or 0.0)
        if refused is None:
            return defer.succeed(None)
        return self.abandon(attempt).addCallback(lambda _: refused)

    def _close(self, attempt: Attempt) -> str:
        if not attempt.open:
            raise RuntimeError("this attempt was settled already")
        attempt.open = False
        return attempt.ref

    def abandon(self, attempt: Attempt) -> defer.Deferred[None]:
        attempt_id = self._close(attempt)
        args: list[object] = [attempt.address, attempt.name, self._clock.seconds(), attempt_id]
        args.append(self.link.turns_channel)
        return self.link.run(lua.ABANDON, [], args).addCallback(lambda _: None)

    def settle(self, attempt: Attempt, password_ok: bool) -> defer.Deferred[Settlement]:
        attempt_id = self._close(attempt)
        now = self._clock.seconds()
        args: list[object] = [attempt.address, attempt.name, now, attempt_id, self.link.turns_channel]
        args += ["1" if password_ok else "0", self.max_attempts, self.block_time, FAILURE_MEMORY, STORING_TTL]

        def judged(reply: list[str]) -> Settlement:
            if password_ok:
                return Settlement(Verdict.SUCCESS)
            block, lock, until, failed = reply[0] == "1", reply[1] == "1", float(reply[2]), int(reply[3])
            if not (block or lock):
                return Settlement(Verdict.BAD_CREDENTIALS, tries_left=max(1, self.max_attempts - failed))
            blocks = []
            if block:
                blocks.append(Block(ADDRESS, attempt.address, until))
            if lock:
                blocks.append(Block(NAME, attempt.name, until))
            verdict = Verdict.BLOCKED if block else Verdict.LOCKED
            return Settlement(verdict, seconds_left(until, now), tuple(blocks), max(0, self.max_attempts - failed))

        return self.link.run(lua.SETTLE, [], args).addCallback(judged)

    def _written(self, block: Block, kept: bool) -> defer.Deferred[None]:
        args: list[object] = [block.kind, block.key, repr(block.until), self._clock.seconds()]
        args += ["1" if kept else "0", self.link.turns_channel]
        return self.link.run(lua.WRITTEN, [], args).addCallback(lambda _: None)

    def stored(self, block: Block) -> defer.Deferred[None]:
        return self._written(block, kept=False)

    def store_failed(self, block: Block) -> defer.Deferred[None]:
        return self._written(block, kept=True)


class RedisSignups:
    """Signup windows per address in Redis: ``per_hour`` in any sliding hour, across every process."""

    def __init__(self, link: RedisLink, per_hour: int) -> None:
        self.link = link
        self.per_hour = per_hour

    def reserve(self, address: str, now: float) -> defer.Deferred[tuple[str | None, float]]:
        slot = f"{now!r}:{secrets.token_hex(6)}"

        def reserved(reply: list[str]) -> tuple[str | None, float]:
            return (slot, 0.0) if reply[0] == "1" else (None, min(HOUR, float(reply[1])))

        return self.link.run(lua.SIGNUP_RESERVE, [], [address, now, self.per_hour, slot]).addCallback(reserved)

    def release(self, address: str, slot: str) -> defer.Deferred[None]:
        d = self.link.pool.zrem(lua.SIGNUPS + address, slot)
        return d.addCallback(lambda _: None)
