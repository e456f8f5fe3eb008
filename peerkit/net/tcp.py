"""TCP byte streams on asyncio protocols, with a send that never waits.

anyio's TCP streams are fine general-purpose streams, but every ``send`` is a checkpoint and every
``receive`` pauses and resumes the transport's reading. A node fanning one change out to a thousand
subscribers wants neither: :meth:`TcpStream.send_nowait` hands bytes to the transport at once (when
:meth:`TcpStream.send_ready` says it is not congested), and received bytes wait in the stream until
read (reading pauses only when a megabyte is waiting). Both classes are ordinary anyio
:class:`~anyio.abc.ByteStream` / :class:`~anyio.abc.Listener` objects otherwise, with anyio's
socket attributes and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

__all__ = ("TcpListener", "TcpStream", "connect_tcp")

#: Bytes waiting to be read above which the stream stops reading from the socket, and below which
#: it reads again.
READ_HIGH: Final = 1 << 20
READ_LOW: Final = 1 << 18
#: Accepted connections waiting for the serving task to take them, at most (more are closed).
MAX_WAITING: Final = 128


def _address(raw: Any) -> Any:
    # (host, port) for IPv4 and IPv6 (asyncio gives IPv6 addresses as 4-tuples).
    return tuple(raw[:2]) if isinstance(raw, tuple) else raw


class _Protocol(asyncio.Protocol):
    def __init__(self, on_connect: Callable[[TcpStream], None] | None = None) -> None:
        self.stream: TcpStream | None = None
        self._on_connect = on_connect

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=1 << 16)
        self.stream = TcpStream(transport)
        if self._on_connect is not None:
            self._on_connect(self.stream)

    def data_received(self, data: bytes) -> None:
        assert self.stream is not None
        self.stream._data(data)

    def eof_received(self) -> bool:
        assert self.stream is not None
        self.stream._end(None)
        return True  # the other direction stays open

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream._lost(exc)

    def pause_writing(self) -> None:
        assert self.stream is not None
        self.stream._paused = True

    def resume_writing(self) -> None:
        assert self.stream is not None
        self.stream._paused = False
        self.stream._wake_writer()


class TcpStream(anyio.abc.ByteStream):
    """One TCP connection (see the module docstring). Made by :func:`connect_tcp` or a listener."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._eof = False
        self._error: Exception | None = None
        self._closed = False
        self._lost_connection = False
        self._paused = False
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None

    # -- the protocol's side -------------------------------------------------------------------
    def _data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def _end(self, error: Exception | None) -> None:
        self._eof = True
        if error is not None and self._error is None:
            self._error = error
        self._wake_reader()

    def _lost(self, error: Exception | None) -> None:
        self._lost_connection = True
        self._end(error)
        self._wake_writer()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _wake_writer(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)

    # -- receiving -------------------------------------------------------------------------------
    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes; waits for some.

        :raises anyio.EndOfStream: when the peer closed its side and everything was read.
        :raises anyio.BrokenResourceError: when the connection broke.
        :raises anyio.ClosedResourceError: when this stream was closed.
        """
        while not self._chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._error is not None:
                raise anyio.BrokenResourceError from self._error
            if self._eof:
                raise anyio.EndOfStream
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        if self._closed:
            raise anyio.ClosedResourceError
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered < READ_LOW:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunk

    # -- sending ---------------------------------------------------------------------------------
    def _check_sendable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._lost_connection or self._transport.is_closing():
            raise anyio.BrokenResourceError("the connection is closed") from self._error

    def send_ready(self) -> bool:
        """Whether :meth:`send_nowait` would take bytes now (open, and not congested)."""
        return not (self._paused or self._closed or self._lost_connection or self._transport.is_closing())

    def send_nowait(self, item: bytes) -> None:
        """Hand ``item`` to the transport now, without waiting.

        :raises anyio.WouldBlock: when the connection is congested (nothing is sent then).
        :raises anyio.BrokenResourceError: when the connection is closed.
        :raises anyio.ClosedResourceError: when this stream was closed.
        """
        self._check_sendable()
        if self._paused:
            raise anyio.WouldBlock
        self._transport.write(item)

    async def send(self, item: bytes) -> None:
        """Send ``item``; waits only while the connection is congested.

        :raises anyio.BrokenResourceError: when the connection is closed or breaks.
        :raises anyio.ClosedResourceError: when this stream was closed.
        """
        self._check_sendable()
        self._transport.write(item)
        while self._paused:
            self._writer = asyncio.get_running_loop().create_future()
            try:
                await self._writer
            finally:
                self._writer = None
            if self._lost_connection:
                raise anyio.BrokenResourceError("the connection broke while sending") from self._error

    async def send_eof(self) -> None:
        """Close the sending direction (the peer reads an end of stream)."""
        self._check_sendable()
        if self._transport.can_write_eof():
            self._transport.write_eof()
        await anyio.lowlevel.checkpoint()

    # -- closing ----------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the connection: what was sent is flushed if the socket takes it at once, and the
        socket is released within one turn of the event loop in any case."""
        if self._closed:
            return
        self._closed = True
        self._wake_reader()
        self._wake_writer()
        transport = self._transport
        transport.close()
        try:
            await anyio.lowlevel.checkpoint()
        finally:
            transport.abort()  # nothing may linger: a peer that never reads cannot hold the socket

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's socket attributes: local and remote address, family, raw socket."""
        transport = self._transport
        sock: socket.socket | None = transport.get_extra_info("socket")
        attributes: dict[Any, Callable[[], Any]] = {
            SocketAttribute.local_address: lambda: _address(transport.get_extra_info("sockname")),
            SocketAttribute.remote_address: lambda: _address(transport.get_extra_info("peername")),
        }
        if sock is not None:
            attributes[SocketAttribute.family] = lambda: sock.family
            attributes[SocketAttribute.raw_socket] = lambda: sock
        return attributes


async def connect_tcp(host: str, port: int) -> TcpStream:
    """Open a TCP connection to ``host:port`` (IPv4 or IPv6).

    :raises OSError: when it cannot be made.
    """
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Protocol, host, port)
    assert protocol.stream is not None
    return protocol.stream


class TcpListener(anyio.abc.Listener[TcpStream]):
    """A TCP listener giving :class:`TcpStream` objects; made with :meth:`bind`.

    Connections are accepted in asyncio's protocol callbacks, where there is no task to call anyio
    from: each one waits in a bounded queue until the task in :meth:`serve` hands it to its handler.
    """

    def __init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._waiting: deque[TcpStream] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._closed = False

    @classmethod
    async def bind(cls, host: str, port: int) -> TcpListener:
        """Listen on ``host:port`` (port 0 picks a free one).

        :raises OSError: when the address cannot be bound.
        """
        listener = cls()
        loop = asyncio.get_running_loop()
        listener._server = await loop.create_server(
            lambda: _Protocol(listener._accepted), host, port, reuse_address=True, backlog=1024
        )
        return listener

    def _accepted(self, stream: TcpStream) -> None:
        # An asyncio callback: no anyio call here, only the queue and an asyncio future.
        if self._closed or len(self._waiting) >= MAX_WAITING:
            stream._transport.abort()
            return
        self._waiting.append(stream)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def serve(
        self, handler: Callable[[TcpStream], Any], task_group: anyio.abc.TaskGroup | None = None
    ) -> None:
        """Run ``handler(stream)`` in a task for each connection, until cancelled."""
        async with contextlib.AsyncExitStack() as stack:
            if task_group is None:
                task_group = await stack.enter_async_context(anyio.create_task_group())
            loop = asyncio.get_running_loop()
            while True:
                while self._waiting:
                    task_group.start_soon(handler, self._waiting.popleft())
                self._wake = loop.create_future()
                try:
                    await self._wake
                finally:
                    self._wake = None

    async def aclose(self) -> None:
        """Stop listening (connections already handed out stay open)."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        while self._waiting:
            self._waiting.popleft()._transport.abort()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's socket attributes of the (first) listening socket."""
        assert self._server is not None
        sock: socket.socket = self._server.sockets[0]  # type: ignore[attr-defined]
        return {
            SocketAttribute.local_address: lambda: _address(sock.getsockname()),
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.raw_socket: lambda: sock,
        }
