"""py-libp2p's side of the mDNS figure of ``python -m benchmarks peers``, run by the interpreter of
its own venv in a network namespace, as benchmarks/discovery_agent.py runs peerkit's:

``observer``: a host with mDNS discovery; prints {"kind": "libp2p", "name": PEER_ID, "t": ...}
(monotonic seconds) for each peer discovery reports.

``publisher``: reads {"do": "libp2p"} lines. For each it notes the time and starts a new host
(a new identity) with mDNS discovery, listening on a TCP port; prints {"t0": ..., "name":
PEER_ID}; waits for a line and stops the host (its mDNS goodbye) before the next command.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.peer.peerinfo import PeerInfo

LISTEN = [multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/0")]


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def observer() -> None:
    def found(info: PeerInfo) -> None:
        emit(kind="libp2p", name=str(info.peer_id), t=time.monotonic())

    peerDiscovery.register_peer_discovered_handler(found)
    host = new_host(enable_mDNS=True)
    async with host.run(listen_addrs=LISTEN):
        emit(ready=True)
        await trio.sleep_forever()


async def publisher() -> None:
    stdin = trio.wrap_file(sys.stdin)
    emit(ready=True)
    async for line in stdin:
        if json.loads(line).get("do") != "libp2p":
            break
        host = new_host(enable_mDNS=True)
        t0 = time.monotonic()
        async with host.run(listen_addrs=LISTEN):
            emit(t0=t0, name=str(host.get_id()))
            await stdin.readline()


if __name__ == "__main__":
    trio.run(observer if sys.argv[1] == "observer" else publisher)
