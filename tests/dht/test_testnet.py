"""DHT nodes on an in-memory testnet: they join, put and get BEP 44 items, and survive losing a
quarter of the network with no stale read."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator

import anyio
import anyio.abc
import pytest

from peerkit import Identity
from peerkit.dht.bep44 import MutableItem
from peerkit.dht.node import DhtNode
from peerkit.dht.record import SALT, fit_record, new_locator_key, open_item, sealed_item
from peerkit.dht.transport import MemoryDatagramNetwork

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def running_testnet(
    count: int, network: MemoryDatagramNetwork | None = None
) -> AsyncIterator[list[tuple[DhtNode, anyio.CancelScope]]]:
    """``count`` running nodes; each joins through the first and up to three earlier ones."""
    net = network or MemoryDatagramNetwork(seed=1)
    rng = random.Random(2)
    nodes: list[tuple[DhtNode, anyio.CancelScope]] = []
    async with anyio.create_task_group() as tg:
        net.run_delays_in(tg)

        async def run(
            node: DhtNode, scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
        ) -> None:
            with scope:
                await node.run(task_status=task_status)

        for _ in range(count):
            earlier = [n.address for n, _ in nodes]
            bootstrap = earlier[:1] + rng.sample(earlier[1:], min(3, len(earlier) - 1)) if earlier else []
            node = DhtNode(net.bind(), bootstrap=bootstrap)
            scope = anyio.CancelScope()
            await tg.start(run, node, scope)
            nodes.append((node, scope))
        # Let the joins finish (each node looked itself up through what it found).
        await anyio.sleep(0.5)
        try:
            yield nodes
        finally:
            tg.cancel_scope.cancel()


def item(identity: Identity, value: bytes, seq: int) -> MutableItem:
    return MutableItem.create(identity.sign, identity.id.key, value, seq, b"peerkit")


async def test_an_item_put_on_one_node_is_read_from_another() -> None:
    alice = Identity.generate()
    async with running_testnet(60) as nodes:
        assert all(len(node.table) >= 8 for node, _ in nodes)
        writer, reader = nodes[7][0], nodes[41][0]
        first = item(alice, b"where alice is", 1)
        result = await writer.put(first)
        assert result.stored >= 8
        got = await reader.get(alice.id.key, b"peerkit")
        assert got == first
        assert await reader.get(Identity.generate().id.key, b"peerkit") is None  # nothing there


async def test_a_quarter_of_the_nodes_die_and_no_read_is_stale() -> None:
    alice = Identity.generate()
    async with running_testnet(100) as nodes:
        writer = nodes[3][0]
        assert (await writer.put(item(alice, b"v1", 1))).stored >= 8
        rng = random.Random(5)
        victims = rng.sample(nodes[10:], 25)
        for _, scope in victims:
            scope.cancel()
        await anyio.sleep(0.1)
        newer = item(alice, b"v2", 2)
        assert (await writer.put(newer)).stored >= 4
        alive = [n for n, s in nodes[10:] if (n, s) not in victims]
        readers = rng.sample(alive, 10)
        with anyio.fail_after(30):
            results = []
            async with anyio.create_task_group() as tg:

                async def read(node: DhtNode) -> None:
                    results.append(await node.get(alice.id.key, b"peerkit"))

                for node in readers:
                    tg.start_soon(read, node)
        assert [r.seq if r else None for r in results] == [2] * 10  # no stale read, none missing
        # An older seq is refused (302) by nodes that hold the newer one.
        refused = await writer.put(item(alice, b"v0", 1))
        assert refused.refused.get(302, 0) >= 4


async def test_a_sealed_record_travels_through_the_testnet() -> None:
    alice = Identity.generate()
    locator = new_locator_key()
    envelope = fit_record(
        alice, 11, nickname="alice", endpoint_name="laptop", endpoints=[("192.0.2.5", 7000)]
    )
    async with running_testnet(30) as nodes:
        assert (await nodes[2][0].put(sealed_item(alice, envelope, 11, locator))).stored >= 8
        found = await nodes[25][0].get(alice.id.key, SALT)
        assert found is not None
        assert open_item(found, locator) == envelope


async def test_a_republish_is_skipped_while_enough_fresh_copies_are_held() -> None:
    alice = Identity.generate()
    async with running_testnet(40) as nodes:
        writer = nodes[4][0]
        first = item(alice, b"here", 1)
        assert (await writer.put(first, skip_above=8)).stored >= 9  # nobody held it: stored
        again = await writer.put(first, skip_above=8)
        assert again.skipped
        assert again.copies > 8
        assert again.stored == 0
        assert not (await writer.put(item(alice, b"moved", 2), skip_above=8)).skipped  # a new value
