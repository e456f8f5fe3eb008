"""Presence, applications, objects and subscriptions (R6) over the in-memory network."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import facing_mallory

from peerkit import (
    Application,
    ApplicationChanged,
    ChangeType,
    Contact,
    EndPoint,
    EventWatch,
    Identity,
    KeepalivePolicy,
    LimitExceeded,
    NameChanged,
    Node,
    NotAllowed,
    NotSignedIn,
    ObjectChanged,
    PeerObject,
    PeerUnreachable,
    Presence,
    PresenceChanged,
    PresenceStatus,
    ProtocolError,
    Scope,
    SecureChannel,
    SubscribePermission,
    SubscriptionListChanged,
    UnknownContact,
)
from peerkit.node import watching
from peerkit.testing import MemoryDiscovery, MemoryNetwork

pytestmark = pytest.mark.anyio

CHAT = Application(id=uuid.UUID("6f1c2a4e-0000-4000-8000-0000000000d1"), description="chat", scope=Scope.ALL)
NEAR = Application(
    id=uuid.UUID("6f1c2a4e-0000-4000-8000-0000000000d2"), description="near", scope=Scope.NEAR_ME
)
FAR = Application(
    id=uuid.UUID("6f1c2a4e-0000-4000-8000-0000000000d3"), description="far", scope=Scope.INTERNET
)
PICTURE = uuid.UUID("6f1c2a4e-0000-4000-8000-0000000000e1")
BUSY = Presence(PresenceStatus.BUSY, "in a call")
FAST = KeepalivePolicy(interval=0.3, timeout=0.3, idle=60)


class World:
    """An in-memory network and discovery medium, and nodes made on it."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self.net = MemoryNetwork()
        self.hub = MemoryDiscovery()
        self.stack = stack
        self.hosts = 0

    async def node(
        self, nickname: str, *, identity: Identity | None = None, host: str | None = None, **options: Any
    ) -> Node:
        self.hosts += 1
        node = Node(
            nickname=nickname,
            identity=identity or Identity.generate(),
            network=self.net,
            listen=(host or f"10.0.0.{self.hosts}", 7000),
            discovery=[self.hub] if options.pop("near", True) else [],
            **options,
        )
        return await self.stack.enter_async_context(node)


@asynccontextmanager
async def world() -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        yield World(stack)


async def befriend(a: Node, b: Node, *, allowed: bool = True) -> tuple[Contact, Contact]:
    """Make ``a`` and ``b`` contacts of each other (each with the other's endpoint); ``a`` allows
    ``b`` to watch it, ``b`` allows ``a`` unless ``allowed`` is false."""
    permission = SubscribePermission.ALLOWED if allowed else SubscribePermission.BLOCKED
    b_in_a = await a.contacts.add(b.id, nickname=b.nickname, endpoints=[b.endpoint])
    a_in_b = await b.contacts.add(
        a.id, nickname=a.nickname, endpoints=[a.endpoint], subscribe_allowed=permission
    )
    return b_in_a, a_in_b


async def next_event(
    watch: EventWatch[Any], accept: Callable[[Any], bool] = lambda e: True, timeout: float = 5
) -> Any:
    with anyio.fail_after(timeout):
        async for event in watch:
            if accept(event):
                return event
    raise AssertionError("the watch ended")


def presence_is(status: PresenceStatus) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, PresenceChanged) and e.presence.status is status


# -- what a node publishes ---------------------------------------------------------------------------
async def test_presence_is_online_at_sign_in_and_offline_cannot_be_set() -> None:
    async with world() as w:
        alice = await w.node("alice")
        assert alice.presence.status is PresenceStatus.OFFLINE
        with pytest.raises(NotSignedIn, match="sign in before setting a presence"):
            await alice.set_presence(BUSY)
        with pytest.raises(NotSignedIn):
            await alice.set_object(PeerObject(id=PICTURE, data=b"x"))
        async with alice.events(local=True) as local:
            await alice.sign_in(Scope.ALL)
            assert alice.presence == Presence(PresenceStatus.ONLINE)
            assert (await next_event(local)).presence.status is PresenceStatus.ONLINE
            await alice.set_presence(BUSY)
            event = await next_event(local)
            assert event.local
            assert event.peer_id == alice.id
            assert event.presence == BUSY
            with pytest.raises(ValueError, match="cannot be Offline; sign out"):
                await alice.set_presence(Presence(PresenceStatus.OFFLINE))
            with pytest.raises(TypeError, match="takes a Presence"):
                await alice.set_presence("busy")  # type: ignore[arg-type]
            await alice.sign_out()
            assert (await next_event(local)).presence.status is PresenceStatus.OFFLINE
            await alice.sign_in(Scope.NEAR_ME)
            assert alice.presence == Presence(PresenceStatus.ONLINE)  # Online again, with no text


async def test_objects_are_limited_and_raise_local_events() -> None:
    async with world() as w:
        alice = await w.node("alice")
        await alice.sign_in(Scope.ALL)
        seen: list[ObjectChanged] = []

        @alice.on_local_object_changed
        async def note(event: ObjectChanged) -> None:
            seen.append(event)

        async def seen_at_least(count: int) -> None:
            # A handler that has not read yet gets changes merged: wait for each one to be read.
            with anyio.fail_after(5):
                while len(seen) < count:
                    await anyio.sleep(0.01)

        await alice.set_object(PeerObject(id=PICTURE, data=b"v1"))
        await seen_at_least(1)
        await alice.set_object(PeerObject(id=PICTURE, data=b"v2"))
        await seen_at_least(2)
        await alice.delete_object(PICTURE)
        await seen_at_least(3)
        with pytest.raises(ValueError, match="is not published"):
            await alice.delete_object(PICTURE)
        with pytest.raises(LimitExceeded, match="object data is empty"):
            PeerObject(id=PICTURE, data=b"")
        with pytest.raises(LimitExceeded, match="16385 bytes; the limit is 16384"):
            PeerObject(id=PICTURE, data=bytes(16385))
        for i in range(128):
            await alice.set_object(PeerObject(id=uuid.UUID(int=i + 1), data=b"o"))
        with pytest.raises(LimitExceeded, match="128 objects are published; the limit is 128"):
            await alice.set_object(PeerObject(id=uuid.UUID(int=1000), data=b"o"))
        await alice.set_object(PeerObject(id=uuid.UUID(int=1), data=b"replaced"))  # replacing is fine
        assert len(alice.objects()) == 128
        with anyio.fail_after(5):
            while len(seen) < 3 + 128 + 1:
                await anyio.sleep(0.01)
        assert [e.change for e in seen[:3]] == [ChangeType.ADDED, ChangeType.UPDATED, ChangeType.DELETED]
        assert seen[-1].change is ChangeType.UPDATED


# -- subscribing -----------------------------------------------------------------------------------
async def test_a_watcher_gets_the_current_state_then_every_change() -> None:
    async with world() as w:
        alice, bob = await w.node("alice"), await w.node("bob")
        for node in (alice, bob):
            await node.sign_in(Scope.ALL)
        await alice.register_application(CHAT)
        await alice.set_object(PeerObject(id=PICTURE, data=b"me.png", scope=Scope.INTERNET))
        alice.endpoint_name = "laptop"
        _, alice_in_bob = await befriend(alice, bob)
        async with bob.events() as events:
            await alice_in_bob.subscribe()
            first = [await next_event(events) for _ in range(4)]
            kinds = {type(e): e for e in first}
            assert kinds[PresenceChanged].presence.status is PresenceStatus.ONLINE
            assert kinds[NameChanged].name == "laptop"
            assert kinds[ApplicationChanged].application.id == CHAT.id
            assert kinds[ApplicationChanged].change is ChangeType.ADDED
            assert kinds[ObjectChanged].object.data == b"me.png"
            assert all(e.peer_id == alice.id and not e.local for e in first)
            assert all(e.contact is not None and e.contact.id == alice.id for e in first)
            assert (await bob.contacts.get(alice.id)).is_subscribed
            assert alice.subscribers() == [bob.id]

            await alice.set_presence(BUSY)
            assert (await next_event(events)).presence == BUSY
            assert alice_in_bob.presence == BUSY
            await alice.set_object(PeerObject(id=PICTURE, data=b"new.png", scope=Scope.INTERNET))
            event = await next_event(events)
            assert (event.change, event.object.data) == (ChangeType.UPDATED, b"new.png")
            await alice.delete_object(PICTURE)
            assert (await next_event(events)).change is ChangeType.DELETED
            await alice.unregister_application(CHAT)
            event = await next_event(events)
            assert (event.change, event.application.id) == (ChangeType.DELETED, CHAT.id)
            await alice.register_application(FAR)
            assert (await next_event(events)).change is ChangeType.ADDED
            alice.endpoint_name = "desk"
            event = await next_event(events)
            assert event.name == "desk"
            assert event.endpoint.name == "desk"

            await alice_in_bob.unsubscribe()
            assert not (await bob.contacts.get(alice.id)).is_subscribed
            with anyio.fail_after(5):
                while alice.subscribers():
                    await anyio.sleep(0.01)
            await alice.set_presence(Presence(PresenceStatus.AWAY))
            await anyio.sleep(0.2)
            assert not [e for e in [*iter_pending(events)] if isinstance(e, PresenceChanged)]


def iter_pending(watch: EventWatch[Any]) -> list[Any]:
    items = []
    while watch.pending:
        items.append(watch._pending.popitem(last=False)[1])
    return items


@pytest.mark.logs_errors
async def test_handlers_per_contact_per_object_and_for_all() -> None:
    async with world() as w:
        alice, bob, carol = await w.node("alice"), await w.node("bob"), await w.node("carol")
        for node in (alice, bob, carol):
            await node.sign_in(Scope.ALL)
        _, alice_in_bob = await befriend(alice, bob)
        _, carol_in_bob = await befriend(carol, bob)
        every: list[PresenceChanged] = []
        alices: list[PresenceChanged] = []
        pictures: list[ObjectChanged] = []

        @bob.on_presence_changed
        async def all_presence(event: PresenceChanged) -> None:
            every.append(event)

        bob.add_presence_handler(lambda e: _append(alices, e), peer=alice_in_bob)
        bob.add_object_handler(lambda e: _append(pictures, e), object_id=PICTURE)
        called_at_once: list[PresenceChanged] = []
        bob.add_presence_handler(called_at_once.append)  # a plain function: no task of its own

        async def broken(event: Any) -> None:
            raise RuntimeError("a broken handler does not stop the others")

        bob.add_name_handler(broken)
        await alice_in_bob.subscribe()
        await carol_in_bob.subscribe()
        await alice.set_presence(BUSY)
        alice.endpoint_name = "x"
        await alice.set_object(PeerObject(id=uuid.UUID(int=5), data=b"other"))
        await alice.set_object(PeerObject(id=PICTURE, data=b"pic"))
        with anyio.fail_after(5):
            while not (pictures and any(e.presence == BUSY for e in alices)):
                await anyio.sleep(0.01)
        assert {e.peer_id for e in every} == {alice.id, carol.id}
        assert {e.peer_id for e in alices} == {alice.id}
        assert [e.object.id for e in pictures] == [PICTURE]
        assert {e.peer_id for e in called_at_once} == {alice.id, carol.id}
        assert [e.presence for e in called_at_once if e.peer_id == alice.id][-1] == BUSY


async def _append(items: list[Any], event: Any) -> None:
    items.append(event)


async def test_only_contacts_may_subscribe_and_a_blocked_one_receives_nothing() -> None:
    async with world() as w:
        alice, bob = await w.node("alice", near=False), await w.node("bob", near=False)
        for node in (alice, bob):
            await node.sign_in(Scope.ALL)
        await alice.set_presence(BUSY)
        await alice.register_application(CHAT)
        stranger = await bob.contacts.add(alice.id, endpoints=[alice.endpoint])
        with pytest.raises(NotAllowed, match="does not have you as a contact"):
            await stranger.subscribe()
        assert not (await bob.contacts.get(alice.id)).is_subscribed  # nothing left half-done
        with pytest.raises(NotAllowed, match="lets you see nothing"):
            await stranger.get_presence()

        bob_in_alice = await alice.contacts.add(bob.id, subscribe_allowed=SubscribePermission.BLOCKED)
        async with bob.events() as events:
            await stranger.subscribe()
            first = await next_event(events)
            assert first.presence.status is PresenceStatus.OFFLINE
            await alice.set_presence(Presence(PresenceStatus.AWAY))
            await alice.set_object(PeerObject(id=PICTURE, data=b"secret"))
            await anyio.sleep(0.3)
            assert events.pending == 0
            assert alice.subscribers() == [bob.id]  # accepted, but told nothing
            # Allowing it takes effect at once on the open subscription.
            await alice.contacts.update(bob_in_alice.replace(subscribe_allowed=SubscribePermission.ALLOWED))
            got = [await next_event(events) for _ in range(3)]
            assert {type(e) for e in got} == {PresenceChanged, ApplicationChanged, ObjectChanged}
            # Blocking it again: it sees Offline and everything deleted.
            await alice.contacts.update(bob_in_alice.replace(subscribe_allowed=SubscribePermission.BLOCKED))
            got = [await next_event(events) for _ in range(3)]
            assert {getattr(e, "change", None) for e in got} == {None, ChangeType.DELETED}
            assert stranger.presence == Presence(PresenceStatus.OFFLINE)


async def test_subscribe_needs_sign_in_and_a_reachable_contact_or_wait_false() -> None:
    async with world() as w:
        bob = await w.node("bob", near=False)
        nobody = Identity.generate().id
        contact = await bob.contacts.add(nobody, endpoints=[EndPoint("10.0.9.9", 7000)])
        with pytest.raises(NotSignedIn):
            await contact.subscribe()
        await bob.sign_in(Scope.ALL)
        with pytest.raises(PeerUnreachable):
            await contact.subscribe(timeout=1)
        assert not (await bob.contacts.get(nobody)).is_subscribed
        async with bob.contacts.watch() as changes:
            await contact.subscribe(wait=False)
            event = await next_event(changes, lambda e: isinstance(e, SubscriptionListChanged))
            assert event.change is ChangeType.ADDED
        assert (await bob.contacts.get(nobody)).is_subscribed
        await bob.contacts.delete(nobody)
        with pytest.raises(UnknownContact):
            await contact.subscribe()


async def test_scopes_decide_what_a_one_shot_fetch_sees() -> None:
    async with world() as w:
        alice = await w.node("alice")
        nearby_stranger = await w.node("nearby")
        far_contact = await w.node("far", near=False)
        await alice.sign_in(Scope.ALL)
        await nearby_stranger.sign_in(Scope.NEAR_ME)
        await far_contact.sign_in(Scope.INTERNET)
        await alice.contacts.add(far_contact.id)
        for app in (CHAT, NEAR, FAR):
            await alice.register_application(app)
        await alice.set_object(PeerObject(id=uuid.UUID(int=1), data=b"near", scope=Scope.NEAR_ME))
        await alice.set_object(PeerObject(id=uuid.UUID(int=2), data=b"far", scope=Scope.INTERNET))
        await alice.set_object(PeerObject(id=uuid.UUID(int=3), data=b"all", scope=Scope.ALL))
        await alice.set_object(PeerObject(id=uuid.UUID(int=4), data=b"none", scope=Scope.NONE))
        await alice.set_presence(BUSY)
        near_alice = await nearby_stranger.find_nearby(peer_id=alice.id, timeout=5)
        with anyio.fail_after(5):  # alice must see it near her too
            while not alice._nearby.is_near(nearby_stranger.id):
                await anyio.sleep(0.01)
        assert {a.id for a in await near_alice.get_applications()} == {CHAT.id, NEAR.id}
        assert {o.data for o in await near_alice.get_objects()} == {b"near", b"all"}
        assert await near_alice.get_presence() == BUSY
        far_alice = far_contact.peer(alice.id, alice.endpoint)
        assert {a.id for a in await far_alice.get_applications()} == {CHAT.id, FAR.id}
        assert {o.data for o in await far_alice.get_objects()} == {b"far", b"all"}
        apps = await far_alice.get_applications()
        assert all(a.path is None for a in apps)
        # Signed out of NEAR_ME, alice shows nothing to the stranger near her.
        await alice.sign_out(Scope.NEAR_ME)
        with pytest.raises(NotAllowed):
            await near_alice.get_objects()
        assert {o.data for o in await far_alice.get_objects()} == {b"far", b"all"}


async def test_a_lost_contact_is_offline_within_the_keepalive_window_and_back_when_it_returns() -> None:
    async with world() as w:
        alice = await w.node("alice", keepalive=FAST, near=False)
        bob = await w.node("bob", keepalive=FAST, near=False)
        for node in (alice, bob):
            await node.sign_in(Scope.ALL)
        _, alice_in_bob = await befriend(alice, bob)
        await alice.set_presence(BUSY)
        async with bob.events(PresenceChanged) as events:
            await alice_in_bob.subscribe()
            assert (await next_event(events)).presence == BUSY
            w.net.freeze(alice.endpoint.host)  # the cable is pulled: nothing is closed
            start = anyio.current_time()
            event = await next_event(events, timeout=10)
            window = FAST.interval + 2 * FAST.timeout
            assert event.presence.status is PresenceStatus.OFFLINE
            assert anyio.current_time() - start <= window + 0.5
            assert event.endpoint == alice.endpoint  # Offline there
            w.net.thaw(alice.endpoint.host)
            event = await next_event(events, timeout=10)
            assert event.presence == BUSY


async def test_a_publisher_that_signs_out_or_stops_is_seen_offline_at_once() -> None:
    async with world() as w:
        bob = await w.node("bob", near=False)
        alice_identity = Identity.generate()
        async with Node(
            nickname="alice", identity=alice_identity, network=w.net, listen=("10.0.1.1", 7000)
        ) as alice:
            await alice.sign_in(Scope.ALL)
            await bob.sign_in(Scope.ALL)
            _, alice_in_bob = await befriend(alice, bob)
            await alice.set_object(PeerObject(id=PICTURE, data=b"p"))
            async with bob.events() as events:
                await alice_in_bob.subscribe()
                await next_event(events, lambda e: isinstance(e, ObjectChanged))
                await alice.sign_out()
                await next_event(events, presence_is(PresenceStatus.OFFLINE))
                event = await next_event(events, lambda e: isinstance(e, ObjectChanged))
                assert event.change is ChangeType.DELETED
                await alice.sign_in(Scope.ALL)
                await next_event(events, presence_is(PresenceStatus.ONLINE))
        # alice stopped: bob saw Offline before her channel closed.
        async with bob.events(PresenceChanged) as events:
            assert alice_in_bob.presence == Presence(PresenceStatus.OFFLINE)
            # She comes back (same identity, same address): the subscription resumes by itself.
            async with Node(identity=alice_identity, network=w.net, listen=("10.0.1.1", 7000)) as alice:
                await alice.sign_in(Scope.ALL)
                await alice.contacts.add(bob.id)
                await next_event(events, presence_is(PresenceStatus.ONLINE), timeout=20)


async def test_subscriptions_persist_across_a_restart_of_the_watcher(tmp_path: Path) -> None:
    async with world() as w:
        alice = await w.node("alice", near=False)
        await alice.sign_in(Scope.ALL)
        await alice.set_presence(BUSY)
        bob_identity = Identity.generate()
        async with Node(
            identity=bob_identity, data_dir=tmp_path, network=w.net, listen=("10.0.2.1", 7000)
        ) as bob:
            await bob.sign_in(Scope.ALL)
            _, alice_in_bob = await befriend(alice, bob)
            await alice_in_bob.subscribe()
        async with (
            Node(identity=bob_identity, data_dir=tmp_path, network=w.net, listen=("10.0.2.1", 7000)) as bob,
            bob.events(PresenceChanged) as events,
        ):
            await bob.sign_in(Scope.ALL)  # nothing else: the subscription resumes
            assert (await next_event(events)).presence == BUSY


async def test_a_deleted_contact_stops_hearing_and_stops_being_watched() -> None:
    async with world() as w:
        alice, bob = await w.node("alice", near=False), await w.node("bob", near=False)
        for node in (alice, bob):
            await node.sign_in(Scope.ALL)
        _, alice_in_bob = await befriend(alice, bob)
        async with bob.events(PresenceChanged) as events:
            await alice_in_bob.subscribe()
            await next_event(events)
            await alice.contacts.delete(bob.id)
            assert (await next_event(events)).presence.status is PresenceStatus.OFFLINE
            with anyio.fail_after(5):
                while alice.subscribers():
                    await anyio.sleep(0.01)
            await bob.contacts.delete(alice.id)
            assert alice_in_bob.presence is None


async def test_a_slow_reader_gets_the_latest_presence_and_bounded_memory() -> None:
    async with world() as w:
        alice, bob = await w.node("alice", near=False), await w.node("bob", near=False)
        for node in (alice, bob):
            await node.sign_in(Scope.ALL)
        _, alice_in_bob = await befriend(alice, bob)
        async with bob.events(PresenceChanged) as slow, bob.events(PresenceChanged) as fast:
            await alice_in_bob.subscribe()
            await next_event(fast)
            for i in range(300):
                await alice.set_presence(Presence(PresenceStatus.BUSY, f"call {i}"))
            await next_event(fast, lambda e: e.presence.text == "call 299")
            assert slow.pending == 1  # 301 changes, one entry
            assert (await next_event(slow)).presence.text == "call 299"


async def test_a_subscriber_that_stops_reading_holds_bounded_memory_and_delays_nobody() -> None:
    async with world() as w:
        alice = await w.node("alice", near=False)
        bob = await w.node("bob", near=False)
        for node in (alice, bob):
            await node.sign_in(Scope.ALL)
        _, alice_in_bob = await befriend(alice, bob)
        # mallory, a contact of alice's, subscribes over a raw channel and then never reads.
        mallory = Identity.generate()
        await alice.contacts.add(mallory.id)
        raw = await w.net.connect(alice.endpoint.host, alice.endpoint.port, local_host="10.0.9.1")
        async with await SecureChannel.wrap(raw, mallory, initiator=True, expected_peer=alice.id) as stalled:
            await stalled.send({"t": "subscribe", "rid": 1})
            with anyio.fail_after(5):
                while (await stalled.receive())["t"] != "subscribe_reply":
                    pass  # (alice may ask her contact something first: whether it relays)
            async with bob.events(PresenceChanged) as events:
                await alice_in_bob.subscribe()
                await next_event(events)
                for i in range(2000):
                    await alice.set_presence(Presence(PresenceStatus.BUSY, f"call {i}"))
                    if i % 100 == 0:
                        await anyio.lowlevel.checkpoint()
                # bob heard the last one at once, although mallory's connection is full.
                await next_event(events, lambda e: e.presence.text == "call 1999", timeout=5)
            (stuck,) = [s for s in alice._publishing._subscribers.values() if s.control.peer_id == mallory.id]
            assert stuck.slow  # mallory has a sender of its own, waiting on its connection
            assert alice._publishing._slow[stuck] <= {"presence"}  # its changes noted once, not queued
            # mallory reads at last: it gets a bounded number of messages, ending with the latest.
            received = []
            with anyio.fail_after(5):
                while not received or received[-1]["v"][1] != "call 1999":
                    received.append(await stalled.receive())
            assert len(received) < 2000 // 4
            # Caught up, it keeps nothing of its slow time (a node has thousands of subscribers).
            with anyio.fail_after(5):
                while stuck.slow:
                    await anyio.sleep(0.01)
            assert stuck not in alice._publishing._slow
            assert stuck.backlog is None


async def test_a_contact_running_at_two_endpoints_is_watched_at_both() -> None:
    async with world() as w:
        bob = await w.node("bob", near=False)
        alice_identity = Identity.generate()
        laptop = await w.node("alice", identity=alice_identity, near=False, host="10.0.5.1")
        phone = await w.node("alice", identity=alice_identity, near=False, host="10.0.5.2")
        for node in (bob, laptop, phone):
            await node.sign_in(Scope.ALL)
            if node is not bob:
                await node.contacts.add(bob.id)
        alice = await bob.contacts.add(alice_identity.id, endpoints=[laptop.endpoint, phone.endpoint])
        await laptop.set_presence(BUSY)
        await phone.set_presence(Presence(PresenceStatus.AWAY, "on the move"))
        async with bob.events(PresenceChanged) as events:
            await alice.subscribe()
            seen = {}
            with anyio.fail_after(5):
                while len(seen) < 2:
                    event = await next_event(events)
                    seen[event.endpoint] = event.presence
        assert seen == {laptop.endpoint: BUSY, phone.endpoint: Presence(PresenceStatus.AWAY, "on the move")}
        assert laptop.subscribers() == [bob.id]
        assert phone.subscribers() == [bob.id]


async def test_a_node_reached_at_two_addresses_is_watched_once() -> None:
    # Real TCP: alice listens on every address, and bob knows her at two loopback addresses.
    async with (
        Node(nickname="alice", identity=Identity.generate(), listen=("0.0.0.0", 0)) as alice,
        Node(nickname="bob", identity=Identity.generate(), listen=("127.0.0.1", 0)) as bob,
    ):
        for node in (alice, bob):
            await node.sign_in(Scope.ALL)
        await alice.contacts.add(bob.id)
        port = alice.endpoint.port
        contact = await bob.contacts.add(
            alice.id, endpoints=[EndPoint("127.0.0.1", port), EndPoint("127.0.0.2", port)]
        )
        async with bob.events(PresenceChanged) as events:
            await contact.subscribe()
            await next_event(events, presence_is(PresenceStatus.ONLINE))
            await alice.set_presence(BUSY)
            await next_event(events, presence_is(PresenceStatus.BUSY))
            await anyio.sleep(0.3)
            assert events.pending == 0, [events.pop_nowait() for _ in range(events.pending)]  # once
        assert alice.subscribers() == [bob.id]


async def test_a_state_over_one_message_is_fetched_and_subscribed_to_at_the_full_limits() -> None:
    # 128 objects of 16 KiB and 64 applications with 16 KiB of data: about 3 MiB, sent in parts.
    async with world() as w:
        alice, bob = await w.node("alice"), await w.node("bob")
        for node in (alice, bob):
            await node.sign_in(Scope.ALL)
        objects = [PeerObject(id=uuid.UUID(int=i + 1), data=bytes([i]) * 16384) for i in range(128)]
        apps = [
            Application(id=uuid.UUID(int=1000 + i), description=f"app {i}", data=bytes([i]) * 16384)
            for i in range(64)
        ]
        for obj in objects:
            await alice.set_object(obj)
        for app in apps:
            await alice.register_application(app)
        _, alice_in_bob = await befriend(alice, bob)
        assert await alice_in_bob.get_objects() == objects
        fetched = await alice_in_bob.get_applications()
        assert [(a.id, a.description, a.data) for a in fetched] == [
            (a.id, a.description, a.data) for a in apps
        ]
        async with bob.events(ObjectChanged, ApplicationChanged) as events:
            await alice_in_bob.subscribe()
            seen = [await next_event(events) for _ in range(128 + 64)]
        assert [e.object for e in seen if isinstance(e, ObjectChanged)] == objects
        assert [e.application.data for e in seen if isinstance(e, ApplicationChanged)] == [
            a.data for a in apps
        ]
        assert all(e.change is ChangeType.ADDED for e in seen)
        # Changes after the state still arrive, in order.
        await alice.set_presence(BUSY)
        with anyio.fail_after(5):
            while alice_in_bob.presence != BUSY:
                await anyio.sleep(0.01)


async def test_an_idle_subscription_holds_few_tasks() -> None:
    # What a subscription holds is what a node holds per contact: two tasks for both ends once
    # idle (each end's reader), none timing its keepalive (one clock per node does), none for
    # the watch (whose next look is on one clock per node too), and none waiting for its channel
    # to close.
    async with world() as w:
        bob = await w.node("bob", near=False)
        await bob.sign_in(Scope.INTERNET)
        contacts = []
        for i in range(8):
            publisher = await w.node(f"publisher{i}", near=False)
            await publisher.sign_in(Scope.INTERNET)
            contacts.append((await befriend(publisher, bob))[1])
        await anyio.sleep(0.2)
        before = len(anyio.get_running_tasks())
        for contact in contacts:
            await contact.subscribe()
        await anyio.sleep(1.3)  # (a request's probe window, 1 s, is over)
        per_contact = (len(anyio.get_running_tasks()) - before) / len(contacts)
        assert per_contact <= 2, [task.name for task in anyio.get_running_tasks()]


async def test_a_settled_watch_still_looks_at_its_contact_every_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With no task of its own, the watch reads the contact's endpoints again every WATCH_REFRESH
    # (the node's clock starts it), and settles again each time.
    monkeypatch.setattr(watching, "WATCH_REFRESH", 0.3)
    async with world() as w:
        alice = await w.node("alice", near=False)
        bob = await w.node("bob", keepalive=FAST, near=False)  # (its clock's slack: 10 ms)
        for node in (alice, bob):
            await node.sign_in(Scope.INTERNET)
        _, alice_in_bob = await befriend(alice, bob)
        await alice_in_bob.subscribe()
        looks = 0
        find_stored = bob.contacts.find_stored

        async def counting(peer_id: Any) -> Any:
            nonlocal looks
            looks += 1
            return await find_stored(peer_id)

        monkeypatch.setattr(bob.contacts, "find_stored", counting)
        watch = bob._watching._watching[alice.id]
        running = 0
        for _ in range(50):
            await anyio.sleep(0.02)
            running += watch.running
        assert looks >= 2
        assert running < 25  # (a look takes moments; the rest of the time no task runs)
        await alice.set_presence(BUSY)
        with anyio.fail_after(5):
            while alice_in_bob.presence != BUSY:
                await anyio.sleep(0.01)


async def test_a_node_that_stops_lets_go_of_its_settled_watches() -> None:
    # A settled watch has no task to cancel: its channel closing lets go of its link.
    async with world() as w:
        alice = await w.node("alice", near=False)
        bob = Node(nickname="bob", identity=Identity.generate(), network=w.net, listen=("10.0.1.2", 7000))
        async with bob:
            await alice.sign_in(Scope.INTERNET)
            await bob.sign_in(Scope.INTERNET)
            _, alice_in_bob = await befriend(alice, bob)
            await alice_in_bob.subscribe()
            await anyio.sleep(0.1)
            (watch,) = bob._watching._watching.values()
            assert not watch.running  # (settled: no task, its link pinned to the channel)
            (control,) = bob._watching._link_of
        assert not bob._watching._link_of
        assert control.pins == 0


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ({"t": "error", "code": "limit", "msg": "busy"}, "refused the subscription: limit: busy"),
        ({"t": "subscribe_reply", "state": "online"}, "a subscription state is a map"),
        ({"t": "subscribe_reply", "state": {"name": "x" * 256}}, "an endpoint name is text of at most 255"),
        ({"t": "subscribe_reply", "state": {"apps": [{"id": b"short"}]}}, "application"),
    ],
)
async def test_a_publishers_bad_answer_to_a_subscription_fails_it_by_name(
    reply: dict[str, Any], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def script(channel: SecureChannel, raw: Any) -> None:
        async for message in channel:
            if message.get("t") == "subscribe":
                await channel.send({**reply, "rid": message["rid"]})

    async with facing_mallory(CHAT, script) as (alice, mallory):
        await alice.sign_in(Scope.INTERNET)
        contact = await alice.contacts.add(mallory.id, endpoints=list(mallory.endpoints))
        with pytest.raises(ProtocolError, match=problem):
            await contact.subscribe(timeout=5)
        assert not (await alice.contacts.get(mallory.id)).is_subscribed
        assert contact.presence is None  # (nothing of it was taken)
    if reply["t"] != "error":  # (a channel that broke the protocol is dropped, and said)
        assert any("dropping the channel to" in r.getMessage() for r in caplog.records)


async def test_a_publishers_malformed_notification_changes_nothing_and_drops_its_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    busy = [int(PresenceStatus.BUSY), "working"]
    subscribed = anyio.Event()  # (set once the subscription is in place: the notification comes after)

    async def script(channel: SecureChannel, raw: Any) -> None:
        async def malformed() -> None:
            await subscribed.wait()
            await channel.send({"t": "notify", "k": "presence", "v": "away"})

        async with anyio.create_task_group() as tg:
            async for message in channel:
                if message.get("t") == "subscribe":
                    state = {"presence": busy, "name": "desk"}
                    await channel.send({"t": "subscribe_reply", "rid": message["rid"], "state": state})
                    if not subscribed.is_set():
                        tg.start_soon(malformed)
            tg.cancel_scope.cancel()

    async with facing_mallory(CHAT, script) as (alice, mallory):
        await alice.sign_in(Scope.INTERNET)
        contact = await alice.contacts.add(mallory.id, endpoints=list(mallory.endpoints))
        await contact.subscribe(timeout=5)
        assert contact.presence == Presence(PresenceStatus.BUSY, "working")
        subscribed.set()
        with anyio.fail_after(5):
            while not any("dropping the channel to" in r.getMessage() for r in caplog.records):
                await anyio.sleep(0.01)
        assert contact.presence == Presence(PresenceStatus.BUSY, "working")  # (not changed by it)
