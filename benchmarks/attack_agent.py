"""The two processes of ``python -m benchmarks attacks`` besides the benchmark's own.

``target``: a node on 127.0.0.1 that accepts every invitation to the benchmark's application at
once, except those whose message is ``"hold"``, which it leaves unanswered (as a person leaves
junk); prints ``{"port": PORT, "id": ID}`` and runs until its stdin closes.

``attack MODE PORT ID``: one attack on that node, until its stdin closes; prints ``{"ready": true}``
once it is under way. Modes:

- ``stalled1`` / ``stalled50``: 1,000 connections that send one byte and then nothing, from
  127.0.0.2 alone or from 127.0.0.2-127.0.0.51 (20 each); each one the node closes is opened again.
- ``flood``: a recorded XX message 1 (preamble and all) sent on new connections as fast as this
  process can, from 127.0.0.2, each connection closed at once (every one costs the node a
  Diffie-Hellman, if it admits it).
- ``replay HEX``: the recorded IK message 1 HEX (the legitimate peer's) sent 100 times, from
  127.0.0.2.
- ``cbor``: an authenticated peer (a fresh key each time it is disconnected) sending 65,000-element
  CBOR arrays as fast as it can.
- ``requests``: 32 authenticated peers at one address (127.0.0.2), each a fresh key, each asking
  ``get`` as fast as the node answers (64 requests in flight), and coming back with a new key when
  the node disconnects it.
- ``held``: invitations the node leaves unanswered, from 4 addresses (127.0.0.11-127.0.0.14), 3
  ids each, each id keeping 32 waiting (as many as one peer may): 384, every place the node has
  for strangers' invitations; one refused or displaced is sent again at once.

Every connection goes to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import selectors
import socket
import sys
import time
import uuid

import anyio
import cbor2

from peerkit import Application, Identity, Invitation, InvitationResponse, Node, PeerId, PeerkitError
from peerkit.model import EndPoint
from peerkit.net.channel import SecureChannel
from peerkit.net.transport import TcpTransport
from peerkit.testing.memory import memory_stream_pair

APP = Application(id=uuid.UUID("6f1c2a4e-0000-4000-8000-00000000a77a"), description="attacked")
HOST = "127.0.0.1"


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def stdin_closed() -> bool:
    """Whether the benchmark closed this process's stdin (its way of saying stop)."""
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready) and not os.read(sys.stdin.fileno(), 1)


async def target() -> None:
    async with Node(nickname="target", identity=Identity.generate(), listen=(HOST, 0)) as node:
        await node.register_application(APP)

        @node.on_invitation(APP)
        async def accept(invitation: Invitation) -> InvitationResponse:
            if invitation.message == "hold":
                await anyio.sleep_forever()  # until it expires, or another's takes its place
            return InvitationResponse.ACCEPTED

        emit(port=node.endpoint.port, id=str(node.id))
        await anyio.to_thread.run_sync(sys.stdin.read)


async def record_message_1(identity: Identity, peer_id: PeerId | None) -> bytes:
    """What an initiator sends first (preamble and message 1), recorded on an in-memory stream."""
    ours, theirs = memory_stream_pair()
    sent = b""
    async with anyio.create_task_group() as tg:

        async def initiate() -> None:
            with contextlib.suppress(Exception):
                await SecureChannel.wrap(
                    ours, identity, initiator=True, expected_peer=peer_id, handshake_timeout=5
                )

        tg.start_soon(initiate)
        with anyio.move_on_after(0.3):
            while True:
                sent += await theirs.receive()
        tg.cancel_scope.cancel()
    await ours.aclose()
    await theirs.aclose()
    return sent


def stalled(port: int, sources: list[str], total: int) -> None:
    selector = selectors.DefaultSelector()
    each = total // len(sources)

    def open_one(source: str) -> None:
        try:
            sock = socket.create_connection((HOST, port), source_address=(source, 0), timeout=1)
            sock.setblocking(False)
            sock.send(b"\0")
        except OSError:
            return
        selector.register(sock, selectors.EVENT_READ, source)

    for source in sources:
        for _ in range(each):
            open_one(source)
    emit(ready=True)
    while not stdin_closed():
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            with contextlib.suppress(OSError):
                if sock.recv(4096):
                    continue  # the node's answer: still open
            selector.unregister(sock)
            sock.close()
            open_one(key.data)  # closed by the node: opened again
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]


def send_recorded(port: int, message: bytes, count: int | None) -> None:
    sent = 0
    emit(ready=True)
    while (count is None or sent < count) and not stdin_closed():
        for _ in range(50):
            with (
                contextlib.suppress(OSError),
                socket.create_connection((HOST, port), source_address=("127.0.0.2", 0), timeout=1) as sock,
            ):
                sock.sendall(message)
            sent += 1
            if count is not None and sent >= count:
                break
    while not stdin_closed():
        time.sleep(0.05)


async def authenticated(port: int) -> SecureChannel | None:
    """A channel to the node from 127.0.0.2 with a new key, or None (after a short wait) when the
    node refused it."""
    try:
        stream = await anyio.connect_tcp(HOST, port, local_host="127.0.0.2")
        return await SecureChannel.wrap(stream, Identity.generate(), initiator=True, handshake_timeout=5)
    except (OSError, PeerkitError):
        await anyio.sleep(0.05)
        return None


async def huge_cbor(port: int) -> None:
    frame = cbor2.dumps({"t": "get", "rid": 1, "what": [0] * 65000})  # 65,000 items in 65 KB
    emit(ready=True)
    while not stdin_closed():
        channel = await authenticated(port)
        if channel is None:
            continue
        async with channel:
            with contextlib.suppress(Exception):
                while not stdin_closed():
                    await channel.send_encoded(frame)


async def _replies(channel: SecureChannel, window: anyio.Semaphore, done: anyio.CancelScope) -> None:
    # Each reply frees a place in the window; the channel's end ends its peer's flood.
    with contextlib.suppress(Exception):
        while True:
            if (await channel.receive()).get("t") != "ping":
                window.release()
    done.cancel()


async def request_flood(port: int, peers: int = 32) -> None:
    async def one() -> None:
        while True:
            channel = await authenticated(port)
            if channel is None:
                continue
            window = anyio.Semaphore(64)
            async with channel, anyio.create_task_group() as tg:
                tg.start_soon(_replies, channel, window, tg.cancel_scope)
                with contextlib.suppress(Exception):
                    for rid in itertools.count(1):
                        await window.acquire()
                        await channel.send({"t": "get", "rid": rid, "what": "presence"})
                tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for _ in range(peers):
            tg.start_soon(one)
        emit(ready=True)
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes it
        tg.cancel_scope.cancel()


class FromHost(TcpTransport):
    """TCP whose connections are made from ``host`` (a node's own transport leaves that to the
    system, which dials loopback from 127.0.0.1)."""

    def __init__(self, host: str) -> None:
        self.host = host

    async def connect(self, host: str, port: int, *, local_host: str) -> anyio.abc.ByteStream:
        return await anyio.connect_tcp(host, port, local_host=self.host)


async def held_invitations(port: int, addresses: int = 4, ids: int = 3, each: int = 32) -> None:
    async def keep_one(node: Node, peer_id: PeerId) -> None:
        while True:
            with contextlib.suppress(PeerkitError):
                await node.peer(peer_id, EndPoint(HOST, port)).invite(APP, "hold", timeout=300)
            await anyio.sleep(0.01)  # refused or displaced: again

    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for a in range(addresses):
            for _ in range(ids):
                host = f"127.0.0.{11 + a}"
                node = Node(
                    nickname="m", identity=Identity.generate(), listen=(host, 0), network=FromHost(host)
                )
                nodes.append(await stack.enter_async_context(node))
        for node in nodes:
            await node.register_application(APP)
        hello = await nodes[0].peer_at(HOST, port)
        async with anyio.create_task_group() as tg:
            for node in nodes:
                for _ in range(each):
                    tg.start_soon(keep_one, node, hello.id)
            emit(ready=True)
            await anyio.to_thread.run_sync(sys.stdin.read)  # until the benchmark closes it
            tg.cancel_scope.cancel()


def main() -> None:
    if sys.argv[1] == "target":
        anyio.run(target)
        return
    mode, port = sys.argv[2], int(sys.argv[3])
    if mode == "stalled1":
        stalled(port, ["127.0.0.2"], 1000)
    elif mode == "stalled50":
        stalled(port, [f"127.0.0.{i}" for i in range(2, 52)], 1000)
    elif mode == "flood":
        send_recorded(port, anyio.run(record_message_1, Identity.generate(), None), None)
    elif mode == "replay":
        send_recorded(port, bytes.fromhex(sys.argv[4]), 100)
    elif mode == "cbor":
        anyio.run(huge_cbor, port)
    elif mode == "requests":
        anyio.run(request_flood, port)
    elif mode == "held":
        anyio.run(held_invitations, port)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
