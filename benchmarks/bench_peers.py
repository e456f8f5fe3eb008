"""``peers``: peerkit beside the library people would use instead, each in a process of its own.

py-libp2p 0.8.1 (in a venv of its own, see benchmarks/peers.py) and peerkit each run two peers in
one process, in turns, round by round:

- connect: a new connection and its Noise XX handshake to a peer (peerkit: ``connect`` to a
  ``listen``-er; py-libp2p: ``host.connect``, which also negotiates yamux), p50 of 20;
- stream: one stream's MB/s with 64 KiB writes to a sink that acknowledges the last byte
  (peerkit: an application stream between two nodes; py-libp2p: a yamux stream).

The peerkit side runs as ``python -m benchmarks.bench_peers MODE AMOUNT`` and prints JSON, as the
py-libp2p agent (benchmarks/libp2p_agent.py) does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from benchmarks.harness import Progress, Result, Skipped, median, ratio
from benchmarks.peers import LIBP2P, python_of

NAME = "peers"
ROUNDS = 5
STEPS = 2 * ROUNDS
CONNECTS = 20
STREAM_BYTES = 32 * 1024 * 1024
PIECE = 65536
AGENT = Path(__file__).with_name("libp2p_agent.py")


def _agent(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[-3:])} failed: {done.stderr.strip()[-2000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def run(progress: Progress, *, quick: bool = False) -> list[Result | Skipped]:
    python, why = python_of(LIBP2P, install=not quick)
    figures = ("connect + Noise XX handshake to a new peer, p50", "one stream, 64 KiB writes")
    if python is None:
        return [Skipped(NAME, figure, LIBP2P.name, why) for figure in figures]
    rounds, connects, total = (1, 3, 2 * 1024 * 1024) if quick else (ROUNDS, CONNECTS, STREAM_BYTES)
    ours: dict[str, list[float]] = {"connect": [], "stream": []}
    theirs: dict[str, list[float]] = {"connect": [], "stream": []}
    mine = [sys.executable, "-m", "benchmarks.bench_peers"]
    for _ in range(rounds):
        ours["connect"].append(median(_agent([*mine, "connect", str(connects)])["connect_ms"]))
        theirs["connect"].append(
            median(_agent([str(python), str(AGENT), "connect", str(connects)])["connect_ms"])
        )
        progress()
        ours["stream"].append(_agent([*mine, "stream", str(total)])["mb_s"])
        theirs["stream"].append(_agent([str(python), str(AGENT), "stream", str(total)])["mb_s"])
        progress()
    return [
        Result(
            NAME,
            figures[0] + " (ratio: how many times faster)",
            "ms",
            median(ours["connect"]),
            LIBP2P.name + " (tuned: Noise and yamux only, no 250 ms dial head start)",
            median(theirs["connect"]),
            ratio(theirs["connect"], ours["connect"]),
            None,
        ),
        Result(
            NAME,
            figures[1],
            "MB/s",
            median(ours["stream"]),
            LIBP2P.name,
            median(theirs["stream"]),
            ratio(ours["stream"], theirs["stream"]),
            None,
        ),
    ]


# -- peerkit's side, in a process of its own ------------------------------------------------------
async def _connects(count: int) -> dict[str, Any]:
    from peerkit.identity import Identity
    from peerkit.net.channel import SecureChannel, connect, listen

    server, client = Identity.generate(), Identity.generate()
    listener = await listen(server, "127.0.0.1", 0)

    async def hold(channel: SecureChannel) -> None:
        async with channel:
            async for _ in channel:  # until the dialler closes it
                pass

    times = []
    async with listener, anyio.create_task_group() as tg:
        await tg.start(listener.serve, hold)
        host, port = listener.address
        for _ in range(count):
            start = time.perf_counter()
            channel = await connect(host, port, client)  # XX: the id is learned, as libp2p's is
            times.append(time.perf_counter() - start)
            await channel.aclose()
        tg.cancel_scope.cancel()
    return {"connect_ms": sorted(t * 1000 for t in times)}


async def _stream(total: int) -> dict[str, Any]:
    from benchmarks.harness import push
    from peerkit.identity import Identity
    from peerkit.model import Application
    from peerkit.node import Node
    from peerkit.streams import AppStream

    app = Application(id=uuid.UUID("5f1d3b7e-2a44-4c61-9d7b-0e8f6a2b1c02"), description="bench")
    alice = Node(identity=Identity.generate(), listen=("127.0.0.1", 0))
    bob = Node(identity=Identity.generate(), listen=("127.0.0.1", 0))

    async def sink(stream: AppStream) -> None:
        received = 0
        while received < total // PIECE * PIECE:
            received += len(await stream.receive(PIECE))
        await stream.send(b"k")

    async with alice, bob:
        for node in (alice, bob):
            await node.register_application(app)
        bob.add_stream_handler(app, sink)
        async with await alice.peer(bob.id, bob.endpoint).open_stream(app) as stream:
            mb_s = await push(stream, total // PIECE * PIECE, PIECE)
    return {"mb_s": mb_s}


if __name__ == "__main__":
    mode, amount = sys.argv[1], int(sys.argv[2])
    print(json.dumps(anyio.run(_connects if mode == "connect" else _stream, amount)), flush=True)
