"""twistd without -n: the server daemonizes, logs to its file, stops cleanly on SIGTERM; JSON log lines.

The daemon is not our child (twistd forks twice), so it is watched through
its pidfile and /proc, and killed by pid if a test fails half-way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import tls_connect
from twisted.logger import LogLevel, formatEvent

from chatapp import logjson

BIN = Path(sys.executable).parent
LISTENING = re.compile(r"chatserver listening on IPv4Address\(type='TCP', host='127\.0\.0\.1', port=(\d+)\)")
PASSWORD = "correct horse battery"


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (nobody may reap an orphaned daemon here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Daemon:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pidfile = folder / "twistd.pid"
        self.logfile = folder / "twistd.log"
        self.db = folder / "chatserver.sqlite3"
        self.pid: int | None = None

    def start(self, *twistd_options: str, env: dict[str, str] | None = None) -> None:
        """Start ``twistd chatserver`` daemonized and wait for its pidfile."""
        argv = [str(BIN / "twistd"), "--pidfile", str(self.pidfile), *twistd_options, "chatserver"]
        argv += ["--listen", "tcp:0:interface=127.0.0.1", "--db", str(self.db), "--bcrypt-rounds", "4"]
        argv += ["--max-attempts", "2"]
        starter = subprocess.run(
            argv, cwd=self.folder, capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})}
        )
        # The starting process returns once the daemon reports that the service started.
        assert starter.returncode == 0, starter.stdout + starter.stderr
        text = wait_for(lambda: self.pidfile.exists() and self.pidfile.read_text().strip(), "the pidfile")
        self.pid = int(text)
        assert alive(self.pid)

    def stop(self) -> None:
        if self.pid is not None and alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            wait_for(lambda: not alive(self.pid), "the daemon to die", timeout=10)  # type: ignore[arg-type]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


class Client:
    def __init__(self, port: int) -> None:
        self.sock = tls_connect(port)
        self.lines = self.sock.makefile("rb")
        assert self.read() == "* HELLO chatapp/2"

    def read(self) -> str:
        line = self.lines.readline().decode()
        return line[:-2] if line.endswith("\r\n") else line

    def ask(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.read()

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def exercise(port: int) -> list[Client]:
    """A signup, a failed and a good login, and a failure pair that blocks an address and locks a name.

    Returns the connections still open (both logged in)."""
    alice = Client(port)
    assert alice.ask(f"SIGNUP alice {PASSWORD}") == "OK SIGNUP alice"
    again = Client(port)
    assert again.ask("LOGIN alice not the password") == "ERR 401 bad-credentials 1 wrong user name or password"
    assert again.ask(f"LOGIN Alice {PASSWORD}") == "OK LOGIN alice"
    alice.sock.settimeout(10)
    assert alice.read() == "* BYE replaced"
    alice.close()
    mallory = Client(port)
    try:
        assert mallory.ask("LOGIN bob guess number one") == "ERR 401 bad-credentials 1 wrong user name or password"
        assert mallory.ask("LOGIN bob guess number two").startswith("ERR 429 blocked ")
    finally:
        mallory.close()
    return [again]


@pytest.mark.slow
def test_daemon_logs_serves_and_stops_cleanly_on_sigterm(daemon: Daemon) -> None:
    daemon.start("--logfile", str(daemon.logfile))
    found = wait_for(lambda: LISTENING.search(daemon.logfile.read_text()), "the listening line")
    port = int(found.group(1))
    open_clients = exercise(port)
    try:
        assert daemon.pid is not None
        os.kill(daemon.pid, signal.SIGTERM)
        for client in open_clients:
            assert client.read() == "* BYE shutdown"
            assert client.read() == ""
    finally:
        for client in open_clients:
            client.close()
    wait_for(lambda: not daemon.pidfile.exists(), "the pidfile to go")
    wait_for(lambda: not alive(daemon.pid), "the daemon to exit")  # type: ignore[arg-type]

    # The store was closed: the WAL was checkpointed into the file and removed.
    assert not Path(f"{daemon.db}-wal").exists()
    with sqlite3.connect(daemon.db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (name, last_login) = conn.execute("SELECT name, last_login FROM users").fetchone()
        assert name == "alice" and last_login is not None
        kinds = conn.execute("SELECT kind, key FROM blocks ORDER BY kind").fetchall()
        assert kinds == [("address", "127.0.0.1"), ("name", "bob")]

    log = daemon.logfile.read_text()
    for line in (
        r"\[chatapp\.server\.protocol#info\] signup alice from 127\.0\.0\.1$",
        r"\[chatapp\.server\.protocol#warn\] failed login for alice from 127\.0\.0\.1$",
        r"\[chatapp\.server\.protocol#info\] login alice from 127\.0\.0\.1$",
        r"\[chatapp\.server\.protocol#warn\] failed login for bob from 127\.0\.0\.1$",
        r"\[chatapp\.server\.protocol#warn\] blocked address 127\.0\.0\.1 for 300 s$",
        r"\[chatapp\.server\.protocol#warn\] locked user bob for 300 s$",
        r"chatserver stopped$",
    ):
        assert re.search(line, log, re.M), f"no line matching {line!r} in:\n{log}"
    assert PASSWORD not in log and "guess number" not in log


@pytest.mark.slow
def test_daemon_with_json_log_lines(daemon: Daemon) -> None:
    json_log = daemon.folder / "chatserver.json"
    daemon.start("--logger", "chatapp.logjson.observer", env={logjson.ENVIRONMENT_VARIABLE: str(json_log)})

    def events() -> list[dict[str, Any]]:
        text = json_log.read_text() if json_log.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def port() -> int | None:
        for e in events():
            found = LISTENING.search(e["message"])
            if found:
                return int(found.group(1))
        return None

    clients = exercise(wait_for(port, "the listening event"))
    for client in clients:
        client.close()
    assert daemon.pid is not None
    os.kill(daemon.pid, signal.SIGTERM)
    wait_for(lambda: not daemon.pidfile.exists(), "the pidfile to go")
    wait_for(lambda: not alive(daemon.pid), "the daemon to exit")  # type: ignore[arg-type]

    ours = [e for e in events() if e["namespace"] == "chatapp.server.protocol"]
    summary = [(e["level"], e["message"]) for e in ours]
    assert summary == [
        ("info", "signup alice from 127.0.0.1"),
        ("warn", "failed login for alice from 127.0.0.1"),
        ("info", "login alice from 127.0.0.1"),
        ("warn", "failed login for bob from 127.0.0.1"),
        ("warn", "failed login for bob from 127.0.0.1"),
        ("warn", "blocked address 127.0.0.1 for 300 s"),
        ("warn", "locked user bob for 300 s"),
    ]
    assert ours[0]["user"] == "alice" and ours[0]["address"] == "127.0.0.1"
    assert ours[5]["seconds"] == 300.0
    for e in events():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"])
    assert PASSWORD not in json_log.read_text()


# -- chatapp.logjson without a daemon ---------------------------------------------------


def test_json_record_has_text_fields_and_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        from twisted.python.failure import Failure

        failure = Failure()
    event = {
        "log_time": 1767225600.25,
        "log_level": LogLevel.warn,
        "log_namespace": "chatapp.test",
        "log_format": "failed login for {user} from {address} ({extra})",
        "log_failure": failure,
        "user": "bob",
        "address": "192.0.2.1",
        "extra": object(),
    }
    record = logjson.event_record(event)
    assert record["time"] == "2026-01-01T00:00:00.250Z"
    assert record["level"] == "warn"
    assert record["namespace"] == "chatapp.test"
    assert record["message"] == formatEvent(event)
    assert record["user"] == "bob" and record["address"] == "192.0.2.1"
    assert record["extra"].startswith("<object object")
    assert "ValueError: boom" in record["traceback"]
    line = logjson.format_json_line(event)
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == record


def test_json_line_of_a_legacy_event_keeps_only_its_text() -> None:
    event = {
        "log_time": 0.0,
        "log_level": LogLevel.info,
        "log_namespace": "log_legacy",
        "log_format": "{log_text}",
        "log_text": "ServerFactory starting on 8750",
        "message": ("ServerFactory starting on 8750",),
        "system": "-",
        "isError": 0,
        "time": 0.0,
        "format": "%(x)s",
    }
    assert json.loads(logjson.format_json_line(event)) == {
        "time": "1970-01-01T00:00:00.000Z",
        "level": "info",
        "namespace": "log_legacy",
        "message": "ServerFactory starting on 8750",
    }


def test_observer_writes_to_the_file_named_in_the_environment(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "log.json"
    monkeypatch.setenv(logjson.ENVIRONMENT_VARIABLE, str(path))
    observer = logjson.observer()
    observer({"log_time": 1.0, "log_level": LogLevel.info, "log_namespace": "t", "log_format": "hi {who}", "who": "ü"})
    assert json.loads(path.read_text(encoding="utf-8"))["message"] == "hi ü"


def test_observer_defaults_to_stdout(capsys, monkeypatch) -> None:
    monkeypatch.delenv(logjson.ENVIRONMENT_VARIABLE, raising=False)
    observer = logjson.observer()
    observer({"log_time": 1.0, "log_level": LogLevel.error, "log_namespace": "t", "log_format": "x"})
    assert json.loads(capsys.readouterr().out)["level"] == "error"
