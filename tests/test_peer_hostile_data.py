"""A peer that trickles a DATA chunk is cut off; one that keeps pace is not."""

from __future__ import annotations

import os
from pathlib import Path

from test_peer_harness import Recorder, lose, make_peer, open_listener
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from chatapp.peer import PeerFactory, PeerSession, SessionState, TransferState


def offered_and_accepted(
    tmp_path: Path, clock: Clock
) -> tuple[PeerFactory, Recorder, PeerSession, StringTransport]:
    # the transfer's own progress rule (tests/test_peer_slots.py) is set aside: these test the chunk deadline
    factory, events = make_peer(tmp_path, "bob", clock, auto_accept=True, progress_window=10_000)
    session, transport = open_listener(factory)
    session.dataReceived(b"OFFER f1 100 slow.txt\r\n")
    assert transport.value() == b"ACCEPT f1 0\r\n"
    transport.clear()
    return factory, events, session, transport


def test_a_chunk_trickled_one_byte_a_second_is_cut_and_its_partial_kept(tmp_path: Path, clock: Clock) -> None:
    factory, _events, session, transport = offered_and_accepted(tmp_path, clock)
    session.dataReceived(b"DATA f1 100\r\n")
    for _ in range(59):
        session.dataReceived(b"x")
        clock.advance(1)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting and session.close_reason == "data-timeout"
    lose(session, transport)
    transfer = session.incoming["f1"]
    assert transfer.state is TransferState.CANCELLED and transfer.reason == "data-timeout"
    partials = os.listdir(factory.downloads.partial_root)
    assert len(partials) == 1  # kept: a slow link is not an attack we can tell apart, so resume stays possible


def test_chunks_that_arrive_in_time_keep_the_connection(tmp_path: Path, clock: Clock) -> None:
    _factory, _events, session, transport = offered_and_accepted(tmp_path, clock)
    for _ in range(4):
        session.dataReceived(b"DATA f1 25\r\n" + b"y" * 24)
        clock.advance(59)
        session.dataReceived(b"y")
    clock.advance(600)  # between chunks there is no deadline
    session.dataReceived(b"MSG still here\r\n")
    assert not transport.disconnecting
    assert session.state is SessionState.OPEN
    assert session.incoming["f1"].bytes_done == 100
