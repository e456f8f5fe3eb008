"""Helpers for testing code built on peerkit without a network.

- :func:`memory_stream_pair` gives two connected anyio byte streams, so a
  :class:`~peerkit.SecureChannel` (or anything else that takes a byte stream) can run in memory.
- :class:`MemoryNetwork` is a whole network in memory: give it to several
  :class:`~peerkit.Node` objects (``Node(network=net, ...)``) and they listen, dial, invite and stream
  to each other with no socket. It can also cut a node off silently, like a pulled cable.
- :class:`MemoryDiscovery` is an in-memory directory: nodes signed in to ``NEAR_ME`` publish their
  id, nickname and endpoint there, and :meth:`~peerkit.Node.resolve` finds peers through it.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from peerkit.discovery.base import Announcement, Directory, DiscoveryProvider, DiscoverySession, NearbyRecord
from peerkit.discovery.base import make_record as _make_record
from peerkit.discovery.memory import MemoryDiscovery
from peerkit.errors import PeerUnreachable
from peerkit.identity import PeerId
from peerkit.model import ChangeType, EndPoint

__all__ = (
    "MemoryByteStream",
    "MemoryDiscovery",
    "MemoryListener",
    "MemoryNetwork",
    "NamespaceLan",
    "check_discovery_provider",
    "memory_stream_pair",
    "running_tasks",
)


@dataclass(slots=True, weakref_slot=True, eq=False)
class _Link:
    # Shared by the two ends of one in-memory connection (and only they keep it alive).
    ends: tuple[tuple[str, int], ...] = ()
    frozen: bool = False


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
        """Stop listening; later connections to this address are refused."""
        self._network._listeners.pop(self._address, None)
        self._incoming_send.close()
        self._incoming.close()


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

    def thaw(self, host: str) -> None:
        """Let ``host`` make new connections again (frozen connections stay dead)."""
        self._frozen.discard(host)


# -- the discovery provider conformance suite ---------------------------------------------------
class _SuiteNode:
    # One simulated node of the suite: an identity, an endpoint, a directory and a provider.
    def __init__(self, suite: _Suite, index: int, provider: DiscoveryProvider) -> None:
        from peerkit.identity import Identity

        self.suite = suite
        self.identity = Identity.generate()
        self.endpoint = suite.endpoints[index]
        self.provider = provider
        self.events: list[tuple[ChangeType, NearbyRecord]] = []
        self.changed = anyio.Event()
        self.directory = Directory(self.identity.id, self._on_change, fetch_record=suite.fetch)
        self.session: DiscoverySession | None = None
        self.scope = anyio.CancelScope()
        self.stopped = anyio.Event()
        self.seq = 0

    def _on_change(self, change: ChangeType, record: NearbyRecord) -> None:
        self.events.append((change, record))
        self.changed.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        try:
            with self.scope:

                def ready(session: DiscoverySession) -> None:
                    self.session = session
                    task_status.started()

                status: Any = type("Status", (), {"started": staticmethod(ready)})()
                await self.provider.run(self.directory, task_status=status)
        finally:
            self.suite.published.pop(self.endpoint, None)
            self.stopped.set()

    def announcement(self, nickname: str, *, envelope: bytes | None = None) -> Announcement:
        self.seq += 1
        if envelope is None:
            envelope = _make_record(
                self.identity,
                self.seq,
                nickname=nickname,
                endpoint_name="",
                endpoints=[(self.endpoint.host, self.endpoint.port)],
            )
        return Announcement(
            id=self.identity.id,
            nickname=nickname,
            port=self.endpoint.port,
            hosts=(self.endpoint.host,),
            envelope=envelope,
        )

    async def publish(self, announcement: Announcement) -> None:
        assert self.session is not None
        self.suite.published[self.endpoint] = announcement.envelope
        await self.session.publish(announcement)

    async def withdraw(self) -> None:
        assert self.session is not None
        self.suite.published.pop(self.endpoint, None)
        await self.session.withdraw()

    async def expect(
        self, change: ChangeType, what: str, check: Callable[[NearbyRecord], bool]
    ) -> NearbyRecord:
        with anyio.move_on_after(self.suite.timeout):
            while True:
                for index, (seen, record) in enumerate(self.events):
                    if seen is change and check(record):
                        del self.events[: index + 1]
                        return record
                self.changed = anyio.Event()
                await self.changed.wait()
        raise AssertionError(
            f"{self.provider.name}: {what}: no {change.name} event within {self.suite.timeout} s "
            f"(events seen: {[(c.name, r.nickname) for c, r in self.events]})"
        )


class _Suite:
    def __init__(self, timeout: float, settle: float) -> None:
        self.timeout = timeout
        self.settle = settle
        self.endpoints = [EndPoint("127.0.0.1", 47001), EndPoint("127.0.0.1", 47002)]
        self.published: dict[EndPoint, bytes] = {}

    async def fetch(self, host: str, port: int, peer_id: PeerId | None) -> bytes:
        # What a node would answer to a record request at host:port.
        await anyio.lowlevel.checkpoint()
        envelope = self.published.get(EndPoint(host, port))
        if envelope is None:
            raise PeerUnreachable(f"nothing answers at {EndPoint(host, port)}")
        return envelope


async def check_discovery_provider(
    factory: Callable[[list[EndPoint]], DiscoveryProvider], *, timeout: float = 10.0, settle: float = 1.0
) -> None:
    """Check that a discovery provider behaves as peerkit needs; raises ``AssertionError`` if not.

    Two simulated nodes each run a provider from ``factory`` (called with the endpoints of the
    *other* node, for providers that need addresses, such as ``static``) and check, in order:
    publish -> ADDED on the other side; a new record -> UPDATED; forged records (a bad signature,
    another id's record, garbage) are not believed; an older record (a replay) is not believed;
    withdraw -> DELETED; stopping the provider -> DELETED on the other side, and the stopped
    providers leave no task, thread, socket or file behind.

    :param timeout: seconds each step may take.
    :param settle: seconds to wait before concluding that something was (rightly) not believed.
    """
    import os
    import threading

    def open_files() -> int | None:  # sockets included; Linux only
        try:
            return len(os.listdir("/proc/self/fd"))
        except OSError:
            return None

    suite = _Suite(timeout, settle)
    tasks_before = running_tasks()
    threads_before = threading.active_count()
    files_before = open_files()
    a = _SuiteNode(suite, 0, factory([suite.endpoints[1]]))
    b = _SuiteNode(suite, 1, factory([suite.endpoints[0]]))
    a_id = a.identity.id

    def of_a(nickname: str) -> Callable[[NearbyRecord], bool]:
        return lambda record: record.id == a_id and record.nickname == nickname

    async with anyio.create_task_group() as tg:
        await tg.start(b.run)
        await tg.start(a.run)
        # publish -> found
        await a.publish(a.announcement("alice"))
        first = await b.expect(ChangeType.ADDED, "publish", of_a("alice"))
        assert b.directory.get(a_id) is not None, "the directory does not hold what was added"
        assert first.endpoints, "a peer was found without an endpoint"
        # update -> updated
        await a.publish(a.announcement("alice2"))
        await b.expect(ChangeType.UPDATED, "update", of_a("alice2"))
        await anyio.sleep(settle)  # let the provider finish what a rename starts (mDNS: a new instance)
        # bad records are ignored: a broken signature, a record of another id under a's id, garbage
        # (published under the same nickname, so that only the record changes)
        broken = bytearray(a.announcement("alice2").envelope)
        broken[-1] ^= 1
        await a.publish(a.announcement("alice2", envelope=bytes(broken)))
        mallory = _SuiteNode(suite, 0, a.provider)
        forged = mallory.announcement("alice2").envelope
        await a.publish(a.announcement("alice2", envelope=forged))
        await a.publish(a.announcement("alice2", envelope=b"\xa2garbage"))
        await anyio.sleep(settle)
        held = b.directory.get(a_id)
        assert held is not None, f"{a.provider.name}: a forged record made a peer disappear"
        assert held.nickname == "alice2", f"{a.provider.name}: a forged record was believed"
        # a replay (an older seq) is ignored, and good records still pass afterwards
        old = a.announcement("alice2")
        newer = a.announcement("alice2")
        await a.publish(newer)
        await b.expect(
            ChangeType.UPDATED, "update after forgeries", lambda r: r.id == a_id and r.seq == a.seq
        )
        await a.publish(old)
        await anyio.sleep(settle)
        held = b.directory.get(a_id)
        assert held is not None, f"{a.provider.name}: a replayed record made a peer disappear"
        assert held.seq == a.seq, f"{a.provider.name}: a replayed record was believed"
        # withdraw -> lost
        await a.withdraw()
        await b.expect(ChangeType.DELETED, "withdraw", lambda record: record.id == a_id)
        # publish again, then stop -> lost, and the provider is gone
        await a.publish(a.announcement("alice5"))
        await b.expect(ChangeType.ADDED, "publish after withdraw", of_a("alice5"))
        a.scope.cancel()
        with anyio.move_on_after(timeout):
            await a.stopped.wait()
        assert a.stopped.is_set(), (
            f"{a.provider.name}: run() did not return within {timeout} s of cancellation"
        )
        await b.expect(ChangeType.DELETED, "stop", lambda record: record.id == a_id)
        b.scope.cancel()
    await anyio.lowlevel.checkpoint()
    assert running_tasks() <= tasks_before, f"{a.provider.name}: tasks were left running"
    assert threading.active_count() <= threads_before, f"{a.provider.name}: threads were left running"
    files_after = open_files()
    if files_before is not None and files_after is not None:
        assert files_after <= files_before, f"{a.provider.name}: sockets or files were left open"


def running_tasks() -> int:
    """How many tasks the running event loop has now, on asyncio or on trio.

    Compare it before and after a node runs to check that nothing was left running.
    """
    import asyncio

    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # not asyncio: trio
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

        return count(trio.lowlevel.current_root_task())  # type: ignore[arg-type]


_lans = itertools.count(1)


# -- a LAN of network namespaces ------------------------------------------------------------------
class NamespaceLan:
    """A LAN made of Linux network namespaces, for tests of real discovery (needs root and ``ip``).

    Bridges live in a namespace of their own, so nothing touches the host's network. Each
    :meth:`host` is a namespace with one interface per bridge it joins, addressed
    ``10.<base>.<bridge>.<host>/24`` and ``fd00:<base>:<bridge>::<host>/64`` (``base`` defaults to
    231: private addresses the LAN owns).
    Use it as a context manager: everything is removed at the end, also after a failure.
    """

    def __init__(self, *, base: int = 231) -> None:
        import os

        self._prefix = f"pk{os.getpid() % 100000}x{next(_lans)}"
        self._base = base
        self._namespaces: list[str] = []
        self._bridges = 0
        self._hosts = 0
        self._cables: dict[str, list[str]] = {}
        self._hub = f"{self._prefix}hub"

    @staticmethod
    def available() -> str | None:
        """None when namespaces can be made here, else the reason they cannot."""
        import os
        import shutil

        if shutil.which("ip") is None:
            return "the ip command (iproute2) is missing"
        if os.geteuid() != 0:
            return "making network namespaces needs root"
        return None

    def ipv6(self, host: int, bridge: int) -> str:
        """The IPv6 address of the ``host``-th host (from 1) on ``bridge``."""
        return f"fd00:{self._base}:{bridge}::{host}"

    def ip(self, namespace: str, *args: str) -> None:
        """Run ``ip ARGS`` inside ``namespace`` (add an address, take a link down, ...).

        :raises RuntimeError: when it fails, with ip's message.
        """
        self._ip(*args, namespace=namespace)

    def _ip(self, *args: str, namespace: str | None = None) -> None:
        import subprocess

        command = ["ip", *(["-n", namespace] if namespace else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")

    def _namespace(self, name: str) -> str:
        self._ip("netns", "add", name)
        self._namespaces.append(name)
        self._ip("link", "set", "lo", "up", namespace=name)
        return name

    def __enter__(self) -> Self:
        self._namespace(self._hub)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every namespace (and with them every interface) this LAN made."""
        import contextlib as _contextlib

        for name in reversed(self._namespaces):
            with _contextlib.suppress(RuntimeError):
                self._ip("netns", "del", name)
        self._namespaces.clear()

    def plug(self, namespace: str, plugged: bool, *, index: int = 0) -> None:
        """Pull out (``plugged=False``) or plug back in the cable of a host's ``index``-th interface:
        the switch's end goes down, so the host's packets are lost without any error it can see."""
        self._ip(
            "link", "set", self._cables[namespace][index], "up" if plugged else "down", namespace=self._hub
        )

    def bridge(self) -> int:
        """Add a bridge (a switch); returns its number."""
        self._bridges += 1
        self._ip("link", "add", f"br{self._bridges}", "type", "bridge", namespace=self._hub)
        self._ip("link", "set", f"br{self._bridges}", "up", namespace=self._hub)
        return self._bridges

    def host(self, *bridges: int) -> tuple[str, list[str]]:
        """Add a host plugged into ``bridges``; returns its namespace name and its IPv4 addresses
        (one per bridge; :meth:`ipv6` gives the IPv6 ones)."""
        self._hosts += 1
        name = self._namespace(f"{self._prefix}h{self._hosts}")
        addresses = []
        for index, bridge in enumerate(bridges):
            inside, outside = f"eth{index}", f"h{self._hosts}b{bridge}"
            self._cables.setdefault(name, []).append(outside)
            self._ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", name,
                     namespace=self._hub)  # fmt: skip
            self._ip("link", "set", outside, "master", f"br{bridge}", "up", namespace=self._hub)
            address = f"10.{self._base}.{bridge}.{self._hosts}"
            self._ip("addr", "add", f"{address}/24", "dev", inside, namespace=name)
            self._ip("addr", "add", f"fd00:{self._base}:{bridge}::{self._hosts}/64", "dev", inside, "nodad",
                     namespace=name)  # fmt: skip
            self._ip("link", "set", inside, "multicast", "on", "up", namespace=name)
            addresses.append(address)
        # Multicast leaves through the first interface unless a socket chooses another.
        self._ip("route", "add", "224.0.0.0/4", "dev", "eth0", namespace=name)
        return name, addresses
