"""The Node over real TCP on loopback: invitations, the connection manager, failures."""

from __future__ import annotations

import signal
import socket
import sys
import uuid

import anyio
import anyio.abc
import pytest
from conftest import IPV6, WAITING_PEER

from peerkit import (
    AdmissionPolicy,
    Application,
    EndPoint,
    Identity,
    Invitation,
    InvitationResponse,
    KeepalivePolicy,
    Node,
    PeerId,
    PeerkitError,
    PeerUnreachable,
)

pytestmark = [pytest.mark.anyio, pytest.mark.network]

CHAT = Application(id=uuid.UUID("6f1c2a4e-0000-4000-8000-0000000000bb"), description="chat")


async def accept_all(invitation: Invitation) -> InvitationResponse:
    return InvitationResponse.ACCEPTED


@pytest.mark.parametrize("host", ["127.0.0.1", IPV6])
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


async def test_keepalive_notices_a_peer_process_that_stops_answering() -> None:
    # SIGSTOP: the peer's sockets stay open (no FIN, no RST) but nothing answers, as after a crash
    # of the machine or a pulled cable. Only keepalive pings can tell.
    process = await anyio.open_process([sys.executable, "-c", WAITING_PEER, str(CHAT.id)])
    try:
        assert process.stdout is not None
        received = b""
        with anyio.fail_after(20):
            while not received.endswith(b"\n"):
                received += await process.stdout.receive()
        line = received.decode().split()
        port, peer_id = int(line[0]), PeerId.parse(line[1])
        policy = KeepalivePolicy(interval=0.1, timeout=0.5, idle=60)
        async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0), keepalive=policy) as alice:
            await alice.register_application(CHAT)
            peer = await alice.peer_at("127.0.0.1", port, peer_id)
            outcome: list[object] = []

            async def invite() -> None:
                try:
                    outcome.append(await peer.invite(CHAT, timeout=60))
                except PeerUnreachable as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(invite)
                await anyio.sleep(0.3)
                process.send_signal(signal.SIGSTOP)
                start = anyio.current_time()
                with anyio.fail_after(5):
                    while not outcome:
                        await anyio.sleep(0.02)
            assert isinstance(outcome[0], PeerUnreachable)
            assert "stopped answering" in str(outcome[0])
            assert anyio.current_time() - start < 2
    finally:
        process.kill()
        process.send_signal(signal.SIGCONT)
        await process.wait()
        await process.aclose()


async def test_the_admission_policy_is_the_nodes_to_set() -> None:
    # By default a source may start 50 handshakes a second (bursts of 100); a node given its own
    # policy applies it: here a burst of 3, then the fourth new connection is refused.
    strict = AdmissionPolicy(rate=0.5, burst=3)
    async with (
        Node(identity=Identity.generate(), listen=("127.0.0.1", 0), admission=strict) as bob,
        Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as alice,
    ):
        for _ in range(3):
            await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
            await alice.disconnect(bob.id)
        with pytest.raises(PeerkitError):
            await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
    with pytest.raises(TypeError, match="admission must be an AdmissionPolicy, not dict"):
        Node(identity=Identity.generate(), admission={"rate": 1})  # type: ignore[arg-type]
