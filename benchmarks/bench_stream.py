"""``stream``: MB/s through an application stream between two nodes, beside raw anyio TCP.

Two figures: the receiving node in a process of its own (``python -m benchmarks.bench_stream sink
BYTES``, as between two peers: each side has a core; the issue's goal, 0.6x raw TCP, is this one's),
and both nodes in this process (one core pays for encryption and decryption). Each candidate moves
the same bytes in the same pieces (64 KiB writes), the receiver reads with the same buffer size,
and the clock stops when the receiver has acknowledged the last byte. A warm-up stream comes first
(ChaChaPoly: no control channel told the sender the receiver's ciphers; its hello does); the
measured streams run the cipher two nodes here pick (AESGCM where the CPU has AES instructions),
checked and named in the figure. The candidates take turns,
in a child process that keeps the memory it frees (see ``harness.STEADY_ALLOCATOR``; the sink
process inherits it).
"""

from __future__ import annotations

import contextlib
import sys
import uuid

import anyio
import anyio.abc

from benchmarks.harness import (
    Progress,
    Result,
    first_line,
    median,
    push,
    ratio,
    run_in_steady_child,
    steady_child_main,
)
from peerkit.identity import Identity, PeerId
from peerkit.model import Application, EndPoint
from peerkit.net.channel import wanted_ciphers
from peerkit.node import Node
from peerkit.peers import Peer
from peerkit.streams import AppStream

NAME = "stream"
ROUNDS = 9
#: Progress steps: each round, both candidates in each setup.
STEPS = 4 * ROUNDS
PIECE = 65536
#: The cipher the measured streams run (what two nodes here pick).
PICKED = next(iter(wanted_ciphers()), "ChaChaPoly")
APP = Application(id=uuid.UUID("5f1d3b7e-2a44-4c61-9d7b-0e8f6a2b1c01"), description="bench")


async def _sink(stream: anyio.abc.ByteStream, total: int) -> None:
    received = 0
    while received < total:
        received += len(await stream.receive(PIECE))
    await stream.send(b"k")


async def _ours(peer: Peer, total: int, cipher: str | None = None) -> float:
    async with await peer.open_stream(APP) as stream:
        if cipher is not None and f"_{cipher}_" not in stream.protocol:
            raise AssertionError(f"the stream runs {stream.protocol}, not {cipher}")
        return await push(stream, total, PIECE)


async def _raw(port: int, total: int) -> float:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        return await push(stream, total, PIECE)


async def _serve(
    total: int, *, task_status: anyio.abc.TaskStatus[tuple[PeerId, int, int]] = anyio.TASK_STATUS_IGNORED
) -> None:
    """The receiving side of both candidates: a node whose stream handler reads ``total`` bytes per
    stream and acknowledges them, and a TCP listener that does the same per connection; reports the
    node's id, its port and the listener's port, then serves until cancelled."""
    bob = Node(identity=Identity.generate(), listen=("127.0.0.1", 0))

    async def sink(stream: AppStream) -> None:
        await _sink(stream, total)
        with contextlib.suppress(anyio.EndOfStream):
            await stream.receive()  # until the sender closes

    async def raw_sink(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await _sink(stream, total)

    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with bob, tcp, anyio.create_task_group() as tg:
        await bob.register_application(APP)
        bob.add_stream_handler(APP, sink)
        tg.start_soon(tcp.serve, raw_sink)
        task_status.started((bob.id, bob.endpoint.port, tcp.extra(anyio.abc.SocketAttribute.local_port)))
        await anyio.sleep_forever()


async def _sink_process(total: int) -> None:
    """The child process: serve, print the node's id and the two ports on one line, and stop when
    the parent closes standard input."""
    async with anyio.create_task_group() as tg:
        peer_id, port, raw_port = await tg.start(_serve, total)
        print(peer_id, port, raw_port, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.buffer.read)
        tg.cancel_scope.cancel()


async def _rounds(
    rounds: int, total: int, progress: Progress, peer_id: PeerId, port: int, raw_port: int
) -> tuple[list[float], list[float]]:
    # A warm-up of each, then the candidates in turn.
    ours: list[float] = []
    raw: list[float] = []
    async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as alice:
        await alice.register_application(APP)
        peer = alice.peer(peer_id, EndPoint("127.0.0.1", port))
        await _ours(peer, total)
        await _raw(raw_port, total)
        for _ in range(rounds):
            ours.append(await _ours(peer, total, PICKED))
            progress()
            raw.append(await _raw(raw_port, total))
            progress()
    return ours, raw


async def _one_process(rounds: int, total: int, progress: Progress) -> tuple[list[float], list[float]]:
    async with anyio.create_task_group() as tg:
        peer_id, port, raw_port = await tg.start(_serve, total)
        taken = await _rounds(rounds, total, progress, peer_id, port, raw_port)
        tg.cancel_scope.cancel()
    return taken


async def _two_processes(rounds: int, total: int, progress: Progress) -> tuple[list[float], list[float]]:
    command = [sys.executable, "-m", "benchmarks.bench_stream", "sink", str(total)]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        peer_id, port, raw_port = (await first_line(process.stdout)).split()
        try:
            return await _rounds(rounds, total, progress, PeerId.parse(peer_id), int(port), int(raw_port))
        finally:
            await process.stdin.aclose()
            await process.wait()


def run(progress: Progress, quick: bool = False) -> list[Result]:
    """The ``stream`` figure, measured in a child process (see ``harness.STEADY_ALLOCATOR``)."""
    return run_in_steady_child("benchmarks.bench_stream", progress, quick)


def _measure(progress: Progress, quick: bool) -> list[Result]:
    rounds = 2 if quick else ROUNDS
    total = PIECE * (256 if quick else 2048)
    results = []
    for setup, figure, goal in (
        (_two_processes, f"application stream MB/s, one process per node, {PICKED}", 0.6),
        (_one_process, f"application stream MB/s, both nodes in one process, {PICKED}", 0.25),
    ):
        ours, raw = anyio.run(setup, rounds, total, progress)
        results.append(
            Result(NAME, figure, "MB/s", median(ours), "raw anyio TCP", median(raw), ratio(ours, raw), goal)
        )
    return results


if __name__ == "__main__" and sys.argv[1:2] == ["sink"]:
    anyio.run(_sink_process, int(sys.argv[2]))
elif __name__ == "__main__":
    steady_child_main(_measure)
