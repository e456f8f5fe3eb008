"""What peers can make a node hold after the handshake is bounded: channels of strangers (per
source and in all), places kept for contacts, and application streams per peer."""

from __future__ import annotations

import anyio
import pytest
from conftest import CHAT

from peerkit import AppStream, Node, NotAllowed, PeerUnreachable, ProtocolError
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
            peer = await s3.peer_at(bob.endpoint.host, bob.endpoint.port)
            with pytest.raises(PeerUnreachable):
                await peer.get_presence()
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
