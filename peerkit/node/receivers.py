"""Who takes invitations and streams for each application: a handler, or an async iterator."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

from peerkit.errors import NotRunning
from peerkit.handles import Handle, Subscription
from peerkit.model import Application

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

    ``what`` names an item in errors (``"an invitation"``); ``queue_size`` bounds what an async
    iterator holds unread. Items from strangers fill at most three quarters of it (at least one):
    the rest is kept for contacts and trusted peers, so that a stranger's items waiting unread never
    keep theirs out.
    """

    def __init__(self, what: str, queue_size: int) -> None:
        self._what = what
        self._queue_size = queue_size
        self._table: dict[uuid.UUID, Callable[[T], Awaitable[R]]] = {}
        self._closers: set[Callable[[], None]] = set()
        self._stopped = False

    def get(self, application_id: uuid.UUID) -> Callable[[T], Awaitable[R]] | None:
        """The receiver for ``application_id``, if any."""
        return self._table.get(application_id)

    def add(self, application: Application | uuid.UUID, receiver: Callable[[T], Awaitable[R]]) -> Handle:
        """Make ``receiver`` take the items of ``application``.

        :raises ValueError: when the application has a receiver already.
        """
        key = app_id(application)
        if key in self._table:
            raise ValueError(f"application {key} already has {self._what} handler; remove it first")
        self._table[key] = receiver

        def remove() -> None:
            if self._table.get(key) is receiver:
                del self._table[key]

        return Handle(remove)

    def iterator(
        self,
        application: Application | uuid.UUID,
        settle: Callable[[T], Awaitable[R]],
        refused: R,
        trusted: Callable[[T], bool],
    ) -> Subscription[T]:
        """An async iterator in place of a handler: each item is queued (bounded) for the reader,
        and its answer is ``await settle(item)``; a full or closed queue answers ``refused``, and
        so does one whose strangers' share is full, to an item that is not ``trusted``.

        :raises ValueError: when the application has a receiver already.
        :raises NotRunning: when the node has stopped (the iterator would never end).
        """
        if self._stopped:
            raise NotRunning("the node has stopped: use it inside 'async with node:'")
        key = app_id(application)
        if key in self._table:
            raise ValueError(f"application {key} already has {self._what} handler; remove it first")
        send, receive = anyio.create_memory_object_stream[T](self._queue_size)
        strangers = max(1, self._queue_size * 3 // 4)

        async def receiver(item: T) -> R:
            if send.statistics().current_buffer_used >= strangers and not trusted(item):
                log.info(
                    "refusing %s from a stranger to %s: the strangers' share of the queue is taken",
                    self._what,
                    key,
                )
                return refused
            try:
                send.send_nowait(item)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.warning("refusing %s to %s: nobody is reading the iterator", self._what, key)
                return refused
            return await settle(item)

        handle = self.add(application, receiver)

        def remove() -> None:
            handle.remove()
            send.close()
            self._closers.discard(remove)

        self._closers.add(remove)
        return Subscription(receive, remove)

    def stop(self) -> None:
        """The node stopped: every iterator ends, and no new one may start."""
        self._stopped = True
        for close in list(self._closers):
            close()

    def __repr__(self) -> str:
        return f"<Receivers of {self._what}: {len(self._table)} applications>"
