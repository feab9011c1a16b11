"""Display width: CJK, emoji sequences, combining marks and joiners take the cells a terminal gives them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatapp.cli.width import fit, fit_ellipsis, pad, width

WOMAN_TECHNOLOGIST = "👩\u200d💻"  # woman + ZWJ + laptop: one glyph, two cells
FAMILY = "👨\u200d👩\u200d👧"
FLAG_FR = "🇫🇷"
E_DECOMPOSED = "e\u0301"
PERSIAN = (
    "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want" (mi-khaham), with the ZWNJ Persian spelling needs
)


@pytest.mark.parametrize(
    ("text", "cells"),
    [
        ("hello", 5),
        ("日本語", 6),
        ("\uff46\uff55\uff4c\uff4c", 8),  # "full" in fullwidth forms
        (E_DECOMPOSED, 1),
        ("cafe\u0301 au lait", 12),
        (WOMAN_TECHNOLOGIST, 2),
        (FAMILY, 2),
        (FLAG_FR, 2),
        ("👍🏽", 2),  # skin tone modifier
        ("❤\ufe0f", 2),  # emoji presentation selector
        ("\u200d", 0),
        ("\u200c", 0),
        (PERSIAN, 7),
        ("", 0),
    ],
)
def test_width_counts_cells(text: str, cells: int) -> None:
    assert width(text) == cells


def test_a_control_character_counts_zero_never_negative() -> None:
    assert width("\x1b") == 0
    assert width("a\x07b\x7f\x85") == 2
    assert width("\\x1b") == 4  # what escape_for_terminal makes of it


def test_fit_cuts_at_cells_never_inside_a_cluster() -> None:
    assert fit("hello", 3) == "hel"
    assert fit("日本語", 5) == "日本"  # the third would need cells 5 and 6
    assert fit("日本語", 1) == ""
    assert fit(f"a{WOMAN_TECHNOLOGIST}b", 2) == "a"
    assert fit(f"a{WOMAN_TECHNOLOGIST}b", 3) == f"a{WOMAN_TECHNOLOGIST}"
    assert fit(f"{FLAG_FR}{FLAG_FR}", 3) == FLAG_FR
    assert fit(f"caf{E_DECOMPOSED}!", 4) == f"caf{E_DECOMPOSED}"
    assert fit(PERSIAN, 2) == PERSIAN[:3]  # the joiner stays with the letter it follows
    assert fit("anything", 0) == "" and fit("anything", -3) == ""


def test_fit_ellipsis_marks_a_cut() -> None:
    assert fit_ellipsis("short", 10) == "short"
    assert fit_ellipsis("exactly", 7) == "exactly"
    assert fit_ellipsis("too long a name", 8) == "too lon…"
    assert fit_ellipsis("日本語のファイル名.iso", 8) == "日本語…"  # 6 cells + ellipsis; a 4th would need 9
    assert width(fit_ellipsis("日本語のファイル名.iso", 8)) <= 8
    assert fit_ellipsis("abc", 0) == ""


def test_pad_fills_to_exactly_the_cells_asked() -> None:
    assert pad("ab", 4) == "ab  "
    assert pad("日本語", 5) == "日本 "  # the wide char that would straddle the edge becomes a space
    assert pad(WOMAN_TECHNOLOGIST, 3) == f"{WOMAN_TECHNOLOGIST} "
    assert width(pad("日本語", 5)) == 5


_TEXT = st.text(
    st.sampled_from(list("aé日\u0301\u200d\u200c👩💻🇫🇷❤\ufe0f🏽یخ ")) | st.characters(codec="utf-8"),
    max_size=30,
)


@given(_TEXT, st.integers(min_value=0, max_value=40))
def test_fit_is_a_prefix_that_fits(text: str, columns: int) -> None:
    shown = fit(text, columns)
    assert text.startswith(shown)
    assert 0 <= width(shown) <= columns
    assert width(pad(text, columns)) == columns
    assert width(fit_ellipsis(text, columns)) <= columns
    if width(text) <= columns:
        assert shown == text
