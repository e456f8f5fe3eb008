"""A network in memory: connected byte streams, listeners, and a network nodes can share."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from peerkit.errors import PeerUnreachable
from peerkit.model import check_max_bytes

__all__ = ("MemoryByteStream", "MemoryListener", "MemoryNetwork", "memory_stream_pair")


@dataclass(slots=True, weakref_slot=True, eq=False)
class _Link:
    # Shared by the two ends of one in-memory connection (and only they keep it alive).
    ends: tuple[tuple[str, int], ...] = ()
    frozen: bool = False
    # Send ends closed while frozen: the other end must not learn of it (a pulled cable carries no
    # FIN), so they are closed only when the other end closes too.
    held: list[MemoryObjectSendStream[bytes]] = field(default_factory=list)
    open_ends: int = 2


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte stream pair; see :func:`memory_stream_pair`."""

    def __init__(
        self,
        send: MemoryObjectSendStream[bytes],
        receive: MemoryObjectReceiveStream[bytes],
        *,
        local_address: tuple[str, int] | None = None,
        remote_address: tuple[str, int] | None = None,
        link: _Link | None = None,
    ) -> None:
        self._send = send
        self._receive = receive
        self._buffer = b""
        self._local = local_address
        self._remote = remote_address
        self._link = link or _Link()
        self._closed = False

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The local and remote addresses, when the stream came from a :class:`MemoryNetwork`."""
        attributes: dict[Any, Callable[[], Any]] = {}
        if self._local is not None:
            local = self._local
            attributes[SocketAttribute.local_address] = lambda: local
        if self._remote is not None:
            remote = self._remote
            attributes[SocketAttribute.remote_address] = lambda: remote
        return attributes

    async def send(self, item: bytes) -> None:
        """Send bytes to the other end (waits while its buffer is full).

        While the network has this connection frozen, the bytes are silently lost.
        """
        if item and not self._link.frozen:
            await self._send.send(bytes(item))

    def send_ready(self) -> bool:
        """Whether :meth:`send_nowait` would take bytes now (the other end's buffer has room)."""
        stats = self._send.statistics()
        return stats.open_receive_streams > 0 and stats.current_buffer_used < stats.max_buffer_size

    def send_nowait(self, item: bytes) -> None:
        """Send bytes without waiting.

        :raises anyio.WouldBlock: when the other end's buffer is full (nothing is sent).
        """
        if item and not self._link.frozen:
            self._send.send_nowait(bytes(item))

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes from the other end.

        :raises anyio.EndOfStream: when the other end sent EOF or closed.
        :raises TypeError: when ``max_bytes`` is not an integer.
        :raises ValueError: when ``max_bytes`` is less than 1.
        """
        check_max_bytes(max_bytes)
        if not self._buffer:
            self._buffer = await self._receive.receive()
        data, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
        return data

    async def send_eof(self) -> None:
        """Tell the other end that nothing more will be sent (unless the connection is frozen)."""
        self._close_send()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close both directions of this end (both at once, even when cancelled, as a socket is)."""
        self._close()
        await anyio.lowlevel.checkpoint()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_send()
        self._receive.close()
        link = self._link
        link.open_ends -= 1
        if link.open_ends <= 0:  # both ends closed: nobody can read what was held back now
            held, link.held = link.held, []
            for stream in held:
                stream.close()

    def _close_send(self) -> None:
        if self._link.frozen:
            if self._send not in self._link.held:
                self._link.held.append(self._send)
        else:
            self._send.close()


def memory_stream_pair(max_buffer: int = 64) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two byte streams connected to each other, each buffering up to ``max_buffer`` writes."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](max_buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](max_buffer)
    link = _Link()
    return MemoryByteStream(a_send, a_receive, link=link), MemoryByteStream(b_send, b_receive, link=link)


class MemoryListener(anyio.abc.Listener[MemoryByteStream]):
    """A listener on a :class:`MemoryNetwork`; made by :meth:`MemoryNetwork.listen`."""

    def __init__(self, network: MemoryNetwork, address: tuple[str, int]) -> None:
        self._network = network
        self._address = address
        send, receive = anyio.create_memory_object_stream[MemoryByteStream](64)
        self._incoming_send = send
        self._incoming = receive

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The bound address, as :attr:`anyio.abc.SocketAttribute.local_address`."""
        address = self._address
        return {SocketAttribute.local_address: lambda: address}

    async def serve(
        self,
        handler: Callable[[MemoryByteStream], Any],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        """Run ``handler(stream)`` in ``task_group`` for every connection, until cancelled or closed."""
        async with anyio.create_task_group() as own:
            group = task_group or own
            async for stream in self._incoming:
                group.start_soon(handler, stream)

    def _deliver(self, stream: MemoryByteStream) -> None:
        try:
            self._incoming_send.send_nowait(stream)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise PeerUnreachable(f"connection refused by {self._address[0]}:{self._address[1]}") from None

    async def aclose(self) -> None:
        """Stop listening; later connections to this address are refused, and those not yet
        taken are closed (as a TCP listener resets them)."""
        self._network._listeners.pop(self._address, None)
        self._incoming_send.close()
        while True:
            try:
                self._incoming.receive_nowait()._close()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        self._incoming.close()
        await anyio.lowlevel.checkpoint()


class MemoryNetwork:
    """A network in memory for :class:`~peerkit.Node` (``Node(network=net)``): no sockets at all.

    Hosts are any strings (addresses like ``"10.0.0.1"`` read best); ports are given out from 40000
    when a node asks for port 0. :meth:`freeze` cuts a host off without closing anything, so that
    its peers notice only through keepalives, as after a crash or a pulled cable.
    """

    def __init__(self, *, buffer: int = 64) -> None:
        self._listeners: dict[tuple[str, int], MemoryListener] = {}
        self._ports = itertools.count(40000)
        self._buffer = buffer
        self._links: weakref.WeakSet[_Link] = weakref.WeakSet()
        self._frozen: set[str] = set()
        self._firewalled: set[str] = set()
        self._silent: set[str] = set()

    async def listen(self, host: str, port: int) -> MemoryListener:
        """Listen on ``host:port`` (port 0 picks a free one).

        :raises PeerUnreachable: when the address is taken.
        """
        if port == 0:
            port = next(self._ports)
        address = (host, port)
        if address in self._listeners:
            raise PeerUnreachable(f"cannot listen on {host}:{port}: the address is in use")
        listener = self._listeners[address] = MemoryListener(self, address)
        return listener

    async def connect(self, host: str, port: int, *, local_host: str) -> MemoryByteStream:
        """Connect to a listener on ``host:port``.

        :raises PeerUnreachable: when nothing listens there or either host is frozen.
        """
        await anyio.lowlevel.checkpoint()
        listener = self._listeners.get((host, port))
        if listener is None or host in self._frozen or local_host in self._frozen:
            raise PeerUnreachable(f"could not connect to {host}:{port}: connection refused")
        if host in self._firewalled and local_host != host:
            if host in self._silent:
                await anyio.sleep_forever()  # the SYN is dropped: the dialler gives up in its time
            raise PeerUnreachable(f"could not connect to {host}:{port}: the connection timed out")
        local = (local_host, next(self._ports))
        link = _Link(ends=(local, (host, port)))
        a_send, b_receive = anyio.create_memory_object_stream[bytes](self._buffer)
        b_send, a_receive = anyio.create_memory_object_stream[bytes](self._buffer)
        dialler = MemoryByteStream(
            a_send, a_receive, local_address=local, remote_address=(host, port), link=link
        )
        accepted = MemoryByteStream(
            b_send, b_receive, local_address=(host, port), remote_address=local, link=link
        )
        listener._deliver(accepted)
        self._links.add(link)
        return dialler

    def freeze(self, host: str) -> None:
        """Cut ``host`` off: bytes to and from it are lost from now on and new connections fail,
        but nothing is closed (nobody gets an end of stream)."""
        self._frozen.add(host)
        for link in self._links:
            if any(end[0] == host for end in link.ends):
                link.frozen = True

    def firewall(self, host: str, *, on: bool = True, silent: bool = False) -> None:
        """Put ``host`` behind a firewall (``on=False``: take it away): connections to it from
        other hosts fail, as to a host behind a home router's NAT; its own connections out work.
        With ``silent`` they do not fail but hang (dropped SYNs) until the dialler gives up."""
        if on:
            self._firewalled.add(host)
            if silent:
                self._silent.add(host)
        else:
            self._firewalled.discard(host)
            self._silent.discard(host)

    def thaw(self, host: str) -> None:
        """Let ``host`` make new connections again (frozen connections stay dead)."""
        self._frozen.discard(host)


# -- the discovery provider conformance suite ---------------------------------------------------
