"""``chatapp-admin``: look after the server's database — accounts, passwords, blocks and locks.

``--db`` is what the server was given: a SQLite file or a ``postgresql://``
URL; every command works the same on both. Safe while the servers run: every
command is one short transaction (a busy SQLite file is waited for, with
``busy_timeout``), and the servers read blocks from the database on every
connection and login, so an ``unblock`` takes effect at once on all of them.

It never creates or migrates a database: a missing file, a database that is
not a chatapp database, or one of another schema version is a one-line error.
``copy`` is the exception: it moves a server's accounts and blocks into
another database, creating the schema there if the target is empty.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TextIO
from urllib.parse import quote

import bcrypt

from chatapp.addresses import limit_key
from chatapp.server.store import ADDRESS, NAME, SCHEMA_VERSION, StoreError, is_postgres_url
from chatapp.server.store import postgres as postgres_store
from chatapp.server.store import sqlite as sqlite_store
from chatapp.tls.fingerprint import fingerprint_of
from chatapp.tls.paths import server_certificate_path
from chatapp.wire import escape_for_terminal, fold_name, valid_password, valid_username

PROG = "chatapp-admin"
DEFAULT_DB = "chatserver.sqlite3"  # the server's default --db
BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT = 10  # seconds to wait for a PostgreSQL server that does not answer

EXIT_OK = 0
EXIT_ERROR = 1  # the command could not be done (no such user, nothing to unblock, bad database)
EXIT_USAGE = 2  # argparse's code for a bad command line
EXIT_INTERRUPTED = 130


class AdminError(Exception):
    """A reason the command failed; its message is the one line shown to the user."""


# -- the database ------------------------------------------------------------


class Database:
    """One connection, SQLite or PostgreSQL, behind the few calls the commands make.

    Statements are written once with ``?`` placeholders and the SQL both
    databases share; outside :meth:`transaction` each statement commits alone.
    """

    def __init__(self, conn: Any, where: str, postgres: bool) -> None:
        self.conn = conn
        self.where = where
        self.postgres = postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.postgres:
            return self.conn.execute(sql.replace("?", "%s"), params)
        return self.conn.execute(sql, params)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self.postgres:
            with self.conn.transaction():
                yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def database_errors() -> tuple[type[BaseException], ...]:
    """The driver errors a command may meet: each is one line for the user."""
    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg
    except ImportError:
        pass
    else:
        errors.append(psycopg.Error)
    return tuple(errors)


def open_db(where: str) -> Database:
    """Open an existing chatapp database (a file or a URL) for reading and writing; never create one."""
    if is_postgres_url(where):
        return _open_postgres(where, create=False)
    return Database(_open_sqlite(where), where, postgres=False)


def _open_sqlite(path: str) -> sqlite3.Connection:
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


def _open_postgres(url: str, create: bool) -> Database:
    """Connect; check the schema (or, with ``create``, create or migrate it as the server would)."""
    where = postgres_store.redacted(url)
    try:
        import psycopg
    except ImportError:
        raise AdminError("PostgreSQL needs psycopg: pip install 'chatapp[postgres]'") from None
    try:
        options = postgres_store.connect_options(url)
        options["application_name"] = PROG
        conn = psycopg.connect(url, autocommit=True, **options)
    except psycopg.Error as e:
        raise AdminError(f"cannot open database {where}: {' '.join(str(e).split())}") from None
    try:
        if create:
            with conn.transaction():
                postgres_store.migrate(conn.cursor(), where)
            return Database(conn, where, postgres=True)
        found: Any = conn.execute(
            "SELECT to_regclass('chatapp_schema') IS NOT NULL,"
            " to_regclass('users') IS NOT NULL AND to_regclass('blocks') IS NOT NULL"
        ).fetchone()
        has_schema, tables = found
        versions = [row[0] for row in conn.execute("SELECT version FROM chatapp_schema")] if has_schema else []
        if len(versions) != 1 or not tables:
            raise AdminError(f"{where} is not a chatapp database (no chatapp_schema, users and blocks tables)")
        if versions[0] != SCHEMA_VERSION:
            raise AdminError(
                f"database {where} has schema version {versions[0]}; this chatapp-admin knows version {SCHEMA_VERSION}"
            )
    except StoreError as e:
        conn.close()
        raise AdminError(str(e)) from None
    except BaseException:
        conn.close()
        raise
    return Database(conn, where, postgres=True)


def open_target(where: str) -> Database:
    """The database ``copy`` writes to: created (SQLite) and given the schema if it has none."""
    if is_postgres_url(where):
        return _open_postgres(where, create=True)
    try:
        conn = sqlite_store.connect(where, BUSY_TIMEOUT_MS)
    except StoreError as e:
        raise AdminError(str(e)) from None
    return Database(conn, where, postgres=False)


def normalize_address(text: str) -> str | None:
    """The key the server blocks an address under (an IPv6 address: its /64), or None if ``text`` is no
    IP address."""
    try:
        return limit_key(text)
    except ValueError:
        return None


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


def cmd_users(db: Database, args: argparse.Namespace, out: TextIO) -> int:
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


def _existing_name(db: Database, user: str) -> str:
    row = db.execute("SELECT name FROM users WHERE name_folded = ?", (fold_name(user),)).fetchone()
    if row is None:
        raise AdminError(f"no such user: {shown(user)}")
    return str(row[0])


def cmd_delete(db: Database, args: argparse.Namespace, out: TextIO) -> int:
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


def cmd_reset_password(db: Database, args: argparse.Namespace, out: TextIO) -> int:
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


def cmd_blocks(db: Database, args: argparse.Namespace, out: TextIO) -> int:
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


def cmd_unblock(db: Database, args: argparse.Namespace, out: TextIO) -> int:
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
    with db.transaction():
        for kind, key, message in candidates:
            cursor = db.execute("DELETE FROM blocks WHERE kind = ? AND key = ? AND until > ?", (kind, key, now))
            # An expired row blocks nothing; tidy it away without calling it an unblock.
            db.execute("DELETE FROM blocks WHERE kind = ? AND key = ? AND until <= ?", (kind, key, now))
            if cursor.rowcount:
                lifted.append(message)
    if not lifted:
        raise AdminError(f"nothing to unblock: {shown(target)} is not blocked")
    for message in lifted:
        out.write(message + "\n")
    return EXIT_OK


def cmd_copy(args: argparse.Namespace, out: TextIO) -> int:
    """Copy in one transaction on the target: either everything is there afterwards, or nothing changed."""
    source = open_db(args.source)
    try:
        now = time.time()
        users = [
            tuple(row)
            for row in source.execute("SELECT name_folded, name, password_hash, created, last_login FROM users")
        ]
        blocks = [
            tuple(row) for row in source.execute("SELECT kind, key, until FROM blocks WHERE until > ?", (now,))
        ]
    finally:
        source.close()
    target = open_target(args.target)
    try:
        with target.transaction():
            present = {row[0] for row in target.execute("SELECT name_folded FROM users")}
            clashes = sorted(present & {row[0] for row in users})
            if clashes and not args.replace:
                named = ", ".join(shown(name) for name in clashes[:5]) + (", …" if len(clashes) > 5 else "")
                raise AdminError(
                    f"{len(clashes)} of the accounts exist in {target.where} already ({named}); "
                    "nothing copied (--replace overwrites them)"
                )
            for name_folded, name, password_hash, created, last_login in users:
                if name_folded in present:
                    target.execute("DELETE FROM users WHERE name_folded = ?", (name_folded,))
                target.execute(
                    "INSERT INTO users (name_folded, name, password_hash, created, last_login) VALUES (?, ?, ?, ?, ?)",
                    (name_folded, name, bytes(password_hash), created, last_login),
                )
            for kind, key, until in blocks:
                row = target.execute("SELECT until FROM blocks WHERE kind = ? AND key = ?", (kind, key)).fetchone()
                # A block the target holds already stays at least as long as it was.
                longest = max(until, row[0]) if row is not None else until
                target.execute(
                    "INSERT INTO blocks (kind, key, until) VALUES (?, ?, ?) "
                    "ON CONFLICT (kind, key) DO UPDATE SET until = excluded.until",
                    (kind, key, longest),
                )
    finally:
        target.close()
    replaced = f" ({len(clashes)} replaced)" if clashes else ""
    out.write(
        f"copied {len(users)} account{'s' if len(users) != 1 else ''}{replaced} and {len(blocks)} "
        f"running block{'s' if len(blocks) != 1 else ''} from {shown(source.where)} to {shown(target.where)}\n"
    )
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

    if args.tls_cert is not None:
        path = args.tls_cert
    elif is_postgres_url(args.db):  # the server keeps it in its working directory then
        path = server_certificate_path(os.path.join(os.getcwd(), "-"))
    else:
        path = server_certificate_path(args.db)
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        if args.tls_cert is None:
            raise AdminError(
                f"no certificate at {path}: give the server's --db (its certificate is made next to the database"
                " at its first start) or --tls-cert"
            ) from None
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
        "--db",
        default=DEFAULT_DB,
        metavar="PATH|URL",
        help=f"the server's --db: a SQLite file or a postgresql:// URL (default: {DEFAULT_DB})",
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
    copy = commands.add_parser(
        "copy",
        help="copy every account and running block from one database to another, all or nothing "
        "(e.g. from the SQLite file to PostgreSQL); the target gets the schema if it has none",
    )
    copy.add_argument("--from", dest="source", required=True, metavar="PATH|URL", help="the database to copy")
    copy.add_argument("--to", dest="target", required=True, metavar="PATH|URL", help="the database to copy into")
    copy.add_argument(
        "--replace",
        action="store_true",
        help="overwrite accounts the target has already (without it, any such account stops the copy)",
    )
    copy.set_defaults(run=None, run_without_db=cmd_copy)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit code (0 done, 1 failed, 2 bad command line, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    run: Callable[[Database, argparse.Namespace, TextIO], int] | None = args.run
    try:
        if run is None:  # commands that open their databases themselves, or none
            return int(args.run_without_db(args, sys.stdout))
        db = open_db(args.db)
        try:
            return run(db, args, sys.stdout)
        finally:
            db.close()
    except AdminError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return EXIT_ERROR
    except database_errors() as e:
        sys.stderr.write(f"{PROG}: database error: {' '.join(str(e).split())}\n")
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
