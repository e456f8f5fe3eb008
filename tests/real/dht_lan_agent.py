"""The Internet scope across network namespaces (used by tests/real/test_dht_lan.py).

Modes:
  testnet --addresses ADDR[,ADDR...]
      One plain DHT node on port 6881 of each address (the namespace must have them), each joined
      through the first. Prints {"ready": "ADDR:6881"} (the first), then runs until stdin closes.
  node --nickname NAME --bootstrap HOST:PORT --data-dir DIR
      A peerkit node listening on every address, with the dht provider joined through HOST:PORT,
      signed in to INTERNET and accepting invitations to one application. Prints
      {"ready": ID, "card": CARD}; reads commands:
      {"cmd": "add_card", "card": CARD} -> {"done": "add_card"} | (cards in hex)
      {"cmd": "resolve", "id": ID} -> {"resolved": [ENDPOINT...], "seconds": S} |
      {"cmd": "invite", "id": ID} -> {"invite": "ACCEPTED", "seconds": S};
      a command that fails prints {"error": TEXT, "seconds": S}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio

import peerkit
from peerkit.dht.node import DhtNode
from peerkit.dht.provider import DhtDiscovery
from peerkit.dht.transport import UdpDatagrams

CHAT = peerkit.Application(id=uuid.UUID("a3c0b7e2-1d1f-4c55-9b0e-5c8e8c2f0d12"), description="chat")


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def testnet_main(args: argparse.Namespace) -> None:
    async with anyio.create_task_group() as tg:
        nodes: list[DhtNode] = []
        for address in args.addresses.split(","):
            node = DhtNode(
                await UdpDatagrams.bind(address, 6881), bootstrap=[nodes[0].address] if nodes else []
            )
            await tg.start(node.run)
            nodes.append(node)
        await anyio.sleep(0.5)
        await nodes[0].join()
        emit(ready=f"{nodes[0].address[0]}:{nodes[0].address[1]}")
        async for _ in anyio.wrap_file(sys.stdin):
            pass
        tg.cancel_scope.cancel()


async def node_main(args: argparse.Namespace) -> None:
    host, port = args.bootstrap.rsplit(":", 1)
    provider = DhtDiscovery(bootstrap=[(host, int(port))], host="0.0.0.0", host6=None)
    async with peerkit.Node(
        nickname=args.nickname,
        data_dir=Path(args.data_dir),
        listen=("0.0.0.0", 0),
        discovery=[provider],
        address_check=1,
    ) as node:
        await node.register_application(CHAT)

        @node.on_invitation(CHAT)
        async def accept(invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
            return peerkit.InvitationResponse.ACCEPTED

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
                elif cmd == "resolve":
                    peer = await node.resolve(peerkit.PeerId.parse(command["id"]))
                    emit(resolved=[str(e) for e in peer.endpoints], seconds=anyio.current_time() - start)
                elif cmd == "invite":
                    contact = await node.contacts.get(peerkit.PeerId.parse(command["id"]))
                    answer = await contact.invite(CHAT, "hello", timeout=10)
                    emit(invite=answer.name, seconds=anyio.current_time() - start)
            except peerkit.PeerkitError as exc:
                emit(error=f"{type(exc).__name__}: {exc}", seconds=anyio.current_time() - start)


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
    args = parser.parse_args()
    anyio.run(testnet_main if args.mode == "testnet" else node_main, args)


if __name__ == "__main__":
    main()
