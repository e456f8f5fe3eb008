"""TCP hole punching: connect two hosts behind NATs by TCP simultaneous open (on either backend).

Each side binds a socket to a port of its own choosing and tells the other side, over a channel
they already share (through a relay), the addresses it expects to be seen at with that port (its
public address, when a relay or the DHT told it, and its own addresses). Then both connect from
that port to the other's addresses at about the same moment. Each side's SYN opens its own NAT for
the other's; behind NATs that keep the port (Linux's masquerade, most home routers) the SYNs cross
and TCP's simultaneous open makes one connection that both sides see as their own. Behind a NAT
that picks a new port for each destination (a symmetric NAT) the SYNs miss, and the connect times
out: the caller keeps using the relay.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Final

import anyio
import anyio.abc

from peerkit.net.tcp import wrap_connected
from peerkit.net.transport import on_asyncio

__all__ = ("ATTEMPT_TIMEOUT", "MAX_CANDIDATES", "Punch", "connect_from")

#: Seconds a punch waits for its connection (a lost SYN is sent again after 1 s).
ATTEMPT_TIMEOUT: Final = 3.0
#: Addresses a punch dials at most (the other side's claims).
MAX_CANDIDATES: Final = 4
#: Seconds before a refused SYN is sent again.
RETRY: Final = 0.05


def _socket(local_host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((local_host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_from(
    sock: socket.socket, host: str, port: int, sent: Callable[[], None] | None = None
) -> anyio.abc.ByteStream:
    """Connect the bound, non-blocking ``sock`` to ``host:port`` (a simultaneous open completes
    it like any other) and return the connection as a byte stream; ``sent()`` is called once the
    SYN is on its way. ``sock`` is closed on failure or cancellation.

    :raises OSError: when the connection cannot be made.
    """
    try:
        code = sock.connect_ex((host, port))
        if sent is not None:
            sent()
        if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
            raise OSError(code, f"could not connect to {host}:{port}: {errno.errorcode.get(code, code)}")
        await anyio.wait_writable(sock)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, f"could not connect to {host}:{port}: {errno.errorcode.get(code, code)}")
        return await _stream(sock)
    except BaseException:
        sock.close()
        raise


async def _stream(sock: socket.socket) -> anyio.abc.ByteStream:
    # The node's kind of TCP stream on either backend (each can send without waiting).
    if on_asyncio():
        return await wrap_connected(sock)
    from peerkit.net.trio_tcp import TrioTcpStream  # (imports trio)

    return TrioTcpStream(await anyio.abc.SocketStream.from_socket(sock))


async def _accept_one(listener: socket.socket) -> anyio.abc.ByteStream:
    # The first connection made to the listening ``listener`` (non-blocking).
    while True:
        await anyio.wait_readable(listener)
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue
        try:
            sock.setblocking(False)
            return await _stream(sock)
        except BaseException:
            sock.close()
            raise


class Punch:
    """One side of a punch: :meth:`open` binds the port (say :attr:`port` to the other side),
    :meth:`connect` dials the other side's addresses from it; the first connection made wins.
    """

    def __init__(self, local_host: str = "0.0.0.0") -> None:
        self._local_host = local_host if local_host not in ("", "::") else "0.0.0.0"
        self._first: socket.socket | None = None
        #: The port this side dials from (known after :meth:`open`).
        self.port = 0
        #: Set once :meth:`connect` sent its first SYNs (each side's SYN opens its own NAT: the
        #: answering side says where it dials from only after that).
        self.armed = anyio.Event()

    def open(self) -> int:
        """Bind the port this side will dial from; returns it.

        :raises OSError: when no port can be bound.
        """
        self._first = _socket(self._local_host, 0)
        self.port = self._first.getsockname()[1]
        return self.port

    def close(self) -> None:
        """Release the port (when :meth:`connect` was not called, or to give up)."""
        if self._first is not None:
            self._first.close()
            self._first = None

    async def connect(
        self, candidates: list[tuple[str, int]], *, timeout: float = ATTEMPT_TIMEOUT, listen: bool = False
    ) -> list[anyio.abc.ByteStream]:
        """Dial every candidate (at most :data:`MAX_CANDIDATES`) from the bound port at once;
        return the connections made within ``timeout`` (usually one; empty: the punch failed).
        Each connection the caller does not use it must close.

        With ``listen``, the port also accepts a connection: where no NAT stands between the
        two sides (a LAN, loopback) the other side's SYN may reach this one before this side's
        SYN left, and it is taken instead of being refused."""
        assert self._first is not None, "open() first"
        targets = candidates[:MAX_CANDIDATES]
        made: list[anyio.abc.ByteStream] = []
        first, self._first = self._first, None
        sockets = [first]
        try:
            sockets += [_socket(self._local_host, self.port) for _ in targets[1:]]
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        unsent = [len(targets)]

        def sent() -> None:
            unsent[0] -= 1
            if unsent[0] <= 0:
                self.armed.set()

        async def attempt(host: str, port: int, sock: socket.socket) -> None:
            # A SYN that reaches the other side before its own SYN left is refused (on a LAN,
            # or a NAT that answers with a reset): try again from the same port.
            report: Callable[[], None] | None = sent
            while not made:
                try:
                    made.append(await connect_from(sock, host, port, report))
                except ConnectionRefusedError:
                    report = None
                    await anyio.sleep(RETRY)
                    sock = _socket(self._local_host, self.port)
                    continue
                except OSError:
                    return  # unreachable: another candidate may work
                tg.cancel_scope.cancel()

        async def accept(listener: socket.socket) -> None:
            made.append(await _accept_one(listener))
            tg.cancel_scope.cancel()

        if not targets:
            first.close()
            self.armed.set()
            return made
        listener: socket.socket | None = None
        try:
            if listen:
                listener = _socket(self._local_host, self.port)
                listener.listen(1)
            with anyio.move_on_after(timeout):
                async with anyio.create_task_group() as tg:
                    if listener is not None:
                        tg.start_soon(accept, listener)
                    for (host, port), sock in zip(targets, sockets, strict=True):
                        tg.start_soon(attempt, host, port, sock)
        finally:
            if listener is not None:
                listener.close()
            self.armed.set()
        return made
