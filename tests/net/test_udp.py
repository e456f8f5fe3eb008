"""peerkit.net.udp: UDP sockets bound or connected to a literal address without a worker thread
(asyncio would lend one from its default executor, kept as long as the loop), names resolved."""

from __future__ import annotations

import anyio
import pytest

from peerkit.net.udp import bind_udp, connect_udp

pytestmark = [pytest.mark.anyio, pytest.mark.network]


@pytest.mark.usefixtures("no_worker_thread")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_a_literal_address_is_bound_and_connected_without_a_worker_thread(host: str) -> None:
    async with await bind_udp(host) as server:
        address = server.extra(anyio.abc.SocketAttribute.local_address)
        assert address[0] == host
        assert address[1] > 0
        async with await connect_udp(host, address[1]) as client:
            await client.send(b"hello")
            with anyio.fail_after(5):
                data, source = await server.receive()
            assert data == b"hello"
            await server.sendto(b"and back", source[0], source[1])
            with anyio.fail_after(5):
                assert await client.receive() == b"and back"


async def test_a_name_is_resolved() -> None:
    async with await bind_udp("localhost") as server:
        port = server.extra(anyio.abc.SocketAttribute.local_port)
        async with await connect_udp("localhost", port) as client:
            await client.send(b"by name")
            with anyio.fail_after(5):
                assert (await server.receive())[0] == b"by name"


async def test_a_busy_port_and_a_foreign_address_are_refused() -> None:
    async with await bind_udp("127.0.0.1") as taken:
        port = taken.extra(anyio.abc.SocketAttribute.local_port)
        with pytest.raises(OSError, match="in use"):
            await bind_udp("127.0.0.1", port)
    with pytest.raises(OSError, match="assign"):
        await bind_udp("192.0.2.1")  # (TEST-NET-1: never an address of this host; nothing is sent)
