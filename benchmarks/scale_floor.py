"""The reference for the ``scale`` node's idle CPU: the least work the wire protocol asks of a node
answering keepalive pings, written as a bare asyncio protocol (see benchmarks/bench_scale.py).

    python -m benchmarks.scale_floor server N       # answers the pings of N connections
    python -m benchmarks.scale_floor clients N PORT INTERVAL  # N connections, each pinging

Each client connection sends a ping every ``INTERVAL`` seconds, at a phase of its own (peers on
other machines ping independently), framed as peerkit frames it: a 2-byte length, then the CBOR
message ``{"t": "ping", "rid": n}`` sealed with ChaCha20-Poly1305 under a key of the connection's
own and a counter nonce. The server opens the frame, decodes the message, and answers with the
pong peerkit answers with (``{"t": "pong", "rid": n, "seen": [host, port]}``, the same bytes: put
together from a prefix, the rid and the connection's own "seen" entry), sealed the same way, in
one write. It keeps one OpenSSL cipher context for each direction of each connection. No
handshake, no tasks, no checks beyond the tag: a floor, not a node.

Both speak JSON lines like benchmarks/scale_agent.py: the server prints its port, then answers
``{"do": "idle", "seconds": s}`` with its CPU share over ``s`` seconds; the clients print
``{"connected": N}`` once every connection is open.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import struct
import sys
import time
from typing import Any

import cbor2
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from benchmarks.scale_agent import emit, more_descriptors

_nonce = struct.Struct("<4xQ").pack
#: The start of {"t": "pong", "rid": rid, "seen": [host, port]} as canonical CBOR: the map's head,
#: "t" and its value, and the key "rid".
_PONG = cbor2.dumps({"t": "pong", "rid": 0, "seen": 0}, canonical=True)[:-7]


def _keys(i: int) -> tuple[bytes, bytes]:
    # The keys of connection i: clients-to-server, server-to-clients (the server learns i from
    # the first 4 bytes the connection sends, before its frames).
    seed = i.to_bytes(4, "big")
    return hashlib.sha256(b"ping" + seed).digest(), hashlib.sha256(b"pong" + seed).digest()


class _Sealed:
    # One direction of one connection: its cipher and its next nonce.
    __slots__ = ("aead", "n")

    def __init__(self, key: bytes) -> None:
        self.aead = ChaCha20Poly1305(key)
        self.n = 0

    def seal(self, plaintext: bytes) -> bytes:
        sealed = self.aead.encrypt(_nonce(self.n), plaintext, b"")
        self.n += 1
        return len(sealed).to_bytes(2, "big") + sealed

    def open(self, sealed: bytes) -> bytes:
        plaintext = self.aead.decrypt(_nonce(self.n), sealed, b"")
        self.n += 1
        return plaintext


class _Answering(asyncio.Protocol):
    # The server's side of one connection: the first 4 bytes name the connection (its keys), then
    # frames follow.
    def __init__(self) -> None:
        self.buffer = b""
        self.receiving: _Sealed | None = None
        self.sending: _Sealed | None = None
        self.transport: asyncio.Transport | None = None
        self.seen = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # The pong's "seen" entry, encoded once: the pong is put together from bytes.
        self.seen = cbor2.dumps("seen") + cbor2.dumps(list(transport.get_extra_info("peername")[:2]))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if self.receiving is None:
            if len(buffer) < 4:
                self.buffer = buffer
                return
            inward, outward = _keys(int.from_bytes(buffer[:4], "big"))
            self.receiving, self.sending = _Sealed(inward), _Sealed(outward)
            buffer = buffer[4:]
        while len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + size:
                break
            ping: dict[str, Any] = cbor2.loads(self.receiving.open(buffer[2 : 2 + size]))
            buffer = buffer[2 + size :]
            if ping.get("t") == "ping":
                assert self.transport is not None
                assert self.sending is not None
                pong = _PONG + cbor2.dumps(ping["rid"]) + self.seen
                self.transport.write(self.sending.seal(pong))
        self.buffer = buffer


class _Pinging(asyncio.Protocol):
    # A client connection: it only reads the pongs (and checks them).
    def __init__(self, receiving: _Sealed) -> None:
        self.receiving = receiving
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + size:
                break
            message = cbor2.loads(self.receiving.open(buffer[2 : 2 + size]))
            assert message["t"] == "pong", message
            buffer = buffer[2 + size :]
        self.buffer = buffer


async def _commands() -> Any:
    # The JSON commands on stdin, one per line (read in a thread: stdin is a pipe).
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        yield json.loads(line)


async def server() -> None:
    more_descriptors()
    loop = asyncio.get_running_loop()
    listening = await loop.create_server(_Answering, "127.0.0.1", 0, backlog=4096)
    emit(port=listening.sockets[0].getsockname()[1])
    async for command in _commands():
        if command["do"] != "idle":
            break
        cpu = time.process_time()
        await asyncio.sleep(command["seconds"])
        emit(cpu=(time.process_time() - cpu) / command["seconds"])
    listening.close()
    await listening.wait_closed()


async def clients(n: int, port: int, interval: float) -> None:
    more_descriptors()
    loop = asyncio.get_running_loop()
    phases = random.Random(n)

    async def pinging(transport: asyncio.Transport, sending: _Sealed) -> None:
        await asyncio.sleep(phases.uniform(0, interval))
        rid = 0
        while True:
            rid += 1
            transport.write(sending.seal(cbor2.dumps({"t": "ping", "rid": rid}, canonical=True)))
            await asyncio.sleep(interval)

    tasks = []
    for i in range(n):
        ping, pong = _keys(i)
        reading = functools.partial(_Pinging, _Sealed(pong))
        transport, _ = await loop.create_connection(reading, "127.0.0.1", port)
        transport.write(i.to_bytes(4, "big"))
        tasks.append(asyncio.create_task(pinging(transport, _Sealed(ping))))
    emit(connected=n)
    async for _command in _commands():
        break
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(server())
    else:
        asyncio.run(clients(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
