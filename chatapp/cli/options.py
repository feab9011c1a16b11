"""The ``chatapp`` command line: options (before or after a subcommand), sizes, defaults.  Pure: no I/O."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

DEFAULT_SERVER = "localhost:8750"
DEFAULT_LISTEN = "tcp:0"
DEFAULT_DOWNLOADS = os.path.join("~", "Downloads", "chatapp")
DEFAULT_MAX_FILE_SIZE = 64 * 1024**3

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class UsageError(Exception):
    """The command line cannot be used; ``str()`` says why in one line."""


def parse_size(text: str) -> int:
    """``10M``, ``2G``, ``500k``, ``1.5G``, ``123`` (bytes); units are powers of 1024, ``B``/``iB`` allowed."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise UsageError(f"not a size: {text!r} (examples: 500k, 10M, 2G, 123456)")
    number, unit = match.groups()
    scale = _UNITS[(unit or "").lower()]
    value = int(float(number) * scale) if "." in number else int(number) * scale
    if value <= 0:
        raise UsageError("the size must be more than 0 bytes")
    return value


@dataclass
class Settings:
    """Everything the command line decided; ``None`` means "ask on the terminal, or fail"."""

    mode: str = "chat"  # chat | send | listen
    server: str = DEFAULT_SERVER
    user: str | None = None
    signup: bool | None = None  # None: not said (ask on a terminal; log in otherwise)
    listen: str | None = DEFAULT_LISTEN  # None: --no-listen
    downloads: str = DEFAULT_DOWNLOADS
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    accept_files: bool = False
    password_file: str | None = None
    debug: bool = False
    debug_log: str | None = None  # None: stderr, or chatapp-debug.log in interactive mode
    interactive: bool = False  # decided by main(): chat mode with a terminal on stdin and stdout
    send_to: str | None = None
    paths: list[str] = field(default_factory=list)
    # The server link's TLS (issue 12): how a first contact is trusted; --no-tls for a --no-tls server.
    server_fingerprint: str | None = None
    trust_on_first_use: bool = False
    no_tls: bool = False


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # so --password can never slip in as --password-file
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _add_common(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS everywhere: an option given before the subcommand must survive the subparser's defaults.
    s = argparse.SUPPRESS
    parser.add_argument(
        "--server",
        metavar="HOST[:PORT]|ENDPOINT",
        default=s,
        help=f"the chat server (default {DEFAULT_SERVER}, or an endpoint: tcp:host=H:port=P)",
    )
    parser.add_argument("--user", metavar="NAME", default=s, help="your user name (asked on a terminal if missing)")
    parser.add_argument("--signup", action="store_true", default=s, help="create the account instead of logging in")
    parser.add_argument("--login", action="store_true", default=s, help="log in (the default when not on a terminal)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--listen",
        metavar="ENDPOINT",
        default=s,
        help=f"where to accept chats from others (default {DEFAULT_LISTEN}: any free port)",
    )
    group.add_argument("--no-listen", action="store_true", default=s, help="do not accept chats from others")
    parser.add_argument(
        "--downloads", metavar="DIR", default=s, help=f"where received files go (default {DEFAULT_DOWNLOADS}, created)"
    )
    parser.add_argument(
        "--max-file-size",
        metavar="SIZE",
        default=s,
        help="refuse offers larger than this: 500k, 10M, 2G or bytes (default 64G)",
    )
    parser.add_argument("--accept-files", action="store_true", default=s, help="accept every file offered")
    parser.add_argument(
        "--password-file",
        metavar="PATH",
        default=s,
        help="read the password from the first line of this file (else CHATAPP_PASSWORD, else asked)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=s,
        help="write a debug log (to stderr; on a terminal to ./chatapp-debug.log)",
    )
    parser.add_argument("--debug-log", metavar="PATH", default=s, help="the file for --debug's log")
    # -- the server link's TLS (issue 12) --
    parser.add_argument(
        "--server-fingerprint",
        metavar="sha256:HEX",
        default=s,
        help="the server's key as its operator publishes it (chatapp-admin fingerprint); checked, then remembered",
    )
    parser.add_argument(
        "--trust-on-first-use",
        action="store_true",
        default=s,
        help="trust and remember an unknown server's key without asking (a changed key is still refused)",
    )
    parser.add_argument(
        "--no-tls", action="store_true", default=s, help="plain TCP, only to a server run with --no-tls"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chatapp",
        description="Chat and send files directly to other users of a chatapp server.",
        epilog="chatapp alone chats: interactively on a terminal, else commands from stdin (script mode).\n"
        "exit codes: 0 done, 1 a command or transfer failed, 2 usage, 3 server unreachable,\n"
        "4 wrong user name or password, 5 address blocked, 6 account locked, 7 name taken,\n"
        "8 bad user name or password form, 9 server busy or too many signups (try later),\n"
        "10 the server's key is not trusted (unknown and unconfirmed, or changed).\n"
        "Details: docs/console.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser)
    sub = parser.add_subparsers(dest="mode", metavar="{send,listen}")
    send = sub.add_parser("send", help="send files to a user, then exit", description="Send files, then exit.")
    _add_common(send)
    send.add_argument("to", metavar="USER")
    send.add_argument("paths", metavar="PATH", nargs="+")
    listen = sub.add_parser("listen", help="stay logged in and print chat and transfer events until stopped",
                            description="Stay online, print events; --accept-files saves offered files.")  # fmt: skip
    _add_common(listen)
    return parser


def parse_args(argv: list[str]) -> Settings:
    """The settings for ``argv``; raises :class:`UsageError` (and ``SystemExit(0)`` for ``--help``)."""
    ns = build_parser().parse_args(argv)
    given = vars(ns)
    settings = Settings()
    settings.mode = given.get("mode") or "chat"
    if "server" in given:
        settings.server = given["server"]
    settings.user = given.get("user")
    if given.get("signup") and given.get("login"):
        raise UsageError("--signup and --login exclude each other")
    if given.get("signup"):
        settings.signup = True
    elif given.get("login"):
        settings.signup = False
    if given.get("no_listen"):
        settings.listen = None
    elif "listen" in given:
        settings.listen = given["listen"]
    if "downloads" in given:
        settings.downloads = given["downloads"]
    if "max_file_size" in given:
        settings.max_file_size = parse_size(given["max_file_size"])
    settings.accept_files = bool(given.get("accept_files"))
    settings.password_file = given.get("password_file")
    settings.debug_log = given.get("debug_log")
    settings.debug = bool(given.get("debug")) or settings.debug_log is not None
    # -- the server link's TLS (issue 12) --
    if given.get("server_fingerprint") is not None:
        from chatapp.tls.fingerprint import BadFingerprint, parse_fingerprint

        try:
            settings.server_fingerprint = parse_fingerprint(given["server_fingerprint"])
        except BadFingerprint:
            raise UsageError("--server-fingerprint: expected sha256: and 64 hex digits") from None
    settings.trust_on_first_use = bool(given.get("trust_on_first_use"))
    settings.no_tls = bool(given.get("no_tls"))
    if settings.no_tls and (settings.server_fingerprint or settings.trust_on_first_use):
        raise UsageError("--no-tls checks no key: leave out --server-fingerprint and --trust-on-first-use")
    if settings.mode == "send":
        settings.send_to = given["to"]
        settings.paths = list(given["paths"])
        for path in settings.paths:
            if not os.path.isfile(os.path.expanduser(path)):
                raise UsageError(f"not a readable file: {path}")
    return settings
