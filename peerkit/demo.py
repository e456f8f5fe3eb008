"""``peerkit demo``: two nodes on loopback find each other, then go through the invitation and
communication steps."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import anyio

from peerkit.apps import AppStream, Invitation
from peerkit.discovery import DiscoveryProvider, MdnsDiscovery, MemoryDiscovery
from peerkit.errors import PeerkitError, PeerUnreachable
from peerkit.identity import Identity
from peerkit.model import Application, InvitationResponse, Scope
from peerkit.node import Node
from peerkit.peers import Peer

__all__ = ("CHAT", "GAME", "WHITEBOARD", "DemoReport", "DemoStep", "run_demo")

CHAT = Application(id=uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1001"), description="Chat")
WHITEBOARD = Application(id=uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1002"), description="Whiteboard")
GAME = Application(id=uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a1003"), description="Game")


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoStep:
    """One thing the demo did."""

    #: What was done.
    title: str
    #: What came of it.
    outcome: str
    #: How long it took, seconds.
    elapsed: float


@dataclass(slots=True, kw_only=True)
class DemoReport:
    """What the demo showed."""

    #: alice's and bob's ids and endpoints, for people.
    alice: str = ""
    bob: str = ""
    #: The steps, in order.
    steps: list[DemoStep] = field(default_factory=list)
    #: The chat over the application stream, as (sender, text).
    chat: list[tuple[str, str]] = field(default_factory=list)
    #: The Noise protocol and handshake hash of the stream's own session.
    stream_protocol: str = ""
    stream_hash: bytes = b""
    #: How the nodes found each other, and why that way.
    discovery: str = ""


async def run_demo(
    alice_identity: Identity, bob_identity: Identity, messages: int = 3, *, mdns: bool = True
) -> DemoReport:
    """Run alice and bob as two nodes on 127.0.0.1: alice finds bob through discovery (mDNS on the
    loopback interface, or in memory where multicast does not work there), invites him three ways,
    then they chat over an encrypted stream."""
    if mdns:
        try:
            return await _run(alice_identity, bob_identity, messages, "mdns")
        except (PeerkitError, OSError) as exc:
            reason = f"mDNS on 127.0.0.1 did not work here ({exc}); used in-memory discovery"
            report = await _run(alice_identity, bob_identity, messages, "memory")
            report.discovery = reason
            return report
    return await _run(alice_identity, bob_identity, messages, "memory")


async def _run(alice_identity: Identity, bob_identity: Identity, messages: int, how: str) -> DemoReport:
    report = DemoReport()

    def provider() -> DiscoveryProvider:
        return MdnsDiscovery(interfaces=["127.0.0.1"], ip_version="v4") if how == "mdns" else hub

    hub = MemoryDiscovery()
    async with (
        Node(
            nickname="alice", identity=alice_identity, listen=("127.0.0.1", 0), discovery=[provider()]
        ) as alice,
        Node(nickname="bob", identity=bob_identity, listen=("127.0.0.1", 0), discovery=[provider()]) as bob,
    ):
        report.discovery = (
            "mDNS (multicast DNS on the loopback interface)" if how == "mdns" else "in-memory discovery"
        )
        bob.endpoint_name = "bob's laptop"
        report.alice = f"{alice.id.fingerprint} at {alice.endpoint}"
        report.bob = f"{bob.id.fingerprint} at {bob.endpoint}"

        async def step(title: str, outcome: object, start: float) -> None:
            report.steps.append(
                DemoStep(title=title, outcome=str(outcome), elapsed=anyio.current_time() - start)
            )

        start = anyio.current_time()
        for app in (CHAT, WHITEBOARD, GAME):
            await alice.register_application(app)
        for app in (CHAT, GAME):  # bob has no whiteboard
            await bob.register_application(app)
        await step("register Chat, Whiteboard, Game on alice; Chat, Game on bob", "registered", start)

        @bob.on_invitation(CHAT)
        async def chat_invitation(invitation: Invitation) -> InvitationResponse:
            return InvitationResponse.ACCEPTED

        @bob.on_invitation(GAME)
        async def game_invitation(invitation: Invitation) -> InvitationResponse:
            await anyio.sleep_forever()  # bob is away from the keyboard
            raise AssertionError

        @bob.on_stream(CHAT)
        async def chat_stream(stream: AppStream) -> None:
            async for line in stream:
                text = line.decode()
                await stream.send(f"bob got {text!r}".encode())

        start = anyio.current_time()
        await bob.sign_in(Scope.NEAR_ME)
        await alice.sign_in(Scope.NEAR_ME)
        try:
            peer: Peer = await alice.find_nearby(peer_id=bob.id, timeout=5)
        except PeerUnreachable:
            if how == "mdns":
                raise
            # Never expected in memory; kept so that the demo still shows the rest.
            peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        await step(
            f"alice finds bob near her ({'mDNS' if how == 'mdns' else 'in memory'}; his signed record)",
            f"{peer.nickname} {peer.id.fingerprint} at {peer.endpoints[0]}",
            start,
        )
        for app, message, timeout, why in (
            (CHAT, "chat with me?", 10.0, "bob's handler accepts"),
            (WHITEBOARD, "draw with me?", 10.0, "bob has not installed it: his node declines at once"),
            (GAME, "play with me?", 1.0, "bob's handler never answers"),
        ):
            start = anyio.current_time()
            response = await peer.invite(app, message, timeout=timeout)
            await step(f"invite bob to {app.description} ({why})", response.name, start)

        start = anyio.current_time()
        async with await peer.open_stream(CHAT) as stream:
            report.stream_protocol = stream.protocol
            report.stream_hash = stream.handshake_hash
            for i in range(messages):
                text = f"hello #{i + 1} from alice"
                await stream.send(text.encode())
                reply = (await stream.receive()).decode()
                report.chat += [("alice", text), ("bob", reply)]
        await step("open an encrypted Chat stream and talk", f"{len(report.chat)} lines", start)
    return report
