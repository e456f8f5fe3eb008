"""Handles: what adding a handler returns, and items for one application as an async iterator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Self, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

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
    items that arrive while nobody reads wait in a bounded buffer, and are refused when it is full.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[T], remove: Callable[[], None]) -> None:
        self._receive = receive
        self._handle = Handle(remove)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        """The next item; iteration ends when the subscription or the node closes."""
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()  # the node closed it, or it was closed: nothing is left open
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving."""
        self._handle.remove()
        self._receive.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
