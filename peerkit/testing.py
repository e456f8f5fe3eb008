"""Helpers for testing code built on peerkit without a network.

:func:`memory_stream_pair` gives two connected anyio byte streams, so a
:class:`~peerkit.SecureChannel` (or anything else that takes a byte stream) can run in memory.
"""

from __future__ import annotations

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ("MemoryByteStream", "memory_stream_pair")


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte stream pair; see :func:`memory_stream_pair`."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._buffer = b""

    async def send(self, item: bytes) -> None:
        """Send bytes to the other end (waits while its buffer is full)."""
        if item:
            await self._send.send(bytes(item))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes from the other end.

        :raises anyio.EndOfStream: when the other end sent EOF or closed.
        """
        if not self._buffer:
            self._buffer = await self._receive.receive()
        data, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
        return data

    async def send_eof(self) -> None:
        """Tell the other end that nothing more will be sent."""
        await self._send.aclose()

    async def aclose(self) -> None:
        """Close both directions of this end."""
        await self._send.aclose()
        await self._receive.aclose()


def memory_stream_pair(max_buffer: int = 64) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two byte streams connected to each other, each buffering up to ``max_buffer`` writes."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](max_buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](max_buffer)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)
