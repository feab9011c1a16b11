"""The command line, sizes, credentials, and errors as exit codes and safe lines, of the console client (no I/O)."""

from __future__ import annotations

import io

import pytest

from chatapp.cli import errors, login, main
from chatapp.cli.errors import explain, format_error
from chatapp.cli.options import DEFAULT_DOWNLOADS, DEFAULT_LISTEN, DEFAULT_SERVER, UsageError, parse_args, parse_size
from chatapp.client import (
    BadCredentials,
    BadRequest,
    Blocked,
    Busy,
    ChatClientError,
    ConnectFailed,
    ConnectionClosed,
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
    assert main.main(["--max-file-size", "lots"]) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("chatapp: not a size") and err.count("\n") == 1


class FakeTerminal(login.Terminal):
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
    assert login.credentials(parse_args([]), term, {}) == ("alice", "correct horse", True)
    assert "log in or sign up? [l/s]" in term.err.getvalue()
    assert "user name:" in term.err.getvalue()


def test_signup_asks_twice_until_they_match() -> None:
    term = FakeTerminal([], ["short", "correct horse", "other horse", "correct horse", "correct horse"])
    assert login.credentials(parse_args(["--user", "al", "--signup"]), term, {})[1] == "correct horse"
    assert "8-72 bytes" in term.err.getvalue() and "differ" in term.err.getvalue()


def test_a_bad_name_typed_is_asked_again() -> None:
    term = FakeTerminal(["l", "-x", "bob"], ["pw is long enough"])
    assert login.credentials(parse_args([]), term, {}) == ("bob", "pw is long enough", False)


def test_without_a_terminal_the_environment_or_a_file(tmp_path) -> None:
    term = FakeTerminal([], [], tty=False)
    assert login.credentials(parse_args(["--user", "al"]), term, {"CHATAPP_PASSWORD": "from env!"}) == (
        "al", "from env!", False
    )  # fmt: skip
    pw = tmp_path / "pw"
    pw.write_text("from a file\nsecond line\n")
    s = parse_args(["--user", "al", "--password-file", str(pw)])
    assert login.credentials(s, term, {"CHATAPP_PASSWORD": "ignored"})[1] == "from a file"
    with pytest.raises(UsageError, match="CHATAPP_PASSWORD"):
        login.credentials(parse_args(["--user", "al"]), term, {})
    with pytest.raises(UsageError, match="--user"):
        login.credentials(parse_args([]), term, {"CHATAPP_PASSWORD": "x" * 8})
    with pytest.raises(UsageError, match="password file"):
        login.credentials(parse_args(["--user", "al", "--password-file", str(tmp_path / "nope")]), term, {})
    with pytest.raises(errors.Fatal) as bad:
        login.credentials(parse_args(["--user", "no spaces"]), term, {"CHATAPP_PASSWORD": "x" * 8})
    assert bad.value.code == errors.EXIT_BAD_INPUT


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        (BadCredentials(401, "bad-credentials"), errors.EXIT_CREDENTIALS, "after a few more failures your address"),
        (BadCredentials(401, "bad-credentials", ("2",)), errors.EXIT_CREDENTIALS, "; 2 tries left before this address"),
        (BadCredentials(401, "bad-credentials", ("1",)), errors.EXIT_CREDENTIALS, "1 try left: one more wrong"),
        (Blocked(429, "blocked", ("300",)), errors.EXIT_BLOCKED, "this address is blocked for 5 more minutes"),
        (Blocked(429, "blocked", ("300",)), errors.EXIT_BLOCKED, "the account alice may be locked as long"),
        (Blocked(429, "blocked", ("59",)), errors.EXIT_BLOCKED, "blocked for 59 more seconds"),
        (Locked(429, "locked", ("121",)), errors.EXIT_LOCKED, "the account alice is locked for 3 more minutes"),
        (Locked(429, "locked", ("61",)), errors.EXIT_LOCKED, "this address is not blocked"),
        (UserExists(409, "user-exists"), errors.EXIT_TAKEN, "the name alice is taken"),
        (InvalidArgument("passwords are 8-72 bytes long"), errors.EXIT_BAD_INPUT, "8-72 bytes"),
        (BadRequest(400, "bad-username"), errors.EXIT_BAD_INPUT, "user names are"),
        (SlowDown(429, "slow-down", ("120",)), errors.EXIT_LATER, "try again in 2 more minutes"),
        (Busy(503, "busy"), errors.EXIT_LATER, "busy"),
        (ConnectFailed("cannot reach the chat server at h:1: refused"), errors.EXIT_UNREACHABLE, "cannot reach"),
        (RuntimeError("boom"), errors.EXIT_FAILED, "unexpected error: RuntimeError: boom"),
    ],
)
def test_start_errors_become_one_line_and_a_code(error: Exception, code: int, words: str) -> None:
    fatal = explain(error, parse_args(["--user", "alice"]))
    assert fatal.code == code
    assert words in str(fatal) and "\n" not in str(fatal)


def test_exit_codes_are_distinct_and_documented() -> None:
    codes = [getattr(errors, n) for n in dir(errors) if n.startswith("EXIT_") and n != "EXIT_CODES"]
    assert len(codes) == len(set(codes)) == len(errors.EXIT_CODES)


HOSTILE = "\x1b[2J\x1b]0;owned\x07\rFAKE\r\nchatapp: all good\u202e\u2028\u2029\x85\\x1b"


@pytest.mark.parametrize(
    "error",
    [
        ChatClientError(HOSTILE),
        InvalidArgument(HOSTILE),
        ConnectFailed(HOSTILE),
        ConnectionClosed(HOSTILE),
        OSError(HOSTILE),
        RuntimeError(HOSTILE),
        UserExists(409, "user-exists"),  # the name in the line is the hostile one
        Locked(429, "locked", ("60",)),
    ],
)
def test_hostile_error_text_comes_out_escaped_on_one_line(error: Exception) -> None:
    settings = parse_args(["--user", "alice", "--server", "chat.example:8750"])
    line = format_error(str(explain(error, settings, user=HOSTILE)))
    assert line.isprintable(), repr(line)  # no control, format or line/paragraph separator character is left
    assert len(line.splitlines()) == 1
    # shown as text (some library errors escape their text already: then it shows escaped twice, still text)
    for shown in ("x1b[2J", "x1b]0;owned", "x07", "x0d", "x0a", "u202e", "u2028", "u2029", "x85"):
        assert f"\\{shown}" in line, shown


def test_a_backslash_in_an_error_cannot_pass_for_an_escape() -> None:
    assert format_error("a\\x1b b") == "a\\\\x1b b"


def test_main_prints_hostile_text_escaped(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["send", "--user", "al", "bob", str(tmp_path / f"no{HOSTILE}file")]) == errors.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("chatapp: not a readable file: ") and err.count("\n") == 1
    assert err[:-1].isprintable() and "\\x1b]0;owned\\x07" in err


# -- the server link's TLS options (issue 12) ---------------------------------------------------


def test_tls_options_are_parsed_and_checked() -> None:
    from chatapp.cli.options import UsageError as _UsageError
    from chatapp.cli.options import parse_args as _parse

    given = _parse(["--server-fingerprint", "SHA256:" + "AB" * 32, "--trust-on-first-use"])
    assert given.server_fingerprint == "sha256:" + "ab" * 32 and given.trust_on_first_use and not given.no_tls
    assert _parse(["--no-tls"]).no_tls
    with pytest.raises(_UsageError, match="--server-fingerprint"):
        _parse(["--server-fingerprint", "abc"])
    with pytest.raises(_UsageError, match="--no-tls"):
        _parse(["--no-tls", "--trust-on-first-use"])


def test_the_trust_question_takes_only_yes_or_no() -> None:
    import io

    from chatapp.cli.trust import QUESTION, ask_on_terminal

    out = io.StringIO()
    assert ask_on_terminal("h:1", "sha256:" + "0" * 64, io.StringIO("maybe\nyes\n"), out)
    assert "sha256:" + "0" * 64 in out.getvalue() and out.getvalue().count(QUESTION) == 2
    assert not ask_on_terminal("h:1", "sha256:" + "0" * 64, io.StringIO("no\n"), io.StringIO())
    assert not ask_on_terminal("h:1", "sha256:" + "0" * 64, io.StringIO(""), io.StringIO())  # end of input


def test_a_changed_key_says_whose_key_changed_and_who_can_accept_it() -> None:
    from chatapp.peer.errors import HandshakeFailed

    settings = parse_args(["--user", "bob"])
    theirs = explain(HandshakeFailed("key-changed", "sha256:" + "a" * 64, "sha256:" + "b" * 64), settings)
    assert theirs.code == errors.EXIT_KEY_CHANGED
    assert "the contact's key changed" in str(theirs) and "--accept-changed-keys" in str(theirs)
    ours = explain(HandshakeFailed("key-changed"), settings)  # the contact answered ERR 403 key-changed
    assert ours.code == errors.EXIT_KEY_CHANGED
    assert "the contact refused the chat" in str(ours) and "/fingerprint" in str(ours)
    assert "(if the contact confirms the new key" not in str(ours)  # our own flag changes nothing
    sending = parse_args(["send", "--user", "bob", "carol", __file__])
    named = explain(HandshakeFailed("key-changed", "sha256:" + "a" * 64, "sha256:" + "b" * 64), sending)
    assert str(named).startswith("refused: the key of carol changed (remembered sha256:aaaa")
    assert "carol refused the chat" in str(explain(HandshakeFailed("key-changed"), sending))


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("connection-lost", "could not open the chat with carol: the connection to the peer was lost before"),
        ("bad-token", "could not open the chat with carol: the peer refused the chat: the server did not confirm"),
        # a word the peer chose is given as its words, not as an error of ours
        ("Your-account-is-compromised", "could not open the chat with carol: the peer refused the chat (it said:"),
    ],
)
def test_a_chat_that_did_not_open_says_why_in_words(reason: str, text: str) -> None:
    from chatapp.peer.errors import HandshakeFailed

    fatal = explain(HandshakeFailed(reason), parse_args(["send", "--user", "bob", "carol", __file__]))
    assert fatal.code == errors.EXIT_FAILED and str(fatal).startswith(text)
    assert "unexpected" not in str(fatal) and "HandshakeFailed" not in str(fatal)


def test_ready_says_where_the_login_published_us_without_asking_again() -> None:
    from types import SimpleNamespace

    from chatapp.cli.events import Ready
    from chatapp.cli.run import ready_event

    # no set_listening here: READY must not send a second LISTEN to learn what the login already got
    listening = SimpleNamespace(user="alice", listening=True, published=("192.0.2.7", 40123))
    assert ready_event(listening) == Ready("alice", ("192.0.2.7", 40123))  # type: ignore[arg-type]
    online = SimpleNamespace(user="alice", listening=False, published=None)
    assert ready_event(online) == Ready("alice", None)  # type: ignore[arg-type]
