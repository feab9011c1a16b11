"""Real ``chatapp`` processes for end-to-end tests: script mode over pipes, lines awaited with deadlines."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

from processes import BIN

CHATAPP = BIN / "chatapp"
PASSWORD = "correct horse battery"


class Chatapp:
    """One ``chatapp`` subprocess; ``expect`` reads its stdout up to a matching line."""

    def __init__(self, *args: str, cwd: Path, password: str = PASSWORD, stdin: int | None = subprocess.PIPE) -> None:
        # XDG_CONFIG_HOME and XDG_DATA_HOME are each test's own folders (conftest): no config file or
        # key of the machine's user, and the test server's key pinned there
        env = dict(os.environ, CHATAPP_PASSWORD=password)
        self.process = subprocess.Popen(
            [str(CHATAPP), *args],
            cwd=cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self._buffer = b""
        self._read = 0  # lines already matched or skipped by expect()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode("utf-8") + b"\n")
        self.process.stdin.flush()

    def close_stdin(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()

    def _pump(self, timeout: float) -> bool:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=max(0.0, timeout)):
                return True
        chunk = os.read(self.process.stdout.fileno(), 65536)
        if not chunk:
            return False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        self.lines.extend(raw.decode("utf-8", "replace") for raw in lines)
        return True

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first line from here on matching ``pattern`` (a regex searched in the line)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._read < len(self.lines):
                line = self.lines[self._read]
                self._read += 1
                match = regex.search(line)
                if match:
                    return match
            left = deadline - time.monotonic()
            if left <= 0 or not self._pump(left):
                raise AssertionError(
                    f"no line matching {pattern!r}; stdout was:\n"
                    + "\n".join(self.lines)
                    + f"\nstderr: {self.stderr()}"
                )

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(still running)"
        return self.process.stderr.read().decode("utf-8", "replace")

    def finish(self, timeout: float = 15.0) -> tuple[int, str, str]:
        """Wait for the exit; (code, all of stdout, stderr)."""
        if self.process.stdin is not None and self.process.stdin.closed:
            self.process.stdin = None
        out, err = self.process.communicate(timeout=timeout)
        text = out.decode("utf-8", "replace")
        if self._buffer or text:
            tail = (self._buffer + out).decode("utf-8", "replace").split("\n")
            self.lines.extend(line for line in tail if line)
            self._buffer = b""
        return self.process.returncode, "\n".join(self.lines), err.decode("utf-8", "replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
