"""``peerkit demo``: three nodes on loopback go through the four steps of a collaboration session:
discovery, invitation, contacts (with presence and objects watched live, and a contact found
through a private DHT on loopback), and communication."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import anyio

from peerkit.contacts import Contact
from peerkit.dht.node import DhtNode
from peerkit.dht.provider import DhtDiscovery
from peerkit.dht.transport import UdpDatagrams
from peerkit.discovery import DiscoveryProvider, MdnsDiscovery, MemoryDiscovery
from peerkit.errors import PeerkitError, PeerUnreachable
from peerkit.events import ObjectChanged, PresenceChanged
from peerkit.identity import Identity
from peerkit.invitations import Invitation
from peerkit.model import Application, InvitationResponse, PeerObject, Presence, PresenceStatus, Scope
from peerkit.node import Node
from peerkit.peers import Peer
from peerkit.streams import AppStream

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

    #: Where alice, bob and carol listen, with their fingerprints, for people.
    alice: str = ""
    bob: str = ""
    carol: str = ""
    #: The steps, in order.
    steps: list[DemoStep] = field(default_factory=list)
    #: The chat over the application stream, as (sender, text).
    chat: list[tuple[str, str]] = field(default_factory=list)
    #: The Noise protocol and handshake hash of the stream's own session.
    stream_protocol: str = ""
    stream_hash: bytes = b""
    #: How the nodes found each other, and why that way.
    discovery: str = ""
    #: What bob and carol saw of alice while watching her, as (watcher, what).
    watched: list[tuple[str, str]] = field(default_factory=list)
    #: alice's contact card as text (what carol imported).
    card: str = ""


async def run_demo(
    alice_identity: Identity,
    bob_identity: Identity,
    messages: int = 3,
    *,
    carol_identity: Identity | None = None,
    mdns: bool = True,
) -> DemoReport:
    """Run alice, bob and carol as three nodes on 127.0.0.1. alice finds the others through discovery
    (mDNS on the loopback interface, or in memory where multicast does not work there), invites bob
    three ways, they make each other contacts (from signed cards fetched over the channel, and from a
    card's text), bob and carol watch alice's presence and a published object change, dave (with
    alice's card and no LAN discovery) finds her through a private DHT on loopback, then alice and
    bob chat over an encrypted stream."""
    carol = carol_identity or Identity.generate()
    if mdns:
        try:
            return await _run(alice_identity, bob_identity, carol, messages, "mdns")
        except (PeerkitError, OSError) as exc:
            reason = f"mDNS on 127.0.0.1 did not work here ({exc}); used in-memory discovery"
            report = await _run(alice_identity, bob_identity, carol, messages, "memory")
            report.discovery = reason
            return report
    return await _run(alice_identity, bob_identity, carol, messages, "memory")


#: Nodes of the demo's private DHT (on loopback: the demo never joins the public one).
DHT_NODES: Final = 8


@contextlib.asynccontextmanager
async def _loopback_dht(count: int) -> AsyncIterator[list[DhtNode]]:
    try:
        async with anyio.create_task_group() as tg:
            nodes: list[DhtNode] = []
            for _ in range(count):
                transport = await UdpDatagrams.bind("127.0.0.1", 0)
                node = DhtNode(transport, bootstrap=[n.address for n in nodes[:1]])
                await tg.start(node.run)
                nodes.append(node)
            await nodes[0].join()
            yield nodes
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # the demo's own error, not wrapped (its fallback reads it)
            raise group.exceptions[0] from None
        raise


#: The object alice publishes: the document she is working on.
DOCUMENT = uuid.UUID("0b0e5c1a-7c3d-4f2e-9a61-5d3c0c4a2001")


async def _run(
    alice_identity: Identity, bob_identity: Identity, carol_identity: Identity, messages: int, how: str
) -> DemoReport:
    report = DemoReport()

    def provider() -> DiscoveryProvider:
        return MdnsDiscovery(interfaces=["127.0.0.1"], ip_version="v4") if how == "mdns" else hub

    def node(nickname: str, identity: Identity) -> Node:
        # Near me through mDNS (or memory); anywhere through a private DHT on loopback.
        dht = DhtDiscovery(bootstrap=[testnet[0].address], host="127.0.0.1")
        return Node(
            nickname=nickname, identity=identity, listen=("127.0.0.1", 0), discovery=[provider(), dht]
        )

    hub = MemoryDiscovery()
    async with (
        _loopback_dht(DHT_NODES) as testnet,
        node("alice", alice_identity) as alice,
        node("bob", bob_identity) as bob,
        node("carol", carol_identity) as carol,
    ):
        report.discovery = (
            "mDNS (multicast DNS on the loopback interface)" if how == "mdns" else "in-memory discovery"
        )
        bob.endpoint_name = "bob's laptop"
        report.alice, report.bob, report.carol = (
            f"{name} ({each.id.fingerprint}) listens at {each.endpoint}"
            for name, each in (("alice", alice), ("bob", bob), ("carol", carol))
        )

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

        # -- 1. discovery ----------------------------------------------------------------------
        start = anyio.current_time()
        for each in (bob, carol, alice):
            await each.sign_in(Scope.ALL)
        try:
            peer: Peer = await alice.find_nearby(peer_id=bob.id, timeout=5)
            await alice.find_nearby(peer_id=carol.id, timeout=5)
        except PeerUnreachable:
            if how == "mdns":
                raise
            # Never expected in memory; kept so that the demo still shows the rest.
            peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        await step(
            f"alice finds bob and carol near her ({'mDNS' if how == 'mdns' else 'in memory'}; "
            "signed records)",
            f"{peer.nickname} {peer.id.fingerprint} at {peer.endpoints[0]}",
            start,
        )

        # -- 2. invitation ---------------------------------------------------------------------
        for app, message, timeout, why in (
            (CHAT, "chat with me?", 10.0, "bob's handler accepts"),
            (WHITEBOARD, "draw with me?", 10.0, "bob has not installed it: his node declines at once"),
            (GAME, "play with me?", 1.0, "bob's handler never answers"),
        ):
            start = anyio.current_time()
            response = await peer.invite(app, message, timeout=timeout)
            await step(f"invite bob to {app.description} ({why})", response.name, start)

        # -- 3. contacts, presence and objects ------------------------------------------------
        start = anyio.current_time()
        await alice.contacts.add_from(peer)  # bob's signed card, fetched over the channel
        alice_near_bob = await bob.find_nearby(peer_id=alice.id, timeout=5)
        alice_in_bob = await bob.contacts.add_from(alice_near_bob)
        report.card = alice.contacts.me.export_card()
        alice_in_carol = await carol.contacts.import_card(report.card)  # as if sent by mail
        await alice.contacts.import_card(carol.contacts.me.export_card())
        await step(
            "make contacts: alice and bob fetch each other's signed card; carol imports alice's card text",
            f"alice has {len(alice.contacts)} contacts; card of {len(report.card)} characters",
            start,
        )

        start = anyio.current_time()
        seen: dict[str, anyio.Event] = {}

        async def follow(watcher: Node, name: str, contact: Contact) -> None:
            async with watcher.events(PresenceChanged, ObjectChanged, peer=contact) as events:
                await contact.subscribe()
                seen[f"{name} subscribed"].set()
                async for event in events:
                    if isinstance(event, PresenceChanged):
                        status = event.presence.status.name.lower().replace("_", " ")
                        text = f" ({event.presence.text})" if event.presence.text else ""
                        report.watched.append((name, f"alice is {status}{text}"))
                        if event.presence.status is PresenceStatus.BUSY:
                            seen[f"{name} busy"].set()
                    elif isinstance(event, ObjectChanged):
                        change, data = event.change.name.lower(), event.object.data.decode()
                        report.watched.append((name, f"alice's document {change}: {data!r}"))
                        seen[f"{name} document"].set()

        async with anyio.create_task_group() as watching:
            for name in ("bob", "carol"):
                for what in ("subscribed", "busy", "document"):
                    seen[f"{name} {what}"] = anyio.Event()
            watching.start_soon(follow, bob, "bob", alice_in_bob)
            watching.start_soon(follow, carol, "carol", alice_in_carol)
            with anyio.fail_after(10):
                await seen["bob subscribed"].wait()
                await seen["carol subscribed"].wait()
            await step(
                "bob and carol subscribe to alice", f"alice has {len(alice.subscribers())} watchers", start
            )
            start = anyio.current_time()
            await alice.set_presence(Presence(PresenceStatus.BUSY, "writing the plan"))
            with anyio.fail_after(10):
                await seen["bob busy"].wait()
                await seen["carol busy"].wait()
            await step("alice sets her presence to Busy", "bob and carol saw it", start)
            start = anyio.current_time()
            await alice.set_object(PeerObject(id=DOCUMENT, data=b"plan v1", scope=Scope.ALL))
            with anyio.fail_after(10):
                await seen["bob document"].wait()
                await seen["carol document"].wait()
            await step("alice publishes a document object", "bob and carol saw it", start)
            watching.cancel_scope.cancel()

        # -- the Internet scope: a contact with no LAN discovery finds alice through the DHT --------
        start = anyio.current_time()
        await alice.sign_in(Scope.INTERNET)
        dht_only = DhtDiscovery(bootstrap=[testnet[0].address], host="127.0.0.1")
        async with Node(nickname="dave", identity=Identity.generate(), discovery=[dht_only]) as dave:
            await dave.contacts.import_card(report.card)  # alice's card: it carries her locator key
            with anyio.fail_after(15):
                while True:
                    try:
                        found = await dave.resolve(alice.id)
                        break
                    except PeerUnreachable:
                        await anyio.sleep(0.2)
        where = ", ".join(str(e) for e in found.endpoints)
        await step(
            f"alice signs in to the Internet scope; dave (her card, no mDNS) finds her in a DHT "
            f"({DHT_NODES} nodes on loopback)",
            f"at {where} (her record is sealed: only her contacts can read it)",
            start,
        )

        # -- 4. communication --------------------------------------------------------------------
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
