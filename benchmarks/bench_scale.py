"""``scale``: one node with 5,000 subscribed contacts, alone in its process.

The publisher (benchmarks/scale_agent.py) runs in a process of its own, so that its memory and CPU
are its own; its 5,000 subscribers are nodes in a second process, each a contact it allows, each
subscribed over its own TCP connection on loopback. Figures, each beside the target stated here:

- memory: the publisher's resident memory grown by the 5,000 subscriptions, per subscription
  (its subscriber, outbox, channel and connection); target <= 10 KB, half of the 20 KB the
  memory benchmark (`contacts`) aims at for both ends;
- idle CPU: the publisher's CPU time with nothing to publish (each subscriber's channel pings it
  once a keepalive interval, 15 s, and it answers), as a share of one core, over two keepalive
  intervals (30 s) that start one interval after the last subscription (the pings a channel
  starts with are over). Its reference is the floor for that work, measured over the same 30 s
  (benchmarks/scale_floor.py): a bare asyncio protocol in processes of its own, beside the node's,
  holding as many connections, each pinged as often at a phase of its own, that opens each ping,
  decodes it and seals its pong as the protocol asks, and nothing more. Target: the floor's CPU
  at least 0.8x peerkit's, the share of its per-message work that fan-out aims at too (the
  figure was first held to 5 % of a core; the floor alone takes 4-6 % on this machine, so a
  fixed share said more about the machine than about peerkit);
- fan-out: from ``set_presence`` on the publisher until the last of the 5,000 nodes has it in its
  presence handler (every one decrypts, decodes and dispatches its own copy), p50 of 10; target
  <= 2 s (a presence is news for a person: seconds are the scale people notice).

Memory and fan-out have absolute targets (nothing else in the run does the same work): their
ratio column is target / figure (>= 1 meets it).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from benchmarks.harness import Progress, Result, median
from peerkit import KeepalivePolicy

NAME = "scale"
SUBSCRIBERS = 5_000
SAMPLES = 10
#: Seconds between a channel's keepalive pings (each subscriber's, and each of the floor's).
INTERVAL = KeepalivePolicy().interval
#: Seconds waited before the idle CPU is measured (one keepalive interval), and measured over (two).
SETTLE_SECONDS = INTERVAL
IDLE_SECONDS = 2 * SETTLE_SECONDS
STEPS = SUBSCRIBERS // 500 * 2 + 4 + SAMPLES
TARGET_BYTES = 10 * 1024
TARGET_CPU = 0.8
TARGET_FANOUT = 2.0


class _Agent:
    def __init__(self, *args: str, module: str = "benchmarks.scale_agent") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.process.args!r} exited with {self.process.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def _floor(n: int) -> Iterator[_Agent]:
    # The floor's server (see the module's doc), its n connections open and pinging.
    server = _Agent("server", module="benchmarks.scale_floor")
    clients = None
    try:
        port = server.read()["port"]
        clients = _Agent("clients", str(n), str(port), str(INTERVAL), module="benchmarks.scale_floor")
        assert clients.read()["connected"] == n
        yield server
    finally:
        if clients is not None:
            clients.close()
        server.close()


def measure(n: int, samples: int, idle: tuple[float, float], progress: Progress) -> dict[str, Any]:
    """The figures of one publisher with ``n`` subscribers; ``idle`` is the seconds waited before
    the idle CPU is measured, and measured over. The floor's CPU is measured over the same
    seconds, its processes running beside the node's (the machine's state then is the same for
    both: measured one after the other, either moved by a quarter from run to run)."""
    publisher = _Agent("publisher", str(n))
    subscribers = None
    try:
        ready = publisher.read()
        subscribers = _Agent("subscribers", str(n), str(ready["port"]), ready["id"])
        while subscribers.read().get("subscribed") != n:
            progress()
        progress()
        publisher.send(do="rss")
        grown = publisher.read()["rss"] - ready["rss"]
        settle, over = idle
        with _floor(n) as floor:
            progress()
            publisher.send(do="idle", seconds=settle)
            publisher.read()
            progress()
            publisher.send(do="idle", seconds=over)
            floor.send(do="idle", seconds=over)
            cpu = publisher.read()["cpu"]
            floor_cpu = floor.read()["cpu"]
            progress()
        fanout = []
        for i in range(samples + 1):
            text = f"sample {i}"
            subscribers.send(do="expect", text=text)
            assert subscribers.read()["expecting"] == text
            publisher.send(do="presence", text=text)
            t0 = publisher.read()["t0"]
            seen = subscribers.read()
            assert seen["text"] == text, seen
            if i:  # (the first is a warm-up)
                fanout.append(seen["t"] - t0)
                progress()
        return {"bytes": grown / n, "cpu": cpu, "floor": floor_cpu, "fanout": fanout}
    finally:
        publisher.close()
        if subscribers is not None:
            subscribers.close()


def run(progress: Progress, quick: bool = False) -> list[Result]:
    """The ``scale`` figures."""
    n = 500 if quick else SUBSCRIBERS
    idle = (1.0, 2.0) if quick else (SETTLE_SECONDS, IDLE_SECONDS)
    figures = measure(n, 3 if quick else SAMPLES, idle, progress)
    floor = figures["floor"]
    per = figures["bytes"]
    fanout = median(figures["fanout"])
    return [
        Result(
            NAME,
            f"publisher's memory per subscribed contact, {n:,} subscribed (ratio = target / peerkit)",
            "B",
            per,
            "target",
            TARGET_BYTES,
            TARGET_BYTES / per,
            1.0,
        ),
        Result(
            NAME,
            f"publisher's CPU when idle with {n:,} subscribed, share of a core (ratio = floor / peerkit)",
            "%",
            figures["cpu"] * 100,
            "bare asyncio responder",
            floor * 100,
            floor / max(figures["cpu"], 1e-6),
            # (a quick run's 2 s come before the node's first pings, 15 s after each subscription,
            # and within the floor's: not judged)
            None if quick else TARGET_CPU,
        ),
        Result(
            NAME,
            f"set_presence until all {n:,} subscribers' handlers saw it, p50 (ratio = target / peerkit)",
            "ms",
            fanout * 1000,
            "target",
            TARGET_FANOUT * 1000,
            TARGET_FANOUT / fanout,
            1.0,
        ),
    ]
