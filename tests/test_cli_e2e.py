"""The real programs: a twistd server and ``chatapp`` processes in script mode and as one-shots."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_processes import Chatapp
from processes import start_server, stop

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    process, port = start_server(tmp_path)
    yield port
    stop(process)


@pytest.fixture
def procs() -> Iterator[list[Chatapp]]:
    started: list[Chatapp] = []
    yield started
    for p in started:
        p.kill()


def chatapp(procs: list[Chatapp], tmp_path: Path, port: int, *args: str, **kw: object) -> Chatapp:
    options = ["--server", f"127.0.0.1:{port}"]
    if "--no-listen" not in args:
        options += ["--listen", "tcp:0:interface=127.0.0.1"]
    head = args[:1] if args and args[0] in ("send", "listen") else ()
    p = Chatapp(*head, *options, *args[len(head) :], cwd=tmp_path, **kw)  # type: ignore[arg-type]
    procs.append(p)
    return p


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_clients_sign_up_chat_both_ways_and_send_a_file(server: int, tmp_path: Path, procs: list[Chatapp]) -> None:
    payload = tmp_path / "payload with space.bin"
    payload.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    bob = chatapp(procs, tmp_path, server, "--user", "bob", "--signup", "--downloads", str(tmp_path / "bob"))
    bob.expect(r"^READY bob listening 127\.0\.0\.1 \d+$")
    alice = chatapp(procs, tmp_path, server, "--user", "alice", "--signup", "--downloads", str(tmp_path / "alice"))
    alice.expect(r"^READY alice listening")
    alice.send("/who")
    alice.expect(r"^WHO alice listening$")
    alice.expect(r"^WHO bob listening$")
    alice.expect(r"^OK who 2$")
    alice.send("/msg bob hi bob \x1b[2J")  # a control sequence travels as data and is shown escaped
    alice.expect(r"^OK msg bob alice ")
    bob.expect(r"^REQUEST alice$")
    bob.expect(r"^JOINED alice$")
    assert bob.expect(r"^MSG alice ").string == "MSG alice hi bob \\x1b[2J"
    bob.send("hello alice")  # a plain line goes to the chat that is open
    bob.expect(r"^OK msg alice bob hello alice$")
    alice.expect(r"^MSG bob hello alice$")
    alice.send(f"/send bob {payload}")
    handle = alice.expect(r"^OK send (\d+) bob 3145745 payload with space\.bin$").group(1)
    offer = bob.expect(r"^OFFER (\d+) alice 3145745 payload with space\.bin$").group(1)
    bob.send(f"/accept {offer}")
    bob.expect(rf"^OK accept {offer}$")
    done = bob.expect(rf"^DONE {offer} receive alice 3145745 (.*)$").group(1)
    alice.expect(rf"^DONE {handle} send bob 3145745 ")
    assert Path(done) == tmp_path / "bob" / "payload with space.bin"
    assert sha256(Path(done)) == sha256(payload)
    bob.send("/transfers")
    bob.expect(rf"^TRANSFER {offer} receive alice done 3145745 3145745 payload with space\.bin$")
    # /msg then /quit: the message is delivered before the program exits
    alice.send("/msg bob bye now")
    alice.send("/quit")
    code, out, err = alice.finish()
    assert code == 0, (out, err)
    assert "OK quit" in out.splitlines()
    bob.expect(r"^MSG alice bye now$")
    bob.expect(r"^LEFT alice ")
    bob.close_stdin()  # the end of input ends the program (no transfer is open)
    code, out, err = bob.finish()
    assert code == 0, (out, err)
    assert err == ""


def test_log_in_again_and_failures_are_reported_in_order(server: int, tmp_path: Path, procs: list[Chatapp]) -> None:
    first = chatapp(procs, tmp_path, server, "--user", "carol", "--signup", "--no-listen", stdin=subprocess.DEVNULL)
    code, out, _err = first.finish()
    assert code == 0
    # the first login made carol's identity key on this server: the person is told, once, right after READY
    ready, made = out.splitlines()[:2]
    assert ready == "READY carol online"
    made_line = re.fullmatch(
        r"NOTICE made a new identity key for carol on this server: (sha256:[0-9a-f]{64}) \(kept in (.+)\);"
        r" contacts compare it with /fingerprint",  # a signup: no contact knows an older key
        made,
    )
    assert made_line is not None, made
    assert Path(made_line.group(2)).is_file()
    carol = chatapp(procs, tmp_path, server, "--user", "carol", "--no-listen")
    carol.send("/msg nobody hello")
    carol.send("/frobnicate")
    carol.send("/accept 7")
    carol.send("/listen")
    carol.close_stdin()
    code, out, _err = carol.finish()
    lines = out.splitlines()
    assert lines[0] == "READY carol online"
    assert lines[1] == "ERROR /msg nobody: there is no such user (404 no-such-user)"
    assert lines[2] == "ERROR unknown command /frobnicate; /help lists them"
    assert lines[3] == "ERROR /accept 7: no transfer number 7 (see /transfers)"
    assert lines[4] == "OK listen off"
    assert code == 1  # some commands failed


def test_send_one_shot_against_listen_accept_files(server: int, tmp_path: Path, procs: list[Chatapp]) -> None:
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_bytes(b"hello\r\n")
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    for name in ("dave", "erin"):
        signup = chatapp(procs, tmp_path, server, "--user", name, "--signup", "--no-listen", stdin=subprocess.DEVNULL)
        assert signup.finish()[0] == 0
    listener = chatapp(
        procs, tmp_path, server, "listen", "--user", "erin", "--accept-files", "--downloads", str(tmp_path / "in")
    )
    listener.expect(r"^READY erin listening")
    # options after the subcommand, as well as before it
    sender = chatapp(
        procs, tmp_path, server, "send", "--user", "dave", "erin", str(small), str(big), stdin=subprocess.DEVNULL
    )
    code, out, err = sender.finish(timeout=30)
    assert code == 0, (out, err)
    assert len([line for line in out.splitlines() if line.startswith("DONE ")]) == 2
    listener.expect(r"^DONE \d+ receive dave 7 ")
    assert (tmp_path / "in" / "small.txt").read_bytes() == b"hello\r\n"
    assert sha256(tmp_path / "in" / "big.bin") == sha256(big)
    # nobody there: a clear line and a failure code
    offline = chatapp(procs, tmp_path, server, "send", "--user", "dave", "nobody", str(small), stdin=subprocess.DEVNULL)
    code, out, err = offline.finish()
    assert code == 1
    assert err.startswith(f"chatapp: {small}: not sent: ") and err.count("\n") == 1  # names the file
    # SIGTERM: BYE to peers, QUIT to the server, exit 0
    listener.signal(signal.SIGTERM)
    code, out, err = listener.finish()
    assert code == 0, err
    assert "Traceback" not in err


def test_wrong_password_three_times_blocks_the_address(server: int, tmp_path: Path, procs: list[Chatapp]) -> None:
    signup = chatapp(procs, tmp_path, server, "--user", "frank", "--signup", stdin=subprocess.DEVNULL)
    assert signup.finish()[0] == 0
    results = []
    for _ in range(4):
        p = chatapp(procs, tmp_path, server, "--user", "frank", password="not the password", stdin=subprocess.DEVNULL)
        results.append(p.finish())
    assert [r[0] for r in results] == [4, 4, 5, 5]
    assert results[0][2] == "chatapp: wrong user name or password; 2 tries left before this address is blocked\n"
    assert results[1][2] == (
        "chatapp: wrong user name or password; 1 try left: one more wrong password blocks this address\n"
    )
    for _code, _out, err in results[2:]:
        assert err == (
            "chatapp: too many failed logins: this address is blocked for 5 more minutes (no account can log in "
            "from it); the account frank may be locked as long (from every address)\n"
        )


def test_start_errors_are_one_line_with_their_own_codes(server: int, tmp_path: Path, procs: list[Chatapp]) -> None:
    def run(*args: str, password: str = "correct horse battery") -> tuple[int, str]:
        p = chatapp(procs, tmp_path, server, *args, password=password, stdin=subprocess.DEVNULL)
        code, _out, err = p.finish()
        assert err.count("\n") == (1 if code else 0) and "Traceback" not in err, err
        return code, err

    assert run("--user", "gina", "--signup")[0] == 0
    assert run("--user", "gina", "--signup")[0] == 7  # taken
    assert run("--user=-bad", "--signup")[0] == 8
    assert run("--user", "gina2", "--signup", password="short")[0] == 8
    assert run("--user", "gina", "--max-file-size", "lots")[0] == 2
    unreachable = Chatapp("--server", "127.0.0.1:1", "--user", "gina", cwd=tmp_path, stdin=subprocess.DEVNULL)
    procs.append(unreachable)
    code, _out, err = unreachable.finish()
    assert code == 3 and "cannot reach the chat server" in err
    nopass = Chatapp(
        "--server", f"127.0.0.1:{server}", "--user", "gina", cwd=tmp_path, password="", stdin=subprocess.DEVNULL
    )
    procs.append(nopass)
    code, _out, err = nopass.finish()
    assert code == 2 and "CHATAPP_PASSWORD" in err


def test_offer_timeout_and_a_login_elsewhere_end_the_one_shots(
    server: int, tmp_path: Path, procs: list[Chatapp]
) -> None:
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello")
    for name in ("hana", "ivan"):
        signup = chatapp(procs, tmp_path, server, "--user", name, "--signup", "--no-listen", stdin=subprocess.DEVNULL)
        assert signup.finish()[0] == 0
    listener = chatapp(procs, tmp_path, server, "listen", "--user", "ivan")  # answers no offer
    listener.expect(r"^READY ivan listening")
    sender = chatapp(procs, tmp_path, server, "send", "--user", "hana", "--offer-timeout", "1", "ivan", str(small),
                     stdin=subprocess.DEVNULL)  # fmt: skip
    code, out, err = sender.finish(timeout=30)
    assert code == 1, (out, err)
    assert re.search(r"^TIMEOUT \d+ ivan 1 small\.txt$", out, re.MULTILINE), out
    # the timeout first, then its effect, labelled as a timeout (not as a cancel someone asked for)
    assert re.search(r"^TIMEOUT .*\nFAILED \d+ send ivan cancelled timed-out$", out, re.MULTILINE), out
    assert "1 of 1 files not delivered (small.txt: no answer within 1 s)" in err, err
    listener.expect(r"^FAILED \d+ receive hana cancelled cancelled$")  # the wire's reason list is fixed
    # ivan logs in elsewhere: the listening one-shot stops with its own code instead of running unregistered
    again = chatapp(procs, tmp_path, server, "--user", "ivan", "--no-listen", stdin=subprocess.DEVNULL)
    assert again.finish()[0] == 0
    code, out, err = listener.finish(timeout=30)
    assert code == 10, (out, err)
    assert "you logged in elsewhere" in err and err.count("\n") == 1


def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, procs: list[Chatapp]) -> None:
    folder = Path(os.environ["XDG_CONFIG_HOME"]) / "chatapp"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text('server = "x"\nsever = "typo"\n')
    p = Chatapp("--user", "x", cwd=tmp_path, stdin=subprocess.DEVNULL)
    procs.append(p)
    code, _out, err = p.finish()
    assert code == 2 and "unknown key 'sever'" in err and err.count("\n") == 1


def test_listen_stops_with_11_when_the_server_comes_back_with_another_key(
    tmp_path: Path, procs: list[Chatapp]
) -> None:
    """Given up on the server for good, a listening one-shot can no longer be reached: it says why and
    exits with that reason's code, instead of running on logged out."""
    import socket

    from processes import FINGERPRINT, pin_server, twistd, wait_for_output

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listen = f"tcp:{port}:interface=127.0.0.1"
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    first = twistd("-n", "--pidfile=", "chatserver", "--listen", listen, "--bcrypt-rounds", "4", cwd=first_dir)
    try:
        pin_server(port, wait_for_output(first, FINGERPRINT).group(1))
        signup = chatapp(procs, tmp_path, port, "--user", "kim", "--signup", "--no-listen", stdin=subprocess.DEVNULL)
        assert signup.finish()[0] == 0
        listener = chatapp(procs, tmp_path, port, "listen", "--user", "kim")
        listener.expect(r"^READY kim listening")
    finally:
        stop(first)
    # the same address, a new database and so a new certificate
    second = twistd("-n", "--pidfile=", "chatserver", "--listen", listen, "--bcrypt-rounds", "4", cwd=second_dir)
    try:
        wait_for_output(second, FINGERPRINT)
        code, out, err = listener.finish(timeout=30)
        assert code == 11, (out, err)
        assert re.search(r"^NOTICE gave up reconnecting to the server: REFUSED: ", out, re.MULTILINE), out
        assert "presented a different key than the one pinned" in err and err.count("\n") == 1, err
    finally:
        stop(second)


def test_no_tls_warns_the_person_first(tmp_path: Path, procs: list[Chatapp]) -> None:
    """--no-tls is said on stderr before anything is sent; the server's log is not where a user looks."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    run = chatapp(procs, tmp_path, port, "--no-tls", "--user", "lee", stdin=subprocess.DEVNULL)
    code, _, err = run.finish(timeout=30)
    assert code == 3, err
    lines = err.splitlines()
    assert lines[0].startswith("chatapp: warning: --no-tls: your password") and "clear text" in lines[0]
    assert lines[1].startswith("chatapp: cannot reach the chat server")


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_stopped_while_connecting_is_130_interrupted(tmp_path: Path, procs: list[Chatapp], signal_number: int) -> None:
    """A server that accepted and stays silent: the client waits for the TLS handshake. Ctrl-C (or
    SIGTERM) then is "interrupted" and 130, as the docs say; the connection the shutdown cut is not
    reported as a lost connection with exit 3."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes the TCP handshake; nobody ever answers
        port = silent.getsockname()[1]
        run = chatapp(
            procs, tmp_path, port, "--user", "lee", "--no-listen", "--server-fingerprint", "sha256:" + "ab" * 32
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until it is connected, waiting for the server's TLS answer
            if _connections_to(port):  # connected: it now waits for the server's TLS answer
                break
            time.sleep(0.05)
        run.process.send_signal(signal_number)
        code, out, err = run.finish(timeout=30)
    assert code == 130, (out, err)
    assert [line for line in err.splitlines() if line] == ["chatapp: interrupted"], err
    assert "Traceback" not in err


def _connections_to(port: int) -> list[str]:
    """Established TCP connections to 127.0.0.1:port, from /proc/net/tcp."""
    target = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return [line for line in table.read().splitlines()[1:] if line.split()[2] == target and line.split()[3] == "01"]
