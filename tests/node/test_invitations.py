"""Invitation observers and why an invitation ended: answered, declined, cancelled, gone."""

from __future__ import annotations

import uuid

import anyio
import pytest
from conftest import CHAT, GAME, accept_chat

from peerkit import (
    AnswerReason,
    Invitation,
    InvitationAnswered,
    InvitationPolicy,
    InvitationResponse,
    PeerUnreachable,
    Withdrawn,
)
from peerkit.testing import node_pair

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
