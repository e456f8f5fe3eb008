"""Registered programs launched by ``peerkit serve`` for the invitations it accepts
(:mod:`peerkit.apps` has the registry and what a launched program reads).

A launched program runs in a session of its own, with its output appended to
``logs/NAME.log`` in the data dir. It keeps running after ``serve`` stops, as programs started
from a desktop launcher do.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import anyio
import anyio.abc

from peerkit.apps import ANSWER_ENV, ANSWER_WAIT, LAUNCH_ENV, LaunchInfo, Registered
from peerkit.identity import PeerId
from peerkit.invitations import Invitation
from peerkit.model import InvitationResponse, printable

__all__ = ("LOG_DIR", "MAX_RUNNING", "MAX_RUNNING_PER_PEER", "Launcher", "answer_unless_withdrawn")

#: The folder of the data dir where launched programs' output goes.
LOG_DIR: Final = "logs"
#: Programs one ``serve`` launched that run at once, at most: an invitation past it is declined.
MAX_RUNNING: Final = 16
#: Of those, launched for one peer's invitations (a contact who invites in a loop cannot make
#: the machine start programs without end).
MAX_RUNNING_PER_PEER: Final = 4

Say = Callable[..., None]
Ask = Callable[[str], Awaitable[str | None]]


async def answer_unless_withdrawn(ask: Ask, question: str, invitation: Invitation) -> str | None:
    """``ask(question)`` about ``invitation``, left unanswered when the inviter withdraws it first
    (or it expires): the answer typed, or None then (and at the end of the input)."""
    answer = None
    async with anyio.create_task_group() as tg:

        async def withdrawn() -> None:
            await invitation.wait()  # (nothing else answers it while it is asked about)
            tg.cancel_scope.cancel()

        tg.start_soon(withdrawn)
        answer = await ask(question)
        tg.cancel_scope.cancel()
    return answer


class Launcher:
    """Answers invitations to registered applications for ``peerkit serve``: those it was told to
    ``accept`` (or that ``ask`` says yes to) start the registered program with the invitation, and
    the program's answer (within :data:`~peerkit.apps.ANSWER_WAIT` seconds) is the invitation's.

    At most ``max_running`` programs it launched run at once, ``max_per_peer`` of them for one
    peer's invitations: past either, an invitation is declined, and said so. A program counts
    until it exits (each is followed, and its exit reported). What is said of a stranger's
    invitation that launches nothing goes to ``quiet`` (default: ``say``).
    """

    def __init__(
        self,
        registered: list[Registered],
        accept: set[uuid.UUID],
        data_dir: Path,
        say: Say,
        tg: anyio.abc.TaskGroup,
        ask: Ask | None = None,
        *,
        max_running: int = MAX_RUNNING,
        max_per_peer: int = MAX_RUNNING_PER_PEER,
        quiet: Say | None = None,
    ) -> None:
        self._by_id = {r.id: r for r in registered}
        self._accept = accept
        self._data_dir = data_dir
        self._say = say
        self._quiet = quiet or say
        self._tg = tg
        self._ask = ask
        self._asking = anyio.Lock()
        self._max_running = max_running
        self._max_per_peer = max_per_peer
        self._running: dict[PeerId, int] = {}  # (programs running, by the peer they were launched for)

    async def invited(self, invitation: Invitation) -> InvitationResponse:
        """The invitation handler of every registered application."""
        registered = self._by_id[invitation.application.id]
        who = printable(invitation.nickname) or invitation.sender_id.fingerprint
        tell = self._say if invitation.trusted else self._quiet
        if not self._room(registered, invitation, who, tell):  # (before asking: no question in vain)
            return InvitationResponse.DECLINED
        if registered.id not in self._accept:
            if self._ask is None:
                tell(
                    f"invitation from {who} to {registered.name} declined: 'peerkit serve --accept "
                    f"{registered.name}' launches it",
                    event="launch_declined",
                    application=registered.name,
                )
                return InvitationResponse.DECLINED
            async with self._asking:  # (one question at a time)
                if invitation.withdrawn:  # (while another was asked about: not asked)
                    return InvitationResponse.DECLINED
                said = f": {invitation.message!r}" if invitation.message else ""
                question = f"{who} invites you to {registered.name}{said}. Launch it? [y/N]"
                answer = await answer_unless_withdrawn(self._ask, question, invitation)
            if (answer or "").strip().lower() not in ("y", "yes") or invitation.withdrawn:
                return InvitationResponse.DECLINED
        if not self._room(registered, invitation, who, tell, take=True):  # (others launched meanwhile)
            return InvitationResponse.DECLINED
        return await self._launch(registered, invitation)

    def _room(
        self, registered: Registered, invitation: Invitation, who: str, tell: Say, *, take: bool = False
    ) -> bool:
        # Whether a program may be launched for ``invitation`` (else it is said why); ``take``:
        # count it as running from now (given back by _release).
        peer_id = invitation.sender_id
        running = sum(self._running.values())
        for_peer = self._running.get(peer_id, 0)
        if for_peer < self._max_per_peer and running < self._max_running:
            if take:
                self._running[peer_id] = for_peer + 1
            return True
        why = (
            f"{for_peer} programs launched for {who} run here still (at most {self._max_per_peer})"
            if for_peer >= self._max_per_peer
            else f"{running} launched programs run here still (at most {self._max_running})"
        )
        tell(
            f"invitation from {who} to {registered.name} declined: {why}",
            event="launch_refused",
            application=registered.name,
            sender=str(invitation.sender_id),
            reason=why,
        )
        return False

    def _release(self, peer_id: PeerId) -> None:
        left = self._running.pop(peer_id) - 1
        if left:
            self._running[peer_id] = left

    async def _launch(self, registered: Registered, invitation: Invitation) -> InvitationResponse:
        # Launch the program in the place taken for it; _follow gives the place back at its exit.
        info = LaunchInfo(
            sender_id=invitation.sender_id,
            nickname=invitation.nickname,
            endpoint=invitation.endpoint,
            application_id=registered.id,
            message=invitation.message,
            data=invitation.data,
            data_dir=self._data_dir,
        )
        logs = self._data_dir / LOG_DIR
        output = logs / f"{registered.name}.log"
        reading, writing = os.pipe()
        try:
            await anyio.to_thread.run_sync(lambda: logs.mkdir(parents=True, exist_ok=True))
            with output.open("ab") as log:
                process = await anyio.open_process(
                    registered.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env={**os.environ, LAUNCH_ENV: info.to_environment(), ANSWER_ENV: str(writing)},
                    pass_fds=(writing,),
                    start_new_session=True,
                )
        except BaseException as exc:  # (nothing runs: its place is free again)
            os.close(reading)
            self._release(invitation.sender_id)
            if not isinstance(exc, OSError):
                raise
            self._say(
                f"could not launch {registered.name} ({registered.command_text()}): {exc}",
                event="launch_failed",
                application=registered.name,
                reason=str(exc),
            )
            return InvitationResponse.DECLINED
        finally:
            os.close(writing)
        self._tg.start_soon(self._follow, registered, process, output, invitation.sender_id)
        wait = min(ANSWER_WAIT, max(invitation.expires_at - anyio.current_time() - 0.5, 0.1))
        answer = await _answer(reading, wait)
        response = InvitationResponse.DECLINED if answer == "decline" else InvitationResponse.ACCEPTED
        self._say(
            f"launched {registered.name} (pid {process.pid}) for {printable(invitation.nickname) or '?'}: "
            f"{response.name.lower()}; its output goes to {output}",
            event="launched",
            application=registered.name,
            pid=process.pid,
            response=response.name.lower(),
            output=str(output),
        )
        return response

    async def _follow(
        self, registered: Registered, process: anyio.abc.Process, output: Path, peer_id: PeerId
    ) -> None:
        # Report the program's exit (it is not stopped when serve stops), and where to read why
        # when it failed; then its place is free.
        try:
            code = await process.wait()
            why = f"; its output is in {output}" if code else ""
            exited = f"{registered.name} (pid {process.pid}) exited with {code}{why}"
            self._say(exited, event="exited", code=code, output=str(output))
        finally:
            self._release(peer_id)


async def _answer(fd: int, wait: float) -> str:
    # The launched program's answer on the pipe: "accept", "decline", or "" (none in time).
    try:
        with anyio.move_on_after(wait):
            await anyio.wait_readable(fd)
            return os.read(fd, 64).decode("ascii", "replace").strip()
        return ""
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
