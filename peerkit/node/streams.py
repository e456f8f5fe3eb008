"""Application streams, both ways: opening them to peers, and serving those opened to this node.

An application stream is a connection of its own with its own handshake (docs/protocol.md section
4.3). One :class:`Streams` part per node keeps the handler (or iterator) of each application, the
streams open now (closed when the node stops), and answers the ``stream`` request that starts a
stream connection.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import anyio

from peerkit.errors import NotAllowed, PeerUnreachable, ProtocolError
from peerkit.handles import Handle, Subscription
from peerkit.identity import PeerId
from peerkit.model import Application, EndPoint, check_seconds, seconds_text
from peerkit.net.channel import SecureChannel
from peerkit.net.transport import ON_LINK
from peerkit.node.connections import LOOKUP_AFTER, ChannelPeer, first_of, one_way
from peerkit.node.receivers import Receivers
from peerkit.peers import Peer
from peerkit.proto.admission import group_of, source_of
from peerkit.proto.messages import USE_STREAM
from peerkit.proto.requests import BadRequest, Refused, check_reply, decode_stream_request
from peerkit.streams import AppStream

__all__ = ("StreamHandler", "Streams")

#: Ways to a peer besides its endpoints: a new hole beside a punched channel, and a lookup.
_HOLE: Final = "hole"
_ELSEWHERE: Final = "elsewhere"

log = logging.getLogger(__name__)

StreamHandler = Callable[[AppStream], Awaitable[None]]


class _Policy(Protocol):
    # Who may open streams to this node, and who is trusted (the invitation part's).
    def allows(self, peer_id: PeerId) -> bool: ...
    def is_trusted(self, peer_id: PeerId) -> bool: ...


class Streams:
    """Application streams both ways; see the module docstring."""

    def __init__(
        self,
        *,
        queue_size: int,
        handshake_timeout: float,
        connect: Callable[..., Awaitable[SecureChannel]],
        endpoints_of: Callable[[Peer], tuple[EndPoint, ...]],
        registered: Callable[[Application | uuid.UUID], Application],
        application: Callable[[uuid.UUID], Application | None],
        policy: _Policy,
        check_running: Callable[[], None],
        fallback: Callable[[Peer], Awaitable[Peer | None]] | None = None,
        holed: Callable[[PeerId], bool] = lambda peer_id: False,
        punch: Callable[[PeerId], Awaitable[SecureChannel]] | None = None,
    ) -> None:
        self._holed = holed
        self._punch = punch
        self._handshake_timeout = handshake_timeout
        self._fallback = fallback
        self._connect = connect
        self._endpoints_of = endpoints_of
        self._registered = registered
        self._application = application
        self._policy = policy
        self._check_running = check_running
        #: Who takes the streams of each application.
        self.receivers: Receivers[AppStream, None] = Receivers("a stream", queue_size)
        self._open: set[AppStream] = set()

    async def close_all(self) -> None:
        """The node stops: iterators end, and every stream it opened is closed."""
        self.receivers.stop()
        for stream in list(self._open):
            await anyio.aclose_forcefully(stream)

    # -- receivers ---------------------------------------------------------------------------
    def add_handler(self, application: Application | uuid.UUID, handler: StreamHandler) -> Handle:
        """Run ``handler(stream)`` for every stream opened to ``application`` (see
        :meth:`Node.add_stream_handler`)."""
        if not callable(handler):
            raise TypeError(f"a stream handler must be a coroutine function, not {type(handler).__name__}")

        async def receiver(stream: AppStream) -> None:
            try:
                await handler(stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                log.debug("stream of %s ended in its handler: %r", stream.application.id, exc)
            except Exception:
                log.exception("stream handler for %s failed", stream.application.id)

        return self.receivers.add(application, receiver)

    def iterator(self, application: Application | uuid.UUID) -> Subscription[AppStream]:
        """Streams opened to ``application`` as an async iterator (see :meth:`Node.streams`)."""

        async def wait_until_closed(stream: AppStream) -> None:
            await stream.wait_closed()

        return self.receivers.iterator(application, wait_until_closed, None)

    # -- opening -----------------------------------------------------------------------------
    async def open(self, peer: Peer, application: Application | uuid.UUID, timeout: float) -> AppStream:
        """A stream to ``peer``'s instance of ``application`` (see :meth:`Peer.open_stream`)."""
        app = self._registered(application)
        timeout = check_seconds(timeout, "stream timeout", None)
        self._check_running()
        endpoints = () if isinstance(peer, ChannelPeer) else self._endpoints_of(peer)
        if not endpoints:
            raise PeerUnreachable(f"{peer.id.fingerprint} did not say where it listens")
        # Behind NATs whose control channel went through a punched hole, a new hole first; then
        # its endpoints; then, if they do not answer soon, where it is now (the DHT, a contact).
        ways: list[EndPoint | str] = [*endpoints]
        if self._punch is not None and self._holed(peer.id):
            ways.insert(0, _HOLE)
        if self._fallback is not None:
            ways.append(_ELSEWHERE)
        errors: list[PeerUnreachable] = []
        with anyio.move_on_after(timeout):
            stream = await self._first_stream(peer, ways, app, errors)
            if stream is not None:
                return stream
        if errors:
            raise errors[-1]
        raise PeerUnreachable(
            f"no endpoint of {peer.id.fingerprint} opened a stream within {seconds_text(timeout)}"
        )

    async def _first_stream(
        self, peer: Peer, ways: list[EndPoint | str], app: Application, errors: list[PeerUnreachable]
    ) -> AppStream | None:
        # The ways tried at once, staggered (first_of): the first channel made carries the
        # stream; then, if the stream request fails on it, the others one by one.

        async def elsewhere() -> SecureChannel:
            assert self._fallback is not None
            found = await self._fallback(peer)
            if found is None:
                raise PeerUnreachable(f"{peer.id.fingerprint} was not found anywhere else")
            dials = [
                one_way(functools.partial(self._connect, peer.id, e, use=USE_STREAM), peer.id, e)
                for e in found.endpoints
            ]
            return (await first_of(dials, discard=SecureChannel.aclose))[1]

        def dial(way: EndPoint | str) -> Callable[[], Awaitable[SecureChannel]]:
            if way == _HOLE:
                assert self._punch is not None
                return one_way(functools.partial(self._punch, peer.id), peer.id, "a punched hole")
            if way == _ELSEWHERE:
                return elsewhere
            assert isinstance(way, EndPoint)
            return one_way(functools.partial(self._connect, peer.id, way, use=USE_STREAM), peer.id, way)

        while ways:
            last_after = LOOKUP_AFTER if ways[-1] == _ELSEWHERE else None
            try:
                index, channel = await first_of(
                    [dial(w) for w in ways], discard=SecureChannel.aclose, last_after=last_after
                )
            except PeerUnreachable as exc:
                errors.append(exc)
                return None
            del ways[index]
            try:
                return await self._request(channel, peer.id, app)
            except PeerUnreachable as exc:
                errors.append(exc)
        return None

    async def _request(self, channel: SecureChannel, peer_id: PeerId, app: Application) -> AppStream:
        who = peer_id.fingerprint
        try:
            await channel.send({"t": "stream", "rid": 1, "app": app.id.bytes})
            reply = await channel.receive()
        except anyio.EndOfStream:
            await channel.aclose()
            raise PeerUnreachable(f"{who} closed the stream before answering") from None
        except BaseException:
            await anyio.aclose_forcefully(channel)
            raise
        try:
            answer = check_reply(reply, "stream_reply")
            if answer.get("rid") != 1 or answer.get("r") not in ("accepted", "declined"):
                raise ProtocolError(f"answered the stream request with {answer.get('r')!r}")
        except Refused as exc:
            await channel.aclose()
            raise ProtocolError(f"{who} refused the stream: {exc}") from None
        except ProtocolError as exc:
            await channel.aclose()
            raise ProtocolError(f"{who} {exc}") from None
        if answer["r"] == "declined":
            await channel.aclose()
            raise NotAllowed(f"{who} declined a stream for application {app.id}")
        stream = AppStream(channel, app, on_close=self._open.discard)
        self._open.add(stream)  # closed by the node on exit if its user has not closed it
        return stream

    # -- serving -----------------------------------------------------------------------------
    async def serve(self, channel: SecureChannel) -> None:
        """Answer the ``stream`` request that starts a stream connection, and run its receiver."""
        try:
            with anyio.fail_after(self._handshake_timeout):
                message = await channel.receive()
        except (TimeoutError, anyio.EndOfStream, PeerUnreachable, ProtocolError) as exc:
            log.info(
                "stream connection from %s ended before its request: %r", channel.peer.id.fingerprint, exc
            )
            return
        try:
            request = decode_stream_request(message)
        except BadRequest as exc:
            await channel.send(exc.reply())
            return
        app = self._application(request.app)
        receiver = self.receivers.get(request.app)
        if app is None or receiver is None or not self._policy.allows(channel.peer.id):
            await channel.send({"t": "stream_reply", "rid": request.rid, "r": "declined"})
            return
        await channel.send({"t": "stream_reply", "rid": request.rid, "r": "accepted"})
        stream = AppStream(channel, app)
        peer = channel.peer
        group = None if self._policy.is_trusted(peer.id) else group_of(source_of(peer.address, ON_LINK))
        try:
            await receiver(stream, group)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
