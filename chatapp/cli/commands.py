"""The ``/commands`` of both console modes: parsing (pure) and dispatch to a :class:`~chatapp.app.ChatClient`.

Nothing here touches a terminal: results become :mod:`chatapp.cli.events`
objects handed to an ``emit`` callable, and the front ends (script lines or
the interactive screen) render them.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from chatapp.app import ChatClient
from chatapp.client import BadCredentials, ChatClientError, ConnectionClosed, NotConnected, ServerError, State
from chatapp.events import (
    ChatEvent,
    ChatRequested,
    EventSink,
    GaveUp,
    MessageReceived,
    PeerJoined,
    ServerLost,
    TransferEnded,
    TransferProgress,
)
from chatapp.peer import Direction, HandshakeFailed, PeerError, Transfer, TransferState
from chatapp.wire import escape_for_terminal, valid_username

from .events import (
    ActiveChat,
    ChatClosed,
    ChatOpened,
    CommandFailed,
    ConsoleEvent,
    FileOfferSent,
    FingerprintShown,
    HelpLine,
    HelpShown,
    KeyTrusted,
    ListenState,
    LoggedInAgain,
    MessageSent,
    OfferTimedOut,
    PartialRow,
    PartialsCleaned,
    PartialsListed,
    PasswordChanged,
    Quitting,
    SessionReplaced,
    Shown,
    TransferAnswered,
    TransferCancelled,
    TransferResuming,
    TransferRow,
    TransfersListed,
    WhoListed,
    WhoRow,
)
from .rates import Rates

log = Logger()


class CommandError(Exception):
    """A command line that cannot be run: ``str()`` is a short hint for the user."""


@dataclass(frozen=True)
class Spec:
    name: str
    usage: str
    help: str
    min_args: int = 0
    max_args: int = 0
    rest: bool = False  # the last argument is the rest of the line (spaces kept)


SPECS: dict[str, Spec] = {
    s.name: s
    for s in [
        Spec("help", "/help [COMMAND]", "list the commands, or explain one", 0, 1),
        Spec("who", "/who", "who is online (and who accepts chats)"),
        Spec("chat", "/chat USER", "open a chat with USER and make it the active one", 1, 1),
        Spec("msg", "/msg USER TEXT", "send TEXT to USER (opens the chat if needed)", 2, 2, rest=True),
        Spec("to", "/to [USER]", "plain lines go to USER from now on (without USER: show who)", 0, 1),
        Spec("send", "/send USER PATH", "offer the file at PATH to USER", 2, 2, rest=True),
        Spec("accept", "/accept ID", "accept the file offer number ID", 1, 1),
        Spec("reject", "/reject ID", "decline the file offer number ID", 1, 1),
        Spec(
            "cancel",
            "/cancel ID [discard]",
            "stop transfer number ID (either direction); a receive keeps what came for a resume unless discard",
            1,
            2,
        ),
        Spec("transfers", "/transfers", "list the transfers with their numbers and progress"),
        Spec("partials", "/partials [clean]", "list the partly received files kept for a resume, or delete them", 0, 1),
        Spec("close", "/close USER", "close the chat with USER (BYE)", 1, 1),
        Spec("listen", "/listen [on|off]", "accept chats from others, or stop (without on/off: show)", 0, 1),
        Spec("passwd", "/passwd", "change your password"),
        Spec("fingerprint", "/fingerprint [USER]", "show your key's fingerprint, or the one remembered for USER", 0, 1),
        Spec("trust", "/trust USER", "accept the changed key of USER (compare it with them first)", 1, 1),
        Spec("reconnect", "/reconnect", "log in to the server again (after logging in elsewhere cut this session)"),
        Spec(
            "quit",
            "/quit",
            "BYE to every chat, log out and exit; transfers under way stop (interactive: asks first if any run)",
        ),
        # -- the interactive console's windows (issue 13) --
        Spec("win", "/win [N|USER]", "show window N (also Alt-1..9) or the chat with USER; alone: list them", 0, 1),
        Spec("lastlog", "/lastlog TEXT", "list the lines shown so far that contain TEXT", 1, 1, rest=True),
    ]
}
ALIASES = {"connect": "chat", "exit": "quit", "q": "quit", "w": "who", "m": "msg", "?": "help"}
NAMES = sorted([*SPECS, *ALIASES])


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...] = ()


def parse_command(line: str, active: str | None = None) -> Command | None:
    """The command on ``line``; None for an empty line.  Raises :class:`CommandError` with a hint.

    A line not starting with ``/`` is a message to the ``active`` chat; ``//text`` sends ``/text``.
    """
    stripped = line.strip()
    if not stripped:
        return None
    if not stripped.startswith("/") or stripped.startswith("//"):
        text = line[1:] if stripped.startswith("//") else line
        if active is None:
            raise CommandError("no active chat: /chat USER or /to USER first, or /msg USER TEXT (/help)")
        return Command("msg", (active, text.strip("\r\n")))
    word, _, rest = stripped[1:].partition(" ")
    name = ALIASES.get(word.lower(), word.lower())
    spec = SPECS.get(name)
    if spec is None:
        raise CommandError(f"unknown command /{escape_for_terminal(word)}; /help lists them")
    rest = rest.lstrip(" ")
    if spec.rest:
        head = rest.split(None, spec.max_args - 1)
        args = tuple(head)
    else:
        args = tuple(rest.split())
    if not spec.min_args <= len(args) <= spec.max_args:
        raise CommandError(f"usage: {spec.usage}")
    if name in ("chat", "msg", "to", "send", "close") and args and not valid_username(args[0]):
        raise CommandError(f"not a user name: {escape_for_terminal(args[0])}")
    if name in ("accept", "reject", "cancel"):
        number = args[0].lstrip("#")
        if not number.isascii() or not number.isdigit():
            raise CommandError(f"usage: {spec.usage} (ID is the number shown by /transfers)")
        if name == "cancel" and len(args) == 2 and args[1].lower() != "discard":
            raise CommandError(f"usage: {spec.usage}")
        args = (str(int(number)), *(a.lower() for a in args[1:]))
    if name == "partials" and args and args[0].lower() != "clean":
        raise CommandError(f"usage: {spec.usage}")
    if name == "listen" and args and args[0].lower() not in ("on", "off"):
        raise CommandError(f"usage: {spec.usage}")
    return Command(name, args)


def help_lines(topic: str | None = None) -> list[str]:
    if topic is not None:
        name = ALIASES.get(topic.lstrip("/").lower(), topic.lstrip("/").lower())
        spec = SPECS.get(name)
        if spec is None:
            raise CommandError(f"no command /{escape_for_terminal(topic.lstrip('/'))}")
        return [f"{spec.usage}  {spec.help}"]
    width = max(len(s.usage) for s in SPECS.values())
    lines = [f"{s.usage.ljust(width)}  {s.help}" for s in SPECS.values()]
    lines.append("A line without / goes to the active chat (/chat or /to); //text sends /text.")
    return lines


def complete(line: str, users: list[str]) -> list[str]:
    """Candidates that would replace the last word of ``line`` (commands first word, user names after)."""
    words = line.split(" ")
    last = words[-1]
    if len(words) == 1:
        if not last.startswith("/"):
            return sorted(u for u in users if u.lower().startswith(last.lower()) and last)
        return [f"/{n}" for n in NAMES if n.startswith(last[1:].lower())]
    command = ALIASES.get(words[0][1:].lower(), words[0][1:].lower()) if words[0].startswith("/") else ""
    if len(words) == 2 and command in ("chat", "msg", "to", "send", "close"):
        return sorted(u for u in users if u.lower().startswith(last.lower()))
    if len(words) == 2 and command == "help":
        return [n for n in NAMES if n.startswith(last.lstrip("/").lower())]
    if len(words) == 2 and command == "listen":
        return [w for w in ("on", "off") if w.startswith(last.lower())]
    return []


class Conversations:
    """Who the console talks with: the active chat (where plain lines go) and the names seen, for Tab."""

    def __init__(self) -> None:
        self.active: str | None = None
        self.known_users: set[str] = set()

    def heard(self, event: ChatEvent) -> None:
        """Learn from a library event: whoever came to us is a name to complete; the first writer becomes active."""
        match event:
            case ChatRequested(user):
                self.known_users.add(user)
            case PeerJoined(session) if session.peer_name:
                self.known_users.add(session.peer_name)
            case MessageReceived(session) if session.peer_name:
                self.known_users.add(session.peer_name)
                if self.active is None:
                    self.active = session.peer_name


REPLACED_TEXT = "you logged in elsewhere: the server closed this session; /reconnect logs in here again"


def replaced(event: ChatEvent) -> bool:
    """Whether ``event`` says the server let us go because this user logged in elsewhere."""
    return isinstance(event, GaveUp) and isinstance(event.error, ConnectionClosed) and event.error.bye == "replaced"


def _lost_to_replacement(event: ChatEvent) -> bool:
    """The ServerLost that comes just before a ``replaced`` GaveUp: the one line for both is SessionReplaced."""
    return isinstance(event, ServerLost) and isinstance(event.error, ConnectionClosed) and event.error.bye == "replaced"


def console_sink(chats: Conversations, show: Callable[[Shown], None], rates: Rates | None = None) -> EventSink:
    """The ``emit`` a console gives its :class:`ChatClient`: ``chats`` learns from each event, ``show`` renders it.

    With ``rates``, progress also feeds the recent-rate windows, a resumed
    transfer is announced at its first progress, and each ended transfer is
    followed by its summary.
    """

    def hear(event: ChatEvent) -> None:
        chats.heard(event)
        if isinstance(event, TransferEnded) and id(event.transfer) in _TIMING_OUT:
            event.transfer.reason = TIMED_OUT  # the wire said "cancelled" (a fixed list); we know better
        if rates is not None and isinstance(event, TransferProgress):
            if rates.progress(event.transfer) and event.transfer.offset > 0:
                show(TransferResuming(event.transfer))
        if replaced(event):
            show(SessionReplaced(REPLACED_TEXT))  # one line says it all (not lost, gave up, then this)
            return
        if not _lost_to_replacement(event):
            show(event)
        if rates is not None and isinstance(event, TransferEnded):
            summary = rates.ended(event.transfer)
            if summary is not None:
                show(summary)

    return hear


# the local reason of an offer that nobody answered in time (on the wire: CANCEL <id> cancelled)
TIMED_OUT = "timed-out"
# the offers (by id()) being cancelled for their timeout right now: their TransferEnded, emitted
# while the cancel runs, is relabelled by console_sink (one entry, only while the cancel runs)
_TIMING_OUT: set[int] = set()


class OfferTimers:
    """Cancels our offers nobody answered within ``seconds`` (``--offer-timeout``), saying so.

    One timer per offer we made and that is not answered yet (bounded by the
    offers the peers let us have open); :meth:`stop` cancels those left.
    """

    def __init__(
        self, client: ChatClient, clock: IReactorTime, seconds: float | None, emit: Callable[[ConsoleEvent], None]
    ) -> None:
        self.client = client
        self.clock = clock
        self.seconds = seconds
        self.emit = emit
        self._timers: dict[int, IDelayedCall] = {}

    def watch(self, transfer: Transfer) -> None:
        if self.seconds is None or transfer.handle in self._timers:
            return
        self._timers[transfer.handle] = self.clock.callLater(self.seconds, self._due, transfer)

    def _due(self, transfer: Transfer) -> None:
        self._timers.pop(transfer.handle, None)
        if transfer.state is not TransferState.OFFERED:
            return  # answered meanwhile (or ended)
        self.emit(OfferTimedOut(transfer, self.seconds or 0.0))  # first: the FAILED line that follows is its effect
        _TIMING_OUT.add(id(transfer))
        try:
            self.client.cancel(transfer.handle)
        except ChatClientError as e:  # the chat closed meanwhile: the offer is gone with it
            log.info("offer {handle} timed out, but: {error}", handle=transfer.handle, error=str(e))
        finally:
            _TIMING_OUT.discard(id(transfer))
        if transfer.state.final:
            transfer.reason = TIMED_OUT

    def stop(self) -> None:
        timers, self._timers = self._timers, {}
        for call in timers.values():
            if call.active():
                call.cancel()


class Dispatcher:
    """Runs parsed commands against a :class:`ChatClient`, telling the outcome through ``emit``.

    ``new_password`` supplies (current password, new password) for ``/passwd``
    (on a terminal the current one is asked once and the new one twice; in
    script mode they come from the environment); it raises
    :class:`CommandError` when there are none.
    """

    def __init__(
        self,
        client: ChatClient,
        chats: Conversations,
        emit: Callable[[ConsoleEvent], None],
        new_password: Callable[[], Awaitable[tuple[str, str]]] | None = None,
        login_password: str | None = None,
    ) -> None:
        self.client = client
        self.login_password = login_password  # kept in memory for /reconnect, for this run only
        self.offer_timers: OfferTimers | None = None
        self.chats = chats
        self.emit = emit
        self.new_password = new_password
        self.quitting = False
        self.confirm_quit = False  # interactive: a /quit with transfers running asks to be repeated
        self.views: Views | None = None  # interactive: the windows (/win, /lastlog)
        self._quit_warned = False

    def users(self) -> list[str]:
        """Names to complete: the last /who, open chats, people who came to us."""
        return sorted(self.chats.known_users | {s.peer_name for s in self.client.sessions() if s.peer_name})

    async def run_line(self, line: str) -> bool:
        """Parse and run one line; False if it failed (the reason was emitted as ``ERROR``)."""
        try:
            command = parse_command(line, self.chats.active)
        except CommandError as e:
            self.emit(CommandFailed(str(e)))
            return False
        if command is None:
            return True
        return await self.run(command)

    async def run(self, command: Command) -> bool:
        """Run one command; False if it failed (``ERROR /cmd [arg]: why`` was emitted)."""
        what = f"/{command.name}" + (f" {command.args[0]}" if command.args and command.name != "msg" else "")
        if command.name == "msg":
            what = f"/msg {command.args[0]}"
        try:
            await getattr(self, f"do_{command.name}")(*command.args)
        except (CommandError, ChatClientError, PeerError) as e:
            text = _text_of(e, codes=self.views is None)
            # only when we refused their changed key (expected: the one we remember); when they refused ours,
            # the error itself says what they can do
            if isinstance(e, HandshakeFailed) and e.reason == "key-changed" and e.expected and command.args:
                text += f"; compare the new key with {command.args[0]}, and if it is theirs: /trust {command.args[0]}"
            elif isinstance(e, NotConnected) and self._can_reconnect():
                text += "; /reconnect logs in again"
            if command.name == "msg" and self.views is not None:
                text += "; not sent (Up brings the line back)"  # a plain line lands here too: say it is not lost
            self.emit(CommandFailed(f"{what}: {text}"))
            return False
        except OSError as e:
            where = f" {e.filename}" if e.filename else ""
            self.emit(CommandFailed(f"{what}: cannot read{where}: {e.strerror or e}"))
            return False
        except Exception as e:
            log.failure("/{name} failed", name=command.name)
            self.emit(CommandFailed(f"{what}: failed: {type(e).__name__}: {e}"))
            return False
        return True

    # -- the commands ---------------------------------------------------------------

    async def do_help(self, topic: str | None = None) -> None:
        for line in help_lines(topic):
            self.emit(HelpLine(line))
        self.emit(HelpShown())

    async def do_who(self) -> None:
        entries = await self.client.who()
        me = (self.client.user or "").lower()
        self.chats.known_users = {e.name for e in entries if e.name.lower() != me}
        for entry in sorted(entries, key=lambda e: e.name.lower()):
            self.emit(WhoRow(entry.name, entry.state))
        self.emit(WhoListed(len(entries)))

    async def do_chat(self, user: str) -> None:
        session = await self.client.chat(user)
        name = session.peer_name or user
        self.chats.active = name
        self.chats.known_users.add(name)
        self.emit(ChatOpened(name))

    async def do_msg(self, user: str, text: str) -> None:
        session = await self.client.send_message(user, text)
        name = session.peer_name or user
        if self.chats.active is None:
            self.chats.active = name
        self.chats.known_users.add(name)
        self.emit(MessageSent(name, self.client.user or "me", text))

    async def do_to(self, user: str | None = None) -> None:
        if user is not None:
            session = self.client.session(user)
            self.chats.active = session.peer_name if session is not None and session.peer_name else user
        self.emit(ActiveChat(self.chats.active))

    async def do_send(self, user: str, path: str) -> None:
        path = os.path.expanduser(path.strip())
        if os.path.isdir(path):
            raise CommandError(f"{escape_for_terminal(path)} is a directory: directories are not supported yet")
        if not os.path.isfile(path):
            raise CommandError(f"no such file: {escape_for_terminal(path)}")
        handle = await self.client.send_file(user, path)
        t = self.client.transfer(handle)
        self.emit(FileOfferSent(handle, t.peer or user, t.size, t.name))
        if self.offer_timers is not None:
            self.offer_timers.watch(t)

    async def do_accept(self, number: str) -> None:
        self._answer("accept", int(number))

    async def do_reject(self, number: str) -> None:
        self._answer("reject", int(number))

    async def do_cancel(self, number: str, discard: str | None = None) -> None:
        handle = int(number)
        transfer = self.client.transfer(handle)
        if transfer.finished:
            raise CommandError(f"transfer {handle} has ended already ({transfer.state.value})")
        # every byte received is kept: what still waited for the disk is written before the file is closed
        kept = self.client.cancel(handle, discard=discard is not None)
        self.emit(TransferCancelled(handle, kept, discard is not None and transfer.direction is Direction.RECEIVE))

    async def do_partials(self, clean: str | None = None) -> None:
        if clean is not None:
            self.emit(PartialsCleaned(self.client.discard_partials()))
            return
        kept = self.client.partials()
        for p in kept:
            self.emit(PartialRow(p.peer, p.name, p.kept, p.size, p.modified))
        self.emit(PartialsListed(len(kept)))

    async def do_fingerprint(self, user: str | None = None) -> None:
        self.emit(FingerprintShown(user, self.client.fingerprint(user)))

    async def do_trust(self, user: str) -> None:
        changed = self.client.changed_key(user)
        if changed is None:
            raise CommandError(f"no changed key of {user} was refused in this run: nothing to accept")
        remembered, offered = changed
        await self.client.trust(user)
        self.emit(KeyTrusted(user, remembered, offered))

    def _can_reconnect(self) -> bool:
        """The server link is down for good (given up, or replaced by a login elsewhere): only /reconnect helps."""
        return self.login_password is not None and self.client.server.state is State.IDLE

    async def do_reconnect(self) -> None:
        if self.login_password is None:
            raise CommandError("cannot log in again here")
        name, listening = await self.client.relogin(self.login_password)
        self.emit(LoggedInAgain(name, listening))

    def _answer(self, verb: Literal["accept", "reject"], handle: int) -> None:
        transfer = self.client.transfer(handle)
        if transfer.finished:
            raise CommandError(f"transfer {handle} has ended already ({transfer.state.value})")
        if verb in ("accept", "reject") and not (
            transfer.direction is Direction.RECEIVE and transfer.state is TransferState.OFFERED
        ):
            raise CommandError(f"transfer {handle} is not an offer waiting for you (/cancel {handle} stops it)")
        answer = {"accept": self.client.accept, "reject": self.client.reject}[verb]
        answer(handle)
        self.emit(TransferAnswered(verb, handle))

    async def do_transfers(self) -> None:
        listed = self.client.transfers()
        for t in listed:
            self.emit(TransferRow(t))
        self.emit(TransfersListed(len(listed)))

    async def do_close(self, user: str) -> None:
        session = self.client.session(user)
        name = session.peer_name if session is not None and session.peer_name else user
        self.client.close_chat(user)
        # The active chat stays: a plain line to this person opens the chat again, as it does on the
        # other side (whose chat we closed), rather than being refused and lost.
        self.emit(ChatClosed(name))

    async def do_listen(self, switch: str | None = None) -> None:
        if switch is None:
            # what the server publishes (as at login), not the local socket's 0.0.0.0
            self.emit(ListenState(self.client.published if self.client.listening else None))
            return
        self.emit(ListenState(await self.client.set_listening(switch.lower() == "on")))

    async def do_passwd(self) -> None:
        if self.new_password is None:
            raise CommandError("cannot ask for a new password here")
        current, new = await self.new_password()
        try:
            await self.client.passwd(current, new)
        except BadCredentials as e:  # only the current password can be wrong here, and it counts like a login
            text = "wrong current password; nothing changed"
            if e.tries_left is not None:
                more = "password blocks" if e.tries_left == 1 else "passwords block"
                text += f" ({e.tries_left} more wrong {more} this address)"
            raise CommandError(text) from None
        if self.login_password is not None:
            self.login_password = new
        self.emit(PasswordChanged())

    async def do_quit(self) -> None:
        running = [t for t in self.client.open_transfers() if t.state is not TransferState.OFFERED]
        if self.confirm_quit and running and not self._quit_warned:
            self._quit_warned = True
            raise CommandError(f"{len(running)} transfer(s) still running; /quit again to stop them")
        self.quitting = True
        self.emit(Quitting())

    # -- the interactive console's windows (issue 13) --

    async def do_win(self, target: str | None = None) -> None:
        if self.views is None:
            raise CommandError("windows exist only in interactive mode")
        if target is None:
            self.views.list_windows()
        else:
            self.views.switch_window(target)

    async def do_lastlog(self, text: str) -> None:
        if self.views is None:
            raise CommandError("/lastlog exists only in interactive mode")
        self.views.lastlog(text)


def _text_of(error: Exception, codes: bool = True) -> str:
    """The error in words; ``codes=False`` (a person at the screen) leaves out a server's code and reason
    (``(409 not-online)``), which script mode keeps for programs."""
    if not codes and isinstance(error, ServerError) and error.text and type(error).__str__ is ServerError.__str__:
        return escape_for_terminal(error.text)
    text = str(error)
    if not text:
        text = (type(error).__doc__ or type(error).__name__).strip().splitlines()[0]
    return text


# -- the interactive console's windows (issue 13) -----------------------------------------


class Views(Protocol):
    """What /win and /lastlog need of the interactive console (chatapp.cli.terminal)."""

    def switch_window(self, target: str) -> None:
        """Show window ``target`` (a number or a user); raises CommandError if there is none."""

    def lastlog(self, text: str) -> None:
        """Show the lines containing ``text``."""

    def list_windows(self) -> None:
        """Show the windows: number, name, unread lines, which one is shown."""
