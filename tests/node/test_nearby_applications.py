"""People near me by application: the ids a record carries, and the live filter built on them."""

from __future__ import annotations

import uuid

import anyio
import anyio.abc
import pytest
from conftest import CHAT, accept_chat
from test_nearby import near, next_change

from peerkit import (
    Application,
    ChangeType,
    EndPoint,
    InvalidRecord,
    Invitation,
    InvitationResponse,
    MemoryDiscovery,
    Node,
    PeerUnreachable,
    Scope,
)
from peerkit.discovery import MAX_RECORD_APPLICATIONS, make_record, read_record, record_applications
from peerkit.identity import Identity
from peerkit.node import nearby
from peerkit.proto import records
from peerkit.testing import MemoryNetwork

pytestmark = pytest.mark.anyio

GAME = Application(id=uuid.UUID("6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"), description="a game")
OTHER = Application(id=uuid.UUID("6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5c"), description="another")


async def test_the_record_carries_the_applications_shown_near_me() -> None:
    hidden = Application(id=uuid.uuid4(), scope=Scope.INTERNET)  # contacts only: not near me
    near_only = Application(id=uuid.uuid4(), scope=Scope.NEAR_ME)
    async with near(2) as (alice, bob):
        for app in (GAME, hidden, near_only):
            await bob.register_application(app)
        with anyio.fail_after(5):
            while {p.id: p for p in alice.nearby()}[bob.id].applications != {GAME.id, near_only.id}:
                await anyio.sleep(0.01)
        assert record_applications(records.open_record(bob._nearby.record)) == {GAME.id, near_only.id}


async def test_nearby_and_find_nearby_by_application() -> None:
    async with near(3) as (alice, bob, carol):
        await carol.register_application(OTHER)
        with pytest.raises(PeerUnreachable, match=f"application {GAME.id}"):
            await alice.find_nearby(application=GAME, timeout=0.2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(bob.register_application, GAME)
            found = await alice.find_nearby(application=GAME.id, timeout=5)  # an Application or its id
        assert found.id == bob.id
        assert [p.id for p in alice.nearby(application=GAME)] == [bob.id]
        assert [p.id for p in alice.nearby(application=OTHER.id)] == [carol.id]
        assert {p.id for p in alice.nearby()} == {bob.id, carol.id}
        assert (await alice.find_nearby(nickname="bob", application=GAME, timeout=1)).id == bob.id
        with pytest.raises(PeerUnreachable, match="nickname 'carol' and application"):
            await alice.find_nearby(nickname="carol", application=GAME, timeout=0.2)
        with pytest.raises(TypeError, match="Application or a UUID, not str"):
            alice.nearby(application=str(GAME.id))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Application or a UUID"):
            alice.watch_nearby(application=42)  # type: ignore[arg-type]


async def test_watch_nearby_follows_installs_and_removals() -> None:
    async with near(3) as (alice, bob, carol), alice.watch_nearby(application=GAME) as watch:
        await carol.register_application(OTHER)  # not the game: nothing comes
        await bob.register_application(GAME)
        added = await next_change(watch)
        assert (added.change, added.peer.id) == (ChangeType.ADDED, bob.id)
        assert GAME.id in added.peer.applications
        bob.nickname = "bobby"  # a change of a peer that has it
        updated = await next_change(watch)
        assert (updated.change, updated.peer.nickname) == (ChangeType.UPDATED, "bobby")
        await bob.unregister_application(GAME)
        removed = await next_change(watch)
        assert (removed.change, removed.peer.id) == (ChangeType.DELETED, bob.id)
        await carol.register_application(GAME)
        assert (await next_change(watch)).peer.id == carol.id
        await carol.sign_out(Scope.NEAR_ME)  # leaving: DELETED as well
        gone = await next_change(watch)
        assert (gone.change, gone.peer.id) == (ChangeType.DELETED, carol.id)
        with pytest.raises(TimeoutError):
            await next_change(watch, timeout=0.3)  # carol's OTHER and bob, without it: nothing


async def test_watch_nearby_initial_lists_those_who_have_it_now() -> None:
    async with near(3) as (alice, bob, carol):
        await bob.register_application(GAME)
        await carol.register_application(OTHER)
        with anyio.fail_after(5):
            while len(alice.nearby(application=GAME)) != 1 or len(alice.nearby(application=OTHER)) != 1:
                await anyio.sleep(0.01)
        async with alice.watch_nearby(application=GAME, initial=True) as watch:
            first = await next_change(watch)
            assert (first.change, first.peer.id) == (ChangeType.ADDED, bob.id)
            assert watch.pending == 0


def test_a_record_holds_at_most_32_applications_and_refuses_malformed_ones() -> None:
    alice = Identity.generate()
    many = [uuid.uuid4() for _ in range(MAX_RECORD_APPLICATIONS + 5)]
    envelope = make_record(alice, 1, nickname="a", endpoint_name="", endpoints=[], applications=many)
    assert record_applications(read_record(envelope)[0]) == frozenset(many[:MAX_RECORD_APPLICATIONS])
    plain = make_record(alice, 2, nickname="a", endpoint_name="", endpoints=[])
    assert "apps" not in records.open_record(plain).body
    assert record_applications(read_record(plain)[0]) == frozenset()
    content = {"nick": "a", "name": "", "addrs": []}
    for bad in ([b"short"], b"\x00" * 16, [GAME.id.bytes] * (MAX_RECORD_APPLICATIONS + 1), [str(GAME.id)]):
        with pytest.raises(InvalidRecord, match='"apps" must be a list of at most 32 16-byte'):
            read_record(records.sign_record(alice, 3, {**content, "apps": bad}))


async def test_a_contact_that_listens_elsewhere_now_is_found_near_me() -> None:
    # bob was added where he listened once; he now listens at another port on the LAN, and his
    # record reaches alice only after she invites him (as when a command signs in and invites at
    # once). The invitation waits for him among the people near her.
    async with near(2) as (alice, bob):
        await accept_chat(alice, bob)
        await bob.sign_out(Scope.NEAR_ME)
        stale = EndPoint(bob.endpoint.host, bob.endpoint.port + 1)  # nothing listens there
        contact = await alice.contacts.add(bob.id, nickname="bob", endpoints=[stale])
        async with anyio.create_task_group() as tg:

            async def later() -> None:
                await anyio.sleep(0.3)
                await bob.sign_in(Scope.NEAR_ME)

            tg.start_soon(later)
            with anyio.fail_after(5):
                assert await contact.invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED


async def test_a_record_heard_while_the_stale_address_is_dialled_is_where_the_contact_is_looked_for() -> None:
    # alice invites bob where he listened once; while that dial is under way (it hangs, then
    # fails), his record arrives near her. The record's address was not tried: it is where he is
    # looked for, not taken as tried and failed with the stale one ("not found anywhere else").
    async with near(2) as (alice, bob):
        await accept_chat(alice, bob)
        await bob.sign_out(Scope.NEAR_ME)
        network = alice.config.network
        assert isinstance(network, MemoryNetwork)
        tarpit = await network.listen(bob.endpoint.host, bob.endpoint.port + 1)
        contact = await alice.contacts.add(
            bob.id, nickname="bob", endpoints=[EndPoint(bob.endpoint.host, bob.endpoint.port + 1)]
        )
        async with anyio.create_task_group() as tg:

            async def dialled(stream: anyio.abc.ByteStream) -> None:
                await bob.sign_in(Scope.NEAR_ME)  # his record arrives while alice dials
                with anyio.fail_after(5):
                    await alice.find_nearby(peer_id=bob.id, timeout=5)
                await stream.aclose()  # and the stale address fails

            tg.start_soon(tarpit.serve, dialled)
            with anyio.fail_after(8):
                assert await contact.invite(CHAT, timeout=8) is InvitationResponse.ACCEPTED
            tg.cancel_scope.cancel()
        await tarpit.aclose()


@pytest.mark.parametrize("settle", [nearby.NEAR_SETTLE, 0.0])
async def test_a_node_that_just_started_gives_its_lan_longer_to_show_a_contact(
    settle: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alice starts, signs in and invites bob at once where he listened once (a command does so).
    # His record reaches her 2.5 s after her start (a multicast answer lost, a busy machine):
    # later than a node that has run a while waits for a peer near it (NEAR_WAIT, 1.5 s), within
    # the time a node that just started gives its LAN (NEAR_SETTLE). With no such time (settle
    # 0: as if she had run a while), he is not found.
    monkeypatch.setattr(nearby, "NEAR_SETTLE", settle)
    net, hub = MemoryNetwork(), MemoryDiscovery()
    identity = Identity.generate()
    async with Node(
        nickname="bob", identity=identity, network=net, listen=("10.0.0.2", 0), discovery=[hub]
    ) as bob:
        alice = Node(
            nickname="alice",
            identity=Identity.generate(),
            network=net,
            listen=("10.0.0.1", 0),
            discovery=[hub],
        )
        async with alice, anyio.create_task_group() as tg:
            await accept_chat(alice, bob)
            await alice.sign_in(Scope.NEAR_ME)
            stale = EndPoint(bob.endpoint.host, bob.endpoint.port + 1)  # nothing listens there
            contact = await alice.contacts.add(bob.id, nickname="bob", endpoints=[stale])

            async def later() -> None:
                await anyio.sleep(2.5)
                await bob.sign_in(Scope.NEAR_ME)

            tg.start_soon(later)
            with anyio.fail_after(8):
                if settle:
                    assert await contact.invite(CHAT, timeout=8) is InvitationResponse.ACCEPTED
                else:
                    with pytest.raises(PeerUnreachable) as failed:
                        await contact.invite(CHAT, timeout=8)
                    # Both ways are told: where he was, and where he was looked for.
                    assert str(failed.value) == (
                        f"could not connect to {stale.host}:{stale.port}: connection refused; "
                        f"{bob.id.fingerprint} was not found anywhere else"
                    )


async def test_an_open_channel_that_breaks_mid_invitation_falls_back_on_where_the_peer_is_now() -> None:
    # alice invites bob on a channel she has open (the warm path, with no lookup task beside it).
    # That bob goes away with the invitation; the same identity near her, elsewhere, gets it.
    net, hub = MemoryNetwork(), MemoryDiscovery()
    bob_identity = Identity.generate()
    answered: list[str] = []

    async def gone(invitation: Invitation) -> InvitationResponse:
        answered.append("first")
        await first.disconnect(invitation.sender_id)  # the channel breaks before the answer
        return InvitationResponse.ACCEPTED

    async def here(invitation: Invitation) -> InvitationResponse:
        answered.append("second")
        return InvitationResponse.ACCEPTED

    first = Node(identity=bob_identity, network=net, listen=("10.0.0.2", 0))
    second = Node(identity=bob_identity, network=net, listen=("10.0.0.3", 0), discovery=[hub])
    alice = Node(identity=Identity.generate(), network=net, listen=("10.0.0.1", 0), discovery=[hub])
    async with first, second, alice:
        for node, handler in ((first, gone), (second, here), (alice, None)):
            await node.register_application(CHAT)
            if handler is not None:
                node.add_invitation_handler(CHAT, handler)
        await second.sign_in(Scope.NEAR_ME)
        await alice.sign_in(Scope.NEAR_ME)
        await alice.find_nearby(peer_id=bob_identity.id, timeout=5)
        peer = await alice.peer_at(first.endpoint.host, first.endpoint.port)
        assert alice.channels(bob_identity.id) == 1
        with anyio.fail_after(10):
            assert await peer.invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED
        assert answered == ["first", "second"]
