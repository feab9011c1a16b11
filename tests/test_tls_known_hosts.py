"""Known-servers and known-peers files: parsing, lookups, add/replace, atomic and concurrent rewrites."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chatapp.tls.known_hosts import BadLine, KnownPeers, KnownServers, format_address, parse_address

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64
FP_C = "sha256:" + "0123456789abcdef" * 4

SERVERS = f"""\
# pinned by hand
chat.example.org:7000 {FP_A}

[2001:DB8::1]:7000 {FP_B.upper().replace("SHA256", "sha256")}
10.0.0.1:7000
::1:7000 {FP_A}
host:99999 {FP_A}
host:7000 sha1:abc
chat.example.org:7000 {FP_B}
\tlocalhost:7001   {FP_C}{"   "}
"""


def test_known_servers_parsing(tmp_path: Path) -> None:
    path = tmp_path / "known_servers"
    path.write_text(SERVERS)
    snapshot = KnownServers(path).read()
    assert [(e.host, e.port, e.fingerprint, e.line_number) for e in snapshot.entries] == [
        ("chat.example.org", 7000, FP_A, 2),
        ("2001:db8::1", 7000, FP_B, 4),
        ("localhost", 7001, FP_C, 10),
    ]
    assert [(bad.line_number, bad.text) for bad in snapshot.bad_lines] == [
        (5, "10.0.0.1:7000"),
        (6, f"::1:7000 {FP_A}"),
        (7, f"host:99999 {FP_A}"),
        (8, "host:7000 sha1:abc"),
        (9, f"chat.example.org:7000 {FP_B}"),
    ]
    reasons = [bad.reason for bad in snapshot.bad_lines]
    assert "found 1 fields" in reasons[0]
    assert "brackets" in reasons[1]
    assert "port" in reasons[2]
    assert "fingerprint" in reasons[3]
    assert reasons[4] == "repeats line 2, which is the one used"
    # hosts are compared the way they are written by users: case and IPv6 spelling do not matter
    assert snapshot.lookup(("CHAT.example.ORG", 7000)) == snapshot.entries[0]
    assert snapshot.lookup(("[2001:db8:0::1]", 7000)) == snapshot.entries[1]
    assert snapshot.lookup(("chat.example.org", 7001)) is None


def test_a_missing_file_is_empty(tmp_path: Path) -> None:
    snapshot = KnownServers(tmp_path / "nothing").read()
    assert snapshot.entries == () and snapshot.bad_lines == ()
    assert KnownPeers(tmp_path / "nothing").lookup("h", 1, "u") is None


def test_addresses() -> None:
    assert format_address("::1", 7000) == "[::1]:7000"
    assert format_address("[2001:DB8:0::1]", 1) == "[2001:db8::1]:1"
    assert format_address("Example.ORG", 2) == "example.org:2"
    assert parse_address("[::1]:7000") == ("::1", 7000)
    for bad in ("[::1]7000", "[nothost]:1", "host", ":7000", "host:0", "host:x", "host:+1", "a:b:1"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_pin_appends_keeps_every_other_line_and_writes_0600(tmp_path: Path) -> None:
    path = tmp_path / "config" / "chatapp" / "known_servers"
    path.parent.mkdir(parents=True)
    original = "# mine\nnot a valid line\n\xff\n" + f"a:1 {FP_A}"  # no newline at the end
    path.write_bytes(original.encode("latin-1"))
    known = KnownServers(path)
    entry = known.pin("::1", 7000, FP_C.upper().replace("SHA256", "sha256"))
    assert (entry.host, entry.port, entry.fingerprint, entry.line_number) == ("::1", 7000, FP_C, 5)
    assert path.read_bytes() == original.encode("latin-1") + f"\n[::1]:7000 {FP_C}\n".encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert known.lookup("::1", 7000) == entry
    bad = known.read().bad_lines
    assert [b.line_number for b in bad] == [2, 3]


def test_without_replace_the_existing_key_stays_and_with_it_the_line_is_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "known_servers"
    path.write_text(f"# top\nh:1 {FP_A}\n# bottom\n")
    known = KnownServers(path)
    kept = known.pin("h", 1, FP_B)
    assert (kept.fingerprint, kept.line_number) == (FP_A, 2)
    assert path.read_text() == f"# top\nh:1 {FP_A}\n# bottom\n"
    replaced = known.pin("H", 1, FP_B, replace=True)
    assert (replaced.fingerprint, replaced.line_number) == (FP_B, 2)
    assert path.read_text() == f"# top\nh:1 {FP_B}\n# bottom\n"


def test_known_peers_case_fold_users(tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    path.write_text(f"h:1 Alice {FP_A}\nh:1 ALICE {FP_B}\nh:1 {FP_A}\nh:2 alice {FP_C}\n")
    known = KnownPeers(path)
    snapshot = known.read()
    assert [(e.user, e.port) for e in snapshot.entries] == [("alice", 1), ("alice", 2)]
    assert snapshot.bad_lines == (
        BadLine(2, f"h:1 ALICE {FP_B}", "repeats line 1, which is the one used"),
        BadLine(3, f"h:1 {FP_A}", "expected host:port user sha256:..., found 2 fields"),
    )
    assert known.lookup("h", 1, "aLiCe") == snapshot.entries[0]
    added = known.remember("h", 1, "Bob", FP_B)
    assert path.read_text().endswith(f"h:1 bob {FP_B}\n")
    assert known.lookup("h", 1, "BOB") == added
    trusted = known.remember("h", 1, "ALICE", FP_C, replace=True)
    assert (trusted.line_number, known.lookup("h", 1, "alice")) == (1, trusted)
    with pytest.raises(ValueError):
        known.remember("h", 1, "two words", FP_A)


def test_rewrite_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "known_servers"
    path.write_text(f"h:1 {FP_A}\n")
    before = path.stat().st_ino
    with path.open() as old_reader:
        KnownServers(path).pin("h", 2, FP_B)
        assert old_reader.read() == f"h:1 {FP_A}\n"  # the old file was replaced, not written over
    assert path.stat().st_ino != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["known_servers", "known_servers.lock"]


def test_threads_adding_at_once_all_end_up_in_the_file(tmp_path: Path) -> None:
    known = KnownPeers(tmp_path / "known_peers")
    start = threading.Barrier(8)

    def add_ten(worker: int) -> None:
        start.wait()
        for n in range(10):
            known.remember("h", 1, f"user{worker}-{n}", FP_A)

    threads = [threading.Thread(target=add_ten, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    snapshot = known.read()
    assert snapshot.bad_lines == ()
    assert sorted(str(e.user) for e in snapshot.entries) == sorted(f"user{w}-{n}" for w in range(8) for n in range(10))


WRITER = """
import sys
from pathlib import Path
from chatapp.tls.known_hosts import KnownServers
known = KnownServers(Path(sys.argv[1]))
sys.stdin.readline()  # start together
for port in range(int(sys.argv[2]), int(sys.argv[2]) + 15):
    known.pin("h", port, "sha256:" + "c" * 64)
"""


def test_processes_adding_at_once_all_end_up_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "known_servers"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(1000 * (w + 1))], stdin=subprocess.PIPE, env=env)
        for w in range(4)
    ]
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write(b"go\n")
        writer.stdin.flush()
    for writer in writers:
        writer.communicate(timeout=60)
        assert writer.returncode == 0
    snapshot = KnownServers(path).read()
    assert snapshot.bad_lines == ()
    assert sorted(e.port for e in snapshot.entries) == [1000 * (w + 1) + n for w in range(4) for n in range(15)]
