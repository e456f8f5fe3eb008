"""``relay``: a stream through a relay beside the same stream direct, in the same run.

Three nodes on loopback: a relay, bob (who keeps a reservation on it), and alice. Alice opens
application streams to bob both ways in turns: to bob's own endpoint (direct) and through the
relay (the relay copies the ciphertext between two TCP connections). The relay runs in a process
of its own, as it would on another machine; alice and bob share this one, so both figures pay for
encrypting and decrypting on one core. Figures:

- MB/s of one stream (64 KiB writes, the clock stops when bob acknowledged the last byte); the
  issue's goal is relayed >= 0.5x direct.
- time to the first byte: a new stream (connect, handshake, stream request) and one echoed byte,
  relayed against direct (ratio = direct / relayed).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid

import anyio
import anyio.abc

from benchmarks.harness import Progress, Result, median, push, ratio
from peerkit.identity import Identity, PeerId
from peerkit.model import Application, EndPoint
from peerkit.node import Node
from peerkit.peers import Peer
from peerkit.streams import AppStream

NAME = "relay"
ROUNDS = 7
FIRST_BYTES = 20
STEPS = 2 * ROUNDS + 2 * FIRST_BYTES
PIECE = 65536
APP = Application(id=uuid.UUID("5f1d3b7e-2a44-4c61-9d7b-0e8f6a2b1c02"), description="bench relay")

RELAY_PROGRAM = """
import anyio, json, sys
from peerkit import Identity, Node, RelayPolicy
async def main():
    relay = RelayPolicy(open=True)
    async with Node(identity=Identity.generate(), listen=("127.0.0.1", 0), relay=relay) as node:
        print(json.dumps({"id": str(node.id), "port": node.endpoint.port}), flush=True)
        await anyio.wrap_file(sys.stdin).read()
anyio.run(main)
"""


async def _throughput(peer: Peer, total: int) -> float:
    async with await peer.open_stream(APP) as stream:
        await stream.send(b"t")
        return await push(stream, total, PIECE)


async def _first_byte(peer: Peer) -> float:
    start = time.perf_counter()
    async with await peer.open_stream(APP) as stream:
        await stream.send(b"f")
        await stream.receive()
        return (time.perf_counter() - start) * 1000


async def _main(rounds: int, samples: int, total: int, progress: Progress) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"direct": [], "relayed": [], "direct_ms": [], "relayed_ms": []}
    relay = await anyio.open_process([sys.executable, "-c", RELAY_PROGRAM], stdin=subprocess.PIPE)
    try:
        assert relay.stdout is not None
        info = json.loads((await relay.stdout.receive()).decode())
        through = EndPoint("127.0.0.1", info["port"], relay=PeerId.parse(info["id"]))
        alice = Node(identity=Identity.generate(), listen=("127.0.0.1", 0))
        bob = Node(identity=Identity.generate(), listen=("127.0.0.1", 0), relays=[through])

        async def sink(stream: AppStream) -> None:
            kind = await stream.receive(1)
            if kind == b"f":
                await stream.send(b"!")
            else:
                received = 0
                while received < total:
                    received += len(await stream.receive(PIECE))
                await stream.send(b"k")
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await stream.receive()  # until the sender closes

        async with alice, bob:
            for node in (alice, bob):
                await node.register_application(APP)
            bob.add_stream_handler(APP, sink)
            for _ in range(500):  # the reservation is held within a few milliseconds
                if bob.reach().reservations:
                    break
                await anyio.sleep(0.02)
            else:
                raise RuntimeError("bob got no reservation on the relay within 10 s")
            direct = alice.peer(bob.id, bob.endpoint)
            relayed = alice.peer(bob.id, through)
            for peer in (direct, relayed):  # warm-up
                await _throughput(peer, total)
            for _ in range(rounds):
                results["direct"].append(await _throughput(direct, total))
                progress()
                results["relayed"].append(await _throughput(relayed, total))
                progress()
            for _ in range(samples):
                results["direct_ms"].append(await _first_byte(direct))
                progress()
                results["relayed_ms"].append(await _first_byte(relayed))
                progress()
    finally:
        if relay.stdin is not None:
            await relay.stdin.aclose()
        with anyio.move_on_after(5):
            await relay.wait()
        if relay.returncode is None:
            relay.kill()
            await relay.wait()
        await relay.aclose()
    return results


def run(progress: Progress, quick: bool = False) -> list[Result]:
    rounds = 2 if quick else ROUNDS
    samples = 3 if quick else FIRST_BYTES
    total = PIECE * (128 if quick else 1024)
    got = anyio.run(_main, rounds, samples, total, progress)
    return [
        Result(
            NAME,
            "stream MB/s through a relay (its own process) vs the same stream direct",
            "MB/s",
            median(got["relayed"]),
            "the stream direct",
            median(got["direct"]),
            ratio(got["relayed"], got["direct"]),
            0.5,
        ),
        Result(
            NAME,
            "time to the first byte of a new stream through a relay, ms (ratio = direct / relayed)",
            "ms",
            median(got["relayed_ms"]),
            "the same, direct",
            median(got["direct_ms"]),
            ratio(got["direct_ms"], got["relayed_ms"]),
            None,
        ),
    ]
