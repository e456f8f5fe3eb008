"""Datagrams for the DHT: UDP on either anyio backend, or an in-memory network for testnets."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.abc

from peerkit.dht.krpc import Address
from peerkit.net.udp import bind_udp

__all__ = ("Datagrams", "MemoryDatagramNetwork", "UdpDatagrams")


class Datagrams(Protocol):
    """Where a DHT node sends and receives its datagrams."""

    @property
    def local_address(self) -> Address:
        """The address this end is bound to."""
        ...

    async def send(self, data: bytes, address: Address) -> None:
        """Send one datagram (it may be lost; nothing is raised for that)."""
        ...

    async def receive(self) -> tuple[bytes, Address]:
        """The next datagram and where it came from."""
        ...

    async def aclose(self) -> None:
        """Stop; a receive under way ends with :class:`anyio.ClosedResourceError`."""
        ...


class UdpDatagrams:
    """UDP (anyio's socket, on asyncio or trio); made with :meth:`bind`."""

    def __init__(self, sock: anyio.abc.UDPSocket) -> None:
        self._sock = sock
        self._sending = anyio.Lock()  # anyio's socket takes one sender at a time

    @classmethod
    async def bind(cls, host: str = "0.0.0.0", port: int = 0) -> UdpDatagrams:
        """A UDP socket on ``host:port`` (port 0 picks a free one). A literal address is bound
        as it is; a name is resolved first (in a worker thread).

        :raises OSError: when it cannot be bound.
        """
        return cls(await bind_udp(host, port))

    @property
    def local_address(self) -> Address:
        """The address and port it is bound to."""
        raw: Any = self._sock.extra(anyio.abc.SocketAttribute.local_address)
        return str(raw[0]), int(raw[1])

    async def send(self, data: bytes, address: Address) -> None:
        """Send one datagram (see :meth:`Datagrams.send`)."""
        # Unreachable, a full buffer, or the socket closing as the node stops: the datagram is
        # lost, as UDP may lose any.
        async with self._sending:
            with contextlib.suppress(OSError, anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._sock.sendto(data, address[0], address[1])

    async def receive(self) -> tuple[bytes, Address]:
        """The next datagram (see :meth:`Datagrams.receive`)."""
        while True:
            try:
                data, source = await self._sock.receive()
            except OSError:
                continue  # an ICMP error for an earlier send: nothing to read
            return data, (str(source[0]), int(source[1]))

    async def aclose(self) -> None:
        """Close the socket."""
        await self._sock.aclose()


class _MemoryEnd:
    def __init__(
        self, network: MemoryDatagramNetwork, address: Address, *, firewalled: bool, public: Address | None
    ) -> None:
        self._network = network
        self._address = address
        # Behind a NAT: where its datagrams seem to come from, and the address that reaches it.
        self.public = public
        # Behind a NAT or firewall: datagrams come in only from addresses this end sent to.
        self.allowed: set[Address] | None = set() if firewalled else None
        self._send, self._receive = anyio.create_memory_object_stream[tuple[bytes, Address]](network.buffer)

    @property
    def local_address(self) -> Address:
        return self._address

    async def send(self, data: bytes, address: Address) -> None:
        await anyio.lowlevel.checkpoint()
        if self.allowed is not None:
            self.allowed.add(address)
        self._network._deliver(data, self.public or self._address, address)

    async def receive(self) -> tuple[bytes, Address]:
        return await self._receive.receive()

    async def aclose(self) -> None:
        self._network._ends.pop(self._address, None)
        if self.public is not None:
            self._network._ends.pop(self.public, None)
        self._send.close()
        self._receive.close()
        await anyio.lowlevel.checkpoint()


class MemoryDatagramNetwork:
    """Datagrams in memory between DHT nodes of one process (testnets): each :meth:`bind` is a
    host; ``loss`` (0-1) drops datagrams at random, ``delay`` returns seconds to hold one back
    (one-way), and ``buffer`` datagrams wait per end at most (more are dropped, as a full socket
    buffer drops them)."""

    def __init__(
        self,
        *,
        loss: float = 0.0,
        delay: Callable[[], float] | None = None,
        buffer: int = 256,
        seed: int | None = None,
    ) -> None:
        self.loss = loss
        self.delay = delay
        self.buffer = buffer
        self._ends: dict[Address, _MemoryEnd] = {}
        self._random = random.Random(seed)
        self._next = 1
        self._tg: anyio.abc.TaskGroup | None = None
        #: Datagrams sent, delivered and dropped (for the benchmark's counts).
        self.sent = 0
        self.dropped = 0

    def bind(
        self, host: str | None = None, *, firewalled: bool = False, public: Address | None = None
    ) -> Datagrams:
        """A new end at ``host`` (default: the next 10.x address), port 6881. A ``firewalled``
        end takes datagrams only from addresses it sent to (as behind a home router's NAT). An
        end with a ``public`` address is behind a NAT that maps it there: its datagrams seem to
        come from ``public``, datagrams to ``public`` reach it, and it is firewalled."""
        if host is None:
            n = self._next
            self._next += 1
            host = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        address = (host, 6881)
        if address in self._ends:
            raise OSError(f"{host}:6881 is taken")
        if public is not None and public in self._ends:
            raise OSError(f"{public[0]}:{public[1]} is taken")
        end = _MemoryEnd(self, address, firewalled=firewalled or public is not None, public=public)
        self._ends[address] = end
        if public is not None:
            self._ends[public] = end
        return end

    def run_delays_in(self, tg: anyio.abc.TaskGroup) -> None:
        """Delayed datagrams are held by tasks in ``tg`` (needed when ``delay`` is set)."""
        self._tg = tg

    def _deliver(self, data: bytes, source: Address, destination: Address) -> None:
        self.sent += 1
        if self.loss and self._random.random() < self.loss:
            self.dropped += 1
            return
        if self.delay is not None and self._tg is not None:
            self._tg.start_soon(self._later, data, source, destination, self.delay())
            return
        self._put(data, source, destination)

    async def _later(self, data: bytes, source: Address, destination: Address, seconds: float) -> None:
        await anyio.sleep(seconds)
        self._put(data, source, destination)

    def _put(self, data: bytes, source: Address, destination: Address) -> None:
        end = self._ends.get(destination)
        if end is None or (end.allowed is not None and source not in end.allowed):
            self.dropped += 1
            return
        try:
            end._send.send_nowait((data, source))
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.dropped += 1
