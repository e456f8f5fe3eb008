"""The Node over real TCP on loopback: invitations, the connection manager, failures."""

from __future__ import annotations

import socket
import uuid

import anyio
import anyio.abc
import pytest

from peerkit import (
    Application,
    EndPoint,
    Identity,
    Invitation,
    InvitationResponse,
    KeepalivePolicy,
    Node,
    PeerUnreachable,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.network]

CHAT = Application(id=uuid.UUID("6f1c2a4e-0000-4000-8000-0000000000bb"), description="chat")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def accept_all(invitation: Invitation) -> InvitationResponse:
    return InvitationResponse.ACCEPTED


@pytest.mark.parametrize(
    "host", ["127.0.0.1", pytest.param("::1", marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6"))]
)
async def test_invitations_over_tcp(host: str) -> None:
    async with (
        Node(nickname="alice", identity=Identity.generate(), listen=(host, 0)) as alice,
        Node(nickname="bob", identity=Identity.generate(), listen=(host, 0)) as bob,
    ):
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)
        bob.add_invitation_handler(CHAT, accept_all)
        peer = await alice.peer_at(host, bob.endpoint.port)  # XX: the id is learned
        assert peer.id == bob.id
        assert await peer.invite(CHAT, "over tcp", timeout=5) is InvitationResponse.ACCEPTED
        known = await alice.peer_at(host, bob.endpoint.port, bob.id)  # IK, same channel reused
        assert await known.invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED
        assert alice.channels(bob.id) == 1
        # bob inviting back reuses the channel alice opened (its hello carried her port).
        alice.add_invitation_handler(CHAT, accept_all)
        assert await bob.peer(alice.id, alice.endpoint).invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED
        assert bob.channels(alice.id) == 1


async def test_simultaneous_dial_over_tcp_converges() -> None:
    policy = KeepalivePolicy(interval=0.05, timeout=1, idle=60)
    async with (
        Node(identity=Identity.generate(), listen=("127.0.0.1", 0), keepalive=policy) as alice,
        Node(identity=Identity.generate(), listen=("127.0.0.1", 0), keepalive=policy) as bob,
    ):
        for node in (alice, bob):
            await node.register_application(CHAT)
            node.add_invitation_handler(CHAT, accept_all)
        async with anyio.create_task_group() as tg:
            tg.start_soon(alice.peer(bob.id, bob.endpoint).invite, CHAT)
            tg.start_soon(bob.peer(alice.id, alice.endpoint).invite, CHAT)
        with anyio.fail_after(3):
            while alice.channels(bob.id) != 1 or bob.channels(alice.id) != 1:
                await anyio.sleep(0.02)


async def test_unreachable_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as alice:
        await alice.register_application(CHAT)
        with anyio.fail_after(5), pytest.raises(PeerUnreachable, match=str(port)):
            await alice.peer_at("127.0.0.1", port)
        with anyio.fail_after(5), pytest.raises(PeerUnreachable):
            await alice.peer(Identity.generate().id, EndPoint("127.0.0.1", port)).invite(CHAT)


async def test_peer_exit_mid_invitation_fails_fast_over_tcp() -> None:
    async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as alice:
        await alice.register_application(CHAT)
        bob_scope = anyio.CancelScope()
        started = anyio.Event()
        outcome: list[object] = []

        async def run_bob(*, task_status: anyio.abc.TaskStatus[Node]) -> None:
            with bob_scope:
                async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as bob:
                    await bob.register_application(CHAT)

                    @bob.on_invitation(CHAT)
                    async def waiting(invitation: Invitation) -> InvitationResponse:
                        started.set()
                        await anyio.sleep_forever()
                        raise AssertionError

                    task_status.started(bob)
                    await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            bob = await tg.start(run_bob)
            peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)

            async def invite() -> None:
                try:
                    outcome.append(await peer.invite(CHAT, timeout=30))
                except PeerUnreachable as exc:
                    outcome.append(exc)

            tg.start_soon(invite)
            await started.wait()
            bob_scope.cancel()
            with anyio.fail_after(3):
                while not outcome:
                    await anyio.sleep(0.01)
        assert isinstance(outcome[0], PeerUnreachable)
