"""What peers can make a node hold after the handshake is bounded: channels of strangers (per
source and in all), places kept for contacts, and application streams per peer."""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import pytest
from conftest import ACCEPTED, CHAT, accept_all

from peerkit import (
    AdmissionPolicy,
    AppStream,
    Identity,
    Node,
    NotAllowed,
    PeerUnreachable,
    ProtocolError,
    RequestPolicy,
)
from peerkit.node import requests as requests_part
from peerkit.proto.holdings import Holdings, HoldingsPolicy
from peerkit.testing import MemoryNetwork, nodes

pytestmark = pytest.mark.anyio


def limit(node: Node, **policy: int) -> None:
    node._connections.holdings = Holdings(HoldingsPolicy(**policy))


async def test_strangers_fill_their_places_and_a_contact_still_gets_in() -> None:
    network = MemoryNetwork()
    async with nodes(4, nicknames=["bob", "s1", "s2", "carol"], network=network) as (bob, s1, s2, carol):
        limit(bob, max_connections=2, max_strangers=2)
        await bob.contacts.add(carol.contacts.me)
        for stranger in (s1, s2):
            peer = await stranger.peer_at(bob.endpoint.host, bob.endpoint.port)
            with pytest.raises(NotAllowed):  # bob answers (a stranger sees nothing of him)
                await peer.get_presence()
        assert bob._connections.holdings.strangers == 2
        # A third stranger finds no place: its channel is closed, it is told so.
        s3_node = Node(nickname="s3", network=network, listen=("10.0.0.9", 0), discovery=[])
        async with s3_node as s3:

            async def ask_bob() -> None:
                peer = await s3.peer_at(bob.endpoint.host, bob.endpoint.port)
                await peer.get_presence()

            # Bob closes the channel right after the handshake: s3 is told at its dial, or at
            # its first request if the dial returned before the close.
            with pytest.raises(PeerUnreachable):
                await ask_bob()
        assert bob._connections.holdings.strangers == 2
        # A contact takes a stranger's place (the oldest of the busiest source).
        to_bob = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
        with pytest.raises(NotAllowed):
            await to_bob.get_presence()
        holdings = bob._connections.holdings
        with anyio.fail_after(5):
            while holdings.strangers != 1:
                await anyio.sleep(0.01)
        assert holdings.held == 2
        assert bob.channels(s1.id) == 0
        assert bob.channels(s2.id) == 1
        assert bob.channels(carol.id) == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_node_runs_the_control_channels_it_accepts_in_tasks_of_its_own() -> None:
    # As those it dials: the listener's task, with its coroutines and cancel scope, ends with the
    # handshake (1 KB less for each of a node's idle channels). Eviction and the release of the
    # place still work: see the test above.
    def chains() -> list[list[str]]:
        found = []
        for task in asyncio.all_tasks():
            chain, coro = [], task.get_coro()
            while coro is not None:
                chain.append(getattr(coro, "__qualname__", ""))
                coro = getattr(coro, "cr_await", None)
            found.append(chain)
        return found

    async with nodes(2, nicknames=["bob", "carol"]) as (bob, carol):
        await bob.contacts.add(carol.contacts.me)
        to_bob = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
        with pytest.raises(NotAllowed):  # (bob answers: the channel is open and served)
            await to_bob.get_presence()
        assert bob.channels(carol.id) == 1
        running = [chain for chain in chains() if "ControlChannel.run" in chain]
        assert len(running) == 2  # carol's, and bob's
        for chain in running:
            assert chain[0] in ("Connections._dial", "Connections._run")  # (the task's coroutine)


async def test_one_peer_opens_streams_until_refused_with_a_clear_error() -> None:
    async with nodes(2) as (alice, bob):
        limit(bob, max_streams_per_peer=3)
        for node in (alice, bob):
            await node.register_application(CHAT)
        release = anyio.Event()

        @bob.on_stream(CHAT)
        async def hold(stream: AppStream) -> None:
            await release.wait()

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        streams = [await peer.open_stream(CHAT) for _ in range(3)]
        with pytest.raises(ProtocolError, match="refused the stream: limit: too many streams from one peer"):
            await peer.open_stream(CHAT)
        assert bob._connections.holdings.streams_of(alice.id.key) == 3
        release.set()
        for stream in streams:
            await stream.aclose()
        with anyio.fail_after(5):
            while bob._connections.holdings.streams_of(alice.id.key):
                await anyio.sleep(0.01)
        async with await peer.open_stream(CHAT):  # counted down: one more is taken again
            pass


async def test_a_peer_over_its_request_budget_is_refused_then_disconnected(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(requests_part, "REFUSAL_DELAY", 0.3)
    budget = RequestPolicy(rate=0.001, burst=5, strikes=3)
    async with nodes(3, request_budget=budget) as (alice, bob, carol):
        for node in (alice, bob, carol):
            await node.register_application(CHAT)
        bob.add_invitation_handler(CHAT, accept_all)
        to_bob = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        for _ in range(5):
            assert await to_bob.invite(CHAT) is ACCEPTED
        for _ in range(2):
            start = anyio.current_time()
            with pytest.raises(
                ProtocolError, match=r"refused the invitation: limit: over 0.001 requests a second"
            ):
                await to_bob.invite(CHAT)
            # (the refusal waits: a peer that asks as fast as it is answered waits for its own)
            assert anyio.current_time() - start >= 0.3
        assert bob.channels(alice.id) == 1
        with pytest.raises(ProtocolError, match="limit"):
            await to_bob.invite(CHAT)  # the third refusal in a row: alice is disconnected
        with anyio.fail_after(5):
            while bob.channels(alice.id):
                await anyio.sleep(0.01)
        said = [r.getMessage() for r in caplog.records if r.name == "peerkit.node.connections"]
        assert said == ["disconnected 1 stranger: 1 over the request budget"]
        # Another peer is not affected.
        carol_to_bob = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert await carol_to_bob.invite(CHAT) is ACCEPTED


async def test_strangers_disconnected_over_their_budget_are_told_once_per_interval_contacts_each_time(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # New ids cost a stranger nothing: a line for each one disconnected would let it write to the
    # log without end. A contact's disconnection is told each time, by its fingerprint; the
    # strangers' not told yet are told when the node stops.
    monkeypatch.setattr(requests_part, "REFUSAL_DELAY", 0.01)
    budget = RequestPolicy(rate=0.001, burst=1, strikes=1)
    network = MemoryNetwork()
    async with nodes(1, nicknames=["bob"], network=network, request_budget=budget) as (bob,):
        others = [
            Node(nickname=f"p{n}", identity=Identity.generate(), network=network, listen=(f"10.0.0.{n}", 0))
            for n in range(1, 5)
        ]
        async with others[0] as s1, others[1] as s2, others[2] as s3, others[3] as dave:
            await bob.contacts.add(dave.contacts.me)
            for node in (bob, s1, s2, s3, dave):
                await node.register_application(CHAT)
            bob.add_invitation_handler(CHAT, accept_all)
            # (each has one request in its budget; dave, the second time, none)
            for node, within in ((s1, True), (s2, True), (s3, True), (dave, True), (dave, False)):
                peer = await node.peer_at(bob.endpoint.host, bob.endpoint.port)
                if within:
                    assert await peer.invite(CHAT) is ACCEPTED
                # (refused with "limit", or cut as the refusal goes: the disconnection may win)
                with pytest.raises((ProtocolError, PeerUnreachable), match=r"limit|closed"):
                    await peer.invite(CHAT)
                with anyio.fail_after(5):
                    while bob.channels(node.id) or node.channels(bob.id):
                        await anyio.sleep(0.01)
    said = [r.getMessage() for r in caplog.records if r.name == "peerkit.node.connections"]
    fingerprint = dave.id.fingerprint
    assert said == [
        "disconnected 1 stranger: 1 over the request budget",  # (the first: at once)
        f"disconnecting contact {fingerprint}: over the request budget",
        f"disconnecting contact {fingerprint}: over the request budget",
        "disconnected 2 strangers: 2 over the request budget",  # (the rest: when bob stopped)
    ]


async def test_strangers_disconnected_after_the_first_are_told_once_the_interval_is_over(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(requests_part, "REFUSAL_DELAY", 0.01)
    # (an interval the three strangers take less than: the rest is then told by the timer alone)
    monkeypatch.setattr("peerkit.proto.admission.REPORT_INTERVAL", 3.0)
    budget = RequestPolicy(rate=0.001, burst=1, strikes=1)
    network = MemoryNetwork()

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "peerkit.node.connections"]

    def told() -> int:
        return sum(int(line.split()[1]) for line in said())

    async with nodes(1, nicknames=["bob"], network=network, request_budget=budget) as (bob,):
        await bob.register_application(CHAT)
        bob.add_invitation_handler(CHAT, accept_all)
        for n in range(1, 4):
            async with Node(identity=Identity.generate(), network=network, listen=(f"10.0.0.{n}", 0)) as node:
                await node.register_application(CHAT)
                peer = await node.peer_at(bob.endpoint.host, bob.endpoint.port)
                assert await peer.invite(CHAT) is ACCEPTED
                with pytest.raises((ProtocolError, PeerUnreachable), match=r"limit|closed"):
                    await peer.invite(CHAT)
                with anyio.fail_after(5):
                    while bob.channels(node.id):
                        await anyio.sleep(0.01)
        with anyio.fail_after(10):  # (bob runs on, and no stranger comes to tell the rest)
            while told() < 3:
                await anyio.sleep(0.02)
        assert said() == [
            "disconnected 1 stranger: 1 over the request budget",  # (the first: at once)
            "disconnected 2 strangers: 2 over the request budget",  # (the rest: 3 s on)
        ]


@pytest.mark.anyio
async def test_first_of_staggers_ways_and_takes_the_first_that_works() -> None:
    from peerkit.node.connections import first_of

    started: list[int] = []
    late: list[str] = []

    def way(index: int, delay: float, fails: bool = False):  # type: ignore[no-untyped-def]
        async def attempt() -> str:
            started.append(index)
            await anyio.sleep(delay)
            if fails:
                raise PeerUnreachable(f"way {index} failed") from OSError(f"reason {index}")
            return f"way {index}"

        return attempt

    async def discard(value: str) -> None:
        late.append(value)

    start = anyio.current_time()
    # The first hangs: the second starts after the stagger and wins.
    assert await first_of([way(0, 10), way(1, 0.01), way(2, 0)], stagger=0.1, discard=discard) == (1, "way 1")
    assert anyio.current_time() - start < 1
    assert started == [0, 1]  # the third never had to start
    # One that fails lets the next start at once.
    started.clear()
    assert await first_of([way(0, 0, fails=True), way(1, 0)], stagger=5) == (1, "way 1")
    # All fail: one error that tells each (the same one once), from the first one's cause.
    with pytest.raises(PeerUnreachable) as failed:
        await first_of([way(0, 0, fails=True), way(1, 0, fails=True), way(1, 0, fails=True)])
    assert str(failed.value) == "way 0 failed; way 1 failed"
    assert str(failed.value.__cause__) == "reason 0"
    with pytest.raises(PeerUnreachable) as failed:  # only one way: its own error, as it is
        await first_of([way(2, 0, fails=True)])
    assert str(failed.value) == "way 2 failed"

    async def broken() -> str:
        raise ValueError("not a way")

    with pytest.raises(ValueError, match="not a way"):  # another error: at once, as it is
        await first_of([broken, way(1, 0)])


async def test_a_node_holds_what_its_holdings_policy_says_over_tcp() -> None:
    # Node(holdings=...) over TCP: the policy given, within the file descriptors (here far more).
    policy = HoldingsPolicy(max_connections=2, max_strangers=2)
    async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0), holdings=policy) as bob:
        assert bob._connections.holdings.policy.max_connections == 2
        async with contextlib.AsyncExitStack() as stack:
            strangers = [
                await stack.enter_async_context(Node(identity=Identity.generate(), listen=("127.0.0.1", 0)))
                for _ in range(3)
            ]
            for stranger in strangers[:2]:
                peer = await stranger.peer_at(bob.endpoint.host, bob.endpoint.port)
                with pytest.raises(NotAllowed):
                    await peer.get_presence()
            with pytest.raises(PeerUnreachable):  # no place left for the third
                await (await strangers[2].peer_at(bob.endpoint.host, bob.endpoint.port)).get_presence()
    with pytest.raises(TypeError, match="holdings must be a HoldingsPolicy, not dict"):
        Node(holdings={"max_connections": 2})  # type: ignore[arg-type]


async def test_the_listener_and_the_directory_know_the_nodes_contacts() -> None:
    # (what tests/net/test_channel.py and tests/node/test_nearby.py check of a listener and a
    # directory told who the contacts are: a node tells both, so that strangers' new ids never
    # push a contact's replay stamps out, nor keep its record out of the people near me)
    async with nodes(2, nicknames=["bob", "carol"]) as (bob, carol):
        assert bob._nearby._directory is not None
        for is_contact in (bob._listener.is_contact, bob._nearby._directory._is_contact):
            assert is_contact is not None
            assert not is_contact(carol.id)
        await bob.contacts.add(carol.contacts.me)
        for is_contact in (bob._listener.is_contact, bob._nearby._directory._is_contact):
            assert is_contact is not None
            assert is_contact(carol.id)
            assert not is_contact(Identity.generate().id)


async def test_strangers_of_one_address_share_a_request_budget_and_contacts_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(requests_part, "REFUSAL_DELAY", 0.01)
    # New ids cost nothing: two strangers at one address share its budget (5 requests here), a
    # contact at the same address has its own, and a stranger elsewhere too.
    budget = RequestPolicy(rate=0.001, burst=5, strikes=100)
    network = MemoryNetwork()
    async with nodes(2, nicknames=["bob", "carol"], network=network, request_budget=budget) as (bob, carol):
        others = [
            Node(
                nickname=name,
                identity=Identity.generate(),
                network=network,
                listen=("10.0.0.9", 0),
                discovery=[],
                request_budget=budget,
            )
            for name in ("s1", "s2", "dave")
        ]
        async with others[0] as s1, others[1] as s2, others[2] as dave:
            await bob.contacts.add(dave.contacts.me)
            for node in (bob, carol, s1, s2, dave):
                await node.register_application(CHAT)
            bob.add_invitation_handler(CHAT, accept_all)
            peers = [
                await node.peer_at(bob.endpoint.host, bob.endpoint.port) for node in (s1, s2, dave, carol)
            ]
            from_s1, from_s2, from_dave, from_carol = peers
            for _ in range(3):
                assert await from_s1.invite(CHAT) is ACCEPTED
            for _ in range(2):
                assert await from_s2.invite(CHAT) is ACCEPTED
            with pytest.raises(ProtocolError, match=r"over 0\.001 requests a second from one address"):
                await from_s2.invite(CHAT)  # s2's own budget has 3 left; its address's, none
            for _ in range(5):
                assert await from_dave.invite(CHAT) is ACCEPTED  # a contact: its own budget only
            assert await from_carol.invite(CHAT) is ACCEPTED  # another address


async def test_strangers_of_one_ipv6_slash_48_share_a_request_budget() -> None:
    # A /48's 65,536 /64s are free to whoever has it: its strangers share one budget, whatever
    # /64 they ask from; a stranger of another /48 has its own.
    budget = RequestPolicy(rate=0.001, burst=2, strikes=100)
    network = MemoryNetwork()
    async with nodes(1, nicknames=["bob"], network=network, request_budget=budget) as (bob,):
        hosts = ("2001:db8:1:1::9", "2001:db8:1:2::9", "2001:db8:2::9")
        others = [
            Node(
                nickname=f"s{n}",
                identity=Identity.generate(),
                network=network,
                listen=(host, 0),
                discovery=[],
            )
            for n, host in enumerate(hosts)
        ]
        async with others[0] as s0, others[1] as s1, others[2] as s2:
            for node in (bob, s0, s1, s2):
                await node.register_application(CHAT)
            bob.add_invitation_handler(CHAT, accept_all)
            from_s0, from_s1, from_s2 = [
                await node.peer_at(bob.endpoint.host, bob.endpoint.port) for node in (s0, s1, s2)
            ]
            assert await from_s0.invite(CHAT) is ACCEPTED
            assert await from_s1.invite(CHAT) is ACCEPTED
            with pytest.raises(ProtocolError, match="from one address"):
                await from_s1.invite(CHAT)  # its own budget has 1 left; its /48's, none
            assert await from_s2.invite(CHAT) is ACCEPTED


@pytest.mark.network
@pytest.mark.parametrize("interval", [None, 1.0])
async def test_refused_handshakes_are_told_at_once_then_counted_and_the_rest_told_later(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, interval: float | None
) -> None:
    # The rest: once the interval is over (a timer: no refusal comes after the burst to tell it),
    # or at the stop when the node stops first (the interval is 10 s unless patched).
    if interval is not None:
        monkeypatch.setattr("peerkit.proto.admission.REPORT_INTERVAL", interval)
    policy = AdmissionPolicy(rate=0.001, burst=1)  # (one handshake start from this address, then none)

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]

    async with Node(
        identity=Identity.generate(), listen=("127.0.0.1", 0), discovery=[], admission=policy
    ) as bob:
        for _ in range(4):
            stream = await anyio.connect_tcp(bob.endpoint.host, bob.endpoint.port)
            await stream.aclose()
        with anyio.fail_after(5):
            while len(said()) < (1 if interval is None else 2):
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # (the last ones: refused, counted)
        told_while_running = len(said())
    assert said() == [
        "refused 1 incoming connection: 1 handshakes started too fast",  # (the first: at once)
        "refused 2 incoming connections: 2 handshakes started too fast",  # (the rest, together)
    ]
    assert told_while_running == (1 if interval is None else 2)
