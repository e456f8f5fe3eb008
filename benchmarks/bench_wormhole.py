"""``wormhole``: a file sent by code, peerkit beside magic-wormhole, each as two programs.

magic-wormhole 0.24.0 (in a venv of its own, see benchmarks/peers.py) runs as its users run it:
``wormhole send --code CODE FILE`` and ``wormhole receive --accept-file CODE``, through a
mailbox server and a transit relay started here. peerkit's side (benchmarks/wormhole_agent.py)
does the same with its public API: the sender hashes the file and waits with a pairing code, the
receiver joins with the code (both become contacts), then the file goes as ``peerkit send``
sends it, checked end to end.

Each round, for each: the sender starts and shows its code; a second later (the code read
aloud) the receiver starts with it. The clock starts then, "code entered", and watches the
receiving folder:

- pair: code entered until the first byte of the file is on the receiver's disk (both programs'
  start-up included, as the user waits for it);
- transfer: MB/s from the first byte until the whole file has its final name (peerkit's
  receiver checks its BLAKE3 hash before it renames it; magic-wormhole checks a SHA-256 as
  the bytes come).

Everything runs in a network namespace of its own that holds only loopback (``unshare -rn``):
both programs hand the other side every address of their machine, and on loopback alone the
figures are theirs, not the network's, and no packet leaves the machine. The file lives in
memory (/dev/shm) where there is one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.files_agent import MEMORY
from benchmarks.harness import Progress, Result, Skipped, median, ratio, write_file
from benchmarks.peers import WORMHOLE, python_of

NAME = "wormhole"
ROUNDS = 5
STEPS = 2 * ROUNDS
#: The file's size: 100 MiB (16 MiB with --quick).
SIZE = 100 << 20
#: How long the person takes to read the code to the other: the sender is ready by then.
READ_ALOUD = 1.0
FIGURES = (
    "pair: code entered -> first byte of the file (both programs started)",
    "a {} MiB file: first byte -> complete, on its final name",
)


def run(progress: Progress, *, quick: bool = False) -> list[Result | Skipped]:
    size = 16 << 20 if quick else SIZE
    figures = (FIGURES[0], FIGURES[1].format(size >> 20))
    python, why = python_of(WORMHOLE, install=not quick)
    if python is None:
        return [Skipped(NAME, figure, WORMHOLE.name, why) for figure in figures]
    if shutil.which("unshare") is None:
        why = "needs unshare(1) for a network namespace with loopback only"
        return [Skipped(NAME, figure, WORMHOLE.name, why) for figure in figures]
    rounds = 1 if quick else ROUNDS
    inner = f"exec {sys.executable} -m benchmarks.bench_wormhole {rounds} {size} {python}"
    command = ["unshare", "-rn", "sh", "-c", "ip link set lo up && " + inner]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as driver:
        assert driver.stdout is not None
        answer: dict[str, dict[str, list[float]]] = {}
        for line in driver.stdout:
            if line.startswith("{"):
                answer = json.loads(line)
            else:
                progress()
    if driver.returncode != 0 or not answer:
        raise RuntimeError(f"the wormhole benchmark's driver failed (exit status {driver.returncode})")
    ours, theirs = answer["peerkit"], answer["wormhole"]
    return [
        Result(
            NAME,
            figures[0] + " (ratio: how many times faster)",
            "ms",
            median(ours["pair"]) * 1000,
            WORMHOLE.name + ", local mailbox server",
            median(theirs["pair"]) * 1000,
            ratio(theirs["pair"], ours["pair"]),
            None,
        ),
        Result(
            NAME,
            figures[1],
            "MB/s",
            median(ours["transfer"]),
            WORMHOLE.name + ", direct on loopback",
            median(theirs["transfer"]),
            ratio(ours["transfer"], theirs["transfer"]),
            None,
        ),
    ]


# -- the driver, inside the namespace -------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"{server.args!r} exited with {server.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after 30 s")


@contextlib.contextmanager
def _servers(python: str, state: Path) -> Iterator[dict[str, str]]:
    mailbox, relay = _free_port(), _free_port()
    commands = [
        [
            *(python, "-m", "twisted", "wormhole-mailbox"),
            f"--port=tcp:{mailbox}:interface=127.0.0.1",
            f"--channel-db={state / 'relay.sqlite'}",
        ],
        [python, "-m", "twisted", "transitrelay", f"--port=tcp:{relay}:interface=127.0.0.1"],
    ]
    quiet = subprocess.DEVNULL
    servers = [subprocess.Popen(command, stdout=quiet, stderr=quiet) for command in commands]
    try:
        for server, port in zip(servers, (mailbox, relay), strict=True):
            _wait_for_port(port, server)
        yield {
            "WORMHOLE_RELAY_URL": f"ws://127.0.0.1:{mailbox}/v1",
            "WORMHOLE_TRANSIT_HELPER": f"tcp:127.0.0.1:{relay}",
        }
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


def _watch(into: Path, name: str, size: int, stop: threading.Event) -> tuple[float, float]:
    """When the first byte of a file appeared in ``into``, and when ``name`` appeared whole."""
    first = 0.0
    while not stop.is_set():
        with os.scandir(into) as entries:
            for entry in entries:
                try:
                    length = entry.stat().st_size
                except FileNotFoundError:  # renamed since the listing
                    continue
                if length and not first:
                    first = time.perf_counter()
                if entry.name == name and length == size:
                    return first, time.perf_counter()
        time.sleep(0.001)
    raise RuntimeError(f"{name} never arrived whole in {into}")


def send_by_code(
    send: list[str], receive: list[str], into: Path, name: str, size: int, env: dict[str, str]
) -> dict[str, float]:
    """One file sent by code: ``receive`` is started with the code the sender shows in place of
    its ``CODE`` argument."""
    into.mkdir()
    with subprocess.Popen(
        send, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as sender:
        assert sender.stdout is not None
        code = ""
        for line in sender.stdout:  # peerkit's agent prints JSON; wormhole its receive command
            if line.startswith("{"):
                info = json.loads(line)
                code = f"{info['code']} {info['port']}"
                break
            if "wormhole receive" in line:
                code = line.split()[-1]
                break
        if not code:
            raise RuntimeError(f"{send!r} showed no code")
        time.sleep(READ_ALOUD)
        stop = threading.Event()
        found: list[tuple[float, float]] = []
        watcher = threading.Thread(target=lambda: found.append(_watch(into, name, size, stop)))
        start = time.perf_counter()
        watcher.start()
        receiving = [part for arg in receive for part in (code.split() if arg == "CODE" else [arg])]
        done = subprocess.run(receiving, env=env, timeout=300, capture_output=True, text=True, check=False)
        watcher.join(10)  # (it may not have looked since the file took its name)
        stop.set()
        watcher.join()
        sender.stdout.read()
        if sender.wait(60) != 0 or done.returncode != 0 or not found:
            raise RuntimeError(
                f"{send!r} exited with {sender.returncode}, the receiver with {done.returncode}"
            )
    shutil.rmtree(into)
    first, whole = found[0]
    return {"pair": first - start, "transfer": size / (whole - first) / 1e6}


def _drive(rounds: int, size: int, python: str) -> None:
    samples: dict[str, dict[str, list[float]]] = {
        side: {"pair": [], "transfer": []} for side in ("peerkit", "wormhole")
    }
    with tempfile.TemporaryDirectory(prefix="peerkit-bench-wormhole-", dir=MEMORY) as tmp:
        folder = Path(tmp)
        path = folder / "large.bin"
        write_file(path, size)
        with _servers(python, folder) as wormhole_env:
            env = {**os.environ, **wormhole_env}
            ours = [sys.executable, "-m", "benchmarks.wormhole_agent"]
            theirs = [python, "-m", "wormhole"]
            for _ in range(rounds):
                for side, send, receive in (
                    ("peerkit", [*ours, "send", str(path)], [*ours, "receive", "CODE", str(folder / "in")]),
                    (
                        "wormhole",
                        [*theirs, "send", "--hide-progress", "--code", "7-guitar-walrus", str(path)],
                        [
                            *theirs,
                            "receive",
                            "--hide-progress",
                            "--accept-file",
                            "-o",
                            str(folder / "in"),
                            "CODE",
                        ],
                    ),
                ):
                    times = send_by_code(send, receive, folder / "in", path.name, size, env)
                    for figure, seconds in times.items():
                        samples[side][figure].append(seconds)
                    print("step", flush=True)
    print(json.dumps(samples), flush=True)


if __name__ == "__main__":
    _drive(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
