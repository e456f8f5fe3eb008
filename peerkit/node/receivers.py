"""Who takes invitations and streams for each application: a handler, or an async iterator."""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

from peerkit.errors import NotRunning
from peerkit.handles import Handle, Subscription
from peerkit.model import Application
from peerkit.proto.shares import FairShare

__all__ = ("Receivers", "app_id")

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def app_id(application: Application | uuid.UUID) -> uuid.UUID:
    """The id of ``application`` (an :class:`Application` or its id).

    :raises TypeError: for anything else.
    """
    if isinstance(application, Application):
        return application.id
    if isinstance(application, uuid.UUID):
        return application
    raise TypeError(f"expected an Application or its uuid.UUID, not {type(application).__name__}")


class Receivers(Generic[T, R]):
    """One receiver per application of items ``T`` (invitations or streams), each giving ``R``.

    A receiver is called with the item and its sender's source group (see
    :func:`~peerkit.proto.admission.group_of`), or None when the sender is a contact or a trusted
    peer. ``what`` names an item in errors (``"an invitation"``); ``queue_size`` bounds what an
    async iterator holds unread. Items from strangers fill at most three quarters of it (at least
    one), shared fairly by their source groups (:mod:`peerkit.proto.shares`): the rest is kept for
    contacts and trusted peers, so that a stranger's items waiting unread never keep theirs out,
    nor one source's those of other strangers.
    """

    def __init__(self, what: str, queue_size: int) -> None:
        self._what = what
        self._queue_size = queue_size
        self._table: dict[uuid.UUID, Callable[[T, str | None], Awaitable[R]]] = {}
        self._closers: set[Callable[[], None]] = set()
        self._stopped = False

    def get(self, application_id: uuid.UUID) -> Callable[[T, str | None], Awaitable[R]] | None:
        """The receiver for ``application_id``, if any."""
        return self._table.get(application_id)

    def add(self, application: Application | uuid.UUID, receiver: Callable[[T], Awaitable[R]]) -> Handle:
        """Make ``receiver`` (a handler: the sender's group does not matter to it) take the items of
        ``application``.

        :raises ValueError: when the application has a receiver already.
        :raises NotRunning: when the node has stopped (nothing would come to it).
        """

        async def handler(item: T, group: str | None) -> R:
            return await receiver(item)

        return self._add(application, handler)

    def _add(
        self, application: Application | uuid.UUID, receiver: Callable[[T, str | None], Awaitable[R]]
    ) -> Handle:
        key = app_id(application)
        if self._stopped:
            raise NotRunning("the node has stopped: use it inside 'async with node:'")
        if key in self._table:
            raise ValueError(f"application {key} already has {self._what} handler; remove it first")
        self._table[key] = receiver

        def remove() -> None:
            if self._table.get(key) is receiver:
                del self._table[key]

        return Handle(remove)

    def iterator(
        self, application: Application | uuid.UUID, settle: Callable[[T], Awaitable[R]], refused: R
    ) -> Subscription[T]:
        """An async iterator in place of a handler: each item is queued (bounded, see the class
        docstring) for the reader, and its answer is ``await settle(item)`` once it is read. An
        item that finds no place, gives its place to another source's, is still unread when the
        iterator closes, or is withdrawn (its receiver cancelled) leaves the queue; the first three
        are answered ``refused``.

        Contacts' and trusted peers' items are read first, then the strangers' by source group in
        turn, each group's oldest first.

        :raises ValueError: when the application has a receiver already.
        :raises NotRunning: when the node has stopped (the iterator would never end).
        """
        key = app_id(application)
        if self._stopped:
            raise NotRunning("the node has stopped: use it inside 'async with node:'")
        queue: _Queue[T] = _Queue(self._queue_size)

        async def receiver(item: T, group: str | None) -> R:
            if queue.closed:
                return refused
            queued = _Queued(item)
            if group is None:
                if not queue.put_trusted(queued):
                    log.warning("refusing %s to %s: nobody is reading the iterator", self._what, key)
                    return refused
            else:
                taken = queue.strangers.take(group, queued, full=queue.full)
                if taken is None:
                    log.info(
                        "refusing %s from a stranger to %s: the strangers' share of the queue is taken",
                        self._what,
                        key,
                    )
                    return refused
                if taken.evicted is not None:
                    log.info(
                        "%s from a stranger to %s gives its place in the queue to another source's",
                        self._what,
                        key,
                    )
                    taken.evicted.done.set()
                queue.ring()
            try:
                await queued.done.wait()
            finally:
                if not queued.read:  # refused (its place taken), or withdrawn while it waited
                    queue.forget(queued, group)
            if not queued.read:
                return refused
            return await settle(item)

        handle = self._add(application, receiver)

        def remove() -> None:
            handle.remove()
            queue.close()
            self._closers.discard(remove)

        self._closers.add(remove)
        return Subscription(queue.get, remove)

    def stop(self) -> None:
        """The node stopped: every iterator ends, and no new one may start."""
        self._stopped = True
        for close in list(self._closers):
            close()

    def __repr__(self) -> str:
        return f"<Receivers of {self._what}: {len(self._table)} applications>"


class _Queued(Generic[T]):
    # One item waiting in an iterator's queue; ``done`` is set when it is read (``read``) or
    # refused.
    __slots__ = ("done", "item", "read")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = anyio.Event()
        self.read = False


class _Queue(Generic[T]):
    # What an iterator holds unread: contacts' and trusted peers' items, and the strangers' in a
    # fair share of three quarters of the places.

    def __init__(self, size: int) -> None:
        self.size = size
        self.strangers: FairShare[_Queued[T]] = FairShare(max(1, size * 3 // 4))
        self.trusted: deque[_Queued[T]] = deque()
        self.closed = False
        self._bell: anyio.Event | None = None  # set when an item comes (readers wait on it)

    @property
    def full(self) -> bool:
        return len(self.trusted) + len(self.strangers) >= self.size

    def put_trusted(self, queued: _Queued[T]) -> bool:
        if self.full:
            return False
        self.trusted.append(queued)
        self.ring()
        return True

    def ring(self) -> None:
        if self._bell is not None:
            self._bell.set()
            self._bell = None

    def forget(self, queued: _Queued[T], group: str | None) -> None:
        if group is not None:
            self.strangers.give_back(group, queued)
        elif queued in self.trusted:
            self.trusted.remove(queued)

    async def get(self) -> T:
        """The next item (see :meth:`Receivers.iterator`).

        :raises anyio.EndOfStream: once it is closed.
        """
        while True:
            if self.trusted:
                queued = self.trusted.popleft()
            elif len(self.strangers):
                queued = self.strangers.pop()
            elif self.closed:
                raise anyio.EndOfStream
            else:
                if self._bell is None:
                    self._bell = anyio.Event()
                await self._bell.wait()
                continue
            queued.read = True
            queued.done.set()
            return queued.item

    def close(self) -> None:
        # Items unread are refused; readers end.
        self.closed = True
        while self.trusted:
            self.trusted.popleft().done.set()
        while len(self.strangers):
            self.strangers.pop().done.set()
        self.ring()
