"""``channel``: MB/s of application data through SecureChannel over loopback TCP, beside raw anyio TCP.

Two peers are two processes: the receiving side runs in a child process (``python -m
benchmarks.bench_channel sink MODE BYTES``), the sending side here, as it would between two peers.
Both candidates move the same payload bytes in pieces of the same size (the largest a peerkit
message can carry), read with the same buffer size, and the clock stops when the receiver has
acknowledged the last byte. The rounds alternate between the two candidates.
"""

from __future__ import annotations

import sys

import anyio
import anyio.abc

from benchmarks.harness import Progress, Result, median, ratio
from peerkit.identity import Identity, PeerId
from peerkit.net.channel import _READ_SIZE as READ_SIZE  # the same reads as SecureChannel
from peerkit.net.channel import SecureChannel, connect, listen

NAME = "channel"
ROUNDS = 7
STEPS = 2 * ROUNDS
PIECE = 65519 - 13  # data bytes in the largest message {"t": "d", "d": ...}


async def _sink(mode: str, total: int) -> None:
    """The receiving peer: print where to connect, take one connection, acknowledge the data."""
    done = anyio.Event()
    if mode == "secure":
        identity = Identity.generate()

        async def on_channel(channel: SecureChannel) -> None:
            received = 0
            while received < total:
                received += len((await channel.receive())["d"])
            await channel.send({"t": "done"})
            done.set()

        async with await listen(identity) as listener, anyio.create_task_group() as tg:
            await tg.start(listener.serve, on_channel)
            print(listener.address[1], identity.id, flush=True)
            await done.wait()
            tg.cancel_scope.cancel()
    else:

        async def on_stream(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                received = 0
                while received < total:
                    received += len(await stream.receive(READ_SIZE))
                await stream.send(b"k")
            done.set()

        async with (
            await anyio.create_tcp_listener(local_host="127.0.0.1") as tcp,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(tcp.serve, on_stream)
            print(tcp.extra(anyio.abc.SocketAttribute.local_port), "-", flush=True)
            await done.wait()
            tg.cancel_scope.cancel()


async def _send(mode: str, total: int, alice: Identity) -> float:
    """Start a sink process, send ``total`` bytes to it, return MB/s."""
    payload = bytes(PIECE)
    command = [sys.executable, "-m", "benchmarks.bench_channel", "sink", mode, str(total)]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            line += await process.stdout.receive(1)
        port_text, id_text = line.decode().split()
        port = int(port_text)
        if mode == "secure":
            async with await connect("127.0.0.1", port, alice, peer_id=PeerId.parse(id_text)) as channel:
                start = anyio.current_time()
                for _ in range(total // PIECE):
                    await channel.send({"t": "d", "d": payload})
                await channel.receive()
                elapsed = anyio.current_time() - start
        else:
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                start = anyio.current_time()
                for _ in range(total // PIECE):
                    await stream.send(payload)
                await stream.receive()
                elapsed = anyio.current_time() - start
        await process.wait()
    return total / elapsed / 1e6


def run(progress: Progress, quick: bool = False) -> list[Result]:
    rounds = 2 if quick else ROUNDS
    total = PIECE * (200 if quick else 1600)
    alice = Identity.generate()

    async def main() -> tuple[list[float], list[float]]:
        ours: list[float] = []
        raw: list[float] = []
        for _ in range(rounds):
            ours.append(await _send("secure", total, alice))
            progress()
            raw.append(await _send("raw", total, alice))
            progress()
        return ours, raw

    ours, raw = anyio.run(main)
    return [
        Result(
            NAME,
            "SecureChannel MB/s",
            "MB/s",
            median(ours),
            "raw anyio TCP",
            median(raw),
            ratio(ours, raw),
            0.25,
        )
    ]


if __name__ == "__main__" and sys.argv[1:2] == ["sink"]:
    anyio.run(_sink, sys.argv[2], int(sys.argv[3]))
