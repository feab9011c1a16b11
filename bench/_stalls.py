"""What can hold a chat line back in a chatapp process while a file streams: the reactor late, GC, reading paused.

A :class:`StallWatch` runs inside a benchmark role between ``start()`` and
``report()``:

- reactor lag: a call scheduled every 2 ms notes how late it ran (the thread
  was busy in one callback, waiting for the GIL, or not scheduled at all);
- garbage collection: the duration of every collection of generation 1 or 2;
- read pauses: every time a peer session stopped reading its socket, and why
  (``disk``: a received file's writer is behind; ``output``: the other side
  does not read what we send; ``budget``: a work slice ended), with how long.
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from typing import Any

TICK = 0.002


class StallWatch:
    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.lags_ms: list[float] = []
        self.gc_ms: list[float] = []
        self.pauses_ms: dict[str, list[float]] = defaultdict(list)
        self._gc_started = 0.0
        self._due = 0.0
        self._call: Any = None
        self._undo: list[Any] = []

    def start(self) -> None:
        from chatapp.peer.flow import ReadGate

        gc.callbacks.append(self._gc)
        self._undo.append(lambda: gc.callbacks.remove(self._gc))
        closed_at: dict[tuple[int, str], float] = {}
        real_close, real_release = ReadGate.close, ReadGate.release
        watch = self

        def close(gate: ReadGate, reason: str) -> None:
            if reason not in gate.reasons:
                closed_at[(id(gate), reason)] = time.perf_counter()
            real_close(gate, reason)

        def release(gate: ReadGate, reason: str) -> None:
            since = closed_at.pop((id(gate), reason), None)
            if since is not None:
                watch.pauses_ms[reason].append((time.perf_counter() - since) * 1000)
            real_release(gate, reason)

        ReadGate.close, ReadGate.release = close, release  # type: ignore[method-assign]
        self._undo.append(lambda: setattr(ReadGate, "close", real_close))
        self._undo.append(lambda: setattr(ReadGate, "release", real_release))
        self._due = time.perf_counter() + TICK
        self._call = self.reactor.callLater(TICK, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.lags_ms.append((now - self._due) * 1000)
        self._due = now + TICK
        self._call = self.reactor.callLater(TICK, self._tick)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif info["generation"] >= 1:
            self.gc_ms.append((time.perf_counter() - self._gc_started) * 1000)

    def report(self) -> dict[str, Any]:
        if self._call is not None and self._call.active():
            self._call.cancel()
        for undo in self._undo:
            undo()
        self._undo = []
        lags = sorted(self.lags_ms)
        return {
            "lag_max_ms": lags[-1] if lags else 0.0,
            "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
            "lags_over_5ms": sum(1 for x in lags if x > 5),
            "gc_count": len(self.gc_ms),
            "gc_max_ms": max(self.gc_ms, default=0.0),
            "pauses": {reason: (len(ms), max(ms)) for reason, ms in self.pauses_ms.items()},
        }
