"""Read the outcome of a Deferred that must already have fired (tests on a Clock and StringTransport)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure


def result_of(d: defer.Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: defer.Deferred[Any]) -> BaseException:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), f"expected a failure, got {results}"
    value = results[0].value
    assert value is not None
    return value
