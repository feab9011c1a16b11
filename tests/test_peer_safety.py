"""The receiver's safety rules (PROTOCOL.md 3.3): names, links, no replacing, bounded partials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_peer_harness import (
    files_in,
    key_of,
    lose,
    make_peer,
    open_listener,
    partial_path,
    partials_in,
    secure,
    sender_stream,
)
from twisted.internet.task import Clock

from chatapp.peer import PeerFactory, TransferState
from chatapp.peer.downloads import DownloadDir


def receive(factory: PeerFactory, transfer_id: str, content: bytes, name: str) -> bytes:
    """Feed one whole transfer to a fresh listener session; return what it answered."""
    session, transport = open_listener(factory)
    offer, body = sender_stream(transfer_id, content, name)
    session.dataReceived(offer + body)
    return bytes(transport.value())


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize(
    ("offered", "stored"),
    [
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("..\\x", "x"),
        ("a/b", "b"),
        ("esc\x1b[2J.txt", "esc[2J.txt"),
        ("nul\x00.txt", "nul.txt"),
        ("rtl\u202egnp.exe", "rtlgnp.exe"),
    ],
)
def test_offered_names_stay_inside_downloads(tmp_path: Path, clock: Clock, offered: str, stored: str) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    before = all_files(tmp_path)
    reply = receive(fb, "f", b"payload", offered)
    assert reply == b"ACCEPT f 0\r\nDONE f\r\n"
    assert files_in(fb.downloads.root) == [stored]
    assert eb.offers[0].name == stored and eb.offers[0].offered_name == offered  # type: ignore[attr-defined]
    assert all_files(tmp_path) - before == {f"bob/downloads/{stored}"}


def test_symlink_at_target_name_is_never_followed(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dangling = tmp_path / "would-be-created"
    os.makedirs(fb.downloads.root)
    os.symlink(victim, os.path.join(fb.downloads.root, "x.txt"))
    os.symlink(dangling, os.path.join(fb.downloads.root, "x (1).txt"))
    assert receive(fb, "f", b"attack", "x.txt").endswith(b"DONE f\r\n")
    assert victim.read_bytes() == b"precious" and not dangling.exists()
    assert eb.offers[0].path == os.path.join(fb.downloads.root, "x (2).txt")
    assert Path(fb.downloads.root, "x (2).txt").read_bytes() == b"attack"
    assert os.path.islink(os.path.join(fb.downloads.root, "x.txt"))


def test_symlink_at_partial_path_is_never_followed(tmp_path: Path, clock: Clock) -> None:
    fb, _eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    planted = partial_path(fb, "alice", "p.txt", 6)
    os.symlink(victim, planted)
    assert receive(fb, "f", b"attack", "p.txt") == b"ACCEPT f 0\r\nDONE f\r\n"
    assert victim.read_bytes() == b"precious"
    assert Path(fb.downloads.root, "p.txt").read_bytes() == b"attack"


def test_partial_folder_replaced_by_a_link_is_refused(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.makedirs(fb.downloads.root)
    os.symlink(elsewhere, fb.downloads.partial_root)
    reply = receive(fb, "f", b"data", "d.txt")
    assert reply.startswith(b"REJECT f write-error")
    assert list(elsewhere.iterdir()) == []
    assert eb.notices and eb.offers[0].state is TransferState.REJECTED


def test_existing_files_are_never_replaced(tmp_path: Path, clock: Clock) -> None:
    fb, _eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    os.makedirs(fb.downloads.root)
    Path(fb.downloads.root, "notes.txt").write_bytes(b"mine")
    receive(fb, "f", b"first", "notes.txt")
    receive(fb, "g", b"second", "notes.txt")
    assert Path(fb.downloads.root, "notes.txt").read_bytes() == b"mine"
    assert Path(fb.downloads.root, "notes (1).txt").read_bytes() == b"first"
    assert Path(fb.downloads.root, "notes (2).txt").read_bytes() == b"second"


def test_file_appearing_during_the_transfer_is_not_replaced(tmp_path: Path, clock: Clock) -> None:
    fb, _eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    offer, body = sender_stream("f", b"late data", "race.txt")
    session.dataReceived(offer + body[:15])
    Path(fb.downloads.root, "race.txt").write_bytes(b"appeared meanwhile")
    session.dataReceived(body[15:])
    assert transport.value().endswith(b"DONE f\r\n")
    assert Path(fb.downloads.root, "race.txt").read_bytes() == b"appeared meanwhile"
    assert Path(fb.downloads.root, "race (1).txt").read_bytes() == b"late data"


def test_place_never_replaces(tmp_path: Path) -> None:
    downloads = DownloadDir(str(tmp_path / "dl"), 100)
    downloads.ensure()
    partial = downloads.partial_path("k.part")
    Path(partial).write_bytes(b"new")
    Path(downloads.root, "a.txt").write_bytes(b"old")
    placed = downloads.place(partial, "a.txt")
    assert placed == os.path.join(downloads.root, "a (1).txt")
    assert Path(downloads.root, "a.txt").read_bytes() == b"old"
    assert Path(placed).read_bytes() == b"new" and not os.path.exists(partial)


def test_partial_of_other_sender_or_size_is_not_resumed(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True)
    Path(partial_path(fb, "carol", "same.txt", 10)).write_bytes(b"01234")
    Path(partial_path(fb, "alice", "same.txt", 11)).write_bytes(b"01234")
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER f 10 same.txt\r\n")
    clock.advance(0)
    assert transport.value() == b"ACCEPT f 0\r\n"


def test_kept_partials_are_bounded(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True, max_partial_bytes=25)
    for i, size in enumerate([10, 10, 10]):
        session, transport = open_listener(fb)
        name = f"cut{i}.bin"
        session.dataReceived(f"OFFER f {size + 5} {name}\r\nDATA f {size}\r\n".encode() + b"z" * size)
        path = partial_path(fb, "alice", name, size + 5)
        os.utime(path, (1000 + i, 1000 + i))
        lose(session, transport)
    kept = partials_in(fb)
    assert len(kept) == 2  # the oldest went to stay within 25 bytes
    assert os.path.basename(partial_path(fb, "alice", "cut0.bin", 15)) not in kept


def test_logs_never_carry_raw_control_characters(tmp_path: Path, clock: Clock) -> None:
    from typing import cast

    from twisted.logger import ILogObserver, formatEvent, globalLogPublisher

    from chatapp.peer import PeerSession, Role

    seen: list[str] = []

    def observe(event: dict[str, object]) -> None:
        seen.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        fb, _ = make_peer(tmp_path, "bob", clock, auto_accept=True)
        session, transport = open_listener(fb)
        session.dataReceived(b"ERR 400 evil\x1b[2J\x07 text\r\n")
        fa, _ = make_peer(tmp_path, "alice", clock)
        sender = PeerSession(fa, Role.CONNECTOR, "bob", "tok-alice", "proof-alice", key_of("bob"))
        sender.makeConnection(type(transport)())
        secure(sender)
        sender.dataReceived(b"WELCOME chatapp/2 bob proof-alice\r\n")
        path = tmp_path / "evil\x1b]0;title\x07.bin"
        path.write_bytes(b"x" * 100)
        sent = sender.send_file(str(path))
        path.write_bytes(b"")  # shrinks: a read error is logged with the path
        sender.dataReceived(f"ACCEPT {sent.id} 0\r\n".encode())
        clock.advance(0)
        assert sent.reason == "read-error"
    finally:
        globalLogPublisher.removeObserver(observer)
    assert any("evil" in line and "\\x1b" in line for line in seen)
    assert any("read" in line and "\\x07" in line for line in seen)
    assert not any(c in line for line in seen for c in "\x1b\x07\r\n")


def test_partial_folder_swapped_for_a_link_mid_transfer(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    offer, body = sender_stream("f", b"0123456789", "swap.txt", chunk=5)
    session.dataReceived(offer + body[:20])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(fb.downloads.partial_root, tmp_path / "moved-away")
    os.symlink(elsewhere, fb.downloads.partial_root)
    session.dataReceived(body[20:])
    assert transport.value().endswith(b"FAIL f write-error\r\n")
    assert eb.offers[0].state is TransferState.FAILED
    assert list(elsewhere.iterdir()) == [] and files_in(fb.downloads.root) == []
