"""The ``chatapp`` command line: options (before or after a subcommand), sizes, defaults, the config file.

Pure but for reading the config file: :func:`parse_args` takes the
environment and a reader so tests need no home directory.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from chatapp import __version__

DEFAULT_SERVER = "localhost:8750"
DEFAULT_LISTEN = "tcp:0"
DEFAULT_DOWNLOADS = os.path.join("~", "Downloads", "chatapp")
DEFAULT_MAX_FILE_SIZE = 64 * 1024**3
DEFAULT_ONESHOT_OFFER_TIMEOUT = 300.0  # seconds an offer of `chatapp send` waits for an answer
MAX_CONFIG_BYTES = 64 * 1024  # a config file larger than this is refused, not read

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
    accept_changed_keys: bool = False  # send/listen: take a contact's changed key instead of refusing the chat
    password_file: str | None = None
    debug: bool = False
    debug_log: str | None = None  # None: stderr, or chatapp-debug.log in interactive mode
    interactive: bool = False  # decided by main(): chat mode with a terminal on stdin and stdout
    send_to: str | None = None
    paths: list[str] = field(default_factory=list)
    offer_timeout: float | None = None  # seconds an offer we make waits for an answer; None: forever
    log_dir: str | None = None  # chat logs on disk (the interactive console's --log-dir); None: off
    config: str | None = None  # the config file read, if any
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
    parser.add_argument(
        "--offer-timeout",
        metavar="SECONDS",
        default=s,
        help="cancel a file offer nobody answered after SECONDS (default: chatapp send "
        f"{DEFAULT_ONESHOT_OFFER_TIMEOUT:.0f}, otherwise wait; 0: wait forever)",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=s,
        help="the config file (default $XDG_CONFIG_HOME/chatapp/config.toml, else ~/.config/chatapp/config.toml)",
    )
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
        "10 logged in elsewhere (send, listen), 11 the server's key is not trusted,\n"
        "12 stdout was not read (too much output waiting), 13 a contact's key changed.\n"
        "Details: docs/console.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"chatapp {__version__}")
    _add_common(parser)
    sub = parser.add_subparsers(dest="mode", metavar="{send,listen}")
    send = sub.add_parser("send", help="send files to a user, then exit", description="Send files, then exit.")
    _add_common(send)
    send.add_argument("to", metavar="USER")
    send.add_argument("paths", metavar="PATH", nargs="+")
    listen = sub.add_parser("listen", help="stay logged in and print chat and transfer events until stopped",
                            description="Stay online, print events; --accept-files saves offered files.")  # fmt: skip
    _add_common(listen)
    for one_shot in (send, listen):
        one_shot.add_argument(
            "--accept-changed-keys", action="store_true", default=argparse.SUPPRESS,
            help="a contact whose key changed since the last chat is accepted (and remembered) instead of refused",
        )  # fmt: skip
    parser.add_argument(
        "--log-dir", metavar="DIR", default=argparse.SUPPRESS,
        help="interactive: append each chat to DIR/<user>.log (mode 0600; off by default)",
    )  # fmt: skip
    return parser


def parse_seconds(text: str, what: str = "--offer-timeout") -> float | None:
    """A number of seconds (``0``: never) for ``what``."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what}: not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"{what}: the seconds must be 0 (never) or more")
    return value or None


def config_path(environ: Mapping[str, str] = os.environ) -> str:
    """Where the config file is by default: ``$XDG_CONFIG_HOME/chatapp/config.toml``."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "chatapp", "config.toml")


# key in the file -> (Settings field, kind); kinds are checked by _config_value
CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "server": ("server", "str"),
    "user": ("user", "str"),
    "downloads": ("downloads", "str"),
    "listen": ("listen", "listen"),
    "max-file-size": ("max_file_size", "size"),
    "accept-files": ("accept_files", "bool"),
    "log-dir": ("log_dir", "str"),
    "offer-timeout": ("offer_timeout", "seconds"),
}


def read_config(path: str) -> dict[str, Any] | None:
    """The settings in the TOML file at ``path`` by Settings field; None if there is no file.

    Raises :class:`UsageError` naming the file, and the line or the key, for a
    file that cannot be used: a syntax error, an unknown key, a wrong type.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"cannot read the config file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UsageError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; is it the right file?")
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: {e}") from None  # tomllib says "(at line N, column M)"
    found: dict[str, Any] = {}
    for key, value in table.items():
        known = CONFIG_KEYS.get(key)
        if known is None:
            raise UsageError(f"{path}: unknown key {key!r} (known: {', '.join(CONFIG_KEYS)})")
        name, kind = known
        found[name] = _config_value(path, key, kind, value)
    return found


def _config_value(path: str, key: str, kind: str, value: Any) -> Any:
    def wrong(expected: str) -> UsageError:
        return UsageError(f"{path}: key {key!r} must be {expected}, not {value!r}")

    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind == "size":
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
        if not isinstance(value, str):
            raise wrong("a size such as \"2G\" or a number of bytes")
        try:
            return parse_size(value)
        except UsageError as e:
            raise UsageError(f"{path}: key {key!r}: {e}") from None
    if kind == "seconds":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number of seconds")
        try:
            return parse_seconds(str(value), key)
        except UsageError as e:
            raise UsageError(f"{path}: {e}") from None
    if kind == "listen" and value is False:
        return None  # listen = false: --no-listen
    if not isinstance(value, str) or not value:
        raise wrong("a non-empty string" + (" or false" if kind == "listen" else ""))
    return value


def parse_args(argv: list[str], environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings for ``argv`` over the config file; raises :class:`UsageError` (``SystemExit(0)`` for ``--help``)."""
    ns = build_parser().parse_args(argv)
    given = vars(ns)
    settings = Settings()
    path = os.path.expanduser(given["config"]) if "config" in given else config_path(environ)
    from_file = read_config(path)
    if from_file is None and "config" in given:
        raise UsageError(f"no config file {path}")
    if from_file is not None:
        settings.config = path
        for name, value in from_file.items():
            setattr(settings, name, value)
    settings.mode = given.get("mode") or "chat"
    if "server" in given:
        settings.server = given["server"]
    if "user" in given:
        settings.user = given["user"]
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
    if given.get("accept_files"):
        settings.accept_files = True
    if given.get("accept_changed_keys"):
        settings.accept_changed_keys = True
    if "offer_timeout" in given:
        settings.offer_timeout = parse_seconds(given["offer_timeout"])
    elif settings.mode == "send" and (from_file is None or "offer_timeout" not in from_file):
        settings.offer_timeout = DEFAULT_ONESHOT_OFFER_TIMEOUT
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
            if os.path.isdir(os.path.expanduser(path)):
                raise UsageError(f"{path} is a directory: directories are not supported yet, send the files")
            if not os.path.isfile(os.path.expanduser(path)):
                raise UsageError(f"not a readable file: {path}")
    if "log_dir" in given:
        settings.log_dir = given["log_dir"]
    return settings
