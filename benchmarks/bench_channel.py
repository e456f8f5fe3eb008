"""``channel``: MB/s of application data through SecureChannel over loopback TCP, beside raw anyio TCP.

SecureChannel is measured with each Noise cipher it runs where they differ: ChaChaPoly (every
peer's, and every control channel's) and the cipher two nodes on this machine pick for an
application stream (AESGCM where the CPU has AES instructions: :func:`peerkit.net.channel.
choose_cipher`). The figure with the issue's goal (0.6x raw TCP, one process per peer) is the
picked cipher's.

Two peers are two processes: for the figure with the target, the receiving side runs in a child
process (``python -m benchmarks.bench_channel sink MODE BYTES``) and the sending side here, as
between two peers. A second figure runs both ends in this process and event loop, where one core
pays for both encryption and decryption. Both candidates move the same payload bytes in pieces of
the same size (the largest a peerkit message can carry), read with the same buffer size, and the
clock stops when the receiver has acknowledged the last byte. The candidates take turns round by
round. The family runs in a child process that keeps the memory it frees (see
``harness.STEADY_ALLOCATOR``: otherwise the heap's layout decided whether either candidate ran at
full speed or half).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from benchmarks.harness import (
    Progress,
    Result,
    first_line,
    median,
    ratio,
    run_in_steady_child,
    steady_child_main,
)
from peerkit.identity import Identity, PeerId
from peerkit.net.channel import _READ_SIZE as READ_SIZE  # the same reads as SecureChannel
from peerkit.net.channel import SecureChannel, connect, listen, wanted_ciphers

NAME = "channel"
ROUNDS = 10
PIECE = 65519 - 13  # data bytes in the largest message {"t": "d", "d": ...}
Setup = Callable[[str, int, Identity], Awaitable[float]]
#: The cipher an application stream between two nodes here runs (what both would ask for).
PICKED = next(iter(wanted_ciphers()), "ChaChaPoly")
#: SecureChannel's candidates (mode "secure:CIPHER"), by cipher.
CIPHERS = tuple(dict.fromkeys(("ChaChaPoly", PICKED)))
#: Progress steps: both setups, each round every candidate.
STEPS = 2 * ROUNDS * (len(CIPHERS) + 1)
#: The goal for the picked cipher, one process per peer (the issue's), and the floor of the others.
GOAL = 0.6
FLOOR = 0.25


async def _serve(
    mode: str, total: int, *, task_status: anyio.abc.TaskStatus[tuple[int, str]] = anyio.TASK_STATUS_IGNORED
) -> None:
    """The receiving peer: report where to connect, take one connection, acknowledge the data."""
    done = anyio.Event()
    if mode.startswith("secure"):
        identity = Identity.generate()

        async def on_channel(channel: SecureChannel) -> None:
            received = 0
            while received < total:
                received += len((await channel.receive())["d"])
            await channel.send({"t": "done"})
            done.set()

        async with await listen(identity) as listener, anyio.create_task_group() as tg:
            await tg.start(listener.serve, on_channel)
            task_status.started((listener.address[1], str(identity.id)))
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

        tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with tcp, anyio.create_task_group() as tg:
            tg.start_soon(tcp.serve, on_stream)
            task_status.started((tcp.extra(anyio.abc.SocketAttribute.local_port), "-"))
            await done.wait()
            tg.cancel_scope.cancel()


async def _sink(mode: str, total: int) -> None:
    """The child process: serve, printing the port and peer id on one line."""
    async with anyio.create_task_group() as tg:
        port, peer_id = await tg.start(_serve, mode, total)
        print(port, peer_id, flush=True)


async def _push(mode: str, port: int, peer_id: str, total: int, alice: Identity) -> float:
    """Send ``total`` bytes to the sink at ``port``; return MB/s."""
    payload = bytes(PIECE)
    if mode.startswith("secure:"):
        cipher = mode.partition(":")[2]
        peer = PeerId.parse(peer_id)
        async with await connect("127.0.0.1", port, alice, peer_id=peer, cipher=cipher) as channel:
            assert channel.cipher == cipher
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
    return total / elapsed / 1e6


async def _two_processes(mode: str, total: int, alice: Identity) -> float:
    command = [sys.executable, "-m", "benchmarks.bench_channel", "sink", mode, str(total)]
    async with await anyio.open_process(command) as process:
        assert process.stdout is not None
        port, peer_id = (await first_line(process.stdout)).split()
        rate = await _push(mode, int(port), peer_id, total, alice)
        await process.wait()
    return rate


async def _one_process(mode: str, total: int, alice: Identity) -> float:
    async with anyio.create_task_group() as tg:
        port, peer_id = await tg.start(_serve, mode, total)
        rate = await _push(mode, port, peer_id, total, alice)
    return rate


def run(progress: Progress, quick: bool = False) -> list[Result]:
    """The ``channel`` figures, measured in a child process (see ``harness.STEADY_ALLOCATOR``)."""
    return run_in_steady_child("benchmarks.bench_channel", progress, quick)


def _measure(progress: Progress, quick: bool) -> list[Result]:
    rounds = 2 if quick else ROUNDS
    total = PIECE * (200 if quick else 1600)
    alice = Identity.generate()
    results = []
    for setup, figure, goal in (
        (_two_processes, "SecureChannel MB/s, one process per peer", GOAL),
        (_one_process, "SecureChannel MB/s, both peers in one process", FLOOR),
    ):

        async def main(setup: Setup = setup) -> dict[str, list[float]]:
            # The candidates take turns in each round: every cipher, then raw TCP.
            taken: dict[str, list[float]] = {}
            for _ in range(rounds):
                for mode in (*(f"secure:{cipher}" for cipher in CIPHERS), "raw"):
                    taken.setdefault(mode, []).append(await setup(mode, total, alice))
                    progress()
            return taken

        taken = anyio.run(main)
        raw = taken["raw"]
        for cipher in CIPHERS:
            ours = taken[f"secure:{cipher}"]
            picked = " (two nodes here pick it for streams)" if cipher == PICKED and len(CIPHERS) > 1 else ""
            results.append(
                Result(
                    NAME,
                    f"{figure}, {cipher}{picked}",
                    "MB/s",
                    median(ours),
                    "raw anyio TCP",
                    median(raw),
                    ratio(ours, raw),
                    goal if cipher == PICKED else FLOOR,
                )
            )
    return results


if __name__ == "__main__" and sys.argv[1:2] == ["sink"]:
    anyio.run(_sink, sys.argv[2], int(sys.argv[3]))
elif __name__ == "__main__":
    steady_child_main(_measure)
