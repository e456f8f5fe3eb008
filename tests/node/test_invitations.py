"""Invitation observers and why an invitation ended: answered, declined, cancelled, gone."""

from __future__ import annotations

import uuid

import anyio
import anyio.abc
import pytest
from conftest import CHAT, GAME, accept_chat

from peerkit import (
    AnswerReason,
    Identity,
    Invitation,
    InvitationAnswered,
    InvitationPolicy,
    InvitationResponse,
    Node,
    PeerId,
    PeerUnreachable,
    Scope,
    Withdrawn,
)
from peerkit.testing import MemoryNetwork, node_pair

pytestmark = pytest.mark.anyio


async def observed(events: list[InvitationAnswered], count: int) -> None:
    with anyio.fail_after(5):
        while len(events) < count:
            await anyio.sleep(0.01)


async def test_observers_hear_every_answer_and_why() -> None:
    async with node_pair() as (alice, bob):
        await accept_chat(alice, bob)
        await alice.register_application(GAME)
        events: list[InvitationAnswered] = []

        async def observe(event: InvitationAnswered) -> None:
            events.append(event)

        bob.add_invitation_observer(observe)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert await peer.invite(CHAT, "hi", b"data", timeout=5) is InvitationResponse.ACCEPTED
        assert await peer.invite(GAME, timeout=5) is InvitationResponse.DECLINED  # bob has no GAME
        bob.invitation_policy = InvitationPolicy.NOBODY
        assert await peer.invite(CHAT, timeout=5) is InvitationResponse.DECLINED
        await observed(events, 3)
        first, second, third = events
        assert (first.response, first.reason) == (InvitationResponse.ACCEPTED, AnswerReason.HANDLER)
        assert (first.sender_id, first.nickname) == (alice.id, "alice")
        assert (first.message, first.data_size) == ("hi", 4)
        assert first.application_id == CHAT.id
        assert (second.response, second.reason) == (InvitationResponse.DECLINED, "not registered")
        assert (third.response, third.reason) == (InvitationResponse.DECLINED, AnswerReason.POLICY)


async def test_an_invitation_whose_inviter_goes_away_is_withdrawn_as_disconnected() -> None:
    async with node_pair() as (alice, bob):
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)
        waiting: list[Invitation] = []
        events: list[InvitationAnswered] = []

        @bob.on_invitation(CHAT)
        async def hang(invitation: Invitation) -> InvitationResponse:
            waiting.append(invitation)
            await anyio.sleep_forever()
            raise AssertionError("not reached")

        async def observe(event: InvitationAnswered) -> None:
            events.append(event)

        bob.add_invitation_observer(observe)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with anyio.create_task_group() as tg:

            async def invite() -> None:
                with pytest.raises(PeerUnreachable):
                    await peer.invite(CHAT, timeout=30)

            tg.start_soon(invite)
            with anyio.fail_after(5):
                while not waiting:
                    await anyio.sleep(0.01)
            await alice.disconnect(bob.id)
        await observed(events, 1)
        (invitation,) = waiting
        assert invitation.withdrawn
        assert invitation.withdrawn_reason is Withdrawn.DISCONNECTED
        assert invitation.withdrawn_reason == "disconnected"
        assert (events[0].response, events[0].reason) == (None, AnswerReason.DISCONNECTED)


async def test_a_cancelled_invitation_is_observed_as_cancelled() -> None:
    async with node_pair() as (alice, bob):
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)
        events: list[InvitationAnswered] = []
        started = anyio.Event()

        @bob.on_invitation(CHAT)
        async def hang(invitation: Invitation) -> InvitationResponse:
            started.set()
            await anyio.sleep_forever()
            raise AssertionError("not reached")

        async def observe(event: InvitationAnswered) -> None:
            events.append(event)

        bob.add_invitation_observer(observe)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.invite, CHAT)
            with anyio.fail_after(5):
                await started.wait()
            tg.cancel_scope.cancel()
        await observed(events, 1)
        assert (events[0].response, events[0].reason) == (None, AnswerReason.CANCELLED)


@pytest.mark.logs_errors
async def test_a_failing_observer_is_logged_and_the_next_still_hears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with node_pair() as (alice, bob):
        await accept_chat(alice, bob)
        heard: list[uuid.UUID] = []

        async def broken(event: InvitationAnswered) -> None:
            raise RuntimeError("observer broke")

        async def good(event: InvitationAnswered) -> None:
            heard.append(event.application_id)

        bob.add_invitation_observer(broken)
        handle = bob.add_invitation_observer(good)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        assert await peer.invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED
        with anyio.fail_after(5):
            while not heard:
                await anyio.sleep(0.01)
        assert "observer broke" in caplog.text
        handle.remove()
        handle.remove()  # twice is harmless
        assert await peer.invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED
        await anyio.sleep(0.05)
        assert heard == [CHAT.id]


class CountingLookups:
    """An Internet-scope discovery provider that knows nobody and counts the lookups asked of it."""

    name = "lookups"
    scopes = Scope.INTERNET

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def run(self, sink: object, *, task_status: anyio.abc.TaskStatus[object]) -> None:
        provider = self

        class Session:
            async def publish(self, announcement: object) -> None:
                pass

            async def withdraw(self) -> None:
                pass

            async def resolve(self, peer_id: PeerId) -> list[bytes]:
                provider.asked.append(anyio.current_time())
                return []

        task_status.started(Session())
        await anyio.sleep_forever()


@pytest.mark.parametrize("silent", [False, True], ids=["answering", "silent"])
async def test_a_contact_is_looked_up_only_when_its_known_endpoint_gives_no_channel(silent: bool) -> None:
    # The invitation waits 1.5 s for its answer at bob's known endpoint: no lookup (no second
    # invitation elsewhere). Where bob's endpoint is silent, the lookup starts after 1 s.
    net, lookups = MemoryNetwork(), CountingLookups()
    alice = Node(identity=Identity.generate(), network=net, listen=("10.0.0.1", 7000), discovery=[lookups])
    bob = Node(identity=Identity.generate(), network=net, listen=("10.0.0.2", 7000))
    async with alice, bob:
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)

        @bob.on_invitation(CHAT)
        async def slowly(invitation: Invitation) -> InvitationResponse:
            await anyio.sleep(1.5)
            return InvitationResponse.ACCEPTED

        contact = await alice.contacts.add(bob.id, endpoints=[bob.endpoint])
        if silent:
            net.firewall("10.0.0.2", silent=True)
        start = anyio.current_time()
        if silent:
            with pytest.raises(PeerUnreachable):
                await contact.invite(CHAT, timeout=3)
            assert len(lookups.asked) == 1
            assert 0.9 < lookups.asked[0] - start < 2.5  # after LOOKUP_AFTER, long before 10 s
        else:
            assert await contact.invite(CHAT, timeout=5) is InvitationResponse.ACCEPTED
            assert lookups.asked == []


async def test_a_program_asking_about_an_invitation_learns_when_it_is_withdrawn_or_answered() -> None:
    async with node_pair() as (alice, bob):
        await alice.register_application(CHAT)
        await bob.register_application(CHAT)
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)
        async with bob.invitations(CHAT) as invitations, anyio.create_task_group() as tg:
            inviting = anyio.CancelScope()

            async def invite() -> None:
                with inviting:
                    await peer.invite(CHAT, timeout=30)

            tg.start_soon(invite)
            with anyio.fail_after(5):
                first = await anext(aiter(invitations))
                inviting.cancel()  # (alice stops waiting while bob's dialog is open)
                assert await first.wait() is None
            assert first.withdrawn_reason is Withdrawn.CANCELLED
            answered: list[InvitationResponse | None] = []

            async def dialog(invitation: Invitation) -> None:
                answered.append(await invitation.wait())

            tg.start_soon(peer.invite, CHAT)
            with anyio.fail_after(5):
                second = await anext(aiter(invitations))
                tg.start_soon(dialog, second)
                await anyio.wait_all_tasks_blocked()
                assert answered == []  # (it waits: neither answered nor withdrawn)
                second.accept()
                while not answered:
                    await anyio.sleep(0.01)
                assert answered == [InvitationResponse.ACCEPTED]
                assert await second.wait() is InvitationResponse.ACCEPTED  # (settled: at once)
