"""``nat``: reaching a contact behind NAT on a small Internet of network namespaces (needs root,
nft and miniupnpd; without them the benchmark is skipped with a note).

The Internet of ``peerkit.testing.NamespaceLan``: a DHT, an open relay, and four home routers
(nft masquerade and a stateful firewall): one runs miniupnpd, one keeps ports (Linux's
masquerade), one picks a random port per connection (``fully-random``, symmetric-like), and alice
sits behind the last, which keeps ports. Behind each of the first three is a bob: with his port
mapped through the router (miniupnpd speaks PCP, NAT-PMP and UPnP; the node prefers PCP),
reachable through the relay, reachable through the relay. Each try, alice closes her
channels to that bob and traces every way to him afresh (``Node.trace``, the agent of
tests/real/nat_agent.py). Figures, medians over the tries:

- time to first byte, through the relay behind the symmetric-like NAT (connect + handshake),
  against the same direct through the mapped port;
- time to a direct channel by punching behind port-keeping NATs (the relayed channel, then the
  punch), against the same reference;
- the lookup through the DHT that comes before each is left out (the ``dht`` benchmark measures
  lookups; here a record that a previous dial put in alice's directory makes some instant);
- holes punched behind port-keeping NATs (the issue's goal: every try), and tries that reached
  the peer through the relay when it could not be punched (goal: every try).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from benchmarks.harness import Progress, Result, median

NAME = "nat"
TRIES = 10
STEPS = 3 * TRIES
AGENT = Path(__file__).parent.parent / "tests" / "real" / "nat_agent.py"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "it needs root (network namespaces)"
    tools = [t for t in ("ip", "nft", "miniupnpd") if shutil.which(t) is None]
    return f"{', '.join(tools)} missing" if tools else None


class _Agent:
    """One nat_agent.py process in a namespace: a command, then its answer line."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self._buffer = b""
        self.hello: dict[str, Any] = {}

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    async def ask(self, key: str, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(command).encode() + b"\n")
        with anyio.fail_after(60):
            while True:
                answer = await self.line()
                if key in answer or "error" in answer:
                    if key not in answer:
                        raise RuntimeError(f"the agent answered {answer}")
                    return answer


async def _run(tries: int, progress: Progress) -> dict[str, list[Any]]:
    from peerkit.testing import NamespaceLan

    results: dict[str, list[Any]] = {
        "direct": [],
        "relayed": [],
        "punched": [],
        "punch_ok": [],
        "relay_ok": [],
    }
    agents: list[_Agent] = []
    with NamespaceLan(base=234) as lan, tempfile.TemporaryDirectory(prefix="peerkit-nat-") as tmp:

        async def start(namespace: str, *args: str) -> _Agent:
            process = await anyio.open_process(
                ["ip", "netns", "exec", namespace, sys.executable, str(AGENT), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            agent = _Agent(process)
            agents.append(agent)
            with anyio.fail_after(30):
                while "ready" not in agent.hello:
                    agent.hello = await agent.line()
            return agent

        async def node(namespace: str, name: str, *extra: str) -> _Agent:
            args = ["node", "--nickname", name, "--bootstrap", bootstrap, "--data-dir", f"{tmp}/{name}"]
            return await start(namespace, *args, *extra)

        try:
            net = lan.internet()
            ns_dht, (first,) = lan.host(net)
            prefix = first.rsplit(".", 1)[0]
            addresses = [first] + [f"{prefix}.{200 + i}" for i in range(7)]
            for address in addresses[1:]:
                lan.ip(ns_dht, "addr", "add", f"{address}/24", "dev", "eth0")
            bootstrap = str(
                (await start(ns_dht, "testnet", "--addresses", ",".join(addresses))).hello["ready"]
            )
            ns_relay, (relay_address,) = lan.host(net)
            relay = await node(ns_relay, "relay", "--relay")
            via = f"{relay_address}:7000#{relay.hello['ready']}"
            bobs = {}
            for kind, router in (
                ("direct", lan.router(net, upnp=True)),
                ("punched", lan.router(net)),
                ("relayed", lan.router(net, nat="random")),
            ):
                namespace, _ = lan.host(router.lan, gateway=router.lan_address)
                extra = ("--port-mapping",) if kind == "direct" else ("--via", via)
                bobs[kind] = await node(namespace, f"bob-{kind}", *extra)
            office = lan.router(net)
            ns_alice, _ = lan.host(office.lan, gateway=office.lan_address)
            alice = await node(ns_alice, "alice")
            for bob in bobs.values():
                await alice.ask("done", cmd="add_card", card=bob.hello["card"])
                await bob.ask("done", cmd="add_card", card=alice.hello["card"])
            with anyio.fail_after(30):  # the bobs hold their mapping or reservation
                for kind, bob in bobs.items():
                    while True:
                        reach = (await bob.ask("reach", cmd="reach"))["reach"]
                        if reach["mapped"] if kind == "direct" else reach["reservations"]:
                            break
                        await anyio.sleep(0.2)
            await anyio.sleep(1)  # their records reach the DHT
            for _ in range(tries):
                for kind, bob in bobs.items():
                    steps = (await alice.ask("trace", cmd="trace", id=bob.hello["ready"]))["trace"]
                    # (the lookup is left out: the dht benchmark measures it; here a record a
                    # previous dial put in alice's directory makes some lookups instant)
                    ways = {way: (ok, seconds) for way, ok, seconds in steps if ok and way != "resolve"}
                    if kind == "direct" and "mapped" in ways:  # bob's own port, as his router maps it
                        results["direct"].append(ways["mapped"][1] * 1000)
                    elif kind == "relayed":
                        results["relay_ok"].append("relayed" in ways)
                        if "relayed" in ways:
                            results["relayed"].append(ways["relayed"][1] * 1000)
                    elif kind == "punched":
                        results["punch_ok"].append("punched" in ways)
                        if "punched" in ways and "relayed" in ways:
                            results["punched"].append((ways["relayed"][1] + ways["punched"][1]) * 1000)
                    progress()
        finally:
            for agent in agents:
                if agent.process.returncode is None:
                    agent.process.kill()
                await agent.process.wait()
                await agent.process.aclose()
    return results


def run(progress: Progress, *, quick: bool = False) -> list[Result]:
    missing = _missing()
    if missing is not None:
        print(f"nat: skipped ({missing})", file=sys.stderr)
        return []
    tries = 1 if quick else TRIES
    got = anyio.run(_run, tries, progress)
    if not got["direct"] or not got["relayed"] or not got["punched"]:
        raise RuntimeError(f"nat: a way never worked: {got}")
    direct = median(got["direct"])
    punched = 100 * sum(got["punch_ok"]) / len(got["punch_ok"])
    relayed = 100 * sum(got["relay_ok"]) / len(got["relay_ok"])
    return [
        Result(
            NAME,
            "time to first byte behind a symmetric-like NAT, through the relay (connect + handshake), ms",
            "ms",
            median(got["relayed"]),
            "direct through a mapped port (PCP)",
            direct,
            direct / median(got["relayed"]),
            None,
        ),
        Result(
            NAME,
            "time to a direct channel by punching behind port-keeping NATs (relayed channel + punch), ms",
            "ms",
            median(got["punched"]),
            "direct through a mapped port (PCP)",
            direct,
            direct / median(got["punched"]),
            None,
        ),
        Result(
            NAME,
            "holes punched behind port-keeping NATs, % of tries",
            "%",
            punched,
            "every try",
            100,
            punched / 100,
            1.0,
        ),
        Result(
            NAME,
            "reached through the relay when no hole can be punched, % of tries",
            "%",
            relayed,
            "every try",
            100,
            relayed / 100,
            1.0,
        ),
    ]
