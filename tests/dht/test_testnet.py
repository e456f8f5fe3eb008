"""DHT nodes on an in-memory testnet: they join, put and get BEP 44 items, and survive losing a
quarter of the network with no stale read."""

from __future__ import annotations

import contextlib
import random
from typing import Any

import anyio
import anyio.abc
import pytest

from peerkit import Identity
from peerkit.dht.bep44 import MutableItem
from peerkit.dht.krpc import Node, Query, Response, parse
from peerkit.dht.node import MAX_DATAGRAM, POLITE_BURST, PUT_QUORUM, QUERY_TIMEOUT, DhtNode
from peerkit.dht.record import SALT, fit_record, new_locator_key, open_item, sealed_item
from peerkit.dht.routing import distance
from peerkit.dht.testnet import memory_testnet

pytestmark = pytest.mark.anyio


def item(identity: Identity, value: bytes, seq: int) -> MutableItem:
    return MutableItem.create(identity.sign, identity.id.key, value, seq, b"peerkit")


async def test_an_item_put_on_one_node_is_read_from_another() -> None:
    alice = Identity.generate()
    async with memory_testnet(60) as testnet:
        nodes = testnet.nodes
        assert all(len(node.table) >= 8 for node in nodes)
        writer, reader = nodes[7], nodes[41]
        first = item(alice, b"where alice is", 1)
        result = await writer.put(first)
        assert result.stored >= 8
        got = await reader.get(alice.id.key, b"peerkit")
        assert got == first
        assert await reader.get(Identity.generate().id.key, b"peerkit") is None  # nothing there


async def test_a_quarter_of_the_nodes_die_and_no_read_is_stale() -> None:
    alice = Identity.generate()
    async with memory_testnet(100) as testnet:
        nodes = testnet.nodes
        writer = nodes[3]
        assert (await writer.put(item(alice, b"v1", 1))).stored >= 8
        rng = random.Random(5)
        victims = rng.sample(nodes[10:], 25)
        for victim in victims:
            testnet.kill(victim)
        await anyio.sleep(0.1)
        newer = item(alice, b"v2", 2)
        assert (await writer.put(newer)).stored >= 4
        alive = [n for n in testnet.alive() if n in nodes[10:]]
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
    async with memory_testnet(30) as testnet:
        nodes = testnet.nodes
        assert (await nodes[2].put(sealed_item(alice, envelope, 11, locator))).stored >= 8
        found = await nodes[25].get(alice.id.key, SALT)
        assert found is not None
        assert open_item(found, locator) == [envelope]


async def test_a_republish_is_skipped_while_enough_fresh_copies_are_held() -> None:
    alice = Identity.generate()
    async with memory_testnet(40) as testnet:
        writer = testnet.nodes[4]
        first = item(alice, b"here", 1)
        assert (await writer.put(first, skip_above=8)).stored >= 8  # nobody held it: stored
        await anyio.sleep(0.1)  # the puts past the quorum land too
        again = await writer.put(first, skip_above=8)
        assert again.skipped
        assert again.copies > 8
        assert again.stored == 0
        assert not (await writer.put(item(alice, b"moved", 2), skip_above=8)).skipped  # a new value


async def test_a_put_returns_once_a_quorum_stored_it_and_the_rest_land_later() -> None:
    alice = Identity.generate()
    first = item(alice, b"here", 1)
    async with memory_testnet(40) as testnet:
        writer = testnet.nodes[0]
        nearest = sorted(testnet.nodes[1:], key=lambda n: distance(n.id, first.target))[:20]
        slow = nearest[:6]
        held: list[anyio.Event] = []

        def holding_puts(node: DhtNode) -> None:
            receive = node._received

            async def received(data: bytes, source: tuple[str, int]) -> None:
                if b"1:q3:put" in data:  # this node is slow to take puts
                    released = anyio.Event()
                    held.append(released)
                    await released.wait()
                await receive(data, source)

            node._received = received  # type: ignore[method-assign]

        for node in slow:
            holding_puts(node)
        with anyio.fail_after(1.5):  # well before a query's 2 s timeout
            result = await writer.put(first)
        assert result.stored >= PUT_QUORUM
        assert all(node.store.get(first.target, anyio.current_time()) is None for node in slow)
        for released in held:
            released.set()
        await anyio.sleep(0.1)  # the puts past the quorum were still under way: they land
        assert all(node.store.get(first.target, anyio.current_time()) == first for node in slow)


async def test_a_node_nobody_can_reach_goes_read_only_and_one_reached_serves() -> None:
    async with memory_testnet(30) as testnet:
        net = testnet.network

        async def started(node: DhtNode, tg: anyio.abc.TaskGroup) -> DhtNode:
            await tg.start(node.run)
            return node

        async with anyio.create_task_group() as tg:
            bootstrap = [testnet.nodes[0].address]
            behind_nat = await started(
                DhtNode(
                    net.bind(firewalled=True), bootstrap=bootstrap, read_only=None, reachability_window=1.0
                ),
                tg,
            )
            open_one = await started(
                DhtNode(net.bind(), bootstrap=bootstrap, read_only=None, reachability_window=1.0), tg
            )
            assert behind_nat.status().reachable is None  # not known yet
            # A newcomer that heard of both (from a saved table, say) asks them: the open node
            # hears a query it did not ask for; the one behind the NAT never sees it.
            await started(DhtNode(net.bind(), bootstrap=[open_one.address, behind_nat.address]), tg)
            await anyio.sleep(1.3)
            assert open_one.status().reachable is True
            assert not open_one.status().read_only
            nat = behind_nat.status()
            assert nat.reachable is False
            assert nat.read_only
            assert nat.nodes >= 4  # it still reads and writes through the others
            alice = Identity.generate()
            assert (await behind_nat.put(item(alice, b"from behind a NAT", 1))).stored >= 8
            got = await open_one.get(alice.id.key, b"peerkit")
            assert got is not None
            assert got.value == item(alice, b"from behind a NAT", 1).value
            # It says it is read-only in its queries: a node it asks does not keep it.
            fresh = await started(DhtNode(net.bind()), tg)
            assert isinstance(await behind_nat.query(Node(fresh.id, fresh.address), b"ping", {}), Response)
            assert not fresh.table.contains(behind_nat.address)
            assert await open_one.query(Node(fresh.id, fresh.address), b"ping", {}) is not None
            assert fresh.table.contains(open_one.address)
            tg.cancel_scope.cancel()


async def test_two_values_under_one_seq_are_told_apart_alike_by_every_reader() -> None:
    # libtorrent takes a new value at the seq it holds; peerkit nodes refuse it (302). Readers
    # that meet both pick the same one: the value more of the nearest nodes hold (the rule itself
    # is checked in test_dht_state).
    alice = Identity.generate()
    first, other = item(alice, b"first", 5), item(alice, b"other", 5)
    async with memory_testnet(40) as testnet:
        assert (await testnet.nodes[0].put(first)).stored >= 8
        await anyio.sleep(0.1)
        nearest = sorted(testnet.nodes[1:], key=lambda n: distance(n.id, first.target))
        now = anyio.current_time()
        readers = testnet.nodes[20:26]
        for node in nearest[:15]:  # most of the nodes that hold it now hold the other one
            if node.store.get(first.target, now) is not None:  # (a put returns at its quorum)
                node.store._drop(first.target)
            node.store.put(other, now)
        assert [await r.get(alice.id.key, b"peerkit") for r in readers] == [other] * len(readers)


async def test_a_datagram_longer_than_any_krpc_message_is_dropped_unread() -> None:
    async with memory_testnet(3) as testnet:
        asker, target = testnet.nodes[0], testnet.nodes[1]
        peer = Node(target.id, target.address)
        assert isinstance(await asker.query(peer, b"ping", {b"pad": bytes(1500)}), Response)
        with anyio.fail_after(QUERY_TIMEOUT + 1):
            assert await asker.query(peer, b"ping", {b"pad": bytes(MAX_DATAGRAM)}) is None


async def test_a_node_behind_a_nat_learns_its_public_address_from_the_answers() -> None:
    async with memory_testnet(20) as testnet:
        net = testnet.network
        public = ("203.0.113.7", 40001)  # the router's address and the port it mapped
        async with anyio.create_task_group() as tg:
            behind = DhtNode(net.bind("192.168.1.20", public=public), bootstrap=[testnet.nodes[0].address])
            await tg.start(behind.run)
            with anyio.fail_after(10):
                while behind.status().external_address is None:
                    await anyio.sleep(0.1)
            assert behind.status().external_address == public
            assert testnet.nodes[3].status().external_address == testnet.nodes[3].address  # no NAT
            # It reads and writes through the others like any node (behind its NAT).
            alice = Identity.generate()
            assert (await behind.put(item(alice, b"behind a NAT", 1))).stored >= 8
            tg.cancel_scope.cancel()


async def test_the_addresses_of_one_ipv6_slash_48_share_one_budget_of_answers() -> None:
    # A /48's addresses (2**80 of them) are free to whoever has it: one budget of answers, not one
    # each. 60 addresses in one /48 ask twice each at once; a node of another /48 is answered.
    async with memory_testnet(3) as testnet:
        target = testnet.nodes[0].address
        ends = [testnet.network.bind(f"2001:db8:1:{n:x}::1") for n in range(60)]
        ends.append(testnet.network.bind("2001:db8:2::1"))
        answered = [0] * len(ends)

        async def ask(n: int) -> None:
            for tid in range(2):
                await ends[n].send(Query(bytes([tid, 0]), b"ping", {b"id": bytes(20)}).encode(), target)
            while True:
                await ends[n].receive()
                answered[n] += 1

        async with anyio.create_task_group() as tg:
            for n in range(len(ends)):
                tg.start_soon(ask, n)
            await anyio.sleep(1)
            tg.cancel_scope.cancel()
        assert sum(answered[:-1]) <= 4 * POLITE_BURST + 20  # (the budget, and a second's refill)
        assert answered[-1] == 2
        for end in ends:
            await end.aclose()


async def test_puts_from_the_addresses_of_one_slash_48_push_out_only_their_own_items() -> None:
    # The items a node stores are shared by the groups that put them: another /48's item stays
    # while six addresses of one /48 put more than the store holds.
    async with memory_testnet(3) as testnet:
        holder = testnet.nodes[0]
        holder.store.max_items = 4
        ends = [testnet.network.bind("2001:db8:2::1")]
        ends += [testnet.network.bind(f"2001:db8:1:{n:x}::1") for n in range(6)]
        puts = [item(Identity.generate(), b"x", 1) for _ in ends]
        async with contextlib.AsyncExitStack() as closing:
            for end in ends:
                closing.push_async_callback(end.aclose)
            await put_each(holder.address, ends, puts)
        now = anyio.current_time()
        assert holder.store.get(puts[0].target, now) == puts[0]
        assert [holder.store.get(put.target, now) is not None for put in puts[1:]] == [False] * 3 + [True] * 3
        assert holder.store.held_by("2001:db8:1::/48") == 3


async def put_each(address: tuple[str, int], ends: list[Any], puts: list[MutableItem]) -> None:
    """Each end gets a write token from the node at ``address`` and puts its item there."""
    for n, (end, put) in enumerate(zip(ends, puts, strict=True)):
        query = Query(bytes([n, 0]), b"get", {b"id": bytes(20), b"target": put.target})
        await end.send(query.encode(), address)
        with anyio.fail_after(5):
            got, _ = await end.receive()
        answer = parse(got)
        assert isinstance(answer, Response)
        args = {b"id": bytes(20), b"token": answer.values[b"token"], b"k": put.key, b"salt": put.salt}
        args |= {b"seq": put.seq, b"sig": put.sig, b"v": put.decoded()}
        await end.send(Query(bytes([n, 1]), b"put", args).encode(), address)
        with anyio.fail_after(5):
            stored = parse((await end.receive())[0])
        assert isinstance(stored, Response), stored


async def test_one_address_that_queries_under_many_ids_holds_one_place_in_the_table() -> None:
    async with memory_testnet(3) as testnet:
        target = testnet.nodes[0]
        end = testnet.network.bind("10.66.6.6")
        async with contextlib.AsyncExitStack() as closing:
            closing.push_async_callback(end.aclose)
            for n in range(30):  # (within the budget of answers: a second's worth and more)
                ping = Query(bytes([n, 0]), b"ping", {b"id": random.randbytes(20)})
                await end.send(ping.encode(), target.address)
                with anyio.fail_after(5):
                    await end.receive()
        assert [node.address[0] for node in target.table.nodes()].count("10.66.6.6") == 1
