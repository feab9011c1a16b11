"""The lockout rule on its own: a Clock, no transport, no store (the caller's reads are arguments)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from chatapp.server.lockout import Attempt, FailureCounter, LoginLockout, Refusal, Refused, Verdict, Wait
from chatapp.server.store import ADDRESS, NAME, Block


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_000_000)
    return c


@pytest.fixture
def lockout(clock: Clock) -> LoginLockout:
    return LoginLockout(clock, max_attempts=3, block_time=300)


def admitted(lockout: LoginLockout, address: str = "10.0.0.1", name: str = "alice") -> Attempt:
    attempt = lockout.admit(address, name)
    assert isinstance(attempt, Attempt), attempt
    assert lockout.check_stored(attempt, None, None) is None
    return attempt


def fail(lockout: LoginLockout, address: str = "10.0.0.1", name: str = "alice") -> Verdict:
    return lockout.settle(admitted(lockout, address, name), False).verdict


def test_third_failure_blocks_the_address_and_locks_the_name(lockout: LoginLockout, clock: Clock) -> None:
    assert [fail(lockout), fail(lockout)] == [Verdict.BAD_CREDENTIALS, Verdict.BAD_CREDENTIALS]
    settlement = lockout.settle(admitted(lockout), False)
    assert settlement.verdict is Verdict.BLOCKED and settlement.seconds == 300
    until = clock.seconds() + 300
    assert settlement.store == (Block(ADDRESS, "10.0.0.1", until), Block(NAME, "alice", until))


def test_while_a_decided_block_is_written_the_logins_it_covers_wait_then_read_the_store(
    lockout: LoginLockout, clock: Clock
) -> None:
    for _ in range(2):
        fail(lockout)
    settlement = lockout.settle(admitted(lockout), False)
    by_address, by_name = lockout.admit("10.0.0.1", "bob"), lockout.admit("10.0.0.2", "alice")
    assert isinstance(by_address, Wait) and isinstance(by_name, Wait)
    assert isinstance(lockout.admit("10.0.0.2", "bob"), Attempt)  # covered by neither
    lockout.stored(settlement.store[0])
    assert by_address.turn.called and not by_name.turn.called
    lockout.stored(settlement.store[1])
    assert by_name.turn.called
    # Now the store is the truth: what it says refuses; an admin who lifted both lifted them.
    attempt = lockout.admit("10.0.0.1", "alice")
    assert isinstance(attempt, Attempt)
    now = clock.seconds()
    assert lockout.check_stored(attempt, now + 300, now + 300) == Refused(Refusal.BLOCKED, 300)
    assert lockout.address_refusal("10.0.0.1", None) is None


def test_a_block_whose_store_write_failed_refuses_from_memory_until_it_runs_out(
    lockout: LoginLockout, clock: Clock
) -> None:
    for _ in range(2):
        fail(lockout)
    settlement = lockout.settle(admitted(lockout), False)
    waiting = lockout.admit("10.0.0.1", "bob")
    assert isinstance(waiting, Wait)
    for block in settlement.store:
        lockout.store_failed(block)
    assert waiting.turn.called
    clock.advance(100)
    assert lockout.admit("10.0.0.1", "bob") == Refused(Refusal.BLOCKED, 200)
    assert lockout.admit("10.0.0.2", "alice") == Refused(Refusal.LOCKED, 200)
    assert lockout.address_refusal("10.0.0.1", None) == Refused(Refusal.BLOCKED, 200)
    clock.advance(200)
    assert lockout.address_refusal("10.0.0.1", None) is None


def test_stored_blocks_refuse_after_admission_and_release_the_attempt(lockout: LoginLockout, clock: Clock) -> None:
    attempt = lockout.admit("10.0.0.1", "alice")
    assert isinstance(attempt, Attempt)
    now = clock.seconds()
    assert lockout.check_stored(attempt, now + 10.5, now + 50) == Refused(Refusal.BLOCKED, 11)
    attempt = lockout.admit("10.0.0.1", "alice")
    assert isinstance(attempt, Attempt)
    assert lockout.check_stored(attempt, now - 1, now + 50) == Refused(Refusal.LOCKED, 50)
    # Both refusals released their slots: three attempts fit again.
    assert all(isinstance(lockout.admit("10.0.0.1", "alice"), Attempt) for _ in range(3))


def test_success_resets_both_counts_and_refusals_do_not_count(lockout: LoginLockout) -> None:
    fail(lockout)
    fail(lockout, "10.0.0.1", "bob")
    assert lockout.settle(admitted(lockout), True).verdict is Verdict.SUCCESS
    assert lockout.failures.count("10.0.0.1", "alice") == (0, 0)
    assert lockout.failures.count("10.0.0.1", "bob") == (0, 1)


def test_settling_twice_is_a_bug(lockout: LoginLockout) -> None:
    attempt = admitted(lockout)
    lockout.settle(attempt, True)
    with pytest.raises(RuntimeError):
        lockout.abandon(attempt)


def test_at_most_max_attempts_are_checked_at_once_and_the_rest_wait(lockout: LoginLockout) -> None:
    attempts = [admitted(lockout, "10.0.0.1", f"name{i}") for i in range(3)]
    waiting = lockout.admit("10.0.0.1", "name9")
    assert isinstance(waiting, Wait) and not waiting.turn.called
    lockout.abandon(attempts[0])  # a busy server: not counted, and the slot is free again
    assert waiting.turn.called
    assert isinstance(lockout.admit("10.0.0.1", "name9"), Attempt)


def test_many_logins_at_once_check_no_more_than_the_limit(lockout: LoginLockout) -> None:
    """Twenty connections from one address send LOGIN together; the right password is among the late ones.

    Checks complete in a chosen order (last admitted first). However they interleave, at most three
    wrong passwords are checked, and the right password checked after the block does not log in.
    """
    pending: list[tuple[Attempt, bool]] = []
    waiting: list[tuple[Wait, bool]] = []
    verdicts: list[Verdict] = []
    refused: list[Refused] = []
    checked_wrong = 0

    def arrive(password_ok: bool) -> None:
        decision = lockout.admit("10.0.0.1", "alice")
        if isinstance(decision, Attempt):
            assert lockout.check_stored(decision, None, None) is None
            pending.append((decision, password_ok))
        elif isinstance(decision, Wait):
            waiting.append((decision, password_ok))
        else:
            refused.append(decision)

    for i in range(20):
        arrive(password_ok=i == 12)
    assert len(pending) == 3 and len(waiting) == 17
    while pending:
        attempt, password_ok = pending.pop()
        checked_wrong += not password_ok
        settlement = lockout.settle(attempt, password_ok)
        verdicts.append(settlement.verdict)
        for block in settlement.store:
            lockout.store_failed(block)  # held in memory: refusals need no store read here
        woken = [(w, ok) for w, ok in waiting if w.turn.called]
        waiting = [(w, ok) for w, ok in waiting if not w.turn.called]
        for _, ok in woken:
            arrive(ok)
    assert checked_wrong == 3
    assert verdicts == [Verdict.BAD_CREDENTIALS, Verdict.BAD_CREDENTIALS, Verdict.BLOCKED]
    assert len(refused) == 17 and {r.reason for r in refused} == {Refusal.BLOCKED}
    assert not waiting


def test_no_block_can_be_decided_while_a_check_it_covers_runs(lockout: LoginLockout) -> None:
    fail(lockout, "10.0.0.1", "alice")
    fail(lockout, "10.0.0.2", "alice")
    right = admitted(lockout, "10.0.0.3", "alice")
    # Two failures and the right password in flight: a wrong one now could lock the name under it.
    late_wrong = lockout.admit("10.0.0.4", "alice")
    assert isinstance(late_wrong, Wait)
    assert lockout.settle(right, True).verdict is Verdict.SUCCESS
    assert late_wrong.turn.called
    assert fail(lockout, "10.0.0.4", "alice") is Verdict.BAD_CREDENTIALS  # the count started again


def test_failure_counts_are_bounded() -> None:
    counter = FailureCounter(max_attempts=3, max_tracked=100)
    for i in range(1000):
        counter.failure(f"10.0.{i // 256}.{i % 256}", f"name{i}")
    assert counter.count("10.0.3.231", "name999") == (1, 1)
    assert counter.count("10.0.0.0", "name0") == (0, 0)  # forgotten, oldest first
    assert len(counter._by_address) == len(counter._by_name) == 100
