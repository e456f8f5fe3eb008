"""Relays over byte streams (docs/protocol.md section 8): dialling a peer through a relay, taking a
circuit as the reserved peer, and serving as a relay.

The byte streams these give (:class:`RelayedStream`) carry the ordinary preamble, Noise handshake
and messages between the two peers, so a :class:`~peerkit.net.channel.SecureChannel` is made over
them exactly as over TCP; the relay in the middle copies ciphertext and never holds a key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from peerkit.errors import PeerUnreachable, ProtocolError
from peerkit.net.transport import BROKEN, Transport
from peerkit.proto import relay as wire
from peerkit.proto.relay import RelayBook, RelayPolicy, RelayRefused

__all__ = (
    "PrefixedStream",
    "RelayAttribute",
    "RelayService",
    "RelayStats",
    "RelayedStream",
    "dial_relayed",
    "read_frame",
    "take_circuit",
)

log = logging.getLogger(__name__)

#: The largest frame read before the bytes of a circuit flow (a relay request or answer).
MAX_RELAY_FRAME: Final = 1024
#: Seconds a relay waits for the request after the relay preamble.
REQUEST_TIMEOUT: Final = 3.0
#: Bytes copied at once through a circuit.
CHUNK: Final = 65536


class RelayAttribute(anyio.TypedAttributeSet):
    """The typed attribute a stream through a relay has (``stream.extra(RelayAttribute.relay)``)."""

    #: The relay's address and port.
    relay: tuple[str, int] = anyio.typed_attribute()
    #: This side's address and port as the relay sees them (a dialler's, when the relay said).
    seen: tuple[str, int] = anyio.typed_attribute()


async def read_frame(
    stream: anyio.abc.ByteStream, *, limit: int = MAX_RELAY_FRAME, buffered: bytes = b""
) -> tuple[bytes, bytes]:
    """Read one frame (section 1) of at most ``limit`` bytes, starting with the bytes already read
    from ``stream`` (``buffered``); returns it and the bytes read after it.

    :raises ProtocolError: when the frame is empty, over ``limit``, or the stream ends inside it.
    """
    data = bytearray(buffered)
    while True:
        if len(data) >= 2:
            size = int.from_bytes(data[:2], "big")
            if not 1 <= size <= limit:
                raise ProtocolError(f"a relay frame of {size} bytes (1 to {limit} are allowed)")
            if len(data) >= 2 + size:
                return bytes(data[2 : 2 + size]), bytes(data[2 + size :])
        try:
            data += await stream.receive(CHUNK)
        except anyio.EndOfStream:
            raise ProtocolError("the connection ended inside a relay frame") from None


class PrefixedStream(anyio.abc.ByteStream):
    """A byte stream whose first bytes were already read (``first``): it gives them again, then
    reads on. Everything else, attributes included, is the wrapped stream's."""

    def __init__(self, stream: anyio.abc.ByteStream, first: bytes) -> None:
        self._stream = stream
        self._first = first

    async def receive(self, max_bytes: int = CHUNK) -> bytes:
        """Bytes from the peer (see :meth:`anyio.abc.ByteReceiveStream.receive`)."""
        if self._first:
            data, self._first = self._first[:max_bytes], self._first[max_bytes:]
            return data
        return await self._stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        """Send bytes to the peer (see :meth:`anyio.abc.ByteSendStream.send`)."""
        await self._stream.send(item)

    def send_ready(self) -> bool:
        """Whether :meth:`send_nowait` would take bytes now."""
        ready: Callable[[], bool] | None = getattr(self._stream, "send_ready", None)
        return ready is not None and ready()

    def send_nowait(self, item: bytes) -> None:
        """Hand bytes to the connection now (only when :meth:`send_ready`).

        :raises anyio.WouldBlock: when it cannot take them now.
        """
        send: Callable[[bytes], None] | None = getattr(self._stream, "send_nowait", None)
        if send is None:
            raise anyio.WouldBlock
        send(item)

    async def send_eof(self) -> None:
        """Close the sending direction."""
        await self._stream.send_eof()

    async def aclose(self) -> None:
        """Close the connection."""
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The wrapped stream's attributes."""
        return self._stream.extra_attributes


class RelayedStream(PrefixedStream):
    """A byte stream to a peer through a relay: the relay's connection, from the point where the
    circuit's bytes begin (``first``: bytes already read from it). It has no remote address (the
    peer's is unknown); :attr:`RelayAttribute.relay` gives the relay's."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        first: bytes,
        relay: tuple[str, int],
        seen: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(stream, first)
        self._relay = relay
        self._seen = seen

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The relay's address, and this side's local address when the connection has one."""
        attributes: dict[Any, Callable[[], Any]] = {RelayAttribute.relay: lambda: self._relay}
        if self._seen is not None:
            attributes[RelayAttribute.seen] = lambda: self._seen
        inner: Mapping[Any, Callable[[], Any]] = self._stream.extra_attributes
        if SocketAttribute.local_address in inner:
            attributes[SocketAttribute.local_address] = inner[SocketAttribute.local_address]
        return attributes


async def dial_relayed(
    network: Transport, host: str, port: int, target: bytes, *, local_host: str = ""
) -> RelayedStream:
    """Connect to the relay at ``host:port`` and ask it for a circuit to ``target`` (a peer id).

    :raises PeerUnreachable: when the relay cannot be reached, refuses (the reason is in the
        message), or breaks the connection.
    """
    where = f"the relay at {host}:{port}"
    stream = await network.connect(host, port, local_host=local_host)
    try:
        try:
            await stream.send(wire.encode_connect(target))
            frame, rest = await read_frame(stream)
            seen = wire.decode_reply(frame)
        except RelayRefused as exc:
            raise PeerUnreachable(f"{where} refused the circuit: {exc.text}") from None
        except (ProtocolError, *BROKEN, anyio.ClosedResourceError) as exc:
            raise PeerUnreachable(f"{where} broke the circuit: {exc}") from exc
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise
    return RelayedStream(stream, rest, (host, port), seen)


async def take_circuit(
    network: Transport, host: str, port: int, token: bytes, *, local_host: str = ""
) -> RelayedStream:
    """Connect to the relay at ``host:port`` and take the circuit it announced with ``token``; the
    stream then carries the dialler's handshake (this side responds).

    :raises PeerUnreachable: when the relay cannot be reached.
    """
    stream = await network.connect(host, port, local_host=local_host)
    try:
        await stream.send(wire.encode_accept(token))
    except (*BROKEN, anyio.ClosedResourceError) as exc:
        await anyio.aclose_forcefully(stream)
        raise PeerUnreachable(f"the relay at {host}:{port} broke the connection: {exc}") from exc
    return RelayedStream(stream, b"", (host, port))


#: Tells a reserved peer of a circuit (sends the ``circuit`` notice with the token).
Announce = Callable[[bytes], Awaitable[None]]


@dataclass(slots=True, eq=False)
class _Waiting:
    arrived: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    stream: anyio.abc.ByteStream | None = None


@dataclass(slots=True)
class RelayStats:
    """What a relay did."""

    #: Circuits that carried bytes.
    circuits: int = 0
    #: Requests refused (no reservation, limits, malformed, no answer).
    refused: int = 0
    #: Bytes copied through circuits, both directions.
    carried: int = 0


class RelayService:
    """Serves as a relay: keeps reservations (:meth:`reserve`) and runs circuits (:meth:`serve`),
    within ``policy``. ``allowed(peer id)`` says who may reserve when the relay is not open."""

    def __init__(self, policy: RelayPolicy | None = None, *, allowed: Callable[[bytes], bool]) -> None:
        self.book = RelayBook(policy or RelayPolicy())
        self._allowed = allowed
        self._waiting: dict[bytes, _Waiting] = {}
        #: Counts of what it did.
        self.stats = RelayStats()

    def reserve(self, peer: bytes, announce: Announce, source: str = "") -> int:
        """Grant or renew ``peer``'s reservation (circuits are announced with ``announce``), asked
        for from ``source``; returns its lifetime in seconds.

        :raises RelayRefused: when the peer may not reserve or the relay is full.
        """
        now = anyio.current_time()
        return self.book.reserve(peer, announce, now, allowed=self._allowed(peer), source=source)

    def release(self, peer: bytes, announce: Announce | None = None) -> None:
        """End ``peer``'s reservation (the one made with ``announce``, when given)."""
        self.book.release(peer, announce)

    async def serve(self, stream: anyio.abc.ByteStream, rest: bytes, source: str) -> None:
        """Serve one connection that sent the relay preamble (``rest``: bytes read after it), from
        ``source``; returns when it is done (the caller closes ``stream``)."""
        remote = stream.extra(anyio.abc.SocketAttribute.remote_address, None)
        seen = (str(remote[0]), int(remote[1])) if isinstance(remote, tuple) else None
        try:
            with anyio.fail_after(REQUEST_TIMEOUT):
                frame, rest = await read_frame(stream, buffered=rest)
            request = wire.decode_request(frame)
        except (TimeoutError, ProtocolError, *BROKEN, anyio.ClosedResourceError) as exc:
            self.stats.refused += 1
            log.info("relay: dropped a connection from %s: %s", source, exc or "no request in time")
            return
        stream = PrefixedStream(stream, rest)
        if isinstance(request, wire.Accept):
            await self._accepted(stream, request.token)
        else:
            await self._connect(stream, request.to, source, seen)

    async def _accepted(self, stream: anyio.abc.ByteStream, token: bytes) -> None:
        waiting = self._waiting.get(token)
        if waiting is None or self.book.accept(token) is None:
            self.stats.refused += 1
            return
        waiting.stream = stream
        waiting.arrived.set()
        await waiting.done.wait()  # the dialler's task copies; this one keeps the stream open

    async def _connect(
        self, stream: anyio.abc.ByteStream, target: bytes, source: str, seen: tuple[str, int] | None
    ) -> None:
        try:
            opened = self.book.open(target, source, anyio.current_time())
        except RelayRefused as exc:
            self.stats.refused += 1
            with anyio.move_on_after(1):
                await _send_quietly(stream, wire.encode_error(exc.code, exc.text))
            return
        for evicted in opened.evicted:
            log.info("relay: a circuit of the busiest source gives its place to one from %s", source)
            if evicted.handle is not None:
                evicted.handle.cancel()
        circuit, announce = opened.circuit, opened.handle
        waiting = self._waiting[circuit.token] = _Waiting()
        circuit.handle = anyio.CancelScope()  # cancelled when another circuit takes its place
        try:
            with circuit.handle:
                with anyio.move_on_after(wire.ACCEPT_TIMEOUT):
                    try:
                        await announce(circuit.token)
                    except Exception as exc:  # the reserved peer's channel broke
                        log.info("relay: could not announce a circuit: %s", exc)
                    else:
                        await waiting.arrived.wait()
                if waiting.stream is None:
                    self.stats.refused += 1
                    with anyio.move_on_after(1):
                        await _send_quietly(
                            stream, wire.encode_error(wire.NO_ANSWER, "the peer did not take the circuit")
                        )
                    return
                if not await _send_quietly(stream, wire.encode_ok(seen)):
                    return
                self.stats.circuits += 1
                await self._splice(stream, waiting.stream, circuit)
        finally:
            waiting.done.set()
            self._waiting.pop(circuit.token, None)
            self.book.close(circuit)

    async def _splice(self, a: anyio.abc.ByteStream, b: anyio.abc.ByteStream, circuit: wire.Circuit) -> None:
        # Copy both ways until both ends are done, or the circuit's bytes or time run out.
        async def copy(
            source: anyio.abc.ByteStream, sink: anyio.abc.ByteStream, scope: anyio.CancelScope
        ) -> None:
            try:
                while True:
                    data = await source.receive(CHUNK)
                    self.stats.carried += len(data)
                    if self.book.carry(circuit, len(data), anyio.current_time()) < 0:
                        log.info("relay: a circuit reached its limit of bytes or time")
                        scope.cancel()
                        return
                    await sink.send(data)
            except anyio.EndOfStream:
                with anyio.move_on_after(1):
                    await _eof_quietly(sink)
            except (*BROKEN, anyio.ClosedResourceError):
                scope.cancel()  # one side broke: the circuit ends

        with anyio.move_on_after(self.book.policy.max_duration) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(copy, a, b, scope)
                tg.start_soon(copy, b, a, scope)


async def _send_quietly(stream: anyio.abc.ByteStream, data: bytes) -> bool:
    try:
        await stream.send(data)
    except (*BROKEN, anyio.ClosedResourceError):
        return False
    return True


async def _eof_quietly(stream: anyio.abc.ByteStream) -> None:
    try:
        await stream.send_eof()
    except (*BROKEN, anyio.ClosedResourceError):
        pass
