"""Safe names for received files (PROTOCOL.md 3.3) and partial keys."""

from __future__ import annotations

import pytest

from chatapp.peer.names import clean_name, numbered_names, offer_name, partial_key, shorten


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ("../../x", "x"),
        ("/etc/passwd", "passwd"),
        ("..\\x", "x"),
        ("a/b", "b"),
        ("C:\\Windows\\system.ini", "system.ini"),
        ("evil\x1b[2Jname.txt", "evil[2Jname.txt"),
        ("nul\x00byte.bin", "nulbyte.bin"),
        ("bidi\u202etxt.exe", "biditxt.exe"),
        ("zero\u200bwidth", "zerowidth"),
        ("line\u2028sep\u2029.txt", "linesep.txt"),  # Zl, Zp: line breaks to str.splitlines()
        ("talk slides.pdf", "talk slides.pdf"),
        (".bashrc", ".bashrc"),
    ],
)
def test_clean_name(offered: str, expected: str) -> None:
    assert clean_name(offered) == expected


@pytest.mark.parametrize(
    "offered", ["", ".", "..", "a/..", "dir/", "x\\", "\x00", "\x1b\x07", "a/.\u200b.", "\u2028", "\u2029"]
)
def test_bad_names(offered: str) -> None:
    assert clean_name(offered) is None


def test_long_name_keeps_extension_within_200_bytes() -> None:
    name = clean_name("é" * 300 + ".tar")
    assert name is not None
    assert name.endswith(".tar")
    assert len(name.encode()) <= 200
    assert name[:-4] == "é" * len(name[:-4])  # cut on a character boundary


def test_shorten_leaves_short_names_alone() -> None:
    assert shorten("a.txt") == "a.txt"
    assert shorten("x" * 250) == "x" * 200


def test_numbered_names() -> None:
    names = numbered_names("report.pdf")
    assert [next(names) for _ in range(3)] == ["report.pdf", "report (1).pdf", "report (2).pdf"]
    plain = numbered_names("README")
    assert [next(plain) for _ in range(2)] == ["README", "README (1)"]
    long = numbered_names("y" * 196 + ".txt")
    next(long)
    numbered = next(long)
    assert numbered.endswith(" (1).txt") and len(numbered.encode()) <= 200


def test_partial_key_folds_sender_only() -> None:
    assert partial_key("Alice", "a.txt", 5) == partial_key("alice", "a.txt", 5)
    assert partial_key("alice", "a.txt", 5) != partial_key("alice", "A.txt", 5)
    assert partial_key("alice", "a.txt", 5) != partial_key("alice", "a.txt", 6)
    assert partial_key("alice", "a.txt", 5) != partial_key("bob", "a.txt", 5)
    assert "/" not in partial_key("alice", "../x", 1)


def test_offer_name() -> None:
    assert offer_name("/tmp/dir/file\r\n.txt") == "file.txt"
    assert offer_name("/tmp/\x1b") == "file"
