"""A control channel: requests and replies over one :class:`SecureChannel`, with keepalive.

A :class:`~peerkit.Node` keeps at most one control channel per remote peer and sends every request
to that peer over it. This module multiplexes requests by ``"rid"``, answers ``ping``, detects a
dead peer with keepalive pings, and closes a channel gracefully with ``retire`` (docs/protocol.md
section 4.2): a retired channel takes no new request, and closes once nothing is outstanding in
either direction.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from peerkit.errors import PeerUnreachable, ProtocolError
from peerkit.identity import PeerId
from peerkit.model import EndPoint, check_seconds
from peerkit.net.channel import SecureChannel
from peerkit.proto.control import ReplyParts, has_lists, split_reply

__all__ = ("ControlChannel", "KeepalivePolicy", "Request")

log = logging.getLogger(__name__)

#: Requests from one peer that are handled at the same time, at most.
MAX_CONCURRENT = 128
#: Message types that answer a request (besides every type ending in ``_reply``): they settle the
#: request with the same ``"rid"``.
REPLY_TYPES = frozenset({"pong", "error"})


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepalivePolicy:
    """When a node pings its peers and when it gives up on them."""

    #: Seconds between pings on an open channel.
    interval: float = 15.0
    #: Seconds a ping may go unanswered before the peer is declared gone.
    timeout: float = 10.0
    #: Seconds without a request, in either direction, after which a channel is closed.
    idle: float = 120.0

    def __post_init__(self) -> None:
        for name in ("interval", "timeout", "idle"):
            check_seconds(getattr(self, name), f"keepalive {name}")


@dataclass(slots=True, eq=False)
class Request:
    """An outstanding request on a control channel; :meth:`wait` gives its reply."""

    rid: int
    _done: anyio.Event = field(default_factory=anyio.Event)
    _parts: ReplyParts | None = None  # while a reply in parts is coming
    _reply: dict[str, Any] | None = None
    _error: BaseException | None = None

    def _settle(self, reply: dict[str, Any] | None, error: BaseException | None = None) -> None:
        if not self._done.is_set():
            self._reply, self._error = reply, error
            self._done.set()

    async def wait(self) -> dict[str, Any]:
        """The reply (its ``"t"`` is a reply type).

        :raises PeerUnreachable: when the channel closed before the reply came.
        """
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._reply is not None
        return self._reply


Handler = Callable[["ControlChannel", dict[str, Any]], Awaitable[None]]
#: Takes a notification (a message that is neither a request nor a reply) in the reading task.
NotificationHandler = Callable[["ControlChannel", dict[str, Any]], None]


class ControlChannel:
    """Requests and replies with one peer over a :class:`SecureChannel`; see the module docstring.

    ``handler(control, message)`` is run in its own task for every message that is not a reply,
    ``ping`` or ``retire``; it answers with :meth:`reply`.
    """

    def __init__(
        self,
        channel: SecureChannel,
        *,
        initiator: bool,
        local_id: PeerId,
        endpoint: EndPoint | None,
        handler: Handler,
        notifications: Mapping[str, NotificationHandler] | None = None,
        keepalive: KeepalivePolicy,
    ) -> None:
        #: The secure channel underneath.
        self.channel = channel
        #: Whether this side dialled.
        self.initiator = initiator
        #: The verified id of the peer.
        self.peer_id = channel.peer.id
        #: Where the peer listens, when known (the dialled endpoint, or its address and hello port).
        self.endpoint = endpoint
        #: Which id dialled: the lower one wins when two channels join the same two peers.
        self.dialler = local_id if initiator else channel.peer.id
        #: The address and port that were dialled (set by the owner), when known.
        self.via: tuple[str, int] | None = None
        self._handler = handler
        self._notifications = dict(notifications or {})
        self._keepalive = keepalive
        self._rids = itertools.count(1)
        self._waiting: dict[int, Request] = {}
        self._handling: dict[int, anyio.CancelScope] = {}
        self._retired = False
        self._peer_retired = False
        self._retired_at = 0.0
        self._last_request = anyio.current_time()
        self._closed = anyio.Event()
        #: Whatever the owner wants to keep with the channel (the Node keeps the sender's Peer).
        self.sender: Any = None
        #: Requests from the peer handled at once; more are answered with an ``error`` "limit".
        self.max_concurrent = MAX_CONCURRENT
        self._tasks = 0
        #: Subscriptions carried by this channel (either way): while there is one it is never idle.
        self.pins = 0

    # -- state -----------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Whether new requests may be sent on this channel."""
        return not (self._retired or self._peer_retired or self._closed.is_set() or self.channel.closed)

    @property
    def closed(self) -> bool:
        """Whether the channel has ended."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Wait until the channel has ended."""
        await self._closed.wait()

    def preference(self) -> tuple[bytes, bytes]:
        """The order in which duplicate channels are kept: lowest first, the same on both sides."""
        return bytes(self.dialler), self.channel.handshake_hash

    def _outstanding(self) -> bool:
        return bool(self._waiting or self._handling)

    # -- requests --------------------------------------------------------------------------
    async def start_request(self, message: dict[str, Any], *, activity: bool = True) -> Request:
        """Send ``message`` with a fresh ``"rid"`` and return the :class:`Request` awaiting its reply.

        ``activity=False`` (pings) does not count as use of the channel for the idle timeout.

        :raises PeerUnreachable: when the channel is closing or closed, or breaks.
        """
        if not self.usable if activity else self.closed:
            raise PeerUnreachable(f"the channel to {self.peer_id.fingerprint} is closing")
        rid = next(self._rids)
        request = Request(rid)
        self._waiting[rid] = request
        if activity:
            self._last_request = anyio.current_time()
        try:
            await self.channel.send({**message, "rid": rid})
        except BaseException as exc:
            self._waiting.pop(rid, None)
            if isinstance(exc, anyio.ClosedResourceError):
                raise PeerUnreachable(f"the channel to {self.peer_id.fingerprint} closed") from exc
            raise
        return request

    def forget(self, request: Request) -> None:
        """Stop waiting for ``request``'s reply (a reply that comes later is dropped)."""
        self._waiting.pop(request.rid, None)
        request._settle(None, PeerUnreachable("the request was abandoned"))

    async def notify(self, message: dict[str, Any]) -> None:
        """Send a message that expects no reply, such as ``invite_cancel``.

        :raises PeerUnreachable: when the channel is closed or breaks.
        """
        try:
            await self.channel.send(message)
        except anyio.ClosedResourceError as exc:
            raise PeerUnreachable(f"the channel to {self.peer_id.fingerprint} closed") from exc

    async def notify_encoded(self, plaintext: bytes) -> None:
        """:meth:`notify` with a message that is already CBOR-encoded (one encoding for many peers).

        :raises PeerUnreachable: when the channel is closed or breaks.
        """
        try:
            await self.channel.send_encoded(plaintext)
        except anyio.ClosedResourceError as exc:
            raise PeerUnreachable(f"the channel to {self.peer_id.fingerprint} closed") from exc

    async def reply(self, rid: int, message: dict[str, Any]) -> None:
        """Answer the incoming request ``rid``; a channel that closed meanwhile is ignored.

        A reply too large for one message is sent in parts (:mod:`peerkit.proto.control`).
        """
        self._handling.pop(rid, None)
        whole = {**message, "rid": rid}
        try:
            for part in split_reply(whole) if has_lists(whole) else (whole,):
                await self.channel.send(part)
        except (PeerUnreachable, anyio.ClosedResourceError) as exc:
            log.info("could not answer request %d of %s: %s", rid, self.peer_id.fingerprint, exc)
        await self._close_if_done()

    async def error(self, code: str, text: str, rid: int | None = None) -> None:
        """Send an ``error`` message (answering ``rid`` when given)."""
        message: dict[str, Any] = {"t": "error", "code": code, "msg": text}
        if rid is None:
            with contextlib.suppress(PeerUnreachable, anyio.ClosedResourceError):
                await self.channel.send(message)
        else:
            await self.reply(rid, message)

    def incoming(self, rid: int, scope: anyio.CancelScope) -> None:
        """Record that the incoming request ``rid`` is being handled under ``scope``."""
        self._handling[rid] = scope

    async def finished(self, rid: int) -> None:
        """The incoming request ``rid`` ended without a reply (the peer withdrew it)."""
        self._handling.pop(rid, None)
        await self._close_if_done()

    # -- retiring --------------------------------------------------------------------------
    async def retire(self) -> None:
        """Take no new request on this channel, tell the peer, and close once nothing is outstanding."""
        if self._retired or self.closed:
            return
        self._retired = True
        self._retired_at = anyio.current_time()
        try:
            await self.channel.send({"t": "retire"})
        except (PeerUnreachable, anyio.ClosedResourceError):
            await self.aclose()
            return
        await self._close_if_done()

    async def _close_if_done(self) -> None:
        if self._retired and self._peer_retired and not self._outstanding() and not self.closed:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the channel now; outstanding requests fail with :class:`PeerUnreachable`."""
        self._fail_waiting(PeerUnreachable(f"the channel to {self.peer_id.fingerprint} closed"))
        for scope in self._handling.values():
            scope.cancel()
        self._closed.set()
        await self.channel.aclose()

    def _fail_waiting(self, error: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for request in waiting.values():
            request._settle(None, error)

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Read and dispatch messages until the channel ends; keep it alive meanwhile.

        Returns when the peer closes, the channel breaks or the peer stops answering pings; the
        channel is then closed, and requests waiting on it fail with :class:`PeerUnreachable`.
        """
        reason: BaseException = PeerUnreachable(f"{self.peer_id.fingerprint} closed the channel")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_alive, tg.cancel_scope)
                try:
                    async for message in self.channel:
                        await self._dispatch(message, tg)
                except (ProtocolError, PeerUnreachable) as exc:
                    log.info("channel to %s ended: %s", self.peer_id.fingerprint, exc)
                    reason = PeerUnreachable(f"the channel to {self.peer_id.fingerprint} failed: {exc}")
                    reason.__cause__ = exc
                except anyio.ClosedResourceError:
                    pass
                tg.cancel_scope.cancel()
        finally:
            self._fail_waiting(reason)
            self._closed.set()
            with anyio.CancelScope(shield=True):
                await self.channel.aclose()

    async def _dispatch(self, message: dict[str, Any], tg: anyio.abc.TaskGroup) -> None:
        kind = message["t"]
        rid = message.get("rid")
        if (
            (kind in REPLY_TYPES or kind.endswith("_reply"))
            and isinstance(rid, int)
            and not isinstance(rid, bool)
        ):
            request = self._waiting.get(rid)
            if request is not None:
                if "more" in message or request._parts is not None:  # a reply in parts
                    if request._parts is None:
                        request._parts = ReplyParts()
                    whole = request._parts.add(message)  # a ProtocolError ends the channel
                    if whole is None:
                        return
                    message = whole
                del self._waiting[rid]
                request._settle(message)
                await self._close_if_done()
            elif kind == "error":
                log.info(
                    "error from %s: %s: %s", self.peer_id.fingerprint, message.get("code"), message.get("msg")
                )
            return
        if kind == "error":  # an error that answers no request of ours
            log.info(
                "error from %s: %s: %s", self.peer_id.fingerprint, message.get("code"), message.get("msg")
            )
            return
        valid_rid = isinstance(rid, int) and not isinstance(rid, bool) and rid >= 0
        if self._tasks >= self.max_concurrent and kind != "invite_cancel":
            # A peer that floods us with requests is answered here, in the reading task, so that it
            # is slowed down by its own answers instead of growing our task list.
            text = f"{self._tasks} requests of yours are being handled; the limit is {self.max_concurrent}"
            await self.error("limit", text, rid if valid_rid else None)
            return
        if kind == "ping":
            if valid_rid:
                self._spawn(tg, self.reply, rid, {"t": "pong"})
            else:
                self._spawn(tg, self.error, "malformed", 'ping needs an unsigned "rid"')
            return
        if kind == "retire":
            self._peer_retired = True
            if not self._retired:
                tg.start_soon(self.retire)
            else:
                await self._close_if_done()
            return
        self._last_request = anyio.current_time()
        take = self._notifications.get(kind)
        if take is not None:
            # In order, in this task, without a task of its own: notifications come in streams.
            try:
                take(self, message)
            except Exception:
                log.exception("handling %r from %s failed", kind, self.peer_id.fingerprint)
            return
        self._spawn(tg, self._handle, message)

    def _spawn(self, tg: anyio.abc.TaskGroup, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        self._tasks += 1

        async def run() -> None:
            try:
                await fn(*args)
            finally:
                self._tasks -= 1

        tg.start_soon(run)

    async def _handle(self, message: dict[str, Any]) -> None:
        try:
            await self._handler(self, message)
        except Exception:
            log.exception("handling %r from %s failed", message.get("t"), self.peer_id.fingerprint)

    async def _keep_alive(self, scope: anyio.CancelScope) -> None:
        policy = self._keepalive
        while True:
            await anyio.sleep(policy.interval)
            now = anyio.current_time()
            if self._retired and now - self._retired_at >= policy.timeout and not self._outstanding():
                # A peer that does not know "retire" never answers it; the channel is done anyway.
                await self.aclose()
                scope.cancel()
                return
            idle = now - self._last_request >= policy.idle
            if not self._retired and not self._outstanding() and not self.pins and idle:
                log.debug("closing the idle channel to %s", self.peer_id.fingerprint)
                await self.retire()
                continue
            try:
                request = await self.start_request({"t": "ping"}, activity=False)
            except PeerUnreachable:
                return
            with anyio.move_on_after(policy.timeout) as timer:
                try:
                    await request.wait()
                except PeerUnreachable:
                    return
            if timer.cancelled_caught:
                self.forget(request)
                log.info(
                    "%s did not answer a ping within %s s; closing its channel",
                    self.peer_id.fingerprint,
                    policy.timeout,
                )
                self._fail_waiting(
                    PeerUnreachable(
                        f"{self.peer_id.fingerprint} stopped answering (no pong in {policy.timeout} s)"
                    )
                )
                await anyio.aclose_forcefully(self.channel)
                scope.cancel()
                return
