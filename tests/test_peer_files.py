"""File transfer (PROTOCOL.md 3.3): offers, streaming, framing at any boundary, resume, cancel, errors."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from test_peer_harness import (
    Pair,
    files_in,
    key_of,
    lose,
    make_peer,
    open_connector,
    open_listener,
    partial_path,
    partials_in,
    secure,
    sender_stream,
    sha,
    write_file,
)
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatapp.peer import Direction, PeerError, Transfer, TransferFailed, TransferState
from chatapp.peer.writer import MIN_WRITE
from chatapp.runner import InlineRunner

EMPTY_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def outcome(transfer: Transfer) -> Any:
    """What when_done() delivers right now: the transfer, the TransferFailed, or None if still running."""
    result: list[Any] = []
    transfer.when_done().addCallbacks(result.append, lambda f: result.append(f.value))
    return result[0] if result else None


def data_lines(wire: bytes) -> list[tuple[str, int]]:
    return [(m.group(1).decode(), int(m.group(2))) for m in re.finditer(rb"DATA (\S+) (\d+)\r\n", wire)]


# -- whole transfers over an in-memory pair ----------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"x", b"\r\n" * 5000, bytes(range(256)) * 4000 + b"tail"],
    ids=["empty", "one-byte", "crlf", "binary-1MB"],
)
def test_send_file_arrives_whole(tmp_path: Path, clock: Clock, content: bytes) -> None:
    pair = Pair(tmp_path, clock, alice_kw={"chunk_size": 64 * 1024}, bob_kw={"auto_accept": True})
    source = write_file(tmp_path / "source.bin", content)
    sent = pair.a.send_file(source, name="report.bin")
    assert sent.direction is Direction.SEND and sent.size == len(content) and sent.state is TransferState.OFFERED
    pair.flush()
    received = pair.eb.offers[0]
    assert received.name == "report.bin" and received.size == len(content)
    assert sent.state is TransferState.DONE and received.state is TransferState.DONE
    assert outcome(sent) is sent and outcome(received) is received
    assert received.path == os.path.join(pair.b_out, "report.bin")
    assert Path(received.path).read_bytes() == content
    assert sent.sha256 == received.sha256 == sha(content)
    assert sent.bytes_done == received.bytes_done == len(content)
    assert partials_in(pair.fb) == []
    assert [t.state for t in pair.ea.ended] == [TransferState.DONE]


def test_auto_accept_policy_function(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=lambda t: t.name.endswith(".txt") and t.size < 100)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER a 5 small.txt\r\nOFFER b 500 big.txt\r\nOFFER c 5 small.exe\r\n")
    assert transport.value() == b"ACCEPT a 0\r\n"
    assert [t.state for t in eb.offers] == [TransferState.ACCEPTED, TransferState.OFFERED, TransferState.OFFERED]


def test_accept_is_the_users_decision(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(tmp_path, clock)
    sent = pair.a.send_file(write_file(tmp_path / "a.txt", b"hello"))
    pair.flush()
    offer = pair.eb.offers[0]
    assert offer.state is TransferState.OFFERED and sent.state is TransferState.OFFERED
    assert offer.peer == "alice" and offer.id == sent.id
    for _ in range(12):  # an hour: offers wait for the user (the sessions keep alive with PING/PONG)
        clock.advance(300)
        pair.flush()
    assert files_in(pair.b_out) == []
    pair.b.accept(offer.id)
    pair.flush()
    assert offer.state is TransferState.DONE and Path(str(offer.path)).read_bytes() == b"hello"
    with pytest.raises(PeerError):
        pair.b.accept(offer.id)


def test_reject_offer(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(tmp_path, clock)
    sent = pair.a.send_file(write_file(tmp_path / "a.txt", b"hello"))
    pair.flush()
    pair.b.reject(sent.id)
    pair.flush()
    assert sent.state is TransferState.REJECTED and sent.reason == "declined"
    error = outcome(sent)
    assert isinstance(error, TransferFailed) and error.reason == "declined"
    assert files_in(pair.b_out) == [] and partials_in(pair.fb) == []
    with pytest.raises(ValueError):
        pair.b.reject(sent.id, "no such reason")


def test_zero_byte_file_wire_exchange(tmp_path: Path, clock: Clock) -> None:
    fb, _eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER f 0 empty.txt\r\n")
    assert transport.value() == b"ACCEPT f 0\r\n"
    transport.clear()
    session.dataReceived(f"END f {EMPTY_SHA}\r\n".encode())
    assert transport.value() == b"DONE f\r\n"
    assert Path(fb.downloads.root, "empty.txt").read_bytes() == b""


def test_zero_byte_file_sender_side(tmp_path: Path, clock: Clock) -> None:
    fa, _ = make_peer(tmp_path, "alice", clock)
    session, transport = open_connector(fa)
    sent = session.send_file(write_file(tmp_path / "empty.txt", b""))
    assert transport.value() == f"OFFER {sent.id} 0 empty.txt\r\n".encode()
    transport.clear()
    session.dataReceived(f"ACCEPT {sent.id} 0\r\n".encode())
    clock.advance(0)
    assert transport.value() == f"END {sent.id} {EMPTY_SHA}\r\n".encode()
    assert sent.state is TransferState.ENDED
    session.dataReceived(f"DONE {sent.id}\r\n".encode())
    assert sent.state is TransferState.DONE


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_raw_and_lines_with_boundaries_anywhere(tmp_path: Path, clock: Clock, step: int) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    content = b"\r\n" * 20 + b"DATA f 3\r\nEND\nMSG fake\r\n" + bytes(range(256))
    offer, body = sender_stream("f", content, "c.bin", chunk=13)
    stream = offer + b"MSG before\r\n" + body + b"MSG after\r\n"
    for start in range(0, len(stream), step):
        session.dataReceived(stream[start : start + step])
    assert eb.messages == ["before", "after"]
    assert transport.value() == b"ACCEPT f 0\r\nDONE f\r\n"
    assert Path(fb.downloads.root, "c.bin").read_bytes() == content


def test_whole_file_and_next_msg_in_one_segment(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    content = os.urandom(300_000)
    offer, body = sender_stream("big", content, "big.bin", chunk=1024 * 1024)
    session.dataReceived(offer + body + b"MSG done?\r\n")
    assert eb.messages == ["done?"]
    assert transport.value() == b"ACCEPT big 0\r\nDONE big\r\n"
    assert Path(fb.downloads.root, "big.bin").read_bytes() == content


def test_several_transfers_at_once_both_ways(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(
        tmp_path,
        clock,
        alice_kw={"auto_accept": True, "chunk_size": 1000},
        bob_kw={"auto_accept": True, "chunk_size": 777},
    )
    contents = {name: os.urandom(5000 + i * 1234) for i, name in enumerate(["one", "two", "three"])}
    sent = [pair.a.send_file(write_file(tmp_path / n, c)) for n, c in contents.items()]
    back = pair.b.send_file(write_file(tmp_path / "back", b"reply" * 999))
    pair.flush()
    assert all(t.state is TransferState.DONE for t in [*sent, back])
    for name, content in contents.items():
        assert Path(pair.b_out, name).read_bytes() == content
    assert Path(pair.a_out, "back").read_bytes() == b"reply" * 999
    assert sorted(pair.fb.sessions["alice"].incoming) == ["c1", "c2", "c3"]  # alice dialled: c for connector
    assert list(pair.fa.sessions["bob"].incoming) == ["l1"]  # bob listened: l for listener


# -- flow control, chat between chunks, and cancel by the sender ---------------------


class PausingTransport(StringTransport):
    """Like a TCP transport with a tiny buffer: pauses its producer after every write of raw data."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(data) > 100 and self.producer is not None:
            self.producer.pauseProducing()


def open_sender(tmp_path: Path, clock: Clock, **kw: Any) -> tuple[Any, PausingTransport]:
    from chatapp.peer import PeerSession, Role

    fa, _ = make_peer(tmp_path, "alice", clock, **kw)
    session = PeerSession(fa, Role.CONNECTOR, "bob", "tok-alice", "proof-alice", key_of("bob"))
    transport = PausingTransport()
    session.makeConnection(transport)
    secure(session)
    session.dataReceived(b"WELCOME chatapp/2 bob proof-alice\r\n")
    transport.clear()
    return session, transport


def resume(transport: StringTransport) -> None:
    """The transport drained its buffer: it resumes the producer, as TCP would."""
    assert transport.producer is not None
    transport.producer.resumeProducing()


def test_paused_transport_stops_the_sender_and_chat_goes_between_chunks(tmp_path: Path, clock: Clock) -> None:
    session, transport = open_sender(tmp_path, clock, chunk_size=1000)
    content = os.urandom(3500)
    sent = session.send_file(write_file(tmp_path / "f.bin", content))
    session.dataReceived(f"ACCEPT {sent.id} 0\r\n".encode())
    transport.clear()
    clock.advance(0)
    assert data_lines(transport.value()) == [(sent.id, 1000)]  # one chunk, then the transport said "full"
    clock.advance(10)
    assert data_lines(transport.value()) == [(sent.id, 1000)]  # paused: nothing more
    session.send_message("between chunks")
    resume(transport)
    clock.advance(0)
    session.send_message("again")
    resume(transport)
    clock.advance(0)
    resume(transport)
    clock.advance(0)
    wire = transport.value()
    assert data_lines(wire) == [(sent.id, 1000)] * 3 + [(sent.id, 500)]
    msg_at, chunk = wire.index(b"MSG between chunks"), f"DATA {sent.id} 1000".encode()
    assert wire.index(chunk) < msg_at < wire.index(chunk, msg_at)  # a chunk before the MSG and one after it
    assert wire.endswith(f"END {sent.id} {sha(content)}\r\n".encode())
    assert sent.state is TransferState.ENDED


def test_sender_cancel_mid_transfer(tmp_path: Path, clock: Clock) -> None:
    session, transport = open_sender(tmp_path, clock, chunk_size=1000)
    sent = session.send_file(write_file(tmp_path / "f.bin", os.urandom(5000)))
    session.dataReceived(f"ACCEPT {sent.id} 0\r\n".encode())
    clock.advance(0)
    session.cancel(sent.id)
    resume(transport)
    clock.advance(0)
    wire = transport.value()
    assert wire.endswith(f"CANCEL {sent.id} cancelled\r\n".encode())
    assert data_lines(wire) == [(sent.id, 1000)]
    assert sent.state is TransferState.CANCELLED and isinstance(outcome(sent), TransferFailed)
    session.dataReceived(f"DONE {sent.id}\r\nFAIL {sent.id} x\r\n".encode())  # late replies are ignored
    assert sent.state is TransferState.CANCELLED
    with pytest.raises(ValueError):
        session.cancel(sent.id, "no-such-reason")


def test_receiver_side_of_sender_cancel_keeps_partial(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, _transport = open_listener(fb)
    session.dataReceived(b"OFFER f 10 a.txt\r\nDATA f 4\r\nabcdCANCEL f cancelled\r\n")
    transfer = eb.offers[0]
    assert transfer.state is TransferState.CANCELLED and transfer.reason == "cancelled"
    assert Path(transfer.partial).read_bytes() == b"abcd"  # type: ignore[attr-defined]
    assert transfer.kept  # the console says so: the same offer again resumes
    assert files_in(fb.downloads.root) == []
    session.dataReceived(b"OFFER g 10 b.txt\r\nCANCEL g stale-partial\r\n")
    assert not eb.offers[1].kept  # nothing received, and the sender said the partial is no use


def test_receiver_reject_mid_transfer_drops_the_rest(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    content = os.urandom(30)
    offer, body = sender_stream("f", content, "a.bin", chunk=10)
    session.dataReceived(offer + body[:20])
    transfer = eb.offers[0]
    assert transfer.state is TransferState.RECEIVING
    session.reject("f")  # mid-chunk
    session.dataReceived(body[20:] + b"MSG still open\r\n")
    assert transport.value() == b"ACCEPT f 0\r\nREJECT f declined\r\n"
    assert not transport.disconnecting and eb.messages == ["still open"]
    assert transfer.state is TransferState.REJECTED
    assert files_in(fb.downloads.root) == [] and partials_in(fb) == []


def test_cancel_with_the_same_id_both_ways(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    mine = session.send_file(write_file(tmp_path / "mine.txt", b"mine"))
    session.dataReceived(f"OFFER {mine.id} 5 theirs.txt\r\n".encode())  # the peer's sender picked the same id
    theirs = eb.offers[0]
    transport.clear()
    session.cancel(theirs)
    assert transport.value() == f"REJECT {mine.id} cancelled\r\n".encode()
    assert mine.state is TransferState.OFFERED and theirs.state is TransferState.REJECTED
    transport.clear()
    session.cancel(mine.id)
    assert transport.value() == f"CANCEL {mine.id} cancelled\r\n".encode()
    assert mine.state is TransferState.CANCELLED


def test_user_cancel_of_incoming_is_reject_cancelled(tmp_path: Path, clock: Clock) -> None:
    fb, _eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER f 10 a.txt\r\n")
    session.cancel("f")
    assert transport.value() == b"ACCEPT f 0\r\nREJECT f cancelled\r\n"
    with pytest.raises(KeyError):
        session.cancel("nope")


# -- resume -------------------------------------------------------------------------


def test_resume_from_kept_partial_sends_only_the_rest(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(tmp_path, clock, bob_kw={"auto_accept": True}, alice_kw={"chunk_size": 4096})
    content = os.urandom(100_000)
    kept = partial_path(pair.fb, "ALICE", "data.bin", len(content))  # the sender is matched case-folded
    Path(kept).write_bytes(content[:60_000])
    sent = pair.a.send_file(write_file(tmp_path / "data.bin", content))
    pair.flush()
    received = pair.eb.offers[0]
    assert received.offset == sent.offset == 60_000
    assert received.state is TransferState.DONE and sent.state is TransferState.DONE
    assert Path(pair.b_out, "data.bin").read_bytes() == content
    assert received.sha256 == sent.sha256 == sha(content)
    assert not os.path.exists(kept)


def test_resume_wire_lines(tmp_path: Path, clock: Clock) -> None:
    fb, _eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    content = b"0123456789"
    Path(partial_path(fb, "alice", "r.txt", 10)).write_bytes(content[:4])
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER r 10 r.txt\r\n")  # the kept partial is hashed on the (inline) disk runner
    assert transport.value() == f"ACCEPT r 4 {sha(content[:4])}\r\n".encode()
    session.dataReceived(b"DATA r 6\r\n456789" + f"END r {sha(content)}\r\n".encode())
    assert transport.value().endswith(b"DONE r\r\n")
    assert Path(fb.downloads.root, "r.txt").read_bytes() == content


def test_resume_with_complete_partial_gets_end_at_once(tmp_path: Path, clock: Clock) -> None:
    session, transport = open_sender(tmp_path, clock)
    content = b"complete"
    sent = session.send_file(write_file(tmp_path / "c.txt", content))
    transport.clear()
    session.dataReceived(f"ACCEPT {sent.id} {len(content)} {sha(content).upper()}\r\n".encode())
    clock.advance(0)
    assert transport.value() == f"END {sent.id} {sha(content)}\r\n".encode()


def test_stale_partial_is_cancelled_and_deleted(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(tmp_path, clock, bob_kw={"auto_accept": True})
    content = os.urandom(5000)
    kept = partial_path(pair.fb, "alice", "s.bin", len(content))
    Path(kept).write_bytes(b"not the same prefix")
    sent = pair.a.send_file(write_file(tmp_path / "s.bin", content))
    pair.flush()
    received = pair.eb.offers[0]
    assert sent.state is TransferState.CANCELLED and sent.reason == "stale-partial"
    assert received.state is TransferState.CANCELLED and received.reason == "stale-partial"
    assert not os.path.exists(kept)
    # the sender may offer again from 0
    again = pair.a.send_file(str(tmp_path / "s.bin"))
    pair.flush()
    assert again.state is TransferState.DONE and again.offset == 0
    assert Path(pair.b_out, "s.bin").read_bytes() == content


def test_sender_checks_accept_offset(tmp_path: Path, clock: Clock) -> None:
    session, transport = open_sender(tmp_path, clock)
    sent = session.send_file(write_file(tmp_path / "a", b"12345"))
    transport.clear()
    session.dataReceived(f"ACCEPT {sent.id} 6 {sha(b'')}\r\n".encode())
    assert transport.value() == f"CANCEL {sent.id} bad-offset\r\n".encode()
    assert sent.state is TransferState.CANCELLED and sent.reason == "bad-offset"


def test_sender_prefix_mismatch_is_stale_partial(tmp_path: Path, clock: Clock) -> None:
    session, transport = open_sender(tmp_path, clock)
    sent = session.send_file(write_file(tmp_path / "a", b"12345"))
    transport.clear()
    session.dataReceived(f"ACCEPT {sent.id} 2 {sha(b'13')}\r\n".encode())
    clock.advance(0)
    assert transport.value() == f"CANCEL {sent.id} stale-partial\r\n".encode()
    sent2 = session.send_file(write_file(tmp_path / "b", b"12345"))
    transport.clear()
    session.dataReceived(f"ACCEPT {sent2.id} 2\r\n".encode())  # an offset without its hash
    assert transport.value() == f"CANCEL {sent2.id} stale-partial\r\n".encode()


def test_cut_connection_keeps_partial_for_resume(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER f 10 cut.txt\r\nDATA f 5\r\n012")
    lose(session, transport)
    transfer = eb.offers[0]
    assert transfer.state is TransferState.CANCELLED and transfer.reason == "connection-lost"
    kept = partial_path(fb, "alice", "cut.txt", 10)
    assert Path(kept).read_bytes() == b"012"
    second, transport2 = open_listener(fb)
    second.dataReceived(b"OFFER g 10 cut.txt\r\n")
    clock.advance(0)
    assert transport2.value() == f"ACCEPT g 3 {sha(b'012')}\r\n".encode()


# -- the receiver's checks ------------------------------------------------------------


def test_wrong_end_hash_fails_and_deletes_partial(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER f 3 h.txt\r\nDATA f 3\r\nabc" + f"END f {sha(b'abd')}\r\n".encode())
    assert transport.value() == b"ACCEPT f 0\r\nFAIL f hash-mismatch\r\n"
    assert eb.offers[0].state is TransferState.FAILED and eb.offers[0].reason == "hash-mismatch"
    assert files_in(fb.downloads.root) == [] and partials_in(fb) == []


def test_short_transfer_is_size_mismatch(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER f 4 h.txt\r\nDATA f 3\r\nabc" + f"END f {sha(b'abc')}\r\n".encode())
    assert transport.value() == b"ACCEPT f 0\r\nFAIL f size-mismatch\r\n"
    assert files_in(fb.downloads.root) == [] and partials_in(fb) == []
    session.dataReceived(b"DATA f 1\r\nd" + f"END f {sha(b'abcd')}\r\nMSG ok\r\n".encode())  # dropped
    assert transport.value() == b"ACCEPT f 0\r\nFAIL f size-mismatch\r\n"
    assert eb.messages == ["ok"]


def test_more_bytes_than_offered_is_protocol_error_and_removes_partial(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER other 10 keep.txt\r\nDATA other 2\r\nok")
    session.dataReceived(b"OFFER f 5 a.txt\r\nDATA f 3\r\nabc")
    kept_other = partial_path(fb, "alice", "keep.txt", 10)
    assert len(partials_in(fb)) == 2
    session.dataReceived(b"DATA f 3\r\ndefMSG never\r\n")
    assert transport.value().endswith(b"ERR 400 protocol-error DATA past the offered size of f\r\n")
    assert transport.disconnecting and eb.messages == []
    lose(session, transport)
    states = {t.id: (t.state, t.reason) for t in eb.offers}
    assert states == {
        "other": (TransferState.CANCELLED, "protocol-error"),
        "f": (TransferState.CANCELLED, "protocol-error"),
    }
    assert partials_in(fb) == [os.path.basename(kept_other)]  # only the offending transfer's partial went


@pytest.mark.parametrize(
    ("line", "text"),
    [
        (b"DATA nope 3\r\nabc", b"DATA for unknown id nope"),
        (b"DATA f 3\r\nabc", b"DATA for f, which is not accepted"),
        (b"DATA f\r\n", b"malformed DATA"),
        (b"DATA f 0\r\n", b"malformed DATA"),
        (b"DATA f -1\r\n", b"malformed DATA"),
        (b"DATA f 1048577\r\n", b"malformed DATA"),
        (b"DATA f 3 x\r\n", b"malformed DATA"),
    ],
)
def test_data_protocol_errors(tmp_path: Path, clock: Clock, line: bytes, text: bytes) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)  # no auto-accept: f stays offered
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER f 10 a.txt\r\n")
    session.dataReceived(line + b"MSG after\r\n")
    assert transport.value() == b"ERR 400 protocol-error " + text + b"\r\n"
    assert transport.disconnecting and eb.messages == []
    lose(session, transport)
    assert eb.offers[0].state is TransferState.CANCELLED
    assert eb.left == ["protocol-error"]


@pytest.mark.parametrize(
    ("offer", "reply"),
    [
        (b"OFFER f 10", b"REJECT f bad-offer"),
        (b"OFFER f ten a.txt", b"REJECT f bad-offer"),
        (b"OFFER f 10 ../..", b"REJECT f bad-name"),
        (b"OFFER f 10 \x1b", b"REJECT f bad-name"),
        (b"OFFER f 2000 big.iso", b"REJECT f too-large"),
        (b"OFFER bad/id 1 x", b"ERR 400 bad-arguments transfer ids are 1-32 of A-Z a-z 0-9 _ -"),
        (b"OFFER", b"ERR 400 bad-arguments wrong number or form of fields"),
    ],
)
def test_bad_offers(tmp_path: Path, clock: Clock, offer: bytes, reply: bytes) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True, max_file_size=1000)
    session, transport = open_listener(fb)
    session.dataReceived(offer + b"\r\n")
    assert transport.value() == reply + b"\r\n"
    assert eb.offers == [] and not transport.disconnecting
    if reply.startswith(b"REJECT"):  # data already on the way for a refused id is dropped
        transport.clear()
        session.dataReceived(b"DATA f 2\r\nxyEND f " + sha(b"xy").encode() + b"\r\n")
        assert transport.value() == b"" and not transport.disconnecting


def test_offer_id_never_reused(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER f 1 a.txt\r\nOFFER f 2 b.txt\r\n")
    assert transport.value() == b"REJECT f bad-offer\r\n"
    assert len(eb.offers) == 1 and eb.offers[0].state is TransferState.OFFERED


def test_too_many_open_offers_is_busy(tmp_path: Path, clock: Clock) -> None:
    fb, _eb = make_peer(tmp_path, "bob", clock, max_open_offers=2)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER a 1 a\r\nOFFER b 1 b\r\nOFFER c 1 c\r\n")
    assert transport.value() == b"REJECT c busy\r\n"
    session.reject("a")
    transport.clear()
    session.dataReceived(b"OFFER d 1 d\r\n")
    assert transport.value() == b""


def test_same_file_offered_twice_at_once_is_busy(tmp_path: Path, clock: Clock) -> None:
    fb, _ = make_peer(tmp_path, "bob", clock)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER a 5 same.txt\r\nOFFER b 5 same.txt\r\n")
    assert transport.value() == b"REJECT b busy\r\n"


def test_replies_for_unknown_or_finished_ids_are_ignored(tmp_path: Path, clock: Clock) -> None:
    fa, _ = make_peer(tmp_path, "alice", clock)
    session, transport = open_connector(fa)
    session.dataReceived(
        b"ACCEPT zz 0\r\nREJECT zz declined\r\nDONE zz\r\nFAIL zz hash-mismatch\r\nCANCEL zz cancelled\r\nEND zz "
        + sha(b"").encode()
        + b"\r\n"
    )
    assert transport.value() == b"" and not transport.disconnecting
    sent = session.send_file(write_file(tmp_path / "a", b"abc"))
    session.dataReceived(f"DONE {sent.id}\r\n".encode())  # DONE before END: ignored
    assert sent.state is TransferState.OFFERED


def test_progress_is_throttled(tmp_path: Path, clock: Clock) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, _ = open_listener(fb)
    session.dataReceived(b"OFFER f 100 p.bin\r\n")
    for _ in range(20):  # 20 chunks within 0.19 s
        session.dataReceived(b"DATA f 5\r\n12345")
        clock.advance(0.01)
    done = [n for i, n in eb.progress if i == "f"]
    assert done[0] == 5 and done[-1] == 100
    assert len(done) == 3  # first chunk, one after 0.1 s, and the last byte
    assert eb.offers[0].rate > 0


# -- local disk errors ------------------------------------------------------------------


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "disk-full"), (errno.EIO, "write-error")])
def test_write_errors_reject_and_chat_goes_on(tmp_path: Path, clock: Clock, code: int, reason: str) -> None:
    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    writes: list[bytes] = []

    def failing_write(fd: int, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        writes.append(b"".join(pieces))
        if len(writes) > 1:
            raise OSError(code, os.strerror(code))
        os.write(fd, writes[-1])

    fb.downloads.write = failing_write  # type: ignore[method-assign]
    # three writes' worth (the writer gathers MIN_WRITE bytes a write): the second one fails
    content = os.urandom(3 * MIN_WRITE)
    offer, body = sender_stream("f", content, "full.bin", chunk=1024 * 1024)  # the largest DATA chunk
    session.dataReceived(offer + body + b"MSG chat goes on\r\n")
    assert transport.value() == f"ACCEPT f 0\r\nREJECT f {reason}\r\n".encode()
    assert len(writes) == 2
    transfer = eb.offers[0]
    assert transfer.state is TransferState.REJECTED and transfer.reason == reason
    assert partials_in(fb) == [] and files_in(fb.downloads.root) == []
    assert eb.messages == ["chat goes on"] and not transport.disconnecting
    assert len(eb.notices) == 1 and "full.bin" in eb.notices[0]
    if reason == "disk-full":
        assert "disk full" in eb.notices[0]


def test_read_error_on_sender_cancels(tmp_path: Path, clock: Clock) -> None:
    session, transport = open_sender(tmp_path, clock)
    path = tmp_path / "shrinks.bin"
    sent = session.send_file(write_file(path, b"x" * 5000))
    path.write_bytes(b"x" * 10)  # the file shrank after the offer
    session.dataReceived(f"ACCEPT {sent.id} 0\r\n".encode())
    for _ in range(3):
        clock.advance(0)
        if transport.producer is not None:
            resume(transport)
    assert transport.value().endswith(f"CANCEL {sent.id} read-error\r\n".encode())
    assert sent.state is TransferState.CANCELLED and sent.reason == "read-error"


def test_send_file_refuses_non_files(tmp_path: Path, clock: Clock) -> None:
    session, _ = open_sender(tmp_path, clock)
    with pytest.raises(OSError):
        session.send_file(str(tmp_path))
    with pytest.raises(OSError):
        session.send_file(str(tmp_path / "missing"))


def test_random_splits_of_a_mixed_stream(tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    counter = iter(range(10**6))

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        content=st.binary(min_size=0, max_size=3000),
        chunk=st.integers(min_value=1, max_value=1200),
        cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    )
    def check(content: bytes, chunk: int, cuts: list[int]) -> None:
        clock = Clock()
        fb, eb = make_peer(tmp_path / str(next(counter)), "bob", clock, auto_accept=True)
        session, transport = open_listener(fb)
        offer, body = sender_stream("f", content, "r.bin", chunk=chunk)
        stream = b"MSG one\r\n" + offer + body + b"MSG two\r\n"
        points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
        for start, end in pairwise(points):
            session.dataReceived(stream[start:end])
        assert eb.messages == ["one", "two"]
        assert transport.value() == b"ACCEPT f 0\r\nDONE f\r\n"
        assert Path(fb.downloads.root, "r.bin").read_bytes() == content

    check()


def test_receiver_reject_mid_send_stops_the_sender(tmp_path: Path, clock: Clock) -> None:
    session, transport = open_sender(tmp_path, clock, chunk_size=1000)
    sent = session.send_file(write_file(tmp_path / "f.bin", os.urandom(5000)))
    session.dataReceived(f"ACCEPT {sent.id} 0\r\n".encode())
    clock.advance(0)
    session.dataReceived(f"REJECT {sent.id} disk-full\r\n".encode())
    for _ in range(3):
        resume(transport)
        clock.advance(0)
    assert data_lines(transport.value()) == [(sent.id, 1000)]
    assert b"END" not in transport.value()
    assert sent.state is TransferState.REJECTED and sent.reason == "disk-full"
    assert clock.getDelayedCalls() == [session.keepalive._call]  # only the open session's keep-alive


def test_bye_with_open_transfers_cancels_them_and_keeps_partials(tmp_path: Path, clock: Clock) -> None:
    pair = Pair(tmp_path, clock, alice_kw={"chunk_size": 1000}, bob_kw={"auto_accept": True})
    sent = pair.a.send_file(write_file(tmp_path / "f.bin", os.urandom(5000)))
    pair.pump.pump()  # OFFER
    pair.pump.pump()  # ACCEPT back; the whole file is written on the next turn
    pair.b.close()  # BYE before the data arrives
    pair.flush()
    received = pair.eb.offers[0]
    assert sent.state is TransferState.CANCELLED and received.state is TransferState.CANCELLED
    assert sent.reason == "bye" and received.reason == "closed"
    assert pair.ea.left == ["bye"] and pair.eb.left == ["closed"]
    assert len(partials_in(pair.fb)) == 1  # kept for a resume


def test_connection_lost_while_hashing_a_kept_partial(tmp_path: Path, clock: Clock) -> None:
    held: list[tuple[defer.Deferred[Any], Any, tuple[Any, ...]]] = []

    class HeldRunner(InlineRunner):
        def run(self, func: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            held.append((d, func, args))
            return d

    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True, runner=HeldRunner())
    kept = partial_path(fb, "alice", "h.bin", 5 * 1024 * 1024)
    Path(kept).write_bytes(b"k" * (3 * 1024 * 1024))
    session, transport = open_listener(fb)
    session.dataReceived(f"OFFER f {5 * 1024 * 1024} h.bin\r\n".encode())
    assert len(held) == 1  # hashing under way off the reactor thread
    lose(session, transport)
    d, func, args = held.pop()
    d.callback(func(*args))  # the thread finishes after the connection is gone
    assert transport.value() == b""  # no ACCEPT ever
    assert eb.offers[0].state is TransferState.CANCELLED
    assert Path(kept).stat().st_size == 3 * 1024 * 1024


def test_verify_answer_after_the_peer_left_writes_nothing(tmp_path: Path, clock: Clock) -> None:
    from twisted.internet import defer

    from chatapp.peer import PeerSession, SessionState

    pending: defer.Deferred[tuple[str, str, str]] = defer.Deferred()
    fb, eb = make_peer(tmp_path, "bob", clock, verify=lambda token: pending)
    session: PeerSession = fb.buildProtocol(None)
    transport = StringTransport()
    session.makeConnection(transport)
    session.dataReceived(b"HELLO chatapp/2 alice tok-alice\r\n")
    lose(session, transport)
    pending.callback(("alice", "proof-alice", key_of("alice")))
    assert transport.value() == b"" and session.state is SessionState.CLOSED
    assert fb.sessions == {} and eb.joined == [] and not fb.connections


def test_pump_survives_a_transport_that_resumes_it_from_inside_write(tmp_path: Path, clock: Clock) -> None:
    class EagerTransport(StringTransport):
        """Pauses on a big write and resumes at once, re-entering the producer."""

        def write(self, data: bytes) -> None:
            super().write(data)
            if len(data) > 100 and self.producer is not None:
                self.producer.pauseProducing()
                self.producer.resumeProducing()

    from chatapp.peer import PeerSession, Role

    fa, _ = make_peer(tmp_path, "alice", clock, chunk_size=1000)
    session = PeerSession(fa, Role.CONNECTOR, "bob", "tok-alice", "proof-alice", key_of("bob"))
    transport = EagerTransport()
    session.makeConnection(transport)
    secure(session)
    session.dataReceived(b"WELCOME chatapp/2 bob proof-alice\r\n")
    content = os.urandom(4500)
    sent = session.send_file(write_file(tmp_path / "f.bin", content))
    session.dataReceived(f"ACCEPT {sent.id} 0\r\n".encode())
    clock.advance(0)
    wire = transport.value()
    assert data_lines(wire) == [(sent.id, 1000)] * 4 + [(sent.id, 500)]
    assert wire.endswith(f"END {sent.id} {sha(content)}\r\n".encode())


def test_a_cut_transfer_s_hash_is_kept_so_its_resume_reads_nothing_again(tmp_path: Path, clock: Clock) -> None:
    """A peer that appends a byte and cancels, over and over, must not make us re-read a large partial
    each time: the writer's hash of what it wrote is the partial's, remembered when the file closes."""
    from test_peer_harness import prefix_hashes_counted

    fb, eb = make_peer(tmp_path, "bob", clock, auto_accept=True)
    session, transport = open_listener(fb)
    content = os.urandom(5000)
    with prefix_hashes_counted() as hashed:
        session.dataReceived(b"OFFER a 5000 big.bin\r\nDATA a 3000\r\n" + content[:3000] + b"CANCEL a cancelled\r\n")
        for step, offset in enumerate((3000, 3001, 3002)):
            transport.clear()
            session.dataReceived(f"OFFER r{step} 5000 big.bin\r\n".encode())
            assert transport.value() == f"ACCEPT r{step} {offset} {sha(content[:offset])}\r\n".encode()
            more = content[offset : offset + 1]
            session.dataReceived(f"DATA r{step} 1\r\n".encode() + more + f"CANCEL r{step} cancelled\r\n".encode())
    assert hashed == []  # every resume was answered from the writers' own hashes
    assert eb.offers[-1].kept and eb.offers[-1].bytes_done == 3003


def test_an_offer_of_a_file_partly_here_says_so_and_a_reject_keeps_what_is_here(tmp_path: Path, clock: Clock) -> None:
    """While the offer waits, the kept partial is listed and the offer says an accept resumes; refusing
    the offer does not delete bytes received by an earlier try (only /partials clean does)."""
    fb, eb = make_peer(tmp_path, "bob", clock)
    kept = partial_path(fb, "alice", "big.bin", 10)
    Path(kept).write_bytes(b"0123")
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER f 10 big.bin\r\n")
    offer = eb.offers[0]
    assert offer.state is TransferState.OFFERED and offer.already == 4
    assert [(p.peer, p.name, p.kept, p.size) for p in fb.partials()] == [("alice", "big.bin", 4, 10)]
    session.reject("f")
    assert transport.value() == b"REJECT f declined\r\n"
    assert offer.kept == 4 and Path(kept).read_bytes() == b"0123"
    session.dataReceived(b"OFFER g 10 big.bin\r\n")  # again; this time the user cleans up first
    assert fb.discard_partials() == 1 and not os.path.exists(kept)
    session.accept("g")
    assert transport.value().endswith(b"ACCEPT g 0\r\n")  # nothing left to resume from
