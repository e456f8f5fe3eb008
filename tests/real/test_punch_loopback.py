"""Hole punching over real TCP on loopback (no NAT: the SYNs cross or are refused and sent again),
with a relay in between: the control channel moves to the hole, and streams follow it through
holes of their own."""

from __future__ import annotations

import anyio
import pytest
from conftest import CHAT, accept_all

from peerkit import AppStream, EndPoint, Identity, InvitationResponse, Node, RelayPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.network]


async def test_after_a_punch_streams_come_through_holes_of_their_own_not_the_relay() -> None:
    bob_id = Identity.generate()
    async with Node(
        identity=Identity.generate(), listen=("127.0.0.1", 0), relay=RelayPolicy(open=True)
    ) as relay:
        through = EndPoint("127.0.0.1", relay.endpoint.port, relay=relay.id)
        async with (
            Node(nickname="bob", identity=bob_id, listen=("127.0.0.2", 0), relays=[through]) as bob,
            Node(nickname="alice", identity=Identity.generate(), listen=("127.0.0.3", 0)) as alice,
        ):
            await bob.register_application(CHAT)
            await alice.register_application(CHAT)
            bob.add_invitation_handler(CHAT, accept_all)
            came: list[AppStream] = []

            @bob.on_stream(CHAT)
            async def echo(stream: AppStream) -> None:
                came.append(stream)
                async for chunk in stream:
                    await stream.send(chunk)

            with anyio.fail_after(10):
                while not bob.reach().reservations:
                    await anyio.sleep(0.02)
            peer = alice.peer(bob.id, through)  # alice knows bob only through the relay
            assert await peer.invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED
            with anyio.fail_after(10):
                while not (alice.reach().punched or alice.reach().punch_failures):
                    await anyio.sleep(0.02)
            assert (alice.reach().punched, alice.reach().punch_failures) == (1, 0)
            for _ in range(3):
                async with await peer.open_stream(CHAT, timeout=5) as stream:
                    assert stream.relay is None  # a hole of its own
                    await stream.send(b"x" * 70_000)
                    got = b""
                    while len(got) < 70_000:
                        got += await stream.receive()
                    assert got == b"x" * 70_000
            assert [s.relay for s in came] == [None, None, None]  # bob's side says so too
            assert relay.reach().stats is not None
            assert relay.reach().stats.circuits == 1  # only the first channel went through it
