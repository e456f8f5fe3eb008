"""peerkit.net.trio_tcp directly: trio's TCP streams with a send that never waits (what the fan-out
of presence to many subscribers uses on trio), through the transport as a node makes them."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
import trio
from conftest import bulk_read_sizes

from peerkit.net.punch import connect_from
from peerkit.net.tcp import READ_SIZE
from peerkit.net.transport import TcpTransport
from peerkit.net.trio_tcp import TrioTcpStream

pytestmark = [pytest.mark.anyio, pytest.mark.network]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@asynccontextmanager
async def connected() -> AsyncIterator[tuple[TrioTcpStream, TrioTcpStream]]:
    """A client stream and the server's stream of one connection on loopback, both made by the
    transport (its listener and its connect)."""
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1", 0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    accepted, taken = anyio.create_memory_object_stream[TrioTcpStream](1)
    try:
        async with anyio.create_task_group() as tg, accepted, taken:
            tg.start_soon(listener.serve, accepted.send)
            client = await transport.connect("127.0.0.1", port, local_host="127.0.0.1")
            assert isinstance(client, TrioTcpStream)
            with anyio.fail_after(5):
                server = await taken.receive()
            try:
                yield client, server
            finally:
                await client.aclose()
                await server.aclose()
                tg.cancel_scope.cancel()
    finally:
        await listener.aclose()


async def read_all(stream: TrioTcpStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await stream.receive()
    return bytes(data)


def fill(stream: TrioTcpStream, chunk: bytes) -> int:
    """send_nowait ``chunk`` until the stream is congested; the bytes handed over."""
    handed = 0
    for _ in range(1000):  # bounded: the socket buffers hold a few megabytes at most
        if not stream.send_ready():
            break
        stream.send_nowait(chunk)
        handed += len(chunk)
    assert not stream.send_ready()
    return handed


async def test_send_nowait_writes_at_once_and_both_ways_work() -> None:
    async with connected() as (client, server):
        assert client.send_ready()
        client.send_nowait(b"hello")
        assert client.send_ready()  # the kernel took it all
        assert await read_all(server, 5) == b"hello"
        await server.send(b"and back")
        assert await read_all(client, 8) == b"and back"
        assert client.extra(anyio.abc.SocketAttribute.remote_port) == server.extra(
            anyio.abc.SocketAttribute.local_port
        )


async def test_what_the_kernel_does_not_take_goes_out_later_in_order() -> None:
    async with connected() as (client, server):
        chunk = bytes(range(256)) * 4096  # 1 MiB
        handed = fill(client, chunk)
        with pytest.raises(anyio.WouldBlock):
            client.send_nowait(b"x")  # nothing is sent then
        after = b"sent after the congestion"
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.send, after)  # waits for the rest to go out first
            with anyio.fail_after(20):
                received = await read_all(server, handed + len(after))
        assert received == chunk * (handed // len(chunk)) + after
        assert client.send_ready()


async def test_closing_with_bytes_waiting_leaves_no_task_behind() -> None:
    async with connected() as (client, _server):
        fill(client, bytes(1 << 20))
        tasks = trio.lowlevel.current_statistics().tasks_living
        await client.aclose()
        with anyio.fail_after(5):
            while trio.lowlevel.current_statistics().tasks_living >= tasks:
                await anyio.sleep(0.01)  # the task writing the rest was cancelled
        with pytest.raises(anyio.ClosedResourceError):
            client.send_nowait(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await client.send(b"x")
        assert not client.send_ready()


async def write_until_broken(stream: TrioTcpStream) -> None:
    for _ in range(100):  # the reset comes back after the first write or so
        if stream.send_ready():
            stream.send_nowait(b"into the void")
        else:
            await stream.send(b"into the void")
        await anyio.sleep(0.01)


async def test_a_peer_that_is_gone_breaks_the_stream() -> None:
    async with connected() as (client, server):
        await server.aclose()
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            await write_until_broken(client)
        assert not client.send_ready()


async def test_a_connection_made_by_a_punch_sends_without_waiting_too() -> None:
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1", 0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    accepted, taken = anyio.create_memory_object_stream[TrioTcpStream](1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with anyio.create_task_group() as tg, accepted, taken:
            tg.start_soon(listener.serve, accepted.send)
            punched = await connect_from(sock, "127.0.0.1", port)
            assert isinstance(punched, TrioTcpStream)
            with anyio.fail_after(5):
                server = await taken.receive()
            punched.send_nowait(b"through the hole")
            assert await read_all(server, 16) == b"through the hole"
            await punched.aclose()
            await server.aclose()
            tg.cancel_scope.cancel()
    finally:
        await listener.aclose()


async def test_no_read_makes_an_object_of_128_kib_or_more() -> None:
    # (as on asyncio: peerkit.net.tcp.READ_SIZE says why)
    async with connected() as (client, server):
        assert max(await bulk_read_sizes(client, server)) == READ_SIZE < 128 * 1024
