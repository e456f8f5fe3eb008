"""Discovery on a real LAN: nodes in network namespaces on bridges, talking mDNS (needs root).

These run in CI (as root). Where namespaces cannot be made they are skipped, except when ``CI`` is
set: then they fail, so that CI never passes without them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from conftest import ON_BACKEND, agents

from peerkit import Identity
from peerkit.testing import NamespaceLan

pytestmark = [pytest.mark.asyncio, pytest.mark.network]

AGENT = str(Path(__file__).with_name("lan_agent.py"))
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "people_near_me.py"
TTL = 2  # seconds: record TTL of the agents, so that a vanished node is lost fast


def node_args(nickname: str, *extra: str) -> list[str]:
    return ["node", "--nickname", nickname, "--ttl", str(TTL), *extra]


def change(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line.get("change") == kind and all(line.get(k) == v for k, v in fields.items())


async def test_discovery_invitation_update_sign_out_and_kill(lan: NamespaceLan) -> None:
    bridge = lan.bridge()
    (ns_a, (addr_a,)), (ns_b, (addr_b,)) = lan.host(bridge), lan.host(bridge)
    async with agents(AGENT) as start:
        alice = await start(ns_a, *node_args("alice"))
        bob = await start(ns_b, *node_args("bob"))
        # mutual discovery, with the addresses each signed
        seen_bob = await alice.expect(change("ADDED", nickname="bob"))
        seen_alice = await bob.expect(change("ADDED", nickname="alice"))
        bob_id, alice_id = seen_bob["id"], seen_alice["id"]
        assert any(e.startswith(addr_b + ":") for e in seen_bob["endpoints"])
        assert any(e.startswith(addr_a + ":") for e in seen_alice["endpoints"])
        # an invitation across namespaces (IK to the discovered key)
        await alice.send(cmd="invite", id=bob_id)
        assert (await alice.expect(lambda line: "invite" in line))["invite"] == "ACCEPTED"
        assert (await bob.expect(lambda line: "invited_by" in line))["invited_by"] == alice_id
        # a nickname change is an update
        await bob.send(cmd="nick", value="bobby")
        await alice.expect(change("UPDATED", id=bob_id, nickname="bobby"))
        # sign-out is a deletion (goodbye), sign-in brings it back
        await bob.send(cmd="signout")
        await alice.expect(change("DELETED", id=bob_id), timeout=5)
        await bob.send(cmd="signin")
        await alice.expect(change("ADDED", id=bob_id))
        # killed: no goodbye, gone within the TTL (plus the time a check takes)
        await anyio.sleep(1.5)  # heard in its first probe: let it finish probing and announce
        bob.process.send_signal(signal.SIGKILL)
        killed_at = anyio.current_time()
        await alice.expect(change("DELETED", id=bob_id), timeout=TTL + 3)
        assert anyio.current_time() - killed_at <= TTL + 2


async def test_forged_records_are_ignored(lan: NamespaceLan) -> None:
    bridge = lan.bridge()
    (ns_a, _), (ns_b, _), (ns_m, (addr_m,)) = lan.host(bridge), lan.host(bridge), lan.host(bridge)
    async with agents(AGENT) as start:
        alice = await start(ns_a, *node_args("alice"))
        await start(ns_b, *node_args("bob"))
        bob_id = (await alice.expect(change("ADDED", nickname="bob")))["id"]
        await start(ns_m, "forge", "--victim", bob_id, "--address", addr_m, "--ttl", str(TTL))
        # The real record of the forger arrives after its forgeries: once alice has it, she has
        # heard the forgeries too.
        await alice.expect(change("ADDED", nickname="mallory"), timeout=15)
        await anyio.sleep(1)
        assert not alice.seen(lambda line: line.get("nickname") in ("badsig", "otherkey"))
        assert not alice.seen(change("UPDATED", id=bob_id))
        await alice.send(cmd="stats")
        stats = (await alice.expect(lambda line: "stats" in line))["stats"]
        assert stats["invalid"] >= 2, stats


async def test_a_node_on_two_lans_is_found_on_both(lan: NamespaceLan) -> None:
    left, right = lan.bridge(), lan.bridge()
    ns_a, (a_left, a_right) = lan.host(left, right)
    ns_b, _ = lan.host(left)
    ns_c, _ = lan.host(right)
    async with agents(AGENT) as start:
        await start(ns_a, *node_args("alice"))
        bob = await start(ns_b, *node_args("bob"))
        carol = await start(ns_c, *node_args("carol"))
        on_left = await bob.expect(change("ADDED", nickname="alice"))
        on_right = await carol.expect(change("ADDED", nickname="alice"))
        assert on_left["id"] == on_right["id"]
        for seen in (on_left, on_right):
            assert {e.rsplit(":", 1)[0] for e in seen["endpoints"]} >= {a_left, a_right}
        # each side can reach alice on its own LAN
        await bob.send(cmd="invite", id=on_left["id"])
        assert (await bob.expect(lambda line: "invite" in line))["invite"] == "ACCEPTED"
        await carol.send(cmd="invite", id=on_right["id"])
        assert (await carol.expect(lambda line: "invite" in line))["invite"] == "ACCEPTED"
        # bob and carol are on different LANs: they never see each other
        assert not bob.seen(change("ADDED", nickname="carol"))


async def test_a_dns_client_written_from_the_rfc_sees_the_service(lan: NamespaceLan) -> None:
    bridge = lan.bridge()
    (ns_a, (addr_a,)), (ns_q, _) = lan.host(bridge), lan.host(bridge)
    async with agents(AGENT) as start:
        await start(ns_a, *node_args("alice"))
        await anyio.sleep(1.5)  # probing and announcing
        # A one-shot query (RFC 6762 section 5.1) from another host, with no mDNS library.
        query = await anyio.run_process(["ip", "netns", "exec", ns_q, sys.executable, "-c", ONE_SHOT_QUERY])
        answer = json.loads(query.stdout)
        assert any(name.endswith("._peerkit._tcp.local") and "alice-" in name for name in answer["ptr"])
        assert answer["from"] == addr_a


# A DNS query for _peerkit._tcp.local PTR sent to 224.0.0.251:5353 from an ephemeral port (a legacy
# unicast query: the responder answers to the sender), parsed with the standard library only.
ONE_SHOT_QUERY = r"""
import json, socket, struct
def name(data, at):
    labels = []
    while True:
        length = data[at]
        if length >= 0xC0:
            pointer = struct.unpack_from("!H", data, at)[0] & 0x3FFF
            return labels + name(data, pointer)[0], at + 2
        at += 1
        if length == 0:
            return labels, at
        labels.append(data[at:at + length].decode()); at += length
q = struct.pack("!HHHHHH", 0x1234, 0, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in ["_peerkit", "_tcp", "local"]) + b"\0"
q += struct.pack("!HH", 12, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.settimeout(5)
s.sendto(q, ("224.0.0.251", 5353))
data, sender = s.recvfrom(9000)
ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
at = 12
for _ in range(qd):
    _, at = name(data, at); at += 4
ptr = []
for _ in range(an):
    owner, at = name(data, at)
    kind, klass, ttl, length = struct.unpack_from("!HHIH", data, at); at += 10
    if kind == 12:
        ptr.append(".".join(name(data, at)[0]))
    at += length
print(json.dumps({"ptr": ptr, "from": sender[0], "id": ident}))
"""


_BIND_LINK_LOCAL = """
import socket
for line in open("/proc/net/if_inet6"):
    address, index, _, scope, _, name = line.split()
    if name == "eth0" and address.startswith("fe80"):
        text = ":".join(address[i : i + 4] for i in range(0, 32, 4))
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind((text, 0, 0, int(index, 16)))
        print("bound", text)
"""


async def test_a_hosts_link_local_address_is_usable_as_soon_as_it_is_made(lan: NamespaceLan) -> None:
    # zeroconf binds a socket to each address as a node starts: to a link-local address still
    # tentative (duplicate address detection, a second or two) it failed, and leaked the socket.
    name, _ = lan.host(lan.bridge())
    command = ["ip", "netns", "exec", name, sys.executable, "-c", _BIND_LINK_LOCAL]
    done = await anyio.run_process(command, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.startswith(b"bound fe80:"), done.stdout


async def test_mdns_provider_conforms_in_a_namespace(lan: NamespaceLan) -> None:
    ns, _ = lan.host(lan.bridge())
    script = (
        "import anyio\n"
        "from peerkit.discovery import MdnsDiscovery\n"
        "from peerkit.testing import check_discovery_provider\n"
        "anyio.run(lambda: check_discovery_provider(\n"
        "    lambda others: MdnsDiscovery(ttl=2, interface_check=0.5), timeout=8, settle=2))\n"
        "print('conforms')\n"
    )
    done = await anyio.run_process(["ip", "netns", "exec", ns, sys.executable, "-c", script], check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert done.stdout.strip() == b"conforms"


async def test_a_node_kept_to_one_address_is_announced_on_its_interface_alone(lan: NamespaceLan) -> None:
    # alice listens on loopback only: the LAN must not hear of her (it heard her nickname, id and
    # applications, with an address no one there could dial); carol on her LAN address is heard.
    bridge = lan.bridge()
    (ns_a, _), (ns_b, _), (ns_c, (addr_c,)) = lan.host(bridge), lan.host(bridge), lan.host(bridge)
    async with agents(AGENT) as start:
        alice = await start(ns_a, *node_args("alice", "--listen", "127.0.0.1"))
        await start(ns_c, *node_args("carol", "--listen", addr_c))
        bob = await start(ns_b, *node_args("bob"))
        heard: set[str] = set()

        def carol_added(line: dict[str, Any]) -> bool:
            heard.add(line.get("nickname", ""))
            return change("ADDED", nickname="carol")(line)

        carol = await bob.expect(carol_added)
        assert [e.rpartition(":")[0] for e in carol["endpoints"]] == [addr_c]
        await anyio.sleep(2 * TTL)  # (alice probes and announces at once: time enough to be heard)
        assert "alice" not in heard
        assert not bob.seen(lambda line: line.get("nickname") == "alice")
        assert not alice.seen(lambda line: line.get("nickname") in ("bob", "carol"))


_TWO_ON_LOOPBACK = """
import sys, anyio, peerkit
async def main() -> None:
    def node(name: str) -> peerkit.Node:
        return peerkit.Node(nickname=name, identity=peerkit.Identity.generate(), listen=(sys.argv[1], 0),
                            discovery=["mdns"], port_mapping=False)
    async with node("alice") as alice, node("bob") as bob:
        await alice.sign_in(peerkit.Scope.NEAR_ME)
        await bob.sign_in(peerkit.Scope.NEAR_ME)
        found = await alice.find_nearby(nickname="bob", timeout=10)
        print(found.endpoints[0].host)
anyio.run(main)
"""


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_two_nodes_kept_to_loopback_find_each_other(lan: NamespaceLan, host: str) -> None:
    # (on IPv6's loopback, which carries no multicast, mDNS found nobody)
    ns, _ = lan.host(lan.bridge())
    command = ["ip", "netns", "exec", ns, sys.executable, "-c", _TWO_ON_LOOPBACK, host]
    done = await anyio.run_process(command, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == host


async def test_address_changes_are_followed(lan: NamespaceLan) -> None:
    bridge = lan.bridge()
    (ns_a, _), (ns_b, _) = lan.host(bridge), lan.host(bridge)
    async with agents(AGENT) as start:
        await start(ns_a, *node_args("alice"))
        bob = await start(ns_b, *node_args("bob"))
        alice_id = (await bob.expect(change("ADDED", nickname="alice")))["id"]
        lan.ip(ns_a, "addr", "add", "10.231.1.200/24", "dev", "eth0")
        seen = await bob.expect(
            lambda line: (
                line.get("change") == "UPDATED"
                and line.get("id") == alice_id
                and any(e.startswith("10.231.1.200:") for e in line["endpoints"])
            ),
            timeout=10,
        )
        assert seen["nickname"] == "alice"
        lan.ip(ns_a, "addr", "del", "10.231.1.200/24", "dev", "eth0")
        await bob.expect(
            lambda line: (
                line.get("change") == "UPDATED"
                and line.get("id") == alice_id
                and not any(e.startswith("10.231.1.200:") for e in line["endpoints"])
            ),
            timeout=10,
        )


async def test_serve_and_near_across_namespaces(lan: NamespaceLan, tmp_path: Path) -> None:
    bridge = lan.bridge()
    (ns_a, (addr_a,)), (ns_b, _) = lan.host(bridge), lan.host(bridge)
    cli = [sys.executable, "-c", "from peerkit.cli import main; main()"]
    # The commands' own default discovery (the suite's is nobody, for the host's sake).
    env = {k: v for k, v in os.environ.items() if k != "PEERKIT_DISCOVERY"}
    server = await anyio.open_process(
        [
            "ip",
            "netns",
            "exec",
            ns_a,
            *cli,
            "serve",
            "--json",
            "--nickname",
            "srv",
            "--data-dir",
            str(tmp_path),
        ],
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert server.stdout is not None
        with anyio.fail_after(30):
            first = json.loads((await server.stdout.receive()).split(b"\n")[0])
        assert first["discovery"] == ["mdns"]
        assert first["scope"] == "ALL"
        near = await anyio.run_process(
            ["ip", "netns", "exec", ns_b, *cli, "near", "--once", "--wait", "3", "--json"],
            check=False,
            env=env,
        )
        assert near.returncode == 0, near.stderr.decode()
        rows = json.loads(near.stdout)
        assert [(r["nickname"], r["id"]) for r in rows] == [("srv", first["id"])]
        assert rows[0]["endpoint"] == f"{addr_a}:{first['port']}"
    finally:
        server.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            await server.wait()
        await server.aclose()
    assert server.returncode == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_the_people_near_me_example(lan: NamespaceLan, backend: str) -> None:
    # In a namespace of its own, so that its multicast stays there. On trio, mDNS runs on an
    # asyncio loop in a thread of its own.
    ns, _ = lan.host(lan.bridge())
    example = EXAMPLE
    command = [sys.executable, "-c", ON_BACKEND, backend, str(example)]
    done = await anyio.run_process(["ip", "netns", "exec", ns, *command], check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().splitlines() == [
        "ADDED bob",
        "ACCEPTED",
        "['bob']",
        "UPDATED bobby",
        "DELETED bobby",
    ]


async def test_ipv6_only_discovery_and_invitation(lan: NamespaceLan) -> None:
    bridge = lan.bridge()
    (ns_a, _), (ns_b, _) = lan.host(bridge), lan.host(bridge)
    v6_a = lan.ipv6(1, bridge)
    only_v6 = ["--listen", "::", "--ip-version", "v6"]
    async with agents(AGENT) as start:
        await start(ns_a, *node_args("alice", *only_v6))
        bob = await start(ns_b, *node_args("bob", *only_v6))
        seen = await bob.expect(change("ADDED", nickname="alice"))
        assert f"[{v6_a}]" in {e.rsplit(":", 1)[0] for e in seen["endpoints"]}
        await bob.send(cmd="invite", id=seen["id"])
        assert (await bob.expect(lambda line: "invite" in line))["invite"] == "ACCEPTED"


async def test_a_node_listening_by_default_is_reached_over_ipv4_and_over_ipv6(lan: NamespaceLan) -> None:
    # A node's default (the empty host) listens on both families: a peer on an IPv6-only network
    # and one that speaks IPv4 only both find it and invite it.
    bridge = lan.bridge()
    (ns_a, _), (ns_b, (v4_b,)), (ns_c, _) = lan.host(bridge), lan.host(bridge), lan.host(bridge)
    lan.ip(ns_b, "addr", "del", f"{v4_b}/24", "dev", "eth0")  # bob's network is IPv6 only
    async with agents(AGENT) as start:
        await start(ns_a, *node_args("alice", "--listen", ""))
        bob = await start(ns_b, *node_args("bob", "--listen", "::", "--ip-version", "v6"))
        carol = await start(ns_c, *node_args("carol", "--listen", "0.0.0.0", "--ip-version", "v4"))
        for agent in (bob, carol):
            seen = await agent.expect(change("ADDED", nickname="alice"))
            await agent.send(cmd="invite", id=seen["id"])
            assert (await agent.expect(lambda line: "invite" in line))["invite"] == "ACCEPTED"


async def test_ipv6_neighbours_are_sources_of_their_own(lan: NamespaceLan) -> None:
    # The hosts of a LAN share its /64: were it one source, one stranger near me asking too much
    # would have the others refused. Over IPv6 only, bob grants each peer 3 requests: alice uses
    # hers up, and carol, on the same /64, is still answered.
    bridge = lan.bridge()
    (ns_a, _), (ns_b, _), (ns_c, _) = lan.host(bridge), lan.host(bridge), lan.host(bridge)
    only_v6 = ["--listen", "::", "--ip-version", "v6"]
    async with agents(AGENT) as start:
        bob = await start(ns_b, *node_args("bob", *only_v6, "--request-burst", "3"))
        alice = await start(ns_a, *node_args("alice", *only_v6))
        carol = await start(ns_c, *node_args("carol", *only_v6))
        for agent in (alice, carol):
            await agent.expect(change("ADDED", nickname="bob"))

        async def invite(agent: Any) -> str:
            await agent.send(cmd="invite", id=bob.ready)
            return str((await agent.expect(lambda line: "invite" in line))["invite"])

        assert [await invite(alice) for _ in range(3)] == ["ACCEPTED"] * 3
        assert "over 0.001 requests a second" in await invite(alice)
        assert await invite(carol) == "ACCEPTED"


@pytest.mark.parametrize("by", ["address", "name"])
async def test_chosen_interfaces_only(lan: NamespaceLan, by: str) -> None:
    left, right = lan.bridge(), lan.bridge()
    ns_a, (a_left, _) = lan.host(left, right)
    ns_b, _ = lan.host(left)
    ns_c, _ = lan.host(right)
    async with agents(AGENT) as start:
        # alice listens everywhere but speaks mDNS on her left interface only (eth0: its name)
        await start(ns_a, *node_args("alice", "--interface", a_left if by == "address" else "eth0"))
        bob = await start(ns_b, *node_args("bob"))
        carol = await start(ns_c, *node_args("carol"))
        await bob.expect(change("ADDED", nickname="alice"))
        await anyio.sleep(2)
        assert not carol.seen(change("ADDED", nickname="alice"))


KEEPALIVE = 0.5  # seconds: ping interval and timeout of the agents that watch each other


def presence(status: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line.get("presence") == status and all(line.get(k) == v for k, v in fields.items())


async def test_a_watched_contact_goes_offline_when_its_cable_is_pulled_or_it_is_killed(
    lan: NamespaceLan,
) -> None:
    bridge = lan.bridge()
    (ns_a, (addr_a,)), (ns_b, (addr_b,)) = lan.host(bridge), lan.host(bridge)
    async with agents(AGENT) as start:
        alice = await start(ns_a, *node_args("alice", "--keepalive", str(KEEPALIVE)))
        bob = await start(ns_b, *node_args("bob", "--keepalive", str(KEEPALIVE)))
        seen_alice = await bob.expect(change("ADDED", nickname="alice"))
        alice_id = seen_alice["id"]
        alice_port = int(seen_alice["endpoints"][0].rsplit(":", 1)[1])
        bob_id = (await alice.expect(change("ADDED", nickname="bob")))["id"]
        await alice.send(cmd="befriend", id=bob_id, host=addr_b, port=1)  # allowed to watch her
        # (before bob subscribes: a loaded machine may run his subscription before her command)
        await alice.expect(lambda line: line.get("done") == "befriend")
        await bob.send(cmd="befriend", id=alice_id, host=addr_a, port=alice_port)
        await alice.send(cmd="presence", status="BUSY", text="in a call")
        await bob.send(cmd="subscribe", id=alice_id)
        await bob.expect(presence("BUSY", id=alice_id, text="in a call"))
        # The cable is pulled: nothing is closed, packets are lost. Offline within the keepalive
        # window (interval + 2 x timeout), with a little slack for a loaded machine.
        lan.plug(ns_a, False)
        start_time = anyio.current_time()
        await bob.expect(presence("OFFLINE", id=alice_id), timeout=10)
        assert anyio.current_time() - start_time <= 3 * KEEPALIVE + 1.5
        # Plugged back in: the real presence again, by itself.
        lan.plug(ns_a, True)
        await bob.expect(presence("BUSY", id=alice_id), timeout=15)
        # Killed: the kernel closes its connections, and bob sees Offline at once.
        alice.process.kill()
        start_time = anyio.current_time()
        await bob.expect(presence("OFFLINE", id=alice_id), timeout=10)
        assert anyio.current_time() - start_time <= 3 * KEEPALIVE + 1.5


async def test_a_squatter_on_a_peers_mdns_name_hides_nobody(lan: NamespaceLan) -> None:
    # Strangers with keys of their own announce under alice's exact instance name (plain
    # python-zeroconf, nickname "alice"): one before alice starts, one after. bob lists all three,
    # each under its own id, never loses alice while they are on the air, and can invite her.
    bridge = lan.bridge()
    (ns_a, _), (ns_b, _) = lan.host(bridge), lan.host(bridge)
    (ns_early, (addr_early,)), (ns_late, (addr_late,)) = lan.host(bridge), lan.host(bridge)
    seed = os.urandom(32)
    alice_id = str(Identity.from_seed(seed).id)

    def squat(address: str) -> list[str]:
        return ["squat", "--name", f"alice-{alice_id[:8]}", "--address", address, "--ttl", str(TTL)]

    async with agents(AGENT) as start:
        bob = await start(ns_b, *node_args("bob"))
        early = await start(ns_early, *squat(addr_early))
        await bob.expect(change("ADDED", id=early.ready))
        await start(ns_a, *node_args("alice", "--seed", seed.hex()))
        await bob.expect(change("ADDED", id=alice_id), timeout=15)
        late = await start(ns_late, *squat(addr_late))
        await bob.expect(change("ADDED", id=late.ready))
        await anyio.sleep(4 * TTL)  # records refreshed and expired several times over
        assert not bob.seen(change("DELETED", id=alice_id))
        await bob.send(cmd="invite", id=alice_id)
        assert (await bob.expect(lambda line: "invite" in line))["invite"] == "ACCEPTED"
        # The squatters leave: each goodbye takes only its own id.
        for squatter in (early, late):
            await squatter.send(cmd="quit")
            await bob.expect(change("DELETED", id=squatter.ready))
        await anyio.sleep(2 * TTL)
        assert not bob.seen(change("DELETED", id=alice_id))


async def test_a_host_flooding_the_people_near_me_keeps_nobody_from_elsewhere_out(lan: NamespaceLan) -> None:
    # A host announces 1,100 new ids with valid records: bob's people near me (1,024) fill up with
    # its ids. carol, who comes later from another host, is still shown to bob (she took the place
    # of the flood's latest: strangers' places are shared by the packets' source address).
    bridge = lan.bridge()
    (ns_b, _), (ns_f, (addr_f,)), (ns_c, _) = lan.host(bridge), lan.host(bridge), lan.host(bridge)
    async with agents(AGENT) as start:
        bob = await start(ns_b, *node_args("bob"))
        await start(ns_f, "flood", "--address", addr_f, "--count", "1100", "--ttl", "120")
        with anyio.fail_after(30):
            while True:  # until the directory is full
                await bob.send(cmd="stats")
                stats = (await bob.expect(lambda line: "stats" in line))["stats"]
                if stats["full"]:
                    break
                await anyio.sleep(0.5)
        carol = await start(ns_c, *node_args("carol"))
        await bob.expect(change("ADDED", id=carol.ready), timeout=15)
