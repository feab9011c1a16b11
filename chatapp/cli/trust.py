"""How the console trusts a chat server on first contact (PROTOCOL.md 4.1): the TLS options it gives the
client library, and the question asked on a terminal.

A changed key is never asked about: the library refuses it with the loud message. Without a terminal
and without ``--server-fingerprint`` or ``--trust-on-first-use`` an unknown server is refused with its
fingerprint in the message (exit code 11).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from twisted.internet import defer, threads

from .options import Settings

QUESTION = "trust this server? (yes/no) "


def ask_on_terminal(where: str, fingerprint: str, stdin: TextIO, stdout: TextIO) -> bool:
    """Show the fingerprint and ask; only "yes" (or "y") trusts. Blocking: run it in a thread."""
    stdout.write(
        f"The chat server at {where} is not known yet. Its key fingerprint is\n"
        f"    {fingerprint}\n"
        "Compare it with the one its operator publishes (chatapp-admin fingerprint) before you say yes.\n"
    )
    while True:
        stdout.write(QUESTION)
        stdout.flush()
        answer = stdin.readline()
        if not answer:  # end of input: no
            stdout.write("\n")
            return False
        word = answer.strip().lower()
        if word in ("yes", "y"):
            return True
        if word in ("no", "n"):
            return False
        stdout.write('please answer "yes" or "no"\n')


def server_options(reactor: Any, settings: Settings) -> dict[str, Any]:
    """The TLS keyword arguments for ``ChatClient(server_options=...)``."""
    options: dict[str, Any] = {
        "no_tls": settings.no_tls,
        "server_fingerprint": settings.server_fingerprint,
        "trust_on_first_use": settings.trust_on_first_use,
    }
    asked = settings.server_fingerprint is None and not settings.trust_on_first_use
    if asked and sys.stdin.isatty() and sys.stdout.isatty():

        def confirm(where: str, fingerprint: str) -> defer.Deferred[bool]:
            pool = reactor.getThreadPool()
            return threads.deferToThreadPool(reactor, pool, ask_on_terminal, where, fingerprint, sys.stdin, sys.stdout)

        options["confirm"] = confirm
    return options
