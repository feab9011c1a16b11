import pytest

from chatapp.wire import (
    BadArguments,
    LineBuffer,
    LineTooLong,
    WireError,
    decode_line,
    escape_for_terminal,
    fields,
    fields_and_rest,
    format_line,
    parse_number,
    split_verb,
    valid_password,
    valid_username,
)


def test_line_buffer_strips_crlf_and_lf_and_keeps_remainder() -> None:
    buf = LineBuffer(10)
    assert buf.feed(b"ab\r\ncd\nef") == ([b"ab", b"cd"], False)
    assert buf.feed(b"\r") == ([], False)
    assert buf.feed(b"\n") == ([b"ef"], False)


def test_line_buffer_only_drops_cr_right_before_lf() -> None:
    assert LineBuffer(10).feed(b"a\rb\r\r\n") == ([b"a\rb\r"], False)


def test_line_buffer_accepts_exactly_the_limit() -> None:
    assert LineBuffer(4).feed(b"abcd\r\n") == ([b"abcd"], False)


def test_line_buffer_refuses_a_complete_line_over_the_limit_after_earlier_lines() -> None:
    assert LineBuffer(4).feed(b"ok\nabcde\nmore\n") == ([b"ok"], True)


def test_line_buffer_decides_when_limit_plus_two_bytes_have_no_lf() -> None:
    buf = LineBuffer(4)
    assert buf.feed(b"abcd\r") == ([], False)
    assert buf.feed(b"\r") == ([], False)
    assert buf.feed(b"x") == ([], True)


def test_decode_line_rejects_bad_utf8() -> None:
    with pytest.raises(WireError) as e:
        decode_line(b"\xff\xfe")
    assert (e.value.code, e.value.reason) == (400, "bad-encoding")


def test_split_verb_uppercases_verb_and_keeps_rest_verbatim() -> None:
    assert split_verb("login Bob  two  spaces ") == ("LOGIN", "Bob  two  spaces ")
    assert split_verb("who") == ("WHO", None)


@pytest.mark.parametrize("args", ["a  b", " a b", "a b ", "a", "a b c d", ""])
def test_fields_refuse_empty_missing_or_extra(args: str) -> None:
    with pytest.raises(BadArguments):
        fields(args, 2, optional=1)


def test_fields_accept_optional() -> None:
    assert fields("a b", 1, optional=1) == ["a", "b"]
    assert fields(None, 0) == []


def test_rest_of_line_is_kept_byte_for_byte() -> None:
    assert fields_and_rest("alice  pass word ", 1) == (["alice"], " pass word ")
    with pytest.raises(BadArguments):
        fields_and_rest("alice ", 1)
    with pytest.raises(BadArguments):
        fields_and_rest("alice", 1)


@pytest.mark.parametrize("text", ["", "-1", "+1", "1" * 20, str(2**63), "1.0", "\u0661"])
def test_bad_numbers(text: str) -> None:
    with pytest.raises(BadArguments):
        parse_number(text)


def test_biggest_number() -> None:
    assert parse_number(str(2**63 - 1)) == 2**63 - 1


@pytest.mark.parametrize("name", ["a", "Alice_1", "b.c-d", "_x", "x" * 32])
def test_good_usernames(name: str) -> None:
    assert valid_username(name)


@pytest.mark.parametrize("name", ["", ".a", "-a", "a b", "x" * 33, "é", "a/b", "\uff41"])
def test_bad_usernames(name: str) -> None:
    assert not valid_username(name)


def test_password_length_counts_utf8_bytes() -> None:
    assert valid_password("x" * 8) and valid_password("x" * 72)
    assert not valid_password("x" * 7) and not valid_password("x" * 73)
    assert not valid_password("é" * 37)  # 74 bytes


def test_format_line_refuses_embedded_newlines() -> None:
    assert format_line("OK", "PONG") == b"OK PONG\r\n"
    with pytest.raises(ValueError):
        format_line("MSG", "a\nb")


def test_escape_for_terminal_shows_controls_and_bidi_overrides() -> None:
    assert escape_for_terminal("hi\x1b[2J\u202e\x00") == "hi\\x1b[2J\\u202e\\x00"
    assert escape_for_terminal("a\\x1b") == "a\\\\x1b"  # a literal backslash can't fake an escape


@pytest.mark.parametrize(
    "char", ["\u2028", "\u2029", "\x85", "\x1c", "\x0b", "\u061c", "\u200e", "\u200f", "\u2066", "\u2069"]
)
def test_line_separators_and_bidi_controls_never_pass_raw(char: str) -> None:
    escaped = escape_for_terminal(f"a{char}b")
    assert char not in escaped
    assert len(escaped.splitlines()) == 1  # a consumer splitting with str.splitlines() reads one line


def test_joiners_and_other_format_characters_pass_as_they_are() -> None:
    # an emoji ZWJ sequence and Persian with a ZWNJ
    text = "\U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    assert escape_for_terminal(text) == text


@pytest.mark.parametrize(
    ("line", "verb"),
    [
        ("ping", "PING"),
        ("PiNg x", "PING"),
        ("p\u0131ng", "p\u0131ng"),  # dotless i: str.upper() would make it PING
        ("\u017fignup a b", "\u017fignup"),  # long s: str.upper() would make it SIGNUP
        ("\uff30ING", "\uff30ING"),  # a full-width P
        ("*", "*"),
        ("ok", "OK"),
        ("P1NG", "P1NG"),
    ],
)
def test_verbs_are_ascii_letters_only(line: str, verb: str) -> None:
    assert split_verb(line)[0] == verb


def test_pulled_lines_come_one_at_a_time_and_the_rest_stays_bytes() -> None:
    buf = LineBuffer(10)
    buf.push(b"ab\r\ncd\nef")
    assert buf.complete_lines() == 2 and buf.buffered == 9
    assert [buf.next_line(), buf.next_line(), buf.next_line()] == [b"ab", b"cd", None]
    assert buf.buffered == 2
    buf.push(b"\r\n")
    assert buf.next_line() == b"ef"


def test_pulled_lines_longer_than_the_limit_raise_in_order() -> None:
    buf = LineBuffer(4)
    buf.push(b"abcd\r\nabcde\r\nx\r\n")
    assert buf.next_line() == b"abcd"
    with pytest.raises(LineTooLong):
        buf.next_line()
    buf = LineBuffer(4)
    buf.push(b"abcdef")  # no LF, but already more than the limit plus CR LF
    assert buf.next_line() is None
    buf.push(b"g")
    with pytest.raises(LineTooLong):
        buf.next_line()
