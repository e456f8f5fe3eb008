"""The stamps (``"ts"``) of the hellos this process sends as a dialler.

A responder refuses an IK message 1 whose stamp it has taken from that id before, or that is more
than 60 s older than the newest it took from that id: a recorded message 1 sent again must never
stand for its sender. The stamp is the dialler's clock, so a clock set back (a wrong clock put
right, a machine that keeps local time in its clock and corrects it after booting) made every
dial of the hour after refused by each peer the node had dialled before, as replays. So a stamp is
the clock in nanoseconds, but never at or below one given before: in this process (a clock set
back while it runs), and across runs (a node saves the last one with its settings when it stops,
and while it runs once it is 30 s past the one saved, so that after a crash too the next node on
that data dir starts above, or within the responders' 60 s window of, every stamp it gave).
"""

from __future__ import annotations

import threading
import time
from typing import Final

__all__ = ("MAX_STAMP", "STAMPS", "HelloStamps")

#: Stamps are below this (the protocol's ``"ts"`` is an unsigned integer below 2^64; a saved one
#: above it is not believed).
MAX_STAMP: Final = 2**63


class HelloStamps:
    """Strictly increasing stamps, from the clock (see the module docstring)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()  # (nodes may run in several threads of one process)

    @property
    def last(self) -> int:
        """The last stamp given (0 before the first)."""
        return self._last

    def next(self) -> int:
        """A stamp above every one given before: the clock's nanoseconds, or the last one + 1."""
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return self._last

    def at_least(self, stamp: int) -> None:
        """Give stamps above ``stamp`` from now on (one a node gave in an earlier run); one at or
        above :data:`MAX_STAMP` is ignored."""
        if 0 <= stamp < MAX_STAMP:
            with self._lock:
                self._last = max(self._last, stamp)


#: The stamps of this process's hellos.
STAMPS: Final = HelloStamps()
