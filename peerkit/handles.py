"""Handles: what adding a handler returns, and items for one application as an async iterator."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, Self, TypeVar

import anyio

__all__ = ("Handle", "Subscription")

T = TypeVar("T")


class Handle:
    """Returned when a handler is added; :meth:`remove` takes it away again (twice is harmless)."""

    def __init__(self, remove: Callable[[], None]) -> None:
        self._remove: Callable[[], None] | None = remove

    def remove(self) -> None:
        """Remove the handler."""
        if self._remove is not None:
            self._remove()
            self._remove = None


class Subscription(Generic[T]):
    """Items for one application (invitations or streams) as an async iterator.

    Use it with ``async with`` (or call :meth:`aclose`) so that it stops receiving when you are done;
    items that arrive while nobody reads wait in a bounded queue, and are refused when it is full.
    Contacts' and trusted peers' items are read first; strangers' fill at most three quarters of
    the queue, shared fairly by the address (IPv6: the /48) they came from, and are read one
    address at a time in turn, so that one stranger's pile stands in front of nobody else's.
    """

    def __init__(self, receive: Callable[[], Awaitable[T]], remove: Callable[[], None]) -> None:
        self._receive = receive
        self._handle = Handle(remove)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        """The next item; iteration ends when the subscription or the node closes."""
        try:
            return await self._receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving: items not read yet are refused."""
        self._handle.remove()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
