"""People near me (R4) through the Node, over the in-memory network and discovery."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from conftest import CHAT, accept_chat

from peerkit import ChangeType, InvalidRecord, InvitationResponse, Node, NotSignedIn, PeerUnreachable, Scope
from peerkit.discovery import (
    Directory,
    MemoryDiscovery,
    NearbyRecord,
    StaticDiscovery,
    make_record,
    read_record,
)
from peerkit.events import NearbyChanged
from peerkit.identity import Identity
from peerkit.peers import NearbyPeer
from peerkit.proto import records
from peerkit.testing import MemoryNetwork, nodes

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def near(count: int = 2, **options: Any) -> AsyncIterator[list[Node]]:
    """``count`` nodes on one in-memory network and discovery medium, all signed in to NEAR_ME."""
    async with nodes(count, **options) as started:
        for each in started:
            await each.sign_in(Scope.NEAR_ME)
        yield started


def node(nickname: str, host: str, net: MemoryNetwork, port: int = 0, **options: Any) -> Node:
    return Node(nickname=nickname, identity=Identity.generate(), network=net, listen=(host, port), **options)


@contextlib.asynccontextmanager
async def joining(near_node: Node, nickname: str, host: str) -> AsyncIterator[Node]:
    """A node on ``near_node``'s discovery medium (its own in-memory network), signed in to NEAR_ME."""
    async with node(nickname, host, MemoryNetwork(), discovery=[near_node._providers[0]]) as joined:
        await joined.sign_in(Scope.NEAR_ME)
        yield joined


async def next_change(watch: Any, timeout: float = 2) -> NearbyChanged:
    with anyio.fail_after(timeout):
        event: NearbyChanged = await watch.__anext__()
        return event


async def test_nearby_needs_sign_in() -> None:
    async with Node(identity=Identity.generate(), network=MemoryNetwork(), listen=("10.0.0.1", 0)) as node:
        with pytest.raises(NotSignedIn, match="sign_in"):
            node.nearby()
        with pytest.raises(NotSignedIn):
            node.watch_nearby()
        with pytest.raises(NotSignedIn):
            await node.find_nearby(nickname="bob", timeout=0.1)
        await node.sign_in(Scope.NEAR_ME)
        assert node.nearby() == []
        await node.sign_out(Scope.NEAR_ME)
        with pytest.raises(NotSignedIn):
            node.nearby()


async def test_nearby_lists_signed_in_peers() -> None:
    async with near(3) as (alice, bob, carol):
        seen = alice.nearby()
        assert {p.id for p in seen} == {bob.id, carol.id}
        bob_near = next(p for p in seen if p.id == bob.id)
        assert isinstance(bob_near, NearbyPeer)
        assert bob_near.nickname == "bob"
        assert bob_near.endpoints == (bob.endpoint,)
        assert bob_near.endpoints[0].how == "interface"  # the record says how bob knows it
        assert bob_near.fingerprint == bob.id.fingerprint
        assert bob_near.record.sources == {"memory"}
        assert alice.id not in {p.id for p in alice.nearby()}  # never itself


async def test_watch_sees_added_updated_deleted() -> None:
    net, hub = MemoryNetwork(), MemoryDiscovery()
    async with (
        node(
            "alice",
            "10.0.0.1",
            net,
            discovery=[hub],
        ) as alice,
        node("bob", "10.0.0.2", net, discovery=[hub]) as bob,
    ):
        await alice.sign_in(Scope.NEAR_ME)
        async with alice.watch_nearby() as watch:
            await bob.sign_in(Scope.NEAR_ME)
            event = await next_change(watch)
            assert (event.change, event.peer.id, event.peer.nickname) == (ChangeType.ADDED, bob.id, "bob")
            bob.nickname = "bobby"
            event = await next_change(watch)
            assert (event.change, event.peer.nickname) == (ChangeType.UPDATED, "bobby")
            bob.endpoint_name = "bob's desk"
            event = await next_change(watch)
            assert (event.change, event.peer.endpoint_name) == (ChangeType.UPDATED, "bob's desk")
            await bob.sign_out(Scope.NEAR_ME)
            event = await next_change(watch)
            assert (event.change, event.peer.id) == (ChangeType.DELETED, bob.id)
            assert alice.nearby() == []
            await alice.sign_out(Scope.NEAR_ME)
            with anyio.fail_after(1):
                assert [e async for e in watch] == []  # sign-out ends the watch


async def test_slow_watcher_gets_merged_changes() -> None:
    async with near(1) as (alice,):
        net = MemoryNetwork()
        hub = alice._providers[0]
        watch = alice.watch_nearby()
        async with node("bob", "10.0.0.2", net, discovery=[hub]) as bob:
            await bob.sign_in(Scope.NEAR_ME)
            for i in range(50):
                bob.nickname = f"bob{i}"
                await anyio.lowlevel.checkpoint()
            await anyio.sleep(0.05)
            event = await next_change(watch)
            assert (event.change, event.peer.nickname) == (ChangeType.ADDED, "bob49")
            assert len(watch._pending) == 0
        # added and deleted before the reader looked: nothing to report
        async with node(
            "carol",
            "10.0.0.3",
            net,
            discovery=[hub],
        ) as carol:
            await carol.sign_in(Scope.NEAR_ME)
        event = await next_change(watch)
        assert (event.change, event.peer.nickname) == (ChangeType.DELETED, "bob49")
        assert len(watch._pending) == 0
        await watch.aclose()


@pytest.mark.logs_errors
async def test_handler_sees_changes_and_survives_errors() -> None:
    async with near(1) as (alice,):
        seen: list[tuple[ChangeType, str]] = []

        @alice.on_nearby_changed
        async def changed(event: NearbyChanged) -> None:
            seen.append((event.change, event.peer.nickname))
            if len(seen) == 1:
                raise RuntimeError("a handler bug")

        async with joining(alice, "bob", "10.0.0.2") as bob:
            await anyio.sleep(0.05)
            bob.nickname = "bobby"
            await anyio.sleep(0.05)
        await anyio.sleep(0.05)
        assert seen == [
            (ChangeType.ADDED, "bob"),
            (ChangeType.UPDATED, "bobby"),
            (ChangeType.DELETED, "bobby"),
        ]


async def test_find_nearby_and_invite() -> None:
    async with near(2) as (alice, bob):
        await accept_chat(alice, bob)
        found = await alice.find_nearby(nickname="bob", timeout=1)
        assert found.id == bob.id
        assert await found.invite(CHAT, "hi", timeout=5) is InvitationResponse.ACCEPTED
        assert (await alice.find_nearby(peer_id=bob.id, timeout=1)).nickname == "bob"
        with pytest.raises(PeerUnreachable, match="nickname 'carol'"):
            await alice.find_nearby(nickname="carol", timeout=0.1)
        with pytest.raises(ValueError, match="needs nickname=, peer_id= or application="):
            await alice.find_nearby(timeout=0.1)
        with pytest.raises(ValueError, match="not both"):
            await alice.find_nearby(nickname="bob", peer_id=bob.id, timeout=0.1)


async def test_find_nearby_waits_for_a_peer_that_comes() -> None:
    async with near(1) as (alice,), anyio.create_task_group() as tg:

        async def come_later() -> None:
            await anyio.sleep(0.1)
            async with joining(alice, "bob", "10.0.0.2"):
                await anyio.sleep(0.5)

        tg.start_soon(come_later)
        found = await alice.find_nearby(nickname="bob", timeout=2)
        assert found.nickname == "bob"


async def test_static_provider_between_nodes() -> None:
    net = MemoryNetwork()
    async with node("bob", "10.0.0.2", net, 7000) as bob:
        static = StaticDiscovery([f"10.0.0.2:7000#{bob.id}"], interval=0.05, timeout=1)
        async with node(
            "alice",
            "10.0.0.1",
            net,
            discovery=[static],
        ) as alice:
            await alice.sign_in(Scope.NEAR_ME)
            await anyio.sleep(0.2)
            assert alice.nearby() == []  # bob is not signed in: it has no record to give
            async with alice.watch_nearby() as watch:
                await bob.sign_in(Scope.NEAR_ME)
                event = await next_change(watch)
                assert (event.change, event.peer.id, event.peer.nickname) == (ChangeType.ADDED, bob.id, "bob")
                assert event.peer.endpoints[0] == bob.endpoint
                net.freeze("10.0.0.2")  # the cable is pulled
                event = await next_change(watch, timeout=5)
                assert (event.change, event.peer.id) == (ChangeType.DELETED, bob.id)


async def test_static_provider_refuses_another_id(alice: Identity) -> None:
    net = MemoryNetwork()
    async with node("bob", "10.0.0.2", net, 7000) as bob:
        await bob.sign_in(Scope.NEAR_ME)
        static = StaticDiscovery([f"10.0.0.2:7000#{alice.id}"], interval=0.05, timeout=0.5)
        async with Node(
            identity=Identity.generate(), network=net, listen=("10.0.0.1", 0), discovery=[static]
        ) as a:
            await a.sign_in(Scope.NEAR_ME)
            await anyio.sleep(0.3)
            assert a.nearby() == []


async def test_discovery_by_name_uses_the_process_medium() -> None:
    net = MemoryNetwork()
    async with (
        node(
            "a",
            "10.0.0.1",
            net,
            discovery=["memory"],
        ) as a,
        node(
            "b",
            "10.0.0.2",
            net,
            discovery="memory",
        ) as b,
    ):
        await a.sign_in(Scope.NEAR_ME)
        await b.sign_in(Scope.NEAR_ME)
        assert [p.nickname for p in a.nearby()] == ["b"]


async def test_record_request_needs_sign_in() -> None:
    net = MemoryNetwork()
    async with (
        Node(identity=Identity.generate(), network=net, listen=("10.0.0.1", 0)) as a,
        Node(identity=Identity.generate(), network=net, listen=("10.0.0.2", 7000)) as b,
    ):
        from peerkit.errors import ProtocolError

        with pytest.raises(ProtocolError, match="unavailable"):
            await a._requests.fetch_record("10.0.0.2", 7000, b.id)
        await b.sign_in(Scope.NEAR_ME)
        envelope = await a._requests.fetch_record("10.0.0.2", 7000, b.id)
        directory = Directory(a.id)
        record = directory.found(envelope, source="test")
        assert record is not None
        assert record.id == b.id


async def test_directory_believes_only_fresh_signed_records(alice: Identity, bob: Identity) -> None:
    changes: list[tuple[ChangeType, str]] = []
    directory = Directory(
        alice.id, lambda change, record: changes.append((change, record.nickname)), capacity=1
    )

    def record(signer: Identity, seq: int, nickname: str) -> bytes:
        return make_record(signer, seq, nickname=nickname, endpoint_name="", endpoints=[("10.0.0.9", 7000)])

    assert directory.found(record(alice, 1, "me"), source="s") is None  # itself
    assert directory.found(record(bob, 5, "bob"), source="s") is not None
    assert directory.found(record(bob, 5, "bob"), source="t") is not None  # the same, from another source
    assert directory.found(record(bob, 4, "old"), source="s") is None  # a replay
    assert directory.found(record(bob, 5, "same seq"), source="s") is None  # another content, same seq
    tampered = bytearray(record(bob, 6, "bob6"))
    tampered[-3] ^= 0x40
    assert directory.found(bytes(tampered), source="s") is None
    assert directory.found(b"\x00garbage", source="s") is None
    assert directory.found(record(Identity.generate(), 1, "carol"), source="s") is None  # full
    assert directory.stats.stale == 2
    assert directory.stats.invalid == 2
    assert directory.stats.full == 1
    directory.lost(bob.id, source="s")
    assert directory.get(bob.id) is not None  # source t still sees it
    directory.lost(bob.id, source="t")
    assert directory.get(bob.id) is None
    assert changes == [(ChangeType.ADDED, "bob"), (ChangeType.DELETED, "bob")]


async def test_strangers_filling_the_directory_never_keep_a_contact_out(
    alice: Identity, bob: Identity
) -> None:
    # A LAN peer announcing as many new ids as the directory holds: bob, a contact, still gets a
    # place (the stranger found last gives it up), and his old records never pass again however
    # many ids come after.
    changes: list[tuple[ChangeType, str]] = []
    directory = Directory(
        alice.id,
        lambda change, record: changes.append((change, record.nickname)),
        capacity=2,
        is_contact={bob.id}.__contains__,
    )

    def record(signer: Identity, seq: int, nickname: str) -> bytes:
        return make_record(signer, seq, nickname=nickname, endpoint_name="", endpoints=[("10.0.0.9", 7000)])

    strangers = [Identity.generate() for _ in range(3)]
    assert directory.found(record(strangers[0], 1, "s0"), source="s") is not None
    assert directory.found(record(strangers[1], 1, "s1"), source="s") is not None
    assert directory.found(record(strangers[2], 1, "s2"), source="s") is None  # full: a stranger waits
    assert directory.found(record(bob, 4, "old bob"), source="s") is not None  # a contact: s1 gives way
    assert {r.nickname for r in directory.records()} == {"s0", "old bob"}
    assert directory.found(record(bob, 5, "bob"), source="s") is not None
    assert directory.found(record(strangers[2], 2, "s2"), source="s") is None  # bob is not given up
    for _ in range(20):  # (the directory remembers 4 x 2 ids' freshness)
        directory.found(record(Identity.generate(), 1, "flood"), source="s")
    assert directory.found(record(bob, 4, "old bob"), source="s") is None  # the replay, still refused
    believed = directory.get(bob.id)
    assert believed is not None
    assert believed.nickname == "bob"
    assert changes[:4] == [
        (ChangeType.ADDED, "s0"),
        (ChangeType.ADDED, "s1"),
        (ChangeType.DELETED, "s1"),
        (ChangeType.ADDED, "old bob"),
    ]


async def test_a_flood_from_one_origin_keeps_nobody_from_elsewhere_out(alice: Identity) -> None:
    # A full directory shares strangers' places by the origin of their records (an mDNS packet's
    # source): a LAN host announcing new ids without end pushes out only its own latest, those
    # that were there before it stay, and a newcomer from another host is still shown.
    changes: list[tuple[ChangeType, str]] = []
    directory = Directory(
        alice.id, lambda change, record: changes.append((change, record.nickname)), capacity=4
    )

    def heard(nickname: str, origin: str | None) -> NearbyRecord | None:
        envelope = make_record(
            Identity.generate(), 1, nickname=nickname, endpoint_name="", endpoints=[("10.0.0.9", 7000)]
        )
        return directory.found(envelope, source="mdns", origin=origin)

    assert heard("before", "10.0.0.2") is not None
    for n in range(20):
        heard(f"flood {n}", "10.6.6.6")
    assert {r.nickname for r in directory.records()} == {"before", "flood 0", "flood 1", "flood 2"}
    assert heard("newcomer", "fe80::7%eth0") is not None  # the flood's newest gives way
    assert (ChangeType.DELETED, "flood 2") in changes
    assert heard("another", "10.0.0.3") is not None  # the flood holds 2: one over this origin's 0
    assert heard("a third", "10.0.0.4") is None  # every origin holds one or two: no more room
    assert heard("flood again", "10.6.6.6") is None
    assert {r.nickname for r in directory.records()} == {"before", "flood 0", "newcomer", "another"}
    assert heard("no origin", None) is None  # a provider that cannot say: one group of its own


async def test_a_stranger_who_became_a_contact_is_not_given_up_for_a_stranger(alice: Identity) -> None:
    contacts: set[object] = set()
    directory = Directory(alice.id, capacity=2, is_contact=contacts.__contains__)
    people = [Identity.generate() for _ in range(3)]

    def heard(person: Identity, origin: str) -> NearbyRecord | None:
        envelope = make_record(person, 1, nickname="p", endpoint_name="", endpoints=[("10.0.0.9", 7000)])
        return directory.found(envelope, source="mdns", origin=origin)

    assert heard(people[0], "10.6.6.6") is not None
    assert heard(people[1], "10.6.6.6") is not None
    contacts.add(people[1].id)  # the newest of the busiest origin is a contact now
    assert heard(people[2], "10.0.0.3") is None  # its origin holds one stranger: no more than one over
    assert {r.id for r in directory.records()} == {people[0].id, people[1].id}


async def test_a_record_heard_again_and_one_with_no_room_cost_no_signature_check(
    alice: Identity, bob: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peerkit.discovery import base

    checked: list[bytes] = []

    def counted(envelope: bytes) -> Any:
        checked.append(envelope)
        return read_record(envelope)

    monkeypatch.setattr(base, "read_record", counted)
    directory = Directory(alice.id, capacity=1, is_contact={bob.id}.__contains__)

    def record(signer: Identity, seq: int, host: str = "10.0.0.9") -> bytes:
        return make_record(signer, seq, nickname="n", endpoint_name="", endpoints=[(host, 7000)])

    carol = Identity.generate()
    first = record(carol, 1)
    for source in ("s", "s", "t", "t"):  # heard again and again, from two sources
        assert directory.found(first, source=source, claimed_id=carol.id) is not None
    assert len(checked) == 1
    seen = directory.get(carol.id)
    assert seen is not None
    assert seen.sources == frozenset({"s", "t"})
    assert directory.found(record(carol, 2, "10.0.0.8"), source="s", claimed_id=carol.id) is not None
    assert len(checked) == 2  # new bytes: checked
    # No room for another stranger: dropped unchecked (a contact's is checked, and takes a place).
    for _ in range(3):
        assert (
            directory.found(record(Identity.generate(), 1), source="s", claimed_id=Identity.generate().id)
            is None
        )
    assert len(checked) == 2
    assert directory.stats.full == 3
    assert directory.found(record(bob, 1), source="s", claimed_id=bob.id) is not None
    assert len(checked) == 3
    # Bytes that claim a believed id but are not its record: checked, and refused.
    forged = record(Identity.generate(), 5)
    assert directory.found(forged, source="s", claimed_id=bob.id) is None
    assert len(checked) == 4
    assert directory.stats.invalid == 1


class Failing:
    """A provider that fails before it starts, or after."""

    scopes = Scope.NEAR_ME

    def __init__(self, *, late: bool) -> None:
        self.late = late
        self.name = "failing"

    async def run(self, sink: Any, *, task_status: Any) -> None:
        if not self.late:
            raise OSError("no such interface")
        hub = MemoryDiscovery()
        task_status.started(await _session_of(hub, sink))
        await anyio.sleep(0.1)
        raise RuntimeError("the provider broke")


async def _session_of(hub: MemoryDiscovery, sink: Any) -> Any:
    class Session:
        async def publish(self, announcement: Any) -> None:
            pass

        async def withdraw(self) -> None:
            pass

        async def resolve(self, peer_id: Any) -> list[bytes]:
            return []

    sink.found(
        make_record(Identity.generate(), 1, nickname="ghost", endpoint_name="", endpoints=[("10.0.0.9", 1)]),
        source="failing",
    )
    await anyio.lowlevel.checkpoint()
    return Session()


async def test_a_provider_that_cannot_start_fails_the_node_clearly() -> None:
    from peerkit import DiscoveryError

    node = Node(
        identity=Identity.generate(),
        network=MemoryNetwork(),
        listen=("10.0.0.1", 0),
        discovery=[Failing(late=False)],
    )
    with pytest.raises(DiscoveryError, match="failing could not start: no such interface") as caught:
        await node.__aenter__()
    assert isinstance(caught.value.__cause__, OSError)
    assert not node.running


@pytest.mark.logs_errors
async def test_a_provider_that_breaks_later_is_logged_and_forgotten(caplog: pytest.LogCaptureFixture) -> None:
    async with node("alice", "10.0.0.1", MemoryNetwork(), discovery=[Failing(late=True)]) as alice:
        await alice.sign_in(Scope.NEAR_ME)
        assert [p.nickname for p in alice.nearby()] == ["ghost"]
        await anyio.sleep(0.2)
        assert alice.nearby() == []  # what it reported is forgotten
        assert alice.running
    assert "discovery provider failing failed" in caplog.text


async def test_signing_out_and_in_again_shows_the_same_people() -> None:
    async with near(2) as (alice, bob):
        assert [p.id for p in alice.nearby()] == [bob.id]
        await alice.sign_out(Scope.NEAR_ME)
        with pytest.raises(NotSignedIn):
            alice.nearby()
        await alice.sign_in(Scope.NEAR_ME)
        assert [p.id for p in alice.nearby()] == [bob.id]  # the providers still see bob
        async with alice.watch_nearby(initial=True) as watch:
            event = await next_change(watch)
            assert (event.change, event.peer.id) == (ChangeType.ADDED, bob.id)


class Stuck:
    """A provider whose publish and withdraw never return."""

    scopes = Scope.NEAR_ME
    name = "stuck"

    async def run(self, sink: Any, *, task_status: Any) -> None:
        class Session:
            async def publish(self, announcement: Any) -> None:
                await anyio.sleep_forever()

            async def withdraw(self) -> None:
                await anyio.sleep_forever()

            async def resolve(self, peer_id: Any) -> list[bytes]:
                return []

        task_status.started(Session())
        await anyio.sleep_forever()


@pytest.mark.logs_errors
async def test_a_stuck_provider_does_not_hang_sign_in_or_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("peerkit.node.nearby.PROVIDER_TIMEOUT", 0.1)
    async with node("alice", "10.0.0.1", MemoryNetwork(), discovery=[Stuck()]) as alice:
        with anyio.fail_after(2):
            await alice.sign_in(Scope.NEAR_ME)
            await alice.sign_out(Scope.NEAR_ME)
        assert "stuck failed to publish" in caplog.text
        assert "stuck failed to withdraw" in caplog.text
        await alice.sign_in(Scope.NEAR_ME)
    # leaving the node while signed in does not hang either


async def test_a_handler_added_later_sees_who_is_already_near() -> None:
    async with near(2) as (alice, _):
        seen: list[tuple[ChangeType, str]] = []
        arrived = anyio.Event()

        async def changed(event: NearbyChanged) -> None:
            seen.append((event.change, event.peer.nickname))
            arrived.set()

        handle = alice.add_nearby_handler(changed)
        with anyio.fail_after(2):
            await arrived.wait()
        assert seen == [(ChangeType.ADDED, "bob")]
        handle.remove()


async def test_directory_endpoints_follow_their_sources(alice: Identity, bob: Identity) -> None:
    from peerkit import EndPoint

    changes: list[ChangeType] = []
    directory = Directory(alice.id, lambda change, record: changes.append(change))
    envelope = make_record(bob, 1, nickname="bob", endpoint_name="", endpoints=[("10.0.0.9", 7000)])
    directory.found(envelope, source="mdns")
    record = directory.found(envelope, source="static", endpoints=[EndPoint("192.0.2.7", 7100)])
    assert record is not None
    assert [str(e) for e in record.endpoints] == ["192.0.2.7:7100", "10.0.0.9:7000"]  # seen first
    directory.lost(bob.id, source="static")
    now = directory.get(bob.id)
    assert now is not None
    assert [str(e) for e in now.endpoints] == ["10.0.0.9:7000"]
    assert now.sources == {"mdns"}
    assert changes == [ChangeType.ADDED, ChangeType.UPDATED, ChangeType.UPDATED]


def test_a_record_marks_how_each_address_was_learned(alice: Identity) -> None:
    endpoints = [("203.0.113.7", 41000, "mapped"), ("192.168.1.20", 7000, "interface"), ("10.0.0.2", 7000)]
    _, _, _, read = read_record(make_record(alice, 1, nickname="a", endpoint_name="", endpoints=endpoints))
    assert [(e.host, e.port, e.how) for e in read] == [
        ("203.0.113.7", 41000, "mapped"),
        ("192.168.1.20", 7000, "interface"),
        ("10.0.0.2", 7000, ""),  # given without a mark
    ]
    _, _, _, bare = read_record(
        make_record(alice, 2, nickname="a", endpoint_name="", endpoints=[("10.0.0.2", 1)])
    )
    assert bare[0].how == ""  # no "how" key at all: another implementation's record


@pytest.mark.parametrize(
    "how",
    [["mapped"], "mapped", ["mapped", 3], ["x" * 17, "interface"], ["a", "b", "c"]],
    ids=["too-few", "not-a-list", "not-text", "too-long", "too-many"],
)
def test_a_record_with_malformed_marks_is_refused(alice: Identity, how: object) -> None:
    content = {"nick": "a", "name": "", "addrs": [["10.0.0.2", 1], ["10.0.0.3", 1]], "how": how}
    with pytest.raises(InvalidRecord, match='record "how"'):
        read_record(records.sign_record(alice, 1, content))
