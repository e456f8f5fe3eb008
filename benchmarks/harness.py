"""Timing helpers and the result type shared by the benchmarks."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio.abc

Progress = Callable[[], None]


@dataclass(frozen=True, slots=True)
class Result:
    """One figure beside its reference."""

    benchmark: str
    figure: str
    unit: str
    value: float
    reference: str
    reference_value: float
    #: value / reference_value, oriented so that higher is better for peerkit.
    ratio: float
    #: The ratio the issue asks for, or None.
    target: float | None

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


@dataclass(frozen=True, slots=True)
class Skipped:
    """A figure that could not be measured in this run (a peer library not installed, say)."""

    benchmark: str
    figure: str
    reference: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn``, over about ``seconds`` of wall time.

    The garbage left by the previous candidate is collected first, so that no candidate pays
    for another's.
    """
    gc.collect()
    fn()  # warm up
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    batch = 1
    while True:
        for _ in range(batch):
            fn()
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)
        batch = min(batch * 2, 256)


def interleaved(
    candidates: dict[str, Callable[[], object]], rounds: int, seconds: float, progress: Progress
) -> dict[str, list[float]]:
    """Calls/s of each candidate in each of ``rounds`` rounds. The candidates take turns within a
    round, so that a noisy neighbour hurts them alike; compare them round by round (:func:`ratio`)."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name].append(rate(fn, seconds))
            progress()
    return samples


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (0 <= q <= 1), nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def ratio(ours: list[float], reference: list[float]) -> float:
    """The median over rounds of ``ours / reference`` measured in the same round."""
    return statistics.median(a / b for a, b in zip(ours, reference, strict=True))


async def push(stream: anyio.abc.ByteStream, total: int, piece: int) -> float:
    """MB/s of sending ``total`` bytes in writes of ``piece`` bytes; the clock stops when the
    receiver answers (one read: its acknowledgement of the last byte)."""
    payload = bytes(piece)
    start = time.perf_counter()
    for _ in range(total // piece):
        await stream.send(payload)
    await stream.receive()
    return total / (time.perf_counter() - start) / 1e6


async def first_line(stream: anyio.abc.ByteReceiveStream) -> str:
    """The first line a child process prints (where to reach what it serves), without its end;
    read a byte at a time, so that nothing after it is taken."""
    line = b""
    while not line.endswith(b"\n"):
        line += await stream.receive(1)
    return line[:-1].decode()


def write_file(path: Path, size: int) -> None:
    """Write ``size`` bytes (a whole number of MiB) of random-looking data to ``path``, no two MiB
    alike (so that nothing along the way can compress or skip them)."""
    block = os.urandom(1 << 20)
    with path.open("wb") as f:
        for i in range(size >> 20):
            f.write(block[i % 251 :] + block[: i % 251])


#: glibc's malloc returns a large freed block to the system at once (an mmap of its own, or the top
#: of the heap trimmed) when the heap happens to be laid out so, and faults it in again at the next
#: allocation: a receiver whose reads are copied into 256 KiB objects (asyncio's own transports, the
#: raw TCP reference) then runs at half speed in one process and not in the next. The bulk
#: throughput families run in a child process told to keep freed memory (glibc reads these at
#: start; other allocators ignore them), so that both candidates are measured for their work and
#: not for the heap's layout. peerkit's own reads stay under 128 KiB (peerkit.net.tcp.READ_SIZE).
STEADY_ALLOCATOR: dict[str, str] = {
    "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(4 << 20),
}
_CHILD = "--steady-child"


def run_in_steady_child(module: str, progress: Progress, quick: bool) -> list[Result]:
    """Run the family ``module`` in a child process with :data:`STEADY_ALLOCATOR` (its
    ``__main__`` calls :func:`steady_child_main`); its results, its progress passed on."""
    command = [sys.executable, "-m", module, _CHILD, "quick" if quick else "full"]
    env = {**os.environ, **STEADY_ALLOCATOR}
    with subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True) as child:
        assert child.stdout is not None
        results: list[Result] = []
        for line in child.stdout:
            if line == "progress\n":
                progress()
            elif line.startswith("results "):
                results = [Result(**row) for row in json.loads(line[len("results ") :])]
    if child.returncode != 0:
        raise RuntimeError(f"{module} failed in its child process (exit code {child.returncode})")
    return results


def steady_child_main(run: Callable[[Progress, bool], list[Result]]) -> bool:
    """In a family's ``__main__``: when this process is :func:`run_in_steady_child`'s child,
    measure with ``run`` and report to the parent; returns whether it was."""
    if sys.argv[1:2] != [_CHILD]:
        return False

    def progress() -> None:
        print("progress", flush=True)

    results = run(progress, sys.argv[2:3] == ["quick"])
    print("results " + json.dumps([asdict(result) for result in results]), flush=True)
    return True
