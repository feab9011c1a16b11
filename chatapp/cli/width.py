"""Display width: how many terminal cells a text takes, and cutting a text to a number of cells.

Measured per grapheme cluster with ``wcwidth``: East Asian wide and
fullwidth characters take 2 cells, combining marks and zero-width
characters 0, and an emoji sequence (``👩‍💻``, a flag, a skin tone) takes
what a current terminal shows for it, 2.  Cutting never splits a cluster,
so a ZWJ sequence or a letter with its accents stays whole, and never
leaves half of a wide character.

Control characters should never get here: :func:`chatapp.wire.escape_for_terminal`
renders them as ``\\xNN`` first, which measures 4 like any ASCII.  One that
slips through counts 0 cells (``wcwidth`` says -1): written raw, most of
them do not move the cursor, and a width must never be negative or a
caller's arithmetic goes wrong.
"""

from __future__ import annotations

from collections.abc import Iterator

from wcwidth import iter_graphemes, wcswidth

ELLIPSIS = "…"


def _plain(text: str) -> bool:
    """Printable ASCII: one cell per character, one cluster per character (the common, fast case)."""
    return text.isascii() and text.isprintable()


def cluster_width(cluster: str) -> int:
    """Cells taken by one grapheme cluster (0 for a control character, never negative)."""
    return max(wcswidth(cluster), 0)


def clusters(text: str) -> Iterator[tuple[str, int]]:
    """The grapheme clusters of ``text`` with their widths, in order."""
    for cluster in iter_graphemes(text):
        yield cluster, cluster_width(cluster)


def width(text: str) -> int:
    """Cells ``text`` takes on one terminal row."""
    if _plain(text):
        return len(text)
    # cluster by cluster, not wcswidth(text): that also zeroes whatever follows a
    # joiner (a space after a Persian ZWJ, say), which terminals still draw, and it
    # would disagree with fit()
    return sum(w for _, w in clusters(text))


def fit(text: str, columns: int) -> str:
    """The longest start of ``text`` that takes at most ``columns`` cells, cut between clusters."""
    columns = max(columns, 0)
    if _plain(text):
        return text[:columns]
    used = 0
    end = 0
    for cluster, cells in clusters(text):
        if used + cells > columns:
            break
        used += cells
        end += len(cluster)
    return text[:end]


def fit_ellipsis(text: str, columns: int, ellipsis: str = ELLIPSIS) -> str:
    """``text`` if it fits in ``columns`` cells, else its start followed by ``ellipsis``, in ``columns`` at most.

    ``…`` is of ambiguous East Asian width; like ``wcwidth`` (and most
    terminals outside CJK legacy locales) it is counted as one cell.
    """
    if width(text) <= columns:
        return text
    room = columns - width(ellipsis)
    if room < 0:
        return fit(text, columns)
    return fit(text, room) + ellipsis


def pad(text: str, columns: int) -> str:
    """``text`` cut to ``columns`` cells and filled with spaces to exactly ``columns`` cells.

    A wide character that would straddle the edge is left out and its
    place filled with a space, so the row keeps its width.
    """
    shown = fit(text, columns)
    return shown + " " * (columns - width(shown))
