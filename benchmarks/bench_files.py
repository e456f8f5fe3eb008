"""``files``: one large file sent with :mod:`peerkit.files` (what ``peerkit send`` does) between
two processes on loopback, beside the application stream between the same two processes. The
file is read from and written to memory (tmpfs, /dev/shm) where there is one: the figure is
peerkit's work, not the disk's.

The file's figure is the whole send: hashing the file, the invitation with the offer, the stream,
the receiver writing and checking every byte and renaming the file; the clock stops at the
receiver's report. The reference pushes the same number of bytes through an application stream
to the same process (64 KiB writes), the clock stopping at the receiver's acknowledgement. The
two take turns; the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from benchmarks.files_agent import MEMORY, SINK, send_offer
from benchmarks.harness import Progress, Result, median, push, ratio, write_file
from peerkit.files import prepare
from peerkit.identity import Identity, PeerId
from peerkit.model import EndPoint
from peerkit.node import Node
from peerkit.peers import Peer
from peerkit.wellknown import FILES

NAME = "files"
ROUNDS = 3
STEPS = 2 * ROUNDS
PIECE = 65536
#: The file's size: 1 GiB (64 MiB with --quick).
SIZE = 1 << 30


async def _send(peer: Peer, path: Path) -> float:
    start = time.perf_counter()
    outgoing = await prepare([path])
    await send_offer(peer, outgoing)
    return outgoing[0].entry.size / (time.perf_counter() - start) / 1e6


async def _stream(peer: Peer, total: int) -> float:
    async with await peer.open_stream(SINK) as stream:
        await stream.send(total.to_bytes(8, "big"))
        return await push(stream, total, PIECE)


async def _main(rounds: int, size: int, progress: Progress) -> tuple[list[float], list[float]]:
    files: list[float] = []
    streams: list[float] = []
    agent = await anyio.open_process(
        [sys.executable, "-m", "benchmarks.files_agent"], stdin=subprocess.PIPE, stderr=None
    )
    try:
        with tempfile.TemporaryDirectory(prefix="peerkit-bench-send-", dir=MEMORY) as tmp:
            path = Path(tmp) / "large.bin"
            await anyio.to_thread.run_sync(write_file, path, size)
            assert agent.stdout is not None
            info = json.loads((await agent.stdout.receive()).decode())
            async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as node:
                await node.register_application(FILES)
                await node.register_application(SINK)
                peer = node.peer(PeerId.parse(info["id"]), EndPoint("127.0.0.1", info["port"]))
                await _stream(peer, size // 8)  # warm-up
                for _ in range(rounds):
                    files.append(await _send(peer, path))
                    progress()
                    streams.append(await _stream(peer, size))
                    progress()
    finally:
        if agent.stdin is not None:
            await agent.stdin.aclose()
        with anyio.move_on_after(10):
            await agent.wait()
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        await agent.aclose()
    return files, streams


def run(progress: Progress, quick: bool = False) -> list[Result]:
    size = SIZE // 16 if quick else SIZE
    files, streams = anyio.run(_main, 2 if quick else ROUNDS, size, progress)
    return [
        Result(
            NAME,
            f"a {size >> 20} MiB file sent (hash, offer, stream, write, check), two processes"
            + ("" if MEMORY else " (on disk: no tmpfs)"),
            "MB/s",
            median(files),
            "application stream, same processes",
            median(streams),
            ratio(files, streams),
            0.5,
        )
    ]
