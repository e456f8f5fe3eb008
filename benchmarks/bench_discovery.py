"""``discovery``: from sign_in() on one node to the ADDED event on another, across two network
namespaces on a bridge, beside plain zeroconf (register a service on one side; on the other, a
browser sees it and resolves its address) in the same run.

Both sides are processes (benchmarks/discovery_agent.py) in namespaces this benchmark makes and
removes; their clocks are the same monotonic clock. The candidates take turns, each round with a
new name; each publication is withdrawn (goodbye) before the next. Needs root (``ip netns``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import Progress, Result, median
from peerkit.testing import NamespaceLan

NAME = "discovery"
ROUNDS = 12
STEPS = 2 * ROUNDS
AGENT = str(Path(__file__).with_name("discovery_agent.py"))


class Agent:
    """One side of a discovery benchmark: ``command`` (an agent script and its mode) run in a
    network namespace, spoken to in JSON lines."""

    def __init__(self, namespace: str, *command: str) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert json.loads(self.read())["ready"]

    def read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("a discovery benchmark agent exited")
        return line

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run(progress: Progress, quick: bool = False) -> list[Result]:
    reason = NamespaceLan.available()
    if reason is not None:
        raise RuntimeError(f"the discovery benchmark makes network namespaces, but {reason}")
    rounds = 2 if quick else ROUNDS
    times: dict[str, list[float]] = {"peerkit": [], "plain": []}
    with NamespaceLan(base=233) as lan:
        bridge = lan.bridge()
        (ns_pub, (address,)), (ns_obs, _) = lan.host(bridge), lan.host(bridge)
        observer = Agent(ns_obs, sys.executable, AGENT, "observer")
        publisher = Agent(ns_pub, sys.executable, AGENT, "publisher")
        try:
            for index in range(rounds):
                for kind in ("peerkit", "plain"):
                    name = f"{kind}{index}"
                    publisher.send(do=kind, name=name, address=address)
                    t0 = json.loads(publisher.read())["t0"]
                    while True:
                        seen = json.loads(observer.read())
                        if seen.get("name") == name:
                            break
                    times[kind].append(seen["t"] - t0)
                    publisher.send(stop=True)
                    progress()
            publisher.send(do="quit")
        finally:
            publisher.close()
            observer.close()
    ours, plain = times["peerkit"], times["plain"]
    return [
        Result(
            NAME,
            "sign_in() to ADDED on another host, p50 (higher ratio = faster)",
            "ms",
            median(ours) * 1000,
            "plain zeroconf: register to browsed and resolved",
            median(plain) * 1000,
            median(plain) / median(ours),
            2.0,
        ),
        Result(
            NAME,
            "sign_in() to ADDED on another host, p99",
            "ms",
            percentile(ours, 0.99) * 1000,
            "plain zeroconf, p99",
            percentile(plain, 0.99) * 1000,
            percentile(plain, 0.99) / percentile(ours, 0.99),
            None,
        ),
    ]
