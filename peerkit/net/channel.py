"""The secure channel: the sans-IO :class:`~peerkit.proto.connection.Connection` over an anyio stream.

Like anyio's ``TLSStream`` wraps an ``ssl.SSLObject``, :class:`SecureChannel` drives a connection over
any anyio byte stream (TCP, Unix, in-memory), so the same code runs in tests and on the network.
Low-level errors are mapped to peerkit's here, once, keeping the cause.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Self, cast

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from peerkit.clock import loop_clock
from peerkit.errors import HandshakeError, PeerUnreachable, ProtocolError
from peerkit.identity import Identity, PeerId, check_identity, check_peer_id
from peerkit.model import EndPoint, check_text, seconds_text
from peerkit.net.relay import PrefixedStream, RelayAttribute, dial_relayed, read_frame
from peerkit.net.stamps import STAMPS
from peerkit.net.tcp import TcpStream
from peerkit.net.transport import BROKEN, ON_LINK, TcpTransport, Transport, is_public, unreachable
from peerkit.proto import crypto, messages
from peerkit.proto import relay as relay_wire
from peerkit.proto.admission import (
    Admission,
    AdmissionPolicy,
    RefusalCounter,
    Refused,
    ReplayGuard,
    source_of,
)
from peerkit.proto.connection import (
    HANDSHAKE_TIMEOUT,
    MAX_PLAINTEXT,
    Connection,
    HandshakeComplete,
    MessageReceived,
    State,
    StaticKeys,
    check_cipher,
)
from peerkit.proto.framing import MAX_FRAME, encode_frame
from peerkit.sync import Lock

__all__ = (
    "ChannelListener",
    "PeerInfo",
    "SecureChannel",
    "choose_cipher",
    "connect",
    "listen",
    "tell_refusals",
    "wanted_ciphers",
)


async def _write(stream: anyio.abc.ByteStream, data: bytes | bytearray) -> None:
    # Frames are built in a bytearray so that a message is never copied on its way out; every
    # anyio byte stream (asyncio transports, TLSStream, memory streams) takes any bytes-like object,
    # and the frame is not touched again after this call.
    await stream.send(cast(bytes, data))


log = logging.getLogger(__name__)

#: Messages of one channel decoded ahead of the application, at most: the other frames of a read
#: wait undecoded (a read full of tiny messages would otherwise be thousands of objects held).
DECODE_AHEAD: Final = 64

#: Seconds a listener waits for a new connection's preamble (a client sends it at once).
PREAMBLE_TIMEOUT: Final = 3.0

#: What a channel says when its connection broke.
BROKE: Final = "the connection to the peer broke"
_READ_SIZE = 262144


class _Scratch(threading.local):
    # Where the channels of a thread decrypt their messages larger than 4 KiB: one buffer of 64 KiB
    # a thread, instead of one kept by every connection that ever received such a message (a
    # stranger's 768 channels could hold 48 MiB so).
    def __init__(self) -> None:
        self.buffer = bytearray(MAX_PLAINTEXT)


_SCRATCH = _Scratch()


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """What the handshake proved about the other side."""

    #: The peer's verified id.
    id: PeerId
    #: The nickname it gave in its hello.
    nickname: str
    #: The endpoint name it gave in its hello.
    endpoint_name: str
    #: The remote address and port of the transport, when it has one.
    address: tuple[str, int] | None
    #: The port the peer says it listens on, if it said (hello extension ``"port"``).
    port: int | None = None
    #: What the initiator opened the connection for: ``"control"`` or ``"stream"``.
    use: str = messages.USE_CONTROL
    #: When the initiator sent its hello (nanoseconds on its clock), if it said (extension ``"ts"``).
    ts: int | None = None
    #: The Noise ciphers the peer would rather be dialled with than ChaChaPoly, best first
    #: (extension ``"ciphers"``; empty when it did not say).
    ciphers: tuple[str, ...] = ()


def wanted_ciphers() -> tuple[str, ...]:
    """The ciphers this process asks peers to dial it with (its hellos' ``"ciphers"``): AESGCM
    where the CPU has AES instructions (several times ChaChaPoly's speed there), else none."""
    return ("AESGCM",) if crypto.aes_is_fast() else ()


def choose_cipher(peer: PeerInfo) -> str:
    """The Noise cipher to dial ``peer`` with (it said what it wants in a channel's hello): the
    first of its ``ciphers`` this process wants too, else ChaChaPoly, which every peer takes."""
    wanted = wanted_ciphers()
    return next((cipher for cipher in peer.ciphers if cipher in wanted), "ChaChaPoly")


def _keys(identity: Identity) -> StaticKeys:
    return StaticKeys(private=identity.x25519_private, public=identity.x25519_public)


class SecureChannel(anyio.abc.AsyncResource):
    """An encrypted, mutually authenticated channel of peerkit messages.

    Make one with :meth:`wrap` (over any anyio byte stream), :func:`connect` (TCP) or
    :func:`listen`. Messages are mappings with a text ``"t"``; see docs/protocol.md section 4.
    One task may receive while others send; sends are serialized.
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        connection: Connection,
        done: HandshakeComplete,
        early: list[dict[str, Any]],
    ) -> None:
        self._stream = stream
        self._conn = connection
        # (made when needed: an idle channel's queue and locks would cost 2.4 KB)
        self._pending: deque[dict[str, Any]] | None = deque(early) if early else None
        self._send_lock = Lock()
        self._receive_lock = Lock()
        self._closed = False
        self._eof = False
        #: The Noise protocol name that ran (XX or IK, with ChaChaPoly or AESGCM).
        self.protocol: str = done.protocol
        #: The Noise handshake hash: the same on both sides, unique to this session.
        self.handshake_hash: bytes = done.handshake_hash
        address: tuple[str, int] | None = None
        try:
            raw = stream.extra(SocketAttribute.remote_address)
            if isinstance(raw, tuple):
                address = (str(raw[0]), int(raw[1]))
        except anyio.TypedAttributeLookupError:
            pass
        local: tuple[str, int] | None = None
        try:
            raw = stream.extra(SocketAttribute.local_address)
            if isinstance(raw, tuple):
                local = (str(raw[0]), int(raw[1]))
        except anyio.TypedAttributeLookupError:
            pass
        #: This side's address and port of the connection, when the transport has them.
        self.local_address = local
        #: The relay's address and port when the channel runs through a relay (None: direct).
        self.relay: tuple[str, int] | None = stream.extra(RelayAttribute.relay, None)
        #: Through a relay: this side's address and port as the relay saw them (when it said).
        self.relay_seen: tuple[str, int] | None = stream.extra(RelayAttribute.seen, None)
        #: What the handshake proved about the other side.
        self.peer = PeerInfo(
            id=PeerId(done.peer.id),
            nickname=done.peer.nick,
            endpoint_name=done.peer.name,
            address=address,
            port=done.peer.port,
            use=done.peer.use,
            ts=done.peer.ts,
            ciphers=done.peer.ciphers,
        )

    @property
    def cipher(self) -> str:
        """The Noise cipher function the channel runs (``"ChaChaPoly"`` or ``"AESGCM"``)."""
        return self.protocol.split("_")[3]

    # -- construction ----------------------------------------------------------------------
    @classmethod
    async def wrap(
        cls,
        stream: anyio.abc.ByteStream,
        identity: Identity,
        *,
        initiator: bool,
        expected_peer: PeerId | None = None,
        nickname: str = "",
        endpoint_name: str = "",
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        port: int | None = None,
        use: str = messages.USE_CONTROL,
        preamble_timeout: float | None = None,
        cipher: str = "ChaChaPoly",
    ) -> SecureChannel:
        """Run the handshake over ``stream`` and return the open channel.

        The initiator runs IK when it knows ``expected_peer`` (and then accepts only that peer),
        XX otherwise, with the Noise ``cipher`` (``"ChaChaPoly"``, or ``"AESGCM"`` for a peer that
        asked for it: see :func:`choose_cipher`); a responder takes either. On failure the stream
        is closed. ``port`` (the port this side listens on) and
        ``use`` (``"control"`` or ``"stream"``) travel in the hello's extension keys. A responder
        given ``preamble_timeout`` gives up on a peer that has not sent its preamble by then (a
        silent connection holds a slot for seconds, not the whole handshake timeout).

        :raises HandshakeError: when the handshake fails, proves another id, or takes longer than
            ``handshake_timeout`` seconds.
        :raises PeerUnreachable: when the stream breaks or closes during the handshake.
        :raises ValueError: when ``nickname`` or ``endpoint_name`` is over 255 characters, or
            ``cipher`` is not one of ``"ChaChaPoly"`` and ``"AESGCM"``.

        If cancelled, the stream is closed and nothing is left behind.
        """
        check_text(nickname, "nickname")
        check_text(endpoint_name, "endpoint name")
        if use not in (messages.USE_CONTROL, messages.USE_STREAM):
            raise ValueError(f"use must be {messages.USE_CONTROL!r} or {messages.USE_STREAM!r}, not {use!r}")
        hello = messages.Hello(
            id=identity.id.key,
            nick=nickname,
            name=endpoint_name,
            port=port,
            use=use,
            ts=STAMPS.next() if initiator else None,  # lets the responder refuse a replayed IK message 1
            ciphers=wanted_ciphers(),
        )
        now = anyio.current_time()
        try:
            if initiator:
                expected = expected_peer.key if expected_peer is not None else None
                conn = Connection.initiate(
                    _keys(identity),
                    hello,
                    now=now,
                    expected_id=expected,
                    handshake_timeout=handshake_timeout,
                    scratch=_SCRATCH.buffer,
                    cipher=cipher,
                )
            else:
                conn = Connection.respond(
                    _keys(identity),
                    hello,
                    now=now,
                    handshake_timeout=handshake_timeout,
                    scratch=_SCRATCH.buffer,
                )
            deadline = conn.get_timer()
            assert deadline is not None
            first = now + preamble_timeout if preamble_timeout is not None and not initiator else None
            with anyio.fail_after(max(0.0, deadline - now)):
                done, early = await cls._handshake(stream, conn, first)
        except TimeoutError:
            await anyio.aclose_forcefully(stream)
            hint = " (a node answers at once: what listens there may be no peerkit node)" if initiator else ""
            raise HandshakeError(
                f"the handshake did not complete within {seconds_text(handshake_timeout)}{hint}"
            ) from None
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        return cls(stream, conn, done, early)

    @staticmethod
    async def _handshake(
        stream: anyio.abc.ByteStream, conn: Connection, preamble_deadline: float | None = None
    ) -> tuple[HandshakeComplete, list[dict[str, Any]]]:
        broke = "the connection broke during the handshake"
        while True:
            out = conn.data_to_send()
            waiting = preamble_deadline is not None and conn.state is State.AWAIT_PREAMBLE
            try:
                with unreachable(broke, anyio.ClosedResourceError):
                    if out:
                        await _write(stream, out)
                    with anyio.move_on_after(
                        max(0.0, preamble_deadline - anyio.current_time())  # type: ignore[operator]
                        if waiting
                        else math.inf
                    ) as timer:
                        data = await stream.receive(_READ_SIZE)
                    if timer.cancelled_caught:
                        raise HandshakeError("the peer sent no preamble in time")
            except anyio.EndOfStream:
                conn.receive_eof()  # raises: the handshake is not complete
                raise PeerUnreachable(broke) from None
            events = conn.receive_data(data, anyio.current_time(), DECODE_AHEAD)
            if events:
                # The handshake completed; messages that came in the same read follow it.
                done = events[0]
                assert isinstance(done, HandshakeComplete)
                early = [e.message for e in events[1:] if isinstance(e, MessageReceived)]
                out = conn.data_to_send()
                if out:
                    with unreachable(broke, anyio.ClosedResourceError):
                        await _write(stream, out)
                return done, early

    # -- messages --------------------------------------------------------------------------
    async def send(self, message: Mapping[str, Any]) -> None:
        """Encrypt and send one message (a mapping with a text ``"t"``).

        :raises ValueError: when the encoded message exceeds 65519 bytes.
        :raises anyio.ClosedResourceError: when this channel was closed.
        :raises PeerUnreachable: when the connection broke or the peer closed the channel.

        If cancelled while writing, the channel is closed (a partial frame cannot be recalled).
        """
        await self._send(self._conn.send_message, message)

    async def send_encoded(self, plaintext: bytes) -> None:
        """Send one message that is already CBOR-encoded (see :meth:`send`)."""
        await self._send(self._conn.send_plaintext, plaintext)

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """Send one already-encoded message given as pieces (see :meth:`send_encoded`); the pieces
        are copied once, into the frame."""
        await self._send(self._conn.send_parts, parts)

    async def send_many(self, batch: list[list[bytes | memoryview]]) -> None:
        """Send several already-encoded messages, each given as pieces, in one write (see
        :meth:`send_parts`): a bulk sender's messages leave in as few writes and TCP segments
        as the socket takes them.

        :raises ValueError: when a message is empty or exceeds 65519 bytes (none is sent then).
        """
        await self._send(self._conn.send_many, batch)

    def try_send_encoded(self, plaintext: bytes) -> bool:
        """Send one CBOR-encoded message now, without waiting, if the stream can take it at once
        (a stream with ``send_ready()`` and ``send_nowait()``, not congested, no send under way).

        :returns: whether it was sent; when not, nothing was sent (use :meth:`send_encoded`).
        :raises ValueError: when the message exceeds 65519 bytes.
        :raises PeerUnreachable: when the peer closed the channel.
        """
        stream: Any = self._stream
        ready = getattr(stream, "send_ready", None)
        if self._closed or self._send_lock.locked() or ready is None or not ready():
            return False
        self._check_sendable()
        self._conn.send_plaintext(plaintext)
        try:
            stream.send_nowait(self._conn.data_to_send())
        except (*BROKEN, anyio.ClosedResourceError, anyio.WouldBlock) as exc:
            self._conn.close()  # the frame is encrypted: it cannot wait for a later send
            raise PeerUnreachable(BROKE) from exc
        return True

    @property
    def congested(self) -> bool:
        """Whether what was sent is not draining: the stream is congested (the peer does not read),
        or a send is waiting for it."""
        ready = getattr(self._stream, "send_ready", None)
        return self._send_lock.locked() or (ready is not None and not ready())

    async def writable(self) -> None:
        """Wait until the sends under way are done (the peer read enough of them)."""
        async with self._send_lock:
            pass

    async def _send(self, queue: Callable[[Any], None], message: Any) -> None:
        # Queue one message on the connection with ``queue`` and write it, one sender at a time.
        if self._closed:
            raise anyio.ClosedResourceError
        async with self._send_lock:
            self._check_sendable()
            queue(message)
            await self._flush()

    def _check_sendable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._eof or self._conn.state is not State.OPEN:
            raise PeerUnreachable("the peer closed the channel")

    async def _flush(self) -> None:
        # Called with the send lock held.
        try:
            await _write(self._stream, self._conn.data_to_send())
        except BROKEN as exc:  # on the hot path: the same errors as unreachable(), without its cost
            await self._abort()
            raise PeerUnreachable(BROKE) from exc
        except anyio.get_cancelled_exc_class():
            await self._abort()
            raise

    async def receive(self) -> dict[str, Any]:
        """The next message from the peer.

        :raises anyio.EndOfStream: when the peer closed the channel.
        :raises ProtocolError: when the peer sent something invalid; the channel is then closed.
        :raises PeerUnreachable: when the connection broke.
        :raises anyio.ClosedResourceError: when this channel was closed.

        Cancelling a receive loses no message.
        """
        async with self._receive_lock:
            while not self._pending:
                if self._closed:
                    raise anyio.ClosedResourceError
                if self._conn.frames_waiting:
                    data = b""  # (read already, beyond DECODE_AHEAD: decode the next ones)
                elif self._eof:
                    raise anyio.EndOfStream
                else:
                    stream = self._stream
                    try:
                        if isinstance(stream, TcpStream):  # (waits without a coroutine of the stream's)
                            read = stream.receive_waiting(_READ_SIZE)
                            if read is None:
                                await stream.readable()
                                continue
                            data = read
                        else:
                            data = await stream.receive(_READ_SIZE)
                    except anyio.EndOfStream:
                        self._eof = True
                        try:
                            self._conn.receive_eof()
                        except ProtocolError:
                            await self._abort()
                            raise
                        raise
                    except anyio.ClosedResourceError:
                        raise
                    except BROKEN as exc:
                        await self._abort()
                        raise PeerUnreachable(BROKE) from exc
                try:
                    events = self._conn.receive_data(data, loop_clock()(), DECODE_AHEAD)
                except ProtocolError:
                    await self._abort()
                    raise
                if len(events) == 1 and self._pending is None and isinstance(events[0], MessageReceived):
                    return events[0].message  # (the usual case: one message read, no queue made)
                for event in events:
                    if isinstance(event, MessageReceived):
                        if self._pending is None:
                            self._pending = deque()
                        self._pending.append(event.message)
            pending = self._pending
            assert pending is not None
            message = pending.popleft()
            if not pending:
                self._pending = None  # (an idle channel keeps no queue)
            return message

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        """The next message; iteration ends when the peer closes the channel."""
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    # -- closing ---------------------------------------------------------------------------
    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The transport's typed attributes (addresses), as anyio streams give them."""
        return self._stream.extra_attributes

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called or the connection failed."""
        return self._closed

    async def _abort(self) -> None:
        self._closed = True
        self._conn.close()
        await anyio.aclose_forcefully(self._stream)

    async def aclose(self) -> None:
        """Close the channel and its stream. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._conn.close()
        await self._stream.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SecureChannel {state} peer={self.peer.id.fingerprint} {self.protocol}>"


async def dial(
    network: Transport,
    host: str,
    port: int,
    identity: Identity,
    *,
    peer_id: PeerId | None = None,
    nickname: str = "",
    endpoint_name: str = "",
    timeout: float = HANDSHAKE_TIMEOUT,
    port_hint: int | None = None,
    use: str = messages.USE_CONTROL,
    local_host: str = "",
    relayed: bool = False,
    cipher: str = "ChaChaPoly",
) -> SecureChannel:
    """Connect to ``host:port`` over ``network`` and run the handshake: the one dial path.

    ``timeout`` bounds the connect and the handshake together. The stream is closed when the
    handshake fails or is cancelled (:meth:`SecureChannel.wrap`). ``port_hint`` (the port this
    side listens on) and ``use`` travel in the hello; ``cipher`` is the Noise cipher. With
    ``relayed``, ``host:port`` is a relay that ``peer_id`` keeps a reservation on, and the channel
    runs through it (:mod:`peerkit.net.relay`).

    :raises PeerUnreachable: when no connection can be made in time, or it breaks.
    :raises HandshakeError: when the handshake fails, is not done in time, or the peer is not
        ``peer_id``.
    """
    start = anyio.current_time()
    stream: anyio.abc.ByteStream
    try:
        with anyio.fail_after(timeout):
            if relayed:
                if peer_id is None:
                    raise ValueError("a relayed dial needs the peer id")
                stream = await dial_relayed(network, host, port, peer_id.key, local_host=local_host)
            else:
                stream = await network.connect(host, port, local_host=local_host)
    except TimeoutError:
        raise PeerUnreachable(f"could not connect to {host}:{port} within {seconds_text(timeout)}") from None
    return await SecureChannel.wrap(
        stream,
        identity,
        initiator=True,
        expected_peer=peer_id,
        nickname=nickname,
        endpoint_name=endpoint_name,
        handshake_timeout=max(timeout - (anyio.current_time() - start), 0.001),
        port=port_hint,
        use=use,
        cipher=cipher,
    )


async def connect(
    host: str,
    port: int,
    identity: Identity,
    *,
    peer_id: PeerId | None = None,
    nickname: str = "",
    endpoint_name: str = "",
    timeout: float = HANDSHAKE_TIMEOUT,
    cipher: str = "ChaChaPoly",
) -> SecureChannel:
    """Dial ``host:port`` over TCP and run the handshake (IK when ``peer_id`` is given, else XX).

    ``timeout`` bounds the whole dial: TCP connect and handshake together. ``cipher`` is the
    Noise cipher function: ``"ChaChaPoly"``, which every peer takes, or ``"AESGCM"``, which
    peerkit's listeners take too (several times faster where both CPUs have AES instructions;
    an implementation of the protocol's fixed part alone refuses it): :func:`choose_cipher`
    picks it for a peer from the hello of a channel to it.

    :raises PeerUnreachable: when no TCP connection can be made in time, or it breaks.
    :raises HandshakeError: when the handshake fails, is not done in time, or the peer is not
        ``peer_id``.
    :raises ValueError: when ``host``, ``port``, a name or ``cipher`` is invalid.
    :raises TypeError: when ``identity`` is not an :class:`~peerkit.Identity` or ``peer_id`` not a
        :class:`~peerkit.PeerId`.
    """
    EndPoint(host, port)  # validates host and port
    check_cipher(cipher)  # (before any connection is made)
    check_identity(identity)
    if peer_id is not None:
        check_peer_id(peer_id)
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout}")
    return await dial(
        TcpTransport(),
        host,
        port,
        identity,
        peer_id=peer_id,
        nickname=nickname,
        endpoint_name=endpoint_name,
        timeout=timeout,
        cipher=cipher,
    )


async def tell_refusals(logger: logging.Logger, *counters: RefusalCounter) -> None:
    """Log (as warnings to ``logger``) what ``counters`` counted once it is due, though no refusal
    comes after to tell it: a burst that ended is told within the counter's interval, not at the
    next refusal or when the node stops. Runs until cancelled, in a task of the counters' owner."""
    while True:
        now = anyio.current_time()
        for counter in counters:
            if (report := counter.due(now)) is not None:
                logger.warning("%s", report)
        dues = [at for counter in counters if (at := counter.due_at()) is not None]
        idle = min(counter.interval for counter in counters)  # (then a look at most this late)
        await anyio.sleep(max(min(dues) - now, 0.0) if dues else idle)


class ChannelListener(anyio.abc.AsyncResource):
    """A listener that hands each authenticated channel to a handler. See :func:`listen`.

    It takes any anyio listener of byte streams (TCP from :func:`listen`, or an in-memory one).
    """

    def __init__(
        self,
        listener: anyio.abc.Listener[Any],
        identity: Identity,
        *,
        nickname: str = "",
        endpoint_name: str = "",
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_handshakes: int = 256,
        admission: AdmissionPolicy | None = None,
        preamble_timeout: float = PREAMBLE_TIMEOUT,
    ) -> None:
        check_identity(identity)
        self._listener = listener
        #: Seconds a connection may stay silent before its preamble (it holds a slot meanwhile).
        self.preamble_timeout = preamble_timeout
        self._identity = identity
        #: The nickname and endpoint name this side gives in its hello.
        self.nickname = nickname
        self.endpoint_name = endpoint_name
        self._handshake_timeout = handshake_timeout
        #: Who may start a handshake (see :mod:`peerkit.proto.admission`).
        self.admission = Admission(admission or AdmissionPolicy(max_pending=max_handshakes))
        self._refusals = RefusalCounter()
        self._replays = ReplayGuard()
        #: Whether a peer is a contact: its replay stamps are kept however many strangers come (a
        #: node gives its contact manager's; None: every peer is a stranger).
        self.is_contact: Callable[[PeerId], bool] | None = None
        self._handler: Callable[[SecureChannel], Awaitable[Any]] | None = None
        #: Serves connections that start with the relay preamble (``relay(stream, rest, source)``),
        #: when this node is a relay; None refuses them like any other unknown preamble.
        self.relay: Callable[[anyio.abc.ByteStream, bytes, str], Awaitable[None]] | None = None
        #: When (anyio's clock) the listener last accepted a connection from a public address:
        #: proof that peers on the Internet can dial this node (None: never).
        self.accepted_publicly: float | None = None
        if hasattr(listener, "screen"):  # TCP: refused sources are closed as soon as accepted
            listener.screen = self._screen

    def _screen(self, address: object) -> bool:
        # Called by the listener's accepting task (TcpListener), per connection: the loop's clock,
        # read without anyio's lookup of the backend.
        now = loop_clock()()
        refusal = self.admission.screen(source_of(address, ON_LINK), now)
        if refusal is None:
            return True
        report = self._refusals.note(refusal, now)
        if report is not None:
            log.warning("%s", report)
        return False

    @property
    def address(self) -> tuple[str, int]:
        """The address and port the listener is bound to."""
        raw = self._listener.extra(SocketAttribute.local_address)
        assert isinstance(raw, tuple)
        return str(raw[0]), int(raw[1])

    async def serve(
        self,
        handler: Callable[[SecureChannel], Awaitable[Any]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until cancelled; run ``handler(channel)`` for each one that completes
        the handshake, and close the channel when it returns, unless it returns True: it has then
        taken the channel over (to run it in a task of its own, say) and closes it itself. A
        failed handshake or a handler that raises is logged and never stops the listener.
        """

        def handle(stream: anyio.abc.ByteStream) -> Awaitable[None]:
            # (the listener awaits what it returns: no frame of its own for the connection's life)
            address = _remote(stream)
            if isinstance(address, tuple) and is_public(str(address[0])):
                self.accepted_publicly = anyio.current_time()
            return self._handle(stream, handler, peek=self.relay is not None)

        self._handler = handler
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tell_refusals, log, self._refusals)
                task_status.started()
                await self._listener.serve(handle, tg)
        finally:
            if (report := self._refusals.flush()) is not None:  # (the refusals not told yet)
                log.warning("%s", report)

    async def take(self, stream: anyio.abc.ByteStream) -> None:
        """Handle ``stream`` as a connection this listener accepted (this side responds): a
        circuit a relay announced arrives this way. Returns when its handler did (or, when the
        handler took the channel over, once it has).

        :raises RuntimeError: when the listener is not serving.
        """
        if self._handler is None:
            raise RuntimeError("the listener is not serving")
        await self._handle(stream, self._handler, peek=False)

    async def _handle(
        self, stream: anyio.abc.ByteStream, handler: Callable[[SecureChannel], Awaitable[Any]], *, peek: bool
    ) -> None:
        source = source_of(_remote(stream), ON_LINK)
        handshaken = await self._admit(stream, source, peek=peek)
        if handshaken is None:
            return
        stream, channel, relayed = handshaken
        del handshaken  # (locals live as long as the channel: only what it needs)
        if relayed is not None and self.relay is not None:
            try:
                await self.relay(stream, relayed, source)
            finally:
                await anyio.aclose_forcefully(stream)
            return
        if channel is None:  # evicted: wrap() closed the stream
            await anyio.aclose_forcefully(stream)
            return
        peer = channel.peer
        if (
            channel.protocol.startswith("Noise_IK_")  # (either cipher)
            and peer.ts is not None
            and not self._replays.fresh(
                peer.id.key, peer.ts, kept=self.is_contact is not None and self.is_contact(peer.id)
            )
        ):
            # A recorded IK message 1 sent again: it must never stand for its sender.
            log.info("refusing a replayed handshake claiming to be %s", peer.id.fingerprint)
            await channel.aclose()
            return
        kept = False
        try:
            kept = await handler(channel) is True
        except Exception:
            log.exception("channel handler failed for peer %s", channel.peer.id)
        finally:
            if not kept:
                await channel.aclose()

    async def _admit(
        self, stream: anyio.abc.ByteStream, source: str, *, peek: bool
    ) -> tuple[anyio.abc.ByteStream, SecureChannel | None, bytes | None] | None:
        # Admission first, before any Diffie-Hellman: per-source limits and a fair share. Then the
        # handshake (or a relay's preamble). None when refused or failed (the stream is closed).
        # (A coroutine of its own: its ticket and cancel scope go when it returns, not when the
        # channel ends.)
        now = anyio.current_time()
        decision = self.admission.admit(source, now)
        if isinstance(decision, Refused):
            report = self._refusals.note(decision.reason, now)
            if report is not None:
                log.warning("%s", report)
            await anyio.aclose_forcefully(stream)
            return None
        for victim in decision.evicted:
            victim.handle.cancel()  # its slot went to a source holding fewer
        ticket = decision.ticket
        ticket.handle = scope = anyio.CancelScope()
        channel: SecureChannel | None = None
        relayed: bytes | None = None
        try:
            with scope:
                if peek:  # a relay: its connections start with the relay preamble
                    stream, relayed = await self._peek(stream)
                if relayed is None:
                    channel = await SecureChannel.wrap(
                        stream,
                        self._identity,
                        initiator=False,
                        nickname=self.nickname,
                        endpoint_name=self.endpoint_name,
                        handshake_timeout=self._handshake_timeout,
                        port=self.address[1],
                        preamble_timeout=self.preamble_timeout,
                    )
        except (ProtocolError, PeerUnreachable) as exc:
            log.info("incoming handshake failed: %s", exc)
            await anyio.aclose_forcefully(stream)
            return None
        finally:
            self.admission.release(ticket)
        return stream, channel, relayed

    async def _peek(self, stream: anyio.abc.ByteStream) -> tuple[anyio.abc.ByteStream, bytes | None]:
        # The stream as it was (its first frame given again), or the bytes after a relay preamble.
        with anyio.move_on_after(self.preamble_timeout) as timer:
            first, rest = await read_frame(stream, limit=MAX_FRAME)
        if timer.cancelled_caught:
            raise HandshakeError("the peer sent no preamble in time")
        if first == relay_wire.PREAMBLE:
            return stream, rest
        return PrefixedStream(stream, encode_frame(first) + rest), None

    async def aclose(self) -> None:
        """Stop listening."""
        await self._listener.aclose()


async def listen(
    identity: Identity,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    nickname: str = "",
    endpoint_name: str = "",
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_handshakes: int = 256,
    admission: AdmissionPolicy | None = None,
) -> ChannelListener:
    """Listen for secure channels on ``host:port`` (port 0 picks a free one).

    Incoming connections pass admission control before any handshake work
    (:mod:`peerkit.proto.admission`): at most ``max_handshakes`` handshakes run at once (or
    ``admission.max_pending``), each source (address, or IPv6 /64) holds at most a share of them
    and starts them within a budget, and under pressure the busiest source gives up its oldest
    slot. Refused connections are closed at once and counted in one log line per interval.

    :raises PeerUnreachable: when the address cannot be bound.
    :raises ValueError: when ``port`` is not 0 to 65535, ``max_handshakes`` is below 1 or a name
        is over 255 characters.
    :raises TypeError: when ``identity`` is not an :class:`~peerkit.Identity`, or ``host`` or
        ``port`` is of the wrong type.
    """
    check_identity(identity)
    if not isinstance(host, str):
        raise TypeError(f"host must be str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be int, not {type(port).__name__}")
    if not 0 <= port <= 65535:  # (an OS may take 70000 as 70000 - 65536)
        raise ValueError(f"port {port} is outside 0..65535 (0 picks a free one)")
    if max_handshakes < 1:
        raise ValueError(f"max_handshakes must be at least 1, not {max_handshakes}")
    check_text(nickname, "nickname")
    check_text(endpoint_name, "endpoint name")
    listener = await TcpTransport().listen(host, port)  # accepts only while descriptors are to spare
    return ChannelListener(
        listener,
        identity,
        nickname=nickname,
        endpoint_name=endpoint_name,
        handshake_timeout=handshake_timeout,
        max_handshakes=max_handshakes,
        admission=admission,
    )


def _remote(stream: anyio.abc.ByteStream) -> object:
    # The peer's address, as the transport knows it (through a relay: the relay's; None when the
    # transport does not know).
    try:
        return stream.extra(SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return stream.extra(RelayAttribute.relay, None)
