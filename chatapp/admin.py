"""``chatapp-admin``: look after the server's database — accounts, passwords, blocks and locks.

Safe while the server runs: the database is in WAL mode, every command is one
short transaction, and a busy database is waited for (``busy_timeout``) rather
than failed at once. The server reads blocks from the database on every
connection and login, so an ``unblock`` takes effect at once.

It never creates or migrates a database: a missing file, a file that is not a
chatapp database, or one of another schema version is a one-line error.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TextIO
from urllib.parse import quote

import bcrypt

from chatapp.server.store import ADDRESS, NAME, SCHEMA_VERSION
from chatapp.tls.fingerprint import fingerprint_of
from chatapp.tls.paths import server_certificate_path
from chatapp.wire import escape_for_terminal, fold_name, valid_password, valid_username

PROG = "chatapp-admin"
DEFAULT_DB = "chatserver.sqlite3"  # the server's default --db
BUSY_TIMEOUT_MS = 10_000

EXIT_OK = 0
EXIT_ERROR = 1  # the command could not be done (no such user, nothing to unblock, bad database)
EXIT_USAGE = 2  # argparse's code for a bad command line
EXIT_INTERRUPTED = 130


class AdminError(Exception):
    """A reason the command failed; its message is the one line shown to the user."""


# -- the database ------------------------------------------------------------


def open_db(path: str) -> sqlite3.Connection:
    """Open an existing chatapp database for reading and writing; never create one."""
    if not os.path.exists(path):
        raise AdminError(f"no database at {path!r} (give the server's --db file)")
    if not os.path.isfile(path):
        raise AdminError(f"{path!r} is not a file")
    uri = "file:" + quote(os.path.abspath(path)) + "?mode=rw"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise AdminError(f"cannot open database {path!r}: {e}") from None
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        db.close()
        raise AdminError(f"{path!r} is not a chatapp database ({e})") from None
    if version == 0 or not {"users", "blocks"} <= tables:
        db.close()
        raise AdminError(f"{path!r} is not a chatapp database (no users and blocks tables)")
    if version != SCHEMA_VERSION:
        db.close()
        raise AdminError(
            f"database {path!r} has schema version {version}; this chatapp-admin knows version {SCHEMA_VERSION}"
        )
    return db


def normalize_address(text: str) -> str | None:
    """The key the server blocks an address under, or None if ``text`` is no IP address."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0] if ":" in text else text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


# -- formatting --------------------------------------------------------------


def format_time(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    utc = timezone.utc  # noqa: UP017 (datetime.UTC is 3.11+; setup.cfg allows 3.10)
    return datetime.fromtimestamp(epoch, tz=utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float) -> str:
    """Whole seconds, rounded up as the server does: ``45s``, ``4m 05s``, ``2h 00m 01s``, ``3d 04h``."""
    total = max(1, math.ceil(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def print_table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


def shown(text: str) -> str:
    """Text from the database, safe to print on a terminal."""
    return escape_for_terminal(text)


# -- the commands --------------------------------------------------------------


def cmd_users(db: sqlite3.Connection, args: argparse.Namespace, out: TextIO) -> int:
    now = time.time()
    locks = {
        key: until
        for key, until in db.execute("SELECT key, until FROM blocks WHERE kind = ? AND until > ?", (NAME, now))
    }
    rows = []
    for name_folded, name, created, last_login in db.execute(
        "SELECT name_folded, name, created, last_login FROM users ORDER BY name_folded"
    ):
        until = locks.get(name_folded)
        locked = f"locked, {format_duration(until - now)} left" if until is not None else "no"
        rows.append([shown(name), format_time(created), format_time(last_login), locked])
    if not rows:
        out.write("no users\n")
        return EXIT_OK
    print_table(out, ["USER", "CREATED", "LAST LOGIN", "LOCKED"], rows)
    out.write(f"{len(rows)} user{'s' if len(rows) != 1 else ''}\n")
    return EXIT_OK


def _existing_name(db: sqlite3.Connection, user: str) -> str:
    row = db.execute("SELECT name FROM users WHERE name_folded = ?", (fold_name(user),)).fetchone()
    if row is None:
        raise AdminError(f"no such user: {shown(user)}")
    return str(row[0])


def cmd_delete(db: sqlite3.Connection, args: argparse.Namespace, out: TextIO) -> int:
    name = _existing_name(db, args.user)
    cursor = db.execute("DELETE FROM users WHERE name_folded = ?", (fold_name(args.user),))
    if cursor.rowcount != 1:
        raise AdminError(f"no such user: {shown(args.user)}")
    out.write(f"deleted user {shown(name)}\n")
    return EXIT_OK


def read_new_password(stdin: TextIO) -> str:
    """A new password: prompted twice without echo on a terminal, else the first line of stdin."""
    if stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            raise AdminError("the two passwords differ; nothing changed")
        return first
    binary = getattr(stdin, "buffer", None)
    if binary is not None:
        raw = binary.readline()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AdminError("the password on stdin is not valid UTF-8; nothing changed") from None
    else:
        line = stdin.readline()
    if not line:
        raise AdminError("no password on stdin; nothing changed")
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def cmd_reset_password(db: sqlite3.Connection, args: argparse.Namespace, out: TextIO) -> int:
    name = _existing_name(db, args.user)
    password = read_new_password(sys.stdin)
    if not valid_password(password):
        raise AdminError("passwords are 8-72 bytes of UTF-8; nothing changed")
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(args.bcrypt_rounds))
    cursor = db.execute("UPDATE users SET password_hash = ? WHERE name_folded = ?", (hashed, fold_name(name)))
    if cursor.rowcount != 1:
        raise AdminError(f"no such user: {shown(args.user)} (deleted meanwhile)")
    out.write(f"password changed for {shown(name)}\n")
    return EXIT_OK


def cmd_blocks(db: sqlite3.Connection, args: argparse.Namespace, out: TextIO) -> int:
    now = time.time()
    rows = []
    for kind, key, until in db.execute(
        "SELECT kind, key, until FROM blocks WHERE until > ? ORDER BY kind, key", (now,)
    ):
        what = "address" if kind == ADDRESS else "user"
        rows.append([what, shown(key), format_duration(until - now), format_time(until)])
    if not rows:
        out.write("no blocks\n")
        return EXIT_OK
    print_table(out, ["KIND", "BLOCKED", "TIME LEFT", "UNTIL"], rows)
    return EXIT_OK


def cmd_unblock(db: sqlite3.Connection, args: argparse.Namespace, out: TextIO) -> int:
    target: str = args.target
    now = time.time()
    candidates: list[tuple[str, str, str]] = []
    address = normalize_address(target)
    if address is not None:
        candidates.append((ADDRESS, address, f"unblocked address {address}"))
    if valid_username(target):  # a name like 10.0.0.1 is possible: both are tried
        candidates.append((NAME, fold_name(target), f"unlocked user {fold_name(target)}"))
    if not candidates:
        raise AdminError(f"{shown(target)} is neither an IP address nor a user name")
    lifted = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for kind, key, message in candidates:
            cursor = db.execute("DELETE FROM blocks WHERE kind = ? AND key = ? AND until > ?", (kind, key, now))
            # An expired row blocks nothing; tidy it away without calling it an unblock.
            db.execute("DELETE FROM blocks WHERE kind = ? AND key = ? AND until <= ?", (kind, key, now))
            if cursor.rowcount:
                lifted.append(message)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    if not lifted:
        raise AdminError(f"nothing to unblock: {shown(target)} is not blocked")
    for message in lifted:
        out.write(message + "\n")
    return EXIT_OK


# -- the command line --------------------------------------------------------------


def _rounds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 4 <= value <= 31:
        raise argparse.ArgumentTypeError(f"{value} is out of range (4..31)")
    return value


def cmd_fingerprint(args: argparse.Namespace, out: TextIO) -> int:
    """Print the fingerprint of the server's TLS certificate, for an operator to publish."""
    from cryptography import x509

    path = args.tls_cert if args.tls_cert is not None else server_certificate_path(args.db)
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        if args.tls_cert is None:
            raise AdminError(f"no certificate at {path}: the server makes it at its first start") from None
        raise AdminError(f"no such file: {path}") from None
    except OSError as e:
        raise AdminError(f"cannot read {path}: {e.strerror}") from None
    try:
        certificate = x509.load_pem_x509_certificate(data)  # the first certificate is the server's own
    except ValueError:
        raise AdminError(f"{path}: no PEM certificate in it") from None
    out.write(f"{fingerprint_of(certificate)}\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look after a chatapp server's database. Safe while the server runs.",
    )
    parser.add_argument(
        "--db", default=DEFAULT_DB, metavar="PATH", help=f"the server's database file (default: {DEFAULT_DB})"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    users = commands.add_parser("users", help="list accounts: created, last login, locked or not (times in UTC)")
    users.set_defaults(run=cmd_users)

    delete = commands.add_parser("delete", help="delete an account")
    delete.add_argument("user", metavar="USER")
    delete.set_defaults(run=cmd_delete)

    reset = commands.add_parser(
        "reset-password",
        help="set a new password (prompted without echo on a terminal, else read as one line from stdin)",
    )
    reset.add_argument("user", metavar="USER")
    reset.add_argument(
        "--bcrypt-rounds", type=_rounds, default=12, metavar="N", help="bcrypt cost factor, 4..31 (default: 12)"
    )
    reset.set_defaults(run=cmd_reset_password)

    blocks = commands.add_parser("blocks", help="list blocked addresses and locked user names, with time left")
    blocks.set_defaults(run=cmd_blocks)

    unblock = commands.add_parser("unblock", help="lift the block of an address or the lock of a user name")
    unblock.add_argument("target", metavar="ADDRESS|USER")
    unblock.set_defaults(run=cmd_unblock)

    fingerprint = commands.add_parser(
        "fingerprint", help="print the server's TLS fingerprint (of chatserver-tls.pem next to --db, or --tls-cert)"
    )
    fingerprint.add_argument("--tls-cert", metavar="PATH", help="the certificate the server is given with --tls-cert")
    fingerprint.set_defaults(run=None, run_without_db=cmd_fingerprint)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code (0 done, 1 failed, 2 bad command line, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    run: Callable[[sqlite3.Connection, argparse.Namespace, TextIO], int] | None = args.run
    try:
        if run is None:  # commands that read no database
            return int(args.run_without_db(args, sys.stdout))
        db = open_db(args.db)
        try:
            return run(db, args, sys.stdout)
        finally:
            db.close()
    except AdminError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return EXIT_ERROR
    except sqlite3.Error as e:
        sys.stderr.write(f"{PROG}: database error: {e}\n")
        return EXIT_ERROR
    except (KeyboardInterrupt, EOFError):
        sys.stderr.write(f"\n{PROG}: interrupted; nothing changed\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
