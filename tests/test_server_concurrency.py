"""PROTOCOL.md 2.3 "Exact under concurrency", at the protocol level.

Many ServerProtocol instances on one Clock send LOGIN (or PASSWD) at once; the
password checks wait in a HeldRunner and finish in an order the test picks
(newest first, the order most likely to let a late check slip past a block).
The bound asserted is the number of password checks that ran.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from server_harness import PASSWORD, Conn, HeldRunner, held_hasher
from twisted.internet.task import Clock

from chatapp.server.factory import ServerFactory
from chatapp.server.store import ADDRESS, NAME

Order = Callable[[HeldRunner], int]
ORDERS: dict[str, Order] = {"newest-first": lambda held: -1, "oldest-first": lambda held: 0}


def greeted(factory: ServerFactory, host: str) -> Conn:
    conn = Conn(factory, host)
    assert conn.lines() == ["* HELLO chatapp/2"]
    return conn


def settle_all(held: HeldRunner, order: Order) -> int:
    """Finish held bcrypt calls one by one in ``order``; the most checks ever held at once."""
    most = 0
    while held.held:
        most = max(most, held.held_checks())
        held.release(order(held))
    return most


def replies(conns: list[Conn]) -> list[str]:
    return [line for conn in conns for line in conn.lines()]


@pytest.fixture
def factory(server_factory: ServerFactory) -> ServerFactory:
    Conn(server_factory, "192.0.2.1").ask(f"SIGNUP alice {PASSWORD}")
    return server_factory


@pytest.mark.parametrize("order", ORDERS)
def test_twenty_wrong_logins_at_once_from_one_address_check_three(factory: ServerFactory, order: str) -> None:
    held = held_hasher(factory)
    conns = [greeted(factory, "10.0.0.1") for _ in range(20)]
    for i, conn in enumerate(conns):
        conn.send(f"LOGIN ghost{i} wrong-password-{i}\r\n")
    assert held.held_checks() == 3
    assert settle_all(held, ORDERS[order]) == 3
    assert held.finished.count("_check") == 3
    answers = replies(conns)
    assert sorted(a.split(" ")[:4] for a in answers if a.startswith("ERR 401")) == [
        ["ERR", "401", "bad-credentials", "1"],
        ["ERR", "401", "bad-credentials", "2"],
    ]
    assert sum(a.startswith("ERR 429 blocked 300 ") for a in answers) == 18
    assert sum(conn.closing for conn in conns) == 18


@pytest.mark.parametrize("order", ORDERS)
def test_sixteen_wrong_logins_for_one_name_from_eight_addresses_check_three(
    factory: ServerFactory, order: str, clock: Clock
) -> None:
    held = held_hasher(factory)
    conns = [greeted(factory, f"10.0.1.{i % 8}") for i in range(16)]
    for i, conn in enumerate(conns):
        conn.send(f"LOGIN alice wrong-password-{i}\r\n")
    settle_all(held, ORDERS[order])
    assert held.finished.count("_check") == 3
    answers = replies(conns)
    assert sum(a.startswith("ERR 401") for a in answers) == 2
    assert sum(a.startswith("ERR 429 locked 300 ") for a in answers) == 14
    assert not any(conn.closing for conn in conns)  # a lock keeps the connection
    assert factory.store.block_until(NAME, "alice", clock.seconds()).result == clock.seconds() + 300


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("right_at", [0, 2, 5, 15])
def test_a_right_password_racing_a_burst_never_logs_in_after_the_lock(
    factory: ServerFactory, order: str, right_at: int
) -> None:
    """The right password sent among 16 wrong ones: it may log in only if fewer than three wrong ones were checked."""
    held = held_hasher(factory)
    conns = [greeted(factory, f"10.0.2.{i % 8}") for i in range(16)]
    right = greeted(factory, "10.0.3.1")
    for i, conn in enumerate(conns):
        if i == right_at:
            right.send(f"LOGIN alice {PASSWORD}\r\n")
        conn.send(f"LOGIN alice wrong-password-{i}\r\n")
    checked_wrong_before: int | None = None
    while held.held:
        held.release(ORDERS[order](held))
        if checked_wrong_before is None and right.transport.value():
            checked_wrong_before = held.finished.count("_check") - 1
    [answer] = right.lines()
    checks = held.finished.count("_check")
    if answer == "OK LOGIN alice":
        # It was checked before the lock; its success reset the name's count, and three more may follow.
        assert checked_wrong_before is not None and checked_wrong_before < 3
        assert checks - checked_wrong_before - 1 <= 3
    else:
        assert answer.startswith("ERR 429 locked ")
        assert checks == 3  # the right one was never checked: it came after the lock


def test_passwd_counts_as_a_login_of_this_name_from_this_address(factory: ServerFactory, clock: Clock) -> None:
    """Wrong current passwords sent at once over PASSWD and LOGIN together: still three checks."""
    held = held_hasher(factory)
    me = greeted(factory, "10.0.4.1")
    me.send(f"LOGIN alice {PASSWORD}\r\n")
    held.release_all()
    assert me.lines() == ["OK LOGIN alice"]
    held.finished.clear()
    others = [greeted(factory, "10.0.4.1") for _ in range(5)]
    for i, conn in enumerate(others):
        conn.send(f"LOGIN ghost{i} wrong-password\r\n")
    me.send(f"PASSWD 14 wrong-password {PASSWORD}x\r\n")
    settle_all(held, ORDERS["newest-first"])
    assert held.finished.count("_check") == 3
    assert factory.store.block_until(ADDRESS, "10.0.4.1", clock.seconds()).result is not None
