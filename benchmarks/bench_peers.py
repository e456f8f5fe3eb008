"""``peers``: peerkit beside the library people would use instead, each in a process of its own.

py-libp2p 0.8.1 (in a venv of its own, see benchmarks/peers.py) and peerkit each run two peers in
one process, in turns, round by round:

- connect: a new connection and its Noise XX handshake to a peer (peerkit: ``connect`` to a
  ``listen``-er; py-libp2p: ``host.connect``, which also negotiates yamux), p50 of 20;
- stream: one stream's MB/s with 64 KiB writes to a sink that acknowledges the last byte
  (peerkit: an application stream between two nodes; py-libp2p: a yamux stream);
- publish to all, N = 10 and 100: one publisher and N subscribers in one process, each
  subscriber connected to the publisher; a sample is the time from publishing until every
  subscriber has it (peerkit: ``set_presence`` to N subscribed contacts, as the ``fanout``
  benchmark; py-libp2p: gossipsub with mesh degree N, so that it too pushes to each directly);
- mDNS discovery: from a peer starting to announce itself, in one network namespace, until
  another peer in a second namespace on the same bridge has found it (peerkit: ``sign_in``
  to the ADDED event, as the ``discovery`` benchmark; py-libp2p: a host started with its mDNS
  discovery until its peer-discovered event on the other side). Needs root.

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

from benchmarks.harness import Progress, Result, Skipped, median, percentile, ratio
from benchmarks.peers import LIBP2P, python_of
from peerkit.testing import NamespaceLan

NAME = "peers"
ROUNDS = 5
PUBLISH_ROUNDS = 2
PUBLISH_SIZES = (10, 100)
MDNS_ROUNDS = 8
STEPS = 2 * ROUNDS + PUBLISH_ROUNDS * len(PUBLISH_SIZES) + MDNS_ROUNDS
CONNECTS = 20
#: Samples of publish-to-all in each process.
PUBLISHES = 15
STREAM_BYTES = 32 * 1024 * 1024
PIECE = 65536
AGENT = Path(__file__).with_name("libp2p_agent.py")
FIGURES = (
    "connect + Noise XX handshake to a new peer, p50",
    "one stream, 64 KiB writes",
    "publish until all subscribers have it, N = 10 and 100",
    "mDNS: a peer starts announcing -> found on another host, p50",
)
MDNS_AGENT = Path(__file__).with_name("libp2p_mdns_agent.py")


def _agent(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[-3:])} failed: {done.stderr.strip()[-2000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def run(progress: Progress, *, quick: bool = False) -> list[Result | Skipped]:
    python, why = python_of(LIBP2P, install=not quick)
    if python is None:
        return [Skipped(NAME, figure, LIBP2P.name, why) for figure in FIGURES]
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
        *_connect_and_stream(ours, theirs),
        *_publish(python, mine, quick, progress),
        _mdns(python, 2 if quick else MDNS_ROUNDS, progress),
    ]


def _mdns(python: Path, rounds: int, progress: Progress) -> Result | Skipped:
    from benchmarks.bench_discovery import AGENT as PEERKIT_AGENT
    from benchmarks.bench_discovery import Agent

    reason = NamespaceLan.available()
    if reason is not None:
        return Skipped(NAME, FIGURES[3], LIBP2P.name, f"this figure makes network namespaces, but {reason}")
    times: dict[str, list[float]] = {"peerkit": [], "libp2p": []}
    with NamespaceLan(base=234) as lan:
        bridge = lan.bridge()
        (ns_pub, (address,)), (ns_obs, _) = lan.host(bridge), lan.host(bridge)
        agents = {
            "peerkit": (
                Agent(ns_obs, sys.executable, PEERKIT_AGENT, "observer"),
                Agent(ns_pub, sys.executable, PEERKIT_AGENT, "publisher"),
            ),
            "libp2p": (
                Agent(ns_obs, str(python), str(MDNS_AGENT), "observer"),
                Agent(ns_pub, str(python), str(MDNS_AGENT), "publisher"),
            ),
        }
        try:
            for index in range(rounds):
                for kind, (observer, publisher) in agents.items():
                    publisher.send(do=kind, name=f"{kind}{index}", address=address)
                    started = json.loads(publisher.read())
                    name = started.get("name", f"{kind}{index}")
                    while (seen := json.loads(observer.read())).get("name") != name:
                        pass
                    times[kind].append(seen["t"] - started["t0"])
                    publisher.send(stop=True)
                progress()
            for _, publisher in agents.values():
                publisher.send(do="quit")
        finally:
            for pair in agents.values():
                for agent in pair:
                    agent.close()
    return Result(
        NAME,
        FIGURES[3] + " (ratio: how many times faster)",
        "ms",
        median(times["peerkit"]) * 1000,
        LIBP2P.name + " mDNS discovery",
        median(times["libp2p"]) * 1000,
        ratio(times["libp2p"], times["peerkit"]),
        None,
    )


def _publish(python: Path, mine: list[str], quick: bool, progress: Progress) -> list[Result]:
    results = []
    for n in PUBLISH_SIZES[:1] if quick else PUBLISH_SIZES:
        ours: list[list[float]] = []
        theirs: list[list[float]] = []
        samples = str(3 if quick else PUBLISHES)
        for _ in range(1 if quick else PUBLISH_ROUNDS):
            ours.append(_agent([*mine, "publish", str(n), samples])["publish_ms"])
            theirs.append(_agent([str(python), str(AGENT), "publish", str(n), samples])["publish_ms"])
            progress()
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            mine_ms = [percentile(sample, q) for sample in ours]
            their_ms = [percentile(sample, q) for sample in theirs]
            results.append(
                Result(
                    NAME,
                    f"N={n}: publish until all {n} subscribers have it, {label}"
                    + " (ratio: how many times faster)",
                    "ms",
                    percentile([t for sample in ours for t in sample], q),
                    LIBP2P.name + f" gossipsub, mesh degree {n}",
                    percentile([t for sample in theirs for t in sample], q),
                    ratio(their_ms, mine_ms),
                    None,
                )
            )
    return results


def _connect_and_stream(ours: dict[str, list[float]], theirs: dict[str, list[float]]) -> list[Result]:
    figures = FIGURES
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


async def _publishes(n: int, samples: int) -> dict[str, Any]:
    from benchmarks.bench_fanout import Counter, subscribed_publisher
    from peerkit.model import Presence, PresenceStatus

    counter = Counter(n)
    times = []
    async with subscribed_publisher(n, counter, lambda: None) as subscribed:
        publisher = subscribed.publisher
        for i in range(samples + 2):
            text = f"sample {i}"
            counter.expect(text)
            await anyio.sleep(0.15)  # (as py-libp2p's side waits between messages)
            start = time.perf_counter()
            await publisher.set_presence(Presence(PresenceStatus.BUSY, text))
            with anyio.fail_after(60):
                await counter.done.wait()
            if i >= 2:  # warm-up rounds are dropped
                times.append(time.perf_counter() - start)
    return {"publish_ms": sorted(t * 1000 for t in times)}


if __name__ == "__main__":
    mode, amount = sys.argv[1], int(sys.argv[2])
    if mode == "publish":
        answer = anyio.run(_publishes, amount, int(sys.argv[3]))
    else:
        answer = anyio.run(_connects if mode == "connect" else _stream, amount)
    print(json.dumps(answer), flush=True)
