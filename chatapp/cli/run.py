"""What every mode shares: one run of the program, logging in, stopping cleanly on a signal, saying READY."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from chatapp.app import ChatClient
from chatapp.events import EventSink
from chatapp.peer.factory import STOP_TIMEOUT as PEER_STOP_TIMEOUT

from .errors import Outcome
from .events import IdentityMade, Ready
from .login import PasswordSource, login, make_client
from .options import Settings
from .trust import TerminalTrust

log = Logger()

# Seconds for BYE to the peers and QUIT to the server before the program goes anyway: longer than the
# peer factory's own wait for peers that do not answer (it then cuts them and stops its disk threads),
# so that its stop ends before this one gives up.
STOP_TIMEOUT = PEER_STOP_TIMEOUT + 3.0


@dataclass
class Run:
    """One run of the program: what main() decided, and the exit code a signal should leave."""

    reactor: Any
    settings: Settings
    user: str
    password: str  # "" until known when it is asked after connecting (ask_password)
    signup: bool
    outcome: Outcome = field(default_factory=Outcome)  # a signal may set its exit code
    client: ChatClient | None = None
    ask_password: PasswordSource | None = None  # asks the password once the server greeted us
    say: Callable[[str], None] | None = None  # with ask_password: a wrong password is said, then asked again
    trust_question: TerminalTrust | None = None  # asks whether to trust an unknown server (on a terminal)
    started: bool = False  # logged in: from now on the runner says what a signal means
    _stopping: defer.Deferred[None] | None = None

    async def start(self, emit: EventSink) -> ChatClient:
        """Log in (or sign up) with events going to ``emit``; failures are :class:`~chatapp.cli.errors.Fatal`."""
        self.trust_question = TerminalTrust(self.reactor)
        client = make_client(self.reactor, self.settings, emit, self.trust_question)
        self.client = client
        password: str | PasswordSource = self.password
        if not self.password and self.ask_password is not None:
            password = self.ask_password
        _, self.password = await login(client, self.settings, self.user, password, self.signup, self.say)
        self.started = True
        return client

    def stop_on_shutdown(self, code_on_signal: int | None = None, message: str | None = None) -> None:
        """Stop the client cleanly (BYE to peers, QUIT to the server) when the reactor stops (SIGINT, SIGTERM)."""

        def before_shutdown() -> defer.Deferred[None]:
            if code_on_signal is not None and self._stopping is None:
                self.outcome.code = code_on_signal
                self.outcome.message = message
            return self.stop()

        self.reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)

    def stop(self) -> defer.Deferred[None]:
        """Stop the client once; fires when it is stopped (or gave up after STOP_TIMEOUT), never with an error."""
        if self._stopping is None:
            self._stopping = defer.ensureDeferred(self._stop())
        d: defer.Deferred[None] = defer.Deferred()

        def tell(result: object) -> object:
            d.callback(None)
            return result

        self._stopping.addBoth(tell)
        return d

    async def _stop(self) -> None:
        if self.client is None:
            return
        try:
            # fires once every peer connection is closed (BYE sent) and the server has our QUIT
            await self.client.stop().addTimeout(STOP_TIMEOUT, self.reactor)
        except Exception:
            log.failure("stopping the client")


def ready_event(client: ChatClient) -> Ready:
    """``READY <user> listening <host> <port>`` or ``READY <user> online``: what the login published."""
    return Ready(client.user or "?", client.published if client.listening else None)


def login_news(client: ChatClient) -> list[Ready | IdentityMade]:
    """What a mode says once logged in: READY, then whether this login made a new identity key.

    A person should know their key is new: contacts who chatted with them before, from another
    installation, will be told it changed.
    """
    news: list[Ready | IdentityMade] = [ready_event(client)]
    made, identity = client.identity_made, client.identity
    if made is not None and identity is not None:
        news.append(IdentityMade(client.user or "?", identity.fingerprint, str(made), client.signed_up))
    return news
