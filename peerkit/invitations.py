"""Invitations an application receives (``PeerApplicationLaunchInfo``), and who may send them.

- :class:`Invitation` is what an invited application's handler (or iterator) receives; it is
  answered by returning an :class:`~peerkit.InvitationResponse`, or with :meth:`Invitation.accept`
  / :meth:`Invitation.decline`.
- :class:`InvitationState` holds the answer: the node that received the invitation reads it,
  withdraws it, or records the handler's answer there.
- :class:`InvitationPolicy` says who may invite this node; :class:`Withdrawn` and
  :class:`AnswerReason` say why an invitation ended as it did.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from peerkit.identity import PeerId
from peerkit.model import Application, EndPoint, InvitationResponse

if TYPE_CHECKING:
    from peerkit.contact import Contact
    from peerkit.peers import Peer

__all__ = ("AnswerReason", "Invitation", "InvitationPolicy", "InvitationState", "Withdrawn")


class InvitationPolicy(enum.Enum):
    """Who may invite this node (and open application streams to it)."""

    #: Any peer that completes the handshake.
    ANYONE = "anyone"
    #: Only contacts (``node.contacts``) and peers trusted with :meth:`~peerkit.Node.trust`.
    CONTACTS_ONLY = "contacts-only"
    #: Nobody: every invitation is declined without running a handler.
    NOBODY = "nobody"


class Withdrawn(enum.StrEnum):
    """Why an invitation was withdrawn before it was answered (equal to its string value)."""

    #: The inviter withdrew it (``invite_cancel``): it stopped waiting, or was cancelled.
    CANCELLED = "cancelled"
    #: Its ``ttl`` passed without an answer.
    EXPIRED = "expired"
    #: The connection to the inviter ended.
    DISCONNECTED = "disconnected"
    #: Every place for strangers' invitations was taken, the most by its sender's source group,
    #: and a stranger from another group took its place (its inviter was answered "limit").
    DISPLACED = "displaced"


class AnswerReason(enum.StrEnum):
    """Why a node answered an invitation as it did (equal to its string value)."""

    #: The application's handler (or iterator) answered.
    HANDLER = "handler"
    #: The application is not registered on this node.
    NOT_REGISTERED = "not registered"
    #: Nobody takes invitations for the application.
    NO_HANDLER = "no handler"
    #: The invitation policy refused the sender.
    POLICY = "policy"
    #: Nobody answered within its ``ttl``.
    EXPIRED = "expired"
    #: The inviter withdrew it.
    CANCELLED = "cancelled"
    #: The connection to the inviter ended.
    DISCONNECTED = "disconnected"
    #: It gave its place to a stranger from another source (see :attr:`Withdrawn.DISPLACED`).
    DISPLACED = "displaced"


class InvitationState:
    """The answer to one invitation: given once, or withdrawn once, whichever comes first."""

    __slots__ = ("_done", "response", "withdrawn")

    def __init__(self) -> None:
        #: The answer given, or None.
        self.response: InvitationResponse | None = None
        #: Why it was withdrawn, or None.
        self.withdrawn: Withdrawn | None = None
        self._done: anyio.Event | None = None  # made when someone waits (most never do)

    def answer(self, response: InvitationResponse) -> None:
        """Answer ``response``.

        :raises RuntimeError: when already answered or withdrawn.
        """
        if self.withdrawn is not None:
            raise RuntimeError(
                f"the invitation was withdrawn ({self.withdrawn}); it can no longer be answered"
            )
        if self.response is not None:
            raise RuntimeError(f"the invitation was already answered ({self.response.name})")
        self.response = response
        self._settled()

    def record(self, response: InvitationResponse) -> None:
        """Note the answer a handler returned (unless it answered or was withdrawn already)."""
        if self.response is None and self.withdrawn is None:
            self.response = response
            self._settled()

    def withdraw(self, reason: Withdrawn) -> None:
        """Withdraw it, unless it is answered or withdrawn already."""
        if self.response is None and self.withdrawn is None:
            self.withdrawn = reason
            self._settled()

    def _settled(self) -> None:
        if self._done is not None:
            self._done.set()

    async def wait(self) -> InvitationResponse | None:
        """Wait until it is answered (the answer) or withdrawn (None)."""
        if self.response is None and self.withdrawn is None:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
        else:
            await anyio.lowlevel.checkpoint()
        return self.response


@dataclass(eq=False, kw_only=True)
class Invitation:
    """An invitation this node received. Answer it by returning an
    :class:`~peerkit.InvitationResponse` from the handler, or with :meth:`accept` / :meth:`decline`.
    """

    #: The inviting peer's verified id.
    sender_id: PeerId
    #: The nickname the inviter gave.
    nickname: str
    #: The endpoint of the inviter (its address, and the port it listens on when it said).
    endpoint: EndPoint | None
    #: A :class:`~peerkit.Peer` for the inviter: invite it back, open a stream to it.
    peer: Peer
    #: The application this invitation is for (as registered on this node).
    application: Application
    #: The inviter's message, at most 255 characters.
    message: str
    #: The inviter's data, at most 16,384 bytes.
    data: bytes
    #: Whether the sender is trusted (a contact, or trusted with :meth:`~peerkit.Node.trust`).
    trusted: bool
    #: The sender as a contact, when it is one.
    contact: Contact | None = None
    #: When the inviter stops waiting, on :func:`anyio.current_time`'s clock.
    expires_at: float
    #: The address and port of the relay the invitation came through; None when it came direct.
    relay: tuple[str, int] | None = None
    #: Where its answer is kept: the node that received it settles it there.
    state: InvitationState = field(default_factory=InvitationState, repr=False, compare=False)

    @property
    def response(self) -> InvitationResponse | None:
        """The answer given so far, or ``None``."""
        return self.state.response

    @property
    def withdrawn(self) -> bool:
        """Whether the inviter cancelled, went away, or the invitation expired before an answer."""
        return self.state.withdrawn is not None

    @property
    def withdrawn_reason(self) -> Withdrawn | None:
        """Why it was withdrawn (``"cancelled"``, ``"expired"``, ``"disconnected"`` or ``"displaced"``),
        else ``None``."""
        return self.state.withdrawn

    def accept(self) -> None:
        """Answer ACCEPTED.

        :raises RuntimeError: when already answered or withdrawn.
        """
        self.state.answer(InvitationResponse.ACCEPTED)

    def decline(self) -> None:
        """Answer DECLINED.

        :raises RuntimeError: when already answered or withdrawn.
        """
        self.state.answer(InvitationResponse.DECLINED)

    async def wait(self) -> InvitationResponse | None:
        """Wait until it is answered (the answer) or withdrawn (None: see :attr:`withdrawn_reason`).

        What asks a person about the invitation waits for this beside the person, and stops asking
        when the inviter withdraws it (or it expires) first. Returns at once once settled.
        """
        return await self.state.wait()
