"""TCP byte streams on asyncio protocols, with a send that never waits.

anyio's TCP streams are fine general-purpose streams, but every ``send`` is a checkpoint and every
``receive`` pauses and resumes the transport's reading. A node fanning one change out to a thousand
subscribers wants neither: :meth:`TcpStream.send_nowait` hands bytes to the transport at once (when
:meth:`TcpStream.send_ready` says it is not congested), and received bytes wait in the stream until
read (reading pauses when 256 KiB are waiting: the bounded receive window of every connection).
Both classes are ordinary anyio :class:`~anyio.abc.ByteStream` / :class:`~anyio.abc.Listener`
objects otherwise, with anyio's socket attributes and errors.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from peerkit.net.fds import FdBudget, fd_budget
from peerkit.sync import TaskSet

__all__ = ("TcpListener", "TcpStream", "connect_tcp", "wrap_connected")

#: Bytes waiting to be read above which the stream stops reading from the socket, and below which
#: it reads again.
READ_HIGH: Final = 1 << 18
READ_LOW: Final = 1 << 16
#: Reads smaller than this that wait unread are joined to the one before when it is small too: a
#: peer that sends a byte or two per segment to a reader that does not read makes a few objects
#: of up to 8 KiB, not a hundred thousand of 2 bytes (about 50 bytes each) within READ_HIGH.
SMALL_READ: Final = 4096
#: Bytes read from a socket at most at once. Each read is copied out into an object of its own,
#: freed once its frames are decrypted, and this keeps that object under 128 KiB: glibc's malloc
#: may hand a block that size or larger back to the system at every free (an mmap of its own, or
#: the top of the heap trimmed) and fault it in again at the next read. With 256 KiB reads a
#: process whose heap happened to be laid out that way received at less than half the speed of
#: another (`python -m benchmarks channel`: 380 against 830 MB/s, 51,000 page faults against 7,000).
READ_SIZE: Final = 120 << 10
#: Bytes a connection holds unread at most: one read from the socket takes up to this, less what
#: waits unread (copied out in objects of at most READ_SIZE). A reader that keeps up with a fast
#: sender takes what came in a few large reads rather than many of READ_SIZE: each read is a turn
#: of the event loop and a wake-up of the reading task, and with reads of READ_SIZE an
#: application stream between two processes ran at 0.44-0.69x raw TCP, against 0.70-0.76x.
MAX_UNREAD: Final = 1 << 20
#: Connections a listener takes from its backlog at once, after the one it waited for.
DRAIN: Final = 64


def _address(raw: Any) -> Any:
    # (host, port) for IPv4 and IPv6 (asyncio gives IPv6 addresses as 4-tuples).
    return tuple(raw[:2]) if isinstance(raw, tuple) else raw


class _Landing(threading.local):
    # Where every connection of a thread's event loop receives into: the bytes read are copied
    # out at once. (asyncio's plain protocols receive into a new 256 KiB object per read, which
    # costs far more than the copy when reads are small: a ping, a presence.)
    def __init__(self) -> None:
        self.view = memoryview(bytearray(MAX_UNREAD))


_LANDING = _Landing()


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.stream: TcpStream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=1 << 16)
        self.stream = TcpStream(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        stream = self.stream
        if stream is None:
            return _LANDING.view[:READ_SIZE]
        # (reading pauses above READ_HIGH, so there is always room for READ_SIZE at least)
        return _LANDING.view[: MAX_UNREAD - stream._buffered]

    def buffer_updated(self, nbytes: int) -> None:
        stream = self.stream
        assert stream is not None
        view = _LANDING.view
        if nbytes <= READ_SIZE:
            stream._data(bytes(view[:nbytes]))
            return
        for start in range(0, nbytes, READ_SIZE):
            stream._data(bytes(view[start : min(start + READ_SIZE, nbytes)]))

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
        self._chunks: deque[bytes] | None = None  # (only while data waits: a queue costs 0.8 KB)
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
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = deque()
        if chunks and len(data) < SMALL_READ and len(chunks[-1]) < SMALL_READ:
            chunks[-1] += data  # (joined: a trickle of tiny reads is not a queue of tiny objects)
        else:
            chunks.append(data)
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
        while True:
            chunk = self.receive_waiting(max_bytes)
            if chunk is not None:
                return chunk
            await self.readable()

    def receive_waiting(self, max_bytes: int = 65536) -> bytes | None:
        """Up to ``max_bytes`` of the bytes waiting now; None when none wait (:meth:`readable`
        says when some may).

        :raises anyio.EndOfStream: when the peer closed its side and everything was read.
        :raises anyio.BrokenResourceError: when the connection broke.
        :raises anyio.ClosedResourceError: when this stream was closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        chunks = self._chunks
        if not chunks:
            if self._error is not None:
                raise anyio.BrokenResourceError from self._error
            if self._eof:
                raise anyio.EndOfStream
            return None
        chunk = chunks.popleft()
        if len(chunk) > max_bytes:
            chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        elif not chunks:
            self._chunks = None  # (an idle connection keeps no queue)
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered < READ_LOW:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunk

    def readable(self) -> asyncio.Future[None]:
        """A future that is done once bytes arrive, or the stream ends, breaks or is closed: await
        it, then :meth:`receive_waiting`. (A future, not a coroutine: a task reading thousands of
        idle connections this way keeps no coroutine of the stream's for each while it waits.)"""
        reader = self._reader
        if reader is None or reader.done():
            reader = self._reader = asyncio.get_running_loop().create_future()
            if self._chunks or self._eof or self._closed:
                reader.set_result(None)
        return reader

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
            # Nothing may linger: a peer that never reads cannot hold the socket. Unless it is gone
            # already: asyncio's transport, once what close() left to send is written, calls
            # connection_lost without counting it, and an abort() after that fails inside it
            # ("'NoneType' object has no attribute 'call_soon'").
            if not self._lost_connection:
                transport.abort()

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


async def wrap_connected(sock: socket.socket) -> TcpStream:
    """A :class:`TcpStream` of ``sock``, a TCP socket already connected (asyncio only)."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Protocol, sock=sock)
    assert protocol.stream is not None
    return protocol.stream


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

    Its task accepts connections only while the process has file descriptors to spare
    (:class:`~peerkit.net.fds.FdBudget`): near the limit it stops accepting, and the waiting
    connections stay in the kernel's backlog until descriptors are free again. An ``accept`` that
    fails for want of descriptors pauses it the same way, without a log line per attempt.
    """

    def __init__(self, sockets: list[socket.socket], budget: FdBudget | None = None) -> None:
        self._sockets = sockets
        self._budget = budget or fd_budget()
        self._serving: anyio.CancelScope | None = None
        self._stopped: anyio.Event | None = None
        self._closed = False
        #: Asked with the remote address of each accepted connection; False closes it at once.
        self.screen: Callable[[Any], bool] | None = None

    @classmethod
    async def bind(cls, host: str, port: int, *, budget: FdBudget | None = None) -> TcpListener:
        """Listen on ``host:port`` (port 0 picks a free one); an empty host listens on every IPv4
        and IPv6 address.

        :raises OSError: when the address cannot be bound.
        """
        await anyio.lowlevel.checkpoint()
        return cls(_bind(host, port), budget)

    async def serve(
        self, handler: Callable[[TcpStream], Any], task_group: anyio.abc.TaskGroup | None = None
    ) -> None:
        """Run ``handler(stream)`` in a task for each connection, until cancelled or closed.

        The connections' tasks belong to ``task_group`` when it is given (they may outlive this
        call, and are cancelled with that group), else to this call, which returns once they are
        done. A handler's exception is logged: it ends its connection, never the listener.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        self._stopped = stopped = anyio.Event()
        async with anyio.create_task_group() as own:
            owner = task_group or own
            tasks = TaskSet(owner)  # (a connection's task costs less than a task of the group's)
            owner.start_soon(tasks.keep)
            try:
                with anyio.CancelScope() as self._serving:
                    async with anyio.create_task_group() as loops:
                        for sock in self._sockets:
                            loops.start_soon(self._accept_loop, sock, handler, tasks)
            finally:
                self._serving = None
                tasks.close()  # (its keeper returns once the connections' tasks are done)
                stopped.set()  # aclose() waits for the accept loops only, not for the handlers

    async def _accept_loop(
        self, sock: socket.socket, handler: Callable[[TcpStream], Any], tasks: TaskSet
    ) -> None:
        loop = asyncio.get_running_loop()
        # The backlog is drained with the raw accept: a socket object is made only for a
        # connection the screen lets through.
        accept_fd: Callable[[], tuple[int, Any]] | None = getattr(sock, "_accept", None)
        drain = DRAIN if accept_fd is not None else 0
        while True:
            await self._budget.wait_for_room()
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:
                self._budget.accept_failed(exc)  # for want of descriptors: pauses (others: raised)
                continue
            self._take(conn, address, handler, tasks)
            # Whatever else waits in the backlog is taken now, without a turn of the event loop
            # each: under a flood of connections to refuse, a legitimate one waits behind fewer.
            for _ in range(drain):
                assert accept_fd is not None
                if not self._budget.room():
                    break
                try:
                    fd, address = accept_fd()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    self._budget.accept_failed(exc)
                    break
                self._take(fd, address, handler, tasks, sock)
            await anyio.lowlevel.checkpoint()  # an accept that never waits must not starve the rest

    def _take(
        self,
        conn: socket.socket | int,
        address: Any,
        handler: Callable[[TcpStream], Any],
        tasks: TaskSet,
        listening: socket.socket | None = None,
    ) -> None:
        self._budget.opened()
        screen = self.screen
        if screen is not None and not screen(address):
            # Refused before anything is made for it.
            if isinstance(conn, int):
                os.close(conn)
            else:
                conn.close()
            return
        if isinstance(conn, int):
            assert listening is not None
            conn = socket.socket(listening.family, listening.type, listening.proto, fileno=conn)
        conn.setblocking(False)
        tasks.start_soon(self._run, conn, handler)

    async def _run(self, conn: socket.socket, handler: Callable[[TcpStream], Any]) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await loop.connect_accepted_socket(_Protocol, sock=conn)
        except BaseException:
            conn.close()
            raise
        assert protocol.stream is not None
        await handler(protocol.stream)

    async def aclose(self) -> None:
        """Stop listening (connections already handed out stay open)."""
        if self._closed:
            return
        self._closed = True
        if self._serving is not None and self._stopped is not None:
            self._serving.cancel()
            with anyio.CancelScope(shield=True):
                await self._stopped.wait()
        for sock in self._sockets:
            sock.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's socket attributes of the (first) listening socket."""
        sock = self._sockets[0]
        return {
            SocketAttribute.local_address: lambda: _address(sock.getsockname()),
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.raw_socket: lambda: sock,
        }


def _bind(host: str, port: int) -> list[socket.socket]:
    # The listening sockets for host:port: one per address family the host names ("" and "::"
    # with IPv6 only on its own socket, so that IPv4 and IPv6 share the port).
    hosts = ["0.0.0.0", "::"] if host in ("", None) else [host]
    sockets: list[socket.socket] = []
    try:
        for name in hosts:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError:
                if len(hosts) > 1 and family == socket.AF_INET6 and sockets[:-1]:
                    sockets.pop().close()  # no IPv6 on this host: IPv4 alone
                    continue
                raise
            sock.listen(1024)
            sock.setblocking(False)
            port = sock.getsockname()[1]  # the next family listens on the same port
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
