"""``attacks``: a legitimate peer's invitations while a node is under attack, beside the same
without attack (same run).

The node is a process of its own (benchmarks/attack_agent.py ``target``) on 127.0.0.1; each attack
is another process (``attack MODE``) from 127.0.0.2 and up; the legitimate peer is a node in this
process that invites the target over a new connection each time (dial, IK handshake, invitation,
disconnect), as a peer that was not connected would. For each attack: the invitations' p50 and
p99, how many succeeded (timeout 5 s), and the target's RSS and CPU meanwhile. The figures without
attack are measured before and after the attacks (both kept; the reference is their median).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import anyio

from benchmarks.harness import Progress, Result, median, percentile
from peerkit import Identity, InvitationResponse, Node, PeerId, PeerkitError
from peerkit.model import EndPoint

AGENT = str(Path(__file__).with_name("attack_agent.py"))
ATTACKS = ("stalled1", "stalled50", "flood", "replay", "cbor", "requests", "held")
LABELS = {
    "stalled1": "1,000 stalled connections from 1 address",
    "stalled50": "1,000 stalled connections from 50 addresses",
    "flood": "XX message 1 flood",
    "replay": "a recorded IK message 1 replayed 100 times",
    "cbor": "65,000-item CBOR arrays from an authenticated peer",
    "requests": "requests as fast as answered from 32 ids at one address",
    "held": "384 invitations left unanswered from 4 addresses",
}
SAMPLES = 50


class Phase(NamedTuple):
    latencies: list[float]  # seconds, of the invitations that succeeded
    succeeded: int
    rss_mib: float
    cpu_percent: float


def _agent(*args: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    process = subprocess.Popen(
        [sys.executable, AGENT, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise RuntimeError(f"the attack agent {' '.join(args)} exited")
    return process, json.loads(line)


def _stop(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _invitations(alice: Node, target: PeerId, endpoint: EndPoint, samples: int, pid: int) -> Phase:
    from benchmarks.attack_agent import APP

    latencies: list[float] = []
    succeeded = 0
    cpu_before, wall_before = _cpu_seconds(pid), time.perf_counter()
    rss = 0.0
    for _ in range(samples):
        peer = alice.peer(target, endpoint)
        start = time.perf_counter()
        try:
            answer = await peer.invite(APP, "join?", timeout=5)
        except PeerkitError:
            answer = None
        took = time.perf_counter() - start
        if answer is InvitationResponse.ACCEPTED:
            succeeded += 1
            latencies.append(took)
        await alice.disconnect(target)
        rss = max(rss, _rss_mib(pid))
    cpu = (_cpu_seconds(pid) - cpu_before) / (time.perf_counter() - wall_before) * 100
    return Phase(latencies, succeeded, rss, cpu)


async def _measure(
    samples: int, progress: Progress, settle: float = 3.5
) -> tuple[list[Phase], dict[str, Phase]]:
    from benchmarks.attack_agent import APP, record_message_1

    target, hello = await anyio.to_thread.run_sync(_agent, "target")
    port, target_id = int(hello["port"]), PeerId.parse(hello["id"])
    endpoint = EndPoint("127.0.0.1", port)
    quiet: list[Phase] = []
    attacked: dict[str, Phase] = {}
    try:
        async with Node(nickname="alice", identity=Identity.generate(), listen=("127.0.0.1", 0)) as alice:
            await alice.register_application(APP)
            await _invitations(alice, target_id, endpoint, 5, target.pid)  # warm-up
            quiet.append(await _invitations(alice, target_id, endpoint, samples, target.pid))
            progress()
            for mode in ATTACKS:
                extra = []
                if mode == "replay":
                    extra = [(await record_message_1(alice.identity, target_id)).hex()]
                attacker, _ = await anyio.to_thread.run_sync(_agent, "attack", mode, str(port), *extra)
                try:
                    await anyio.sleep(min(settle, 1))  # under way
                    attacked[mode] = await _invitations(alice, target_id, endpoint, samples, target.pid)
                finally:
                    await anyio.to_thread.run_sync(_stop, attacker)
                progress()
                await anyio.sleep(settle)  # what the attack left behind times out
            quiet.append(await _invitations(alice, target_id, endpoint, samples, target.pid))
            progress()
    finally:
        await anyio.to_thread.run_sync(_stop, target)
    return quiet, attacked


def run(progress: Progress, quick: bool = False) -> list[Result]:
    """The ``attacks`` figures."""
    samples = 10 if quick else SAMPLES
    # (a quick run is a smoke test: the attacks' leftovers are given less time to go)
    quiet, attacked = anyio.run(_measure, samples, progress, 0.5 if quick else 3.5)
    base_p50 = median([percentile(q.latencies, 0.5) * 1000 for q in quiet])
    base_p99 = median([percentile(q.latencies, 0.99) * 1000 for q in quiet])
    base_ok = median([float(q.succeeded) for q in quiet])
    base_rss = median([q.rss_mib for q in quiet])
    base_cpu = median([q.cpu_percent for q in quiet])
    results = []
    for mode, phase in attacked.items():
        label = LABELS[mode]
        p50 = percentile(phase.latencies, 0.5) * 1000 if phase.latencies else 5000.0
        p99 = percentile(phase.latencies, 0.99) * 1000 if phase.latencies else 5000.0
        rows = [
            (f"invitation p50 during {label}", "ms", p50, base_p50, base_p50 / p50),
            (f"invitation p99 during {label}", "ms", p99, base_p99, base_p99 / p99),
            (
                f"invitations accepted of {samples} during {label}",
                "",
                phase.succeeded,
                base_ok,
                phase.succeeded / base_ok,
            ),
            (f"node RSS during {label}", "MiB", phase.rss_mib, base_rss, base_rss / phase.rss_mib),
            (
                f"node CPU during {label}",
                "%",
                phase.cpu_percent,
                base_cpu,
                max(base_cpu, 0.1) / max(phase.cpu_percent, 0.1),  # (either may be 0: clock ticks)
            ),
        ]
        results += [
            Result("attacks", figure, unit, value, "no attack", reference, ratio, None)
            for figure, unit, value, reference, ratio in rows
        ]
    return results


class Benchmark(NamedTuple):
    NAME: str
    STEPS: int
    run: Any


BENCHMARK = Benchmark("attacks", len(ATTACKS) + 2, run)
