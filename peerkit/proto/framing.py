"""Length-prefixed frames (docs/protocol.md section 1), sans-IO.

Each frame is a 2-byte big-endian length ``n`` and ``n`` bytes, ``1 <= n <= 65535``.
"""

from __future__ import annotations

from typing import Final

from peerkit.errors import ProtocolError

__all__ = ("MAX_FRAME", "FrameDecoder", "encode_frame")

#: The largest frame payload.
MAX_FRAME: Final = 65535


def encode_frame(payload: bytes) -> bytes:
    """The frame that carries ``payload``.

    :raises ValueError: when ``payload`` is empty or longer than 65535 bytes.
    """
    n = len(payload)
    if not 1 <= n <= MAX_FRAME:
        raise ValueError(f"frame payload is {n} bytes; a frame holds 1 to {MAX_FRAME} bytes")
    return n.to_bytes(2, "big") + payload


class FrameDecoder:
    """Cuts a byte stream into frames. Feed bytes in any chunking; take whole frames out.

    It never holds more than one incomplete frame beyond what it was last fed.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | memoryview]:
        """Add ``data``; return every frame it completes, in order.

        Frames that lie whole inside ``data`` come back as read-only views of it, without a copy;
        a frame that spans several calls comes back as a read-only view of the buffer it was
        gathered in, which nothing else uses. Only the incomplete frame at the end is kept back.

        :raises ProtocolError: on a zero-length frame (the decoder is then unusable).
        """
        frames: list[bytes | memoryview] = []
        buf = self._buffer
        if type(data) is not bytes:
            data = bytes(data)  # views must not see later changes to a mutable buffer
        view = memoryview(data)
        pos = 0
        end = len(view)
        if buf:
            # Finish the frame left over from earlier input first.
            if len(buf) < 2:
                pos = min(2 - len(buf), end)
                buf += view[:pos]
                if len(buf) < 2:
                    return frames
            n = (buf[0] << 8) | buf[1]
            if n == 0:
                raise ProtocolError("received a zero-length frame")
            take = min(2 + n - len(buf), end - pos)
            buf += view[pos : pos + take]
            pos += take
            if len(buf) < 2 + n:
                return frames
            # The finished frame keeps the buffer it was gathered in (no second copy of up to 64
            # KiB); the next incomplete frame gathers in a new one.
            frames.append(memoryview(buf).toreadonly()[2:])
            buf = self._buffer = bytearray()
        while end - pos >= 2:
            n = (view[pos] << 8) | view[pos + 1]
            if n == 0:
                raise ProtocolError("received a zero-length frame")
            if end - pos - 2 < n:
                break
            frames.append(view[pos + 2 : pos + 2 + n])
            pos += 2 + n
        if pos < end:
            buf += view[pos:]
        return frames

    def check_eof(self) -> None:
        """Call when the stream ends.

        :raises ProtocolError: when the stream ended inside a frame.
        """
        if self._buffer:
            raise ProtocolError(f"the stream ended inside a frame ({len(self._buffer)} bytes left over)")
