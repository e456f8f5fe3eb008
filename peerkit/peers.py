"""Remote peers: invite them, open application streams to them, fetch what they show."""

from __future__ import annotations

import math
import uuid
from typing import Any, Protocol

from peerkit.discovery.base import NearbyRecord
from peerkit.identity import PeerId, check_peer_id
from peerkit.model import (
    MAX_INVITATION_WAIT,
    REQUEST_TIMEOUT,
    Application,
    EndPoint,
    InvitationResponse,
    PeerObject,
    Presence,
    printable,
)
from peerkit.streams import AppStream

__all__ = ("NearbyPeer", "Peer", "PeerOps", "wire_ttl")


class PeerOps(Protocol):
    """What a :class:`Peer` asks of the node it belongs to (the node gives each peer one)."""

    async def invite(
        self, peer: Peer, application: Application | uuid.UUID, message: str, data: bytes, timeout: float
    ) -> InvitationResponse:
        """Invite ``peer`` (see :meth:`Peer.invite`)."""
        ...

    async def open_stream(
        self, peer: Peer, application: Application | uuid.UUID, timeout: float
    ) -> AppStream:
        """Open a stream to ``peer`` (see :meth:`Peer.open_stream`)."""
        ...

    async def fetch(self, peer: Peer, what: str, timeout: float) -> Any:
        """Fetch ``"presence"``, ``"apps"`` or ``"objects"`` of ``peer`` once."""
        ...


class Peer:
    """A remote peer, known by its verified id and the endpoints where it listens.

    Get one from :meth:`Node.peer_at` (dial an address), :meth:`Node.peer` (id and endpoints you
    know), :meth:`Node.resolve` (discovery) or an :class:`~peerkit.Invitation`'s ``peer``.
    A peer may listen at several endpoints (the same identity on several machines, or several
    addresses); :meth:`invite` reaches all of them at once.
    """

    def __init__(
        self, ops: PeerOps, peer_id: PeerId, endpoints: tuple[EndPoint, ...], nickname: str = ""
    ) -> None:
        check_peer_id(peer_id)
        if not endpoints:
            raise ValueError("a peer needs at least one endpoint")
        for endpoint in endpoints:
            if not isinstance(endpoint, EndPoint):
                raise TypeError(f"endpoints must be EndPoint objects, not {type(endpoint).__name__}")
        self._ops = ops
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
        """Invite the peer to ``application`` and wait for its answer.

        The invitation goes to every endpoint at once: the first ACCEPTED wins and the others are
        withdrawn; otherwise DECLINED if any endpoint declined, else EXPIRED. No answer within
        ``timeout`` seconds is EXPIRED, not an error.

        :param application: a registered application (or its id).
        :param message: at most 255 characters.
        :param data: at most 16,384 bytes.
        :param timeout: seconds to wait, more than 0 and at most 300.
        :raises ValueError: when the application is not registered on this node, or a limit is
            exceeded (:class:`~peerkit.LimitExceeded`); nothing is sent then.
        :raises PeerUnreachable: when no endpoint could be reached (also when the timeout passed
            before a connection to the peer was made) or every connection failed.
        :raises ProtocolError: when the peer answered with an error or broke the protocol.
        :raises NotRunning: when the node is not running.

        If cancelled, the invitation is withdrawn (``invite_cancel``) at every endpoint, and the
        invitee's handler is cancelled. To withdraw it from elsewhere, run the call inside an
        :class:`anyio.CancelScope` and cancel the scope: that is the cancel handle.
        """
        return await self._ops.invite(self, application, message, data, timeout)

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
        return await self._ops.open_stream(self, application, timeout)

    async def get_presence(self, *, timeout: float = REQUEST_TIMEOUT) -> Presence:
        """Fetch the peer's presence once, without subscribing.

        :raises NotAllowed: when the peer lets this node see nothing (not near it, not an allowed
            contact, or blocked).
        :raises PeerUnreachable: when no endpoint answers within ``timeout`` seconds.
        :raises ProtocolError: when the answer is malformed.
        :raises NotRunning: when the node is not running.

        If cancelled, the request is abandoned (its reply, if one comes, is dropped).
        """
        result: Presence = await self._ops.fetch(self, "presence", timeout)
        return result

    async def get_applications(self, *, timeout: float = REQUEST_TIMEOUT) -> list[Application]:
        """Fetch the applications the peer lets this node see (its scopes and permissions decide:
        a peer near me that is not a contact sees only NEAR_ME- or ALL-scoped ones).

        :raises NotAllowed: when the peer lets this node see nothing (as :meth:`get_presence`).
        :raises PeerUnreachable: when no endpoint answers within ``timeout`` seconds.
        :raises ProtocolError: when the answer is malformed.
        :raises NotRunning: when the node is not running.

        If cancelled, the request is abandoned (its reply, if one comes, is dropped).
        """
        result: list[Application] = await self._ops.fetch(self, "apps", timeout)
        return result

    async def get_objects(self, *, timeout: float = REQUEST_TIMEOUT) -> list[PeerObject]:
        """Fetch the objects the peer lets this node see (as :meth:`get_applications`).

        :raises NotAllowed: when the peer lets this node see nothing (as :meth:`get_presence`).
        :raises PeerUnreachable: when no endpoint answers within ``timeout`` seconds.
        :raises ProtocolError: when the answer is malformed.
        :raises NotRunning: when the node is not running.

        If cancelled, the request is abandoned (its reply, if one comes, is dropped).
        """
        result: list[PeerObject] = await self._ops.fetch(self, "objects", timeout)
        return result

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peer) and other.id == self.id and other.endpoints == self.endpoints

    def __hash__(self) -> int:
        return hash((self.id, self.endpoints))

    def __repr__(self) -> str:
        where = ", ".join(str(e) for e in self.endpoints)
        return f"<Peer {printable(self.nickname) or '?'} {self.id.fingerprint} at {where}>"


class NearbyPeer(Peer):
    """A peer near me, as its signed discovery record describes it.

    Invite it and open streams to it like any :class:`Peer`: the record carries its key, so the
    handshake is IK and only that peer can answer.
    """

    def __init__(self, ops: PeerOps, record: NearbyRecord) -> None:
        super().__init__(ops, record.id, record.endpoints, record.nickname)
        #: The record it was made from (sequence number, sources, envelope).
        self.record = record
        #: The name of its endpoint.
        self.endpoint_name = record.endpoint_name
        #: When this node first saw it (Unix time, seconds).
        self.since = record.since
        #: The ids of the applications it shows to people near it (its record carries them, so
        #: they are known without asking; see :meth:`Peer.get_applications` for the details).
        self.applications = record.applications

    @property
    def fingerprint(self) -> str:
        """The short form of its id shown to people."""
        return self.id.fingerprint

    def __repr__(self) -> str:
        where = ", ".join(str(e) for e in self.endpoints)
        return f"<NearbyPeer {printable(self.nickname) or '?'} {self.id.fingerprint} at {where}>"


def wire_ttl(timeout: float) -> int:
    """The ``ttl`` sent for an invitation the inviter waits ``timeout`` seconds for."""
    return max(1, min(MAX_INVITATION_WAIT, math.ceil(timeout)))
