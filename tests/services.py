"""Real PostgreSQL and Redis servers for the tests, started in a temporary directory on loopback ports.

Debian's packages provide the binaries (``.ci/run`` installs them when they
are missing). PostgreSQL refuses to run as root: as root, the cluster is made
and run by the unprivileged ``postgres`` user the package creates, in a
directory that user owns. A service that cannot start raises
:class:`ServiceError` with what it said; the fixtures turn that into a failed
test, never a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 30.0
SUPERUSER = "chatapp_test"


class ServiceError(Exception):
    """A service could not be started; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise ServiceError(
            f"PostgreSQL's {name} is not installed (apt-get install postgresql, or run .ci/run which does)"
        )
    return candidates[-1]


def _as_service_user() -> tuple[list[str], int | None]:
    """The command prefix that drops root to ``postgres``, and that user's uid (None when not root)."""
    if os.geteuid() != 0:
        return [], None
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        raise ServiceError("running as root and there is no 'postgres' user to run PostgreSQL as") from None
    return ["runuser", "-u", "postgres", "--"], uid


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ServiceError(f"{what} failed ({result.returncode}): {result.stdout}{result.stderr}".strip())


class Postgres:
    """One throwaway PostgreSQL cluster: trust authentication on 127.0.0.1 only, fsync off."""

    def __init__(self) -> None:
        # Not pytest's tmp_path: that is private to root (0700), and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="chatapp-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._prefix, uid = _as_service_user()
        if uid is not None:
            os.chown(self.root, uid, -1)
        self._databases = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        _run(
            [*self._prefix, _pg_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            "initdb",
        )  # fmt: skip
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        _run(
            [*self._prefix, _pg_bin("pg_ctl"), "start", "-D", str(self.data), "-l", str(self.log), "-w",
             "-t", str(int(START_TIMEOUT)), "-o", options],
            f"pg_ctl start (log: {self.log_text()!r})",
        )  # fmt: skip

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                subprocess.run(
                    [*self._prefix, _pg_bin("pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w"],
                    capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                )  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Redis:
    """One throwaway redis-server on 127.0.0.1, nothing saved to disk."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chatapp-redis-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError("redis-server is not installed (apt-get install redis-server, or run .ci/run)")
        log = self.root / "redis.log"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.command(b"PING") == b"+PONG\r\n":
                    return
            except OSError:
                pass
            time.sleep(0.05)  # a fixture waiting for a process to start; no test sleeps
        text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.stop()
        raise ServiceError(f"redis-server did not start on port {self.port}: {text}")

    def command(self, *words: bytes, db: int = 0) -> bytes:
        """Send one command with a one-line reply (PING, FLUSHALL) after SELECT db; that raw line."""
        request = b""
        for command in ([b"SELECT", str(db).encode()], list(words)):
            request += b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in command)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request)
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        _, _, rest = reply.partition(b"\r\n")
        return rest

    def flush(self) -> None:
        self.command(b"FLUSHALL")

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
