"""JSON lines for log shippers: ``twistd --logger chatapp.logjson.observer chatserver ...``.

twistd's ``--logger`` takes the dotted name of a factory called with no
arguments, and it replaces ``--logfile``; so where the lines go comes from the
environment: ``CHATAPP_LOG_JSON=/path/to/file`` (rotated at 1 MB like
twistd's own ``--logfile``), or stdout when it is unset or ``-`` (under
``twistd -n`` and systemd, stdout is the journal; a daemonized twistd has none,
so give it a file).

Each event is one line, one JSON object, no record separator::

    {"time": "2026-11-25T13:17:32.120Z", "level": "info", "namespace": "chatapp.server.protocol",
     "message": "signup alice from 127.0.0.1", "user": "alice", "address": "127.0.0.1"}

``message`` is the readable text; the event's own fields (``user``,
``address``, ``seconds``, ...) follow as they were logged, so a shipper can
filter on them without parsing text. A logged failure adds ``traceback``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python.logfile import LogFile

ENVIRONMENT_VARIABLE = "CHATAPP_LOG_JSON"

# Our own keys, and keys of events from the legacy twisted.python.log API that only repeat them.
_OWN = frozenset({"time", "level", "namespace", "message", "traceback"})
_LEGACY = frozenset({"format", "isError", "system", "failure", "why", "log_legacy"})


def _plain(value: Any) -> Any:
    """A JSON-friendly value: scalars as they are, anything else as its text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
        return list(value)
    return str(value)


def event_record(event: LogEvent) -> dict[str, Any]:
    """The JSON object for one log event."""
    stamp = event.get("log_time")
    when = datetime.fromtimestamp(stamp if stamp is not None else 0, tz=timezone.utc)  # noqa: UP017 (3.10)
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _OWN or key in _LEGACY:
            continue
        record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # a broken failure object must not silence the log line
            record["traceback"] = repr(failure)
    return record


def format_json_line(event: LogEvent) -> str:
    """One event as one line of JSON, ending in a newline."""
    try:
        return json.dumps(event_record(event), ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        fallback = {"level": "error", "namespace": __name__, "message": f"unserializable log event: {e}"}
        return json.dumps(fallback) + "\n"


def json_lines_observer(out: IO[Any]) -> ILogObserver:
    """An observer writing one JSON object per line to ``out``."""
    return FileLogObserver(out, format_json_line)


def observer() -> ILogObserver:
    """The ``--logger`` factory: JSON lines to ``$CHATAPP_LOG_JSON``, or to stdout."""
    path = os.environ.get(ENVIRONMENT_VARIABLE, "-")
    if path in ("", "-"):
        return json_lines_observer(sys.stdout)
    return json_lines_observer(LogFile.fromFullPath(os.path.abspath(path)))
