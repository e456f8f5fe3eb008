"""The node's connections: one control channel per peer and endpoint, shared dials, rivals.

One :class:`Connections` part per node dials peers (one dial per peer and endpoint, however many
callers wait for it), adopts the channels that complete a handshake on the listener, settles a
simultaneous dial (both sides keep the channel the lower id dialled; docs/protocol.md section
4.2), and runs each control channel until it ends. Application streams arrive on the same
listener and are handed to the node's stream part.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import anyio
import anyio.abc

from peerkit.clock import Clock
from peerkit.errors import HandshakeError, NotRunning, PeerkitError, PeerUnreachable, ProtocolError
from peerkit.identity import Identity, PeerId, check_peer_id
from peerkit.model import EndPoint
from peerkit.net.channel import PeerInfo, SecureChannel, choose_cipher, dial, tell_refusals
from peerkit.net.control import ControlChannel, Handler, KeepaliveClock, KeepalivePolicy, NoticeHandler
from peerkit.net.transport import ON_LINK, Transport, is_public
from peerkit.peers import Peer, PeerOps
from peerkit.proto.admission import RefusalCounter, source_of
from peerkit.proto.holdings import Held, Holdings, HoldingsPolicy, NotKept
from peerkit.proto.messages import USE_CONTROL, USE_STREAM
from peerkit.proto.requests import BadRequest, ErrorCode, decode_stream_request, error_reply
from peerkit.sync import Flag, TaskSet

__all__ = (
    "CIPHERS_REMEMBERED",
    "LOOKUP_AFTER",
    "MAX_CHANNELS_PER_PEER",
    "STAGGER",
    "ChannelPeer",
    "Connections",
    "Me",
    "Route",
    "all_failed",
    "first_of",
    "one_way",
)

log = logging.getLogger(__name__)

#: Control channels one peer may have open to this node at a time; more are closed at once.
MAX_CHANNELS_PER_PEER: Final = 8

#: Peers whose stream cipher (AESGCM, asked for in a hello of theirs) a node remembers once their
#: channels closed, the most recently heard kept: its next stream to one of them runs that cipher
#: though no control channel is open to tell it (e.g. streams opened again and again to a peer).
CIPHERS_REMEMBERED: Final = 1024

#: Gives an open control channel to a peer (dialling one when needed).
Route = Callable[[], Awaitable[ControlChannel]]

#: Seconds a way to a peer is given before the next one is tried beside it (a peer's record lists
#: its own addresses first; behind a NAT they are silent, and its relay comes after them).
STAGGER: Final = 0.3
#: Seconds the known ways to a contact are given before a lookup of where it is now (the DHT)
#: starts beside them (at once when they all failed).
LOOKUP_AFTER: Final = 1.0
#: The keepalive clock starts a channel's check up to interval / this late, so that it wakes at
#: most this many times an interval however many channels there are (0.5 s at the default 15 s).
SLACK_PER_INTERVAL: Final = 30

T = TypeVar("T")


async def first_of(
    ways: Sequence[Callable[[], Awaitable[T]]],
    *,
    stagger: float = STAGGER,
    discard: Callable[[T], Awaitable[None]] | None = None,
    last_after: float | None = None,
) -> tuple[int, T]:
    """The first of ``ways`` to succeed, and its index: each starts when the one before failed or
    has had ``stagger`` seconds (RFC 8305's "happy eyeballs"; the last one ``last_after`` seconds,
    when given); the others are cancelled once one succeeds (a dial under way in the node's task
    group goes on and keeps its channel), and one that succeeds too late is given to ``discard``.

    :raises PeerUnreachable: when every way failed so: the one's, or one that tells them all.
    :raises Exception: any other error of a way, at once.
    """
    won: list[tuple[int, T]] = []
    unreachable: list[PeerUnreachable] = []
    other: list[BaseException] = []

    async def run(index: int, failed: anyio.Event) -> None:
        try:
            value = await ways[index]()
        except PeerUnreachable as exc:
            unreachable.append(exc)
            failed.set()
            return
        except Exception as exc:  # raised to the caller as it is, not in an exception group
            other.append(exc)
            tg.cancel_scope.cancel()
            return
        if not won:
            won.append((index, value))
            tg.cancel_scope.cancel()
        elif discard is not None:
            with anyio.CancelScope(shield=True):
                await discard(value)

    async with anyio.create_task_group() as tg:
        for index in range(len(ways)):
            failed = anyio.Event()
            tg.start_soon(run, index, failed)
            if index + 1 < len(ways):
                wait = last_after if last_after is not None and index + 2 == len(ways) else stagger
                with anyio.move_on_after(wait):
                    await failed.wait()
    if other:
        raise other[0]
    if won:
        return won[0]
    if unreachable:
        raise all_failed(unreachable)
    raise PeerUnreachable("there was no way to try")


def one_way(dial: Callable[[], Awaitable[T]], peer_id: PeerId, where: object) -> Callable[[], Awaitable[T]]:
    """``dial`` (a channel to ``peer_id`` at ``where``) as one of several ways to the peer: a
    handshake that fails there -- another node holds that address now, or another service that
    speaks something else -- fails that way as an address that does not answer does
    (:class:`~peerkit.PeerUnreachable`, naming ``where``), and the other ways go on."""

    async def way() -> T:
        try:
            return await dial()
        except ProtocolError as exc:
            raise PeerUnreachable(f"{peer_id.fingerprint} was not reached at {where}: {exc}") from exc

    return way


def all_failed(errors: Sequence[PeerUnreachable]) -> PeerUnreachable:
    """The error of several ways to a peer that all failed: the one's, or one that says how each
    failed (each message once), with the cause of the first to fail."""
    if len(errors) == 1:
        return errors[0]
    failure = PeerUnreachable("; ".join(dict.fromkeys(str(error) for error in errors)))
    failure.__cause__ = errors[0].__cause__
    return failure


@dataclass(slots=True, eq=False)
class _Dial:
    # A dial under way, shared by its callers; what ends its task (see TaskSet.start_soon): its
    # cancel scope while it dials, then the channel it made.
    scope: anyio.CancelScope | None = field(default_factory=anyio.CancelScope)
    done: Flag = field(default_factory=Flag)
    control: ControlChannel | None = None
    error: BaseException | None = None

    def cancel(self) -> None:
        if self.control is not None:
            self.control.cancel()
        elif self.scope is not None:
            self.scope.cancel()


class ChannelPeer(Peer):
    """The sender of a request whose listening port is not known: reachable over the channel it
    opened (to invite it back), but not dialable for a stream."""

    def __init__(self, ops: PeerOps, control: ControlChannel) -> None:
        address = control.channel.peer.address
        endpoint = EndPoint(address[0], address[1]) if address is not None else EndPoint("0.0.0.0", 1)
        super().__init__(ops, control.peer_id, (endpoint,), control.channel.peer.nickname)
        #: The channel it opened.
        self.control = control

    async def route(self) -> ControlChannel:
        """The channel it opened, while it is open.

        :raises PeerUnreachable: when it closed (nothing else reaches the peer).
        """
        if self.control.usable:
            return self.control
        raise PeerUnreachable(
            f"the channel from {self.id.fingerprint} is closed and it did not say where it listens"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Me:
    """What this node says of itself: in each handshake, and in its signed record."""

    identity: Identity
    nickname: str
    endpoint_name: str
    #: Where it listens (dials leave from its address; its port travels in the hello).
    endpoint: EndPoint
    #: The relays it can be reached through (those it holds a reservation on).
    relays: tuple[EndPoint, ...] = ()
    #: Its port as the home router maps it (the router's public address), while mapped.
    mapped: EndPoint | None = None
    #: Whether its record says it serves as a relay.
    relaying: bool = False
    #: The applications its record shows to people near it (registered with scope NEAR_ME or ALL).
    applications: tuple[uuid.UUID, ...] = ()


class Connections:
    """Dials, adopts and runs this node's control channels; see the module docstring."""

    def __init__(
        self,
        *,
        network: Transport,
        keepalive: KeepalivePolicy,
        handshake_timeout: float,
        handler: Handler,
        notices: Mapping[str, NoticeHandler],
        on_closed: Callable[[ControlChannel], None],
        on_peer: Callable[[PeerId], None],
        serve_stream: Callable[[SecureChannel], Awaitable[None]],
        peer_ops: PeerOps,
        is_contact: Callable[[PeerId], bool],
        holdings: HoldingsPolicy | None = None,
    ) -> None:
        self._network = network
        self._keepalive = keepalive
        self._handshake_timeout = handshake_timeout
        self._handler = handler
        self._notices = notices
        self._on_closed = on_closed
        self._on_peer = on_peer
        self._serve_stream = serve_stream
        self._peer_ops = peer_ops
        self._is_contact = is_contact
        #: The channels and streams peers opened to this node, bounded (contacts first).
        self.holdings = Holdings(holdings)
        self._refusals = RefusalCounter(what="channel")
        self._disconnected = RefusalCounter(what="stranger", verb="disconnected")
        self._controls: dict[PeerId, list[ControlChannel]] = {}
        #: The direct channels from public addresses, in the order they opened (what the
        #: reachability pass looks at: none on a LAN, however many channels are open).
        self._public: dict[ControlChannel, None] = {}
        self._dials: dict[tuple[PeerId | None, EndPoint], _Dial] = {}
        #: The cipher a stream to each peer runs, from the hellos it sent (CIPHERS_REMEMBERED).
        self._ciphers: OrderedDict[PeerId, str] = OrderedDict()
        self._tg: anyio.abc.TaskGroup | None = None
        self._links: TaskSet | None = None  # the dialled channels' tasks (in the node's group)
        self._clock: KeepaliveClock | None = None
        self._hello: Callable[[], Me] | None = None
        #: Told of each control channel this node dialled through a relay (to punch a hole).
        self.on_relayed: Callable[[ControlChannel], None] | None = None

    def start(self, tg: anyio.abc.TaskGroup, hello: Callable[[], Me]) -> None:
        """Dial and run channels in ``tg`` from now on; ``hello()`` says what this node says of
        itself in each handshake (read at each dial: the nickname may change)."""
        self._tg, self._hello = tg, hello
        # A dialled channel lives in a task of its own for as long as it is open: one lighter
        # than a task of the group's, as a node may keep thousands.
        self._links = TaskSet(tg)
        tg.start_soon(self._links.keep)
        # One task times every channel's keepalive.
        self._clock = KeepaliveClock(slack=self._keepalive.interval / SLACK_PER_INTERVAL)
        tg.start_soon(self._clock.run)
        tg.start_soon(tell_refusals, log, self._refusals, self._disconnected)

    @property
    def clock(self) -> Clock | None:
        """The node's one timer task (the channels' keepalives run on it), while it runs."""
        return self._clock

    def _me(self) -> Me:
        if self._hello is None:
            raise NotRunning("the node is not running")
        return self._hello()

    def clear(self) -> None:
        """Forget every channel (the node stopped: its task group closed them); log what the
        refusals and disconnections not told yet were."""
        for counter in (self._refusals, self._disconnected):
            if (report := counter.flush()) is not None:
                log.warning("%s", report)
        self._controls.clear()
        self._public.clear()
        self._dials.clear()
        self._ciphers.clear()
        self._tg = self._hello = self._clock = self._links = None

    # -- what there is -----------------------------------------------------------------------
    def channels(self, peer_id: PeerId) -> int:
        """How many control channels to ``peer_id`` are open."""
        channels = self._controls.get(check_peer_id(peer_id), ())  # (a wrong type: an error, not 0)
        return sum(1 for c in channels if not c.closed)

    def peers(self) -> list[PeerId]:
        """The peers a control channel is open to."""
        return [
            peer_id for peer_id, channels in self._controls.items() if any(not c.closed for c in channels)
        ]

    def seen_publicly(self) -> set[str]:
        """The addresses peers on the Internet (at public addresses, over direct channels) say
        they see this node at (``"seen"`` in their pongs)."""
        return {c.seen[0] for c in self._public if not c.closed and c.seen is not None}

    def public(self) -> list[ControlChannel]:
        """The open direct channels from peers at public addresses, the oldest first."""
        return [c for c in self._public if not c.closed]

    def controls(self, peer_id: PeerId) -> list[ControlChannel]:
        """The open control channels to ``peer_id``."""
        return [c for c in self._controls.get(peer_id, ()) if not c.closed]

    async def disconnect(self, peer_id: PeerId, why: str = "") -> None:
        """Close every control channel to ``peer_id`` now; ``why``, when the node decided it (a
        peer over its request budget), is logged: for a contact each time, for strangers (whose
        new ids cost nothing) as a count at most once an interval, and when the node stops."""
        if why:
            if self._is_contact(peer_id):
                log.warning("disconnecting contact %s: %s", peer_id.fingerprint, why)
            elif (report := self._disconnected.note(why, anyio.current_time())) is not None:
                log.warning("%s", report)
        for control in list(self._controls.get(check_peer_id(peer_id), ())):
            await control.aclose()

    def routes(self, peer: Peer, endpoints: tuple[EndPoint, ...], *, exact: bool = False) -> list[Route]:
        """The ways to reach ``peer``: one per endpoint, or the channel it opened."""
        if isinstance(peer, ChannelPeer):
            return [peer.route]
        return [
            one_way(functools.partial(self.control_to, peer.id, e, exact=exact), peer.id, e)
            for e in endpoints
        ]

    def sender(self, control: ControlChannel) -> tuple[EndPoint | None, Peer]:
        """The endpoint and :class:`Peer` of whoever opened ``control`` (made once per channel)."""
        cached: tuple[EndPoint | None, Peer] | None = control.sender
        if cached is None:
            info = control.channel.peer
            endpoint: EndPoint | None
            peer: Peer
            if control.endpoint is not None:
                endpoint = EndPoint(control.endpoint.host, control.endpoint.port, info.endpoint_name)
                peer = Peer(self._peer_ops, control.peer_id, (endpoint,), info.nickname)
            else:
                endpoint = EndPoint(*info.address, info.endpoint_name) if info.address is not None else None
                peer = ChannelPeer(self._peer_ops, control)
            cached = control.sender = (endpoint, peer)
        return cached

    # -- dialling ----------------------------------------------------------------------------
    async def control_to(self, peer_id: PeerId | None, endpoint: EndPoint, *, exact: bool) -> ControlChannel:
        """An open control channel to ``peer_id`` at ``endpoint`` (any endpoint of it unless
        ``exact``; whoever listens there when ``peer_id`` is None), dialling one when there is
        none. Concurrent callers share one dial.

        :raises PeerUnreachable: when it cannot be reached.
        :raises HandshakeError: when the peer there is not ``peer_id``.
        :raises ValueError: when ``endpoint`` is this node itself.
        """
        for _ in range(3):
            if peer_id is not None:
                usable = [
                    c
                    for c in self._controls.get(peer_id, ())
                    if c.usable and (c.endpoint == endpoint or not exact)
                ]
            else:
                usable = [
                    c for cs in self._controls.values() for c in cs if c.usable and c.endpoint == endpoint
                ]
            if usable:
                return min(usable, key=ControlChannel.preference)
            key = (peer_id, endpoint)
            pending = self._dials.get(key)
            if pending is None:
                if self._links is None:
                    raise NotRunning("the node is not running")
                pending = self._dials[key] = _Dial()
                self._links.start_soon(self._dial, key, pending, handle=pending)
            await pending.done.wait()
            if pending.error is not None:
                raise pending.error
            assert pending.control is not None
            if pending.control.usable:
                return pending.control
            peer_id = pending.control.peer_id
        raise PeerUnreachable(f"could not keep a channel open to {endpoint}")

    async def _dial(self, key: tuple[PeerId | None, EndPoint], pending: _Dial) -> None:
        # Dials in the scope of ``pending``, then runs the channel: the node ends the task with
        # ``pending`` when it stops (see TaskSet.start_soon).
        peer_id, endpoint = key
        control: ControlChannel | None = None
        assert pending.scope is not None
        with pending.scope:
            try:
                channel = await self.connect(peer_id, endpoint, use=USE_CONTROL)
                if channel.peer.id == self._me().identity.id:
                    await channel.aclose()
                    raise ValueError(f"{endpoint} is this node itself")
                control = pending.control = self._adopt(channel, initiator=True, endpoint=endpoint)
                if channel.relay is not None and self.on_relayed is not None:
                    self.on_relayed(control)
            except (PeerkitError, ValueError) as exc:
                pending.error = exc
            except Exception as exc:  # anything else must not take the node down with it
                log.exception("dialling %s failed", endpoint)
                pending.error = PeerUnreachable(f"could not reach {endpoint}: {exc!r}")
                pending.error.__cause__ = exc
            finally:
                if pending.error is None and pending.control is None:  # cancelled: the node stops
                    pending.error = NotRunning("the node stopped while dialling")
                self._dials.pop(key, None)
                pending.done.set()
        pending.scope = None  # (from now on the channel ends the task: it keeps no cancel scope)
        del key, pending  # (locals live as long as the channel: only what it needs)
        if control is not None:
            try:
                await control.run()
            finally:
                self._ended(control)

    def cipher_for(self, peer_id: PeerId | None, use: str) -> str:
        """The Noise cipher for a new channel to ``peer_id``: for a stream, the one the hello of a
        control channel to it asked for (or, with none open, the last hello heard from it), when
        this node wants it too (AESGCM, where both CPUs have AES instructions); else ChaChaPoly."""
        if use != USE_STREAM or peer_id is None:
            return "ChaChaPoly"
        controls = self._controls.get(peer_id)
        if controls:
            return choose_cipher(controls[0].channel.peer)
        return self._ciphers.get(peer_id, "ChaChaPoly")

    def _heard(self, peer: PeerInfo) -> None:
        # A peer's hello, authenticated: remember the cipher a stream to it would run.
        cipher = choose_cipher(peer)
        if cipher == "ChaChaPoly":
            self._ciphers.pop(peer.id, None)
            return
        self._ciphers[peer.id] = cipher
        self._ciphers.move_to_end(peer.id)
        if len(self._ciphers) > CIPHERS_REMEMBERED:
            self._ciphers.popitem(last=False)

    async def connect(self, peer_id: PeerId | None, endpoint: EndPoint, *, use: str) -> SecureChannel:
        """A new secure channel to ``endpoint`` (``use`` is ``"control"`` or ``"stream"``; the
        cipher is :meth:`cipher_for`'s: when a remembered one fails the handshake, the peer
        changed since, and ChaChaPoly is tried once more).

        :raises PeerUnreachable: when nothing answers in time.
        :raises HandshakeError: when the handshake fails or the peer is not ``peer_id``.
        """
        cipher = self.cipher_for(peer_id, use)
        try:
            channel = await self._dial_with(peer_id, endpoint, use, cipher)
        except HandshakeError:
            if cipher == "ChaChaPoly" or peer_id is None or self._controls.get(peer_id):
                raise
            self._ciphers.pop(peer_id, None)
            channel = await self._dial_with(peer_id, endpoint, use, "ChaChaPoly")
        self._heard(channel.peer)
        return channel

    async def _dial_with(
        self, peer_id: PeerId | None, endpoint: EndPoint, use: str, cipher: str
    ) -> SecureChannel:
        hello = self._me()
        return await dial(
            self._network,
            endpoint.host,
            endpoint.port,
            hello.identity,
            peer_id=peer_id,
            nickname=hello.nickname,
            endpoint_name=hello.endpoint_name,
            timeout=self._handshake_timeout,
            port_hint=hello.endpoint.port,
            use=use,
            local_host=hello.endpoint.host,
            relayed=endpoint.relay is not None,
            cipher=cipher,
        )

    async def handshake(self, stream: anyio.abc.ByteStream, peer_id: PeerId, *, use: str) -> SecureChannel:
        """A secure channel over ``stream``, a connection this node made by other means (a punched
        hole), with this node as the initiator and ``peer_id`` the only peer accepted.

        :raises HandshakeError: when the handshake fails or the peer is not ``peer_id``.
        :raises PeerUnreachable: when the stream breaks during the handshake.
        """
        hello = self._me()
        channel = await SecureChannel.wrap(
            stream,
            hello.identity,
            initiator=True,
            expected_peer=peer_id,
            nickname=hello.nickname,
            endpoint_name=hello.endpoint_name,
            handshake_timeout=self._handshake_timeout,
            port=hello.endpoint.port,
            use=use,
            cipher=self.cipher_for(peer_id, use),
        )
        self._heard(channel.peer)
        return channel

    def take_dialled(self, channel: SecureChannel, endpoint: EndPoint) -> ControlChannel:
        """Keep and run a control channel this node dialled by other means (a punched hole to
        ``endpoint``), as if :meth:`control_to` had dialled it.

        :raises NotRunning: when the node is not running.
        """
        if self._links is None:
            raise NotRunning("the node is not running")
        control = self._adopt(channel, initiator=True, endpoint=endpoint)
        self._links.start_soon(self._run, control, None, handle=control)
        return control

    # -- channels ----------------------------------------------------------------------------
    def _adopt(self, channel: SecureChannel, *, initiator: bool, endpoint: EndPoint | None) -> ControlChannel:
        control = ControlChannel(
            channel,
            initiator=initiator,
            local_id=self._me().identity.id,
            endpoint=endpoint,
            handler=self._handler,
            notices=self._notices,
            keepalive=self._keepalive,
            clock=self._clock,
            tasks=self._tg,  # (its handlers run in the node's group: an idle channel holds none)
        )
        self._on_peer(control.peer_id)
        # The endpoint that was dialled: ours as the peer reached it, or the one we dialled.
        control.via = (
            (endpoint.host, endpoint.port) if initiator and endpoint is not None else channel.local_address
        )
        channels = self._controls.setdefault(control.peer_id, [])
        rivals = [
            c
            for c in channels
            if c.usable
            and c.endpoint is not None
            and c.endpoint == endpoint
            and (c.dialler != control.dialler or c.via == control.via)
        ]
        channels.append(control)
        address = channel.peer.address
        if channel.relay is None and address is not None and is_public(address[0]):
            self._public[control] = None
        if rivals:
            # Both peers dialled each other (or one dialled the same endpoint twice): both keep
            # the same channel (the one the lower id dialled) and retire the others, which close
            # once their requests are answered. One peer dialling two addresses of the other is
            # not a rivalry: both channels stay (a watcher follows each endpoint).
            keep = min([*rivals, control], key=ControlChannel.preference)
            assert self._tg is not None
            for other in (*rivals, control):
                if other is not keep:
                    self._tg.start_soon(other.retire)
        return control

    async def _run(self, control: ControlChannel, held: Held | None) -> None:
        # A channel accepted (holding its place ``held``) or dialled by other means, for its life:
        # the channel ends the task (as _dial's).
        try:
            await control.run()
        finally:
            self._ended(control)
            if held is not None:
                self.holdings.release(held)

    def _ended(self, control: ControlChannel) -> None:
        # A channel's run is over: the owner is told, and it is forgotten. (_dial calls this
        # itself rather than await _run: a coroutine frame less on each of thousands of idle
        # channels.)
        self._on_closed(control)
        self._public.pop(control, None)
        channels = self._controls.get(control.peer_id)
        if channels is not None and control in channels:
            channels.remove(control)
            if not channels:
                del self._controls[control.peer_id]

    async def on_channel(self, channel: SecureChannel) -> bool:
        """Take a channel that completed the handshake on the listener: keep it if the node has a
        place for it, contacts first. True when a control channel was kept: it runs in a task of
        the node's own from then on (else the listener closes the channel when this returns)."""
        peer = channel.peer
        if peer.id == self._me().identity.id:
            return False
        self._heard(peer)
        stream = peer.use == USE_STREAM
        if not stream and self.channels(peer.id) >= MAX_CHANNELS_PER_PEER:
            self._refused(f"over {MAX_CHANNELS_PER_PEER} control channels from one peer")
            return False
        links = self._links
        if not stream and links is None:
            return False  # (the node is stopping)
        decision = self.holdings.hold(
            peer=peer.id.key,
            source=source_of(peer.address, ON_LINK),
            contact=self._is_contact(peer.id),
            stream=stream,
        )
        if isinstance(decision, NotKept):
            self._refused(decision.reason.value)
            if stream:
                await self._refuse_stream(channel, decision.reason.value)
            return False
        for victim in decision.evicted:
            victim.handle.cancel()  # its place went to this one
        held = decision.held
        if stream:
            try:
                held.handle = scope = anyio.CancelScope()
                with scope:
                    await self._serve_stream(channel)
            finally:
                self.holdings.release(held)
            return False
        # A control channel: from now on in a task of the node's, as a dialled one (the listener's
        # task, its coroutines and its cancel scope end here: 1 KB less for each idle channel).
        assert links is not None
        endpoint = None
        if peer.address is not None and peer.port is not None:
            endpoint = EndPoint(peer.address[0], peer.port)
        control = held.handle = self._adopt(channel, initiator=False, endpoint=endpoint)
        try:
            links.start_soon(self._run, control, held, handle=control)  # (evicted: the handle ends it)
        except BaseException:  # (trio: the group is closing) the listener closes the channel
            self._ended(control)
            self.holdings.release(held)
            raise
        return True

    async def _refuse_stream(self, channel: SecureChannel, reason: str) -> None:
        # Answer the stream request with error "limit" (briefly: the place is not held meanwhile).
        with anyio.move_on_after(1), contextlib.suppress(anyio.EndOfStream, PeerkitError):
            try:
                rid: int | None = decode_stream_request(await channel.receive()).rid
            except BadRequest as exc:
                rid = exc.rid
            await channel.send(error_reply(ErrorCode.LIMIT, reason, rid))

    def _refused(self, reason: str) -> None:
        report = self._refusals.note(reason, anyio.current_time())
        if report is not None:
            log.warning("%s", report)
