"""UDP sockets made without a worker thread when the address is literal.

anyio resolves every host it is given, literal addresses too, and on asyncio that is a call to the
event loop's default executor: a thread that lives as long as the loop, long after the node that
asked for it stopped. The DHT, the port-mapping clients and the router search bind or connect to
literal addresses almost always; these functions make those sockets directly, and hand a name to
anyio (which resolves it in a worker thread).
"""

from __future__ import annotations

import ipaddress
import socket

import anyio
import anyio.abc

__all__ = ("bind_udp", "connect_udp")


def _family(host: str) -> socket.AddressFamily | None:
    # The family of a literal address; None for a name.
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


def _socket(family: socket.AddressFamily) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


async def bind_udp(host: str, port: int = 0) -> anyio.abc.UDPSocket:
    """A UDP socket bound to ``host:port`` (port 0 picks a free one).

    :raises OSError: when it cannot be bound (the port is taken, the address is not this host's,
        the name does not resolve).
    """
    family = _family(host)
    if family is None:
        return await anyio.create_udp_socket(local_host=host, local_port=port)
    sock = _socket(family)
    try:
        sock.bind((host, port))
        return await anyio.abc.UDPSocket.from_socket(sock)
    except BaseException:
        sock.close()
        raise


async def connect_udp(host: str, port: int) -> anyio.abc.ConnectedUDPSocket:
    """A UDP socket that sends to and receives from ``host:port`` only (bound to the address the
    system routes from).

    :raises OSError: when no route leads there, or the name does not resolve.
    """
    family = _family(host)
    if family is None:
        return await anyio.create_connected_udp_socket(host, port)
    sock = _socket(family)
    try:
        sock.connect((host, port))  # (UDP: no packet is sent; the route and the source are chosen)
        return await anyio.abc.ConnectedUDPSocket.from_socket(sock)
    except BaseException:
        sock.close()
        raise
