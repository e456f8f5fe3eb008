"""peerkit.testing.nodes() and node_pair(): what an application's own tests start from."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from conftest import CHAT, accept_chat

from peerkit import InvitationResponse, Scope
from peerkit.testing import MemoryDiscovery, MemoryNetwork, node_pair, nodes

pytestmark = pytest.mark.anyio


async def test_a_pair_can_invite_each_other_at_once() -> None:
    async with node_pair() as (alice, bob):
        assert (alice.nickname, bob.nickname) == ("alice", "bob")
        await accept_chat(alice, bob)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert await peer.invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED
    assert not alice.running
    assert not bob.running


async def test_nodes_share_one_discovery_medium_and_see_each_other() -> None:
    async with nodes(5) as group:
        assert [n.nickname for n in group] == ["alice", "bob", "carol", "dave", "node5"]
        assert len({n.endpoint.host for n in group}) == 5
        for node in group:
            await node.sign_in(Scope.NEAR_ME)
        with anyio.fail_after(5):
            while len(group[0].nearby()) < 4:
                await anyio.sleep(0.01)


async def test_no_discovery_when_asked() -> None:
    async with nodes(2, discovery=False) as (alice, bob):
        await alice.sign_in(Scope.NEAR_ME)
        await bob.sign_in(Scope.NEAR_ME)
        await anyio.sleep(0.1)
        assert alice.nearby() == []


async def test_own_network_medium_names_and_data_dirs(tmp_path: Path) -> None:
    net, medium = MemoryNetwork(), MemoryDiscovery()
    async with nodes(2, nicknames=["ann", "ben"], network=net, discovery=medium, data_dir=tmp_path) as (
        ann,
        ben,
    ):
        assert (ann.nickname, ben.nickname) == ("ann", "ben")
        first = ann.id
    assert (tmp_path / "ann").is_dir()
    assert (tmp_path / "ben").is_dir()
    async with nodes(1, nicknames=["ann"], data_dir=tmp_path) as (again,):
        assert again.id == first


async def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        async with nodes(0):
            pass
    with pytest.raises(ValueError, match="3 nodes need 3 nicknames; 2 were given"):
        async with nodes(3, nicknames=["a", "b"]):
            pass
