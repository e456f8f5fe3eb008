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

    It never holds more than one incomplete frame beyond what it was last fed. Fed with a
    ``limit``, it hands out at most that many frames and keeps the others of that input, undecoded,
    until they are asked for (:attr:`waiting`).
    """

    __slots__ = ("_buffer", "_rest")

    def __init__(self) -> None:
        self._buffer = bytearray()
        # Input that holds frames not handed out yet (a limit was reached), and where they start.
        self._rest: tuple[bytes, int] | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)

    @property
    def waiting(self) -> bool:
        """Whether frames fed earlier wait to be handed out (``feed(b"", limit)`` takes them)."""
        return self._rest is not None

    def feed(self, data: bytes, limit: int | None = None) -> list[bytes | memoryview]:
        """Add ``data``; return the frames it completes, in order: every one, or at most ``limit``
        (the others wait, see :attr:`waiting`, and come first from the next call).

        Frames that lie whole inside the input come back as read-only views of it, without a
        copy; a frame that spans several calls comes back as a read-only view of the buffer it was
        gathered in, which nothing else uses. Only the incomplete frame at the end is kept back.

        :raises ProtocolError: on a zero-length frame (the decoder is then unusable).
        """
        frames: list[bytes | memoryview] = []
        buf = self._buffer
        pos = 0
        if self._rest is not None:
            held, start = self._rest
            self._rest = None
            if data:  # (new input before the waiting frames were taken: it follows them)
                data = held[start:] + bytes(data)
            else:
                data, pos = held, start
        elif type(data) is not bytes:
            data = bytes(data)  # views must not see later changes to a mutable buffer
        view = memoryview(data)
        end = len(view)
        if buf:
            # Finish the frame left over from earlier input first (none is while frames wait).
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
            if limit is not None and len(frames) >= limit:
                self._rest = (data, pos)
                return frames
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

    def leftover_text(self, *, whole_line: bool = False) -> str | None:
        """The first line of the bytes of the unfinished frame when they read as text (what a web
        server or an SSH server sends, which its first two letters make a frame length of): for
        an error message that says what answered. None when they do not (or there are none), and
        with ``whole_line`` when no line end has come yet.
        """
        head, *ended = bytes(self._buffer[:200]).split(b"\n", 1)
        head = head.rstrip(b"\r")
        if len(head) < 4 or not all(0x20 <= byte < 0x7F or byte == 0x09 for byte in head):
            return None
        if whole_line and not ended:
            return None
        return head[:80].decode("ascii")

    def check_eof(self) -> None:
        """Call when the stream ends, once no frames wait (see :attr:`waiting`).

        :raises ProtocolError: when the stream ended inside a frame.
        :raises RuntimeError: when frames fed earlier wait to be taken.
        """
        if self._rest is not None:
            raise RuntimeError("frames fed earlier wait to be taken: take them first (feed(b''))")
        if self._buffer:
            raise ProtocolError(f"the stream ended inside a frame ({len(self._buffer)} bytes left over)")
