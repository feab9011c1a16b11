"""Every row of PROTOCOL.md section 2 on a StringTransport with a Clock.

Each test runs twice: input in one segment, and one byte at a time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from conftest import make_factory
from deferreds import result_of
from logged_errors import LoggedErrors
from server_harness import PASSWORD, Conn, HeldRunner, key_of
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from chatapp.server.factory import ServerConfig, ServerFactory
from chatapp.server.passwords import PasswordHasher
from chatapp.server.registry import MemoryRegistry
from chatapp.server.store import ADDRESS, NAME, SQLiteStore, StoreError

Connect = Callable[..., Conn]


@pytest.fixture(params=["whole", "bytes"])
def connect(request: pytest.FixtureRequest, server_factory: ServerFactory) -> Connect:
    def _connect(host: str = "127.0.0.1", factory: ServerFactory | None = None) -> Conn:
        conn = Conn(factory or server_factory, host, split=request.param)
        assert conn.lines() == ["* HELLO chatapp/2"]
        return conn

    return _connect


def signed_up(connect: Connect, name: str = "alice", host: str = "127.0.0.1") -> Conn:
    conn = connect(host)
    assert conn.ask(f"SIGNUP {name} {PASSWORD}", f"KEY {key_of(name)}") == [f"OK SIGNUP {name}", "OK KEY"]
    return conn


@pytest.fixture
def logged_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


# -- framing --------------------------------------------------------------


def test_greeting(connect: Connect) -> None:
    conn = connect()
    assert not conn.closing


def test_empty_lines_ignored_crlf_and_lf_and_case_insensitive_verbs(connect: Connect) -> None:
    conn = connect()
    conn.send(b"\r\n\nping\nPiNg\r\n")
    assert conn.lines() == ["OK PONG", "OK PONG"]


def test_unknown_command_before_and_after_login(connect: Connect) -> None:
    conn = connect()
    assert conn.ask("FROB x") == ["ERR 400 unknown-command unknown command"]
    conn.ask(f"SIGNUP alice {PASSWORD}")
    assert conn.ask("HELLO") == ["ERR 400 unknown-command unknown command"]
    assert not conn.closing


def test_bad_encoding_keeps_the_connection(connect: Connect) -> None:
    conn = connect()
    conn.send(b"PING \xff\r\nPING\r\n")
    assert conn.lines() == ["ERR 400 bad-encoding lines must be UTF-8", "OK PONG"]
    assert not conn.closing


def test_line_too_long_comes_after_earlier_replies_then_closes(connect: Connect) -> None:
    conn = connect()
    conn.send(b"PING\r\n" + b"x" * 4097 + b"\r\nPING\r\n")
    assert conn.lines() == ["OK PONG", "ERR 413 line-too-long lines are at most 4096 bytes"]
    assert conn.closing


def test_line_too_long_decided_without_lf(connect: Connect) -> None:
    conn = connect()
    conn.send(b"x" * 5000)
    assert conn.lines() == ["ERR 413 line-too-long lines are at most 4096 bytes"]
    assert conn.closing


def test_longest_line_is_accepted(connect: Connect) -> None:
    conn = connect()
    conn.send(b"PING" + b" " * 4092 + b"\r\n")
    assert conn.lines() == ["ERR 400 bad-arguments wrong number or form of fields"]
    assert not conn.closing


@pytest.mark.parametrize("line", ["PING x", "PING ", "QUIT now", "SIGNUP alice", "LOGIN", "LOGIN  alice password1"])
def test_bad_arguments(connect: Connect, line: str) -> None:
    conn = connect()
    assert conn.ask(line)[0].startswith("ERR 400 bad-arguments")


# -- connection life --------------------------------------------------------


@pytest.mark.parametrize("verb", ["PASSWD newpassword", "LISTEN 4000", "UNLISTEN", "WHO", "CONNECT bob", "VERIFY abc"])
def test_not_logged_in(connect: Connect, verb: str) -> None:
    conn = connect()
    assert conn.ask(verb) == ["ERR 403 not-logged-in log in first"]


def test_already_logged_in(connect: Connect) -> None:
    conn = signed_up(connect)
    assert conn.ask(f"SIGNUP bob {PASSWORD}", f"LOGIN alice {PASSWORD}") == [
        "ERR 409 already-logged-in this connection is logged in already",
        "ERR 409 already-logged-in this connection is logged in already",
    ]


def test_login_deadline_is_not_extended_by_traffic(connect: Connect, clock: Clock, tmp_path) -> None:
    conn = connect(factory=make_factory(str(tmp_path / "db"), clock))
    for _ in range(5):
        clock.advance(11)
        assert conn.ask("PING") == ["OK PONG"]
    clock.advance(5)
    assert conn.lines() == ["* BYE login-timeout"]
    assert conn.closing


def test_no_login_timeout_after_login(connect: Connect, clock: Clock) -> None:
    conn = signed_up(connect)
    clock.advance(61)
    assert conn.lines() == []
    assert not conn.closing


def test_idle_timeout_counts_any_byte(connect: Connect, clock: Clock) -> None:
    conn = signed_up(connect)
    clock.advance(299)
    conn.send(b"P")
    clock.advance(299)
    assert conn.lines() == []
    conn.send(b"ING\r\n")
    assert conn.lines() == ["OK PONG"]
    clock.advance(300)
    assert conn.lines() == ["* BYE idle-timeout"]
    assert conn.closing


def test_second_login_replaces_the_first_and_drops_its_listen(connect: Connect, server_factory: ServerFactory) -> None:
    first = signed_up(connect)
    first.ask("LISTEN 4000")
    second = connect()
    assert second.ask(f"LOGIN Alice {PASSWORD}") == ["OK LOGIN alice"]
    assert first.lines() == ["* BYE replaced"]
    assert first.closing
    first.send(b"WHO\r\n")
    assert first.lines() == []
    first.drop()
    assert second.ask("WHO") == ["+ USER alice online", "OK WHO 1"]


def test_quit(connect: Connect) -> None:
    conn = connect()
    assert conn.ask("QUIT", "PING") == ["OK QUIT"]
    assert conn.closing


def test_shutdown_says_bye_to_everyone(connect: Connect, server_factory: ServerFactory) -> None:
    a, b = signed_up(connect), connect()
    done = server_factory.shut_down()
    assert a.lines() == ["* BYE shutdown"] and b.lines() == ["* BYE shutdown"]
    assert a.closing and b.closing
    assert not done.called
    a.drop()
    b.drop()
    assert done.called


def test_too_many_connections_per_address(tmp_path, clock: Clock) -> None:
    factory = make_factory(str(tmp_path / "db"), clock, ServerConfig(max_connections_per_address=2))
    a, b = Conn(factory), Conn(factory)
    third = Conn(factory)
    assert third.lines() == ["* BYE too-many-connections"]
    assert third.closing
    third.drop()
    other = Conn(factory, host="127.0.0.2")
    assert other.lines() == ["* HELLO chatapp/2"]
    a.drop()
    fourth = Conn(factory)
    assert fourth.lines() == ["* HELLO chatapp/2"]
    assert b.lines() == ["* HELLO chatapp/2"]


# -- signup -------------------------------------------------------------------


def test_signup_names_are_case_insensitive_and_spelled_as_signed_up(connect: Connect) -> None:
    signed_up(connect, "Alice")
    conn = connect()
    assert conn.ask(f"SIGNUP ALICE {PASSWORD}") == ["ERR 409 user-exists that name is taken"]
    assert conn.ask(f"LOGIN aLiCe {PASSWORD}") == ["OK LOGIN Alice"]


@pytest.mark.parametrize("name", [".alice", "-x", "x" * 33, "al/ce", "ålice"])
def test_bad_username(connect: Connect, name: str) -> None:
    conn = connect()
    for verb in ("SIGNUP", "LOGIN"):
        reply = conn.ask(f"{verb} {name} {PASSWORD}")
        assert reply[0].startswith("ERR 400 bad-username")


@pytest.mark.parametrize("password", ["short", "x" * 73, "é" * 37])
def test_bad_password(connect: Connect, password: str) -> None:
    conn = connect()
    for verb in ("SIGNUP", "LOGIN"):
        assert conn.ask(f"{verb} alice {password}") == ["ERR 400 bad-password passwords are 8-72 bytes"]


def test_password_is_the_rest_of_the_line_spaces_included(connect: Connect) -> None:
    signed_up(connect, "bob").drop()
    conn = connect()
    conn.ask("SIGNUP carol  pass word ")
    c2 = connect()
    assert c2.ask("LOGIN carol pass word ") == ["ERR 401 bad-credentials 2 wrong user name or password"]
    assert c2.ask("LOGIN carol  pass word ") == ["OK LOGIN carol"]


def test_signups_per_hour(connect: Connect, clock: Clock) -> None:
    conn = connect()
    for i in range(5):
        assert conn.ask(f"SIGNUP user{i} {PASSWORD}") == [f"OK SIGNUP user{i}"]
        conn.drop()
        conn = connect()
        clock.advance(60)
    assert conn.ask(f"SIGNUP late {PASSWORD}") == [
        "ERR 429 slow-down 3300 too many new accounts from your address; try later"
    ]
    assert not conn.closing
    assert connect("127.0.0.9").ask(f"SIGNUP other {PASSWORD}") == ["OK SIGNUP other"]
    clock.advance(3300)
    assert conn.ask(f"SIGNUP late {PASSWORD}") == ["OK SIGNUP late"]


def test_failed_signup_does_not_use_a_slot(connect: Connect) -> None:
    signed_up(connect, "taken")
    conn = connect()
    for _ in range(6):
        assert conn.ask(f"SIGNUP taken {PASSWORD}")[0].startswith("ERR 409 user-exists")
    for i in range(4):
        conn.drop()
        conn = connect()
        assert conn.ask(f"SIGNUP u{i} {PASSWORD}") == [f"OK SIGNUP u{i}"]


# -- login and lockout ----------------------------------------------------------


def test_wrong_password_and_unknown_user_get_the_same_reply(connect: Connect) -> None:
    signed_up(connect).drop()
    assert connect("10.0.0.1").ask("LOGIN alice wrongpassword") == connect("10.0.0.2").ask(f"LOGIN nobody {PASSWORD}")


def test_third_failure_blocks_the_address_across_connections(connect: Connect, clock: Clock) -> None:
    signed_up(connect).drop()
    for tries_left in (2, 1):
        conn = connect()
        reply = conn.ask("LOGIN alice wrongpassword")
        assert reply == [f"ERR 401 bad-credentials {tries_left} wrong user name or password"]
        conn.drop()
    bystander = connect()
    conn = connect()
    assert conn.ask("LOGIN nobody wrongpassword", "PING") == [
        "ERR 429 blocked 300 too many failed logins from your address"
    ]
    assert conn.closing
    conn.drop()
    # new connections from the address are refused; an open one is refused at its next LOGIN
    later = Conn(conn.proto.factory, split=conn.split)
    assert later.lines() == ["* BLOCKED 300"] and later.closing
    later.drop()
    clock.advance(100)
    assert bystander.ask(f"LOGIN alice {PASSWORD}") == ["ERR 429 blocked 200 too many failed logins from your address"]
    assert bystander.closing
    bystander.drop()
    other = connect("127.0.0.2")
    assert other.ask(f"LOGIN alice {PASSWORD}") == ["OK LOGIN alice"]
    clock.advance(200)
    assert connect().ask(f"LOGIN bob {PASSWORD}") == ["ERR 401 bad-credentials 2 wrong user name or password"]


def test_an_ipv6_64_is_one_address_to_the_lockout_and_the_connection_cap(tmp_path, clock: Clock) -> None:
    """A host holds a whole /64: stepping to its next address must not start the count again."""
    factory = make_factory(str(tmp_path / "db"), clock, ServerConfig(max_connections_per_address=3))
    first = Conn(factory, host="2001:db8:1:2::10")
    first.lines()
    assert first.ask(f"SIGNUP alice {PASSWORD}", f"KEY {key_of('alice')}", "LISTEN 4000") == [
        "OK SIGNUP alice",
        "OK KEY",
        "OK LISTEN 2001:db8:1:2::10 4000",  # published as the address itself, not its /64
    ]
    held = [Conn(factory, host=f"2001:db8:1:2::{n}") for n in (11, 12)]
    refused = Conn(factory, host="2001:db8:1:2:ffff::1")
    assert refused.lines() == ["* BYE too-many-connections"] and refused.closing
    refused.drop()
    for conn in (first, *held):
        conn.drop()
    for n, tries_left in ((21, 2), (22, 1)):
        conn = Conn(factory, host=f"2001:db8:1:2::{n}")
        conn.lines()
        reply = conn.ask("LOGIN bob wrongpassword")
        assert reply == [f"ERR 401 bad-credentials {tries_left} wrong user name or password"]
        conn.drop()
    third = Conn(factory, host="2001:db8:1:2::23")
    third.lines()
    assert third.ask("LOGIN carol wrongpassword") == ["ERR 429 blocked 300 too many failed logins from your address"]
    third.drop()
    later = Conn(factory, host="2001:db8:1:2:9::9")
    assert later.lines() == ["* BLOCKED 300"] and later.closing
    later.drop()
    neighbour = Conn(factory, host="2001:db8:1:3::21")  # the next /64: someone else
    assert neighbour.lines() == ["* HELLO chatapp/2"]
    assert neighbour.ask(f"LOGIN alice {PASSWORD}") == ["OK LOGIN alice"]


def test_blocked_address_cannot_sign_up_either(connect: Connect, server_factory: ServerFactory, clock: Clock) -> None:
    conn = connect()
    server_factory.store.set_block(ADDRESS, "127.0.0.1", clock.seconds() + 10)
    assert conn.ask(f"SIGNUP alice {PASSWORD}") == ["ERR 429 blocked 10 too many failed logins from your address"]
    assert conn.closing


def test_name_is_locked_after_failures_from_several_addresses(connect: Connect, clock: Clock) -> None:
    signed_up(connect).drop()
    assert connect("10.0.0.1").ask("LOGIN alice wrongpassword")[0].startswith("ERR 401")
    assert connect("10.0.0.2").ask("LOGIN ALICE wrongpassword")[0].startswith("ERR 401")
    third = connect("10.0.0.3")
    assert third.ask("LOGIN alice wrongpassword") == ["ERR 429 locked 300 this account is locked after failed logins"]
    assert not third.closing
    # even the right password, and such refusals do not count again
    for _ in range(5):
        assert third.ask(f"LOGIN alice {PASSWORD}") == ["ERR 429 locked 300 this account is locked after failed logins"]
    assert connect("10.0.0.3").ask(f"SIGNUP bob {PASSWORD}") == ["OK SIGNUP bob"]
    clock.advance(300)
    assert third.ask(f"LOGIN alice {PASSWORD}") == ["OK LOGIN alice"]


def test_one_failure_reaching_both_limits_blocks(connect: Connect, server_factory: ServerFactory, clock: Clock) -> None:
    for _ in range(2):
        connect().ask("LOGIN alice wrongpassword")
    conn = connect()
    assert conn.ask("LOGIN alice wrongpassword") == ["ERR 429 blocked 300 too many failed logins from your address"]
    until = server_factory.store.block_until(NAME, "alice", clock.seconds())
    assert until.result == clock.seconds() + 300


def test_successful_login_resets_counts(connect: Connect) -> None:
    signed_up(connect).drop()
    conn = connect()
    for _ in range(2):
        conn.ask("LOGIN alice wrongpassword")
    assert conn.ask(f"LOGIN alice {PASSWORD}") == ["OK LOGIN alice"]
    conn.drop()
    conn = connect()
    for _ in range(2):
        assert conn.ask("LOGIN alice wrongpassword")[0].startswith("ERR 401")


def test_failures_are_logged_without_passwords_and_crlf(connect: Connect, logged_events: list[LogEvent]) -> None:
    conn = connect()
    for _ in range(3):
        conn.ask("LOGIN mallory sekritpassword1")
    text = "\n".join(formatEvent(e) for e in logged_events)
    assert "failed login for mallory from 127.0.0.1" in text
    assert "blocked address 127.0.0.1" in text
    assert "locked user mallory" in text
    assert "sekritpassword1" not in text


def test_busy_when_too_many_password_checks_pending(tmp_path, clock: Clock) -> None:
    factory = make_factory(str(tmp_path / "db"), clock)
    held = HeldRunner()
    factory.hasher = PasswordHasher(held, rounds=4, max_pending=1)
    factory.hasher.start()
    held.release_all()
    a, b = Conn(factory), Conn(factory, host="127.0.0.2")
    a.lines(), b.lines()
    a.send(f"SIGNUP alice {PASSWORD}\r\nPING\r\n")
    assert a.lines() == []  # waiting for bcrypt; PING queued behind it
    assert b.ask(f"SIGNUP bob {PASSWORD}") == ["ERR 503 busy the server is busy; try again"]
    assert b.ask(f"LOGIN bob {PASSWORD}") == ["ERR 503 busy the server is busy; try again"]
    held.release_all()
    assert a.lines() == ["OK SIGNUP alice", "OK PONG"]
    assert b.ask(f"LOGIN alice {PASSWORD}") == []
    held.release_all()
    assert b.lines() == ["OK LOGIN alice"]


def test_login_finishing_after_the_client_left_registers_nothing(tmp_path, clock: Clock) -> None:
    factory = make_factory(str(tmp_path / "db"), clock)
    Conn(factory).ask(f"SIGNUP alice {PASSWORD}")
    held = HeldRunner()
    factory.hasher = PasswordHasher(held, rounds=4, max_pending=4)
    factory.hasher.start()
    held.release_all()
    conn = Conn(factory, host="127.0.0.3")
    conn.ask(f"LOGIN alice {PASSWORD}")
    conn.drop()
    held.release_all()
    presence = result_of(factory.registry.get("alice"))
    assert presence is None or presence.connection is not conn.proto


# -- PASSWD ---------------------------------------------------------------------


def passwd(current: str, new: str) -> str:
    return f"PASSWD {len(current.encode())} {current} {new}"


def test_passwd(connect: Connect) -> None:
    conn = signed_up(connect)
    assert conn.ask(passwd(PASSWORD, "short")) == ["ERR 400 bad-password passwords are 8-72 bytes"]
    assert conn.ask(passwd(PASSWORD, "a brand new secret")) == ["OK PASSWD"]
    conn.drop()
    other = connect()
    assert other.ask(f"LOGIN alice {PASSWORD}")[0].startswith("ERR 401")
    assert other.ask("LOGIN alice a brand new secret") == ["OK LOGIN alice"]


# -- LISTEN, UNLISTEN, WHO -----------------------------------------------------------


def test_listen_unlisten_and_who(connect: Connect) -> None:
    alice = signed_up(connect)
    bob = signed_up(connect, "bob", "127.0.0.2")
    assert alice.ask("LISTEN 40123") == ["OK LISTEN 127.0.0.1 40123"]
    assert alice.ask("LISTEN 40124 127.0.0.1") == ["OK LISTEN 127.0.0.1 40124"]
    assert sorted(bob.ask("WHO")) == ["+ USER alice listening", "+ USER bob online", "OK WHO 2"]
    assert alice.ask("UNLISTEN", "UNLISTEN") == ["OK UNLISTEN", "OK UNLISTEN"]
    assert sorted(bob.ask("WHO")) == ["+ USER alice online", "+ USER bob online", "OK WHO 2"]


@pytest.mark.parametrize("port", ["1023", "65536", "0", "abc", "-5", "99999999999999999999"])
def test_bad_port(connect: Connect, port: str) -> None:
    assert signed_up(connect).ask(f"LISTEN {port}") == ["ERR 400 bad-port ports are 1024-65535"]


def test_bad_host(connect: Connect) -> None:
    conn = signed_up(connect)
    assert conn.ask("LISTEN 4000 example.com") == ["ERR 400 bad-host the host must be an IP address"]
    assert conn.ask("LISTEN 4000 10.1.2.3") == ["ERR 400 bad-host this server only accepts your own address 127.0.0.1"]
    assert conn.ask("LISTEN 4000 ::ffff:127.0.0.1") == ["OK LISTEN 127.0.0.1 4000"]


def test_ipv4_mapped_client_address(connect: Connect) -> None:
    conn = signed_up(connect, host="::ffff:127.0.0.5")
    assert conn.ask("LISTEN 4000 127.0.0.5") == ["OK LISTEN 127.0.0.5 4000"]


def test_advertised_hosts_when_allowed(tmp_path, clock: Clock) -> None:
    factory = make_factory(str(tmp_path / "db"), clock, ServerConfig(allow_advertised_hosts=True))
    conn = Conn(factory)
    conn.lines()
    conn.ask(f"SIGNUP alice {PASSWORD}", f"KEY {key_of('alice')}")
    assert conn.ask("LISTEN 4000 10.1.2.3") == ["OK LISTEN 10.1.2.3 4000"]


# -- CONNECT and VERIFY -------------------------------------------------------------


def test_connect_and_verify(connect: Connect, clock: Clock) -> None:
    alice = signed_up(connect, "Alice")
    bob = signed_up(connect, "Bob", "127.0.0.2")
    bob.ask("LISTEN 40000")
    reply = alice.ask("CONNECT bob")
    ok, verb, name, host, port, token, proof, fingerprint = reply[0].split(" ")
    assert (ok, verb, name, host, port) == ("OK", "CONNECT", "Bob", "127.0.0.2", "40000")
    assert fingerprint == key_of("Bob")  # the target's published key
    assert len(token) >= 22 and len(proof) >= 22 and token != proof
    assert bob.lines() == ["* REQUEST Alice"]
    assert alice.ask(f"VERIFY {token}") == ["ERR 403 bad-token unknown, expired or not yours"]
    assert bob.ask(f"VERIFY {token}") == [f"OK VERIFY Alice {proof} {key_of('Alice')}"]
    assert bob.ask(f"VERIFY {token}") == ["ERR 403 bad-token unknown, expired or not yours"]


def test_tokens_expire_after_60_seconds_and_belong_to_names(connect: Connect, clock: Clock) -> None:
    alice = signed_up(connect)
    bob = signed_up(connect, "bob", "127.0.0.2")
    bob.ask("LISTEN 40000")
    token1 = alice.ask("CONNECT bob")[0].split(" ")[5]
    token2 = alice.ask("CONNECT bob")[0].split(" ")[5]
    bob.lines()
    clock.advance(30)
    bob.drop()
    bob2 = connect("127.0.0.2")
    bob2.ask(f"LOGIN bob {PASSWORD}")
    assert bob2.ask(f"VERIFY {token1}")[0].startswith("OK VERIFY alice ")  # VERIFY needs no KEY
    clock.advance(30)
    assert bob2.ask(f"VERIFY {token2}") == ["ERR 403 bad-token unknown, expired or not yours"]


def test_connect_errors(connect: Connect) -> None:
    alice = signed_up(connect)
    signed_up(connect, "offline", "127.0.0.3").drop()
    signed_up(connect, "quiet", "127.0.0.4")
    assert alice.ask("CONNECT nobody") == ["ERR 404 no-such-user there is no such user"]
    assert alice.ask("CONNECT Offline") == ["ERR 409 not-online offline is not online"]
    assert alice.ask("CONNECT QUIET") == ["ERR 409 not-listening quiet is online but not accepting chats"]
    assert alice.ask("CONNECT ALICE") == ["ERR 400 bad-arguments you cannot connect to yourself"]
    assert alice.ask("CONNECT ../x") == ["ERR 400 bad-username no such user name can exist"]


def test_verify_rejects_malformed_tokens(connect: Connect) -> None:
    conn = signed_up(connect)
    assert conn.ask("VERIFY a+b")[0].startswith("ERR 400 bad-arguments")


# -- KEY (protocol version 2) ---------------------------------------------------------------


def test_key_is_for_logged_in_clients_and_checked(connect: Connect) -> None:
    conn = connect()
    assert conn.ask(f"KEY {key_of('x')}") == ["ERR 403 not-logged-in log in first"]
    assert conn.ask(f"SIGNUP alice {PASSWORD}") == ["OK SIGNUP alice"]
    bad = ["ERR 400 bad-fingerprint fingerprints are sha256: and 64 hex digits"]
    for wrong in ["sha256:abc", "md5:" + "a" * 64, "a" * 64, "sha256:" + "g" * 64, "sha256:" + "a" * 65]:
        assert conn.ask(f"KEY {wrong}") == bad, wrong
    assert conn.ask("KEY")[0].startswith("ERR 400 bad-arguments")
    assert conn.ask(f"KEY {key_of('x')} extra")[0].startswith("ERR 400 bad-arguments")
    assert conn.proto.key is None  # nothing bad was kept


def test_key_upper_case_is_kept_lower_and_a_later_key_replaces(connect: Connect) -> None:
    alice = signed_up(connect, "alice")
    bob = connect("127.0.0.2")
    no_key = "ERR 409 no-key publish your key with KEY first"
    assert bob.ask(f"SIGNUP bob {PASSWORD}", "LISTEN 40000") == ["OK SIGNUP bob", no_key]
    shouted = "SHA256:" + key_of("bob")[len("sha256:") :].upper()
    assert bob.ask(f"KEY {shouted}", "LISTEN 40000") == ["OK KEY", "OK LISTEN 127.0.0.2 40000"]
    assert alice.ask("CONNECT bob")[0].split(" ")[-1] == key_of("bob")
    assert bob.ask(f"KEY {key_of('bob2')}") == ["* REQUEST alice", "OK KEY"]
    bob.lines()
    assert alice.ask("CONNECT bob")[0].split(" ")[-1] == key_of("bob2")


def test_connect_needs_a_key_in_the_which_error_wins_order(connect: Connect) -> None:
    conn = connect()
    assert conn.ask(f"SIGNUP alice {PASSWORD}") == ["OK SIGNUP alice"]
    signed_up(connect, "bob", "127.0.0.2").ask("LISTEN 40000")
    # arguments first, then no-key, then the command's own conditions
    assert conn.ask("CONNECT ../x") == ["ERR 400 bad-username no such user name can exist"]
    assert conn.ask("CONNECT alice") == ["ERR 400 bad-arguments you cannot connect to yourself"]
    assert conn.ask("LISTEN 80") == ["ERR 400 bad-port ports are 1024-65535"]
    assert conn.ask("CONNECT nobody") == ["ERR 409 no-key publish your key with KEY first"]
    assert conn.ask("CONNECT bob") == ["ERR 409 no-key publish your key with KEY first"]
    assert conn.ask(f"KEY {key_of('alice')}", "CONNECT nobody") == [
        "OK KEY",
        "ERR 404 no-such-user there is no such user",
    ]


def test_the_key_is_forgotten_at_logout_and_verify_keeps_the_one_of_connect_time(connect: Connect) -> None:
    alice = signed_up(connect, "alice")
    bob = signed_up(connect, "bob", "127.0.0.2")
    bob.ask("LISTEN 40000")
    token = alice.ask("CONNECT bob")[0].split(" ")[5]
    assert alice.ask(f"KEY {key_of('alice-new')}") == ["OK KEY"]  # published after CONNECT: not vouched
    assert bob.ask(f"VERIFY {token}")[-1].split(" ")[-1] == key_of("alice")
    alice.drop()
    again = connect()
    assert again.ask(f"LOGIN alice {PASSWORD}", "LISTEN 40001") == [
        "OK LOGIN alice",
        "ERR 409 no-key publish your key with KEY first",
    ]


# -- ordering and robustness ----------------------------------------------------------


def test_pipelined_replies_come_in_order(connect: Connect) -> None:
    conn = connect()
    commands = [f"SIGNUP alice {PASSWORD}", "WHO", "LISTEN 5000", f"KEY {key_of('alice')}", "LISTEN 5000"]
    commands += ["PING", "CONNECT alice", "FOO", "UNLISTEN"]
    assert conn.ask(*commands, "QUIT", "PING") == [
        "OK SIGNUP alice",
        "+ USER alice online",
        "OK WHO 1",
        "ERR 409 no-key publish your key with KEY first",
        "OK KEY",
        "OK LISTEN 127.0.0.1 5000",
        "OK PONG",
        "ERR 400 bad-arguments you cannot connect to yourself",
        "ERR 400 unknown-command unknown command",
        "OK UNLISTEN",
        "OK QUIT",
    ]


def test_unexpected_exception_becomes_internal_error(
    connect: Connect, server_factory: ServerFactory, logged_errors: LoggedErrors
) -> None:
    conn = connect()
    server_factory.store.close()  # every store call now fails
    assert conn.ask(f"LOGIN alice {PASSWORD}", "PING") == ["ERR 500 internal-error internal error", "OK PONG"]
    assert not conn.closing
    assert len(logged_errors.flush(StoreError)) == 1  # the operator sees what went wrong


def test_a_client_that_stops_reading_runs_no_commands_and_is_dropped_past_a_limit(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("chatapp.server.protocol.MAX_UNREAD_OUTPUT", 4096)
    target = signed_up(connect, "target")
    target.ask("LISTEN 4000")
    target.proto.pauseProducing()  # what the transport does when its write buffer is full
    assert target.transport.producerState == "paused"  # and it stops reading from the socket
    target.send("PING\r\nPING\r\n")
    assert target.lines() == []
    target.proto.resumeProducing()
    assert target.lines() == ["OK PONG", "OK PONG"]
    target.proto.pauseProducing()
    for i in range(1000):  # each requester's CONNECT pushes a "* REQUEST" event at the target
        signed_up(connect, f"requester{i}", f"10.0.{i // 250}.{i % 250 + 1}").ask("CONNECT target")
        if target.transport.disconnected:
            break
    assert target.transport.disconnected  # aborted, not left to buffer forever
    assert 4000 < len(target.transport.value()) <= 4096


def test_a_closing_connection_that_does_not_go_is_cut(connect: Connect, clock: Clock) -> None:
    conn = connect()
    conn.ask("QUIT")
    assert conn.closing and not conn.transport.disconnected
    clock.advance(10)
    assert conn.transport.disconnected


def test_passwd_for_an_account_deleted_meanwhile(connect: Connect, server_factory: ServerFactory) -> None:
    conn = signed_up(connect)
    path = cast(SQLiteStore, server_factory.store).path
    with sqlite3.connect(path) as db:  # what the admin tool does, behind the server's back
        db.execute("DELETE FROM users WHERE name_folded = 'alice'")
    assert conn.ask(passwd(PASSWORD, "a brand new secret")) == ["ERR 404 no-such-user this account no longer exists"]


def test_a_store_failure_before_the_greeting_says_bye(
    server_factory: ServerFactory, logged_errors: LoggedErrors
) -> None:
    server_factory.store.close()
    conn = Conn(server_factory)
    assert conn.lines() == ["* BYE internal-error"]
    assert conn.closing
    assert len(logged_errors.flush(StoreError)) == 1


def test_expired_tokens_are_dropped_in_issue_order(server_factory: ServerFactory, clock: Clock) -> None:
    registry = cast(MemoryRegistry[object], server_factory.registry).tokens
    old, _ = registry.issue("alice", "bob", clock.seconds())
    clock.advance(30)
    young, _ = registry.issue("alice", "bob", clock.seconds())
    clock.advance(31)
    assert registry.redeem(old, "bob", clock.seconds()) is None
    ticket = registry.redeem(young, "bob", clock.seconds())
    assert ticket is not None and ticket.requester == "alice"
    assert registry._tickets == {}
