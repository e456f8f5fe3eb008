"""``stream``: MB/s through an application stream between two nodes, beside raw anyio TCP.

Both ends run in this process (one core pays for encryption and decryption). Each candidate moves
the same bytes in the same pieces (64 KiB writes), the receiver reads with the same buffer size,
and the clock stops when the receiver has acknowledged the last byte. The candidates take turns,
in a child process that keeps the memory it frees (see ``harness.STEADY_ALLOCATOR``).
"""

from __future__ import annotations

import contextlib
import uuid

import anyio
import anyio.abc

from benchmarks.harness import Progress, Result, median, push, ratio, run_in_steady_child, steady_child_main
from peerkit.identity import Identity
from peerkit.model import Application
from peerkit.node import Node
from peerkit.peers import Peer
from peerkit.streams import AppStream

NAME = "stream"
ROUNDS = 9
STEPS = 2 * ROUNDS
PIECE = 65536
APP = Application(id=uuid.UUID("5f1d3b7e-2a44-4c61-9d7b-0e8f6a2b1c01"), description="bench")


async def _sink(stream: anyio.abc.ByteStream, total: int) -> None:
    received = 0
    while received < total:
        received += len(await stream.receive(PIECE))
    await stream.send(b"k")


async def _ours(peer: Peer, total: int) -> float:
    async with await peer.open_stream(APP) as stream:
        return await push(stream, total, PIECE)


async def _raw(port: int, total: int) -> float:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        return await push(stream, total, PIECE)


async def _main(rounds: int, total: int, progress: Progress) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    raw: list[float] = []
    alice = Node(identity=Identity.generate(), listen=("127.0.0.1", 0))
    bob = Node(identity=Identity.generate(), listen=("127.0.0.1", 0))

    async def sink(stream: AppStream) -> None:
        await _sink(stream, total)
        with contextlib.suppress(anyio.EndOfStream):
            await stream.receive()  # until the sender closes

    async def raw_sink(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await _sink(stream, total)

    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with alice, bob, tcp, anyio.create_task_group() as tg:
        for node in (alice, bob):
            await node.register_application(APP)
        bob.add_stream_handler(APP, sink)
        tg.start_soon(tcp.serve, raw_sink)
        port = tcp.extra(anyio.abc.SocketAttribute.local_port)
        peer = alice.peer(bob.id, bob.endpoint)
        await _ours(peer, total)  # warm-up
        await _raw(port, total)
        for _ in range(rounds):
            ours.append(await _ours(peer, total))
            progress()
            raw.append(await _raw(port, total))
            progress()
        tg.cancel_scope.cancel()
    return ours, raw


def run(progress: Progress, quick: bool = False) -> list[Result]:
    """The ``stream`` figure, measured in a child process (see ``harness.STEADY_ALLOCATOR``)."""
    return run_in_steady_child("benchmarks.bench_stream", progress, quick)


def _measure(progress: Progress, quick: bool) -> list[Result]:
    rounds = 2 if quick else ROUNDS
    total = PIECE * (256 if quick else 2048)
    ours, raw = anyio.run(_main, rounds, total, progress)
    return [
        Result(
            NAME,
            "application stream MB/s, both nodes in one process",
            "MB/s",
            median(ours),
            "raw anyio TCP",
            median(raw),
            ratio(ours, raw),
            0.25,
        )
    ]


if __name__ == "__main__":
    steady_child_main(_measure)
