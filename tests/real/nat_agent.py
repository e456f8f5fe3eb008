"""A peerkit node behind a home router of the namespace Internet (used by tests/real/test_nat.py).

Modes:
  testnet --addresses ADDR[,ADDR...]     plain DHT nodes (as in dht_lan_agent.py)
  mapping                                maps TCP ports 7101-7103 through the default gateway by PCP,
                                         NAT-PMP and UPnP; prints {"ready": {method: [address, port,
                                         lifetime]}}, then removes them at a line on stdin
  node --nickname NAME --bootstrap HOST:PORT --data-dir DIR [--port P] [--relay] [--via RELAY]...
       [--port-mapping]
      A peerkit node on 0.0.0.0:P with the dht provider, signed in to INTERNET, accepting
      invitations and echoing streams of one application. Prints {"ready": ID, "card": HEX}, then
      reads commands, one JSON object a line; each answers one line ({"error": TEXT} on failure):
      {"cmd": "add_card", "card": HEX}         -> {"done": "add_card"}
      {"cmd": "reach"}                          -> {"reach": {...}}
      {"cmd": "invite", "id": ID}               -> {"invite": "ACCEPTED", "seconds": S}
      {"cmd": "stream", "id": ID, "size": N}    -> {"echoed": N, "relay": R, "seconds": S, "mbps": M}
      {"cmd": "received"}                       -> {"received": [relay of each invitation/stream]}
      {"cmd": "trace", "id": ID}                -> {"trace": [[way, ok, seconds], ...]} (after
                                                   closing the channels to ID: every way afresh)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).parent))

import peerkit
from peerkit.cli import parse_relay
from peerkit.dht.provider import DhtDiscovery

CHAT = peerkit.Application(id=uuid.UUID("a3c0b7e2-1d1f-4c55-9b0e-5c8e8c2f0d12"), description="chat")


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def node_main(args: argparse.Namespace) -> None:
    host, port = args.bootstrap.rsplit(":", 1)
    provider = DhtDiscovery(bootstrap=[(host, int(port))], host="0.0.0.0", host6=None)
    received: list[Any] = []
    async with peerkit.Node(
        nickname=args.nickname,
        data_dir=Path(args.data_dir),
        listen=("0.0.0.0", args.port),
        discovery=[provider],
        address_check=1,
        relay=peerkit.RelayPolicy(open=True) if args.relay else False,
        relays=[parse_relay(text) for text in args.via],
        port_mapping=args.port_mapping,
    ) as node:
        await node.register_application(CHAT)

        @node.on_invitation(CHAT)
        async def accept(invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
            received.append(invitation.relay)
            return peerkit.InvitationResponse.ACCEPTED

        @node.on_stream(CHAT)
        async def echo(stream: peerkit.AppStream) -> None:
            received.append(stream.relay)
            async with stream:
                try:
                    while True:
                        await stream.send(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass

        await node.sign_in(peerkit.Scope.INTERNET)
        emit(ready=str(node.id), card=node.contacts.sign_card().hex())
        async for line in anyio.wrap_file(sys.stdin):
            command = json.loads(line)
            cmd = command["cmd"]
            start = anyio.current_time()
            try:
                if cmd == "add_card":
                    await node.contacts.add(node.contacts.read_card(bytes.fromhex(command["card"])))
                    emit(done=cmd)
                elif cmd == "reach":
                    reach = node.reach()
                    emit(
                        reach={
                            "mapped": str(reach.mapped) if reach.mapped else None,
                            "mapping": reach.mapping,
                            "problem": reach.mapping_problem,
                            "reservations": [f"{e.host}:{e.port}" for e in reach.reservations],
                            "auto": [f"{e.host}:{e.port}" for e in reach.auto_relays],
                            "reachable": reach.reachable,
                            "circuits": reach.stats.circuits if reach.stats else 0,
                            "punched": reach.punched,
                            "punch_failures": reach.punch_failures,
                        }
                    )
                elif cmd == "invite":
                    contact = await node.contacts.get(peerkit.PeerId.parse(command["id"]))
                    answer = await contact.invite(CHAT, "hello", timeout=20)
                    emit(invite=answer.name, seconds=anyio.current_time() - start)
                elif cmd == "stream":
                    contact = await node.contacts.get(peerkit.PeerId.parse(command["id"]))
                    emit(**await stream_to(contact, command["size"], start))
                elif cmd == "resolve":
                    peer = await node.resolve(peerkit.PeerId.parse(command["id"]))
                    emit(resolved=[str(e) for e in peer.endpoints], seconds=anyio.current_time() - start)
                elif cmd == "trace":
                    peer_id = peerkit.PeerId.parse(command["id"])
                    await node.disconnect(peer_id)  # every way afresh
                    steps = await node.trace(peer_id, timeout=1)  # (a private address: silent)
                    emit(trace=[[s.way, s.ok, s.seconds] for s in steps])
                elif cmd == "received":
                    emit(received=[list(r) if r else None for r in received])
            except (peerkit.PeerkitError, TimeoutError) as exc:
                emit(error=f"{type(exc).__name__}: {exc}", seconds=anyio.current_time() - start)


async def stream_to(contact: peerkit.Contact, size: int, start: float) -> dict[str, Any]:
    # Send ``size`` bytes (a known payload) and read them back: the echo must be exact.
    payload = hashlib.shake_256(b"peerkit relayed payload").digest(64) * (size // 64)
    async with await contact.open_stream(CHAT, timeout=20) as stream:
        opened = anyio.current_time()
        got = bytearray()
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                for offset in range(0, len(payload), 65536):
                    await stream.send(payload[offset : offset + 65536])

            tg.start_soon(send)
            with anyio.fail_after(60):
                while len(got) < len(payload):
                    got += await stream.receive()
        took = anyio.current_time() - opened
    return {
        "echoed": len(got) if bytes(got) == payload else -1,
        "relay": list(stream.relay) if stream.relay else None,
        "seconds": anyio.current_time() - start,
        "mbps": 2 * len(payload) / took / 1e6,
    }


async def mapping_main(args: argparse.Namespace) -> None:
    # Each way of port mapping asks the router for one TCP port (7101: PCP, 7102: NAT-PMP, 7103:
    # UPnP), says what it got, and removes it when told.
    from peerkit.nat.client import NatPmpClient, PcpClient
    from peerkit.nat.igd import IgdClient
    from peerkit.nat.mapper import default_gateway

    gateway = await default_gateway()
    assert gateway is not None
    clients: dict[str, Any] = {
        "pcp": PcpClient(gateway),
        "nat-pmp": NatPmpClient(gateway),
        "upnp": await IgdClient.discover(local_host="0.0.0.0"),
    }
    got = {}
    for port, (method, client) in enumerate(clients.items(), start=7101):
        external = await client.external_address()
        mapping = await client.map("tcp", port, external_port=port, lifetime=600)
        got[method] = [mapping.external_address or external.address, mapping.external_port, mapping.lifetime]
    emit(ready=got)
    await anyio.wrap_file(sys.stdin).readline()
    for port, (_, client) in enumerate(clients.items(), start=7101):
        await client.unmap("tcp", port)
    emit(unmapped=True)


def main() -> None:
    if os.environ.get("AGENT_LOG"):  # AGENT_LOG=1 pytest ... -s: the agents' logs on stderr
        logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser()
    modes = parser.add_subparsers(dest="mode", required=True)
    testnet = modes.add_parser("testnet")
    testnet.add_argument("--addresses", required=True)
    node = modes.add_parser("node")
    node.add_argument("--nickname", required=True)
    node.add_argument("--bootstrap", required=True)
    node.add_argument("--data-dir", required=True)
    node.add_argument("--port", type=int, default=7000)
    node.add_argument("--relay", action="store_true")
    node.add_argument("--via", action="append", default=[])
    node.add_argument("--port-mapping", action="store_true")
    modes.add_parser("mapping")
    args = parser.parse_args()
    if args.mode == "mapping":
        anyio.run(mapping_main, args)
    elif args.mode == "testnet":
        from dht_lan_agent import testnet_main

        anyio.run(testnet_main, args)
    else:
        anyio.run(node_main, args)


if __name__ == "__main__":
    main()
