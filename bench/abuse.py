"""The attacks of issue 11 against a real ``twistd chatserver`` and a real ``chatapp listen``.

Each attack gets fresh victims in a temporary folder: ``twistd -n chatserver``
on a free 127.0.0.1 port and, where the peer side is attacked, ``chatapp
listen --accept-files`` logged in to it (user ``victim``). The victims are
measured once quiet (the baseline: VmHWM and open descriptors after setup),
then sampled every 0.1 s while the attack runs (VmRSS, /proc/<pid>/fd); the
attacked peak is VmHWM at the end. An attack stops early when a victim
passes ``--cap`` MiB of RSS. The attacker is this process, with raw sockets
on loopback; several attacks bind their sockets to 127.0.0.x source
addresses (all of 127/8 is loopback on Linux).

Every attack reports a counter seen from outside and a verdict, "bounded?",
judged by the rule printed next to it. The code of issue 10 fails most of
them: that is the point (the before of a before/after).

    python bench/abuse.py [--quick] [--only 1,3,12] [--json PATH] [--cap MIB]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import selectors
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import (
    PASSWORD,
    Server,
    exit_on_sigterm,
    machine,
    raise_fd_limit,
    sources,
    start_chatserver,
    table,
    terminate,
    workdir,
)
from cli_processes import CHATAPP

MiB = 1024 * 1024
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
# more than this growth of a victim's peak RSS over its baseline is "not bounded" for the memory attacks
MEMORY_RULE_MIB = 32
FAST_SERVER = ("--bcrypt-rounds", "4", "--signups-per-hour", "100000", "--max-connections-per-address", "1000")


# -- the attacker's sockets -----------------------------------------------------


_TLS: list[ssl.SSLContext] = []
_FINGERPRINT: list[str] = []  # of the attacker's certificate, published with KEY


def attacker_tls() -> ssl.SSLContext:
    """TLS 1.3 for the attacker, no verification; it shows a certificate of its own (peer links need one)."""
    if not _TLS:
        from chatapp.tls.identity import identity_to_pem, new_identity

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        identity = new_identity("attacker")
        with tempfile.TemporaryDirectory(prefix="abuse-key-") as folder:  # loaded, then gone
            pem = Path(folder) / "attacker.pem"
            pem.write_bytes(identity_to_pem(identity))
            context.load_cert_chain(pem)
        _FINGERPRINT.append(identity.fingerprint)
        _TLS.append(context)
    return _TLS[0]


class Conn:
    """A TLS line socket to 127.0.0.1, optionally from another loopback address; every read has a deadline."""

    def __init__(self, port: int, source: str | None = None, timeout: float = 30.0) -> None:
        plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source is not None:
            plain.bind((source, 0))
        plain.settimeout(timeout)
        plain.connect(("127.0.0.1", port))
        self.sock = attacker_tls().wrap_socket(plain)  # both the server and peers speak TLS from the first byte
        self.buffer = b""
        self.eof = False

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(line + "\r\n" for line in lines).encode("utf-8"))

    def line(self, timeout: float = 30.0) -> str | None:
        """The next line, or None at EOF, a reset or the deadline."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError:  # reset by the victim: as closed as an EOF
                self.eof = True
                return None
            if not chunk:
                self.eof = True
                return None
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\n", 1)
        return raw.rstrip(b"\r").decode("utf-8", "replace")

    def until(self, prefix: str, timeout: float = 30.0) -> str:
        """Skip lines up to the first one starting with ``prefix``; fail if none comes."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while (line := self.line(max(0.0, deadline - time.monotonic()))) is not None:
            if line.startswith(prefix):
                return line
            seen.append(line)
        raise RuntimeError(f"no {prefix!r} line; got {seen[-5:]}")

    def replies(self, count: int, timeout: float = 60.0) -> list[str]:
        """The next ``count`` lines that are not events (``*``), fewer at EOF or the deadline."""
        deadline = time.monotonic() + timeout
        found: list[str] = []
        while len(found) < count:
            line = self.line(max(0.0, deadline - time.monotonic()))
            if line is None:
                break
            if not line.startswith("*"):
                found.append(line)
        return found

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


def flood(sock: socket.socket, block: bytes, seconds: float, stop: Callable[[], bool]) -> int:
    """Write ``block`` again and again for ``seconds``, never reading; the bytes the kernel took."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(block)
    offset = 0
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        while time.monotonic() < deadline and not stop():
            if not selector.select(0.1):
                continue
            try:
                n = sock.send(view[offset:])
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except OSError:
                break  # the victim closed: that is a bound too
            sent += n
            offset = (offset + n) % len(block)
    return sent


def burst(
    conns: Sequence[Conn],
    lines: Sequence[str | None],
    timeout: float,
    on_reply: Callable[[int], None] | None = None,
) -> list[tuple[str | None, float]]:
    """Send ``lines[i]`` on ``conns[i]``, all at once; each one's first reply (None if closed) and arrival time.

    A connection whose line is None sends nothing here: ``on_reply`` (called with
    the number of replies so far after each one) may send on it later.
    """
    for conn, line in zip(conns, lines, strict=True):
        if line is not None:
            conn.send(line)
    t0 = time.monotonic()
    results: list[tuple[str | None, float]] = [(None, 0.0)] * len(conns)
    waiting = set(range(len(conns)))
    with selectors.DefaultSelector() as selector:
        for i, conn in enumerate(conns):
            conn.sock.setblocking(False)
            selector.register(conn.sock, selectors.EVENT_READ, i)
        while waiting and time.monotonic() - t0 < timeout:
            for key, _ in selector.select(0.5):
                i = key.data
                conn = conns[i]
                try:
                    chunk = conn.sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                except OSError:
                    chunk = b""
                conn.buffer += chunk
                while b"\n" in conn.buffer and i in waiting:
                    raw, conn.buffer = conn.buffer.split(b"\n", 1)
                    line = raw.rstrip(b"\r").decode("utf-8", "replace")
                    if not line.startswith("*"):
                        results[i] = (line, time.monotonic() - t0)
                        waiting.discard(i)
                        if on_reply is not None:
                            on_reply(len(conns) - len(waiting))
                if not chunk and i in waiting:
                    results[i] = (None, time.monotonic() - t0)
                    waiting.discard(i)
                if i not in waiting:
                    selector.unregister(conn.sock)
    for conn in conns:
        conn.sock.setblocking(True)
    return results


def greeted(port: int, source: str | None = None) -> Conn:
    conn = Conn(port, source)
    conn.until("* HELLO")
    return conn


def signed_up(port: int, user: str, source: str | None = None) -> Conn:
    conn = greeted(port, source)
    conn.send(f"SIGNUP {user} {PASSWORD}", f"KEY {_FINGERPRINT[0]}")  # the key our TLS sockets show
    conn.until("OK SIGNUP")
    conn.until("OK KEY")
    return conn


def peer_session(server: Conn, requester: str, target: str = "victim") -> Conn:
    """A finished handshake with ``target``'s listener, as ``requester`` (logged in on ``server``)."""
    server.send(f"CONNECT {target}")
    _ok, _verb, _user, host, port, token, _proof, _key = server.until("OK CONNECT").split(" ")
    peer = Conn(int(port))
    assert host == "127.0.0.1"
    peer.send(f"HELLO chatapp/2 {requester} {token}")
    peer.until("WELCOME")
    return peer


# -- the victims ------------------------------------------------------------------


class Listener:
    """``chatapp listen --accept-files`` as user ``victim``; its events go to a file read back by ``events``."""

    def __init__(self, work: Path, server_port: int, user: str = "victim") -> None:
        self.downloads = work / "downloads"
        self.out_path = work / f"{user}.out"
        self._out = open(self.out_path, "wb")  # closed in stop()
        self._err = open(work / f"{user}.err", "wb")
        argv = [
            str(CHATAPP), "listen", "--server", f"127.0.0.1:{server_port}", "--user", user, "--signup",
            "--listen", "tcp:0:interface=127.0.0.1", "--downloads", str(self.downloads), "--accept-files",
            "--trust-on-first-use",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            env=dict(os.environ, CHATAPP_PASSWORD=PASSWORD),
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while not any(line.startswith("READY ") for line in self.events()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"chatapp listen did not start: {(work / f'{user}.err').read_text()[-2000:]}")
            time.sleep(0.05)
        self.port = int(next(line for line in self.events() if line.startswith("READY ")).split(" ")[4])

    def events(self) -> list[str]:
        """Its stdout so far, cut at LF only (what a careful consumer does)."""
        return self.out_path.read_text(encoding="utf-8", errors="replace").split("\n")

    def stop(self) -> None:
        terminate(self.proc, 10)
        self._out.close()
        self._err.close()


@dataclass
class Reading:
    hwm_kib: int
    rss_kib: int
    fds: int


def status_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for {pid}")


def read_process(pid: int) -> Reading:
    return Reading(status_kib(pid, "VmHWM"), status_kib(pid, "VmRSS"), len(os.listdir(f"/proc/{pid}/fd")))


class Watch:
    """Samples the victims every 0.1 s in a thread: the most descriptors seen, and ``over`` past the RSS cap."""

    def __init__(self, pids: dict[str, int], cap_kib: int) -> None:
        self.pids = pids
        self.cap_kib = cap_kib
        self.max_fds = {name: 0 for name in pids}
        self.over = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        for name, pid in self.pids.items():
            try:
                reading = read_process(pid)
            except (OSError, RuntimeError):
                continue
            self.max_fds[name] = max(self.max_fds[name], reading.fds)
            if reading.rss_kib > self.cap_kib:
                self.over.set()

    def stopped(self) -> bool:
        return self.over.is_set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


@dataclass
class Row:
    attack: str
    victim: str
    base_mib: float
    peak_mib: float
    base_fds: int
    peak_fds: int
    counter: str
    bounded: bool
    rule: str
    capped: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.base_mib


class Rig:
    """Fresh victims for one attack, their quiet baseline, and the watch while the attack runs."""

    def __init__(self, work: Path, cap_mib: int, server_options: Sequence[str], listener: bool) -> None:
        self.server: Server = start_chatserver(work, *server_options)
        self.listener: Listener | None = None
        try:
            if listener:
                self.listener = Listener(work, self.server.port)
        except BaseException:
            self.server.stop()
            raise
        self.pids = {"server": self.server.pid}
        if self.listener is not None:
            self.pids["listener"] = self.listener.pid
        self.cap_kib = cap_mib * 1024
        self.baseline: dict[str, Reading] = {}
        self.watch: Watch | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def db(self) -> Path:
        return self.server.log.parent / "chat.sqlite3"

    def quiet(self) -> None:
        """Let the setup settle, take the baseline and start watching."""
        time.sleep(1.0)
        self.baseline = {name: read_process(pid) for name, pid in self.pids.items()}
        self.watch = Watch(self.pids, self.cap_kib)

    def stopped(self) -> bool:
        return self.watch is not None and self.watch.stopped()

    def row(self, attack: str, victim: str, counter: str, bounded: bool, rule: str, **extra: object) -> Row:
        assert self.watch is not None
        self.watch.sample()
        base = self.baseline[victim]
        now = read_process(self.pids[victim])
        return Row(
            attack=attack,
            victim=victim,
            base_mib=base.hwm_kib / 1024,
            peak_mib=now.hwm_kib / 1024,
            base_fds=base.fds,
            peak_fds=max(self.watch.max_fds[victim], now.fds),
            counter=counter,
            bounded=bounded and not self.watch.over.is_set(),
            rule=rule,
            capped=self.watch.over.is_set(),
            extra=dict(extra),
        )

    def memory_row(
        self, attack: str, victim: str, counter: str, limit_mib: float = MEMORY_RULE_MIB, **extra: object
    ) -> Row:
        row = self.row(attack, victim, counter, True, f"peak - baseline <= {limit_mib:g} MiB", **extra)
        row.bounded = row.bounded and row.growth_mib <= limit_mib
        return row

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.close()
        if self.listener is not None:
            self.listener.stop()
        self.server.stop()


@contextmanager
def rig(cap_mib: int, server_options: Sequence[str] = FAST_SERVER, listener: bool = True) -> Iterator[Rig]:
    with workdir("bench-abuse-") as work:
        victims = Rig(work, cap_mib, server_options, listener)
        try:
            yield victims
        finally:
            victims.stop()


# -- the attacks ------------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool
    cap_mib: int


class Addresses:
    """Fresh loopback source addresses: a block or a count left by one attack never touches the next."""

    def __init__(self) -> None:
        self._all = sources(4000)
        self._next = 0

    def take(self, count: int) -> list[str]:
        taken = self._all[self._next : self._next + count]
        self._next += count
        return taken


def attack_lockout(s: Settings) -> list[Row]:
    """1. Wrong LOGINs at once: per address, per name, and a right password racing a burst."""
    max_attempts = 3
    rule = f"ERR 401 replies <= --max-attempts - 1 = {max_attempts - 1}"
    rows: list[Row] = []
    addresses = Addresses()
    # real bcrypt cost: the race is between the check before bcrypt and the block set after it
    options = ("--bcrypt-rounds", "12", "--max-attempts", str(max_attempts), "--signups-per-hour", "1000")
    with rig(s.cap_mib, options, listener=False) as victims:
        for name in ("target", "target2"):
            signed_up(victims.port, name, addresses.take(1)[0]).close()
        victims.quiet()

        one_address = addresses.take(1)[0]
        conns = [greeted(victims.port, one_address) for _ in range(20)]
        replies = [r for r, _ in burst(conns, [f"LOGIN ghost{i} wrong-password-{i}" for i in range(20)], 120)]
        checked = sum(1 for r in replies if r and r.startswith("ERR 401"))
        blocked = sum(1 for r in replies if r and r.startswith("ERR 429 blocked"))
        rows.append(
            victims.row(
                "1a 20 wrong LOGINs at once, 1 address",
                "server",
                f"{checked} x 401, {blocked} x 429 blocked",
                checked <= max_attempts - 1,
                rule,
                replies=replies,
            )
        )
        for conn in conns:
            conn.close()

        spread = addresses.take(8)
        conns = [greeted(victims.port, spread[i % 8]) for i in range(16)]
        replies = [r for r, _ in burst(conns, [f"LOGIN target wrong-password-{i}" for i in range(16)], 120)]
        checked = sum(1 for r in replies if r and r.startswith("ERR 401"))
        locked = sum(1 for r in replies if r and r.startswith("ERR 429"))
        rows.append(
            victims.row(
                "1b 16 wrong LOGINs at once, 1 name, 8 addresses",
                "server",
                f"{checked} x 401, {locked} x 429",
                checked <= max_attempts - 1,
                rule,
                replies=replies,
            )
        )
        for conn in conns:
            conn.close()

        spread = addresses.take(9)
        conns = [greeted(victims.port, spread[i % 8]) for i in range(16)]
        conns.append(greeted(victims.port, spread[8]))
        lines: list[str | None] = [f"LOGIN target2 wrong-password-{i}" for i in range(16)]

        def right_password(answered: int) -> None:
            # one wrong password answered, the lock not yet reached: the right one passes any check made now
            if answered == 1:
                conns[-1].sock.sendall(f"LOGIN target2 {PASSWORD}\r\n".encode())

        results = burst(conns, [*lines, None], 120, right_password)
        right, right_at = results[-1]
        # replies go out as the checks finish: the wrong ones answered before the OK were checked before it
        wrong_before = sum(1 for reply, at in results[:-1] if reply and reply.startswith("ERR 4") and at < right_at)
        late_ok = bool(right and right.startswith("OK")) and wrong_before >= max_attempts
        rows.append(
            victims.row(
                "1c right password racing 16 wrong",
                "server",
                f"right LOGIN: {right} after {wrong_before} wrong replies",
                not late_ok,
                f"no OK LOGIN after --max-attempts = {max_attempts} wrong ones were answered",
                replies=results,
            )
        )
        for conn in conns:
            conn.close()
    return rows


def attack_pipeline(s: Settings) -> list[Row]:
    """2. Commands pipelined behind a slow SIGNUP (bcrypt), never read."""
    # the flood stops at the SIGNUP's reply or after `seconds`: bcrypt at this cost takes longer than that here
    rounds = "15" if s.quick else "16"
    seconds = 3.0 if s.quick else 10.0
    with rig(s.cap_mib, ("--bcrypt-rounds", rounds), listener=False) as victims:
        conn = greeted(victims.port)
        victims.quiet()
        conn.send(f"SIGNUP slowpoke {PASSWORD}")
        t0 = time.monotonic()
        answered = threading.Event()

        def watch_reply() -> None:
            # the first byte back is the SIGNUP's reply: from then on it is attack 3, not this one
            with selectors.DefaultSelector() as selector:
                selector.register(conn.sock, selectors.EVENT_READ)
                while not answered.is_set() and time.monotonic() - t0 < seconds + 5:
                    if selector.select(0.05):
                        answered.set()

        watcher = threading.Thread(target=watch_reply, daemon=True)
        watcher.start()
        sent = flood(conn.sock, b"PING\r\n" * 10000, seconds, lambda: answered.is_set() or victims.stopped())
        pending = time.monotonic() - t0
        answered.set()
        watcher.join()
        row = victims.memory_row(
            f"2 PINGs pipelined behind SIGNUP at bcrypt {rounds}",
            "server",
            f"{sent / MiB:.1f} MiB taken in {pending:.1f} s",
            sent_bytes=sent,
        )
        conn.close()
    return [row]


def attack_unread_errors(s: Settings) -> list[Row]:
    """3. Lines that each get an ERR, answers never read: the server and a listening peer."""
    seconds = 3.0 if s.quick else 10.0
    rows: list[Row] = []
    with rig(s.cap_mib) as victims:
        server = signed_up(victims.port, "mallory")
        peer = peer_session(server, "mallory")
        raw = signed_up(victims.port, "mallory2")
        victims.quiet()
        sent = flood(raw.sock, b"X\r\n" * 20000, seconds, victims.stopped)
        rows.append(
            victims.memory_row("3 unread ERRs (server)", "server", f"{sent / MiB:.1f} MiB sent in {seconds:g} s")
        )
        raw.close()
        sent = flood(peer.sock, b"X\r\n" * 20000, seconds, victims.stopped)
        rows.append(
            victims.memory_row("3 unread ERRs (peer)", "listener", f"{sent / MiB:.1f} MiB sent in {seconds:g} s")
        )
        peer.close()
        server.close()
    return rows


def attack_tokens(s: Settings) -> list[Row]:
    """4. CONNECT flood: tokens on the server, ``* REQUEST`` lines at the target."""
    count = 20_000 if s.quick else 200_000
    batch = 500
    with rig(s.cap_mib) as victims:
        server = signed_up(victims.port, "mallory")
        assert victims.listener is not None
        victims.quiet()
        granted = refused = 0
        t0 = time.monotonic()
        while granted + refused < count and not victims.stopped() and time.monotonic() - t0 < 60:
            server.send(*["CONNECT victim"] * batch)
            replies = server.replies(batch)
            granted += sum(1 for r in replies if r.startswith("OK CONNECT"))
            refused += len(replies) - sum(1 for r in replies if r.startswith("OK CONNECT"))
            if len(replies) < batch:
                break
        elapsed = time.monotonic() - t0
        time.sleep(1.0)  # let the last REQUEST events reach the listener's output
        requests = sum(1 for line in victims.listener.events() if line.startswith("REQUEST "))
        rule = "tokens and REQUESTs <= 16 (the cap of PROTOCOL.md version 2)"
        rows = [
            victims.row(
                "4 CONNECT flood",
                "server",
                f"{granted:,} tokens, {refused:,} refused in {elapsed:.1f} s",
                granted <= 16,
                rule,
            ),
            victims.row("4 CONNECT flood", "listener", f"{requests:,} REQUEST lines", requests <= 16, rule),
        ]
        server.close()
    return rows


def chatapp_send(work: Path, port: int, user: str, signup: bool, path: Path) -> int:
    """``chatapp send victim PATH`` as ``user``; its exit status (-1 if it hung for 30 s)."""
    argv = [
        str(CHATAPP),
        "send",
        "--server",
        f"127.0.0.1:{port}",
        "--user",
        user,
        "--no-listen",
        "--trust-on-first-use",
    ]
    argv += ["--signup"] if signup else []
    argv += ["victim", str(path)]
    env = dict(os.environ, CHATAPP_PASSWORD=PASSWORD)
    try:
        done = subprocess.run(argv, env=env, cwd=work, capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return -1
    return done.returncode


def attack_handshake_slots(s: Settings) -> list[Row]:
    """5. Idle connections to the listener's peer port from one address; can a real peer still get in?"""
    idle_count = 20
    attempts = 3
    with rig(s.cap_mib) as victims:
        assert victims.listener is not None
        note = victims.server.log.parent / "note.txt"
        note.write_text("hello\n")
        stranger = Addresses().take(1)[0]
        victims.quiet()
        idle = []
        for _ in range(idle_count):
            with suppress(OSError):
                idle.append(Conn(victims.listener.port, stranger))
        got_in = 0
        for attempt in range(1, attempts + 1):
            if chatapp_send(victims.server.log.parent, victims.port, "friend", attempt == 1, note) == 0:
                got_in = attempt
                break
        still_open = sum(1 for conn in idle if conn.line(0.05) is None and not conn.eof)
        row = victims.row(
            f"5 {idle_count} idle peer connections, 1 address",
            "listener",
            (f"real peer in at try {got_in}" if got_in else f"real peer refused {attempts} times")
            + f"; {still_open}/{len(idle)} idle held",
            got_in == 1,
            "a real chatapp send gets in at its first try",
        )
        for conn in idle:
            conn.close()
    return [row]


def partial_files(downloads: Path) -> int:
    """Files kept below the downloads folder but not in it: the partials."""
    return sum(1 for p in downloads.rglob("*") if p.is_file() and p.parent != downloads)


def attack_silent_offers(s: Settings) -> list[Row]:
    """6. Auto-accepted offers that never send a byte, over two connections."""
    per_connection = 50 if s.quick else 150
    with rig(s.cap_mib) as victims:
        assert victims.listener is not None
        server = signed_up(victims.port, "mallory")
        victims.quiet()
        accepted = 0
        for round_ in range(2):
            peer = peer_session(server, "mallory")
            for i in range(per_connection):
                peer.send(f"OFFER s{round_}x{i} 1000000 silent-{round_}-{i}.bin")
            replies = peer.replies(per_connection, 30)
            accepted += sum(1 for r in replies if r.startswith("ACCEPT"))
            if victims.watch is not None:
                victims.watch.sample()
            peer.close()
        time.sleep(1.0)  # the victim sees the close and keeps or deletes the partials
        kept = partial_files(victims.listener.downloads)
        row = victims.row(
            f"6 {2 * per_connection} silent offers, 2 connections",
            "listener",
            f"{accepted} accepted, {kept} partials kept",
            False,
            "descriptors - baseline <= 32 and partials kept <= 64",
            partials=kept,
        )
        row.bounded = not row.capped and row.peak_fds - row.base_fds <= 32 and kept <= 64
        server.close()
    return [row]


def attack_refused_ids(s: Settings) -> list[Row]:
    """7. Many refused OFFERs on one connection (each id is remembered)."""
    count = 100_000 if s.quick else 400_000
    batch = 1000
    with rig(s.cap_mib) as victims:
        server = signed_up(victims.port, "mallory")
        peer = peer_session(server, "mallory")
        victims.quiet()
        rejected = 0
        for start in range(0, count, batch):
            if victims.stopped():
                break
            peer.send(*[f"OFFER r{i} 1000000000000000 huge.bin" for i in range(start, start + batch)])
            replies = peer.replies(batch)
            rejected += sum(1 for r in replies if r.startswith("REJECT"))
            if len(replies) < batch:
                break
        # each refused id costs about 100 bytes today; a bounded memory of them costs nothing that shows
        row = victims.memory_row("7 refused OFFERs, 1 connection", "listener", f"{rejected:,} REJECTs", limit_mib=4)
        peer.close()
        server.close()
    return [row]


def attack_offer_history(s: Settings) -> list[Row]:
    """8. Empty-file transfers one after another: the OFFER rate at the start and after the history grew."""
    count = 5_000 if s.quick else 20_000
    window = 1000
    depth = 32
    with rig(s.cap_mib) as victims:
        server = signed_up(victims.port, "mallory")
        peer = peer_session(server, "mallory")
        victims.quiet()
        done_at: list[float] = []
        sent = 0
        t0 = time.monotonic()

        def offer(i: int) -> None:
            peer.send(f"OFFER z{i} 0 e{i}.txt")

        while sent < min(depth, count):
            offer(sent)
            sent += 1
        while len(done_at) < sent and time.monotonic() - t0 < 600 and not victims.stopped():
            line = peer.line(30)
            if line is None:
                break
            verb, _, rest = line.partition(" ")
            if verb == "ACCEPT":
                peer.send(f"END {rest.split(' ')[0]} {EMPTY_SHA256}")
            elif verb in ("DONE", "FAIL", "REJECT"):
                done_at.append(time.monotonic())
                if sent < count:
                    offer(sent)
                    sent += 1

        def rate(times: list[float]) -> float:
            return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")

        first, last = rate(done_at[:window]), rate(done_at[-window:])
        row = victims.row(
            f"8 {len(done_at):,} empty transfers",
            "listener",
            f"{first:,.0f}/s first {window}, {last:,.0f}/s last {window}",
            last >= 0.5 * first,
            "the rate of the last 1000 >= half of the first 1000",
            first_rate=first,
            last_rate=last,
        )
        peer.close()
        server.close()
    return [row]


def attack_line_separators(s: Settings) -> list[Row]:
    """9. U+2028/U+2029 in a chat message reaching script-mode output."""
    forged = "MSG before\u2028DONE 9 receive mallory 1 /etc/passwd\u2029after"
    with rig(s.cap_mib) as victims:
        assert victims.listener is not None
        server = signed_up(victims.port, "mallory")
        peer = peer_session(server, "mallory")
        victims.quiet()
        peer.send(forged, "MSG joined \U0001f469\u200d\U0001f4bb emoji", "MSG last")
        deadline = time.monotonic() + 10
        while not any(line.startswith("MSG mallory last") for line in victims.listener.events()):
            if time.monotonic() > deadline:
                raise RuntimeError("the listener did not print the messages")
            time.sleep(0.05)
        events = victims.listener.events()
        extra = sum(len(line.splitlines()) - 1 for line in events if line)
        zwj_raw = any("\u200d" in line for line in events)
        row = victims.row(
            "9 U+2028/U+2029 in MSG",
            "listener",
            f"{extra} forged line(s) for str.splitlines(); ZWJ {'raw' if zwj_raw else 'escaped'}",
            extra == 0,
            "each output line is one line for str.splitlines()",
            zwj_raw=zwj_raw,
        )
        peer.close()
        server.close()
    return [row]


def block_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as database:
        found: int = database.execute("SELECT count(*) FROM blocks").fetchone()[0]
    return found


def lock_fake_name(port: int, name: str, source: str) -> None:
    """Three wrong LOGINs for ``name`` from ``source``: the third locks the name and blocks the address."""
    conn = greeted(port, source)
    conn.send(*[f"LOGIN {name} wrong-password"] * 3)
    conn.replies(3, 30)
    conn.close()


def attack_block_table(s: Settings) -> list[Row]:
    """10. Locked fake names: block-table rows, and whether expired rows go."""
    count = 50 if s.quick else 200
    block_time = 3.0
    addresses = Addresses()
    options = (*FAST_SERVER, "--block-time", str(block_time))
    with rig(s.cap_mib, options, listener=False) as victims:
        victims.quiet()
        for i, source in enumerate(addresses.take(count)):
            lock_fake_name(victims.port, f"fake{i}", source)
        fresh = block_rows(victims.db)
        time.sleep(block_time + 1.0)  # every one of them expires
        lock_fake_name(victims.port, "fake-late", addresses.take(1)[0])
        later = block_rows(victims.db)
        row = victims.row(
            f"10 {count} fake names locked",
            "server",
            f"{fresh} rows; {later} after they expired and one more lock",
            later <= 2,
            "after expiry only the newest lock's rows (2) remain",
            rows_fresh=fresh,
            rows_after_expiry=later,
        )
    return [row]


def attack_ignored_lines(s: Settings) -> list[Row]:
    """11. Lines that must get no answer, and verbs that are ASCII only in look."""
    rows: list[Row] = []
    with rig(s.cap_mib) as victims:
        server = signed_up(victims.port, "mallory")
        peer = peer_session(server, "mallory")
        raw = greeted(victims.port)
        victims.quiet()

        raw.send("OK", "ERR 500 internal-error", "* HELLO chatapp/2", "OK PONG", "PING")
        answers = 0
        while (line := raw.line(10)) is not None and line != "OK PONG":
            answers += 1
        raw.send("p\u0131ng")  # dotless i: its upper() is "PING"
        dotless = raw.line(10)
        raw.send(f"\u017fignup longs {PASSWORD}")  # long s: its upper() is "SIGNUP"
        long_s = raw.line(10)
        accepted = int(dotless == "OK PONG") + int(bool(long_s and long_s.startswith("OK SIGNUP")))
        rows.append(
            victims.row(
                "11 ignorable lines, non-ASCII verbs",
                "server",
                f"{answers} answers to 4 ignorable lines; {accepted}/2 non-ASCII verbs run",
                answers == 0 and accepted == 0,
                "no answer to OK/ERR/*; non-ASCII verbs are unknown",
                dotless_i_reply=dotless,
                long_s_reply=long_s,
            )
        )
        raw.close()

        peer.send("OK", "ERR 400 unknown-command", "* HELLO", "PING")
        peer_answers = 0
        while (line := peer.line(10)) is not None and line != "PONG":
            peer_answers += 1
        peer.send("p\u0131ng")
        peer_dotless = peer.line(10)
        rows.append(
            victims.row(
                "11 ignorable lines, non-ASCII verbs",
                "listener",
                f"{peer_answers} answers to 3 ignorable lines; p\u0131ng -> {peer_dotless}",
                peer_answers == 0 and peer_dotless != "PONG",
                "no answer to OK/ERR/*; non-ASCII verbs are unknown",
            )
        )
        peer.close()
        server.close()
    return rows


def fuzz_case(rng: random.Random, noise: bytes) -> bytes:
    """One hostile opening: noise, a HELLO with a made-up token, an overlong line, or a wrong verb."""
    kind = rng.randrange(4)
    if kind == 0:
        start = rng.randrange(len(noise))
        return noise[start : start + rng.randrange(1, 300_000)]
    if kind == 1:
        return f"HELLO chatapp/2 user{rng.randrange(10**6)} {rng.randbytes(16).hex()}\r\n".encode()
    if kind == 2:
        return b"A" * rng.randrange(16_000, 40_000)
    return rng.choice([b"MSG hi\r\n", b"WELCOME chatapp/2 x y\r\n", b"HELLO\r\n", b"\xff\xfe\r\n", b"\r\n\r\n"])


def attack_handshake_soak(s: Settings) -> list[Row]:
    """12. Random handshakes one after another on a listener: does its RSS level off?"""
    count = 2_000 if s.quick else 10_000
    rng = random.Random(12)
    noise = rng.randbytes(600_000)
    with rig(s.cap_mib) as victims:
        assert victims.listener is not None
        victims.quiet()
        series: list[int] = []
        pid = victims.pids["listener"]
        for i in range(count):
            if victims.stopped():
                break
            conn = Conn(victims.listener.port, timeout=5)
            with suppress(OSError):
                conn.sock.sendall(fuzz_case(rng, noise))
                conn.sock.shutdown(socket.SHUT_WR)
            while conn.line(5) is not None:
                pass
            conn.close()
            if (i + 1) % (count // 10) == 0:
                series.append(status_kib(pid, "VmRSS"))
        half = len(series) // 2
        first_half = (series[half - 1] - series[0]) / 1024 if half else 0.0
        second_half = (series[-1] - series[half - 1]) / 1024 if half else 0.0
        row = victims.row(
            f"12 {count:,} fuzzed handshakes",
            "listener",
            f"RSS +{first_half:.1f} MiB in the first half, +{second_half:.1f} MiB in the second",
            second_half <= 1.0,
            "RSS grows <= 1 MiB over the second half",
            rss_series_kib=series,
        )
    return [row]


ATTACKS: dict[int, Callable[[Settings], list[Row]]] = {
    1: attack_lockout,
    2: attack_pipeline,
    3: attack_unread_errors,
    4: attack_tokens,
    5: attack_handshake_slots,
    6: attack_silent_offers,
    7: attack_refused_ids,
    8: attack_offer_history,
    9: attack_line_separators,
    10: attack_block_table,
    11: attack_ignored_lines,
    12: attack_handshake_soak,
}


def parse_only(text: str) -> list[int]:
    chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    unknown = [n for n in chosen if n not in ATTACKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"no attack {unknown}; they are 1-{len(ATTACKS)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts and shorter floods (about a minute)")
    parser.add_argument("--only", type=parse_only, default=sorted(ATTACKS), help="attacks to run, e.g. 1,3,12")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--cap", type=int, default=1024, help="stop an attack when a victim passes this RSS (MiB)")
    args = parser.parse_args()
    exit_on_sigterm()
    raise_fd_limit()
    settings = Settings(quick=args.quick, cap_mib=args.cap)
    # the victims' known servers, keys and contacts: not the user's, and gone at the end
    private = tempfile.TemporaryDirectory(prefix="abuse-xdg-")
    atexit.register(private.cleanup)
    for variable in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        os.environ[variable] = os.path.join(private.name, variable.lower())
    attacker_tls()
    print(machine())
    rows: list[Row] = []
    started = time.monotonic()
    for number in args.only:
        t0 = time.monotonic()
        found = ATTACKS[number](settings)
        rows.extend(found)
        print(f"attack {number} done in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    print()
    print(f"victims: twistd -n chatserver, chatapp listen --accept-files; RSS cap {args.cap} MiB")
    print(
        table(
            ["attack", "victim", "base MiB", "peak MiB", "+MiB", "base fds", "peak fds", "counter", "bounded?", "rule"],
            [
                [
                    r.attack,
                    r.victim,
                    r.base_mib,
                    r.peak_mib,
                    r.growth_mib,
                    r.base_fds,
                    r.peak_fds,
                    r.counter,
                    ("yes" if r.bounded else "NO") + (" (capped)" if r.capped else ""),
                    r.rule,
                ]
                for r in rows
            ],
        )
    )
    print(f"\n{sum(r.bounded for r in rows)}/{len(rows)} bounded, in {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "quick": args.quick, "rows": [asdict(r) for r in rows]}, indent=1)
        )


if __name__ == "__main__":
    main()
