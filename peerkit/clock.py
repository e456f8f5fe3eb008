"""A timer for many things at once: one task runs callbacks when they fall due.

A node keeps timers for thousands of channels and subscriptions (a keepalive check, a watch's
next look at a contact). A sleeping task for each costs a few kilobytes and a wake-up of the event
loop each time; :class:`Clock` keeps their due times in a heap and runs the callbacks from one
task, which sleeps until the earliest.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable

import anyio

from peerkit.sync import Flag

__all__ = ("Clock", "loop_clock")


def loop_clock() -> Callable[[], float]:
    """The running event loop's clock (the one ``anyio.current_time`` reads), as a function that is
    cheap to call on a hot path: asyncio's ``loop.time`` when on asyncio (a tenth of the cost of
    ``anyio.current_time``, which looks the backend up on each call), else ``anyio.current_time``.

    Fetch it in the task that will use it: an asyncio loop's clock is that loop's.
    """
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:  # (not on asyncio: trio, or no loop yet)
        return anyio.current_time


class Clock:
    """Runs each callback given to :meth:`call_at` at its time, from the task that runs
    :meth:`run` (until that task is cancelled).

    A callback may run up to ``slack`` seconds late: callbacks due within ``slack`` of each
    other run at one wake-up (with thousands of timers, they fall due many times a second
    otherwise). Callbacks run in the clock's task and must not block: one that has waiting to do
    starts a task for it. An exception a callback raises ends :meth:`run`.
    """

    def __init__(self, slack: float = 0.0) -> None:
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # (ties in time go in the order they were asked for)
        self._sooner = Flag()
        self._slack = slack
        #: The time now on anyio's clock, as a function cheap to call (see :func:`loop_clock`; made
        #: where the clock is made, so a clock is made on the loop it serves): one for all its users.
        self.now = loop_clock()

    def __len__(self) -> int:
        return len(self._due)

    def call_at(self, at: float, callback: Callable[[], None]) -> None:
        """Run ``callback()`` at ``at`` (anyio's clock), or a little later (``slack``)."""
        entry = (at, next(self._order), callback)
        heapq.heappush(self._due, entry)
        if self._due[0] is entry:
            self._sooner.set()

    async def run(self) -> None:
        """Run each callback when it is due; runs until cancelled."""
        while True:
            now = anyio.current_time()
            while self._due and self._due[0][0] <= now:
                _, _, callback = heapq.heappop(self._due)
                callback()
            self._sooner = Flag()
            delay = self._due[0][0] + self._slack - now if self._due else math.inf
            with anyio.move_on_after(delay):
                await self._sooner.wait()
