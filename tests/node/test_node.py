"""The Node over the in-memory network: lifetime, sign-in, applications, handlers, invitations."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from conftest import (
    ACCEPTED,
    CHAT,
    DECLINED,
    EXPIRED,
    GAME,
    accept_all,
    accept_chat,
    facing_mallory,
    raw_channel,
)

from peerkit import (
    Application,
    AppStream,
    EndPoint,
    HandshakeError,
    Identity,
    Invitation,
    InvitationPolicy,
    InvitationResponse,
    KeepalivePolicy,
    LimitExceeded,
    Node,
    NotAllowed,
    NotRunning,
    Peer,
    PeerUnreachable,
    PresenceStatus,
    ProtocolError,
    RequestPolicy,
    Scope,
    SecureChannel,
)
from peerkit.errors import StoreError
from peerkit.net import channel as channel_module
from peerkit.net import stamps
from peerkit.node import settings as settings_module
from peerkit.testing import MemoryDiscovery, MemoryNetwork, nodes, running_tasks

pytestmark = pytest.mark.anyio


def recording(seen: list[Invitation]) -> Callable[[Invitation], Awaitable[InvitationResponse]]:
    """A handler that accepts every invitation and keeps it in ``seen``."""

    async def handler(invitation: Invitation) -> InvitationResponse:
        seen.append(invitation)
        return ACCEPTED

    return handler


# -- lifetime ----------------------------------------------------------------------------------
async def test_node_lifetime_and_endpoint(tmp_path: Path) -> None:
    node = Node(nickname="alice", data_dir=tmp_path, listen=("127.0.0.1", 0))
    with pytest.raises(NotRunning):
        node.endpoint  # noqa: B018
    with pytest.raises(NotRunning):
        await node.register_application(CHAT)
    async with node:
        assert node.running
        assert (tmp_path / "identity.key").exists()
        assert node.endpoint.host == "127.0.0.1"
        assert node.endpoint.port > 0
        first_id = node.id
        with pytest.raises(RuntimeError, match="already running"):
            async with node:
                pass
        assert node.running
    assert not node.running
    with pytest.raises(NotRunning):
        await node.sign_in(Scope.NEAR_ME)
    with pytest.raises(NotRunning, match="has stopped; a Node runs once"):
        async with node:
            pass
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as again:
        assert again.id == first_id  # the identity was persisted


async def test_a_node_json_of_an_earlier_version_is_folded_into_the_database(tmp_path: Path) -> None:
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:
        first_id = node.id
    (tmp_path / "node.json").write_text(json.dumps({"endpoint_name": "attic", "other": 1}), "utf-8")
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:
        assert node.id == first_id
        assert node.endpoint_name == "attic"
        assert node.endpoint.name == "attic"
    assert not (tmp_path / "node.json").exists()
    assert (tmp_path / "node.json.migrated").exists()
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:
        assert node.endpoint_name == "attic"  # from the database now


async def test_an_unreadable_node_json_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "node.json").write_text("{not json", "utf-8")
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:
        assert node.endpoint_name == ""
    assert "unreadable settings file" in caplog.text
    assert (tmp_path / "node.json.migrated").exists()


async def test_an_endpoint_name_set_before_start_is_kept(tmp_path: Path) -> None:
    node = Node(data_dir=tmp_path, listen=("127.0.0.1", 0))
    node.endpoint_name = "porch"
    async with node:
        assert node.endpoint.name == "porch"
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as again:
        assert again.endpoint_name == "porch"


async def test_iterators_of_a_stopped_node_are_refused() -> None:
    node = Node(identity=Identity.generate(), listen=("127.0.0.1", 0))
    async with node:
        await node.register_application(CHAT)
    with pytest.raises(NotRunning, match="stopped"):
        node.invitations(CHAT)
    with pytest.raises(NotRunning, match="stopped"):
        node.streams(CHAT)


async def test_wildcard_listen_shows_loopback() -> None:
    async with Node(identity=Identity.generate(), listen=("0.0.0.0", 0)) as node:
        assert node.endpoint.host == "127.0.0.1"


async def test_listen_may_be_given_as_text() -> None:
    node = Node(identity=Identity.generate(), listen="127.0.0.1:0")
    assert repr(node) == f"<Node ? {node.id.fingerprint} stopped>"
    async with node:
        assert node.endpoint.host == "127.0.0.1"
        assert node.endpoint.port > 0
        assert repr(node) == f"<Node ? {node.id.fingerprint} running at 127.0.0.1:{node.endpoint.port}>"
    async with Node(identity=Identity.generate(), listen="[::1]:0") as node:
        assert node.endpoint.host == "::1"
    with pytest.raises(ValueError, match=r"listen: '127\.0\.0\.1' is not HOST:PORT"):
        Node(identity=Identity.generate(), listen="127.0.0.1")
    with pytest.raises(ValueError, match=r"listen: '127\.0\.0\.1:99999': port 99999 is outside"):
        Node(identity=Identity.generate(), listen="127.0.0.1:99999")


async def test_every_method_that_takes_a_peer_id_refuses_anything_else_by_name() -> None:
    # (a text id once made channels() answer 0 and disconnect() nothing, and trace() fail inside)
    async with nodes() as (alice, bob):
        text: Any = str(bob.id)
        calls: list[Callable[[], object]] = [
            lambda: alice.channels(text),
            lambda: alice.disconnect(text),
            lambda: alice.trust(text),
            lambda: alice.untrust(text),
            lambda: alice.trace(text),
            lambda: alice.resolve(text),
            lambda: alice.contacts.has(text),
            lambda: alice.peer(text, bob.endpoint),
        ]

        async def called(call: Callable[[], object]) -> None:
            result = call()
            if inspect.isawaitable(result):
                await result

        for call in calls:
            with pytest.raises(TypeError, match="peer_id must be a PeerId, not str"):
                await called(call)
        assert alice.channels(bob.id) == 0  # (the right type still works)


async def test_watches_and_handlers_made_before_the_node_starts_see_its_events() -> None:
    node = Node(identity=Identity.generate(), network=MemoryNetwork(), listen=("10.0.0.1", 0))
    seen: list[str] = []
    node.add_presence_handler(lambda event: seen.append("handler"), local=True)
    watch = node.events(local=True)
    async with node, watch:
        await node.sign_in(Scope.NEAR_ME)
        with anyio.fail_after(5):
            async for _ in watch:
                break
    assert "handler" in seen


async def test_endpoint_name_is_checked_and_persisted(tmp_path: Path) -> None:
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:
        with pytest.raises(LimitExceeded, match="255"):
            node.endpoint_name = "x" * 256
        with pytest.raises(TypeError):
            node.endpoint_name = 5  # type: ignore[assignment]
        node.endpoint_name = "kitchen"
        assert node.endpoint.name == "kitchen"
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:
        assert node.endpoint_name == "kitchen"


async def test_the_nickname_is_saved_in_the_data_dir(tmp_path: Path) -> None:
    async with Node(nickname="alice", data_dir=tmp_path, listen=("127.0.0.1", 0)):
        pass
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:  # none given: the saved one
        assert node.nickname == "alice"
        assert node.contacts.read_card(node.contacts.sign_card()).nickname == "alice"  # in its card too
        node.nickname = "Alice A."
    async with Node(data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:
        assert node.nickname == "Alice A."
    async with Node(nickname="al", data_dir=tmp_path, listen=("127.0.0.1", 0)) as node:  # given: it wins
        assert node.nickname == "al"


async def test_endpoint_name_reaches_peers() -> None:
    async with nodes() as (alice, bob):
        bob.endpoint_name = "bob's desk"
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert peer.endpoints[0].name == "bob's desk"
        assert peer.nickname == "bob"


async def test_constructor_checks() -> None:
    with pytest.raises(LimitExceeded):
        Node(nickname="n" * 256, identity=Identity.generate())
    with pytest.raises(ValueError, match=r"no discovery provider named 'nosuch'; known: .*mdns.*static"):
        Node(identity=Identity.generate(), discovery=["nosuch"])
    with pytest.raises(TypeError, match="DiscoveryProvider"):
        Node(identity=Identity.generate(), discovery=[42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="port"):
        Node(identity=Identity.generate(), listen=("127.0.0.1", 70000))
    with pytest.raises(TypeError):
        Node(identity="key")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data_dir must be a str or a Path, not int"):
        Node(data_dir=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        KeepalivePolicy(interval=0)


async def test_several_nodes_in_one_process_share_nothing() -> None:
    async with nodes(4) as group:
        assert len({n.id for n in group}) == 4
        assert len({n.endpoint for n in group}) == 4


async def test_exit_closes_channels_and_handlers() -> None:
    cancelled = anyio.Event()
    async with nodes() as (alice, bob):
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)

        @bob.on_invitation(CHAT)
        async def slow(invitation: Invitation) -> InvitationResponse:
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()
            raise AssertionError

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.invite, CHAT)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert cancelled.is_set()
    assert alice.channels(bob.id) == 0


# -- sign-in (R3) --------------------------------------------------------------------------
async def test_sign_in_rules() -> None:
    directory = MemoryDiscovery()
    async with nodes(2, discovery=directory) as (alice, bob):
        assert alice.presence.status is PresenceStatus.OFFLINE
        with pytest.raises(ValueError, match="NONE"):
            await alice.sign_in(Scope.NONE)
        with pytest.raises(ValueError, match="not a Scope"):
            await alice.sign_in(7)  # type: ignore[arg-type]
        await alice.sign_out(Scope.NEAR_ME)  # not signed in: a no-op
        await alice.sign_in(Scope.NEAR_ME)
        await alice.sign_in(Scope.NEAR_ME)  # twice: a no-op
        assert alice.scope is Scope.NEAR_ME
        assert alice.presence.status is PresenceStatus.ONLINE
        assert [a.id for a in directory.announcements()] == [alice.id]
        found = await bob.resolve(alice.id)
        assert found.endpoints == (alice.endpoint,)
        assert found.nickname == "alice"
        await alice.sign_in(Scope.INTERNET)
        assert alice.scope is Scope.ALL
        await alice.sign_out(Scope.NEAR_ME)
        assert alice.scope is Scope.INTERNET
        assert directory.announcements() == []
        with pytest.raises(PeerUnreachable, match="no discovery provider"):
            await bob.resolve(alice.id)
        await alice.sign_in(Scope.NEAR_ME)
    assert directory.announcements() == []  # exit signs out


# -- applications --------------------------------------------------------------------------
async def test_register_and_unregister_applications() -> None:
    async with nodes(1) as (alice,):
        await alice.register_application(CHAT)
        await alice.register_application(GAME)
        assert alice.applications() == [CHAT, GAME]
        with pytest.raises(ValueError, match="already registered"):
            await alice.register_application(CHAT)
        with pytest.raises(TypeError):
            await alice.register_application(CHAT.id)  # type: ignore[arg-type]
        await alice.unregister_application(CHAT.id)
        await alice.unregister_application(GAME)
        assert alice.applications() == []
        with pytest.raises(ValueError, match="not registered"):
            await alice.unregister_application(GAME)
        for i in range(64):
            await alice.register_application(Application(id=uuid.UUID(int=i + 100)))
        with pytest.raises(LimitExceeded, match="64"):
            await alice.register_application(CHAT)
        assert len(alice.applications()) == 64


async def test_one_handler_per_application_and_handles_remove() -> None:
    async with nodes(1) as (alice,):
        handle = alice.add_invitation_handler(CHAT, accept_all)
        with pytest.raises(ValueError, match="already has"):
            alice.add_invitation_handler(CHAT, accept_all)
        with pytest.raises(ValueError, match="already has"):
            alice.invitations(CHAT)
        handle.remove()
        handle.remove()  # twice is harmless
        async with alice.invitations(CHAT):
            with pytest.raises(ValueError, match="already has"):
                alice.on_invitation(CHAT)(accept_all)
        alice.on_invitation(CHAT)(accept_all)  # free again after the iterator closed
        with pytest.raises(TypeError, match="coroutine function"):
            alice.add_invitation_handler(GAME, "accept")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="coroutine function"):
            alice.add_stream_handler(GAME, None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Application or its uuid"):
            alice.add_invitation_handler("chat", accept_all)  # type: ignore[arg-type]


# -- invitations -------------------------------------------------------------------------------
async def test_invitation_accepted_with_everything_the_application_needs() -> None:
    async with nodes() as (alice, bob):
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)
        seen: list[Invitation] = []
        bob.add_invitation_handler(CHAT, recording(seen))

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert peer.id == bob.id
        assert await peer.invite(CHAT, message="join?", data=b"\x00board", timeout=5) is ACCEPTED
        (invitation,) = seen
        assert invitation.sender_id == alice.id
        assert invitation.nickname == "alice"
        assert invitation.endpoint == alice.endpoint
        assert invitation.application == CHAT
        assert invitation.message == "join?"
        assert invitation.data == b"\x00board"
        assert invitation.trusted is False
        assert invitation.response is ACCEPTED
        # The invitation's peer can be invited back.
        await alice.register_application(GAME)
        await bob.register_application(GAME)
        alice.add_invitation_handler(GAME, accept_all)
        assert await invitation.peer.invite(GAME, timeout=5) is ACCEPTED


async def test_unregistered_application_is_declined_without_any_handler() -> None:
    async with nodes() as (alice, bob):
        await alice.register_application(CHAT)
        called: list[Invitation] = []
        handler = recording(called)
        bob.add_invitation_handler(CHAT, handler)  # a handler, but the app is not registered
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port, bob.id)
        assert await peer.invite(CHAT, timeout=5) is DECLINED
        assert called == []


async def test_registered_application_without_handler_declines() -> None:
    async with nodes() as (alice, bob):
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port, bob.id)
        assert await peer.invite(CHAT, timeout=5) is DECLINED


async def test_inviter_must_register_and_respect_limits_before_sending() -> None:
    async with nodes() as (alice, bob):
        called: list[Invitation] = []
        handler = recording(called)
        await bob.register_application(CHAT)
        bob.add_invitation_handler(CHAT, handler)
        peer = alice.peer(bob.id, bob.endpoint)
        with pytest.raises(ValueError, match="not registered"):
            await peer.invite(CHAT)
        await alice.register_application(CHAT)
        with pytest.raises(LimitExceeded, match="invitation message is 256 characters; the limit is 255"):
            await peer.invite(CHAT, message="m" * 256)
        with pytest.raises(LimitExceeded, match="invitation data is 16385 bytes; the limit is 16384"):
            await peer.invite(CHAT, data=bytes(16385))
        with pytest.raises(LimitExceeded, match="300"):
            await peer.invite(CHAT, timeout=301)
        with pytest.raises(ValueError, match="positive"):
            await peer.invite(CHAT, timeout=0)
        with pytest.raises(TypeError):
            await peer.invite(CHAT, message=b"bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await peer.invite("chat")  # type: ignore[arg-type]
        assert called == []
        assert alice.channels(bob.id) == 0  # nothing was even dialled
        assert await peer.invite(CHAT, message="m" * 255, data=bytes(16384), timeout=5) is ACCEPTED


@pytest.mark.logs_errors
async def test_handler_that_raises_declines_and_the_node_lives_on(caplog: pytest.LogCaptureFixture) -> None:
    async with nodes() as (alice, bob):
        for node in (alice, bob):
            await node.register_application(CHAT)
        calls = 0

        @bob.on_invitation(CHAT)
        async def broken(invitation: Invitation) -> InvitationResponse:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("boom")
            return ACCEPTED

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        with caplog.at_level(logging.ERROR, logger="peerkit"):
            assert await peer.invite(CHAT, timeout=5) is DECLINED
        assert "boom" in caplog.text
        assert await peer.invite(CHAT, timeout=5) is ACCEPTED


async def test_handler_may_answer_with_accept_or_decline() -> None:
    async with nodes() as (alice, bob):
        for node in (alice, bob):
            await node.register_application(CHAT)

        @bob.on_invitation(CHAT)
        async def handler(invitation: Invitation) -> None:
            if invitation.message == "yes":
                invitation.accept()
            elif invitation.message == "no":
                invitation.decline()
            with pytest.raises(RuntimeError, match="already answered"):
                invitation.decline()

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert await peer.invite(CHAT, "yes", timeout=5) is ACCEPTED
        assert await peer.invite(CHAT, "no", timeout=5) is DECLINED


async def test_async_iterator_form() -> None:
    async with nodes() as (alice, bob):
        for node in (alice, bob):
            await node.register_application(CHAT)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        results: list[InvitationResponse] = []

        async def invite_twice() -> None:
            results.append(await peer.invite(CHAT, "first", timeout=5))
            results.append(await peer.invite(CHAT, "second", timeout=5))

        async with bob.invitations(CHAT) as invitations, anyio.create_task_group() as tg:
            tg.start_soon(invite_twice)
            count = 0
            async for invitation in invitations:
                count += 1
                if invitation.message == "first":
                    invitation.accept()
                else:
                    invitation.decline()
                    break
        assert results == [ACCEPTED, DECLINED]
        # Closed: invitations are declined again, none waits.
        assert await peer.invite(CHAT, timeout=5) is DECLINED


async def test_a_strangers_invitations_waiting_unread_never_keep_a_contacts_out() -> None:
    # bob's iterator holds 4 unread invitations; strangers may fill 3 of the places.
    async with nodes(3, nicknames=["bob", "carol", "dave"], queue_size=4) as (bob, carol, dave):
        for node in (bob, carol, dave):
            await node.register_application(CHAT)
        await bob.contacts.add(dave.contacts.me)
        from_carol = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
        from_dave = await dave.peer_at(bob.endpoint.host, bob.endpoint.port)
        answers: dict[str, InvitationResponse] = {}

        async def invite(peer: Peer, message: str) -> None:
            answers[message] = await peer.invite(CHAT, message, timeout=30)

        async with bob.invitations(CHAT) as invitations, anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(invite, from_carol, f"carol {n}")
            with anyio.fail_after(10):
                while not answers:  # the fourth: declined at once, unread
                    await anyio.sleep(0.01)
            assert list(answers.values()) == [DECLINED]
            tg.start_soon(invite, from_dave, "dave")
            received = []
            with anyio.fail_after(10):
                async for invitation in invitations:
                    received.append(invitation.message)
                    invitation.accept()
                    if len(received) == 4:
                        break
        assert "dave" in received
        assert answers["dave"] is ACCEPTED
        assert list(answers.values()).count(ACCEPTED) == 4


async def test_policy_and_trust() -> None:
    async with nodes(3) as (alice, bob, carol):
        for node in (alice, bob, carol):
            await node.register_application(CHAT)
        seen: list[Invitation] = []
        bob.add_invitation_handler(CHAT, recording(seen))

        from_alice = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        from_carol = await carol.peer_at(bob.endpoint.host, bob.endpoint.port)
        bob.trust(alice.id)
        assert bob.trusted == {alice.id}
        bob.invitation_policy = InvitationPolicy.CONTACTS_ONLY
        assert await from_alice.invite(CHAT, timeout=5) is ACCEPTED
        assert seen[-1].trusted is True
        assert await from_carol.invite(CHAT, timeout=5) is DECLINED
        assert len(seen) == 1
        bob.invitation_policy = InvitationPolicy.NOBODY
        assert await from_alice.invite(CHAT, timeout=5) is DECLINED
        bob.invitation_policy = InvitationPolicy.ANYONE
        assert await from_carol.invite(CHAT, timeout=5) is ACCEPTED
        assert seen[-1].trusted is False
        bob.untrust(alice.id)
        assert bob.trusted == frozenset()
        with pytest.raises(TypeError):
            bob.invitation_policy = "anyone"  # type: ignore[assignment]


async def test_no_answer_is_expired_on_both_sides() -> None:
    async with nodes() as (alice, bob):
        for node in (alice, bob):
            await node.register_application(CHAT)
        seen: list[Invitation] = []
        handler_cancelled = anyio.Event()

        @bob.on_invitation(CHAT)
        async def never(invitation: Invitation) -> InvitationResponse:
            seen.append(invitation)
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                handler_cancelled.set()
                raise
            raise AssertionError

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        start = anyio.current_time()
        assert await peer.invite(CHAT, timeout=0.3) is EXPIRED
        assert anyio.current_time() - start < 1.5
        with anyio.fail_after(2):
            await handler_cancelled.wait()
        assert seen[0].withdrawn


async def test_receiver_expires_after_ttl() -> None:
    # A raw peer that never cancels: the receiving node answers "expired" once the ttl is over.
    async with nodes() as (alice, bob):
        await bob.register_application(CHAT)
        seen: list[Invitation] = []

        @bob.on_invitation(CHAT)
        async def never(invitation: Invitation) -> InvitationResponse:
            seen.append(invitation)
            await anyio.sleep_forever()
            raise AssertionError

        async with await raw_channel(alice, bob) as channel:
            await channel.send(
                {"t": "invite", "rid": 5, "app": CHAT.id.bytes, "msg": "", "data": b"", "ttl": 1}
            )
            with anyio.fail_after(3):
                reply = await channel.receive()
            assert reply == {"t": "invite_reply", "rid": 5, "r": "expired"}
        assert seen[0].withdrawn_reason == "expired"


async def test_cancelling_the_inviter_cancels_the_handler() -> None:
    async with nodes() as (alice, bob):
        for node in (alice, bob):
            await node.register_application(CHAT)
        started = anyio.Event()
        cancelled = anyio.Event()
        seen: list[Invitation] = []

        @bob.on_invitation(CHAT)
        async def waiting(invitation: Invitation) -> InvitationResponse:
            seen.append(invitation)
            started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                cancelled.set()
                raise
            raise AssertionError

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.invite, CHAT)
            await started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(2):
            await cancelled.wait()
        assert seen[0].withdrawn_reason == "cancelled"
        with pytest.raises(RuntimeError, match="withdrawn"):
            seen[0].accept()
        # The channel is still fine for the next invitation.
        bob.add_invitation_handler(GAME, accept_all)
        await bob.register_application(GAME)
        await alice.register_application(GAME)
        assert await peer.invite(GAME, timeout=5) is ACCEPTED


# -- several endpoints -------------------------------------------------------------------------
@asynccontextmanager
async def bob_at_two_endpoints(
    net: MemoryNetwork, first: Any, second: Any
) -> AsyncIterator[tuple[Node, Node, list[Invitation]]]:
    identity = Identity.generate()
    seen: list[Invitation] = []
    async with (
        Node(nickname="bob", identity=identity, network=net, listen=("10.0.1.1", 0)) as b1,
        Node(nickname="bob", identity=identity, network=net, listen=("10.0.1.2", 0)) as b2,
    ):
        for node, handler in ((b1, first), (b2, second)):
            await node.register_application(CHAT)

            async def recording(invitation: Invitation, handler: Any = handler) -> Any:
                seen.append(invitation)
                return await handler(invitation)

            node.add_invitation_handler(CHAT, recording)
        yield b1, b2, seen


async def slow_decline(invitation: Invitation) -> InvitationResponse:
    await anyio.sleep(0.1)
    return DECLINED


async def hang(invitation: Invitation) -> InvitationResponse:
    await anyio.sleep_forever()
    raise AssertionError


async def test_several_endpoints_first_accept_wins_and_the_others_are_withdrawn() -> None:
    net = MemoryNetwork()
    async with (
        nodes(1, network=net) as (alice,),
        bob_at_two_endpoints(net, accept_all, hang) as (b1, b2, seen),
    ):
        await alice.register_application(CHAT)
        peer = alice.peer(b1.id, b1.endpoint, b2.endpoint)
        assert await peer.invite(CHAT, timeout=5) is ACCEPTED
        with anyio.fail_after(2):
            while not all(inv.response is not None or inv.withdrawn for inv in seen) or len(seen) < 2:
                await anyio.sleep(0.01)
        (hung,) = [inv for inv in seen if inv.response is None]
        assert hung.withdrawn_reason == "cancelled"


async def test_several_endpoints_declined_if_any_declined_else_expired() -> None:
    net = MemoryNetwork()
    async with nodes(1, network=net) as (alice,):
        await alice.register_application(CHAT)
        async with bob_at_two_endpoints(net, slow_decline, hang) as (b1, b2, _):
            peer = alice.peer(b1.id, b1.endpoint, b2.endpoint)
            assert await peer.invite(CHAT, timeout=0.5) is DECLINED
        async with bob_at_two_endpoints(net, hang, hang) as (b1, b2, _):
            peer = alice.peer(b1.id, b1.endpoint, b2.endpoint)
            assert await peer.invite(CHAT, timeout=0.3) is EXPIRED
        async with bob_at_two_endpoints(net, hang, accept_all) as (b1, b2, _):
            dead = EndPoint("10.9.9.9", 1)
            peer = alice.peer(b1.id, dead, b2.endpoint)  # one endpoint unreachable: the other answers
            assert await peer.invite(CHAT, timeout=5) is ACCEPTED
            with pytest.raises(PeerUnreachable):
                await alice.peer(b1.id, dead, EndPoint("10.9.9.8", 1)).invite(CHAT, timeout=5)


async def test_several_endpoints_the_peers_refusal_is_the_error_not_a_dead_address() -> None:
    # One address of bob's is dead (refused at once), the other answers with an error (bob's
    # budget is spent): the error is bob's answer, which says why.
    net = MemoryNetwork()
    budget = RequestPolicy(rate=0.001, burst=1, strikes=100)
    async with nodes(2, network=net, request_budget=budget) as (alice, bob):
        for node in (alice, bob):
            await node.register_application(CHAT)
        bob.add_invitation_handler(CHAT, accept_all)
        assert await alice.peer(bob.id, bob.endpoint).invite(CHAT, timeout=5) is ACCEPTED
        peer = alice.peer(bob.id, EndPoint("10.9.9.9", 1), bob.endpoint)
        with pytest.raises(ProtocolError, match=r"over 0\.001 requests a second"):
            await peer.invite(CHAT, timeout=5)


@asynccontextmanager
async def web_server() -> AsyncIterator[EndPoint]:
    """Another service on a port a peer once had: it answers anything with text, then closes."""

    async def answer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await stream.receive()
                await stream.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer)
        yield EndPoint("127.0.0.1", listener.extra(anyio.abc.SocketAttribute.local_port))
        tg.cancel_scope.cancel()


async def test_a_service_that_greets_first_is_named_at_once_not_at_the_handshake_deadline() -> None:
    async def greet(stream: anyio.abc.SocketStream) -> None:  # (an SSH server: greets, then waits)
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await stream.send(b"SSH-2.0-OpenSSH_9.6\r\n")
                while await stream.receive():  # (what is no SSH message: it waits for more)
                    pass

    alice = Node(nickname="alice", identity=Identity.generate(), listen=("127.0.0.1", 0))
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with alice, listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, greet)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        with anyio.fail_after(5):  # (the handshake's deadline is 10 s)
            with pytest.raises(
                HandshakeError, match=r"sent text, not a Noise handshake: 'SSH-2\.0-OpenSSH_9\.6'$"
            ):
                await alice.peer_at("127.0.0.1", port)
        tg.cancel_scope.cancel()


async def test_an_address_of_a_peer_that_another_node_or_service_holds_now_is_a_dead_way() -> None:
    # bob's first address is carol's now (IK: she cannot read message 1 and closes), or a web
    # server's (it answers with text): each fails as an address that does not answer does, and
    # bob is reached at his other one -- by an invitation, a request and a stream alike.
    async def greet(stream: AppStream) -> None:
        await stream.send(b"hi")

    alice, bob, carol = (
        Node(nickname=n, identity=Identity.generate(), listen=("127.0.0.1", 0)) for n in "abc"
    )
    async with alice, bob, carol, web_server() as web:  # (over TCP: a web server is one)
        for node in (alice, bob):
            await node.register_application(CHAT)
        bob.add_invitation_handler(CHAT, accept_all)
        bob.add_stream_handler(CHAT, greet)
        for stale in (carol.endpoint, web):
            peer = alice.peer(bob.id, stale, bob.endpoint)
            assert await peer.invite(CHAT, timeout=5) is ACCEPTED
            await alice.disconnect(bob.id)
            with pytest.raises(NotAllowed, match="lets you see nothing"):  # bob's answer: reached
                await peer.get_applications(timeout=5)
            await alice.disconnect(bob.id)
            async with await peer.open_stream(CHAT, timeout=5) as stream:
                assert await stream.receive() == b"hi"
            await alice.disconnect(bob.id)
            # Only there: bob cannot be reached, and the error says where and what happened.
            gone = alice.peer(bob.id, stale)
            for attempt in (
                gone.invite(CHAT, timeout=5),
                gone.get_applications(timeout=5),
                gone.open_stream(CHAT),
            ):
                with pytest.raises(PeerUnreachable, match=rf"not reached at {stale}: "):
                    await attempt
        assert alice.channels(carol.id) == 0
        # Dialled by address alone, the web server is named for what it is.
        with pytest.raises(
            HandshakeError, match=r"sent text, not a Noise handshake: 'HTTP/1\.1 400 Bad Request'"
        ):
            await alice.peer_at(web.host, web.port)


def test_a_number_kept_in_the_settings_is_read_only_when_it_is_one() -> None:
    class Store(dict[str, str]):
        def setting(self, key: str) -> str | None:
            return self.get(key)

    values = {"a": "1796201331699000000", "b": "12x", "c": "\u0661\u0662", "d": "9" * 25, "e": "-5"}
    settings = settings_module.Settings(Store(values), None)  # type: ignore[arg-type]
    assert [settings.get_number(key) for key in (*values, "unset")] == [1796201331699000000, 0, 0, 0, 0, 0]


async def test_a_node_whose_clock_was_set_back_since_its_last_run_still_reaches_its_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alice's last run dialled bob with her clock an hour ahead; this run (a new process: its
    # stamps start afresh) her clock is right. bob refused her dials as replays for an hour; she
    # starts above the last stamp she saved.
    ahead = [3600 * 10**9]
    monkeypatch.setattr(stamps, "time", SimpleNamespace(time_ns=lambda: time.time_ns() + ahead[0]))
    async with Node(nickname="bob", identity=Identity.generate(), listen=("127.0.0.1", 0)) as bob:
        await accept_chat(bob)
        for run in range(2):
            fresh = stamps.HelloStamps()
            monkeypatch.setattr(stamps, "STAMPS", fresh)
            monkeypatch.setattr(channel_module, "STAMPS", fresh)
            monkeypatch.setattr(settings_module, "STAMPS", fresh)
            async with Node(nickname="alice", data_dir=tmp_path, listen=("127.0.0.1", 0)) as alice:
                await alice.register_application(CHAT)
                peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port, bob.id)  # IK
                assert await peer.invite(CHAT, timeout=5) is ACCEPTED, f"run {run}"
            ahead[0] = 0  # the clock put right


async def test_a_node_that_crashed_and_had_its_clock_set_back_still_reaches_its_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As above, but alice's last run ended without stopping (it saved nothing as it stopped): the
    # stamp it saved while it ran is the one the next run starts above.
    ahead = [3600 * 10**9]
    monkeypatch.setattr(stamps, "time", SimpleNamespace(time_ns=lambda: time.time_ns() + ahead[0]))
    stop = settings_module.Settings.stop

    async def crashed(self: settings_module.Settings) -> None:
        await anyio.lowlevel.checkpoint()  # (nothing saved)

    async with Node(nickname="bob", identity=Identity.generate(), listen=("127.0.0.1", 0)) as bob:
        await accept_chat(bob)
        for run in range(2):
            fresh = stamps.HelloStamps()
            for module in (stamps, channel_module, settings_module):
                monkeypatch.setattr(module, "STAMPS", fresh)
            monkeypatch.setattr(settings_module.Settings, "stop", crashed if run == 0 else stop)
            node = Node(nickname="alice", data_dir=tmp_path, listen=("127.0.0.1", 0), store_check=0.02)
            async with node as alice:
                await alice.register_application(CHAT)
                peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port, bob.id)  # IK
                assert await peer.invite(CHAT, timeout=5) is ACCEPTED, f"run {run}"
                await anyio.sleep(0.1)  # (the store is looked at, and the stamp saved)
            ahead[0] = 0  # the clock put right


async def test_a_stamp_that_cannot_be_saved_is_said_and_the_node_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class Full(dict[str, str]):
        def setting(self, key: str) -> str | None:
            return self.get(key)

        async def save_setting(self, key: str, value: str) -> None:
            raise StoreError("the database is full")

    fresh = stamps.HelloStamps()
    monkeypatch.setattr(settings_module, "STAMPS", fresh)
    settings = settings_module.Settings(Full(), None)
    fresh.at_least(settings_module.STAMP_SAVE_GAP)
    await settings.keep_stamp()
    assert "could not save the last hello stamp: the database is full" in caplog.text


# -- the connection manager ----------------------------------------------------------------
async def test_one_channel_per_peer_reused_in_both_directions() -> None:
    async with nodes() as (alice, bob):
        await accept_chat(alice, bob)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        for _ in range(5):
            assert await peer.invite(CHAT, timeout=5) is ACCEPTED
        back = bob.peer(alice.id, alice.endpoint)
        assert await back.invite(CHAT, timeout=5) is ACCEPTED  # over the channel alice opened
        assert alice.channels(bob.id) == 1
        assert bob.channels(alice.id) == 1


async def test_concurrent_requests_share_one_dial() -> None:
    async with nodes() as (alice, bob):
        await accept_chat(alice, bob)
        peer = alice.peer(bob.id, bob.endpoint)
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(functools.partial(peer.invite, CHAT, timeout=5))
        assert alice.channels(bob.id) == 1
        assert bob.channels(alice.id) == 1


async def test_simultaneous_dial_converges_on_one_channel() -> None:
    policy = KeepalivePolicy(interval=0.05, timeout=0.5, idle=60)
    async with nodes(keepalive=policy) as (alice, bob):
        await accept_chat(alice, bob)
        to_bob = alice.peer(bob.id, bob.endpoint)
        to_alice = bob.peer(alice.id, alice.endpoint)
        results: list[InvitationResponse] = []

        async def invite(peer: Any) -> None:
            results.append(await peer.invite(CHAT, timeout=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(invite, to_bob)
            tg.start_soon(invite, to_alice)
        assert results == [ACCEPTED, ACCEPTED]
        with anyio.fail_after(3):
            while alice.channels(bob.id) != 1 or bob.channels(alice.id) != 1:
                await anyio.sleep(0.02)
        # Both kept the same one: the one the lower id dialled.
        (kept_a,) = [c for c in alice._connections.controls(bob.id) if not c.closed]
        (kept_b,) = [c for c in bob._connections.controls(alice.id) if not c.closed]
        assert kept_a.channel.handshake_hash == kept_b.channel.handshake_hash
        assert kept_a.dialler == min(alice.id, bob.id, key=bytes)
        assert await to_bob.invite(CHAT, timeout=5) is ACCEPTED
        assert await to_alice.invite(CHAT, timeout=5) is ACCEPTED
        assert alice.channels(bob.id) == 1


async def test_idle_channels_close() -> None:
    policy = KeepalivePolicy(interval=0.05, timeout=0.5, idle=0.2)
    async with nodes(keepalive=policy) as (alice, bob):
        await accept_chat(alice, bob)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert alice.channels(bob.id) == 1
        with anyio.fail_after(3):
            while alice.channels(bob.id) or bob.channels(alice.id):
                await anyio.sleep(0.02)
        assert await peer.invite(CHAT, timeout=5) is ACCEPTED  # a new channel is dialled


async def test_busy_channel_stays_open_while_a_request_is_outstanding() -> None:
    policy = KeepalivePolicy(interval=0.05, timeout=0.5, idle=0.1)
    async with nodes(keepalive=policy) as (alice, bob):
        for node in (alice, bob):
            await node.register_application(CHAT)

        @bob.on_invitation(CHAT)
        async def slow(invitation: Invitation) -> InvitationResponse:
            await anyio.sleep(0.6)
            return ACCEPTED

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert await peer.invite(CHAT, timeout=5) is ACCEPTED


async def test_keepalive_detects_a_dead_peer() -> None:
    net = MemoryNetwork()
    policy = KeepalivePolicy(interval=0.05, timeout=0.2, idle=60)
    async with nodes(network=net, keepalive=policy) as (alice, bob):
        for node in (alice, bob):
            await node.register_application(CHAT)
        started = anyio.Event()

        @bob.on_invitation(CHAT)
        async def waiting(invitation: Invitation) -> InvitationResponse:
            started.set()
            await anyio.sleep_forever()
            raise AssertionError

        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        result: list[Any] = []

        async def invite() -> None:
            try:
                result.append(await peer.invite(CHAT, timeout=30))
            except PeerUnreachable as exc:
                result.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(invite)
            await started.wait()
            net.freeze(bob.endpoint.host)  # bob's cable is pulled: no close, no reply, nothing
            start = anyio.current_time()
            with anyio.fail_after(3):
                while not result:
                    await anyio.sleep(0.01)
        assert isinstance(result[0], PeerUnreachable)
        assert "stopped answering" in str(result[0])
        assert anyio.current_time() - start < 1.0
        with anyio.fail_after(1):  # the channel's task ends a moment after its requests failed
            while alice.channels(bob.id):
                await anyio.sleep(0.01)
        with pytest.raises(PeerUnreachable):
            await peer.invite(CHAT, timeout=5)


@pytest.mark.parametrize("where", ["memory", pytest.param("tcp", marks=pytest.mark.network)])
async def test_peer_that_goes_away_mid_invitation_is_unreachable(where: str) -> None:
    net = MemoryNetwork() if where == "memory" else None
    alice_host, host = ("10.0.0.1", "10.0.0.9") if net is not None else ("127.0.0.1", "127.0.0.1")
    async with (
        Node(identity=Identity.generate(), network=net, listen=(alice_host, 0)) as alice,
        anyio.create_task_group() as tg,
    ):
        await alice.register_application(CHAT)
        started = anyio.Event()
        bob_scope = anyio.CancelScope()

        async def run_bob(*, task_status: anyio.abc.TaskStatus[Node]) -> None:
            with bob_scope:
                async with Node(identity=Identity.generate(), network=net, listen=(host, 0)) as bob:
                    await bob.register_application(CHAT)

                    @bob.on_invitation(CHAT)
                    async def waiting(invitation: Invitation) -> InvitationResponse:
                        started.set()
                        await anyio.sleep_forever()
                        raise AssertionError

                    task_status.started(bob)
                    await anyio.sleep_forever()

        bob = await tg.start(run_bob)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        outcome: list[Any] = []

        async def invite() -> None:
            try:
                outcome.append(await peer.invite(CHAT, timeout=30))
            except PeerUnreachable as exc:
                outcome.append(exc)

        tg.start_soon(invite)
        await started.wait()
        bob_scope.cancel()  # bob's node exits while the invitation waits
        with anyio.fail_after(2):
            while not outcome:
                await anyio.sleep(0.01)
        assert isinstance(outcome[0], PeerUnreachable)


async def test_unreachable_and_wrong_peers() -> None:
    async with nodes() as (alice, bob):
        with pytest.raises(PeerUnreachable, match="refused"):
            await alice.peer_at("10.0.0.77", 4000)
        with pytest.raises(HandshakeError):
            await alice.peer_at(bob.endpoint.host, bob.endpoint.port, Identity.generate().id)
        with pytest.raises(ValueError, match="own id"):
            await alice.peer_at(bob.endpoint.host, bob.endpoint.port, alice.id)
        with pytest.raises(ValueError, match="itself"):
            await alice.peer_at(alice.endpoint.host, alice.endpoint.port)
        with pytest.raises(ValueError, match="endpoint"):
            alice.peer(bob.id)


# -- what a raw peer can send ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"t": "invite", "rid": 1, "app": CHAT.id.bytes, "msg": "m" * 256, "data": b"", "ttl": 5}, "limit"),
        ({"t": "invite", "rid": 1, "app": CHAT.id.bytes, "msg": "", "data": bytes(16385), "ttl": 5}, "limit"),
        ({"t": "invite", "rid": 1, "app": CHAT.id.bytes, "msg": "", "data": b"", "ttl": 301}, "limit"),
        ({"t": "invite", "rid": 1, "app": b"short", "msg": "", "data": b"", "ttl": 5}, "malformed"),
        ({"t": "invite", "rid": 1, "app": CHAT.id.bytes, "msg": 5, "data": b"", "ttl": 5}, "malformed"),
        ({"t": "invite", "rid": 1, "app": CHAT.id.bytes, "msg": "", "data": "x", "ttl": 5}, "malformed"),
        ({"t": "invite", "rid": 1, "app": CHAT.id.bytes, "msg": "", "data": b"", "ttl": -1}, "malformed"),
        ({"t": "invite", "rid": 1, "app": CHAT.id.bytes}, "malformed"),
        ({"t": "teleport", "rid": 1}, "unknown-type"),
    ],
)
async def test_bad_requests_are_answered_with_errors(message: dict[str, Any], code: str) -> None:
    async with nodes() as (alice, bob):
        await bob.register_application(CHAT)
        bob.add_invitation_handler(CHAT, accept_all)
        async with await raw_channel(alice, bob) as channel:
            await channel.send(message)
            with anyio.fail_after(2):
                reply = await channel.receive()
            assert reply["t"] == "error"
            assert reply["code"] == code
            assert reply["rid"] == 1
            # The node lives on: the same channel still works.
            await channel.send(
                {"t": "invite", "rid": 2, "app": CHAT.id.bytes, "msg": "", "data": b"", "ttl": 5}
            )
            with anyio.fail_after(2):
                assert await channel.receive() == {"t": "invite_reply", "rid": 2, "r": "accepted"}


async def test_ping_and_unknown_messages_without_rid(caplog: pytest.LogCaptureFixture) -> None:
    async with nodes() as (alice, bob), await raw_channel(alice, bob) as channel:
        await channel.send({"t": "ping", "rid": 9})
        with anyio.fail_after(2):
            pong = await channel.receive()
            assert {k: pong[k] for k in ("t", "rid")} == {"t": "pong", "rid": 9}
        await channel.send({"t": "whatever"})
        with anyio.fail_after(2):
            reply = await channel.receive()
        assert reply["t"] == "error"
        assert reply["code"] == "unknown-type"
        assert "rid" not in reply
        await channel.send({"t": "invite_cancel", "rid": 12345})  # unknown rid: ignored
        await channel.send({"t": "invite_cancel", "rid": [1]})  # no rid at all: ignored as well
        await channel.send({"t": "ping", "rid": 10})
        with anyio.fail_after(2):
            pong = await channel.receive()
            assert {k: pong[k] for k in ("t", "rid")} == {"t": "pong", "rid": 10}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # (no handler failed)


async def test_garbage_reply_is_a_protocol_error() -> None:
    async def script(channel: SecureChannel, raw: Any) -> None:
        request = await channel.receive()
        await channel.send({"t": "invite_reply", "rid": request["rid"], "r": "maybe"})
        await anyio.sleep_forever()

    async with facing_mallory(CHAT, script) as (_, mallory):
        with pytest.raises(ProtocolError, match="maybe"):
            await mallory.invite(CHAT, timeout=5)


@pytest.mark.parametrize(
    "second",
    [
        {5: [1]},  # a list under a key that is no text, which the first part lacks
        {"apps": [1], b"x": {7: [2]}},
        {"x" * 60_000: [1]},  # (a long key: the error names it briefly)
    ],
)
async def test_reply_parts_that_do_not_fit_are_a_protocol_error_and_the_node_lives_on(
    second: dict[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def script(channel: SecureChannel, raw: Any) -> None:
        with contextlib.suppress(anyio.EndOfStream):  # (alice closes the channel)
            request = await channel.receive()
            await channel.send({"t": "get_reply", "rid": request["rid"], "more": True, "objects": []})
            await channel.send({"t": "get_reply", "rid": request["rid"], **second})
            await channel.receive()

    caplog.set_level(logging.INFO, logger="peerkit")
    async with facing_mallory(CHAT, script) as (alice, mallory):
        with pytest.raises(PeerUnreachable):
            await mallory.get_objects(timeout=5)
        await alice.register_application(Application(id=uuid.uuid4(), description="after"))  # (it works)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # (no task failed)
    ended = [r.getMessage() for r in caplog.records if "the first part does not" in r.getMessage()]
    assert ended, "the channel ended for the parts that do not fit"
    assert all(len(line) < 400 for line in ended)  # (a long key is named briefly)


async def test_disconnect_closes_the_channel_and_the_next_request_dials_again() -> None:
    async with nodes() as (alice, bob):
        await accept_chat(alice, bob)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        first = alice._connections.controls(bob.id)[0].channel.handshake_hash
        await alice.disconnect(bob.id)
        await alice.disconnect(bob.id)  # nothing left: harmless
        assert alice.channels(bob.id) == 0
        with anyio.fail_after(2):
            while bob.channels(alice.id):
                await anyio.sleep(0.01)
        assert await peer.invite(CHAT, timeout=5) is ACCEPTED
        assert alice._connections.controls(bob.id)[0].channel.handshake_hash != first


async def test_a_node_leaves_no_task_thread_or_socket_behind(tmp_path: Path) -> None:
    import gc
    import threading

    threads = set(threading.enumerate())
    tasks = running_tasks()
    async with (
        Node(data_dir=tmp_path / "a", listen=("127.0.0.1", 0)) as alice,
        Node(data_dir=tmp_path / "b", listen=("127.0.0.1", 0)) as bob,
    ):
        for node in (alice, bob):
            await node.register_application(CHAT)
        bob.add_invitation_handler(CHAT, accept_all)
        bob.add_stream_handler(CHAT, lambda stream: stream.send(b"x"))
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert await peer.invite(CHAT, timeout=5) is ACCEPTED
        async with await peer.open_stream(CHAT) as stream:
            assert await stream.receive() == b"x"
        async with alice.invitations(GAME):
            pass
    await anyio.lowlevel.checkpoint()
    assert running_tasks() <= tasks
    # Name resolution runs in the event loop's own executor ("asyncio_N"), which the loop shuts down
    # when it closes; nothing else may be left.
    left = {t for t in set(threading.enumerate()) - threads if not t.name.startswith("asyncio_")}
    assert left == set()
    gc.collect()  # an unclosed socket or stream would warn here, and warnings are errors


async def test_a_silent_peer_is_unreachable_within_the_timeout() -> None:
    net = MemoryNetwork()
    listener = await net.listen("10.0.7.7", 7000)
    held: list[Any] = []

    async def silent(stream: Any) -> None:
        held.append(stream)  # accepts the connection and never says a word
        await anyio.sleep_forever()

    async with (
        listener,
        nodes(1, network=net) as (alice,),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(listener.serve, silent)
        await alice.register_application(CHAT)
        start = anyio.current_time()
        peer = alice.peer(Identity.generate().id, EndPoint("10.0.7.7", 7000))
        # It never completed a handshake: the invitation reached nobody (not EXPIRED, which says
        # that the peer had it and did not answer).
        with pytest.raises(PeerUnreachable, match="within the invitation's timeout"):
            await peer.invite(CHAT, timeout=0.3)
        assert anyio.current_time() - start < 1
        tg.cancel_scope.cancel()
    for stream in held:
        await stream.aclose()


async def test_peer_at_the_same_address_reuses_the_channel() -> None:
    async with nodes() as (alice, bob):
        first = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        second = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert first == second
        assert alice.channels(bob.id) == 1
        with anyio.fail_after(2):  # bob adopts the channel once its side of the handshake is done
            while bob.channels(alice.id) != 1:
                await anyio.sleep(0.01)


@pytest.mark.logs_errors
async def test_a_failing_dial_does_not_take_the_node_down() -> None:
    class Broken(MemoryNetwork):
        async def connect(self, host: str, port: int, *, local_host: str) -> Any:
            raise RuntimeError("the driver is broken")

    net = Broken()
    async with nodes(1, network=net) as (alice,):
        await alice.register_application(CHAT)
        with pytest.raises(PeerUnreachable, match="driver is broken"):
            await alice.peer(Identity.generate().id, EndPoint("10.0.0.5", 5)).invite(CHAT, timeout=5)
        assert alice.running


async def test_a_flood_of_requests_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # The channel's limit of 128 requests at once (the invitations' own limits are tested apart).
    monkeypatch.setattr("peerkit.node.invitations.MAX_PENDING_PER_PEER", 1000)
    monkeypatch.setattr("peerkit.node.invitations.MAX_PENDING_PER_SOURCE", 1000)
    async with nodes() as (alice, bob):
        await bob.register_application(CHAT)
        release = anyio.Event()

        @bob.on_invitation(CHAT)
        async def slow(invitation: Invitation) -> InvitationResponse:
            await release.wait()
            return ACCEPTED

        async with await raw_channel(alice, bob) as channel:
            total = 128 + 20
            for rid in range(total):
                invite = {"t": "invite", "rid": rid, "app": CHAT.id.bytes, "ttl": 30}
                await channel.send(invite)
            refused = []
            with anyio.fail_after(5):
                while len(refused) < 20:
                    reply = await channel.receive()
                    assert reply["t"] == "error"
                    assert reply["code"] == "limit"
                    refused.append(reply["rid"])
            assert sorted(refused) == list(range(128, total))
            release.set()
            with anyio.fail_after(5):
                answers = [await channel.receive() for _ in range(128)]
            assert {a["r"] for a in answers} == {"accepted"}


async def test_a_stopped_node_refuses_everything_clearly() -> None:
    async with nodes() as (alice, bob):
        await alice.register_application(CHAT)
        peer = alice.peer(bob.id, bob.endpoint)
    for call in (
        lambda: peer.invite(CHAT, timeout=5),
        lambda: peer.open_stream(CHAT),
        lambda: alice.peer_at("10.0.0.2", 40001),
        lambda: alice.register_application(GAME),
        lambda: alice.sign_in(Scope.NEAR_ME),
        lambda: alice.resolve(bob.id),
    ):
        with pytest.raises(NotRunning, match=r"^the node has stopped$"):
            await call()
    # Nor does it make watches, handlers or iterators that nothing would ever come to (events()
    # once gave an iterator that never ended, and the add_*_handler methods dead handlers).
    for make in (
        alice.events,
        lambda: alice.add_presence_handler(lambda event: None),
        lambda: alice.add_object_handler(lambda event: None),
        lambda: alice.add_invitation_handler(CHAT, accept_all),
        lambda: alice.add_stream_handler(CHAT, lambda stream: stream.aclose()),
        lambda: alice.invitations(CHAT),
        lambda: alice.streams(CHAT),
    ):
        with pytest.raises(NotRunning, match="has stopped"):
            make()


async def test_garbage_bytes_mid_invitation_fail_fast() -> None:
    async def script(channel: SecureChannel, raw: Any) -> None:
        await channel.receive()
        await raw.send(b"\x00\x20" + bytes(range(32)))  # a frame no key can open
        await anyio.sleep_forever()

    async with facing_mallory(CHAT, script) as (_, mallory):
        with anyio.fail_after(2), pytest.raises(PeerUnreachable) as caught:
            await mallory.invite(CHAT, timeout=30)
        assert isinstance(caught.value.__cause__, ProtocolError)


async def test_a_peer_cannot_open_channels_without_bound() -> None:
    from peerkit.node import MAX_CHANNELS_PER_PEER

    async with nodes() as (alice, bob):
        channels = [await raw_channel(alice, bob) for _ in range(MAX_CHANNELS_PER_PEER + 3)]
        try:
            with anyio.fail_after(2):
                while bob.channels(alice.id) < MAX_CHANNELS_PER_PEER:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.05)
            assert bob.channels(alice.id) == MAX_CHANNELS_PER_PEER
            with anyio.fail_after(2), pytest.raises(anyio.EndOfStream):
                await channels[-1].receive()  # the extra ones were closed
        finally:
            for channel in channels:
                await channel.aclose()


async def test_a_request_on_a_channel_gone_quiet_finds_out_in_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("peerkit.net.control.PROBE_AFTER", 0.2)
    monkeypatch.setattr("peerkit.net.control.PROBE_TIMEOUT", 0.3)
    net = MemoryNetwork()
    policy = KeepalivePolicy(interval=60, timeout=10, idle=600)  # the keepalive would take a minute
    async with nodes(network=net, keepalive=policy) as (alice, bob):
        for node in (alice, bob):
            await node.register_application(CHAT)
        bob.add_invitation_handler(CHAT, accept_all)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert await peer.invite(CHAT, timeout=5) == ACCEPTED  # a channel is open now
        await anyio.sleep(0.3)
        assert await peer.invite(CHAT, timeout=5) == ACCEPTED  # quiet, but bob answers the probe
        assert alice.channels(bob.id) == 1
        net.freeze(bob.endpoint.host)  # bob's laptop moved: the connection died without a word
        with anyio.fail_after(2):  # not the invitation's 30 s, nor the keepalive's minute
            with pytest.raises(PeerUnreachable, match="stopped answering"):
                await peer.invite(CHAT, timeout=30)
        assert alice.channels(bob.id) == 0


async def test_a_bad_timeout_of_a_request_names_the_request() -> None:
    # ("a request for its presence timeout must be ..." read as if the presence had a timeout)
    alice = Node(identity=Identity.generate(), network=MemoryNetwork(), listen=("10.0.0.1", 0))
    async with alice:
        peer = alice.peer(Identity.generate().id, EndPoint("10.0.0.2", 7000))
        with pytest.raises(
            ValueError, match=r"^the timeout of a request for its presence must be a positive"
        ):
            await peer.get_presence(timeout=0)
        with pytest.raises(TypeError, match=r"^the timeout of a request for its objects must be a number"):
            await peer.get_objects(timeout="5")  # type: ignore[arg-type]
