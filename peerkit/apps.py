"""What applications deal with: invitations they receive, streams they talk over, handler handles.

- :class:`Invitation` is what an invited application receives (``PeerApplicationLaunchInfo``).
- :class:`AppStream` is an encrypted application stream (an anyio ``ByteStream``).
- :class:`InvitationPolicy` says who may invite this node; :class:`Handle` removes a handler.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Self, TypeVar

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from peerkit.errors import PeerUnreachable, ProtocolError
from peerkit.identity import PeerId
from peerkit.model import Application, EndPoint, InvitationResponse
from peerkit.net.channel import PeerInfo, SecureChannel
from peerkit.proto import messages
from peerkit.proto.connection import MAX_PLAINTEXT

if TYPE_CHECKING:
    from peerkit.contacts import Contact
    from peerkit.peers import Peer

__all__ = ("AppStream", "Handle", "Invitation", "InvitationAnswered", "InvitationPolicy", "Subscription")

T = TypeVar("T")


class InvitationPolicy(enum.Enum):
    """Who may invite this node (and open application streams to it)."""

    #: Any peer that completes the handshake.
    ANYONE = "anyone"
    #: Only contacts (``node.contacts``) and peers trusted with :meth:`~peerkit.Node.trust`.
    CONTACTS_ONLY = "contacts-only"
    #: Nobody: every invitation is declined without running a handler.
    NOBODY = "nobody"


class Handle:
    """Returned when a handler is added; :meth:`remove` takes it away again (twice is harmless)."""

    def __init__(self, remove: Callable[[], None]) -> None:
        self._remove: Callable[[], None] | None = remove

    def remove(self) -> None:
        """Remove the handler."""
        if self._remove is not None:
            self._remove()
            self._remove = None


@dataclass(eq=False, kw_only=True)
class Invitation:
    """An invitation this node received (R5). Answer it by returning an
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
    _answer: InvitationResponse | None = field(default=None, repr=False)
    _answered: anyio.Event = field(default_factory=anyio.Event, repr=False)
    _withdrawn: str | None = field(default=None, repr=False)

    @property
    def response(self) -> InvitationResponse | None:
        """The answer given so far, or ``None``."""
        return self._answer

    @property
    def withdrawn(self) -> bool:
        """Whether the inviter cancelled, went away, or the invitation expired before an answer."""
        return self._withdrawn is not None

    @property
    def withdrawn_reason(self) -> str | None:
        """``"cancelled"``, ``"expired"`` or ``"disconnected"`` once withdrawn, else ``None``."""
        return self._withdrawn

    def _answer_with(self, response: InvitationResponse) -> None:
        if self._withdrawn is not None:
            raise RuntimeError(
                f"the invitation was withdrawn ({self._withdrawn}); it can no longer be answered"
            )
        if self._answer is not None:
            raise RuntimeError(f"the invitation was already answered ({self._answer.name})")
        self._answer = response
        self._answered.set()

    def accept(self) -> None:
        """Answer ACCEPTED.

        :raises RuntimeError: when already answered or withdrawn.
        """
        self._answer_with(InvitationResponse.ACCEPTED)

    def decline(self) -> None:
        """Answer DECLINED.

        :raises RuntimeError: when already answered or withdrawn.
        """
        self._answer_with(InvitationResponse.DECLINED)

    def _withdraw(self, reason: str) -> None:
        if self._answer is None and self._withdrawn is None:
            self._withdrawn = reason
            self._answered.set()


@dataclass(frozen=True, slots=True, kw_only=True)
class InvitationAnswered:
    """An invitation this node received and what became of it (see
    :meth:`~peerkit.Node.add_invitation_observer`)."""

    #: The inviter's verified id.
    sender_id: PeerId
    #: The nickname the inviter gave.
    nickname: str
    #: The application's id (it may not be registered here).
    application_id: uuid.UUID
    #: The inviter's message.
    message: str
    #: The size of the inviter's data, in bytes.
    data_size: int
    #: The answer sent, or ``None`` when the inviter withdrew or went away first.
    response: InvitationResponse | None
    #: Why the node answered as it did: ``"handler"``, ``"not registered"``, ``"no handler"``,
    #: ``"policy"``, ``"expired"``, ``"cancelled"`` or ``"disconnected"``.
    reason: str


class Subscription(Generic[T]):
    """Items for one application (invitations or streams) as an async iterator.

    Use it with ``async with`` (or call :meth:`aclose`) so that it stops receiving when you are done;
    items that arrive while nobody reads wait in a bounded buffer, and are refused when it is full.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[T], remove: Callable[[], None]) -> None:
        self._receive = receive
        self._handle = Handle(remove)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        """The next item; iteration ends when the subscription or the node closes."""
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()  # the node closed it, or it was closed: nothing is left open
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stop receiving."""
        self._handle.remove()
        self._receive.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


#: Bytes of application data carried by one stream message (fits one frame with its CBOR header).
STREAM_CHUNK: Final = MAX_PLAINTEXT - 32
# A two-entry map (0xa2), "t": "data", then the key "d"; the byte string's head and bytes follow.
_DATA_HEAD: Final = b"\xa2" + messages.encode("t") + messages.encode("data") + messages.encode("d")


def _bytes_head(length: int) -> bytes:
    # The CBOR head of a byte string of ``length`` bytes (major type 2).
    if length < 24:
        return bytes([0x40 | length])
    if length < 256:
        return bytes([0x58, length])
    return bytes([0x59, length >> 8, length & 0xFF])


class AppStream(anyio.abc.ByteStream):
    """An encrypted, authenticated byte stream between two instances of an application.

    It has its own connection and Noise session. It behaves like anyio's TCP streams: ``send`` waits
    while the peer is slow (backpressure), ``send_eof`` ends this direction, ``receive`` raises
    :class:`anyio.EndOfStream` after the peer's end of data. The end of data is authenticated: a
    connection cut without it raises :class:`anyio.BrokenResourceError`, so a truncation is noticed.
    """

    def __init__(
        self,
        channel: SecureChannel,
        application: Application,
        on_close: Callable[[AppStream], None] | None = None,
    ) -> None:
        self._channel = channel
        self._on_close = on_close
        #: The application this stream belongs to.
        self.application = application
        #: The verified peer at the other end.
        self.peer: PeerInfo = channel.peer
        #: The Noise protocol of the stream's own session.
        self.protocol: str = channel.protocol
        #: The handshake hash of the stream's own Noise session.
        self.handshake_hash: bytes = channel.handshake_hash
        self._buffer = b""
        self._offset = 0
        self._eof_sent = False
        self._eof_received = False
        self._closed = anyio.Event()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The transport's attributes (addresses), as anyio streams give them."""
        return self._channel._stream.extra_attributes

    async def send(self, item: bytes) -> None:
        """Send bytes; waits while the peer has not read enough (backpressure).

        :raises anyio.ClosedResourceError: after :meth:`send_eof` or :meth:`aclose`.
        :raises anyio.BrokenResourceError: when the connection broke.
        """
        if self._eof_sent or self._closed.is_set():
            raise anyio.ClosedResourceError
        try:
            view = memoryview(item).cast("B")
            for start in range(0, len(view), STREAM_CHUNK):
                piece = view[start : start + STREAM_CHUNK]
                # {"t": "data", "d": <piece>} in CBOR, with the piece copied once, into the frame.
                await self._channel.send_parts([_DATA_HEAD, _bytes_head(len(piece)), piece])
        except PeerUnreachable as exc:
            raise anyio.BrokenResourceError from exc

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes from the peer.

        :raises anyio.EndOfStream: after the peer's end of data.
        :raises anyio.BrokenResourceError: when the connection broke or the peer broke the protocol.
        :raises anyio.ClosedResourceError: after :meth:`aclose`.
        """
        if self._closed.is_set():
            raise anyio.ClosedResourceError
        while self._offset >= len(self._buffer):
            if self._eof_received:
                raise anyio.EndOfStream
            try:
                message = await self._channel.receive()
            except anyio.EndOfStream:
                raise anyio.BrokenResourceError("the connection ended without the end-of-data mark") from None
            except (PeerUnreachable, ProtocolError) as exc:
                raise anyio.BrokenResourceError from exc
            kind = message["t"]
            if kind == "data" and isinstance(message.get("d"), bytes):
                self._buffer, self._offset = message["d"], 0
            elif kind == "eof":
                self._eof_received = True
            else:
                await self._channel.aclose()
                raise anyio.BrokenResourceError(
                    f"the peer sent a {kind!r} message inside an application stream"
                )
        buffer, offset = self._buffer, self._offset
        if offset == 0 and len(buffer) <= max_bytes:
            self._buffer = b""  # the whole message: handed over without a copy
            return buffer
        end = min(offset + max_bytes, len(buffer))
        self._offset = end
        return buffer[offset:end]

    async def send_eof(self) -> None:
        """Tell the peer that nothing more will be sent (it reads :class:`anyio.EndOfStream`)."""
        if self._eof_sent or self._closed.is_set():
            return
        self._eof_sent = True
        try:
            await self._channel.send({"t": "eof"})
        except PeerUnreachable as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        """Send the end of data if not done yet, and close the connection."""
        if self._closed.is_set():
            return
        try:
            if not self._eof_sent:
                with anyio.move_on_after(1, shield=True):
                    await self.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        finally:
            self._closed.set()
            if self._on_close is not None:
                self._on_close(self)
            await self._channel.aclose()

    async def wait_closed(self) -> None:
        """Wait until this stream is closed by its user."""
        await self._closed.wait()

    def __repr__(self) -> str:
        return f"<AppStream {self.application.id} peer={self.peer.id.fingerprint}>"
