"""The line editor: long lines, paste, clusters (wide characters, emoji sequences, joiners) and the visible window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatapp.cli.editor import LineEditor, visible
from chatapp.cli.width import width

WOMAN_TECHNOLOGIST = "👩\u200d💻"
FLAG_FR = "🇫🇷"
ZWJ, ZWNJ = "\u200d", "\u200c"


def typed(*keys: str) -> LineEditor:
    e = LineEditor()
    for key in keys:
        e.insert(key)
    return e


def test_joiners_typed_one_key_at_a_time_arrive_as_typed() -> None:
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # "I want" (mi-khaham), a ZWNJ in it
    e = typed("👩", ZWJ, "💻", " ", *persian)
    assert e.submit() == f"{WOMAN_TECHNOLOGIST} {persian}"


def test_controls_are_kept_out_and_a_tab_becomes_a_space() -> None:
    e = typed("a\x1b[2Jb\tc\x07\x85")
    assert e.text == "a[2Jb c"


def test_the_cursor_steps_over_whole_clusters() -> None:
    e = typed(f"a{WOMAN_TECHNOLOGIST}日{FLAG_FR}e\u0301z")
    stops = [len(e.text)]
    while e.cursor:
        e.left()
        stops.append(e.cursor)
    assert stops == [10, 9, 7, 5, 4, 1, 0]
    e.right()
    e.right()
    assert e.cursor == 4  # after the whole ZWJ sequence
    e.delete()  # the wide char
    e.delete()  # the whole flag
    assert e.text == f"a{WOMAN_TECHNOLOGIST}e\u0301z"


def test_backspace_takes_back_a_mistyped_joiner_or_mark_alone_else_the_whole_cluster() -> None:
    e = typed("ی", ZWNJ)
    e.backspace()
    assert e.text == "ی"
    e = typed("e\u0301")
    e.backspace()
    assert e.text == "e"
    e = typed(f"x{WOMAN_TECHNOLOGIST}")
    e.backspace()
    assert e.text == "x"
    e = typed(f"x{FLAG_FR}")
    e.backspace()
    assert e.text == "x"


def test_insert_in_the_middle_of_a_long_line() -> None:
    e = typed("a" * 5000)
    e.home()
    for _ in range(2500):
        e.right()
    e.insert("日本")
    assert e.cursor == 2502 and e.text == "a" * 2500 + "日本" + "a" * 2500
    e.kill_to_end()
    e.kill_word()
    assert e.text == ""


def test_a_10000_character_paste_goes_in_whole_and_the_window_shows_its_end() -> None:
    e = typed("> ")
    paste = "".join(chr(0x4E00 + n % 500) if n % 3 else "x" for n in range(10_000))
    assert e.paste(paste) == []
    assert e.text == "> " + paste and e.cursor == 10_002
    shown, column = e.visible(80)
    assert paste.endswith(shown) and width(shown) <= 80 and column == width(shown)
    assert column >= 78  # the cursor sits at the right edge, not somewhere in the middle


def test_a_paste_with_line_breaks_is_not_inserted_but_returned_as_lines() -> None:
    e = typed("say: ", "!")
    e.left()
    # the pasted lines alone: what was typed stays in the line, not glued to the first one
    assert e.paste("one\r\ntwo\n\nthree\n") == ["one", "two", "", "three"]
    assert (e.text, e.cursor) == ("say: !", 5)  # left as it was, for the console to ask first
    assert e.paste("just a line\n") == []  # a copied line drags its line break along
    assert e.text == "say: just a line!"


def test_a_line_that_does_not_fit_scrolls_sideways() -> None:
    text = "abcdefghijklmnopqrstuvwxyz"
    assert visible(text, 3, 10) == ("abcdefghij", 3)
    assert visible(text, 26, 10) == ("rstuvwxyz", 9)
    assert visible("日本語です", 5, 6) == ("です", 4)
    assert visible("日本語です", 0, 6) == ("日本語", 0)
    assert visible(list("日本語です"), 2, 6) == ("日本語", 4)  # the console still passes editor.chars


def test_a_bidi_control_is_drawn_escaped_in_the_input_row() -> None:
    shown, column = visible("a\u202eb", 3, 20)
    assert shown == "a\\u202eb" and column == 8


_CLUSTERS = st.sampled_from(["a", " ", "日", "e\u0301", WOMAN_TECHNOLOGIST, FLAG_FR, "👍🏽", "ی", ZWNJ, ZWJ, "x"])


@given(st.lists(_CLUSTERS, max_size=60), st.integers(min_value=0), st.integers(min_value=2, max_value=30))
def test_the_window_holds_the_cursor_and_never_exceeds_the_room(parts: list[str], seed: int, room: int) -> None:
    e = typed(*parts)
    e.home()
    for _ in range(seed % (len(parts) + 1)):
        e.right()
    shown, column = e.visible(room)
    assert width(shown) <= room and 0 <= column <= room - 1
    text, cursor = e.text, e.cursor
    # the window is a piece of the line that reaches the cursor, and the cursor's cell is what it draws before it
    assert any(
        text.startswith(shown, start) and cursor <= start + len(shown) and width(text[start:cursor]) == column
        for start in range(cursor + 1)
    )
