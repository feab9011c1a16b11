"""The command line, sizes, credentials and the error -> exit code mapping of the console client (no I/O)."""

from __future__ import annotations

import io

import pytest

from chatapp.cli import main as cli
from chatapp.cli.options import DEFAULT_DOWNLOADS, DEFAULT_LISTEN, DEFAULT_SERVER, UsageError, parse_args, parse_size
from chatapp.client import (
    BadCredentials,
    BadRequest,
    Blocked,
    Busy,
    ConnectFailed,
    InvalidArgument,
    Locked,
    SlowDown,
    UserExists,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("123", 123),
        ("500k", 500 * 1024),
        ("500K", 500 * 1024),
        ("10M", 10 * 1024**2),
        ("10MB", 10 * 1024**2),
        ("10MiB", 10 * 1024**2),
        ("2G", 2 * 1024**3),
        ("1.5G", 3 * 1024**3 // 2),
        ("1T", 1024**4),
        ("7b", 7),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "10X", "-5", "0", "1.2.3M", "M", "10 M M"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_defaults() -> None:
    s = parse_args([])
    assert s.mode == "chat"
    assert (s.server, s.listen, s.downloads) == (DEFAULT_SERVER, DEFAULT_LISTEN, DEFAULT_DOWNLOADS)
    assert s.user is None and s.signup is None and not s.accept_files and not s.debug


def test_every_option() -> None:
    s = parse_args(
        ["--server", "h:1", "--user", "al", "--signup", "--no-listen", "--downloads", "/d", "--max-file-size", "1M",
         "--accept-files", "--password-file", "/p", "--debug"]
    )  # fmt: skip
    assert (s.server, s.user, s.signup, s.listen, s.downloads) == ("h:1", "al", True, None, "/d")
    assert (s.max_file_size, s.accept_files, s.password_file, s.debug) == (1024**2, True, "/p", True)
    assert parse_args(["--listen", "tcp:9000"]).listen == "tcp:9000"
    assert parse_args(["--login"]).signup is False


def test_options_before_and_after_the_subcommand(tmp_path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("x")
    after = parse_args(["send", "--server", "h", "--user", "alice", "bob", str(f)])
    before = parse_args(["--server", "h", "--user", "alice", "send", "bob", str(f)])
    for s in (after, before):
        assert (s.mode, s.server, s.user, s.send_to, s.paths) == ("send", "h", "alice", "bob", [str(f)])
    assert parse_args(["listen", "--accept-files"]).accept_files
    assert parse_args(["--accept-files", "listen"]).mode == "listen"


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["--listen", "tcp:1", "--no-listen"],
        ["--signup", "--login"],
        ["send", "bob"],
        ["send", "bob", "/no/such/file"],
        ["frobnicate"],
        ["--password", "secret"],  # never from argv
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def test_main_returns_2_on_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--max-file-size", "lots"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("chatapp: not a size") and err.count("\n") == 1


class FakeTerminal(cli.Terminal):
    def __init__(self, answers: list[str], secrets: list[str], tty: bool = True) -> None:
        self.err = io.StringIO()
        super().__init__(io.StringIO("".join(a + "\n" for a in answers)), self.err)
        self.secrets = secrets
        self.tty = tty

    def interactive(self) -> bool:
        return self.tty

    def secret(self, prompt: str) -> str:
        return self.secrets.pop(0)


def test_everything_is_asked_on_a_terminal() -> None:
    term = FakeTerminal(["s", "alice"], ["correct horse", "correct horse"])
    assert cli.credentials(parse_args([]), term, {}) == ("alice", "correct horse", True)
    assert "log in or sign up? [l/s]" in term.err.getvalue()
    assert "user name:" in term.err.getvalue()


def test_signup_asks_twice_until_they_match() -> None:
    term = FakeTerminal([], ["short", "correct horse", "other horse", "correct horse", "correct horse"])
    assert cli.credentials(parse_args(["--user", "al", "--signup"]), term, {})[1] == "correct horse"
    assert "8-72 bytes" in term.err.getvalue() and "differ" in term.err.getvalue()


def test_a_bad_name_typed_is_asked_again() -> None:
    term = FakeTerminal(["l", "-x", "bob"], ["pw is long enough"])
    assert cli.credentials(parse_args([]), term, {}) == ("bob", "pw is long enough", False)


def test_without_a_terminal_the_environment_or_a_file(tmp_path) -> None:
    term = FakeTerminal([], [], tty=False)
    assert cli.credentials(parse_args(["--user", "al"]), term, {"CHATAPP_PASSWORD": "from env!"}) == (
        "al", "from env!", False
    )  # fmt: skip
    pw = tmp_path / "pw"
    pw.write_text("from a file\nsecond line\n")
    s = parse_args(["--user", "al", "--password-file", str(pw)])
    assert cli.credentials(s, term, {"CHATAPP_PASSWORD": "ignored"})[1] == "from a file"
    with pytest.raises(UsageError, match="CHATAPP_PASSWORD"):
        cli.credentials(parse_args(["--user", "al"]), term, {})
    with pytest.raises(UsageError, match="--user"):
        cli.credentials(parse_args([]), term, {"CHATAPP_PASSWORD": "x" * 8})
    with pytest.raises(UsageError, match="password file"):
        cli.credentials(parse_args(["--user", "al", "--password-file", str(tmp_path / "nope")]), term, {})
    with pytest.raises(cli.Fatal) as bad:
        cli.credentials(parse_args(["--user", "no spaces"]), term, {"CHATAPP_PASSWORD": "x" * 8})
    assert bad.value.code == cli.EXIT_BAD_INPUT


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        (BadCredentials(401, "bad-credentials"), cli.EXIT_CREDENTIALS, "after a few more failures your address"),
        (Blocked(429, "blocked", ("300",)), cli.EXIT_BLOCKED, "blocked for 5 more minutes"),
        (Blocked(429, "blocked", ("59",)), cli.EXIT_BLOCKED, "blocked for 1 more minute"),
        (Locked(429, "locked", ("61",)), cli.EXIT_LOCKED, "locked after failed logins, for 2 more minutes"),
        (UserExists(409, "user-exists"), cli.EXIT_TAKEN, "the name alice is taken"),
        (InvalidArgument("passwords are 8-72 bytes long"), cli.EXIT_BAD_INPUT, "8-72 bytes"),
        (BadRequest(400, "bad-username"), cli.EXIT_BAD_INPUT, "user names are"),
        (SlowDown(429, "slow-down", ("120",)), cli.EXIT_LATER, "try again in 2 more minutes"),
        (Busy(503, "busy"), cli.EXIT_LATER, "busy"),
        (ConnectFailed("cannot reach the chat server at h:1: refused"), cli.EXIT_UNREACHABLE, "cannot reach"),
        (RuntimeError("boom"), cli.EXIT_FAILED, "unexpected error: RuntimeError: boom"),
    ],
)
def test_start_errors_become_one_line_and_a_code(error: Exception, code: int, words: str) -> None:
    fatal = cli.explain(error, parse_args(["--user", "alice"]))
    assert fatal.code == code
    assert words in str(fatal) and "\n" not in str(fatal)


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [getattr(cli, n) for n in dir(cli) if n.startswith("EXIT_") and n != "EXIT_CODES"]
    assert len(codes) == len(set(codes)) == len(cli.EXIT_CODES)
