"""The interactive screen's output, bounded by the rules of :mod:`chatapp.cli.output`.

A terminal that stops reading (a stalled ssh session, a paused tmux pane)
would otherwise let everything drawn queue in ``StandardIO``'s write buffer
without end.  :class:`ScreenOutput` is that buffer's streaming producer, so
the writer says when its buffer passed its own high-water mark
(``pauseProducing``) and when it emptied (``resumeProducing``); every byte
the console draws in between is counted:

- past ``pause_after`` (:data:`SCREEN_PAUSE`) the output is *backed up*:
  :class:`~chatapp.cli.output.PeerThrottle` stops reading every peer whose
  events reach the screen (their data waits in the kernel; TCP slows them
  down; nothing is lost), as in script mode;
- past ``close_after`` (:data:`SCREEN_LIMIT`) drawing stops (what still comes,
  such as the server link's news or our own commands' answers, is not
  written); the lines are still kept in their windows (bounded there), and
  when the terminal has taken everything, the window shown is drawn again
  from them: the last screen's worth, nothing more.

Unlike script mode nothing ends the run: a person may come back to that
terminal, and then sees the screen as it is now.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from .output import BoundedOutput

log = Logger()

KiB = 1024
SCREEN_PAUSE = 256 * KiB  # drawn but unread beyond the writer's buffer: stop reading the peers that cause it
SCREEN_LIMIT = 1024 * KiB  # ... and past this, stop drawing until the terminal has read everything


class ScreenOutput(BoundedOutput):
    """Counts what the console draws while the terminal is not reading; pauses peers, then stops drawing."""

    def __init__(
        self,
        on_thaw: Callable[[], None],
        *,
        pause_after: int = SCREEN_PAUSE,
        close_after: int = SCREEN_LIMIT,
    ) -> None:
        super().__init__(None, pause_after=pause_after, close_after=close_after)
        self.on_thaw = on_thaw
        self._frozen_told = False

    @property
    def frozen(self) -> bool:
        """Drawing is stopped (past the hard bound) until the terminal has read everything."""
        return self.overflowed

    def passes(self, size: int) -> bool:
        """Whether ``size`` bytes about to be drawn may go to the terminal (and count them)."""
        if self.overflowed:
            return False
        if not self.full:
            return True
        self.queued += size
        if self.queued > self.close_after:
            self._overflow()
            return False
        if self.queued > self.pause_after and not self.backed_up:
            self.backed_up = True
            if not self._told:  # once per run: a terminal that stalls again and again must not fill the log
                self._told = True
                log.warn(
                    "the terminal is not reading: {queued} bytes wait; peers that produce output are paused"
                    " (logged once)",
                    queued=self.queued,
                )
            self._tell(True)
        return True

    def _overflow(self) -> None:
        self.overflowed = True
        if not self._frozen_told:
            self._frozen_told = True
            log.warn(
                "the terminal is not reading: more than {limit} bytes wait; drawing stops until it reads"
                " (logged once)",
                limit=self.close_after,
            )

    def resumeProducing(self) -> None:
        thawed, self.overflowed = self.overflowed, False
        super().resumeProducing()
        if thawed:
            self.on_thaw()  # the window shown, drawn again from its kept lines
