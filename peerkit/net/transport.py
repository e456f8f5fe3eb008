"""How a :class:`~peerkit.Node` reaches the network: listen and dial byte streams.

:class:`TcpTransport` is the real one. :class:`peerkit.testing.MemoryNetwork` provides the same
interface in memory, so that nodes can be tested without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.abc

from peerkit.errors import PeerUnreachable
from peerkit.net.fds import FdBudget, fd_budget
from peerkit.net.tcp import TcpListener, connect_tcp

if TYPE_CHECKING:
    from peerkit.net.trio_tcp import TrioTcpStream

__all__ = (
    "BROKEN",
    "ON_LINK",
    "WILDCARDS",
    "GuardedListener",
    "OnLink",
    "TcpTransport",
    "Transport",
    "is_public",
    "kept_to",
    "listening",
    "local_addresses",
    "network_interfaces",
    "on_asyncio",
    "reachable_host",
    "system_reason",
    "unreachable",
)

#: The listening hosts that mean every address: of both families (""), IPv4's, IPv6's.
WILDCARDS: Final = ("", "0.0.0.0", "::")

#: What a byte stream raises when its connection broke: anyio's error, or the operating system's.
BROKEN: Final = (anyio.BrokenResourceError, OSError)


@contextlib.contextmanager
def unreachable(text: str, *also: type[Exception], detail: bool = False) -> Iterator[None]:
    """Turn a broken connection inside the block (:data:`BROKEN`, and ``also``) into
    :class:`~peerkit.PeerUnreachable` with ``text`` (and, with ``detail``, the system's reason).

    The one place the ``net`` layer decides what "the peer cannot be reached" is::

        with unreachable(f"could not connect to {host}:{port}", detail=True):
            stream = await anyio.connect_tcp(host, port)
    """
    mapped: tuple[type[BaseException], ...] = (*BROKEN, *also)
    try:
        yield
    except mapped as exc:
        reason = f": {system_reason(exc)}" if detail and isinstance(exc, OSError) else ""
        raise PeerUnreachable(text + reason) from exc


def system_reason(exc: OSError) -> str:
    """Why the system refused, in its words for the error number (``connection refused``), the
    same on every event loop: asyncio words a refused connection "Connect call failed ('10.0.0.2',
    7000)", and anyio's attempts on trio "All connection attempts failed", with the number on the
    error it was raised from."""
    seen: BaseException | None = exc
    for _ in range(4):  # (a short chain: the error, and what it was raised from)
        if isinstance(seen, socket.gaierror):  # (a host name's look-up: its numbers are not errno's)
            words = seen.strerror or "the host name could not be looked up"
            return words[:1].lower() + words[1:]
        if isinstance(seen, OSError) and seen.errno:
            words = os.strerror(seen.errno)
            return words[:1].lower() + words[1:]
        seen = seen.__cause__ if seen is not None else None
    return exc.strerror or str(exc)


def is_public(host: str) -> bool:
    """Whether ``host`` is a global address (not private, loopback, link-local, reserved...)."""
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return False


def reachable_host(host: str) -> str:
    """How a node bound to ``host`` is shown and dialled on this host: a wildcard address as the
    loopback address of its family (the empty host, both families, as IPv4's), anything else as
    it is."""
    if host == "":
        return "127.0.0.1"
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            return "::1" if address.version == 6 else "127.0.0.1"
    return host


def listening(configured: str, bound: tuple[str, int]) -> tuple[str, int]:
    """Where a node listens, for what depends on the address family: the ``configured`` host when
    it is the empty one (IPv4 and IPv6, whose listener reports the address of one family only:
    ``0.0.0.0`` on asyncio, ``::`` on trio), else the ``bound`` address (a name resolved); and the
    bound port."""
    return ("" if configured == "" else bound[0]), bound[1]


def local_addresses(listen_host: str, *, fallback: str) -> tuple[str, ...]:
    """The addresses a node listening on ``listen_host`` can be reached at.

    A specific address is itself. A wildcard (``0.0.0.0``: IPv4; ``::``: IPv6, as its listening
    socket takes IPv6 only; empty: both) is every address of that family of this host's
    interfaces, except loopback and IPv6 link-local ones (which mean nothing to another host);
    ``fallback`` when there is none.
    """
    if listen_host not in WILDCARDS:
        return (listen_host,)
    found: list[str] = []
    for address, _ in _interface_addresses():
        if address.is_loopback or address.is_link_local or address.is_multicast:
            continue
        if (address.version == 6 and listen_host == "0.0.0.0") or (
            address.version == 4 and listen_host == "::"
        ):
            continue
        found.append(str(address))
    return tuple(dict.fromkeys(found)) or (fallback,)


def kept_to(listen_host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The one address a node listening on ``listen_host`` is kept to (what a provider's own
    sockets then keep to as well); None for every address (a wildcard), a host name, or not said."""
    if listen_host in (None, *WILDCARDS):
        return None
    try:
        return ipaddress.ip_address(listen_host)
    except ValueError:  # (a host name: the node binds what it resolves to)
        return None


def network_interfaces() -> dict[str, list[str]]:
    """This host's network interfaces by name (``eth0``), each with its addresses, IPv4 first."""
    import ifaddr

    found: dict[str, list[str]] = {}
    for adapter in ifaddr.get_adapters():
        addresses = [ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip for ip in adapter.ips]
        found.setdefault(str(adapter.name), []).extend(sorted(addresses, key=lambda a: ":" in a))
    return found


def _interface_addresses() -> Iterator[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    # Every address of this host's interfaces (ifaddr gives an IPv6 one as a tuple), with its
    # prefix length.
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            with contextlib.suppress(ValueError):
                yield ipaddress.ip_address(ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip), ip.network_prefix


class OnLink:
    """The /64s of this host's IPv6 addresses (as :func:`ipaddress.ip_network` writes them), read
    from its interfaces at the first question and again when asked ``refresh`` seconds later.

    The ``on_link`` of :func:`~peerkit.proto.admission.source_of`: the hosts on this host's links
    share their /64, so that each of them is a source of its own, as on IPv4.
    """

    def __init__(self, refresh: float = 60.0) -> None:
        self.refresh = refresh
        self._networks: frozenset[str] = frozenset()
        self._read_at: float | None = None

    def __contains__(self, network: object) -> bool:
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self.refresh:
            self._networks, self._read_at = _networks_of_interfaces(), now
        return network in self._networks


def _networks_of_interfaces() -> frozenset[str]:
    # The /64 of every IPv6 address of this host's interfaces whose prefix is 64 bits or shorter.
    return frozenset(
        str(ipaddress.ip_network(f"{address}/64", strict=False))
        for address, prefix in _interface_addresses()
        if address.version == 6 and prefix <= 64
    )


#: This host's on-link IPv6 /64s, read again at most once a minute: what every node of the process
#: gives :func:`~peerkit.proto.admission.source_of`.
ON_LINK: Final = OnLink()


class Transport(Protocol):
    """Where a node listens and how it dials."""

    async def listen(self, host: str, port: int) -> anyio.abc.Listener[Any]:
        """A listener of byte streams bound to ``host:port`` (port 0 picks a free one). It must
        report its bound address as :attr:`anyio.abc.SocketAttribute.local_address`.

        :raises PeerUnreachable: when the address cannot be bound.
        """
        ...

    async def connect(self, host: str, port: int, *, local_host: str) -> anyio.abc.ByteStream:
        """A byte stream to ``host:port``. ``local_host`` is the host this node listens on.

        :raises PeerUnreachable: when no connection can be made.
        """
        ...


def on_asyncio() -> bool:
    """Whether the running event loop is asyncio's (anyio's other backend is trio).

    Decided without ``sniffio``, which may be missing under a bare ``asyncio.run``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class TcpTransport:
    """TCP over IPv4 and IPv6.

    On asyncio: :mod:`peerkit.net.tcp` streams (anyio byte streams on asyncio protocols that can
    also send without waiting). On trio: anyio's TCP streams, wrapped in
    :class:`~peerkit.net.trio_tcp.TrioTcpStream` (which can also send without waiting).
    """

    async def listen(self, host: str, port: int) -> anyio.abc.Listener[Any]:
        """Bind a TCP listener (see :meth:`Transport.listen`)."""
        with unreachable(f"cannot listen on {host}:{port}", detail=True):
            if on_asyncio():
                return await TcpListener.bind(host, port)
            inner = await anyio.create_tcp_listener(
                local_host=host or None, local_port=port, reuse_port=False
            )
            return GuardedListener(inner)

    async def connect(self, host: str, port: int, *, local_host: str) -> anyio.abc.ByteStream:
        """Open a TCP connection (see :meth:`Transport.connect`); ``local_host`` is not used."""
        with unreachable(f"could not connect to {host}:{port}", detail=True):
            if on_asyncio():
                return await connect_tcp(host, port)
            from peerkit.net.trio_tcp import TrioTcpStream  # (imports trio)

            return TrioTcpStream(await anyio.connect_tcp(host, port))


class GuardedListener(anyio.abc.Listener["TrioTcpStream"]):
    """anyio's TCP listener (on trio) that accepts only while the process has file descriptors to
    spare (:class:`~peerkit.net.fds.FdBudget`), as :class:`~peerkit.net.tcp.TcpListener` does on
    asyncio: near the limit, or when ``accept`` fails for want of them, it pauses."""

    def __init__(
        self, inner: anyio.abc.Listener[anyio.abc.SocketStream], budget: FdBudget | None = None
    ) -> None:
        self._inner = inner
        self._budget = budget or fd_budget()
        #: Asked with the remote address of each accepted connection; False closes it at once.
        self.screen: Callable[[Any], bool] | None = None

    async def serve(
        self,
        handler: Callable[[TrioTcpStream], Any],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        """Run ``handler(stream)`` in a task for each connection, until cancelled."""
        async with anyio.create_task_group() as own:
            group = task_group or own
            listeners = getattr(self._inner, "listeners", [self._inner])  # anyio's MultiListener
            for listener in listeners:
                own.start_soon(self._accept_loop, listener, handler, group)

    async def _accept_loop(
        self,
        listener: anyio.abc.Listener[Any],
        handler: Callable[[TrioTcpStream], Any],
        group: anyio.abc.TaskGroup,
    ) -> None:
        from peerkit.net.trio_tcp import TrioTcpStream  # (imports trio: this listener runs on it)

        assert isinstance(listener, anyio.abc.SocketListener)
        while True:
            await self._budget.wait_for_room()
            try:
                stream = await listener.accept()
            except OSError as exc:
                self._budget.accept_failed(exc)
                continue
            self._budget.opened()
            screen = self.screen
            if screen is not None and not screen(stream.extra(anyio.abc.SocketAttribute.remote_address)):
                await anyio.aclose_forcefully(stream)  # refused before anything is made for it
                continue
            group.start_soon(handler, TrioTcpStream(stream))

    async def aclose(self) -> None:
        """Stop listening."""
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The attributes of the (first) listening socket."""
        attributes: Mapping[Any, Callable[[], Any]] = self._inner.extra_attributes
        return attributes
