"""Invitations waiting for an answer are bounded: per peer, in total, and with room kept for contacts."""

from __future__ import annotations

import anyio
import pytest
from conftest import CHAT

from peerkit import (
    AnswerReason,
    Identity,
    Invitation,
    InvitationAnswered,
    InvitationResponse,
    Node,
    ProtocolError,
    Withdrawn,
)
from peerkit.node import invitations as part
from peerkit.testing import MemoryNetwork, nodes

pytestmark = pytest.mark.anyio


async def waiting(node: Node, count: int) -> None:
    """Until ``count`` invitations wait for their answer at ``node``."""
    with anyio.fail_after(5):
        while node._invitations._pending < count:
            await anyio.sleep(0.01)


async def hold_invitations(node: Node) -> anyio.Event:
    release = anyio.Event()

    @node.on_invitation(CHAT)
    async def wait(invitation: Invitation) -> InvitationResponse:
        await release.wait()
        return InvitationResponse.ACCEPTED

    return release


async def test_one_peer_cannot_pile_up_invitations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(part, "MAX_PENDING_PER_PEER", 3)
    async with nodes(3) as (alice, bob, carol):
        for node in (alice, bob, carol):
            await node.register_application(CHAT)
        release = await hold_invitations(bob)
        to_bob = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        results: list[InvitationResponse] = []
        async with anyio.create_task_group() as tg:

            async def invite() -> None:
                results.append(await to_bob.invite(CHAT, timeout=10))

            for _ in range(3):
                tg.start_soon(invite)
            await waiting(bob, 3)
            with pytest.raises(ProtocolError, match="refused the invitation: limit: 3 invitations of yours"):
                await to_bob.invite(CHAT, timeout=10)
            # Another peer is not affected.
            carol_to_bob = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
            tg.start_soon(carol_to_bob.invite, CHAT)
            await waiting(bob, 4)
            release.set()
        assert results == [InvitationResponse.ACCEPTED] * 3
        assert bob._invitations._pending == 0
        assert await to_bob.invite(CHAT, timeout=10) is InvitationResponse.ACCEPTED  # counted down


async def test_strangers_leave_room_for_contacts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(part, "MAX_PENDING_STRANGERS", 2)
    monkeypatch.setattr(part, "MAX_PENDING", 3)
    async with nodes(4) as (alice, bob, carol, dave):
        for node in (alice, bob, carol, dave):
            await node.register_application(CHAT)
        release = await hold_invitations(bob)
        await bob.contacts.add(dave.id, nickname="dave")
        async with anyio.create_task_group() as tg:
            for stranger in (alice, carol):
                peer = await stranger.peer_at(bob.endpoint.host, bob.endpoint.port)
                tg.start_soon(peer.invite, CHAT)
            await waiting(bob, 2)
            third = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
            with pytest.raises(ProtocolError, match="not contacts are waiting"):
                await third.invite(CHAT, timeout=10)
            friend = await dave.peer_at(bob.endpoint.host, bob.endpoint.port)
            tg.start_soon(friend.invite, CHAT)  # a contact still gets through
            await waiting(bob, 3)
            with pytest.raises(ProtocolError, match="3 invitations are waiting"):
                await friend.invite(CHAT, timeout=10)  # the total is the total
            release.set()


@pytest.mark.parametrize(
    "hosts",
    [
        ("10.0.0.9",) * 3,  # three ids at one address
        ("2001:db8:1:1::9", "2001:db8:1:2::9", "2001:db8:1:3::9"),  # in three /64s of one /48
    ],
)
async def test_the_strangers_of_one_address_leave_room_for_other_strangers(
    monkeypatch: pytest.MonkeyPatch, hosts: tuple[str, ...]
) -> None:
    monkeypatch.setattr(part, "MAX_PENDING_PER_SOURCE", 2)
    network = MemoryNetwork()
    async with nodes(2, nicknames=["bob", "carol"], network=network) as (bob, carol):
        same_address = [
            Node(nickname=f"s{n}", identity=Identity.generate(), network=network, listen=(host, 0))
            for n, host in enumerate(hosts)
        ]
        async with same_address[0] as s0, same_address[1] as s1, same_address[2] as s2:
            for node in (bob, carol, s0, s1, s2):
                await node.register_application(CHAT)
            release = await hold_invitations(bob)
            async with anyio.create_task_group() as tg:
                for stranger in (s0, s1):  # two ids, one address
                    peer = await stranger.peer_at(bob.endpoint.host, bob.endpoint.port)
                    tg.start_soon(peer.invite, CHAT)
                await waiting(bob, 2)
                third = await s2.peer_at(bob.endpoint.host, bob.endpoint.port)
                with pytest.raises(ProtocolError, match="2 invitations from your address are waiting"):
                    await third.invite(CHAT, timeout=10)
                elsewhere = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
                tg.start_soon(elsewhere.invite, CHAT)  # a stranger at another address gets through
                await waiting(bob, 3)
                release.set()
            assert not len(bob._invitations._strangers)


async def test_a_stranger_from_another_address_takes_a_place_of_the_busiest_when_all_are_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Four places for strangers: one address fills them; two others still get theirs, each
    # taking the busiest address's oldest, until the busiest holds no more than one over theirs.
    monkeypatch.setattr(part, "MAX_PENDING_STRANGERS", 4)
    network = MemoryNetwork()
    async with nodes(4, nicknames=["bob", "mallory", "carol", "dave"], network=network) as nodes4:
        bob, mallory, carol, dave = nodes4
        for node in nodes4:
            await node.register_application(CHAT)
        release = anyio.Event()
        withdrawn: list[tuple[str, Withdrawn | None]] = []
        answered: list[tuple[str, AnswerReason]] = []

        @bob.on_invitation(CHAT)
        async def hold(invitation: Invitation) -> InvitationResponse:
            try:
                await release.wait()
            finally:
                if invitation.withdrawn:
                    withdrawn.append((invitation.message, invitation.withdrawn_reason))
            return InvitationResponse.ACCEPTED

        async def observe(event: InvitationAnswered) -> None:
            answered.append((event.message, event.reason))

        bob.add_invitation_observer(observe)

        outcomes: dict[str, InvitationResponse | str] = {}

        async def invite(node: Node, message: str) -> None:
            peer = await node.peer_at(bob.endpoint.host, bob.endpoint.port)
            try:
                outcomes[message] = await peer.invite(CHAT, message, timeout=10)
            except ProtocolError as exc:
                outcomes[message] = str(exc)

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(invite, mallory, f"m{n}")
                await waiting(bob, n + 1)  # in this order: m0 is the oldest
            tg.start_soon(invite, carol, "c0")
            with anyio.fail_after(5):
                while "m0" not in outcomes:
                    await anyio.sleep(0.01)
            tg.start_soon(invite, dave, "d0")  # mallory holds 3, dave none: takes m1's place
            with anyio.fail_after(5):
                while "m1" not in outcomes:
                    await anyio.sleep(0.01)
            await waiting(bob, 4)
            # mallory holds 2, carol and dave 1 each: nobody holds more than one over carol
            with pytest.raises(
                ProtocolError, match="4 invitations from peers that are not contacts are waiting"
            ):
                await (await carol.peer_at(bob.endpoint.host, bob.endpoint.port)).invite(CHAT, timeout=10)
            release.set()
        for displaced in ("m0", "m1"):
            assert "limit: 4 invitations from peers that are not contacts were waiting" in str(
                outcomes[displaced]
            )
            assert "yours gave its place to another address's" in str(outcomes[displaced])
        assert {m: outcomes[m] for m in ("m2", "m3", "c0", "d0")} == dict.fromkeys(
            ("m2", "m3", "c0", "d0"), InvitationResponse.ACCEPTED
        )
        assert sorted(withdrawn) == [("m0", Withdrawn.DISPLACED), ("m1", Withdrawn.DISPLACED)]
        with anyio.fail_after(5):
            while len(answered) < 6:
                await anyio.sleep(0.01)
        assert sorted(m for m, why in answered if why is AnswerReason.DISPLACED) == ["m0", "m1"]
        assert not len(bob._invitations._strangers)
        assert not bob._invitations._pending


async def test_a_peer_trusted_for_this_run_counts_as_a_contact_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two places for strangers: a trusted peer's invitation takes none of them, and a stranger from
    # another address displaces none of the trusted peer's.
    monkeypatch.setattr(part, "MAX_PENDING_STRANGERS", 2)
    async with nodes(3, nicknames=["bob", "dave", "carol"]) as (bob, dave, carol):
        for node in (bob, dave, carol):
            await node.register_application(CHAT)
        release = await hold_invitations(bob)
        bob.trust(dave.id)
        to_bob = await dave.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(to_bob.invite, CHAT)
            await waiting(bob, 3)
            assert not len(bob._invitations._strangers)
            from_carol = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
            for _ in range(2):
                tg.start_soon(from_carol.invite, CHAT)
            await waiting(bob, 5)
            release.set()
