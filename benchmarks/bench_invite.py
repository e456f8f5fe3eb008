"""``invite_cold`` and ``invite_warm``: invitations between two nodes on loopback TCP.

- cold: the time of a whole first invitation (TCP connect, IK handshake, invite, reply), the channel
  closed after each one, beside a plain TCP connect plus one request and reply of the same CBOR
  messages with the same framing and no crypto. p50 and p99 over interleaved samples.
- warm: invitations per second over an open channel, one at a time and 100 at once, beside the
  same requests over one plain TCP connection multiplexed by ``rid`` in the same way.

Both nodes (and both plain ends) run in this process: one core pays for both sides of each.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

import anyio

from benchmarks.harness import Progress, Result, median, percentile, ratio
from benchmarks.plain import PlainClient, plain_server
from peerkit.identity import Identity
from peerkit.invitations import Invitation
from peerkit.model import Application, InvitationResponse
from peerkit.node import Node
from peerkit.proto.admission import AdmissionPolicy, RequestPolicy

COLD_SAMPLES = 400
WARM_ROUNDS = 7
APP = Application(id=uuid.UUID("5f1d3b7e-2a44-4c61-9d7b-0e8f6a2b1c00"), description="bench")
REQUEST = {"t": "invite", "app": APP.id.bytes, "msg": "join?", "data": b"", "ttl": 30}


async def _accept(invitation: Invitation) -> InvitationResponse:
    return InvitationResponse.ACCEPTED


@contextlib.asynccontextmanager
async def _setup() -> AsyncIterator[tuple[Node, Node, int]]:
    """alice and bob (bob accepts every invitation), and the port of a plain server."""
    alice = Node(nickname="alice", identity=Identity.generate(), listen=("127.0.0.1", 0))
    # One peer here asks far faster than the default budget (1,000 requests a second) lets any
    # peer ask, and dials faster than bob's listener lets one source start handshakes (50 a
    # second): the figures are the node's throughput and latency, so both limits are lifted.
    bob = Node(
        nickname="bob",
        identity=Identity.generate(),
        listen=("127.0.0.1", 0),
        request_budget=RequestPolicy(rate=10.0**7, burst=10**7),
        admission=AdmissionPolicy(rate=10.0**7, burst=10**7),
    )
    async with alice, bob, anyio.create_task_group() as tg:
        for node in (alice, bob):
            await node.register_application(APP)
        bob.add_invitation_handler(APP, _accept)
        yield alice, bob, await tg.start(plain_server)
        tg.cancel_scope.cancel()


async def _cold(samples: int, progress: Progress) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    plain: list[float] = []
    async with _setup() as (alice, bob, port):
        peer = alice.peer(bob.id, bob.endpoint)
        for i in range(samples + 10):
            start = time.perf_counter()
            if await peer.invite(APP, "join?", timeout=30) is not InvitationResponse.ACCEPTED:
                raise AssertionError("the invitation was not accepted")
            took = time.perf_counter() - start
            await alice.disconnect(bob.id)
            start = time.perf_counter()
            client = await PlainClient.connect(port)
            if (await client.one_shot(REQUEST))["r"] != "accepted":
                raise AssertionError("the plain server did not answer")
            plain_took = time.perf_counter() - start
            await client.aclose()
            if i >= 10:  # warm-up samples are dropped
                ours.append(took)
                plain.append(plain_took)
            if i % 20 == 0:
                progress()
    return ours, plain


async def _rate(call: Callable[[], Awaitable[object]], concurrency: int, seconds: float) -> float:
    """Calls per second of ``call`` made by ``concurrency`` tasks for about ``seconds``."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await call()
            count += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return count / (time.perf_counter() - start)


async def _warm(
    concurrency: int, rounds: int, seconds: float, progress: Progress
) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    plain: list[float] = []
    async with _setup() as (alice, bob, port), anyio.create_task_group() as tg:
        peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port, bob.id)
        client = await PlainClient.connect(port)
        tg.start_soon(client.run)

        def invite() -> Awaitable[object]:
            return peer.invite(APP, "join?", timeout=30)

        def request() -> Awaitable[object]:
            return client.request(REQUEST)

        await _rate(invite, concurrency, 0.2)  # warm-up
        await _rate(request, concurrency, 0.2)
        for _ in range(rounds):
            ours.append(await _rate(invite, concurrency, seconds))
            plain.append(await _rate(request, concurrency, seconds))
            progress()
        await client.aclose()
    return ours, plain


def run_cold(progress: Progress, quick: bool = False) -> list[Result]:
    """The ``invite_cold`` figures."""
    samples = 40 if quick else COLD_SAMPLES
    ours, plain = anyio.run(_cold, samples, progress)
    results = []
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        mine, theirs = percentile(ours, q) * 1000, percentile(plain, q) * 1000
        results.append(
            Result(
                "invite_cold",
                f"cold invitation {label} ms (connect + IK + invite + reply; ratio = plain / peerkit)",
                "ms",
                mine,
                "plain TCP connect + one request/reply",
                theirs,
                theirs / mine,
                round(1 / 3, 3) if label == "p50" else None,  # p50 at most 3x the plain round trip
            )
        )
    per_sample = statistics.median(p / o for o, p in zip(ours, plain, strict=True))
    results.append(
        Result(
            "invite_cold",
            "cold invitation, median of per-sample ratios (plain / peerkit)",
            "ms",
            median(ours) * 1000,
            "plain TCP connect + one request/reply",
            median(plain) * 1000,
            per_sample,
            None,
        )
    )
    return results


def run_warm(progress: Progress, quick: bool = False) -> list[Result]:
    """The ``invite_warm`` figures."""
    results = []
    rounds, seconds = (2, 0.2) if quick else (WARM_ROUNDS, 1.0)
    for concurrency in (1, 100):
        ours_rate, plain_rate = anyio.run(_warm, concurrency, rounds, seconds, progress)
        results.append(
            Result(
                "invite_warm",
                f"invitations/s on an open channel, {concurrency} at a time",
                "/s",
                median(ours_rate),
                "plain requests over one TCP connection",
                median(plain_rate),
                ratio(ours_rate, plain_rate),
                0.5,
            )
        )
    return results


class Benchmark(NamedTuple):
    NAME: str
    STEPS: int
    run: Callable[[Progress, bool], list[Result]]


COLD = Benchmark("invite_cold", COLD_SAMPLES // 20 + 1, run_cold)
WARM = Benchmark("invite_warm", 2 * WARM_ROUNDS, run_warm)
