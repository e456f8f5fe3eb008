"""Nodes reached through relays: a node behind a firewall keeps a reservation, publishes the relay
in its record, and is invited and streamed to through it; the relay's refusals and its end."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from conftest import ACCEPTED, CHAT, accept_all

from peerkit import (
    EndPoint,
    Identity,
    KeepalivePolicy,
    Node,
    PeerId,
    PeerUnreachable,
    RelayPolicy,
    Scope,
)
from peerkit.discovery.memory import MemoryDiscovery
from peerkit.net.channel import SecureChannel
from peerkit.node import reaching
from peerkit.node.reaching import AUTO_BURST, AUTO_GAP
from peerkit.testing import MemoryNetwork

pytestmark = pytest.mark.anyio

RELAY_HOST, BOB_HOST, ALICE_HOST = "10.0.0.1", "10.0.1.2", "10.0.2.3"


async def eventually(check: object, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not check():  # type: ignore[operator]
            await anyio.sleep(0.02)


@asynccontextmanager
async def behind_a_firewall(
    *, contact: bool = True, policy: RelayPolicy | bool = True, keepalive: KeepalivePolicy | None = None
) -> AsyncIterator[tuple[MemoryNetwork, Node, Node, Node]]:
    """A relay, bob behind a firewall keeping a reservation on it, and alice; all signed in."""
    net, medium = MemoryNetwork(), MemoryDiscovery()
    bob_id = Identity.generate()
    relay = Node(
        nickname="relay", identity=Identity.generate(), network=net, listen=(RELAY_HOST, 7000), relay=policy
    )
    async with relay:
        if contact:
            await relay.contacts.add(bob_id.id, nickname="bob")
        net.firewall(BOB_HOST)
        through = EndPoint(RELAY_HOST, 7000, relay=relay.id)
        bob = Node(
            nickname="bob",
            identity=bob_id,
            network=net,
            listen=(BOB_HOST, 7000),
            discovery=[medium],
            relays=[through],
            keepalive=keepalive,
        )
        alice = Node(
            nickname="alice",
            identity=Identity.generate(),
            network=net,
            listen=(ALICE_HOST, 7000),
            discovery=[medium],
        )
        async with bob, alice:
            await bob.register_application(CHAT)
            await alice.register_application(CHAT)
            await bob.sign_in(Scope.NEAR_ME)
            await alice.sign_in(Scope.NEAR_ME)
            yield net, relay, bob, alice


async def test_a_firewalled_node_is_invited_and_streamed_to_through_its_relay() -> None:
    async with behind_a_firewall() as (_, relay, bob, alice):
        await eventually(lambda: bob.reach().reservations)
        assert bob.reach().reservations == (EndPoint(RELAY_HOST, 7000, relay=relay.id),)
        # Bob's record names the relay: alice sees it beside his own (unreachable) address.
        await eventually(lambda: any(e.relay for p in alice.nearby() for e in p.endpoints))
        (seen,) = alice.nearby()
        assert EndPoint(RELAY_HOST, 7000, relay=relay.id) in seen.endpoints
        assert EndPoint(BOB_HOST, 7000) in seen.endpoints

        relays: list[object] = []

        async def accept(invitation):  # type: ignore[no-untyped-def]
            relays.append(invitation.relay)
            return await accept_all(invitation)

        bob.add_invitation_handler(CHAT, accept)

        async def echo(stream):  # type: ignore[no-untyped-def]
            relays.append(stream.relay)
            async with stream:
                await stream.send((await stream.receive()).upper())

        bob.add_stream_handler(CHAT, echo)
        response = await seen.invite(CHAT, message="hi")
        assert response == ACCEPTED
        async with await seen.open_stream(CHAT) as stream:
            assert stream.relay == (RELAY_HOST, 7000)
            await stream.send(b"hello")
            assert await stream.receive() == b"HELLO"
        assert relays == [(RELAY_HOST, 7000), (RELAY_HOST, 7000)]  # bob's events say it came relayed
        reach = relay.reach()
        assert reach.relaying
        assert reach.reserved_here == 1
        assert reach.stats is not None
        assert reach.stats.circuits >= 2
        assert reach.stats.carried > 0


async def test_a_closed_relay_refuses_a_stranger_and_the_node_stays_unreachable() -> None:
    async with behind_a_firewall(contact=False) as (_, relay, bob, alice):
        await anyio.sleep(0.5)
        assert bob.reach().reservations == ()
        assert relay.reach().reserved_here == 0
        await eventually(alice.nearby)
        (seen,) = alice.nearby()
        assert all(e.relay is None for e in seen.endpoints)
        with pytest.raises(PeerUnreachable):
            await seen.invite(CHAT, timeout=3)


async def test_a_node_that_is_not_a_relay_refuses_reservations() -> None:
    async with behind_a_firewall(policy=False) as (_, relay, bob, _alice):
        await anyio.sleep(0.5)
        assert bob.reach().reservations == ()
        assert not relay.reach().relaying


async def test_when_the_relay_goes_the_record_stops_naming_it() -> None:
    async with behind_a_firewall(keepalive=KeepalivePolicy(interval=0.5, timeout=0.5)) as (
        net,
        _relay,
        bob,
        alice,
    ):
        await eventually(lambda: any(e.relay for p in alice.nearby() for e in p.endpoints))
        net.freeze(RELAY_HOST)  # the relay is gone: keepalives find out
        await eventually(lambda: not bob.reach().reservations)
        await eventually(lambda: not any(e.relay for p in alice.nearby() for e in p.endpoints))


def test_relays_must_name_the_relay() -> None:
    with pytest.raises(TypeError, match="relay=PeerId"):
        Node(identity=Identity.generate(), relays=[EndPoint("10.0.0.1", 7000)])
    with pytest.raises(TypeError, match="relay must be a bool or a RelayPolicy"):
        Node(identity=Identity.generate(), relay="yes")  # type: ignore[arg-type]


def test_a_punch_dials_the_public_address_or_behind_the_same_nat_the_own_ones() -> None:
    from peerkit.node.reaching import Reaching

    theirs = [("11.231.1.3", 40001), ("10.231.2.5", 40001)]
    assert Reaching._targets(theirs, "11.231.1.4") == [("11.231.1.3", 40001)]  # across the Internet
    assert Reaching._targets(theirs, "11.231.1.3") == [("10.231.2.5", 40001)]  # the same NAT: the LAN
    assert Reaching._targets(theirs[1:], None) == [("10.231.2.5", 40001)]  # nothing public: what there is


def test_strangers_punch_at_most_three_quarters_of_the_holes_and_contacts_the_rest() -> None:
    from peerkit.node.reaching import MAX_PUNCHES, MAX_PUNCHES_PER_PEER, may_punch

    contacts = {Identity.generate().id for _ in range(8)}
    strangers = [Identity.generate().id for _ in range(8)]
    punching: dict[PeerId, int] = {}
    for stranger in strangers:  # strangers with new ids, as many as they like
        while may_punch(punching, stranger, contacts.__contains__):
            punching[stranger] = punching.get(stranger, 0) + 1
    assert sum(punching.values()) == MAX_PUNCHES * 3 // 4
    assert max(punching.values()) == MAX_PUNCHES_PER_PEER
    for contact in contacts:
        while may_punch(punching, contact, contacts.__contains__):
            punching[contact] = punching.get(contact, 0) + 1
    assert sum(punching.values()) == MAX_PUNCHES  # the quarter kept went to contacts
    assert not may_punch(punching, Identity.generate().id, contacts.__contains__)


async def test_over_memory_a_relayed_channel_stays_relayed_and_no_punch_is_tried() -> None:
    async with behind_a_firewall() as (_, _relay, bob, alice):
        await eventually(lambda: any(e.relay for p in alice.nearby() for e in p.endpoints))
        (seen,) = alice.nearby()
        bob.add_invitation_handler(CHAT, accept_all)
        assert await seen.invite(CHAT) == ACCEPTED
        await anyio.sleep(0.1)
        assert (alice.reach().punched, alice.reach().punch_failures) == (0, 0)  # (TCP only)


async def test_trace_tries_every_way_and_says_how_long_each_took() -> None:
    async with behind_a_firewall() as (_, relay, bob, alice):
        await eventually(lambda: any(e.relay for p in alice.nearby() for e in p.endpoints))
        steps = await alice.trace(bob.id, timeout=2)
        ways = [(s.way, s.endpoint, s.ok) for s in steps]
        assert ways == [
            ("resolve", None, True),
            ("direct", EndPoint(BOB_HOST, 7000), False),
            ("relayed", EndPoint(RELAY_HOST, 7000, relay=relay.id), True),
        ]  # (no punch over a network in memory)
        assert "timed out" in steps[1].detail
        assert all(0 <= s.seconds < 2 for s in steps)
        await anyio.sleep(0.1)
        assert bob.channels(alice.id) == 0  # every channel it opened was closed again
        with pytest.raises(ValueError, match="own id"):
            await alice.trace(alice.id)
        with pytest.raises(ValueError, match="trace timeout"):
            await alice.trace(bob.id, timeout=0)


@pytest.mark.parametrize("what", ["invitation", "stream"])
async def test_a_silent_address_first_in_the_record_costs_a_stagger_not_a_timeout(what: str) -> None:
    async with behind_a_firewall() as (net, _relay, bob, alice):
        net.firewall(BOB_HOST, silent=True)  # SYNs to bob's own address are dropped
        await eventually(lambda: any(e.relay for p in alice.nearby() for e in p.endpoints))
        (seen,) = alice.nearby()
        assert seen.endpoints[0] == EndPoint(BOB_HOST, 7000)  # tried first
        bob.add_invitation_handler(CHAT, accept_all)

        async def echo(stream):  # type: ignore[no-untyped-def]
            async with stream:
                await stream.send(await stream.receive())

        bob.add_stream_handler(CHAT, echo)
        start = anyio.current_time()
        with anyio.fail_after(3):  # (the handshake timeout is 10 s)
            if what == "invitation":
                assert await seen.invite(CHAT) == ACCEPTED
            else:
                async with await seen.open_stream(CHAT) as stream:
                    assert stream.relay == (RELAY_HOST, 7000)
                    await stream.send(b"x")
                    assert await stream.receive() == b"x"
        assert anyio.current_time() - start < 1.5


PUBLIC_RELAY, PUBLIC_ALICE = "11.0.0.1", "11.0.2.3"  # public addresses (the rest are private)


@asynccontextmanager
async def contact_relay(
    *, bob_host: str = BOB_HOST, mutual: bool = True, relay: bool = True, firewall: bool | None = None
) -> AsyncIterator[tuple[MemoryNetwork, Node, Node]]:
    """A relay at a public address (serving its contacts) and bob, its contact, with a channel
    open to it (as watching it would open) and no relays configured."""
    net, medium = MemoryNetwork(), MemoryDiscovery()
    bob_id = Identity.generate()
    host = Node(
        nickname="relay",
        identity=Identity.generate(),
        network=net,
        listen=(PUBLIC_RELAY, 7000),
        relay=relay,
        discovery=[medium],
    )
    async with host:
        if mutual:
            await host.contacts.add(bob_id.id, nickname="bob")
        await host.sign_in(Scope.NEAR_ME)
        if firewall if firewall is not None else bob_host == BOB_HOST:
            net.firewall(bob_host)
        bob = Node(nickname="bob", identity=bob_id, network=net, listen=(bob_host, 7000), discovery=[medium])
        async with bob:
            await bob.register_application(CHAT)
            await bob.sign_in(Scope.ALL)  # (relays among contacts are for the Internet scope)
            await bob.contacts.add(host.id, nickname="relay", endpoints=[host.endpoint])
            await bob.peer_at(PUBLIC_RELAY, 7000, host.id)
            yield net, host, bob


async def test_a_node_that_cannot_be_reached_keeps_a_reservation_on_a_contact_that_relays() -> None:
    async with contact_relay() as (net, relay, bob):
        assert relay.reach().reachable  # a public address of its own: its record says it relays
        assert not bob.reach().reachable  # a private address, no mapping
        expected = EndPoint(PUBLIC_RELAY, 7000, relay=relay.id)
        await eventually(lambda: bob.reach().reservations == (expected,))
        assert bob.reach().auto_relays == (expected,)
        assert bob.reach().relays == ()  # none configured
        # A stranger elsewhere reaches bob through it.
        async with Node(
            nickname="alice",
            identity=Identity.generate(),
            network=net,
            listen=(ALICE_HOST, 7000),
            discovery=[relay._providers[0]],
        ) as alice:
            await alice.register_application(CHAT)
            await alice.sign_in(Scope.NEAR_ME)
            bob.add_invitation_handler(CHAT, accept_all)
            await eventually(
                lambda: any(e.relay for p in alice.nearby() if p.id == bob.id for e in p.endpoints)
            )
            peer = next(p for p in alice.nearby() if p.id == bob.id)
            assert await peer.invite(CHAT, timeout=5) == ACCEPTED


async def test_a_node_that_can_be_reached_keeps_no_reservation_and_lets_go_once_it_can() -> None:
    async with contact_relay() as (net, _relay, bob):
        await eventually(lambda: bob.reach().auto_relays)
        await bob.sign_out(Scope.INTERNET)  # only near me: nobody elsewhere looks for him
        await eventually(lambda: not bob.reach().auto_relays and not bob.reach().reservations)
        await bob.sign_in(Scope.INTERNET)
        await eventually(lambda: bob.reach().auto_relays)  # (its answer was remembered)
        # Bob's firewall goes, and a peer at a public address dials him: he can be reached.
        net.firewall(BOB_HOST, on=False)
        async with Node(identity=Identity.generate(), network=net, listen=(PUBLIC_ALICE, 7000)) as alice:
            await bob.contacts.add(alice.id, nickname="alice")
            await alice.peer_at(BOB_HOST, 7000, bob.id)
            await eventually(lambda: bob.reach().reachable)
            await eventually(lambda: not bob.reach().auto_relays and not bob.reach().reservations)
    async with contact_relay(bob_host="11.0.1.2") as (_, _relay, bob):  # a public address of his own
        assert bob.reach().reachable
        await anyio.sleep(0.3)
        assert bob.reach().auto_relays == ()


@pytest.mark.parametrize("how", ["not-a-relay", "not-its-contact"])
async def test_a_contact_that_does_not_relay_for_it_is_not_kept(how: str) -> None:
    async with contact_relay(relay=how != "not-a-relay", mutual=how != "not-its-contact") as (_, _relay, bob):
        await anyio.sleep(0.5)  # asked, and (not its contact) refused
        assert bob.reach().auto_relays == ()
        assert bob.reach().reservations == ()


async def test_a_public_address_behind_a_firewall_is_found_out_by_a_dial_back() -> None:
    # Nothing but a contact dialling back tells a firewall that drops what it did not open.
    async with contact_relay(bob_host="11.0.1.2", firewall=True) as (_, relay, bob):
        expected = EndPoint(PUBLIC_RELAY, 7000, relay=relay.id)
        await eventually(lambda: bob.reach().auto_relays == (expected,))
        assert not bob.reach().reachable
        await eventually(lambda: bob.reach().reservations == (expected,))


async def test_dialback_is_for_contacts_over_direct_channels_and_says_what_it_found() -> None:
    net = MemoryNetwork()
    async with Node(identity=Identity.generate(), network=net, listen=(PUBLIC_RELAY, 7000)) as helper:
        stranger, contact = Identity.generate(), Identity.generate()
        await helper.contacts.add(contact.id)
        async with await net.listen("11.0.3.4", 7000) as listening:  # the contact's port, open

            async def ask(who: Identity, port: int) -> dict[str, object]:
                raw = await net.connect(PUBLIC_RELAY, 7000, local_host="11.0.3.4")
                async with await SecureChannel.wrap(
                    raw, who, initiator=True, expected_peer=helper.id
                ) as channel:
                    await channel.send({"t": "dialback", "rid": 1, "port": port})
                    with anyio.fail_after(10):
                        while True:
                            reply: dict[str, object] = await channel.receive()
                            if reply.get("rid") == 1:
                                return reply

            async with anyio.create_task_group() as tg:
                tg.start_soon(listening.serve, anyio.aclose_forcefully)
                refused = await ask(stranger, 7000)
                assert (refused["t"], refused["code"]) == ("error", "not-allowed")
                assert await ask(contact, 7000) == {"t": "dialback_reply", "rid": 1, "ok": True}
                assert await ask(contact, 7001) == {
                    "t": "dialback_reply",
                    "rid": 1,
                    "ok": False,
                }  # nothing there
                malformed = await ask(contact, 0)
                assert (malformed["t"], malformed["code"]) == ("error", "malformed")
                tg.cancel_scope.cancel()


async def test_contacts_that_come_at_once_cost_a_few_looks_at_reachability(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each look goes through the channels open: one per channel a contact opens would make a
    # thousand contacts coming at once cost a million steps. The looks come at once up to
    # AUTO_BURST, then one every AUTO_GAP seconds.
    gap = AUTO_GAP / 4
    monkeypatch.setattr(reaching, "AUTO_GAP", gap)
    async with contact_relay(firewall=False) as (net, _relay, bob):
        await eventually(lambda: bob.reach().auto_relays)
        await anyio.sleep(AUTO_BURST * gap)  # the looks that came at once are made up
        looks: list[float] = []
        evident = bob._reaching.reachability.evident

        def counted() -> bool | None:
            looks.append(anyio.current_time())
            return evident()

        monkeypatch.setattr(bob._reaching.reachability, "evident", counted)
        ids = [Identity.generate() for _ in range(20)]
        for identity in ids:
            await bob.contacts.add(identity.id)
        async with contextlib.AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(
                    Node(identity=identity, network=net, listen=(f"10.0.3.{i}", 7000))
                )
                for i, identity in enumerate(ids, 1)
            ]
            start = anyio.current_time()
            for node in nodes:  # one after another, each a look sooner
                await node.peer_at(BOB_HOST, 7000, bob.id)
            await eventually(lambda: all(bob.channels(node.id) for node in nodes))
            await anyio.sleep(1.5 * gap)
            took = anyio.current_time() - start
        assert 1 <= len(looks) <= AUTO_BURST + took / gap + 1
        assert not bob.reach().reachable  # (each look still says what it sees)


async def test_the_channels_the_reachability_looks_at_are_the_direct_ones_from_public_addresses() -> None:
    net = MemoryNetwork()
    async with Node(identity=Identity.generate(), network=net, listen=(BOB_HOST, 7000)) as bob:
        public = Node(identity=Identity.generate(), network=net, listen=(PUBLIC_ALICE, 7000))
        private = Node(identity=Identity.generate(), network=net, listen=(ALICE_HOST, 7000))
        async with public, private:
            await public.peer_at(BOB_HOST, 7000, bob.id)
            await private.peer_at(BOB_HOST, 7000, bob.id)
            await eventually(lambda: bob.channels(public.id) and bob.channels(private.id))
            assert [c.peer_id for c in bob._connections.public()] == [public.id]
            await bob.disconnect(public.id)
            assert bob._connections.public() == []
            assert bob.channels(private.id)


async def test_contacts_are_not_asked_whether_they_relay_once_enough_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reaching, "AUTO_RELAYS", 1)
    async with contact_relay() as (net, relay, bob):
        await eventually(lambda: bob.reach().auto_relays)
        carol = Node(identity=Identity.generate(), network=net, listen=(PUBLIC_ALICE, 7000))
        await bob.contacts.add(carol.id, nickname="carol")
        async with carol:
            await bob.peer_at(PUBLIC_ALICE, 7000, carol.id)  # a channel to a contact: a look
            await anyio.sleep(1.5 * AUTO_GAP)
            assert carol.id not in bob._reaching._asked  # one relay is kept: no one else is asked
            assert relay.id in bob._reaching._asked


async def test_an_open_relay_full_of_one_addresss_reservations_gives_one_to_another_address() -> None:
    net = MemoryNetwork()
    relay = Node(
        nickname="relay",
        identity=Identity.generate(),
        network=net,
        listen=(RELAY_HOST, 7000),
        relay=RelayPolicy(open=True, max_reservations=2),
    )
    async with relay, contextlib.AsyncExitStack() as stack:
        through = EndPoint(RELAY_HOST, 7000, relay=relay.id)

        async def reserving(host: str, port: int) -> Node:
            node = Node(identity=Identity.generate(), network=net, listen=(host, port), relays=[through])
            return await stack.enter_async_context(node)

        same = [await reserving("10.6.6.6", 7000 + n) for n in range(2)]
        await eventually(lambda: all(node.reach().reservations for node in same))
        carol = await reserving("10.7.7.7", 7000)
        await eventually(lambda: carol.reach().reservations)
        assert relay.reach().reserved_here == 2
        # The node whose reservation gave way is told at once ("unreserved"), not at its renewal a
        # minute later: it stops naming the relay; asking again, it is refused (its address holds
        # the other place), so carol keeps hers.
        await eventually(lambda: sum(bool(node.reach().reservations) for node in same) == 1, timeout=5)
        await anyio.sleep(1.5)  # (past its first retry)
        assert carol.reach().reservations
        assert sum(bool(node.reach().reservations) for node in same) == 1


def test_circuits_announced_while_full_are_ignored_with_one_warning_each_time_it_fills(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A relay may announce circuits in a loop: past MAX_TAKING they are ignored, and the log says
    # so once each time the node fills up, not once per announcement.
    from unittest.mock import Mock

    from peerkit.proto import relay as wire

    taking = reaching.Reaching(
        policy=None,
        relays=[],
        is_contact=lambda peer_id: False,
        connections=Mock(),
        network=Mock(),
        me=Mock(),
        changed=lambda: None,
    )
    control = Mock()
    relay = EndPoint("10.0.0.1", 7000, relay=Identity.generate().id)
    taking._reserved[relay] = control
    taking._tg = Mock()
    notice = {"t": "circuit", "token": bytes(wire.TOKEN_SIZE)}
    with caplog.at_level("WARNING", logger="peerkit.node.reaching"):
        taking._taking = reaching.MAX_TAKING
        for _ in range(50):
            taking.on_circuit(control, notice)
        assert len(caplog.records) == 1
        assert caplog.records[0].getMessage() == "ignoring circuits while 64 are being taken already"
        taking._taking -= 1  # (one was taken)
        taking.on_circuit(control, notice)
        assert taking._tg.start_soon.call_count == 1
        for _ in range(50):
            taking.on_circuit(control, notice)
        assert len(caplog.records) == 2
