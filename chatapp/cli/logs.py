"""The debug log: nothing without ``--debug``; with it, Twisted's logger to stderr or a file."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from zope.interface import implementer

from .options import Settings


@implementer(ILogObserver)
def _discard(event: dict[str, Any]) -> None:
    pass


def start_logging(settings: Settings, interactive: bool) -> None:
    if not settings.debug:
        globalLogBeginner.beginLoggingTo([_discard], discardBuffer=True, redirectStandardIO=False)
        return
    path = settings.debug_log or ("chatapp-debug.log" if interactive else None)
    stream: TextIO = open(path, "a", encoding="utf-8") if path else sys.stderr
    observer = FilteringLogObserver(
        textFileLogObserver(stream), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
