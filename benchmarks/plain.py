"""The references of the node benchmarks: the same requests, the same framing, no crypto.

A plain server reads frames (2-byte big-endian length, then a CBOR map, as peerkit's frames before
encryption) and answers each ``invite`` with an ``invite_reply`` carrying the same ``rid``. A plain
client multiplexes requests by ``rid`` over one TCP connection, as a control channel does.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import anyio
import anyio.abc

from peerkit.proto import messages

__all__ = ("PlainClient", "plain_server")

_LENGTH = struct.Struct(">H")


class _Frames:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, message: dict[str, Any]) -> None:
        body = messages.encode_message(message)
        await self.stream.send(_LENGTH.pack(len(body)) + body)

    async def receive(self) -> dict[str, Any]:
        while True:
            if len(self.buffer) >= 2:
                (n,) = _LENGTH.unpack_from(self.buffer)
                if len(self.buffer) >= 2 + n:
                    body = bytes(self.buffer[2 : 2 + n])
                    del self.buffer[: 2 + n]
                    return messages.decode_message(body)
            self.buffer += await self.stream.receive(262144)


async def _answer(stream: anyio.abc.SocketStream) -> None:
    frames = _Frames(stream)
    async with stream, anyio.create_task_group() as tg:
        try:
            while True:
                request = await frames.receive()
                tg.start_soon(frames.send, {"t": "invite_reply", "rid": request["rid"], "r": "accepted"})
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass


async def plain_server(*, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve plain requests on 127.0.0.1 until cancelled; reports the port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        await listener.serve(_answer)


class PlainClient:
    """Requests over one plain TCP connection, matched to replies by ``rid``."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self._frames = _Frames(stream)
        self._rids = itertools.count(1)
        self._waiting: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._lock = anyio.Lock()

    @classmethod
    async def connect(cls, port: int) -> PlainClient:
        return cls(await anyio.connect_tcp("127.0.0.1", port))

    async def run(self) -> None:
        """Read replies until the connection ends."""
        try:
            while True:
                reply = await self._frames.receive()
                event, slot = self._waiting.pop(reply["rid"])
                slot.append(reply)
                event.set()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        rid = next(self._rids)
        event, slot = anyio.Event(), list[dict[str, Any]]()
        self._waiting[rid] = (event, slot)
        async with self._lock:
            await self._frames.send({**message, "rid": rid})
        await event.wait()
        return slot[0]

    async def one_shot(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and read its reply without a reader task (a cold round trip)."""
        await self._frames.send({**message, "rid": 1})
        reply: dict[str, Any] = await self._frames.receive()
        return reply

    async def aclose(self) -> None:
        await self._frames.stream.aclose()
