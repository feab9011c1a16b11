"""Collect the errors logged during one test, so that a test which logged one it did not expect fails.

An error that only reaches the log (an exception in a callback nobody waits for, a failed
Deferred that is garbage collected) fails nothing by itself: the test passes and the bug hides.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from twisted.logger import ILogObserver, LogEvent, LogLevel, eventAsText, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

_ERROR_LEVELS = (LogLevel.error, LogLevel.critical)


def is_logged_error(event: LogEvent) -> bool:
    """A failure logged at error level or above (log.failure, log.err, an unhandled error in a Deferred).

    A Deferred collected in a failed state logs twice: a bare "Unhandled error in Deferred:" line,
    then the failure. Only the second carries the exception, so only events with a failure count.
    """
    if not isinstance(event.get("log_failure"), Failure):
        return False
    return bool(event.get("isError")) or event.get("log_level") in _ERROR_LEVELS


def describe(event: LogEvent) -> str:
    text = eventAsText(event, includeTimestamp=False)
    if event.get("log_namespace") == "twisted.internet.defer" and not event.get("log_format"):
        # Deferred.__del__ logs the failure with an empty message; its header went out as a separate event.
        text = "Unhandled error in Deferred: " + text
    return text


@implementer(ILogObserver)
class LoggedErrors:
    """A log observer that keeps the logged errors until a test flushes them or they fail the test."""

    def __init__(self) -> None:
        self._errors: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        # This may run on any thread: list.append is atomic, and nothing else happens here.
        if is_logged_error(event):
            self._errors.append(event)

    @contextmanager
    def observing(self) -> Iterator[LoggedErrors]:
        globalLogPublisher.addObserver(self)
        try:
            yield self
        finally:
            globalLogPublisher.removeObserver(self)

    def flush(self, *exception_types: type[BaseException]) -> list[LogEvent]:
        """Remove and return the logged errors whose exception is one of `exception_types` (all if none given).

        Collects garbage first, so a failed Deferred the test dropped has logged its error by now.
        """
        gc.collect()
        kept: list[LogEvent] = []
        flushed: list[LogEvent] = []
        for event in self._errors:
            failure: Failure = event["log_failure"]
            expected = not exception_types or failure.check(*exception_types) is not None
            (flushed if expected else kept).append(event)
        self._errors = kept
        return flushed

    def check(self) -> None:
        """Fail the running test with the text of every error logged and not flushed."""
        gc.collect()
        if self._errors:
            errors, self._errors = self._errors, []
            text = "\n".join(describe(event) for event in errors)
            pytest.fail(f"{len(errors)} error(s) logged during the test and not flushed:\n{text}", pytrace=False)
