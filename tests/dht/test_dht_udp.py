"""DHT nodes over real UDP on loopback (both anyio backends), and the guard that keeps every
test's DHT traffic inside its own testnet."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from conftest import loopback_dht, outside_testnet

from peerkit import Identity
from peerkit.dht.bep44 import MutableItem
from peerkit.dht.transport import UdpDatagrams

pytestmark = [pytest.mark.anyio, pytest.mark.network]


async def test_nodes_on_loopback_put_and_get_over_udp() -> None:
    alice = Identity.generate()
    async with loopback_dht(12, base=1) as nodes:
        item = MutableItem.create(alice.sign, alice.id.key, b"over udp", 3, b"salt")
        with anyio.fail_after(10):
            assert (await nodes[5].put(item)).stored >= 6
            assert await nodes[11].get(alice.id.key, b"salt") == item


async def test_a_send_outside_the_testnet_is_refused(dht_sends_outside: list[tuple[str, int]]) -> None:
    assert outside_testnet("router.bittorrent.com")
    assert outside_testnet("67.215.246.10")
    assert not outside_testnet("127.0.0.9")
    assert not outside_testnet("10.231.1.3")
    transport = await UdpDatagrams.bind("127.0.0.1", 0)
    try:
        with pytest.raises(AssertionError, match="outside the testnet"):
            await transport.send(b"ping", ("67.215.246.10", 6881))
    finally:
        await transport.aclose()
    assert dht_sends_outside == [("67.215.246.10", 6881)]
    dht_sends_outside.clear()


async def test_a_send_on_a_closed_socket_is_a_lost_datagram() -> None:
    transport = await UdpDatagrams.bind("127.0.0.1", 0)
    await transport.aclose()
    await transport.send(b"ping", ("127.0.0.1", 9))  # no error: the node is stopping


@pytest.mark.usefixtures("no_worker_thread")
async def test_a_literal_address_is_bound_without_a_worker_thread() -> None:
    for host in ("127.0.0.1", "::1"):
        transport = await UdpDatagrams.bind(host, 0)
        try:
            assert transport.local_address[0] == host
            assert transport.local_address[1] > 0
            other = await UdpDatagrams.bind(host, 0)
            try:
                await other.send(b"hello", transport.local_address)
                with anyio.fail_after(5):
                    assert await transport.receive() == (b"hello", other.local_address)
            finally:
                await other.aclose()
        finally:
            await transport.aclose()


async def test_a_name_is_resolved_and_a_busy_port_refused() -> None:
    named = await UdpDatagrams.bind("localhost", 0)
    try:
        assert named.local_address[0] in ("127.0.0.1", "::1")
    finally:
        await named.aclose()
    transport = await UdpDatagrams.bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match="in use"):
            await UdpDatagrams.bind("127.0.0.1", transport.local_address[1])
    finally:
        await transport.aclose()


async def test_work_handed_to_a_stopping_node_never_meets_its_closed_task_group() -> None:
    # A put returns at its quorum and leaves the rest to the node's task group. Handed over by
    # another task while the node stops, it met (on trio) a task group already closed to new
    # tasks: a RuntimeError, and the unstarted coroutine warned that it was never awaited.
    from peerkit.dht.node import DhtNode

    for _ in range(60):
        node = DhtNode(await UdpDatagrams.bind("127.0.0.1", 0), bootstrap=[])
        handed = 0
        with anyio.fail_after(10):
            async with anyio.create_task_group() as outside:
                async with anyio.create_task_group() as inside:
                    await inside.start(node.run)

                    async def hand_over(node: DhtNode) -> None:
                        nonlocal handed
                        while True:  # now and then: the group empties between hand-overs
                            group = node._tg  # what a put would hand its stragglers to
                            if group is not None:
                                group.start_soon(anyio.sleep, 0)
                                handed += 1
                            for _ in range(10):
                                await anyio.lowlevel.checkpoint()

                    outside.start_soon(hand_over, node)
                    await anyio.sleep(0.01)
                    inside.cancel_scope.cancel()
                await anyio.sleep(0.01)
                outside.cancel_scope.cancel()
        assert handed > 0


async def test_a_put_waiting_for_its_quorum_returns_when_the_node_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The puts past the caller's wait run in the node's task group. Stopped with the node, they
    # never told the caller, which waited until it was cancelled itself.
    from peerkit.dht.node import DhtNode

    ask = DhtNode.query
    asked = anyio.Event()

    async def silent_to_puts(self: DhtNode, node: Any, method: bytes, args: Any) -> Any:
        if method == b"put":
            asked.set()
            await anyio.sleep_forever()  # (the node stops meanwhile)
        return await ask(self, node, method, args)

    monkeypatch.setattr(DhtNode, "query", silent_to_puts)
    alice = Identity.generate()
    async with loopback_dht(6, base=40) as nodes:
        putter = DhtNode(await UdpDatagrams.bind("127.0.0.60", 0), bootstrap=[nodes[0].address])
        item = MutableItem.create(alice.sign, alice.id.key, b"never stored", 1, b"")
        async with anyio.create_task_group() as outside:
            async with anyio.create_task_group() as inside:
                await inside.start(putter.run)
                with anyio.fail_after(10):
                    while len(putter.table) < 5:
                        await anyio.sleep(0.02)

                async def put_then_stop() -> None:
                    with anyio.fail_after(10):
                        result = await putter.put(item)
                    assert result.stored == 0
                    outside.cancel_scope.cancel()

                outside.start_soon(put_then_stop)
                with anyio.fail_after(10):
                    await asked.wait()  # the lookup is done and the puts are asked: none answers
                await anyio.sleep(0.1)
                inside.cancel_scope.cancel()
            with anyio.fail_after(5):
                await anyio.sleep_forever()  # until the put returned (it cancels this)
