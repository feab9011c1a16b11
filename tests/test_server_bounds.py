"""Everything an outsider can make the server hold is bounded (issue 11), through a StringTransport.

Each test sends the hostile input and asserts a bound: bytes or lines held,
tokens held, rows kept, replies sent.
"""

from __future__ import annotations

import sqlite3
from typing import cast

import pytest
from conftest import make_factory
from deferreds import result_of
from server_harness import PASSWORD, Conn, held_hasher, key_of
from twisted.internet.task import Clock

from chatapp.server import protocol
from chatapp.server.factory import ServerConfig, ServerFactory
from chatapp.server.limits import SignupLimiter
from chatapp.server.registry import TOKENS_PER_REQUESTER, TokenBook
from chatapp.server.store import ADDRESS, NAME, SQLiteStore


def greeted(factory: ServerFactory, host: str = "127.0.0.1") -> Conn:
    conn = Conn(factory, host)
    assert conn.lines() == ["* HELLO chatapp/2"]
    return conn


def signed_up(factory: ServerFactory, name: str, host: str) -> Conn:
    conn = greeted(factory, host)
    assert conn.ask(f"SIGNUP {name} {PASSWORD}", f"KEY {key_of(name)}") == [f"OK SIGNUP {name}", "OK KEY"]
    return conn


def passwd(current: str, new: str) -> str:
    return f"PASSWD {len(current.encode())} {current} {new}"


# -- (2) input behind a slow command -------------------------------------------------------


@pytest.mark.parametrize("logged_in", [False, True])
def test_lines_pipelined_behind_a_slow_command_are_bounded_and_reading_stops(
    server_factory: ServerFactory, logged_in: bool
) -> None:
    held = held_hasher(server_factory)
    conn = greeted(server_factory)
    if logged_in:
        conn.send(f"SIGNUP alice {PASSWORD}\r\n")
        held.release_all()
        assert conn.lines() == ["OK SIGNUP alice"]
        slow = passwd(PASSWORD, "a brand new secret")
    else:
        slow = f"SIGNUP alice {PASSWORD}"
    conn.send(slow + "\r\n")
    assert held.held  # bcrypt runs: everything after waits
    stream = b"PING\r\n" * 100_000
    sent = 0
    most = 0
    while sent < len(stream) and conn.transport.producerState != "paused":
        conn.send(stream[sent : sent + 4096])  # what one read of a socket may bring
        sent += 4096
        most = max(most, conn.proto._lines.buffered)
    assert conn.transport.producerState == "paused"
    assert sent < 64 * 1024
    assert most <= protocol.MAX_QUEUED_BYTES + 4096
    assert conn.proto._lines.complete_lines() <= protocol.MAX_QUEUED_LINES + 4096 // 6
    # The slow command ends: the waiting lines run in order, reading resumes, nothing is lost.
    while held.held:
        held.release_all()
    conn.send(stream[sent:] if conn.transport.producerState != "paused" else b"")
    answers = conn.lines()
    assert answers[0] in ("OK SIGNUP alice", "OK PASSWD")
    assert set(answers[1:]) == {"OK PONG"}
    assert conn.transport.producerState == "producing"


def test_input_paused_for_a_full_queue_stays_paused_while_output_is_blocked(server_factory: ServerFactory) -> None:
    conn = greeted(server_factory)
    conn.proto.pauseProducing()  # the client does not read
    conn.send(b"PING\r\n" * 100)
    assert conn.transport.producerState == "paused"
    conn.proto.resumeProducing()  # it reads again: the queue drains, then reading resumes
    assert conn.lines() == ["OK PONG"] * 100
    assert conn.transport.producerState == "producing"


# -- (3) output a client does not read ------------------------------------------------------------


def test_who_and_other_commands_do_not_run_while_the_client_does_not_read(server_factory: ServerFactory) -> None:
    conn = signed_up(server_factory, "alice", "127.0.0.1")
    conn.proto.pauseProducing()
    conn.send(b"WHO\r\n" * 10)
    assert conn.lines() == []
    conn.proto.resumeProducing()
    assert conn.lines() == ["+ USER alice online", "OK WHO 1"] * 10


def test_events_to_a_target_that_never_reads_are_bounded(
    server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "MAX_UNREAD_OUTPUT", 2048)
    target = signed_up(server_factory, "target", "127.0.0.1")
    target.ask("LISTEN 4000")
    target.proto.pauseProducing()
    requesters = []
    for i in range(200):
        requester = signed_up(server_factory, f"r{i}", f"10.9.{i // 5}.{i % 5 + 1}")
        requesters.append(requester)
        requester.ask("CONNECT target")
    assert target.transport.disconnected
    assert len(target.transport.value()) <= 2048


# -- (4) tokens --------------------------------------------------------------------------------------


def test_a_requester_holds_at_most_16_tokens_and_a_target_hears_one_request(
    server_factory: ServerFactory, clock: Clock
) -> None:
    target = signed_up(server_factory, "bob", "127.0.0.2")
    target.ask("LISTEN 4000")
    alice = signed_up(server_factory, "alice", "127.0.0.1")
    answers = alice.ask(*["CONNECT bob"] * 100)
    granted = [a for a in answers if a.startswith("OK CONNECT bob ")]
    assert len(granted) == TOKENS_PER_REQUESTER
    assert answers[16:] == ["ERR 429 slow-down 60 too many connection requests; wait for one to expire"] * 84
    assert target.lines() == ["* REQUEST alice"]  # one, however many CONNECTs
    # Redeeming one frees one slot, and a new burst after that is announced again.
    token = granted[0].split(" ")[5]
    assert target.ask(f"VERIFY {token}")[0].startswith("OK VERIFY alice ")
    clock.advance(20)
    assert alice.ask("CONNECT bob")[0].startswith("OK CONNECT bob ")
    assert alice.ask("CONNECT bob") == ["ERR 429 slow-down 40 too many connection requests; wait for one to expire"]
    assert target.lines() == []  # alice still held tokens for bob
    clock.advance(40)  # the first 15 expire
    assert alice.ask("CONNECT bob")[0].startswith("OK CONNECT bob ")


def test_the_token_limit_answers_before_the_target_is_looked_up(server_factory: ServerFactory) -> None:
    """Which error wins: limits (429) before the command's own conditions (404, 409)."""
    bob = signed_up(server_factory, "bob", "127.0.0.2")
    bob.ask("LISTEN 4000")
    alice = signed_up(server_factory, "alice", "127.0.0.1")
    alice.ask(*["CONNECT bob"] * 16)
    assert alice.ask("CONNECT nobody")[0].startswith("ERR 429 slow-down ")
    assert alice.ask("CONNECT alice")[0].startswith("ERR 400 bad-arguments")  # arguments before limits


def test_tokens_in_all_are_bounded_and_redeemed_ones_leave_no_trace() -> None:
    registry = TokenBook(per_requester=16, max_tokens=100)
    for i in range(100):
        assert registry.token_wait(f"user{i}", 0.0) is None
        registry.issue(f"user{i}", "bob", 0.0)
    assert registry.token_wait("late", 30.0) == 30.0
    with pytest.raises(RuntimeError):
        registry.issue("late", "bob", 30.0)
    # CONNECT and VERIFY in a loop: the expiry queue does not keep what was redeemed.
    for i in range(10_000):
        token, _ = registry.issue("carol", "dave", 61.0 + i * 0.001)
        assert registry.redeem(token, "dave", 61.0 + i * 0.001) is not None
    assert len(registry._expiries) <= 2 * len(registry._tickets) + 65
    assert registry._pairs == {} and registry._by_requester == {}


# -- (10) the block table ---------------------------------------------------------------------------


def block_rows(factory: ServerFactory) -> int:
    with sqlite3.connect(cast(SQLiteStore, factory.store).path) as db:
        return int(db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0])


def test_expired_block_rows_are_pruned_when_a_block_is_set(server_factory: ServerFactory, clock: Clock) -> None:
    for i in range(50):
        greeted(server_factory, f"10.8.0.{i + 1}").ask(*[f"LOGIN fake{i} wrong-password"] * 3)
    assert block_rows(server_factory) == 100  # each: an address blocked and a name locked
    clock.advance(301)
    greeted(server_factory, "10.8.1.1").ask(*["LOGIN fake-late wrong-password"] * 3)
    assert block_rows(server_factory) == 2


# -- (11) lines that are never answered; verbs are ASCII -----------------------------------------------


@pytest.mark.parametrize("logged_in", [False, True])
def test_ok_err_and_star_lines_are_never_answered(server_factory: ServerFactory, logged_in: bool) -> None:
    conn = signed_up(server_factory, "alice", "127.0.0.1") if logged_in else greeted(server_factory)
    lines = ["OK", "OK PONG", "ERR 500 internal-error", "ERR", "* HELLO chatapp/2", "*", "ok x", "err 1"]
    assert conn.ask(*lines, "PING") == ["OK PONG"]


def test_non_ascii_verbs_are_unknown(server_factory: ServerFactory) -> None:
    conn = greeted(server_factory)
    assert (
        conn.ask("p\u0131ng", f"\u017fignup longs {PASSWORD}", "\u0440ing")
        == ["ERR 400 unknown-command unknown command"] * 3
    )
    assert result_of(server_factory.registry.get("longs")) is None


# -- connections and outsider-keyed tables ---------------------------------------------------------------


def test_a_full_server_closes_the_connection_waiting_longest_to_log_in_never_a_logged_in_one(
    tmp_path, clock: Clock
) -> None:
    """Found by the raw-socket attacker: silent connections held every slot for the login timeout."""
    factory = make_factory(str(tmp_path / "db"), clock, ServerConfig(max_connections=4))
    users = [signed_up(factory, f"u{i}", f"10.7.0.{i + 1}") for i in range(2)]
    clock.advance(1)
    silent = [greeted(factory, f"10.7.0.{i + 3}") for i in range(2)]
    clock.advance(1)
    newcomer = greeted(factory, "10.7.1.1")  # full: the silent connection that waited longest goes
    assert silent[0].lines() == ["* BYE too-many-connections"] and silent[0].closing
    assert not silent[1].closing and len(factory.connections) == 4
    clock.advance(1)
    second = greeted(factory, "10.7.1.2")
    assert silent[1].lines() == ["* BYE too-many-connections"]
    assert newcomer.ask(f"SIGNUP n1 {PASSWORD}") == ["OK SIGNUP n1"]
    assert second.ask(f"SIGNUP n2 {PASSWORD}") == ["OK SIGNUP n2"]
    # everyone left has logged in: a newcomer is refused, nobody is pushed out
    refused = Conn(factory, "10.7.1.3")
    assert refused.lines() == ["* BYE too-many-connections"] and refused.closing
    assert not any(c.closing for c in (*users, newcomer, second)) and len(factory.connections) == 4
    for c in (*silent, refused):
        c.drop()
    users[0].drop()
    assert greeted(factory, "10.7.1.4").lines() == []


def test_signup_windows_are_bounded_in_addresses() -> None:
    limiter = SignupLimiter(per_hour=5, max_tracked=100)
    for i in range(1000):
        limiter.reserve(f"10.6.{i // 256}.{i % 256}", 10.0)
    assert len(limiter._times) == 100
    assert limiter.reserve("10.6.3.231", 10.0) is not None  # the newest are kept


# -- PASSWD (version 2 row) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("PASSWD", "ERR 400 bad-arguments"),
        ("PASSWD 21", "ERR 400 bad-arguments"),
        (f"PASSWD 20 {PASSWORD} new secret words", "ERR 400 bad-arguments"),  # no space after 20 bytes
        (f"PASSWD 99 {PASSWORD} new secret words", "ERR 400 bad-arguments"),
        (f"PASSWD x {PASSWORD} new secret words", "ERR 400 bad-arguments"),
        (f"PASSWD 21 {PASSWORD} short", "ERR 400 bad-password"),
        (f"PASSWD 21 {PASSWORD} ", "ERR 400 bad-password"),
        ("PASSWD 5 short new secret words", "ERR 400 bad-password"),
        ("PASSWD 9 p\u00e4sswor new secret words", "ERR 400 bad-arguments"),  # 9 bytes end inside a character
    ],
)
def test_passwd_arguments(server_factory: ServerFactory, line: str, reply: str) -> None:
    conn = signed_up(server_factory, "alice", "127.0.0.1")
    assert conn.ask(line)[0].startswith(reply)


def test_passwd_passwords_may_hold_spaces_and_multibyte_characters(server_factory: ServerFactory) -> None:
    conn = signed_up(server_factory, "alice", "127.0.0.1")
    assert conn.ask(passwd(PASSWORD, " n\u00e9w  secret ")) == ["OK PASSWD"]
    assert conn.ask(passwd(" n\u00e9w  secret ", "third one here")) == ["OK PASSWD"]
    assert greeted(server_factory, "10.5.0.1").ask("LOGIN alice third one here") == ["OK LOGIN alice"]


def test_wrong_current_passwords_count_block_and_close(server_factory: ServerFactory, clock: Clock) -> None:
    conn = signed_up(server_factory, "alice", "127.0.0.1")
    wrong = passwd("not my password", "a brand new secret")
    assert conn.ask(wrong) == ["ERR 401 bad-credentials 2 wrong user name or password"]
    assert conn.ask(wrong) == ["ERR 401 bad-credentials 1 wrong user name or password"]
    assert conn.ask(wrong, "PING") == ["ERR 429 blocked 300 too many failed logins from your address"]
    assert conn.closing
    assert server_factory.store.block_until(ADDRESS, "127.0.0.1", clock.seconds()).result is not None
    # the same failures locked the name: the new password was never set, and alice is locked out
    assert greeted(server_factory, "10.5.0.1").ask(f"LOGIN alice {PASSWORD}")[0].startswith("ERR 429 locked")


def test_passwd_failures_lock_the_name_with_login_failures_elsewhere(server_factory: ServerFactory) -> None:
    conn = signed_up(server_factory, "alice", "127.0.0.1")
    for host in ("10.4.0.1", "10.4.0.2"):
        greeted(server_factory, host).ask("LOGIN alice wrong-password")
    assert conn.ask(passwd("not my password", "a brand new secret")) == [
        "ERR 429 locked 300 this account is locked after failed logins"
    ]
    assert not conn.closing  # still logged in
    assert conn.ask(passwd(PASSWORD, "a brand new secret")) == [
        "ERR 429 locked 300 this account is locked after failed logins"
    ]


def test_a_right_current_password_resets_the_counts(server_factory: ServerFactory) -> None:
    conn = signed_up(server_factory, "alice", "127.0.0.1")
    conn.ask(passwd("not my password", "a brand new secret"), passwd("not my password", "a brand new secret"))
    assert conn.ask(passwd(PASSWORD, "a brand new secret")) == ["OK PASSWD"]
    assert conn.ask(passwd("not my password", "x" * 10)) == ["ERR 401 bad-credentials 2 wrong user name or password"]


# -- an address blocked while connections from it are open ---------------------------------------------------


@pytest.mark.parametrize("command", [f"LOGIN alice {PASSWORD}", f"SIGNUP bob {PASSWORD}", "PASSWD"])
def test_open_connections_of_a_blocked_address_are_refused_and_closed(
    server_factory: ServerFactory, command: str
) -> None:
    conn = signed_up(server_factory, "alice", "127.0.0.1") if command == "PASSWD" else greeted(server_factory)
    if command == "PASSWD":
        command = passwd(PASSWORD, "a brand new secret")
    for _ in range(3):
        greeted(server_factory).ask("LOGIN ghost wrong-password")
    assert conn.ask(command) == ["ERR 429 blocked 300 too many failed logins from your address"]
    assert conn.closing


# -- which error wins (PROTOCOL.md 2.3) ------------------------------------------------------------------------


def test_which_error_wins(server_factory: ServerFactory, clock: Clock) -> None:
    anonymous = greeted(server_factory, "10.3.0.1")
    # the line itself, before login state
    assert anonymous.ask("FROB x") == ["ERR 400 unknown-command unknown command"]
    anonymous.send(b"WHO \xff\r\n")
    assert anonymous.lines() == ["ERR 400 bad-encoding lines must be UTF-8"]
    # login state before arguments
    assert anonymous.ask("PASSWD")[0].startswith("ERR 403 not-logged-in")
    alice = signed_up(server_factory, "alice", "10.3.0.2")
    assert alice.ask("LOGIN")[0].startswith("ERR 409 already-logged-in")
    # arguments before limits: a locked name, a blocked address
    server_factory.store.set_block(NAME, "alice", clock.seconds() + 50)
    assert alice.ask(passwd(PASSWORD, "short"))[0].startswith("ERR 400 bad-password")
    assert anonymous.ask("LOGIN alice short")[0].startswith("ERR 400 bad-password")
    server_factory.store.set_block(ADDRESS, "10.3.0.1", clock.seconds() + 50)
    assert anonymous.ask("SIGNUP .bad password-long")[0].startswith("ERR 400 bad-username")
    # limits before the command's own conditions
    taken = greeted(server_factory, "10.3.0.3")
    server_factory.store.set_block(ADDRESS, "10.3.0.3", clock.seconds() + 50)
    assert taken.ask(f"SIGNUP alice {PASSWORD}")[0].startswith("ERR 429 blocked")
    with sqlite3.connect(cast(SQLiteStore, server_factory.store).path) as db:
        db.execute("DELETE FROM users WHERE name_folded = 'alice'")
    assert alice.ask(passwd(PASSWORD, "a brand new secret"))[0].startswith("ERR 429 locked")


def test_busy_wins_over_a_deleted_account_for_passwd(server_factory: ServerFactory) -> None:
    alice = signed_up(server_factory, "alice", "127.0.0.1")
    held = held_hasher(server_factory, max_pending=1)
    greeted(server_factory, "10.2.0.1").send(f"LOGIN bob {PASSWORD}\r\n")  # takes the one bcrypt slot
    with sqlite3.connect(cast(SQLiteStore, server_factory.store).path) as db:
        db.execute("DELETE FROM users WHERE name_folded = 'alice'")
    assert alice.ask(passwd(PASSWORD, "a brand new secret")) == ["ERR 503 busy the server is busy; try again"]
    held.release_all()
    assert alice.ask(passwd(PASSWORD, "a brand new secret")) == ["ERR 404 no-such-user this account no longer exists"]


def test_max_connections_defaults_to_the_descriptor_limit_and_can_be_set() -> None:
    import resource

    from chatapp.server.tap import Options, default_max_connections

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    options = Options()
    options.parseOptions([])
    assert options.config().max_connections == default_max_connections() == max(16, min(soft, 10**6) - 64)
    options = Options()
    options.parseOptions(["--max-connections", "50"])
    assert options.config().max_connections == 50
