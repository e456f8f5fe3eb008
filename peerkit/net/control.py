"""A control channel: requests and replies over one :class:`SecureChannel`, with keepalive.

A :class:`~peerkit.Node` keeps at most one control channel per remote peer and sends every request
to that peer over it. This module is the I/O around :class:`peerkit.proto.control.ControlState`
(which keeps the rids, the replies in parts and the phase): it reads and dispatches messages,
runs a task per incoming request and sends the reply its handler **returns**, answers ``ping``,
detects a dead peer with keepalive pings, and closes a channel gracefully with ``retire``
(docs/protocol.md section 4.2): a retired channel takes no new request, and closes once nothing is
outstanding in either direction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import anyio
import anyio.abc

from peerkit.clock import Clock, loop_clock
from peerkit.errors import PeerUnreachable, ProtocolError
from peerkit.identity import PeerId
from peerkit.model import EndPoint, check_seconds, quoted
from peerkit.net.channel import SecureChannel
from peerkit.proto.control import (
    MAX_CONCURRENT,
    ControlState,
    NoticeReceived,
    PingReceived,
    Refuse,
    ReplyReceived,
    RequestReceived,
    RetireReceived,
    Unmatched,
    encode_reply,
    has_lists,
    take,
)
from peerkit.proto.messages import encode_pong
from peerkit.proto.requests import ErrorCode, error_reply, seen_address
from peerkit.sync import Flag

__all__ = (
    "PROBE_AFTER",
    "PROBE_TIMEOUT",
    "STALL_AFTER",
    "Answer",
    "ControlChannel",
    "KeepalivePolicy",
    "Reply",
    "Request",
)

#: Replies waiting to be sent on a congested channel at which the channel stops reading requests
#: until they drain.
STALL_AFTER: Final = 8
#: Pings a peer may send on one channel: bursts of PING_BURST, PING_RATE a second on average (a
#: node pings once a keepalive interval, and when a request of its goes unanswered for
#: PROBE_AFTER seconds). Others are answered with ``error`` "limit": pings are answered in the
#: reading task, charged to no request budget, and a peer must not spend the node's CPU on them.
PING_RATE: Final = 2.0
PING_BURST: Final = 10
#: Seconds a channel is not read after a request refused at once (malformed, or over the requests
#: it may have handled at once): only a peer that misbehaves is refused so.
REFUSE_PAUSE: Final = 0.1
#: When a request is sent and the peer then says nothing for PROBE_AFTER seconds, a ping goes;
#: no pong within PROBE_TIMEOUT seconds (at most the keepalive timeout) ends the channel, so that
#: a request on a connection that died quietly (a laptop that moved, a cable pulled) fails in
#: seconds rather than at the next keepalive. One such watch runs per channel at a time.
PROBE_AFTER: Final = 1.0
PROBE_TIMEOUT: Final = 3.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepalivePolicy:
    """When a node pings its peers and when it gives up on them.

    Each side pings once an interval after the channel opens (the pong says where the peer sees
    it). After that a channel is pinged when nothing was heard on it for ``interval`` seconds,
    by the side that dialled it; the side that accepted it pings after 1.5 intervals of silence.
    So an idle channel carries one ping (and its pong) per interval, not one from each side, and
    either side notices a peer gone within ``interval`` (1.5 intervals for the accepting side)
    and ``timeout`` of last hearing from it.
    """

    #: Seconds of silence on a channel after which it is pinged.
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


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply, and what to do once it went out: ``await sent(True)`` after it was sent,
    ``sent(False)`` when the channel closed first (a subscription starts its notices only after its
    state). The request counts as being handled until ``sent`` returns."""

    message: dict[str, Any]
    sent: Callable[[bool], Awaitable[None]]


#: What a request handler returns: the reply (its ``"rid"`` is added), or None to send none (the
#: peer withdrew the request).
Reply = dict[str, Any] | Answer | None
#: Takes an incoming request in a task of its own and returns its reply.
Handler = Callable[["ControlChannel", dict[str, Any]], Awaitable[Reply]]
#: Takes a notice (``notify``, ``invite_cancel``) in the reading task, in order.
NoticeHandler = Callable[["ControlChannel", dict[str, Any]], None]
_NO_NOTICES: Mapping[str, NoticeHandler] = MappingProxyType({})
_UNSCOPED: Final = contextlib.nullcontext()  # (on asyncio, run's reading is in no scope of its own)


class KeepaliveClock(Clock):
    """The timer of many control channels' keepalives: one task for all of a node's channels,
    where each channel would otherwise keep a task of its own asleep between its pings.

    Run :meth:`run` in a task; give the clock to each :class:`ControlChannel`. When a channel's
    keepalive is due, the clock starts its check (a ping, or retiring an idle channel) in that
    channel's own task group, and the channel asks for its next turn once the check is done. A
    check may start up to ``slack`` seconds late (see :class:`~peerkit.clock.Clock`).
    """

    def schedule(self, control: ControlChannel, at: float) -> None:
        """Start ``control``'s keepalive check at ``at`` (anyio's clock)."""
        self.call_at(at, control._keepalive_due)


class ControlChannel:
    """Requests and replies with one peer over a :class:`SecureChannel`; see the module docstring.

    ``handler(control, message)`` runs in its own task for every request of the peer (every
    message that is not a reply, ``ping``, ``retire`` or a notice) and returns the reply, which this
    channel sends. ``notices[kind](control, message)`` takes each notice of that type in order.
    With a ``clock``, the keepalive is timed by it (one task for many channels); without one, by
    a task of the channel's own.

    The channel's own tasks (request handlers, keepalive checks) run in ``tasks`` when it is given
    (a node gives its own task group: an idle channel then holds no group of its own), else in a
    task group :meth:`run` makes. Either way they are cancelled when the channel ends, and
    :meth:`run` returns only once they are done.

    Ending a channel ends :meth:`run` soon, from any task: on asyncio, by cancelling the task
    that runs it while it reads (only what :meth:`run` awaits in its reading: the cancellation
    ends there, and the task goes on after :meth:`run`), elsewhere by a cancel scope :meth:`run`
    enters. A channel is thus what ends its task (see :meth:`peerkit.sync.TaskSet.start_soon`):
    an idle channel's task holds no cancel scope on asyncio (0.8 KB with anyio's bookkeeping of
    the task, on each of thousands of channels).
    """

    def __init__(
        self,
        channel: SecureChannel,
        *,
        initiator: bool,
        local_id: PeerId,
        endpoint: EndPoint | None,
        handler: Handler,
        notices: Mapping[str, NoticeHandler] | None = None,
        keepalive: KeepalivePolicy,
        max_concurrent: int = MAX_CONCURRENT,
        clock: KeepaliveClock | None = None,
        tasks: anyio.abc.TaskGroup | None = None,
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
        #: Whatever the owner wants to keep with the channel (the Node keeps the sender's Peer).
        self.sender: Any = None
        #: Subscriptions carried by this channel (either way): while there is one it is never idle.
        self.pins = 0
        #: Where the peer last said it sees this side of the connection (the ``seen`` of its
        #: pong): behind a NAT, the router's public address and the port it mapped.
        self.seen: tuple[str, int] | None = None
        self._state = ControlState(max_concurrent=max_concurrent)
        self._handler = handler
        self._notices = notices if notices is not None else _NO_NOTICES  # (shared: not copied per channel)
        self._keepalive = keepalive
        self._clock = clock
        self._pinged = False  # (a pong came: ``seen`` is known)
        self._waiting: dict[int, Request] = {}
        self._retired_at = 0.0
        self._last_request = anyio.current_time()
        self._last_heard = self._last_request
        # (the peer's pings: tokens left and when counted, None before the first; one attribute:
        # past 30 of them an instance's dict shares no keys, 1.3 KB more on each channel)
        self._pings: tuple[float, float] | None = None
        self._watching = False  # (a watch of the peer's silence runs: see _watch)
        self._tasks = tasks  # where the channel's own tasks run (run makes a group if None)
        self._running = False  # (run is reading: tasks may be started)
        # What ends run's reading when the channel ends: on asyncio, the task reading (cancelled
        # once: see _stop); elsewhere, a cancel scope run enters.
        self._reader: asyncio.Task[Any] | None = None
        self._scope: anyio.CancelScope | None = None
        self._children: set[anyio.CancelScope] | None = None  # the running tasks' scopes
        self._started = 0  # tasks started and not yet finished
        self._drained: Flag | None = None  # set when the last of them finishes (run waits on it)
        self._closed = Flag()

    # -- state -----------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Whether new requests may be sent on this channel."""
        return self._state.usable and not self.channel.closed

    @property
    def closed(self) -> bool:
        """Whether the channel has ended."""
        return self._closed.is_set()

    @property
    def handling(self) -> int:
        """Requests of the peer being handled now."""
        return self._state.handling

    async def wait_closed(self) -> None:
        """Wait until the channel has ended."""
        await self._closed.wait()

    def preference(self) -> tuple[bytes, bytes]:
        """The order in which duplicate channels are kept: lowest first, the same on both sides."""
        return bytes(self.dialler), self.channel.handshake_hash

    # -- requests --------------------------------------------------------------------------
    async def start_request(self, message: dict[str, Any], *, activity: bool = True) -> Request:
        """Send ``message`` with a fresh ``"rid"`` and return the :class:`Request` awaiting its reply.

        ``activity=False`` (pings) does not count as use of the channel for the idle timeout, and
        may go on a retiring channel.

        :raises PeerUnreachable: when the channel is closing or closed, or breaks.
        """
        if not self.usable if activity else self.closed or self.channel.closed:
            raise PeerUnreachable(f"the channel to {self.peer_id.fingerprint} is closing")
        rid = self._state.start_request(keepalive=not activity)
        request = self._waiting[rid] = Request(rid)
        if activity:
            now = self._last_request = anyio.current_time()
            if not self._watching and self._running:
                self._watching = True
                self._start(self._watch, now)
        try:
            await self.channel.send({**message, "rid": rid})
        except BaseException as exc:
            take(self._waiting, rid)
            self._state.abandon(rid)
            if isinstance(exc, anyio.ClosedResourceError):
                raise PeerUnreachable(f"the channel to {self.peer_id.fingerprint} closed") from exc
            raise
        return request

    def forget(self, request: Request) -> None:
        """Stop waiting for ``request``'s reply (a reply that comes later is dropped)."""
        take(self._waiting, request.rid)
        self._state.abandon(request.rid)
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

    async def _send_reply(self, rid: int, reply: Reply | bytes) -> None:
        # The one place a reply to the peer goes out; the rid is answered after it is sent. A
        # reply already encoded (``bytes``, its rid in it: a pong) goes at once when the stream
        # can take it, without waiting for the send lock.
        try:
            if isinstance(reply, bytes):
                try:
                    if not self._closed.is_set() and not self.channel.try_send_encoded(reply):
                        await self.channel.send_encoded(reply)
                except (PeerUnreachable, anyio.ClosedResourceError) as exc:
                    log.info("could not answer request %d of %s: %s", rid, self.peer_id.fingerprint, exc)
            elif reply is not None and not self._closed.is_set():
                answer = reply if isinstance(reply, Answer) else None
                message = reply.message if isinstance(reply, Answer) else reply
                whole = {**message, "rid": rid}
                sent = False
                try:
                    if has_lists(whole):
                        for part in encode_reply(whole):
                            await self.channel.send_encoded(part)
                    else:
                        await self.channel.send(whole)
                    sent = True
                except (PeerUnreachable, anyio.ClosedResourceError) as exc:
                    log.info("could not answer request %d of %s: %s", rid, self.peer_id.fingerprint, exc)
                if answer is not None:
                    await answer.sent(sent)
        finally:
            self._state.answered(rid)
        if self._done():
            await self.aclose()

    async def _send_quietly(self, message: dict[str, Any]) -> None:
        try:
            await self.channel.send(message)
        except (PeerUnreachable, anyio.ClosedResourceError) as exc:
            log.info("could not send %r to %s: %s", message["t"], self.peer_id.fingerprint, exc)

    # -- retiring --------------------------------------------------------------------------
    async def retire(self) -> None:
        """Take no new request on this channel, tell the peer, and close once nothing is outstanding."""
        if self.closed or not self._state.retire():
            return
        self._retired_at = anyio.current_time()
        try:
            await self.channel.send({"t": "retire"})
        except (PeerUnreachable, anyio.ClosedResourceError):
            await self.aclose()
            return
        if self._done():
            await self.aclose()

    def _done(self) -> bool:
        # Both sides retired and nothing is outstanding: the channel is to be closed now.
        return self._state.done and not self._closed.is_set()

    async def aclose(self) -> None:
        """Close the channel now; outstanding requests fail with :class:`PeerUnreachable`."""
        self._end(PeerUnreachable(f"the channel to {self.peer_id.fingerprint} closed"))
        with anyio.CancelScope(shield=True):  # _end cancelled the handlers, maybe the caller itself
            await self.channel.aclose()

    def cancel(self, reason: str = "closed") -> None:
        """End the channel now, from any task, without waiting: outstanding requests fail with
        :class:`PeerUnreachable` (saying the channel was ``reason``), the requests being handled
        are cancelled, and :meth:`run` returns once it has closed the channel. Before :meth:`run`
        starts, it makes :meth:`run` return at once."""
        self._end(PeerUnreachable(f"the channel to {self.peer_id.fingerprint} was {reason}"))

    def _end(self, error: BaseException | None) -> None:
        # ``error`` for the requests still waiting; None: the peer closed the channel.
        if not self.closed:
            self._state.close()
        waiting, self._waiting = self._waiting, {}
        if waiting and error is None:
            error = PeerUnreachable(f"{self.peer_id.fingerprint} closed the channel")
        for request in waiting.values():
            request._settle(None, error)
        self._stop()
        self._closed.set()

    # (set on the channel only once it has cancelled its reading task: see _stop)
    _interrupted = False

    def _stop(self) -> None:
        # The reading loop and the channel's tasks still running are cancelled. The reading task
        # is cancelled only while it reads, once, and not by itself: it sees the channel closed
        # before it reads again (and its shielded closing is never cut short).
        reader = self._reader
        if reader is not None:
            self._reader = None
            if reader is not asyncio.current_task():
                self._interrupted = True
                reader.cancel()
        elif self._scope is not None:
            self._scope.cancel()
        if self._children:
            for scope in list(self._children):
                scope.cancel()

    # -- the channel's own tasks -------------------------------------------------------------
    def _start(self, func: Callable[..., Awaitable[Any]], *args: Any) -> None:
        # Start func(*args) in a task of the channel's (while run is reading).
        assert self._tasks is not None
        self._started += 1
        try:
            self._tasks.start_soon(self._child, func, args)
        except BaseException:
            self._started -= 1
            raise

    async def _child(self, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        # A task of the channel's: cancelled when the channel ends, waited for by run.
        try:
            if self._closed.is_set():
                return  # ended before this task began: nothing to do
            with anyio.CancelScope() as scope:
                children = self._children
                if children is None:
                    children = self._children = set()
                children.add(scope)
                try:
                    await func(*args)
                finally:
                    children.discard(scope)
                    if not children and self._children is children:
                        self._children = None  # (an idle channel keeps no set)
        finally:
            self._started -= 1
            if not self._started and self._drained is not None:
                self._drained.set()

    # -- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Read and dispatch messages until the channel ends; keep it alive meanwhile.

        Returns when the peer closes, the channel breaks, the peer stops answering pings or the
        channel is closed or cancelled here; the channel is then closed, requests waiting on it
        fail with :class:`PeerUnreachable`, and the channel's own tasks are done.
        """
        if self._tasks is None:  # (no group given: the channel's tasks get one of their own)
            async with anyio.create_task_group() as self._tasks:
                await self.run()
            return
        reason: BaseException | None = None  # (the peer closed it; an error made only if it failed)
        try:
            reader: asyncio.Task[Any] | None = asyncio.current_task()
        except RuntimeError:  # (not asyncio: trio)
            reader = None
            self._scope = anyio.CancelScope()
        try:
            with _UNSCOPED if self._scope is None else self._scope:  # (cancelled when the channel ends)
                if self._closed.is_set():
                    return  # (ended before it ran: the channel is closed below)
                self._reader = reader
                self._running = True
                if self._clock is None:
                    self._start(self._keep_alive)
                else:
                    self._clock.schedule(self, anyio.current_time() + self._keepalive.interval)
                try:
                    # (no bound methods kept in locals: 64 bytes each, on each idle channel)
                    now = loop_clock() if self._clock is None else self._clock.now
                    while not self._closed.is_set():
                        message = await self.channel.receive()  # (not ``async for``: a frame less)
                        if self._closed.is_set():
                            break
                        self._last_heard = now()
                        await self._dispatch(message)
                        del message  # (an idle channel keeps no last message: 0.4 KB)
                except (ProtocolError, PeerUnreachable) as exc:
                    log.info("channel to %s ended: %s", self.peer_id.fingerprint, exc)
                    reason = PeerUnreachable(f"the channel to {self.peer_id.fingerprint} failed: {exc}")
                    reason.__cause__ = exc
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    pass
                except asyncio.CancelledError:
                    # The channel ended (see _stop): its reading ends here, unless the task was
                    # cancelled from elsewhere as well.
                    if not self._interrupted or reader is None or reader.uncancel():
                        raise
        finally:
            # Ended before waiting for the channel's tasks (cancelled from outside too): they are
            # cancelled and see the channel closed, and a request from another task is refused.
            self._reader = None
            self._running = False
            self._end(reason)
            with anyio.CancelScope(shield=True):
                await self.channel.aclose()
                if self._started:
                    self._drained = Flag()
                    await self._drained.wait()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        event = self._state.receive(message)  # a ProtocolError (bad parts) ends the channel
        if event is None:  # a part of a reply; more to come
            return
        if isinstance(event, ReplyReceived):
            request = take(self._waiting, event.rid)
            if request is not None:
                request._settle(event.message)
            if self._done():
                await self.aclose()
        elif isinstance(event, NoticeReceived):
            self._last_request = self._last_heard  # (when it came: now)
            kind = event.message["t"]
            on_notice = self._notices.get(kind)
            if on_notice is None:
                log.debug("ignoring a %r from %s", kind, self.peer_id.fingerprint)
                return
            try:
                on_notice(self, event.message)
            except Exception:
                log.exception("handling %r from %s failed", kind, self.peer_id.fingerprint)
        elif isinstance(event, RequestReceived):
            self._last_request = self._last_heard  # (when it came: now)
            self._start(self._handle, event.rid, event.message)
            if self._state.handling >= STALL_AFTER and self.channel.congested:
                # Backpressure: a peer that does not read its replies is not read from either
                # (its requests wait in its own buffers, not in this node's memory).
                await self.channel.writable()
        elif isinstance(event, PingReceived):
            # (in the reading task: no task per ping; its bytes made directly, see encode_pong)
            now = self._last_heard  # (when it came)
            left, at = self._pings or (float(PING_BURST), now)
            tokens = min(float(PING_BURST), left + (now - at) * PING_RATE)
            if tokens < 1.0:
                self._pings = (tokens, now)
                await self._send_reply(
                    event.rid, error_reply(ErrorCode.LIMIT, f"over {PING_RATE:g} pings a second")
                )
                return
            self._pings = (tokens - 1.0, now)
            await self._send_reply(event.rid, encode_pong(event.rid, self.channel.peer.address))
        elif isinstance(event, RetireReceived):
            if event.answer:
                self._start(self.retire)
            elif self._done():
                await self.aclose()
        elif isinstance(event, Refuse):
            # Answered here, in the reading task: a peer that floods us is slowed down by its
            # own answers instead of growing our task list, and nothing more of it is read for a
            # while (its requests wait in its own buffers: a refusal costs the node about what
            # an answer does, and a peer must not make it refuse at full speed).
            await self._send_quietly(event.reply)
            await anyio.sleep(REFUSE_PAUSE)
        else:
            assert isinstance(event, Unmatched)
            if event.message["t"] == "error":
                message = event.message
                code, text = quoted(message.get("code")), quoted(message.get("msg"))
                log.info("error from %s: %s: %s", self.peer_id.fingerprint, code, text)

    async def _handle(self, rid: int, message: dict[str, Any]) -> None:
        # (a task of the channel's: cancelled when the channel closes)
        reply: Reply = None
        try:
            reply = await self._handler(self, message)
        except Exception:
            log.exception("handling %r from %s failed", message.get("t"), self.peer_id.fingerprint)
            reply = error_reply(ErrorCode.UNAVAILABLE, f"the {message.get('t')!r} request failed")
        await self._send_reply(rid, reply)

    async def _watch(self, sent: float) -> None:
        # While requests wait for replies: when the peer has been silent since the latest one was
        # sent (``sent`` at first), for PROBE_AFTER seconds, a ping goes (once per such silence).
        confirmed = sent - 1.0  # requests sent up to then are known to have reached a live peer
        try:
            while True:
                await anyio.sleep(PROBE_AFTER)
                if not self._waiting:
                    return
                latest = self._last_request
                if self._last_heard >= latest or latest <= confirmed:
                    continue  # heard since, or probed since
                if not await self._ping_answered(min(PROBE_TIMEOUT, self._keepalive.timeout)):
                    return
                confirmed = anyio.current_time()
        finally:
            self._watching = False  # the next request starts a watch again

    async def _ping_answered(self, timeout: float) -> bool:
        # False when the peer did not answer a ping within ``timeout`` (the channel is then ended)
        # or the channel closed.
        try:
            request = await self.start_request({"t": "ping"}, activity=False)
            with anyio.move_on_after(timeout) as timer:
                pong = await request.wait()
        except PeerUnreachable:
            return False
        if not timer.cancelled_caught:
            self._pinged = True
            self.seen = seen_address(pong.get("seen")) or self.seen
            return True
        self.forget(request)
        log.info(
            "%s did not answer a ping within %s s; closing its channel", self.peer_id.fingerprint, timeout
        )
        self._end(PeerUnreachable(f"{self.peer_id.fingerprint} stopped answering (no pong in {timeout} s)"))
        await anyio.aclose_forcefully(self.channel)
        return False

    async def _keep_alive(self) -> None:
        # (without a clock) a keepalive check when due, until one ends the channel
        due = anyio.current_time() + self._keepalive.interval
        while True:
            await anyio.sleep(due - anyio.current_time())
            if not await self._keepalive_check():
                return
            due = self._next_check()

    def _quiet(self) -> float:
        # Seconds of silence after which this side pings (see KeepalivePolicy).
        interval = self._keepalive.interval
        return interval if self.initiator else 1.5 * interval

    def _next_check(self) -> float:
        # When the next keepalive check is due: once the channel has been quiet long enough.
        now = anyio.current_time()
        quiet = self._last_heard + self._quiet()
        return quiet if quiet > now else now + self._keepalive.interval

    def _keepalive_due(self) -> None:
        # (the clock's task) a channel heard from lately only asks for its next turn; one with
        # something to do does it in a task of its own group, then asks for the next turn
        if not self._running or self.closed:
            return
        if self._keepalive_needs() is None and self._clock is not None:
            self._clock.schedule(self, self._next_check())
        else:
            self._start(self._keepalive_turn)

    async def _keepalive_turn(self) -> None:
        if await self._keepalive_check() and self._clock is not None:
            self._clock.schedule(self, self._next_check())

    def _keepalive_needs(self) -> Literal["close", "retire", "ping"] | None:
        # What a keepalive check has to do now (see KeepalivePolicy): "close" a retired channel
        # the peer never answered, "retire" an idle one, "ping" a peer not heard from for long
        # enough; None when the peer was heard from lately (after a first ping, which tells
        # ``seen``).
        policy = self._keepalive
        now = anyio.current_time()
        state = self._state
        if state.retire_sent and now - self._retired_at >= policy.timeout and not state.outstanding:
            return "close"  # (a peer that does not know "retire" never answers it)
        idle = now - self._last_request >= policy.idle
        if not state.retire_sent and not state.outstanding and not self.pins and idle:
            return "retire"
        if self._pinged and now - self._last_heard < self._quiet():
            return None
        return "ping"

    async def _keepalive_check(self) -> bool:
        # One keepalive check, doing what _keepalive_needs says. False when it ended the channel.
        needs = self._keepalive_needs()
        if needs == "close":
            await self.aclose()
            return False
        if needs == "retire":
            log.debug("closing the idle channel to %s", self.peer_id.fingerprint)
            await self.retire()
            return not self.closed
        if needs is None:
            return True
        if not await self._ping_answered(self._keepalive.timeout):
            self._stop()
            return False
        return True
