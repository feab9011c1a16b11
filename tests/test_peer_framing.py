"""The peer framer: lines and raw blocks switched at any byte, and the line length limit."""

from __future__ import annotations

import pytest

from chatapp.peer.framing import TOO_LONG, Framer, Line, Raw


def drain(framer: Framer, raw_after: dict[bytes, int]) -> list[object]:
    """Take items; after a line that is a key of raw_after, expect that many raw bytes."""
    out: list[object] = []
    while (item := framer.next()) is not None:
        out.append(item)
        if isinstance(item, Line) and item.data in raw_after:
            framer.expect_raw(raw_after[item.data])
    return out


def collapse(items: list[object]) -> list[object]:
    """Join consecutive raw pieces so results from different splits compare equal."""
    out: list[object] = []
    for item in items:
        if isinstance(item, Raw) and out and isinstance(out[-1], bytearray):
            out[-1] += item.data
        elif isinstance(item, Raw):
            out.append(bytearray(item.data))
        else:
            out.append(item)
    return [bytes(x) if isinstance(x, bytearray) else x for x in out]


STREAM = b"HEAD\r\nDATA x 6\r\n\r\n\nab\nMSG after\nlast\r\n"
EXPECTED = [Line(b"HEAD"), Line(b"DATA x 6"), b"\r\n\nab\n", Line(b"MSG after"), Line(b"last")]


def test_lines_and_raw_in_one_segment() -> None:
    framer = Framer(100)
    framer.feed(STREAM)
    items = drain(framer, {b"DATA x 6": 6})
    assert collapse(items) == EXPECTED
    assert items[2] == Raw(b"\r\n\nab\n", True)


@pytest.mark.parametrize("split", range(1, len(STREAM)))
def test_every_split_point(split: int) -> None:
    framer = Framer(100)
    items = []
    for part in (STREAM[:split], STREAM[split:]):
        framer.feed(part)
        items += drain(framer, {b"DATA x 6": 6})
    assert collapse(items) == EXPECTED
    raws = [i for i in items if isinstance(i, Raw)]
    assert [r.last for r in raws][-1] is True and not any(r.last for r in raws[:-1])


def test_one_byte_at_a_time() -> None:
    framer = Framer(100)
    items = []
    for i in range(len(STREAM)):
        framer.feed(STREAM[i : i + 1])
        items += drain(framer, {b"DATA x 6": 6})
    assert collapse(items) == EXPECTED


def test_raw_without_following_line_waits() -> None:
    framer = Framer(100)
    framer.feed(b"D\nabc")
    assert framer.next() == Line(b"D")
    framer.expect_raw(5)
    assert framer.next() == Raw(b"abc", False)
    assert framer.next() is None
    assert framer.raw_left == 2
    framer.feed(b"de\nX\n")
    assert framer.next() == Raw(b"de", True)
    assert framer.next() == Line(b"")
    assert framer.next() == Line(b"X")


def test_line_of_max_length_passes_and_one_more_fails() -> None:
    framer = Framer(10)
    framer.feed(b"a" * 10 + b"\r\n")
    assert framer.next() == Line(b"a" * 10)
    framer.feed(b"b" * 11 + b"\n")
    assert framer.next() is TOO_LONG
    framer.feed(b"more\n")
    assert framer.next() is None  # broken for good


def test_too_long_without_newline_is_detected_early() -> None:
    framer = Framer(10)
    framer.feed(b"x" * 12)
    assert framer.next() is None  # max + 2 may still end in CR LF
    framer.feed(b"x")
    assert framer.next() is TOO_LONG


def test_cr_only_dropped_right_before_lf() -> None:
    framer = Framer(10)
    framer.feed(b"a\rb\r\n")
    assert framer.next() == Line(b"a\rb")


def test_expect_raw_rejects_zero() -> None:
    with pytest.raises(ValueError):
        Framer(10).expect_raw(0)


def test_pieces_stay_valid_while_more_is_fed() -> None:
    framer = Framer(100)
    framer.feed(b"D\nab")
    assert framer.next() == Line(b"D")
    framer.expect_raw(6)
    first = framer.next()
    framer.feed(b"cd")  # everything before was taken: this segment becomes the buffer
    second = framer.next()
    framer.feed(bytearray(b"efX"))  # type: ignore[arg-type]  # a caller's mutable buffer is copied, never kept
    third = framer.next()
    assert framer.next() is None  # "X" waits for its LF
    framer.feed(b"\nY\n")  # the leftover "X" is joined with the new segment
    assert framer.next() == Line(b"X") and framer.next() == Line(b"Y")
    assert isinstance(first, Raw) and isinstance(second, Raw) and isinstance(third, Raw)
    assert [bytes(first.data), bytes(second.data), bytes(third.data)] == [b"ab", b"cd", b"ef"]
    assert third.last and not second.last


def test_leftover_raw_then_more_raw() -> None:
    framer = Framer(100)
    framer.feed(b"A\n12")
    assert framer.next() == Line(b"A")
    framer.expect_raw(2)
    framer.feed(b"B\n")  # not all taken yet: "12" is joined with this
    assert framer.next() == Raw(b"12", True)
    assert framer.next() == Line(b"B")
    framer.expect_raw(3)
    framer.feed(b"34")
    framer.feed(b"5C\n")
    pieces = []
    while (item := framer.next()) is not None:
        pieces.append(item)
    assert pieces == [Raw(b"345", True), Line(b"C")]
