"""Issue 13, console half: recent rates and stalls (Clock), the config file, offer timeouts, /cancel, /partials."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock

from chatapp.cli.commands import CommandError, Conversations, Dispatcher, OfferTimers, parse_command
from chatapp.cli.events import OfferTimedOut, PartialRow, PartialsCleaned, PartialsListed, TransferCancelled
from chatapp.cli.options import DEFAULT_ONESHOT_OFFER_TIMEOUT, UsageError, parse_args
from chatapp.cli.rates import STALL_AFTER, Rates, RateWindow
from chatapp.cli.render import speed_text
from chatapp.peer import Direction, TransferState

MiB = 1024**2


def test_the_rate_is_the_recent_window_and_falls_when_the_transfer_slows() -> None:
    window = RateWindow(window=5.0)
    for second in range(11):  # 10 MiB/s for 10 s
        window.add(second, second * 10 * MiB)
    assert window.rate(10.0) == pytest.approx(10 * MiB)
    for second in range(11, 21):  # then 1 MiB/s: an average since the start would still say 5.5
        window.add(second, 100 * MiB + (second - 10) * MiB)
    assert window.rate(20.0) == pytest.approx(1 * MiB)


def test_a_stall_shows_as_a_stall_not_as_the_old_rate() -> None:
    window = RateWindow()
    for second in range(6):
        window.add(second, second * MiB)
    assert window.stalled(5.0) is None
    assert window.stalled(5.0 + STALL_AFTER + 9) == pytest.approx(STALL_AFTER + 9)
    assert window.rate(5.0 + STALL_AFTER + 9) == 0.0
    window.add(20.0, 6 * MiB)  # moving again
    assert window.stalled(20.0) is None


def test_samples_per_transfer_are_bounded() -> None:
    window = RateWindow(window=1e9)
    for i in range(10_000):
        window.add(i * 0.001, i + 1)
    assert len(window._samples) <= 128


@dataclass
class T:
    size: int
    bytes_done: int = 0
    offset: int = 0
    started: float | None = None
    handle: int = 1
    direction: Direction = Direction.RECEIVE
    state: TransferState = TransferState.RECEIVING
    name: str = "big.iso"
    peer: str = "bob"
    rate: float = 0.0

    @property
    def finished(self) -> bool:
        return self.state.final


def test_rates_per_transfer_eta_stall_text_and_summary_on_a_clock() -> None:
    clock = Clock()
    rates = Rates(clock)
    t: Any = T(size=100 * MiB, offset=20 * MiB, bytes_done=20 * MiB, started=0.0)
    first = True
    for _ in range(4):
        clock.advance(1)
        t.bytes_done += 2 * MiB
        assert rates.progress(t) is first
        first = False
    speed = rates.speed(t)
    assert speed.rate == pytest.approx(2 * MiB)
    assert speed.eta == pytest.approx(72 * MiB / (2 * MiB))
    assert speed_text(t, rates.speed) == "2.0 MiB/s ETA 00:36"
    clock.advance(12)
    assert speed_text(t, rates.speed) == "stalled 12 s"
    assert [(x.handle, round(s)) for x, s in rates.stalled()] == [(1, 12)]
    summary = rates.ended(t)
    assert summary is not None and summary.moved == 8 * MiB and summary.seconds == 16.0
    assert summary.average == pytest.approx(0.5 * MiB)
    assert rates.stalled() == [] and rates.speed(t).rate == 0.0  # forgotten at the end


def test_a_transfer_s_first_half_second_says_starting_not_a_rate_of_nothing() -> None:
    clock = Clock()
    rates = Rates(clock)
    t: Any = T(size=100 * MiB, offset=0, bytes_done=0, started=0.0)
    assert speed_text(t, rates.speed) == "starting"  # no progress yet: not "0 B/s ETA --:--"
    clock.advance(0.25)
    t.bytes_done = 4 * MiB
    rates.progress(t)
    assert speed_text(t, rates.speed) == "starting"  # a quarter of a second is no measure ("16 MiB/s")
    clock.advance(0.25)
    t.bytes_done = 8 * MiB
    rates.progress(t)
    assert speed_text(t, rates.speed) == "16.0 MiB/s ETA 00:06"


# -- the config file ------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> dict[str, str]:
    folder = tmp_path / "chatapp"
    folder.mkdir(exist_ok=True)
    (folder / "config.toml").write_text(text)
    return {"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}


def test_the_config_file_gives_defaults_and_options_override_it(tmp_path: Path) -> None:
    env = write_config(
        tmp_path,
        'server = "chat.example:9000"\nuser = "alice"\ndownloads = "~/in"\nlisten = false\n'
        'max-file-size = "2G"\naccept-files = true\nlog-dir = "~/logs"\noffer-timeout = 60\n',
    )
    s = parse_args([], env)
    assert (s.server, s.user, s.downloads, s.listen) == ("chat.example:9000", "alice", "~/in", None)
    assert (s.max_file_size, s.accept_files, s.log_dir, s.offer_timeout) == (2 * 1024**3, True, "~/logs", 60.0)
    s = parse_args(["--server", "other:1", "--user", "bob", "--listen", "tcp:0", "--offer-timeout", "0"], env)
    assert (s.server, s.user, s.listen, s.offer_timeout) == ("other:1", "bob", "tcp:0", None)


def test_no_config_file_is_fine_and_send_has_a_default_offer_timeout(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "none")}
    assert parse_args([], env).offer_timeout is None
    (tmp_path / "f").write_bytes(b"x")
    assert parse_args(["send", "bob", str(tmp_path / "f")], env).offer_timeout == DEFAULT_ONESHOT_OFFER_TIMEOUT


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('server = "a"\nfrobnicate = 1\n', "unknown key 'frobnicate'"),
        ("server = \n", "line 1"),
        ("accept-files = 1\n", "'accept-files' must be true or false"),
        ('max-file-size = "lots"\n', "'max-file-size': not a size"),
        ("offer-timeout = -3\n", "0 (never) or more"),
    ],
)
def test_a_bad_config_file_is_one_clear_usage_error(tmp_path: Path, text: str, words: str) -> None:
    env = write_config(tmp_path, text)
    with pytest.raises(UsageError) as e:
        parse_args([], env)
    assert str(tmp_path / "chatapp" / "config.toml") in str(e.value) and words in str(e.value)
    assert "\n" not in str(e.value)


def test_config_picks_another_file_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text('user = "carol"\n')
    assert parse_args(["--config", str(tmp_path / "mine.toml")], {}).user == "carol"
    with pytest.raises(UsageError, match="no config file"):
        parse_args(["--config", str(tmp_path / "nope.toml")], {})


def test_send_refuses_a_directory_with_a_clear_word(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="directories are not supported yet"):
        parse_args(["send", "bob", str(tmp_path)], {"XDG_CONFIG_HOME": str(tmp_path)})


# -- commands against a stand-in client ---------------------------------------------------------


@dataclass
class Partial:
    peer: str
    name: str
    size: int
    kept: int
    modified: float
    path: str


@dataclass
class FakeClient:
    transfers_by_handle: dict[int, Any] = field(default_factory=dict)
    cancelled: list[tuple[int, bool]] = field(default_factory=list)
    kept_partials: list[Partial] = field(default_factory=list)
    user: str = "alice"

    def transfer(self, handle: int) -> Any:
        return self.transfers_by_handle[handle]

    def cancel(self, handle: int, discard: bool = False) -> int | None:
        t = self.transfers_by_handle[handle]
        self.cancelled.append((handle, discard))
        t.state = TransferState.CANCELLED
        return t.bytes_done if t.direction is Direction.RECEIVE and not discard else None

    def partials(self) -> list[Partial]:
        return list(self.kept_partials)

    def discard_partials(self) -> int:
        n, self.kept_partials = len(self.kept_partials), []
        return n

    def sessions(self) -> list[Any]:
        return []


def test_cancel_parses_discard_and_nothing_else() -> None:
    assert parse_command("/cancel #3 discard").args == ("3", "discard")  # type: ignore[union-attr]
    assert parse_command("/cancel 3").args == ("3",)  # type: ignore[union-attr]
    with pytest.raises(CommandError, match="usage"):
        parse_command("/cancel 3 please")
    with pytest.raises(CommandError, match="usage"):
        parse_command("/partials all")


@pytest.mark.parametrize(("line", "shown"), [("/cancel 1", TransferCancelled(1, 5, False)),
                                             ("/cancel 1 discard", TransferCancelled(1, None, True))])  # fmt: skip
def test_a_receivers_cancel_keeps_the_partial_unless_told(line: str, shown: TransferCancelled) -> None:
    import asyncio

    client = FakeClient({1: T(size=10, bytes_done=5)})
    events: list[Any] = []
    dispatcher = Dispatcher(client, Conversations(), events.append)  # type: ignore[arg-type]
    assert asyncio.run(dispatcher.run_line(line))
    assert events == [shown]
    assert client.cancelled == [(1, shown.discarded)]


def test_partials_are_listed_and_cleaned() -> None:
    import asyncio

    client = FakeClient(kept_partials=[Partial("bob", "a.iso", 400, 100, 5.0, "/x/1.part")])
    events: list[Any] = []
    dispatcher = Dispatcher(client, Conversations(), events.append)  # type: ignore[arg-type]
    assert asyncio.run(dispatcher.run_line("/partials"))
    assert events == [PartialRow("bob", "a.iso", 100, 400, 5.0), PartialsListed(1)]
    assert asyncio.run(dispatcher.run_line("/partials clean"))
    assert events[-1] == PartialsCleaned(1) and client.kept_partials == []


def test_an_offer_nobody_answers_is_cancelled_once_and_said() -> None:
    clock = Clock()
    client = FakeClient({1: T(size=10, state=TransferState.OFFERED, direction=Direction.SEND),
                         2: T(size=10, state=TransferState.OFFERED, direction=Direction.SEND, handle=2)})  # fmt: skip
    events: list[Any] = []
    timers = OfferTimers(client, clock, 30.0, events.append)  # type: ignore[arg-type]
    timers.watch(client.transfer(1))
    timers.watch(client.transfer(2))
    timers.watch(client.transfer(1))  # once per offer
    client.transfer(2).state = TransferState.SENDING  # answered in time
    clock.advance(29)
    assert events == []
    clock.advance(1)
    assert events == [OfferTimedOut(client.transfer(1), 30.0)]
    assert client.cancelled == [(1, False)]
    assert client.transfer(1).reason == "timed-out"
    assert clock.getDelayedCalls() == []


def test_no_offer_timeout_means_no_timer() -> None:
    clock = Clock()
    timers = OfferTimers(FakeClient(), clock, None, lambda e: None)  # type: ignore[arg-type]
    timers.watch(T(size=1, state=TransferState.OFFERED))  # type: ignore[arg-type]
    assert clock.getDelayedCalls() == []


def test_a_cancel_right_after_accept_keeps_no_empty_partial_and_a_real_one_reports_every_byte_received(
    tmp_path: Path,
) -> None:
    from test_peer_harness import make_peer, open_listener

    fb, _ = make_peer(tmp_path, "bob", Clock(), auto_accept=True)
    session, transport = open_listener(fb)
    session.dataReceived(b"OFFER e1 10 empty.bin\r\n")
    session.cancel(session.incoming["e1"])
    assert transport.value().endswith(b"REJECT e1 cancelled\r\n")
    assert fb.partials() == []  # nothing received: nothing to resume, no 0-byte file left
    session.dataReceived(b"OFFER k1 10 kept.bin\r\nDATA k1 4\r\nabcd")
    incoming = session.incoming["k1"]
    events: list[Any] = []

    def cancel(handle: int, discard: bool = False) -> int:
        session.cancel(incoming)
        return incoming.bytes_done  # bytes received, as ChatClient.cancel reports them

    client: Any = SimpleNamespace(transfer=lambda h: incoming, partials=fb.partials, cancel=cancel)
    dispatcher = Dispatcher(client, Conversations(), events.append)
    import asyncio

    assert asyncio.run(dispatcher.run_line(f"/cancel {incoming.handle}"))
    assert events[-1] == TransferCancelled(incoming.handle, 4, False)
    (partial,) = fb.partials()
    assert partial.kept == 4  # the writer wrote what it held before closing: what was said is what is kept


def test_no_rate_is_claimed_from_a_few_milliseconds_of_samples() -> None:
    from chatapp.cli.rates import MIN_SPAN, RateWindow

    window = RateWindow()
    window.add(100.0, 0)
    window.add(100.002, 1_048_576)  # a small file done in 2 ms: not "500 MB/s"
    assert window.rate(100.002) == 0.0
    window.add(100.0 + MIN_SPAN, 2_097_152)
    assert window.rate(100.0 + MIN_SPAN) == 2_097_152 / MIN_SPAN
