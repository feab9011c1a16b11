"""The autouse fixtures in conftest.py fail the tests they should: errors only logged, and leaks on the reactor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from logged_errors import LoggedErrors
from twisted.internet import defer
from twisted.logger import Logger, LogLevel

log = Logger()

TESTS = Path(__file__).parent


def drop_a_failed_deferred_in_a_cycle() -> None:
    # The exception's traceback holds this frame, and the frame holds the Deferred: only the
    # cycle collector frees it, and only then does it log its error.
    d: defer.Deferred[object] = defer.Deferred()
    try:
        raise ZeroDivisionError("nobody waited for me")
    except ZeroDivisionError:
        d.errback()


def test_a_failed_deferred_dropped_in_a_cycle_fails_the_check(logged_errors: LoggedErrors) -> None:
    with LoggedErrors().observing() as errors:
        drop_a_failed_deferred_in_a_cycle()
        with pytest.raises(pytest.fail.Exception) as failed:
            errors.check()
    assert "Unhandled error in Deferred" in str(failed.value)
    assert "ZeroDivisionError: nobody waited for me" in str(failed.value)
    # the autouse fixture saw it too: flushing it is what lets this test pass
    [event] = logged_errors.flush(ZeroDivisionError)
    assert event["log_failure"].getErrorMessage() == "nobody waited for me"


def test_a_logged_failure_fails_the_check_once(logged_errors: LoggedErrors) -> None:
    with LoggedErrors().observing() as errors:
        try:
            raise KeyError("lost")
        except KeyError:
            log.failure("handling {thing} failed", thing="a key")
        with pytest.raises(pytest.fail.Exception) as failed:
            errors.check()
        errors.check()  # what failed a test is not reported again by the next check
    assert "handling a key failed" in str(failed.value)
    assert "KeyError: 'lost'" in str(failed.value)
    assert len(logged_errors.flush()) == 1


def test_flush_takes_only_the_given_exception_types(logged_errors: LoggedErrors) -> None:
    for error in (ValueError("expected"), OSError("not expected")):
        try:
            raise error
        except Exception:
            log.failure("failed")
    [expected] = logged_errors.flush(ValueError)
    assert expected["log_failure"].getErrorMessage() == "expected"
    with pytest.raises(pytest.fail.Exception, match="OSError: not expected"):
        logged_errors.check()


def test_failures_below_error_level_and_plain_messages_do_not_count() -> None:
    with LoggedErrors().observing() as errors:
        try:
            raise ValueError("a peer sent garbage")
        except ValueError:
            log.failure("refused a peer", level=LogLevel.warn)
        log.error("an error message without a failure")
        errors.check()


@pytest.mark.slow
def test_the_autouse_fixtures_fail_the_tests_that_leave_errors_or_leaks(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The inner run uses this conftest.py unchanged, in a subprocess: an in-process run
    # would stop pytest-twisted's reactor, which this outer run still needs.
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    pytester.makepyfile(
        test_inner="""
        from twisted.internet import defer, protocol, reactor
        from twisted.logger import Logger

        def test_drops_a_failed_deferred():
            defer.fail(ZeroDivisionError("dropped"))

        def test_logs_a_failure():
            try:
                1 / 0
            except ZeroDivisionError:
                Logger().failure("a callback failed")

        def test_flushes_what_it_provokes(logged_errors):
            defer.fail(ZeroDivisionError("expected"))
            assert len(logged_errors.flush(ZeroDivisionError)) == 1

        def test_leaves_a_timer():
            reactor.callLater(60, lambda: None)

        def test_leaves_a_listening_socket():
            reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")

        def test_stops_what_it_started():
            reactor.callLater(60, lambda: None).cancel()
            return reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1").stopListening()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, errors=4)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_drops_a_failed_deferred*",
            "*Unhandled error in Deferred*",
            "*ZeroDivisionError: dropped",
            "*ERROR at teardown of test_logs_a_failure*",
            "*a callback failed*",
            "*ERROR at teardown of test_leaves_a_timer*",
            "*timers left on the reactor*",
            "*ERROR at teardown of test_leaves_a_listening_socket*",
            "*sockets left open on the reactor*",
        ]
    )
