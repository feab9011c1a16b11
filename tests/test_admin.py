"""chatapp-admin: every subcommand through ``main([...])``, its errors, and use next to a live server."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest
from inline_postgres import InlinePostgresStore
from processes import tls_connect

from chatapp import admin
from chatapp.admin import main
from chatapp.runner import InlineRunner
from chatapp.server.store import ADDRESS, NAME, SQLiteStore, is_postgres_url

BIN = Path(sys.executable).parent
HASH = bcrypt.hashpw(b"correct horse battery", bcrypt.gensalt(4))
JAN_2026 = 1767225600.0  # 2026-01-01 00:00:00 UTC


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def where(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The server's --db: a SQLite file's path or a fresh PostgreSQL database's URL."""
    if backend == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "chat.sqlite3")


@pytest.fixture
def store(where: str) -> Iterator[Any]:
    """The server's own store, open on the database while the admin tool works on it."""
    s: Any = InlinePostgresStore(where) if is_postgres_url(where) else SQLiteStore(where, InlineRunner())
    s.open()
    yield s
    s.close()


@pytest.fixture
def db(store: Any, where: str) -> str:
    """The --db of a chatapp database (made by the server's store)."""
    return where


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[str]:
    """A SQLite database with the server's store open on it (for what only a file can show)."""
    s = SQLiteStore(str(tmp_path / "chat.sqlite3"), InlineRunner())
    s.open()
    yield s.path
    s.close()


def sql(db: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run SQL (``?`` placeholders) on the database behind the tool's back, committed."""
    if is_postgres_url(db):
        with psycopg.connect(db, autocommit=True) as conn:
            cursor = conn.execute(statement.replace("?", "%s"), params)
            return list(cursor.fetchall()) if cursor.description else []
    with sqlite3.connect(db) as conn:
        return list(conn.execute(statement, params).fetchall())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def stdin_bytes(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def stored_hash(db: str, name: str) -> bytes:
    return bytes(sql(db, "SELECT password_hash FROM users WHERE name_folded = ?", name)[0][0])


# -- users ---------------------------------------------------------------------


def test_users_lists_accounts_with_times_in_utc_and_locks(capsys, store, db) -> None:
    store.create_account("Alice", HASH, JAN_2026)
    store.record_login("alice", JAN_2026 + 3600)
    store.create_account("bob", HASH, JAN_2026 + 60)
    store.set_block(NAME, "bob", time.time() + 125)
    code, out, err = run(capsys, "--db", db, "users")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["USER", "CREATED", "LAST", "LOGIN", "LOCKED"]
    assert re.fullmatch(r"Alice +2026-01-01 00:00:00 UTC +2026-01-01 01:00:00 UTC +no", lines[1])
    # bob signed up: SIGNUP logs in, so that is his last login
    assert re.fullmatch(r"bob +2026-01-01 00:01:00 UTC +2026-01-01 00:01:00 UTC +locked, 2m 0\ds left", lines[2])
    assert lines[3] == "2 users"


def test_users_on_an_empty_database(capsys, db) -> None:
    assert run(capsys, "--db", db, "users") == (0, "no users\n", "")


def test_names_from_the_database_are_escaped(capsys, db) -> None:
    # not possible through the protocol, but the database is not trusted
    sql(db, "INSERT INTO users VALUES ('x\x1b[2j', 'x\x1b[2J', ?, 0, NULL)", HASH)
    code, out, _ = run(capsys, "--db", db, "users")
    assert code == 0
    assert "\x1b" not in out and "x\\x1b[2J" in out


# -- delete ----------------------------------------------------------------------


def test_delete_removes_the_account_case_insensitively(capsys, store, db) -> None:
    store.create_account("Alice", HASH, JAN_2026)
    assert run(capsys, "--db", db, "delete", "ALICE") == (0, "deleted user Alice\n", "")
    assert store.get_account("alice").result is None


def test_delete_unknown_user(capsys, db) -> None:
    assert run(capsys, "--db", db, "delete", "nobody") == (1, "", "chatapp-admin: no such user: nobody\n")


# -- reset-password ------------------------------------------------------------------


def test_reset_password_from_stdin(capsys, monkeypatch, store, db) -> None:
    store.create_account("alice", HASH, JAN_2026)
    stdin_bytes(monkeypatch, "new pässword with spaces\r\n".encode())
    code, out, err = run(capsys, "--db", db, "reset-password", "--bcrypt-rounds", "4", "Alice")
    assert (code, out, err) == (0, "password changed for alice\n", "")
    hashed = stored_hash(db, "alice")
    assert hashed.startswith(b"$2b$04$")
    assert bcrypt.checkpw("new pässword with spaces".encode(), hashed)


def test_reset_password_default_cost_is_the_servers(monkeypatch) -> None:
    args = admin.build_parser().parse_args(["reset-password", "alice"])
    assert args.bcrypt_rounds == 12


def test_reset_password_prompts_twice_without_echo_on_a_terminal(capsys, monkeypatch, store, db) -> None:
    store.create_account("alice", HASH, JAN_2026)
    stdin = io.StringIO()
    monkeypatch.setattr(stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys, "stdin", stdin)
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return "terminal password"

    monkeypatch.setattr(admin.getpass, "getpass", fake_getpass)
    assert run(capsys, "--db", db, "reset-password", "--bcrypt-rounds", "4", "alice")[0] == 0
    assert prompts == ["New password: ", "Again: "]
    assert bcrypt.checkpw(b"terminal password", stored_hash(db, "alice"))


def test_reset_password_prompts_must_match(capsys, monkeypatch, store, db) -> None:
    store.create_account("alice", HASH, JAN_2026)
    stdin = io.StringIO()
    monkeypatch.setattr(stdin, "isatty", lambda: True)
    monkeypatch.setattr(sys, "stdin", stdin)
    answers = iter(["first password", "second password"])
    monkeypatch.setattr(admin.getpass, "getpass", lambda prompt="": next(answers))
    code, _, err = run(capsys, "--db", db, "reset-password", "--bcrypt-rounds", "4", "alice")
    assert code == 1 and "differ" in err
    assert stored_hash(db, "alice") == HASH


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"short\n", "passwords are 8-72 bytes of UTF-8; nothing changed"),
        (b"x" * 73 + b"\n", "passwords are 8-72 bytes of UTF-8; nothing changed"),
        ("ä".encode() * 37 + b"\n", "passwords are 8-72 bytes of UTF-8; nothing changed"),  # 37 chars, 74 bytes
        (b"\xff\xfe not utf-8 at all\n", "the password on stdin is not valid UTF-8; nothing changed"),
        (b"", "no password on stdin; nothing changed"),
    ],
)
def test_reset_password_refuses_bad_input(capsys, monkeypatch, store, db, data: bytes, message: str) -> None:
    store.create_account("alice", HASH, JAN_2026)
    stdin_bytes(monkeypatch, data)
    code, out, err = run(capsys, "--db", db, "reset-password", "--bcrypt-rounds", "4", "alice")
    assert (code, out, err) == (1, "", f"chatapp-admin: {message}\n")
    assert stored_hash(db, "alice") == HASH


def test_reset_password_accepts_72_bytes(capsys, monkeypatch, store, db) -> None:
    store.create_account("alice", HASH, JAN_2026)
    stdin_bytes(monkeypatch, b"y" * 72 + b"\n")
    assert run(capsys, "--db", db, "reset-password", "--bcrypt-rounds", "4", "alice")[0] == 0
    assert bcrypt.checkpw(b"y" * 72, stored_hash(db, "alice"))


def test_reset_password_unknown_user_asks_nothing(capsys, monkeypatch, db) -> None:
    stdin_bytes(monkeypatch, b"a fine password\n")
    assert run(capsys, "--db", db, "reset-password", "nobody") == (1, "", "chatapp-admin: no such user: nobody\n")
    assert sys.stdin.read() == "a fine password\n"


@pytest.mark.parametrize("rounds", ["3", "32", "twelve"])
def test_reset_password_bad_cost_is_a_usage_error(capsys, db, rounds: str) -> None:
    code, _, err = run(capsys, "--db", db, "reset-password", "--bcrypt-rounds", rounds, "alice")
    assert code == 2 and "--bcrypt-rounds" in err


# -- blocks and unblock ------------------------------------------------------------------


def test_blocks_lists_addresses_and_names_with_time_left(capsys, store, db) -> None:
    now = time.time()
    store.set_block(ADDRESS, "192.0.2.7", now + 299.5)
    store.set_block(NAME, "alice", now + 3 * 3600 + 2)
    store.set_block(ADDRESS, "192.0.2.8", now - 1)  # expired: blocks nothing, not listed
    code, out, _ = run(capsys, "--db", db, "blocks")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "BLOCKED", "TIME", "LEFT", "UNTIL"]
    assert re.fullmatch(r"address +192\.0\.2\.7 +(5m 00s|4m 5\ds) +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", lines[1])
    assert re.fullmatch(r"user +alice +3h 00m 0\ds +.* UTC", lines[2])
    assert len(lines) == 3


def test_blocks_when_there_are_none(capsys, db) -> None:
    assert run(capsys, "--db", db, "blocks") == (0, "no blocks\n", "")


def test_unblock_an_address_in_any_spelling(capsys, store, db) -> None:
    store.set_block(ADDRESS, "192.0.2.7", time.time() + 300)
    assert run(capsys, "--db", db, "unblock", "::ffff:192.0.2.7") == (0, "unblocked address 192.0.2.7\n", "")
    assert store.block_until(ADDRESS, "192.0.2.7", time.time()).result is None


def test_unblock_an_ipv6_address_lifts_the_block_of_its_64(capsys, store, db) -> None:
    store.set_block(ADDRESS, "2001:db8:1:2::/64", time.time() + 300)  # as the server blocks 2001:db8:1:2::9
    assert run(capsys, "--db", db, "unblock", "2001:db8:1:2::9") == (0, "unblocked address 2001:db8:1:2::/64\n", "")
    assert store.block_until(ADDRESS, "2001:db8:1:2::/64", time.time()).result is None


def test_unblock_a_user_name_case_insensitively(capsys, store, db) -> None:
    store.set_block(NAME, "alice", time.time() + 300)
    store.set_block(ADDRESS, "192.0.2.7", time.time() + 300)
    assert run(capsys, "--db", db, "unblock", "Alice") == (0, "unlocked user alice\n", "")
    assert store.block_until(NAME, "alice", time.time()).result is None
    assert store.block_until(ADDRESS, "192.0.2.7", time.time()).result is not None


def test_unblock_nothing_to_unblock(capsys, store, db) -> None:
    store.set_block(NAME, "alice", time.time() - 5)  # expired
    assert run(capsys, "--db", db, "unblock", "alice") == (
        1,
        "",
        "chatapp-admin: nothing to unblock: alice is not blocked\n",
    )
    assert run(capsys, "--db", db, "unblock", "10.1.2.3")[0] == 1
    code, _, err = run(capsys, "--db", db, "unblock", "no such thing")
    assert code == 1 and "neither an IP address nor a user name" in err


# -- the database file --------------------------------------------------------------------


def test_missing_database_is_not_created(capsys, tmp_path: Path) -> None:
    path = tmp_path / "missing.sqlite3"
    code, out, err = run(capsys, "--db", str(path), "users")
    assert (code, out) == (1, "")
    assert err == f"chatapp-admin: no database at {str(path)!r} (give the server's --db file)\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "no users and blocks tables"),
        (b"just some text, certainly not SQLite\n" * 200, "file is not a database"),
    ],
)
def test_not_a_chatapp_database(capsys, tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "other.sqlite3"
    path.write_bytes(content)
    code, out, err = run(capsys, "--db", str(path), "blocks")
    assert (code, out) == (1, "")
    assert err == f"chatapp-admin: {str(path)!r} is not a chatapp database ({reason})\n"
    assert path.read_bytes() == content


def test_someone_elses_sqlite_database_is_left_alone(capsys, tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE things (x)")
    code, _, err = run(capsys, "--db", str(path), "users")
    assert code == 1 and "is not a chatapp database" in err
    with sqlite3.connect(path) as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master")} == {"things"}


def test_newer_schema_is_refused(capsys, store, db) -> None:
    if is_postgres_url(db):
        sql(db, "UPDATE chatapp_schema SET version = 99")
    else:
        sql(db, "PRAGMA user_version = 99")
    code, _, err = run(capsys, "--db", db, "users")
    assert code == 1 and "schema version 99" in err


def test_a_corrupt_database_is_one_line(capsys, tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    s = SQLiteStore(str(path), InlineRunner())
    s.open()
    for i in range(300):
        s.create_account(f"user{i}", HASH, JAN_2026)
    s.close()
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # keep the header page, wreck the rest
    path.write_bytes(bytes(data))
    code, out, err = run(capsys, "--db", str(path), "users")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("chatapp-admin: ")


def test_no_command_is_a_usage_error(capsys, db) -> None:
    code, _, err = run(capsys, "--db", db)
    assert code == 2 and "usage: chatapp-admin" in err


def test_waits_for_a_writer_instead_of_failing(capsys, sqlite_db) -> None:
    """The server holds a write transaction for a moment: the admin tool waits (busy_timeout)."""
    db = sqlite_db
    sql(db, "INSERT INTO blocks VALUES (?, ?, ?)", NAME, "alice", time.time() + 300)
    writer = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    try:
        started = time.monotonic()
        assert run(capsys, "--db", db, "unblock", "alice")[0] == 0
        assert time.monotonic() - started >= 0.2
    finally:
        release.join()
        writer.close()


# -- the installed script and a live server -------------------------------------------------------


@pytest.mark.slow
def test_installed_script(tmp_path: Path, store, db) -> None:
    script = BIN / "chatapp-admin"
    missing = subprocess.run(
        [script, "--db", str(tmp_path / "nope.sqlite3"), "blocks"], capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 1
    assert missing.stdout == "" and missing.stderr.startswith("chatapp-admin: no database at ")
    assert not (tmp_path / "nope.sqlite3").exists()
    store.create_account("alice", HASH, JAN_2026)
    listed = subprocess.run([script, "--db", db, "users"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0 and "alice" in listed.stdout
    changed = subprocess.run(
        [script, "--db", db, "reset-password", "--bcrypt-rounds", "4", "alice"],
        input="piped password\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (changed.returncode, changed.stdout) == (0, "password changed for alice\n")
    assert bcrypt.checkpw(b"piped password", stored_hash(db, "alice"))


@pytest.fixture
def live_server(tmp_path: Path, db: str) -> Iterator[tuple[int, str]]:
    """``twistd -n chatserver`` on a free port of 127.0.0.1; yields (port, its --db)."""
    log = tmp_path / "server.log"
    argv = [str(BIN / "twistd"), "-n", "--pidfile=", "--logfile", str(log), "chatserver", "--bcrypt-rounds", "4"]
    argv += ["--listen", "tcp:0:interface=127.0.0.1", "--db", str(db), "--max-attempts", "2", "--block-time", "600"]
    process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            text = log.read_text() if log.exists() else ""
            found = re.search(r"chatserver listening on IPv4Address\(type='TCP', host='127.0.0.1', port=(\d+)\)", text)
            if found:
                break
            assert process.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
        yield int(found.group(1)), db
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class Client:
    def __init__(self, port: int) -> None:
        self.sock = tls_connect(port)
        self.lines = self.sock.makefile("rb")

    def read(self) -> str:
        return self.lines.readline().decode()

    def ask(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.read()

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


@pytest.mark.slow
def test_unblock_lifts_a_block_made_by_real_failed_logins(capsys, live_server) -> None:
    port, db = live_server
    first = Client(port)
    try:
        assert first.read() == "* HELLO chatapp/2\r\n"
        assert first.ask("SIGNUP alice correct horse battery") == "OK SIGNUP alice\r\n"
    finally:
        first.close()
    bad = Client(port)
    try:
        assert bad.read() == "* HELLO chatapp/2\r\n"
        assert bad.ask("LOGIN alice wrong password") == "ERR 401 bad-credentials 1 wrong user name or password\r\n"
        assert bad.ask("LOGIN alice wrong password").startswith("ERR 429 blocked ")
        assert bad.read() == ""  # closed
    finally:
        bad.close()

    code, out, _ = run(capsys, "--db", str(db), "blocks")
    assert code == 0
    assert re.search(r"^address +127\.0\.0\.1 +(10m 00s|9m 5\ds) ", out, re.M), out
    assert re.search(r"^user +alice ", out, re.M), out
    code, out, _ = run(capsys, "--db", str(db), "users")
    assert code == 0 and re.search(r"^alice .* locked, ", out, re.M)

    blocked = Client(port)
    try:
        assert blocked.read().startswith("* BLOCKED ")
    finally:
        blocked.close()

    assert run(capsys, "--db", str(db), "unblock", "127.0.0.1") == (0, "unblocked address 127.0.0.1\n", "")
    assert run(capsys, "--db", str(db), "unblock", "alice") == (0, "unlocked user alice\n", "")
    assert run(capsys, "--db", str(db), "blocks") == (0, "no blocks\n", "")

    again = Client(port)
    try:
        assert again.read() == "* HELLO chatapp/2\r\n"
        assert again.ask("LOGIN alice correct horse battery") == "OK LOGIN alice\r\n"
    finally:
        again.close()
    code, out, _ = run(capsys, "--db", str(db), "users")
    assert re.search(r"^alice +\S+ \S+ UTC +\d{4}-\S+ \S+ UTC +no$", out, re.M), out
    assert is_postgres_url(db) or os.path.exists(db)


# -- PostgreSQL: what only a server can show -----------------------------------------------------------------


def test_an_empty_postgres_database_is_not_a_chatapp_database_and_stays_empty(capsys, postgres_url: str) -> None:
    code, out, err = run(capsys, "--db", postgres_url, "users")
    assert (code, out) == (1, "")
    reason = "no chatapp_schema, users and blocks tables"
    assert err == f"chatapp-admin: {postgres_url} is not a chatapp database ({reason})\n"
    assert sql(postgres_url, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_an_unreachable_postgres_is_one_line_without_the_password(capsys, postgres_service: Any) -> None:
    from services import free_port

    url = f"postgresql://admin:s3cret@127.0.0.1:{free_port()}/chat"
    code, out, err = run(capsys, "--db", url, "users")
    assert (code, out) == (1, "")
    assert err.startswith("chatapp-admin: cannot open database postgresql://admin:***@127.0.0.1:")
    assert err.count("\n") == 1 and "s3cret" not in err


# -- copy ------------------------------------------------------------------------------------------------------


@pytest.fixture
def filled_sqlite(sqlite_db: str) -> str:
    """A server's SQLite file: two accounts (one never logged in again), a running lock, an expired block."""
    source = SQLiteStore(sqlite_db, InlineRunner())
    source.open()
    source.create_account("Alice", HASH, JAN_2026)
    source.record_login("alice", JAN_2026 + 3600)
    source.create_account("bob", b"bob-hash", JAN_2026 + 60)
    source.set_block(NAME, "bob", time.time() + 600)
    source.set_block(ADDRESS, "192.0.2.1", time.time() - 1)
    source.close()
    return sqlite_db


def test_copy_moves_accounts_and_running_blocks_into_an_empty_postgres(capsys, filled_sqlite, postgres_url) -> None:
    code, out, err = run(capsys, "copy", "--from", filled_sqlite, "--to", postgres_url)
    assert (code, err) == (0, "")
    assert out == f"copied 2 accounts and 1 running block from {filled_sqlite} to {postgres_url}\n"
    rows = sql(postgres_url, "SELECT name_folded, name, password_hash, created, last_login FROM users ORDER BY 1")
    assert [(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows] == [
        ("alice", "Alice", HASH, JAN_2026, JAN_2026 + 3600),
        ("bob", "bob", b"bob-hash", JAN_2026 + 60, JAN_2026 + 60),
    ]
    assert sql(filled_sqlite, "SELECT until FROM blocks WHERE kind = 'name'") == sql(
        postgres_url, "SELECT until FROM blocks"
    )
    # The server opens what copy made, and the copied password logs in there.
    store: Any = InlinePostgresStore(postgres_url)
    store.open()
    assert bcrypt.checkpw(b"correct horse battery", store.get_account("ALICE").result.password_hash)
    assert store.block_until(NAME, "bob", time.time()).result is not None
    store.close()
    code, out, _ = run(capsys, "--db", postgres_url, "users")
    assert code == 0 and re.search(r"^bob .* locked, ", out, re.M)


def test_copy_refuses_accounts_the_target_has_and_changes_nothing(capsys, filled_sqlite, postgres_url) -> None:
    target = InlinePostgresStore(postgres_url)
    target.open()
    target.create_account("BOB", b"their-bob", JAN_2026)
    target.close()
    code, out, err = run(capsys, "copy", "--from", filled_sqlite, "--to", postgres_url)
    assert (code, out) == (1, "")
    assert err == (
        f"chatapp-admin: 1 of the accounts exist in {postgres_url} already (bob); nothing copied "
        "(--replace overwrites them)\n"
    )
    assert sql(postgres_url, "SELECT name, password_hash FROM users") == [("BOB", b"their-bob")]
    assert sql(postgres_url, "SELECT COUNT(*) FROM blocks") == [(0,)]
    code, out, err = run(capsys, "copy", "--from", filled_sqlite, "--to", postgres_url, "--replace")
    assert (code, err) == (0, "")
    assert out.startswith("copied 2 accounts (1 replaced) and 1 running block ")
    assert sql(postgres_url, "SELECT name, password_hash FROM users ORDER BY 1") == [
        ("Alice", HASH),
        ("bob", b"bob-hash"),
    ]


def test_copy_back_from_postgres_to_a_new_sqlite_file(capsys, filled_sqlite, postgres_url, tmp_path) -> None:
    assert run(capsys, "copy", "--from", filled_sqlite, "--to", postgres_url)[0] == 0
    back = str(tmp_path / "back.sqlite3")
    assert run(capsys, "copy", "--from", postgres_url, "--to", back)[0] == 0
    query = "SELECT name_folded, name, password_hash, created, last_login FROM users ORDER BY 1"
    assert sql(back, query) == sql(filled_sqlite, query)


def test_copy_from_a_missing_file_creates_nothing(capsys, tmp_path, postgres_url) -> None:
    code, _, err = run(capsys, "copy", "--from", str(tmp_path / "nope.sqlite3"), "--to", postgres_url)
    assert code == 1 and "no database at" in err
    assert sql(postgres_url, "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
