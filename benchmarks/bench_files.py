"""``files``: one large file sent with :mod:`peerkit.files` (what ``peerkit send`` does) between
two processes on loopback, beside the application stream between the same two processes. The
file is read from and written to memory (tmpfs, /dev/shm) where there is one: the figure is
peerkit's work, not the disk's.

The file's figure is the whole send: hashing the file, the invitation with the offer, the stream,
the receiver writing and checking every byte and renaming the file; the clock stops at the
receiver's report. The reference pushes the same number of bytes through an application stream
to the same process (64 KiB writes), the clock stopping at the receiver's acknowledgement. The
two take turns; the ratio is the median of the per-round ratios.

A second figure sends a folder of 1,000 files of 1 KiB the same way (files per second, hashing
and offer included), beside a plain copier over an application stream between the same
processes: each file read in a worker thread and sent with its name and size, the receiver
writing each to a file of its own (no hash, no offer, no partial file and rename). It is the
figure of what a transfer costs per file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from benchmarks.files_agent import COPY, MEMORY, SINK, copy_files, send_offer
from benchmarks.harness import Progress, Result, median, push, ratio, write_file
from peerkit.files import prepare
from peerkit.identity import Identity, PeerId
from peerkit.model import EndPoint
from peerkit.node import Node
from peerkit.peers import Peer
from peerkit.wellknown import FILES

NAME = "files"
ROUNDS = 3
STEPS = 4 * ROUNDS
PIECE = 65536
#: The file's size: 1 GiB (64 MiB with --quick).
SIZE = 1 << 30
#: The folder's files (100 with --quick), and each one's size.
SMALL_FILES = 1000
SMALL_SIZE = 1024


async def _send(peer: Peer, path: Path) -> float:
    start = time.perf_counter()
    outgoing = await prepare([path])
    await send_offer(peer, outgoing)
    return outgoing[0].entry.size / (time.perf_counter() - start) / 1e6


async def _send_folder(peer: Peer, folder: Path, count: int) -> float:
    start = time.perf_counter()
    await send_offer(peer, await prepare([folder]))
    return count / (time.perf_counter() - start)


async def _copy_folder(peer: Peer, folder: Path, count: int) -> float:
    start = time.perf_counter()
    paths = await anyio.to_thread.run_sync(lambda: sorted(folder.iterdir()))
    await copy_files(peer, [(path.name, path) for path in paths])
    return count / (time.perf_counter() - start)


def _write_folder(folder: Path, count: int) -> None:
    folder.mkdir()
    for i in range(count):
        (folder / f"note-{i:05}.txt").write_bytes(os.urandom(SMALL_SIZE))


async def _stream(peer: Peer, total: int) -> float:
    async with await peer.open_stream(SINK) as stream:
        await stream.send(total.to_bytes(8, "big"))
        return await push(stream, total, PIECE)


Rates = dict[str, list[float]]


async def _main(rounds: int, size: int, count: int, progress: Progress) -> Rates:
    rates: Rates = {"file": [], "stream": [], "folder": [], "copy": []}
    agent = await anyio.open_process(
        [sys.executable, "-m", "benchmarks.files_agent"], stdin=subprocess.PIPE, stderr=None
    )
    try:
        with tempfile.TemporaryDirectory(prefix="peerkit-bench-send-", dir=MEMORY) as tmp:
            path = Path(tmp) / "large.bin"
            await anyio.to_thread.run_sync(write_file, path, size)
            folder = Path(tmp) / "notes"
            await anyio.to_thread.run_sync(_write_folder, folder, count)
            assert agent.stdout is not None
            info = json.loads((await agent.stdout.receive()).decode())
            async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0)) as node:
                await node.register_application(FILES)
                await node.register_application(SINK)
                await node.register_application(COPY)
                peer = node.peer(PeerId.parse(info["id"]), EndPoint("127.0.0.1", info["port"]))
                await _stream(peer, size // 8)  # warm-up
                await _copy_folder(peer, folder, count)  # warm-up
                for _ in range(rounds):
                    rates["file"].append(await _send(peer, path))
                    progress()
                    rates["stream"].append(await _stream(peer, size))
                    progress()
                    rates["folder"].append(await _send_folder(peer, folder, count))
                    progress()
                    rates["copy"].append(await _copy_folder(peer, folder, count))
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
    return rates


def run(progress: Progress, quick: bool = False) -> list[Result]:
    size = SIZE // 16 if quick else SIZE
    count = SMALL_FILES // 10 if quick else SMALL_FILES
    rates = anyio.run(_main, 2 if quick else ROUNDS, size, count, progress)
    where = "" if MEMORY else " (on disk: no tmpfs)"
    return [
        Result(
            NAME,
            f"a {size >> 20} MiB file sent (hash, offer, stream, write, check), two processes" + where,
            "MB/s",
            median(rates["file"]),
            "application stream, same processes",
            median(rates["stream"]),
            ratio(rates["file"], rates["stream"]),
            0.5,
        ),
        Result(
            NAME,
            f"a folder of {count:,} files of {SMALL_SIZE >> 10} KiB sent, files/s" + where,
            "1/s",
            median(rates["folder"]),
            "plain copier over an application stream (name, size, bytes; no hash)",
            median(rates["copy"]),
            ratio(rates["folder"], rates["copy"]),
            0.5,
        ),
    ]
