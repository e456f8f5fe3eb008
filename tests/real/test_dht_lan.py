"""The Internet scope across hosts of their own: network namespaces on a bridge (needs root).

A DHT of plain nodes on one host, alice on another, carol on a third: carol finds alice through
the DHT and invites her; alice's laptop moves to another address and is found there; alice's
cable is pulled and carol's attempts fail cleanly, without a hang.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import pytest
from conftest import agents
from terminals import PEERKIT

from peerkit import Node
from peerkit.testing import NamespaceLan

pytestmark = [pytest.mark.asyncio, pytest.mark.network]

AGENT = str(Path(__file__).with_name("dht_lan_agent.py"))


async def test_a_contact_is_found_through_the_dht_where_it_moves_and_fails_cleanly_when_gone(
    lan: NamespaceLan, tmp_path: Path
) -> None:
    bridge = lan.bridge()
    ns_dht, (first,) = lan.host(bridge)
    ns_alice, (alice_address,) = lan.host(bridge)
    ns_carol, _ = lan.host(bridge)
    # The DHT's host has eight addresses: eight nodes, each at an address of its own.
    prefix = first.rsplit(".", 1)[0]
    dht_addresses = [first] + [f"{prefix}.{200 + i}" for i in range(7)]
    for address in dht_addresses[1:]:
        lan.ip(ns_dht, "addr", "add", f"{address}/24", "dev", "eth0")
    async with agents(AGENT) as start:
        dht = await start(ns_dht, "testnet", "--addresses", ",".join(dht_addresses))
        bootstrap = dht.ready
        alice = await start(
            ns_alice,
            "node",
            "--nickname",
            "alice",
            "--bootstrap",
            bootstrap,
            "--data-dir",
            str(tmp_path / "a"),
        )
        carol = await start(
            ns_carol,
            "node",
            "--nickname",
            "carol",
            "--bootstrap",
            bootstrap,
            "--data-dir",
            str(tmp_path / "c"),
        )
        alice_id = alice.ready
        await carol.send(cmd="add_card", card=alice.hello["card"])
        await carol.expect(lambda line: line.get("done") == "add_card")

        async def resolved_at(address: str, timeout: float) -> list[str]:
            with anyio.fail_after(timeout):
                while True:
                    await carol.send(cmd="resolve", id=alice_id)
                    answer = await carol.expect(
                        lambda line: "resolved" in line or "error" in line, timeout=20
                    )
                    if any(e.startswith(f"{address}:") for e in answer.get("resolved", [])):
                        return list(answer["resolved"])
                    await anyio.sleep(0.5)

        # Carol finds alice through the DHT, and invites her there.
        await resolved_at(alice_address, 20)
        # So does `peerkit resolve` on carol's host (its node's DHT socket was on loopback alone,
        # where no DHT node answers).
        dave = tmp_path / "d"
        async with Node(data_dir=dave, listen="127.0.0.1:0", port_mapping=False) as looker:
            await looker.contacts.add(looker.contacts.read_card(bytes.fromhex(alice.hello["card"])))
        resolve = ["resolve", alice_id[:10], "--discovery", f"dht:{bootstrap}", "--data-dir", str(dave)]
        done = await anyio.run_process(
            ["ip", "netns", "exec", ns_carol, *PEERKIT, *resolve, "--json", "--timeout", "20"],
            check=False,
            env={**os.environ, "PEERKIT_PORT_MAPPING": "off"},
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert any(e.startswith(f"{alice_address}:") for e in json.loads(done.stdout)["endpoints"])
        await carol.send(cmd="invite", id=alice_id)
        assert (await carol.expect(lambda line: "invite" in line or "error" in line, timeout=20)).get(
            "invite"
        ) == "ACCEPTED"
        # Alice's laptop moves: another address. Her node notices, publishes again, and carol
        # finds her at the new one (the record names no other address of hers).
        moved = f"{prefix}.150"
        lan.ip(ns_alice, "addr", "del", f"{alice_address}/24", "dev", "eth0")
        lan.ip(ns_alice, "addr", "add", f"{moved}/24", "dev", "eth0")
        endpoints = await resolved_at(moved, 30)
        assert not any(e.startswith(f"{alice_address}:") for e in endpoints)
        await carol.send(cmd="invite", id=alice_id)
        assert (await carol.expect(lambda line: "invite" in line or "error" in line, timeout=20)).get(
            "invite"
        ) == "ACCEPTED"
        # Alice's cable is pulled: her record is still in the DHT, but she answers nothing. Carol's
        # invitation fails with PeerUnreachable in bounded time; her lookups still answer.
        lan.plug(ns_alice, False)
        await carol.send(cmd="invite", id=alice_id)
        failed = await carol.expect(lambda line: "invite" in line or "error" in line, timeout=40)
        assert failed.get("error", "").startswith("PeerUnreachable"), failed
        assert failed["seconds"] < 30
        await carol.send(cmd="resolve", id=alice_id)
        answer = await carol.expect(lambda line: "resolved" in line or "error" in line, timeout=20)
        assert answer["seconds"] < 15
