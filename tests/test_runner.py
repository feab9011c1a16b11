"""A thread pool its owner never stopped must not keep the program from exiting."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    from twisted.internet import reactor
    from chatapp.runner import ThreadRunner

    runner = ThreadRunner(reactor, 1, "left-running")
    runner.start()

    def ran(_):
        print("ran", flush=True)
        reactor.stop()  # the owner's stop was given up (a timeout): nobody stops the runner

    reactor.callWhenRunning(lambda: runner.run(sum, [1, 2]).addCallback(ran))
    reactor.run()
    """
)


def test_a_runner_left_running_is_stopped_with_the_reactor_and_the_process_ends() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=root, env={"PYTHONPATH": str(root)}, capture_output=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"ran\n"
