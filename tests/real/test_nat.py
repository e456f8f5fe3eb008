"""Reaching contacts behind NAT on a small Internet of network namespaces (needs root; CI runs it).

An "Internet" bridge carries a DHT and relays; home routers (namespaces with a public side on it,
a LAN behind nft masquerade and a stateful firewall) hide the hosts behind them; one router runs
miniupnpd, the UPnP IGD and NAT-PMP daemon of Debian, so that port mapping meets a real router.
Each scenario repeats its invitation 20 times and reports the success rate.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import Agent, agents, needed

from peerkit.testing import NamespaceLan

pytestmark = [pytest.mark.asyncio, pytest.mark.network]

AGENT = str(Path(__file__).with_name("nat_agent.py"))
TRIES = 20
#: Holes punched in a row behind port-preserving NATs (each from a fresh relayed channel).
PUNCHES = 10


def tools() -> str | None:
    missing = [tool for tool in ("nft", "miniupnpd") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} (apt-get install nftables miniupnpd)" if missing else None


async def internet(lan: NamespaceLan, start: Any) -> tuple[int, str]:
    """The Internet bridge and a DHT of 8 nodes on one of its hosts; returns (bridge, bootstrap)."""
    bridge = lan.internet()
    ns_dht, (first,) = lan.host(bridge)
    prefix = first.rsplit(".", 1)[0]
    addresses = [first] + [f"{prefix}.{200 + i}" for i in range(7)]
    for address in addresses[1:]:
        lan.ip(ns_dht, "addr", "add", f"{address}/24", "dev", "eth0")
    dht = await start(ns_dht, "testnet", "--addresses", ",".join(addresses))
    return bridge, dht.ready


async def node(start: Any, namespace: str, name: str, bootstrap: str, tmp_path: Path, *extra: str) -> Agent:
    agent: Agent = await start(
        namespace,
        "node",
        "--nickname",
        name,
        "--bootstrap",
        bootstrap,
        "--data-dir",
        str(tmp_path / name),
        *extra,
    )
    return agent


async def mapped_ports(namespace: str) -> str:
    """The port-forwarding rules miniupnpd keeps in the router's firewall."""
    command = ["ip", "netns", "exec", namespace, "nft", "list", "chain", "inet", "filter", "UPnP"]
    return (await anyio.run_process(command)).stdout.decode()


async def ask(agent: Agent, key: str, timeout: float = 30, **command: Any) -> dict[str, Any]:
    await agent.send(**command)
    line = await agent.expect(lambda line: key in line or "error" in line, timeout=timeout)
    assert key in line, f"{agent.name}: {line}"
    return line


async def introduce(a: Agent, b: Agent, *, relayed: bool = False, at: str | None = None) -> None:
    """Each adds the other's card; with ``relayed``, ``a`` waits until ``b``'s record in the DHT
    names a relay (it is published once ``b`` holds a reservation); with ``at``, until it names
    that endpoint (``b``'s mapped address, published once the mapping is made)."""
    await ask(a, "done", cmd="add_card", card=b.hello["card"])
    await ask(b, "done", cmd="add_card", card=a.hello["card"])
    with anyio.fail_after(30):
        while relayed or at:
            await a.send(cmd="resolve", id=b.ready)
            line = await a.expect(lambda line: "resolved" in line or "error" in line)
            resolved = line.get("resolved", ())
            if (relayed and any(e.startswith("relay ") for e in resolved)) or (at and at in resolved):
                return
            await anyio.sleep(0.2)


async def reach_until(agent: Agent, check: Any, timeout: float = 30) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            reach = (await ask(agent, "reach", cmd="reach"))["reach"]
            if check(reach):
                return reach
            await anyio.sleep(0.25)


def summary(took: list[float]) -> str:
    median = sorted(took)[len(took) // 2] * 1000
    first = took[0] * 1000  # with the DHT lookup and the dials
    return f"{len(took)} invitations accepted, the first in {first:.0f} ms, median {median:.0f} ms"


async def invitations(alice: Agent, bob: Agent) -> list[float]:
    """``TRIES`` invitations from alice to bob; the seconds each took (all must be accepted)."""
    took = []
    for _ in range(TRIES):
        answer = await ask(alice, "invite", cmd="invite", id=bob.ready)
        assert answer["invite"] == "ACCEPTED"
        took.append(answer["seconds"])
    return took


async def test_behind_a_upnp_router_a_contact_connects_directly_through_the_mapping(
    lan: NamespaceLan, tmp_path: Path
) -> None:
    needed("NAT tests", tools())
    async with agents(AGENT) as start:
        net, bootstrap = await internet(lan, start)
        home = lan.router(net, upnp=True)
        ns_bob, _ = lan.host(home.lan, gateway=home.lan_address)
        office = lan.router(net)
        ns_alice, _ = lan.host(office.lan, gateway=office.lan_address)
        bob = await node(start, ns_bob, "bob", bootstrap, tmp_path, "--port-mapping")
        alice = await node(start, ns_alice, "alice", bootstrap, tmp_path)
        reach = await reach_until(bob, lambda r: r["mapped"])
        assert reach["mapped"] == f"{home.public_address}:7000"
        assert reach["mapping"] == "pcp"  # miniupnpd speaks PCP, NAT-PMP and UPnP; PCP is preferred
        # (alice's first invitation races bob's record in the DHT otherwise: his card names his
        # LAN address, which she cannot dial, and a lookup before his record is there finds none)
        await introduce(alice, bob, at=f"{home.public_address}:7000")
        took = await invitations(alice, bob)
        streamed = await ask(alice, "echoed", cmd="stream", id=bob.ready, size=8 << 20)
        assert streamed["echoed"] == 8 << 20
        assert streamed["relay"] is None
        received = (await ask(bob, "received", cmd="received"))["received"]
        assert received == [None] * (TRIES + 1)  # every invitation and the stream came direct
        steps = (await ask(alice, "trace", timeout=60, cmd="trace", id=bob.ready))["trace"]
        assert [(way, ok) for way, ok, _ in steps][:2] == [("resolve", True), ("mapped", True)]
        print(f"\nthrough the mapping: {summary(took)}")
        assert "dport 7000" in await mapped_ports(home.namespace)
        assert bob.process.stdin is not None
        await bob.process.stdin.aclose()  # bob stops as a user's program does
        with anyio.fail_after(10):
            await bob.process.wait()
        assert "dport 7000" not in await mapped_ports(home.namespace)  # he removed his mappings


async def test_pcp_nat_pmp_and_upnp_each_map_and_unmap_through_a_real_router(lan: NamespaceLan) -> None:
    needed("NAT tests", tools())
    async with agents(AGENT) as start:
        net = lan.internet()
        home = lan.router(net, upnp=True)
        ns_host, _ = lan.host(home.lan, gateway=home.lan_address)
        mapper = await start(ns_host, "mapping")
        assert mapper.ready == {
            "pcp": [home.public_address, 7101, 600],
            "nat-pmp": [home.public_address, 7102, 600],
            "upnp": [home.public_address, 7103, 600],
        }
        rules = await mapped_ports(home.namespace)
        assert all(f"dport {port}" in rules for port in (7101, 7102, 7103))
        await mapper.send(cmd="unmap")
        await mapper.expect(lambda line: "unmapped" in line)
        rules = await mapped_ports(home.namespace)
        assert not any(f"dport {port}" in rules for port in (7101, 7102, 7103))


@pytest.mark.parametrize("nat", ["preserving", "random"])
async def test_behind_two_nats_the_relay_carries_the_session_and_a_hole_is_punched_when_it_can_be(
    lan: NamespaceLan, tmp_path: Path, nat: str
) -> None:
    needed("NAT tests", tools())
    async with agents(AGENT) as start:
        net, bootstrap = await internet(lan, start)
        ns_relay, (relay_address,) = lan.host(net)
        relay = await node(start, ns_relay, "relay", bootstrap, tmp_path, "--relay")
        via = f"{relay_address}:7000#{relay.ready}"
        home, office = lan.router(net, nat=nat), lan.router(net)  # type: ignore[arg-type]
        ns_bob, _ = lan.host(home.lan, gateway=home.lan_address)
        ns_alice, _ = lan.host(office.lan, gateway=office.lan_address)
        bob = await node(start, ns_bob, "bob", bootstrap, tmp_path, "--via", via)
        alice = await node(start, ns_alice, "alice", bootstrap, tmp_path)
        await reach_until(bob, lambda r: r["reservations"] == [f"{relay_address}:7000"])
        await introduce(alice, bob, relayed=True)
        first = await ask(alice, "invite", cmd="invite", id=bob.ready)  # through the relay
        assert first["invite"] == "ACCEPTED"
        punch = await reach_until(alice, lambda r: r["punched"] or r["punch_failures"])
        took = [first["seconds"], *await invitations(alice, bob)]
        streamed = await ask(alice, "echoed", cmd="stream", id=bob.ready, size=8 << 20)
        assert streamed["echoed"] == 8 << 20  # every byte back, unchanged
        received = (await ask(bob, "received", cmd="received"))["received"]
        assert received[0] == [relay_address, 7000]  # bob's events say how each came
        if nat == "preserving":  # the SYNs cross: the control channel moved to the hole
            assert (punch["punched"], punch["punch_failures"]) == (1, 0)
            assert received[1:] == [None] * (TRIES + 1)
            assert streamed["relay"] is None  # the stream's connection came through a hole of its own
        else:  # a new port per destination: the SYNs miss, and the relay carries on
            assert (punch["punched"], punch["punch_failures"]) == (0, 1)
            assert received[1:] == [[relay_address, 7000]] * (TRIES + 1)
            assert streamed["relay"] == [relay_address, 7000]
        carried = (await ask(relay, "reach", cmd="reach"))["reach"]["circuits"]
        assert carried == 1 if nat == "preserving" else carried >= 2  # the first channel (and the stream)
        how = "punched, then direct" if nat == "preserving" else "relayed"
        echoed = f"8 MiB echoed {'through a hole' if nat == 'preserving' else 'through the relay'}"
        echoed += f" at {streamed['mbps']:.1f} MB/s"
        # Punch again and again, each time from a fresh relayed channel: the success rate.
        rounds = PUNCHES if nat == "preserving" else 1
        punches = []
        for _ in range(rounds):
            steps = (await ask(alice, "trace", timeout=60, cmd="trace", id=bob.ready))["trace"]
            assert [way for way, _, _ in steps] == ["resolve", "direct", "relayed", "punched"]
            assert [ok for _, ok, _ in steps][1:3] == [False, True]  # bob's own address, then the relay
            punches.append(steps[3])
        punched = [seconds for _, ok, seconds in punches if ok]
        assert len(punched) == (rounds if nat == "preserving" else 0)
        rate = f"holes punched: {len(punched)}/{rounds}" + (
            f", median {sorted(punched)[len(punched) // 2] * 1000:.0f} ms" if punched else ""
        )
        print(f"\n{nat} NAT ({how}): {summary(took)}; {echoed}; {rate}")


async def test_behind_a_firewall_only_the_relay_carries_the_first_channel_and_a_hole_is_punched(
    lan: NamespaceLan, tmp_path: Path
) -> None:
    needed("NAT tests", tools())
    async with agents(AGENT) as start:
        net, bootstrap = await internet(lan, start)
        ns_relay, (relay_address,) = lan.host(net)
        relay = await node(start, ns_relay, "relay", bootstrap, tmp_path, "--relay")
        ns_bob, (bob_address,) = lan.host(net)  # a public address of his own, no NAT
        lan.firewall(ns_bob)  # but nothing he did not open comes in
        office = lan.router(net)
        ns_alice, _ = lan.host(office.lan, gateway=office.lan_address)
        bob = await node(start, ns_bob, "bob", bootstrap, tmp_path)  # no relay configured
        alice = await node(start, ns_alice, "alice", bootstrap, tmp_path)
        # Bob has a public address: only the relay, his contact, dialling him back tells him
        # that his firewall drops what he did not open; then he keeps a reservation on it.
        await introduce(bob, relay)
        assert (await ask(bob, "invite", cmd="invite", id=relay.ready))["invite"] == "ACCEPTED"
        reach = await reach_until(bob, lambda r: r["reservations"])
        assert (reach["reachable"], reach["auto"]) == (False, [f"{relay_address}:7000"])
        await introduce(alice, bob, relayed=True)
        first = await ask(alice, "invite", cmd="invite", id=bob.ready)
        assert first["invite"] == "ACCEPTED"
        assert first["seconds"] < 5  # his card's address is silent: the DHT is asked after 1 s, not 10
        punch = await reach_until(alice, lambda r: r["punched"] or r["punch_failures"])
        assert (punch["punched"], punch["punch_failures"]) == (1, 0)
        took = await invitations(alice, bob)
        streamed = await ask(alice, "echoed", cmd="stream", id=bob.ready, size=1 << 20)
        assert streamed["echoed"] == 1 << 20
        assert streamed["relay"] is None  # through a hole of its own
        received = (await ask(bob, "received", cmd="received"))["received"]
        assert received == [[relay_address, 7000]] + [None] * (TRIES + 1)
        steps = (await ask(alice, "trace", timeout=60, cmd="trace", id=bob.ready))["trace"]
        ways = [(way, ok) for way, ok, _ in steps]
        assert ways[:3] == [("resolve", True), ("direct", False), ("relayed", True)]  # his address: dropped
        assert ways[3] == ("punched", True)
        print(
            f"\nfirewall only at {bob_address} (punched, then direct): {summary([first['seconds'], *took])}"
        )


async def test_after_a_punch_the_direct_channel_outlives_the_relay(lan: NamespaceLan, tmp_path: Path) -> None:
    needed("NAT tests", tools())
    async with agents(AGENT) as start:
        net, bootstrap = await internet(lan, start)
        ns_relay, (relay_address,) = lan.host(net)
        relay = await node(start, ns_relay, "relay", bootstrap, tmp_path, "--relay")
        home, office = lan.router(net), lan.router(net)
        ns_bob, _ = lan.host(home.lan, gateway=home.lan_address)
        ns_alice, _ = lan.host(office.lan, gateway=office.lan_address)
        bob = await node(
            start, ns_bob, "bob", bootstrap, tmp_path, "--via", f"{relay_address}:7000#{relay.ready}"
        )
        alice = await node(start, ns_alice, "alice", bootstrap, tmp_path)
        await reach_until(bob, lambda r: r["reservations"])
        await introduce(alice, bob, relayed=True)
        assert (await ask(alice, "invite", cmd="invite", id=bob.ready))["invite"] == "ACCEPTED"
        await reach_until(alice, lambda r: r["punched"] == 1)
        relay.process.kill()
        await reach_until(bob, lambda r: not r["reservations"], timeout=60)  # bob saw the relay go
        for _ in range(5):
            answer = await ask(alice, "invite", cmd="invite", id=bob.ready)
            assert answer["invite"] == "ACCEPTED"
        assert (await ask(bob, "received", cmd="received"))["received"][-5:] == [None] * 5


async def test_when_a_relay_dies_another_one_takes_over(lan: NamespaceLan, tmp_path: Path) -> None:
    needed("NAT tests", tools())
    async with agents(AGENT) as start:
        net, bootstrap = await internet(lan, start)
        relays, vias = [], []
        for name in ("relay1", "relay2"):
            ns_relay, (address,) = lan.host(net)
            relays.append(await node(start, ns_relay, name, bootstrap, tmp_path, "--relay"))
            vias += ["--via", f"{address}:7000#{relays[-1].ready}"]
        home, office = lan.router(net), lan.router(net)
        ns_bob, _ = lan.host(home.lan, gateway=home.lan_address)
        ns_alice, _ = lan.host(office.lan, gateway=office.lan_address)
        bob = await node(start, ns_bob, "bob", bootstrap, tmp_path, *vias)
        alice = await node(start, ns_alice, "alice", bootstrap, tmp_path)
        await reach_until(bob, lambda r: len(r["reservations"]) == 2)
        await introduce(alice, bob, relayed=True)
        assert (await ask(alice, "invite", cmd="invite", id=bob.ready))["invite"] == "ACCEPTED"
        relays[0].process.kill()  # the relay bob's record names first is gone
        answer = await ask(alice, "invite", cmd="invite", id=bob.ready)
        assert answer["invite"] == "ACCEPTED"
        assert answer["seconds"] < 10  # the dead relay refused at once; the other one carried it
        await reach_until(bob, lambda r: len(r["reservations"]) == 1, timeout=60)


async def test_behind_a_nat_a_contact_that_relays_is_kept_as_a_relay(
    lan: NamespaceLan, tmp_path: Path
) -> None:
    needed("NAT tests", tools())
    async with agents(AGENT) as start:
        net, bootstrap = await internet(lan, start)
        ns_relay, (relay_address,) = lan.host(net)
        relay = await node(start, ns_relay, "relay", bootstrap, tmp_path, "--relay")
        home, office = lan.router(net), lan.router(net)
        ns_bob, _ = lan.host(home.lan, gateway=home.lan_address)
        ns_alice, _ = lan.host(office.lan, gateway=office.lan_address)
        bob = await node(start, ns_bob, "bob", bootstrap, tmp_path)  # no relay configured
        alice = await node(start, ns_alice, "alice", bootstrap, tmp_path)
        assert (await ask(relay, "reach", cmd="reach"))["reach"]["reachable"]  # its record says it relays
        await introduce(bob, relay)
        assert (await ask(bob, "invite", cmd="invite", id=relay.ready))["invite"] == "ACCEPTED"
        reach = await reach_until(bob, lambda r: r["reservations"])  # bob, behind a NAT, chose it
        assert reach["auto"] == reach["reservations"] == [f"{relay_address}:7000"]
        assert reach["reachable"] is False
        await introduce(alice, bob, relayed=True)
        answer = await ask(alice, "invite", cmd="invite", id=bob.ready)
        assert answer["invite"] == "ACCEPTED"
        received = (await ask(bob, "received", cmd="received"))["received"]
        assert received == [[relay_address, 7000]]  # through the contact that relays
