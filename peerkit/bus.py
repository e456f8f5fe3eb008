"""The event bus: every event goes to each interested reader's own bounded, merging queue.

A reader is an :class:`EventWatch` (an async iterator); a coroutine handler is a task that reads
one, and a plain-function handler is called as the event happens. A reader that falls behind never
makes memory grow with the number of events: events with the same ``key`` are merged while they
wait (the latest presence or name wins; ADDED then UPDATED stays ADDED, ADDED then DELETED is
nothing, DELETED then ADDED is UPDATED), so a queue holds at most one entry per thing that changed.
A hard limit guards against a reader that watches a huge number of things: over it, the oldest
entry is dropped and counted in :attr:`EventWatch.dropped`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, Self, TypeVar

import anyio

from peerkit.handles import Handle
from peerkit.model import ChangeType
from peerkit.sync import Flag

if TYPE_CHECKING:
    from peerkit.events import NearbyChanged
    from peerkit.identity import PeerId

__all__ = ("DEFAULT_LIMIT", "Bus", "EventWatch", "NearbyWatch", "is_coroutine_callable", "merge_change")

log = logging.getLogger(__name__)

#: Entries one reader's queue may hold before the oldest is dropped.
DEFAULT_LIMIT: Final = 4096


class _Keyed(Protocol):
    @property
    def key(self) -> Hashable: ...


E = TypeVar("E", bound=_Keyed)


def merge_change(before: ChangeType, after: ChangeType) -> ChangeType | None:
    """The one change that stands for ``before`` followed by ``after`` (None: nothing happened)."""
    if before is ChangeType.ADDED:
        return None if after is ChangeType.DELETED else ChangeType.ADDED
    if before is ChangeType.DELETED and after is ChangeType.ADDED:
        return ChangeType.UPDATED
    return after


class EventWatch(Generic[E]):
    """Events as an async iterator, merged per key while they wait (see the module docstring).

    Iteration ends when the watch is closed or the node stops. Use it with ``async with`` (or call
    :meth:`aclose`).
    """

    def __init__(
        self,
        accept: Callable[[E], bool],
        remove: Callable[[EventWatch[E]], None],
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        self._accept = accept
        self._remove = remove
        self._limit = limit
        self._pending: OrderedDict[Hashable, E] = OrderedDict()
        self._ready = Flag()
        self._closed = False
        #: Events dropped because the queue was full (never for fewer than ``limit`` keys).
        self.dropped = 0
        #: Called when the queue goes from empty to not empty (for a reader that polls).
        self.on_ready: Callable[[], None] | None = None

    def put(self, event: E) -> None:
        """Queue ``event`` (merged with one of the same key) when the watch takes it (its producer's
        side: a :class:`Bus`, or the node for a :class:`NearbyWatch`)."""
        if self._closed or not self._accept(event):
            return
        key = event.key
        before = self._pending.pop(key, None)
        if before is not None:
            old, new = getattr(before, "change", None), getattr(event, "change", None)
            if isinstance(old, ChangeType) and isinstance(new, ChangeType):
                change = merge_change(old, new)
                if change is None:
                    return
                event = dataclasses.replace(event, change=change)  # type: ignore[type-var]
        elif len(self._pending) >= self._limit:
            self._pending.popitem(last=False)
            self.dropped += 1
        self._pending[key] = event
        if len(self._pending) == 1 and self.on_ready is not None:
            self.on_ready()
        self._ready.set()

    def end(self) -> None:
        """End the watch from the producer's side: the reader gets what is queued, then the end."""
        self._closed = True
        self._ready.set()

    @property
    def pending(self) -> int:
        """Events waiting to be read."""
        return len(self._pending)

    def pop_nowait(self) -> E:
        """The next event, without waiting.

        :raises anyio.WouldBlock: when none is waiting.
        """
        if not self._pending:
            raise anyio.WouldBlock
        return self._pending.popitem(last=False)[1]

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> E:
        """The next event; waits for one."""
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            self._ready = Flag()
            await self._ready.wait()
        return self._pending.popitem(last=False)[1]

    async def aclose(self) -> None:
        """Stop watching; events not read yet are dropped."""
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        """Stop watching (the synchronous form of :meth:`aclose`)."""
        if not self._closed:
            self.end()
            self._pending.clear()
            self._remove(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def is_coroutine_callable(handler: object) -> bool:
    """Whether calling ``handler`` makes a coroutine, as far as can be told without calling it: a
    coroutine function, a method or ``functools.partial`` of one, or an object whose ``__call__``
    is one."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    call = getattr(type(handler), "__call__", None)  # noqa: B004 (the method, not callability)
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


class _Inline:
    """A plain-function handler: called in the task that publishes the event."""

    __slots__ = ("accept", "active", "bus", "handler", "watch")

    def __init__(
        self, bus: Bus[Any], accept: Callable[[Any], bool], handler: Callable[[Any], object]
    ) -> None:
        self.bus = bus
        self.accept = accept
        self.handler = handler
        self.active = True
        self.watch: EventWatch[Any] | None = None  # once it turned out to return awaitables

    def __call__(self, event: Any) -> None:
        if not self.active or not self.accept(event):
            return
        try:
            result = self.handler(event)
        except Exception:
            log.exception("event handler %r failed on %r", self.handler, event)
            return
        if inspect.isawaitable(result):
            # A plain callable that returns an awaitable (a lambda around a coroutine function):
            # from now on it runs in a task of its own, starting with this awaitable.
            self.bus._remove_inline(self)
            self.watch = self.bus._run_in_task(self.accept, self.handler, (event, result))

    def remove(self) -> None:
        if self.watch is not None:
            self.watch.close()
        self.bus._remove_inline(self)


class Bus(Generic[E]):
    """Delivers events to watches and handlers. ``spawn`` starts a handler's task (the node's group)."""

    def __init__(
        self, spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None], limit: int = DEFAULT_LIMIT
    ) -> None:
        self._spawn = spawn
        self._limit = limit
        self._watches: list[EventWatch[E]] = []
        self._inline: list[_Inline] = []
        #: Whether :meth:`close` ran: nothing more is published.
        self.closed = False

    def publish(self, event: E) -> None:
        """Queue ``event`` for every watch that accepts it, and call the plain-function handlers
        that take it (never waits)."""
        for watch in self._watches:
            watch.put(event)
        if self._inline:
            for inline in tuple(self._inline):  # (a handler may add or remove handlers)
                inline(event)

    def watch(
        self, accept: Callable[[E], bool] = lambda _: True, *, limit: int | None = None
    ) -> EventWatch[E]:
        """A new watch of the events ``accept`` takes."""
        watch = EventWatch(accept, self._discard, self._limit if limit is None else limit)
        self._watches.append(watch)
        return watch

    def add_handler(
        self, accept: Callable[[E], bool], handler: Callable[[Any], Awaitable[None] | None]
    ) -> Handle:
        """Run ``handler(event)`` for each event ``accept`` takes.

        A coroutine function runs in a task of its own, one event at a time; while it is busy, the
        events waiting for it merge like a watch's. A plain function is called at once, in the task
        that published the event (for a contact's change, the task reading its channel): nothing is
        merged or queued, and it must return quickly (a plain callable that returns an awaitable is
        moved to a task of its own). A handler that raises is logged; the next event still comes.
        :meth:`Handle.remove` stops it.

        :raises TypeError: when ``handler`` is not callable.
        """
        if not callable(handler):
            raise TypeError(
                f"a handler must be a function or a coroutine function, not {type(handler).__name__}"
            )
        if is_coroutine_callable(handler):
            return Handle(self._run_in_task(accept, handler).close)
        inline = _Inline(self, accept, handler)
        self._inline.append(inline)
        return Handle(inline.remove)

    def _run_in_task(
        self,
        accept: Callable[[E], bool],
        handler: Callable[[Any], Any],
        started: tuple[Any, Awaitable[object]] | None = None,
    ) -> EventWatch[E]:
        # A handler's task: awaits the handler's ``started`` call (event, awaitable) when given,
        # then ``handler(event)`` for each event, one at a time.
        watch = self.watch(accept)

        async def run() -> None:
            async with watch:
                if started is not None:
                    await _guarded(handler, started[0], started[1])
                async for event in watch:
                    try:  # (here, not in a helper: a coroutine less per event)
                        await handler(event)
                    except Exception:
                        log.exception("event handler %r failed on %r", handler, event)

        self._spawn(run)
        return watch

    def _remove_inline(self, inline: _Inline) -> None:
        inline.active = False
        if inline in self._inline:
            self._inline.remove(inline)

    def _discard(self, watch: EventWatch[E]) -> None:
        if watch in self._watches:
            self._watches.remove(watch)

    def close(self) -> None:
        """End every watch (iterators stop, handler tasks return) and drop the plain handlers."""
        self.closed = True
        for watch in list(self._watches):
            watch.end()
        self._watches.clear()
        for inline in list(self._inline):
            self._remove_inline(inline)


async def _guarded(handler: Callable[[Any], Any], event: Any, called: Awaitable[object]) -> None:
    # The awaitable a plain callable returned for ``event``, a failure logged.
    try:
        await called
    except Exception:
        log.exception("event handler %r failed on %r", handler, event)


class NearbyWatch(EventWatch["NearbyChanged"]):
    """Changes of the people near me, as an async iterator of :class:`NearbyChanged`.

    Memory is bounded by the number of peers, not of changes: when the reader is slow, the changes
    of one peer are merged (ADDED then UPDATED is one ADDED with the latest record; ADDED then
    DELETED is nothing). Iteration ends when the watch is closed, the node signs out of NEAR_ME, or
    the node stops. Use it with ``async with`` (or call :meth:`aclose`).
    """

    def __init__(self, remove: Callable[[NearbyWatch], None], application: uuid.UUID | None = None) -> None:
        super().__init__(lambda event: True, remove)  # type: ignore[arg-type]
        #: Only the peers whose record shows this application, when given.
        self.application = application
        self._members: set[PeerId] = set()

    def put(self, event: NearbyChanged) -> None:
        """Queue ``event``; with an application, as a change of the people near me who show it
        (a peer that installs it is ADDED, one that removes it DELETED)."""
        if self.application is None:
            super().put(event)
            return
        peer_id = event.peer.id
        shows = event.change is not ChangeType.DELETED and self.application in event.peer.applications
        if shows:
            change = ChangeType.UPDATED if peer_id in self._members else ChangeType.ADDED
            self._members.add(peer_id)
        elif peer_id in self._members:
            change = ChangeType.DELETED
            self._members.discard(peer_id)
        else:
            return
        super().put(event if event.change is change else dataclasses.replace(event, change=change))
