"""Application streams: an encrypted, authenticated byte stream between two instances of an
application (an anyio ``ByteStream`` over its own :class:`~peerkit.SecureChannel`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
import anyio.abc

from peerkit.errors import PeerUnreachable, ProtocolError
from peerkit.model import Application, check_max_bytes, quoted
from peerkit.net.channel import PeerInfo, SecureChannel
from peerkit.proto import messages
from peerkit.proto.connection import MAX_PLAINTEXT

__all__ = ("STREAM_CHUNK", "AppStream")


#: Bytes of application data carried by one stream message (fits one frame with its CBOR header).
STREAM_CHUNK: Final = MAX_PLAINTEXT - 32
#: Stream messages sent in one write at most (about 256 KiB).
_BATCH: Final = 4
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
        #: The address and port of the relay the stream runs through; None when it is direct.
        self.relay: tuple[str, int] | None = channel.relay
        self._buffer = b""
        self._offset = 0
        self._eof_sent = False
        self._eof_received = False
        self._closed = anyio.Event()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The transport's attributes (addresses), as anyio streams give them."""
        return self._channel.extra_attributes

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send bytes (any bytes-like object); waits while the peer has not read enough (backpressure).

        :raises anyio.ClosedResourceError: after :meth:`send_eof` or :meth:`aclose`.
        :raises anyio.BrokenResourceError: when the connection broke.
        :raises TypeError: when ``item`` is not bytes-like (a ``str``: encode it first).
        """
        if self._eof_sent or self._closed.is_set():
            raise anyio.ClosedResourceError
        try:
            view = memoryview(item).cast("B")
        except TypeError:
            raise TypeError(f"a stream sends bytes (bytes-like), not {type(item).__name__}") from None
        try:
            # {"t": "data", "d": <piece>} in CBOR for each piece, with the piece copied once, into
            # its frame; up to _BATCH of them in one write (a 64 KiB write is one full message
            # and a small one: written apart, the small one went in a TCP segment of its own).
            step = _BATCH * STREAM_CHUNK
            for batch in range(0, len(view), step):
                stop = min(len(view), batch + step)
                pieces = [view[start : start + STREAM_CHUNK] for start in range(batch, stop, STREAM_CHUNK)]
                await self._channel.send_many([[_DATA_HEAD, _bytes_head(len(p)), p] for p in pieces])
        except PeerUnreachable as exc:
            raise anyio.BrokenResourceError(str(exc)) from exc

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Up to ``max_bytes`` bytes from the peer.

        :raises anyio.EndOfStream: after the peer's end of data.
        :raises anyio.BrokenResourceError: when the connection broke or the peer broke the protocol.
        :raises anyio.ClosedResourceError: after :meth:`aclose`.
        :raises TypeError: when ``max_bytes`` is not an integer.
        :raises ValueError: when ``max_bytes`` is less than 1 (nothing is read).
        """
        check_max_bytes(max_bytes)
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
                raise anyio.BrokenResourceError(str(exc)) from exc
            kind = message["t"]
            if kind == "data" and isinstance(message.get("d"), bytes):
                self._buffer, self._offset = message["d"], 0
            elif kind == "eof":
                self._eof_received = True
            else:
                await self._channel.aclose()
                raise anyio.BrokenResourceError(
                    f"the peer sent a {quoted(kind)} message inside an application stream"
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
            raise anyio.BrokenResourceError(str(exc)) from exc

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
