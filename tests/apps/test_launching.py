"""What ``peerkit serve`` launches for invitations, at most: programs running at once, in all and
for one peer (a contact who invites in a loop cannot make the machine start programs without end)."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from peerkit import Identity, Invitation, InvitationResponse, PeerId
from peerkit.apps import Registered
from peerkit.invitations import Withdrawn
from peerkit.launching import MAX_RUNNING, MAX_RUNNING_PER_PEER, Launcher

pytestmark = pytest.mark.anyio

ACCEPTED, DECLINED = InvitationResponse.ACCEPTED, InvitationResponse.DECLINED


def invitation(sender: PeerId, registered: Registered, *, trusted: bool = True) -> Invitation:
    """An invitation from ``sender``, accepted by its program 0.5 s after the launch (it never
    answers: a program that does not is accepted when the wait ends)."""
    return Invitation(
        sender_id=sender,
        nickname="someone",
        endpoint=None,
        peer=None,  # type: ignore[arg-type]  # (the launcher never uses it)
        application=registered.application,
        message="",
        data=b"",
        trusted=trusted,
        expires_at=anyio.current_time() + 1.0,
    )


async def test_programs_running_at_once_are_capped_in_all_and_per_peer(tmp_path: Path) -> None:
    assert (MAX_RUNNING, MAX_RUNNING_PER_PEER) == (16, 4)  # (the limits page says so)
    board = Registered(name="board", id=uuid.uuid4(), path="/bin/sleep", arguments="30")
    alice, carol = Identity.generate().id, Identity.generate().id
    events: list[dict[str, Any]] = []

    def say(text: str, **fields: Any) -> None:
        events.append({"text": text, **fields})

    def launched() -> list[int]:
        return [e["pid"] for e in events if e["event"] == "launched"]

    async def answers(*senders: PeerId) -> list[InvitationResponse]:
        # Invitations from ``senders`` at once: their places are taken before any program starts.
        got: dict[int, InvitationResponse] = {}

        async def one(n: int, sender: PeerId) -> None:
            got[n] = await launcher.invited(invitation(sender, board))

        async with anyio.create_task_group() as invitations:
            for n, sender in enumerate(senders):
                invitations.start_soon(one, n, sender)
        return [got[n] for n in range(len(senders))]

    async def all_exited(count: int) -> None:
        with anyio.fail_after(10):
            while sum(e["event"] == "exited" for e in events) < count:
                await anyio.sleep(0.02)

    try:
        async with anyio.create_task_group() as tg:
            launcher = Launcher([board], {board.id}, tmp_path, say, tg, max_running=3, max_per_peer=2)
            assert sorted(await answers(alice, alice, alice)) == sorted([ACCEPTED, ACCEPTED, DECLINED])
            refused = [e for e in events if e["event"] == "launch_refused"]
            assert [e["reason"] for e in refused] == [
                "2 programs launched for someone run here still (at most 2)"
            ]
            assert refused[0]["sender"] == str(alice)
            assert sorted(await answers(carol, carol)) == sorted([ACCEPTED, DECLINED])  # (3 in all)
            assert events[-2]["reason"] == "3 launched programs run here still (at most 3)"
            for pid in launched():
                os.kill(pid, signal.SIGTERM)
            await all_exited(3)  # (each exit frees its place)
            assert await answers(alice, carol) == [ACCEPTED, ACCEPTED]
            for pid in launched()[3:]:
                os.kill(pid, signal.SIGTERM)
            await all_exited(5)
            assert len(launched()) == 5
            tg.cancel_scope.cancel()
    finally:
        for pid in launched():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_what_is_said_of_a_strangers_invitation_that_launches_nothing_goes_to_quiet(
    tmp_path: Path,
) -> None:
    board = Registered(name="board", id=uuid.uuid4(), path="/bin/sleep", arguments="30")
    loud: list[str] = []
    quiet: list[str] = []
    async with anyio.create_task_group() as tg:
        launcher = Launcher(
            [board],
            set(),  # (not accepted, and no terminal to ask at: declined, and said)
            tmp_path,
            lambda text, **fields: loud.append(fields["event"]),
            tg,
            quiet=lambda text, **fields: quiet.append(fields["event"]),
        )
        contact, stranger = Identity.generate().id, Identity.generate().id
        assert await launcher.invited(invitation(contact, board)) is DECLINED
        assert await launcher.invited(invitation(stranger, board, trusted=False)) is DECLINED
    assert (loud, quiet) == (["launch_declined"], ["launch_declined"])


async def test_a_question_stops_when_its_invitation_is_withdrawn_and_one_withdrawn_in_line_is_never_asked(
    tmp_path: Path,
) -> None:
    board = Registered(name="board", id=uuid.uuid4(), path="/bin/sleep", arguments="30")
    asked: list[str] = []
    answered = anyio.Event()
    cancelled: list[str] = []

    async def ask(question: str) -> str | None:
        asked.append(question)
        try:
            await answered.wait()
        except anyio.get_cancelled_exc_class():
            cancelled.append(question)
            raise
        return "y"

    first, second, third = (invitation(Identity.generate().id, board) for _ in range(3))
    got: dict[str, InvitationResponse] = {}

    async def answer(name: str, one: Invitation) -> None:
        got[name] = await launcher.invited(one)

    async with anyio.create_task_group() as tg:
        launcher = Launcher([board], set(), tmp_path, lambda text, **fields: None, tg, ask)
        with anyio.fail_after(5):
            tg.start_soon(answer, "first", first)
            while not asked:
                await anyio.sleep(0.01)
            tg.start_soon(answer, "second", second)
            tg.start_soon(answer, "third", third)
            await anyio.sleep(0.05)  # (both wait in line behind the first question)
            second.state.withdraw(Withdrawn.CANCELLED)  # (in line: never asked)
            first.state.withdraw(Withdrawn.DISCONNECTED)  # (asked: the question stops)
            while len(asked) < 2:
                await anyio.sleep(0.01)
            third.state.withdraw(Withdrawn.EXPIRED)
            while len(got) < 3:
                await anyio.sleep(0.01)
    assert got == {"first": DECLINED, "second": DECLINED, "third": DECLINED}
    assert asked == cancelled  # (the first and the third were asked, each question left)
    assert len(asked) == 2
    assert "someone invites you to board" in asked[1]
