"""Command parsing (pure) and dispatch against real ChatClients and the in-process server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from chat_harness import PASSWORD, start_client
from live_server import start_server
from twisted.internet import defer, reactor

from chatapp.app import ChatClient
from chatapp.cli.commands import (
    Command,
    CommandError,
    Conversations,
    Dispatcher,
    complete,
    console_sink,
    help_lines,
    parse_command,
)
from chatapp.cli.events import CommandFailed, ListenState, LoggedInAgain, PasswordChanged, SessionReplaced, Shown
from chatapp.cli.render import script_line
from chatapp.cli.script import ScriptOutput, ScriptRunner, env_new_password
from chatapp.events import FileOffered, KeyRefused, MessageReceived, PeerJoined, PeerLeft, TransferEnded


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/who", Command("who")),
        ("  /WHO  ", Command("who")),
        ("/chat bob", Command("chat", ("bob",))),
        ("/connect bob", Command("chat", ("bob",))),
        ("/msg bob hello  there ", Command("msg", ("bob", "hello  there"))),
        ("/send bob ~/my file.txt", Command("send", ("bob", "~/my file.txt"))),
        ("/accept 3", Command("accept", ("3",))),
        ("/accept #3", Command("accept", ("3",))),
        ("/reject 12", Command("reject", ("12",))),
        ("/cancel 1", Command("cancel", ("1",))),
        ("/transfers", Command("transfers")),
        ("/close bob", Command("close", ("bob",))),
        ("/listen off", Command("listen", ("off",))),
        ("/listen", Command("listen")),
        ("/to bob", Command("to", ("bob",))),
        ("/passwd", Command("passwd")),
        ("/quit", Command("quit")),
        ("/help msg", Command("help", ("msg",))),
    ],
)
def test_parse(line: str, command: Command) -> None:
    assert parse_command(line) == command


def test_plain_lines_go_to_the_active_chat() -> None:
    assert parse_command("hi there", active="bob") == Command("msg", ("bob", "hi there"))
    assert parse_command("//not a command", active="bob") == Command("msg", ("bob", "/not a command"))
    assert parse_command("   ") is None
    with pytest.raises(CommandError, match="no active chat"):
        parse_command("hi there")


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("/frob", "unknown command /frob; /help"),
        ("/frob\x1b[2J", "unknown command /frob\\x1b[2J"),
        ("/msg bob", "usage: /msg USER TEXT"),
        ("/chat", "usage: /chat USER"),
        ("/chat a b", "usage: /chat USER"),
        ("/accept x", "ID is the number"),
        ("/listen maybe", "usage: /listen"),
        ("/chat -bob", "not a user name"),
        ("/who now", "usage: /who"),
    ],
)
def test_bad_commands_get_a_hint(line: str, hint: str) -> None:
    with pytest.raises(CommandError) as e:
        parse_command(line)
    assert hint in str(e.value)


def test_help_and_completion() -> None:
    text = "\n".join(help_lines())
    for name in ("/who", "/chat USER", "/msg USER TEXT", "/send USER PATH", "/accept ID", "/passwd", "/quit"):
        assert name in text
    assert help_lines("/msg") == ["/msg USER TEXT  send TEXT to USER (opens the chat if needed)"]
    users = ["bob", "bea", "carol"]
    assert complete("/ch", users) == ["/chat"]
    assert complete("/c", users) == ["/cancel", "/chat", "/close", "/connect"]
    assert complete("/msg b", users) == ["bea", "bob"]
    assert complete("/msg bob hel", users) == []
    assert complete("/listen o", users) == ["on", "off"]
    assert complete("ca", users) == ["carol"]


# -- against a real server ---------------------------------------------------------------


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clients: list[ChatClient] = []
        self.port = 0

    async def console(self, name: str, signup: bool = True, **options: object) -> tuple[Dispatcher, list[Shown]]:
        events: list[Shown] = []
        chats = Conversations()
        sink = console_sink(chats, events.append)
        client, _ = await start_client(self.port, name, self.tmp_path, signup=signup, forward=sink, **options)
        self.clients.append(client)
        return Dispatcher(client, chats, events.append, _password, login_password=PASSWORD), events


async def _password() -> tuple[str, str]:
    return PASSWORD, "a new password"


@pytest_twisted.async_yield_fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    service, w.port = await start_server(str(tmp_path / "server.sqlite3"))
    yield w
    for c in w.clients:
        await c.stop()
    await service.stopService()


async def until(events: list[Shown], check: object, timeout: float = 10) -> None:
    for _ in range(int(timeout / 0.01)):
        if any(check(e) for e in events):  # type: ignore[operator]
            return
        await _tick()
    raise AssertionError(f"not seen; events: {events}")


def _tick() -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d


@pytest_twisted.ensureDeferred
async def test_dispatch_chat_files_and_errors(world: World, tmp_path: Path) -> None:
    alice, a = await world.console("alice")
    bob, b = await world.console("bob")
    assert await alice.run_line("/who")
    assert [script_line(e) for e in a] == ["WHO alice listening", "WHO bob listening", "OK who 2"]
    assert alice.users() == ["bob"]
    assert await alice.run_line("/msg bob hi \x1b]0;x\x07")
    await until(b, lambda e: isinstance(e, MessageReceived))
    assert "MSG alice hi \\x1b]0;x\\x07" in [script_line(e) for e in b]
    assert bob.chats.active == "alice"  # whoever writes first becomes the active chat
    assert await bob.run_line("hello")
    await until(a, lambda e: isinstance(e, MessageReceived))
    (tmp_path / "f.txt").write_bytes(b"data")
    assert await alice.run_line(f"/send bob {tmp_path / 'f.txt'}")
    await until(b, lambda e: isinstance(e, FileOffered))
    offer = next(e for e in b if isinstance(e, FileOffered))
    handle = offer.transfer.handle
    assert script_line(offer) == f"OFFER {handle} alice 4 f.txt"
    assert await bob.run_line(f"/accept {handle}")
    await until(b, lambda e: isinstance(e, TransferEnded))
    assert (tmp_path / "bob" / "downloads" / "f.txt").read_bytes() == b"data"
    assert not await bob.run_line(f"/accept {handle}")
    assert isinstance(b[-1], CommandFailed) and "ended already" in b[-1].text
    assert not await alice.run_line("/send bob /no/such/file")
    assert a[-1] == CommandFailed("/send bob: no such file: /no/such/file")
    assert await bob.run_line("/transfers")
    assert script_line(b[-2]).startswith(f"TRANSFER {handle} receive alice done 4 4 f.txt")
    assert await alice.run_line("/listen")
    published = alice.client.published
    assert published is not None and published[0] == "127.0.0.1" and a[-1] == ListenState(published)
    assert await alice.run_line("/listen off")
    assert a[-1] == ListenState(None)
    assert await alice.run_line("/passwd")
    assert a[-1] == PasswordChanged()
    assert await alice.run_line("/close bob")
    await until(b, lambda e: isinstance(e, PeerLeft))
    assert not await alice.run_line("/close bob")
    # a plain line after /close goes to bob, opening the chat again (as on bob's side), not refused and lost
    assert await alice.run_line("still there?")
    await until(b, lambda e: isinstance(e, MessageReceived) and e.text == "still there?")
    assert await alice.run_line("/quit") and alice.quitting


@pytest_twisted.ensureDeferred
async def test_script_runner_runs_lines_strictly_in_order(world: World) -> None:
    alice, a = await world.console("alice")
    _bob, b = await world.console("bob")
    lines: list[str] = []
    runner = ScriptRunner(alice.client, alice)
    alice.emit = ScriptOutput(lines.append, reactor).emit
    for line in ["/msg bob one", "two", "/frob", "three", "/quit", "/msg bob never"]:
        runner.line(line)
    failures = await runner.run()
    assert failures == 1
    assert lines == ["OK msg bob alice one", "OK msg bob alice two", "ERROR unknown command /frob; /help lists them",
                     "OK msg bob alice three", "OK quit"]  # fmt: skip
    await until(b, lambda e: isinstance(e, MessageReceived) and e.text == "three")
    assert [e.text for e in b if isinstance(e, MessageReceived)] == ["one", "two", "three"]
    assert [type(e) for e in a] == [PeerJoined]  # the client's events still arrive; command results went to lines


@pytest_twisted.ensureDeferred
async def test_script_mode_passwd_takes_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATAPP_NEW_PASSWORD", raising=False)
    monkeypatch.delenv("CHATAPP_CURRENT_PASSWORD", raising=False)
    passwords = env_new_password("the login password")
    with pytest.raises(CommandError, match="CHATAPP_NEW_PASSWORD"):
        await passwords()
    monkeypatch.setenv("CHATAPP_NEW_PASSWORD", "brand new password")
    assert await passwords() == ("the login password", "brand new password")
    monkeypatch.setenv("CHATAPP_CURRENT_PASSWORD", "another current one")
    assert await passwords() == ("another current one", "brand new password")


@pytest_twisted.ensureDeferred
async def test_a_contact_with_a_new_key_each_side_is_told_what_to_do(world: World) -> None:
    """Bob makes a new identity key. Alice, who remembers his old one, is refused a chat with the hint to
    /trust him; bob, whose chat alice's client refused without a word, hears that it most likely refuses
    his key; after /trust the chat opens."""
    alice, a = await world.console("alice")
    bob_client, _ = await start_client(world.port, "bob", world.tmp_path)
    world.clients.append(bob_client)
    assert await alice.run_line("/msg bob hello")  # alice remembers bob's first key
    assert bob_client.identity is not None and bob_client.server.identity_made is not None
    await bob_client.stop()
    bob_client.server.identity_made.unlink()  # a new installation: a new key at the next login
    bob, b = await world.console("bob", signup=False)
    assert not await alice.run_line("/msg bob are you there?")
    failed = a[-1]
    assert isinstance(failed, CommandFailed) and failed.text.startswith("/msg bob: the contact's key changed")
    assert failed.text.endswith("; compare the new key with bob, and if it is theirs: /trust bob")
    await until(b, lambda e: isinstance(e, KeyRefused) and e.user == "alice")
    # bob asks himself: alice refuses his key; only alice can accept it, so bob is not told to /trust her
    assert not await bob.run_line("/chat alice")
    refused = b[-1]
    assert isinstance(refused, CommandFailed) and refused.text.startswith("/chat alice: the contact refused the chat")
    assert "/trust alice" not in refused.text
    assert await alice.run_line("/trust bob")
    assert await alice.run_line("/msg bob now?")
    await until(b, lambda e: isinstance(e, MessageReceived) and e.text == "now?")


@pytest_twisted.ensureDeferred
async def test_a_command_after_a_login_elsewhere_says_how_to_log_in_here_again(world: World) -> None:
    here, shown = await world.console("alice")
    assert await here.run_line("/who")
    await world.console("alice", signup=False, listen=None)  # the same account, from another terminal
    await until(shown, lambda e: isinstance(e, SessionReplaced))
    assert not await here.run_line("/who")
    assert shown[-1] == CommandFailed("/who: not connected to the chat server; /reconnect logs in again")
    assert await here.run_line("/reconnect")
    assert isinstance(shown[-1], LoggedInAgain)
    assert await here.run_line("/who")


@pytest_twisted.ensureDeferred
async def test_passwd_with_a_wrong_current_password_says_so_in_words(world: World) -> None:
    alice, shown = await world.console("alice")

    async def wrong_current() -> tuple[str, str]:
        return "not the password", "a new password"

    alice.new_password = wrong_current
    assert not await alice.run_line("/passwd")
    assert shown[-1] == CommandFailed(
        "/passwd: wrong current password; nothing changed (2 more wrong passwords block this address)"
    )


@pytest_twisted.ensureDeferred
async def test_a_person_at_the_screen_gets_the_server_s_words_a_script_gets_its_code_too(world: World) -> None:
    from types import SimpleNamespace

    alice, shown = await world.console("alice")
    assert not await alice.run_line("/msg nobody hello")
    assert shown[-1] == CommandFailed("/msg nobody: there is no such user (404 no-such-user)")  # script mode
    alice.views = SimpleNamespace()  # the interactive console's windows
    assert not await alice.run_line("/msg nobody hello")
    assert shown[-1] == CommandFailed("/msg nobody: there is no such user; not sent (Up brings the line back)")
