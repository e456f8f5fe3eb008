"""What an application's iterator holds unread: strangers share their places fairly by source,
are read in turn, and nothing withdrawn or closed keeps a place."""

from __future__ import annotations

import functools

import anyio
import pytest
from conftest import CHAT

from peerkit import InvitationResponse, Node, Peer
from peerkit.testing import nodes

pytestmark = pytest.mark.anyio

ACCEPTED, DECLINED = InvitationResponse.ACCEPTED, InvitationResponse.DECLINED


async def queued(node: Node, count: int) -> None:
    """Until ``count`` invitations wait for their answer at ``node`` (queued, here)."""
    with anyio.fail_after(5):
        while node._invitations._pending < count:
            await anyio.sleep(0.01)


async def test_a_stranger_from_another_address_takes_a_queued_place_of_the_busiest_and_is_read_in_turn() -> (
    None
):
    # queue_size 8: strangers may fill 6 places. mallory fills them; carol and dave each take one
    # of mallory's (her oldest are declined), and are read before mallory's later ones.
    async with nodes(4, nicknames=["bob", "mallory", "carol", "dave"], queue_size=8) as (
        bob,
        mallory,
        carol,
        dave,
    ):
        for node in (bob, mallory, carol, dave):
            await node.register_application(CHAT)
        answers: dict[str, InvitationResponse] = {}

        async def invite(node: Node, message: str) -> None:
            peer = await node.peer_at(bob.endpoint.host, bob.endpoint.port)
            answers[message] = await peer.invite(CHAT, message, timeout=30)

        async with bob.invitations(CHAT) as invitations, anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(invite, mallory, f"m{n}")
                await queued(bob, n + 1)
            for node, message, displaced in ((carol, "c0", 1), (dave, "d0", 2)):
                tg.start_soon(invite, node, message)
                with anyio.fail_after(10):
                    while len(answers) < displaced:
                        await anyio.sleep(0.01)
            assert answers == {"m0": DECLINED, "m1": DECLINED}
            # mallory 4, carol 1, dave 1: a seventh of mallory's finds no place
            tg.start_soon(invite, mallory, "m6")
            with anyio.fail_after(10):
                while "m6" not in answers:
                    await anyio.sleep(0.01)
            assert answers["m6"] is DECLINED
            read = []
            with anyio.fail_after(10):
                async for invitation in invitations:
                    read.append(invitation.message)
                    invitation.accept()
                    if len(read) == 6:
                        break
        assert read == ["m2", "c0", "d0", "m3", "m4", "m5"]
        assert all(answers[m] is ACCEPTED for m in read)


async def test_an_invitation_withdrawn_while_queued_leaves_its_place() -> None:
    # queue_size 4: strangers may fill 3 places. carol's three expire unread; they leave the queue,
    # so her next is queued (declined at once before), and the reader never sees them.
    async with nodes(2, nicknames=["bob", "carol"], queue_size=4) as (bob, carol):
        for node in (bob, carol):
            await node.register_application(CHAT)
        to_bob = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with bob.invitations(CHAT) as invitations:
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(functools.partial(to_bob.invite, CHAT, f"short {n}", timeout=0.5))
            with anyio.fail_after(5):
                while bob._invitations._pending:
                    await anyio.sleep(0.01)
            async with anyio.create_task_group() as tg:
                answers: list[InvitationResponse] = []

                async def invite() -> None:
                    answers.append(await to_bob.invite(CHAT, "later", timeout=30))

                tg.start_soon(invite)
                with anyio.fail_after(10):
                    invitation = await invitations.__anext__()
                assert invitation.message == "later"
                invitation.accept()
        assert answers == [ACCEPTED]


async def test_closing_the_iterator_declines_what_it_holds_unread_at_once() -> None:
    async with nodes(3, nicknames=["bob", "carol", "dave"], queue_size=4) as (bob, carol, dave):
        for node in (bob, carol, dave):
            await node.register_application(CHAT)
        await bob.contacts.add(dave.contacts.me)
        answers: list[InvitationResponse] = []

        async def invite(peer: Peer) -> None:
            answers.append(await peer.invite(CHAT, timeout=30))

        async with anyio.create_task_group() as tg:
            async with bob.invitations(CHAT):
                tg.start_soon(invite, await carol.peer_at(bob.endpoint.host, bob.endpoint.port))
                tg.start_soon(invite, await dave.peer_at(bob.endpoint.host, bob.endpoint.port))
                await queued(bob, 2)
            with anyio.fail_after(5):  # not at the end of their 30 s
                while len(answers) < 2:
                    await anyio.sleep(0.01)
        assert answers == [DECLINED, DECLINED]
        assert not bob._invitations._pending


async def test_closing_a_streams_iterator_closes_the_streams_it_holds_unread() -> None:
    async with nodes(2, nicknames=["bob", "carol"], discovery=False) as (bob, carol):
        for node in (bob, carol):
            await node.register_application(CHAT)
        to_bob = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with bob.streams(CHAT):
            stream = await to_bob.open_stream(CHAT)
            with anyio.move_on_after(0.2):
                await stream.receive()  # held unread: nothing comes, and it stays open
        async with stream:
            with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await stream.receive()
