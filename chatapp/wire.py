"""The line format shared by the server and peer protocols (PROTOCOL.md section 1).

Everything here is pure: bytes or text in, values out, no I/O.  The
protocols translate transport bytes into calls on these helpers.
"""

from __future__ import annotations

import re
import unicodedata

SERVER_MAX_LINE = 4096
PEER_MAX_LINE = 16384
MAX_NUMBER = 2**63 - 1

_NUMBER = re.compile(r"[0-9]{1,19}")
_USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,31}")
_URLSAFE = re.compile(r"[A-Za-z0-9_\-]+")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_VERB = re.compile(r"[A-Za-z]+")

# First fields of lines that are never answered (PROTOCOL.md section 1): replies and events.
# Answering them could make two programs trade errors forever.
UNANSWERED = frozenset({"OK", "ERR", "*"})


class WireError(Exception):
    """A line that cannot be taken: carries the ``ERR`` code and reason to send back."""

    def __init__(self, code: int, reason: str, text: str = "") -> None:
        super().__init__(code, reason, text)
        self.code = code
        self.reason = reason
        self.text = text

    def line(self) -> bytes:
        return format_error(self.code, self.reason, self.text)


class LineTooLong(Exception):
    """The peer sent more than the longest allowed line without an LF."""


class BadArguments(WireError):
    def __init__(self, text: str = "wrong number or form of fields") -> None:
        super().__init__(400, "bad-arguments", text)


class LineBuffer:
    """Splits a byte stream into lines, bounded by ``max_length``.

    ``feed`` returns the complete lines (CR LF or LF stripped) and keeps the
    remainder.  It raises :class:`LineTooLong` once a line is certainly longer
    than allowed; lines before it are delivered first through ``pending``.
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._buffer = bytearray()

    def feed(self, data: bytes) -> tuple[list[bytes], bool]:
        """Return the complete lines in ``data`` and whether a too-long line follows them."""
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line_end = end - 1 if end > start and buffer[end - 1] == 0x0D else end
            if line_end - start > self.max_length:
                del buffer[:]
                return lines, True
            lines.append(bytes(buffer[start:line_end]))
            start = end + 1
        del buffer[:start]
        too_long = len(buffer) > self.max_length + 2
        if too_long:
            del buffer[:]
        return lines, too_long

    # -- pull mode: the caller takes one line at a time, so unread input stays bytes it can bound --

    def push(self, data: bytes) -> None:
        """Keep ``data`` for :meth:`next_line`."""
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line (CR LF or LF stripped), or None; raises :class:`LineTooLong`."""
        buffer = self._buffer
        end = buffer.find(b"\n", 0, self.max_length + 2)
        if end < 0:
            if len(buffer) > self.max_length + 2:
                del buffer[:]
                raise LineTooLong()
            return None
        line_end = end - 1 if end > 0 and buffer[end - 1] == 0x0D else end
        if line_end > self.max_length:
            del buffer[:]
            raise LineTooLong()
        line = bytes(buffer[:line_end])
        del buffer[: end + 1]  # cheap: a bytearray drops its head without moving the rest
        return line

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken as lines."""
        return len(self._buffer)

    def complete_lines(self) -> int:
        """How many complete lines are waiting (one pass over at most the buffered bytes)."""
        return self._buffer.count(b"\n")

    def clear(self) -> None:
        del self._buffer[:]


def decode_line(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(400, "bad-encoding", "lines must be UTF-8") from None


def split_verb(line: str) -> tuple[str, str | None]:
    """Split ``VERB rest`` into the verb and the raw rest (None if absent).

    A verb of ASCII letters comes back upper-cased; anything else comes back as
    it was, so it matches no verb: ``str.upper()`` alone would turn ``p\\u0131ng``
    (dotless i) into ``PING`` and ``\\u017fignup`` (long s) into ``SIGNUP``.
    """
    verb, sep, rest = line.partition(" ")
    if _VERB.fullmatch(verb):
        verb = verb.upper()
    return verb, (rest if sep else None)


def fields(args: str | None, count: int, optional: int = 0) -> list[str]:
    """Exactly ``count`` (plus up to ``optional``) non-empty single-space-separated fields."""
    if args is None:
        if count == 0:
            return []
        raise BadArguments()
    parts = args.split(" ")
    if not count <= len(parts) <= count + optional or any(p == "" for p in parts):
        raise BadArguments()
    return parts


def fields_and_rest(args: str | None, count: int) -> tuple[list[str], str]:
    """``count`` fields then the rest of the line, kept byte for byte (must not be empty)."""
    if args is None:
        raise BadArguments()
    parts = args.split(" ", count)
    if len(parts) != count + 1 or any(p == "" for p in parts[:count]) or parts[count] == "":
        raise BadArguments()
    return parts[:count], parts[count]


def parse_number(text: str) -> int:
    if not _NUMBER.fullmatch(text):
        raise BadArguments("numbers are 1-19 digits")
    value = int(text)
    if value > MAX_NUMBER:
        raise BadArguments("number too large")
    return value


def is_number(text: str) -> bool:
    return bool(_NUMBER.fullmatch(text)) and int(text) <= MAX_NUMBER


def valid_username(name: str) -> bool:
    return bool(_USERNAME.fullmatch(name)) and name.isascii()


def fold_name(name: str) -> str:
    """The key under which a user name is unique (names are ASCII, so lower() is enough)."""
    return name.lower()


def valid_password(password: str) -> bool:
    return 8 <= len(password.encode("utf-8")) <= 72


def valid_urlsafe(text: str, max_length: int = 128) -> bool:
    return len(text) <= max_length and bool(_URLSAFE.fullmatch(text))


def valid_sha256(text: str) -> bool:
    return bool(_SHA256.fullmatch(text))


def format_line(*parts: str) -> bytes:
    """Join fields with single spaces and end the line with CR LF."""
    text = " ".join(parts)
    if "\r" in text or "\n" in text:
        raise ValueError("a line cannot carry CR or LF")
    return text.encode("utf-8") + b"\r\n"


def format_error(code: int, reason: str, text: str = "") -> bytes:
    if text:
        return format_line("ERR", str(code), reason, clean_text(text))
    return format_line("ERR", str(code), reason)


def clean_text(text: str) -> str:
    """Make free text safe to put on one line: CR, LF and other controls become spaces."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


# PROTOCOL.md section 1: the bidirectional controls, which reorder what a terminal shows.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Cc holds ESC and the C1 controls; Zl and Zp (U+2028, U+2029) are line breaks to str.splitlines().
_ESCAPED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def must_escape(char: str) -> bool:
    """True for a character that a terminal or a line-oriented reader must never get raw.

    Other format characters (Cf) such as the zero-width joiner and non-joiner pass:
    emoji sequences and Persian or Indic text need them.
    """
    return char in BIDI_CONTROLS or unicodedata.category(char) in _ESCAPED_CATEGORIES


def escape_for_terminal(text: str) -> str:
    """Render controls, line separators and bidi controls visibly (``\\x1b``, ``\\u2028``), never raw."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif must_escape(char):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def loggable(value: object) -> str:
    """``value`` as text for a log line, control characters (CR, LF, ESC...) shown escaped; None as ""."""
    return escape_for_terminal("" if value is None else str(value))


def strip_crlf(text: str) -> str:
    """For log lines: a user-supplied value must never forge a new log line."""
    return text.replace("\r", "").replace("\n", "")
