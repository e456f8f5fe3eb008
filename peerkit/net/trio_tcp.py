"""TCP byte streams on trio with a send that never waits, like :mod:`peerkit.net.tcp` on asyncio.

anyio's trio streams only send with ``await``, a checkpoint each: a node fanning one change out to a
thousand subscribers would need a task per subscriber per change. :class:`TrioTcpStream` wraps one
of them and adds :meth:`~TrioTcpStream.send_nowait`, which writes straight to the (non-blocking)
socket. What the kernel does not take at once is written by a task of the stream's own when the
socket drains; until then :meth:`~TrioTcpStream.send_ready` says no, and :meth:`~TrioTcpStream.send`
waits for it first. That task is a trio system task (the stream belongs to no task group); closing
the stream cancels it. This module imports trio: it is only used when trio runs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import trio
from anyio.abc import SocketAttribute

from peerkit.net.tcp import READ_SIZE

__all__ = ("TrioTcpStream",)


class TrioTcpStream(anyio.abc.ByteStream):
    """One TCP connection on trio: anyio's stream ``inner``, with :meth:`send_nowait` beside it."""

    def __init__(self, inner: anyio.abc.SocketStream) -> None:
        self._inner = inner
        self._socket: socket.socket = inner.extra(SocketAttribute.raw_socket)
        self._tail: memoryview | None = None  # what the kernel did not take yet (its task writes it)
        self._tail_written: trio.Event | None = None
        self._tail_scope: trio.CancelScope | None = None
        self._sending = False
        self._closed = False
        self._error: OSError | None = None

    def _check_sendable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._error is not None:
            raise anyio.BrokenResourceError("the connection broke") from self._error

    # -- sending ----------------------------------------------------------------------------------
    def send_ready(self) -> bool:
        """Whether :meth:`send_nowait` would take bytes now: open, and nothing waiting to go out."""
        return not (self._closed or self._sending or self._error is not None or self._tail is not None)

    def send_nowait(self, item: bytes) -> None:
        """Write ``item`` now, without waiting; what the kernel does not take at once goes out
        later, in order, before anything sent after it.

        :raises anyio.WouldBlock: when bytes sent earlier are still waiting (nothing is sent then).
        :raises anyio.BrokenResourceError: when the connection broke.
        :raises anyio.ClosedResourceError: when this stream was closed.
        """
        self._check_sendable()
        if self._sending or self._tail is not None:
            raise anyio.WouldBlock
        try:
            written = self._socket.send(item)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError as exc:
            self._error = exc
            raise anyio.BrokenResourceError("the connection broke") from exc
        if written < len(item):
            self._tail = memoryview(item)[written:]
            self._tail_written = trio.Event()
            trio.lowlevel.spawn_system_task(self._write_tail, name="peerkit send tail")

    async def _write_tail(self) -> None:
        # A system task: it must never raise (trio would end the run); errors break the stream.
        scope = self._tail_scope = trio.CancelScope()
        with scope:
            try:
                while self._tail is not None and not self._closed:
                    await trio.lowlevel.wait_writable(self._socket)
                    try:
                        written = self._socket.send(self._tail)
                    except (BlockingIOError, InterruptedError):
                        continue
                    self._tail = self._tail[written:] if written < len(self._tail) else None
            except OSError as exc:  # (wait_writable too: the socket was closed meanwhile)
                self._error = exc
            except Exception as exc:  # never out of a system task
                self._error = OSError(f"writing to the connection failed: {exc!r}")
            finally:
                self._tail = self._tail_scope = None
                if self._tail_written is not None:
                    self._tail_written.set()

    async def send(self, item: bytes) -> None:
        """Send ``item`` after whatever waits to go out; waits while the connection is congested.

        :raises anyio.BrokenResourceError: when the connection is closed or breaks.
        :raises anyio.ClosedResourceError: when this stream was closed.
        :raises anyio.BusyResourceError: when another task is sending already.
        """
        if self._sending:
            raise anyio.BusyResourceError("sending")
        self._sending = True
        try:
            await self._tail_gone()
            await self._inner.send(item)
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        """Close the sending direction once what waits went out (the peer reads an end of stream)."""
        await self._tail_gone()
        await self._inner.send_eof()

    async def _tail_gone(self) -> None:
        # Wait until what the kernel did not take has gone out; then the stream must be sendable.
        while self._tail is not None:
            assert self._tail_written is not None
            await self._tail_written.wait()
        self._check_sendable()

    # -- receiving and closing ----------------------------------------------------------------------
    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` received bytes, and never more than
        :data:`peerkit.net.tcp.READ_SIZE` at once (see :meth:`anyio.abc.ByteReceiveStream.receive`).
        """
        return await self._inner.receive(min(max_bytes, READ_SIZE))

    async def aclose(self) -> None:
        """Close the connection; bytes still waiting to go out are dropped."""
        self._closed = True
        if self._tail_scope is not None:
            self._tail_scope.cancel()
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's socket attributes: local and remote address, family, raw socket."""
        return self._inner.extra_attributes
