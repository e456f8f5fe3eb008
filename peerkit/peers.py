"""Handles on remote peers: invite them, open application streams to them."""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING

from peerkit.apps import AppStream
from peerkit.identity import PeerId
from peerkit.model import MAX_INVITATION_WAIT, REQUEST_TIMEOUT, Application, EndPoint, InvitationResponse

if TYPE_CHECKING:
    from peerkit.node import Node

__all__ = ("Peer",)


class Peer:
    """A remote peer, known by its verified id and the endpoints where it listens.

    Get one from :meth:`Node.peer_at` (dial an address), :meth:`Node.peer` (id and endpoints you
    know), :meth:`Node.resolve` (discovery) or an :class:`~peerkit.Invitation`'s ``peer``.
    A peer may listen at several endpoints (the same identity on several machines, or several
    addresses); :meth:`invite` reaches all of them at once.
    """

    def __init__(
        self, node: Node, peer_id: PeerId, endpoints: tuple[EndPoint, ...], nickname: str = ""
    ) -> None:
        if not isinstance(peer_id, PeerId):
            raise TypeError(f"peer_id must be a PeerId, not {type(peer_id).__name__}")
        if not endpoints:
            raise ValueError("a peer needs at least one endpoint")
        for endpoint in endpoints:
            if not isinstance(endpoint, EndPoint):
                raise TypeError(f"endpoints must be EndPoint objects, not {type(endpoint).__name__}")
        self._node = node
        #: The peer's verified id.
        self.id = peer_id
        #: Where it listens.
        self.endpoints = tuple(dict.fromkeys(endpoints))
        #: Its nickname, as it last gave it.
        self.nickname = nickname

    async def invite(
        self,
        application: Application | uuid.UUID,
        message: str = "",
        data: bytes = b"",
        *,
        timeout: float = MAX_INVITATION_WAIT,
    ) -> InvitationResponse:
        """Invite the peer to ``application`` and wait for its answer (R5).

        The invitation goes to every endpoint at once: the first ACCEPTED wins and the others are
        withdrawn; otherwise DECLINED if any endpoint declined, else EXPIRED. No answer within
        ``timeout`` seconds is EXPIRED, not an error.

        :param application: a registered application (or its id).
        :param message: at most 255 characters.
        :param data: at most 16,384 bytes.
        :param timeout: seconds to wait, more than 0 and at most 300.
        :raises ValueError: when the application is not registered on this node, or a limit is
            exceeded (:class:`~peerkit.LimitExceeded`); nothing is sent then.
        :raises PeerUnreachable: when no endpoint could be reached or every connection failed.
        :raises ProtocolError: when the peer answered with an error or broke the protocol.
        :raises NotRunning: when the node is not running.

        If cancelled, the invitation is withdrawn (``invite_cancel``) at every endpoint, and the
        invitee's handler is cancelled. To withdraw it from elsewhere, run the call inside an
        :class:`anyio.CancelScope` and cancel the scope: that is the cancel handle.
        """
        return await self._node._invite(self, application, message, data, timeout)

    async def open_stream(
        self, application: Application | uuid.UUID, *, timeout: float = REQUEST_TIMEOUT
    ) -> AppStream:
        """Open an encrypted application stream to the peer's instance of ``application``.

        The stream has its own connection and Noise session. Use it with ``async with``.

        :raises ValueError: when the application is not registered on this node.
        :raises NotAllowed: when the peer refused (application not registered, no stream handler,
            or its policy).
        :raises PeerUnreachable: when no endpoint answers within ``timeout`` seconds.
        :raises NotRunning: when the node is not running.

        If cancelled, the connection being opened is closed.
        """
        return await self._node._open_stream(self, application, timeout)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peer) and other.id == self.id and other.endpoints == self.endpoints

    def __hash__(self) -> int:
        return hash((self.id, self.endpoints))

    def __repr__(self) -> str:
        where = ", ".join(str(e) for e in self.endpoints)
        return f"<Peer {self.nickname or '?'} {self.id.fingerprint} at {where}>"


def wire_ttl(timeout: float) -> int:
    """The ``ttl`` sent for an invitation the inviter waits ``timeout`` seconds for."""
    return max(1, min(MAX_INVITATION_WAIT, math.ceil(timeout)))
