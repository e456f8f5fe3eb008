"""The two sides of the ``discovery`` benchmark, each run in its own network namespace.

``observer``: a peerkit node signed in to NEAR_ME, and a plain zeroconf browser of a service type
of its own. Prints one JSON line per peer it sees first: {"kind": "peerkit"|"plain", "name": ...,
"t": monotonic seconds}.

``publisher``: reads {"do": "peerkit"|"plain", "name": ...} lines. For peerkit it starts a node (a
new identity), then notes the time and calls sign_in(); for plain it starts a zeroconf instance,
then notes the time and registers a service. It prints {"t0": ...}, waits for a "stop" line, and
withdraws (goodbye) before the next command.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import anyio
from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

import peerkit
from peerkit.discovery import MdnsDiscovery

PLAIN_TYPE = "_plainbench._tcp.local."


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def observer() -> None:
    seen: set[str] = set()
    async with (
        peerkit.Node(
            nickname="observer",
            identity=peerkit.Identity.generate(),
            listen=("0.0.0.0", 0),
            discovery=[MdnsDiscovery(ttl=120)],
        ) as node,
        anyio.create_task_group() as tg,
    ):
        await node.sign_in(peerkit.Scope.NEAR_ME)
        azc = AsyncZeroconf()

        async def resolve(zc: Zeroconf, name: str) -> None:
            info = AsyncServiceInfo(PLAIN_TYPE, name)
            if await info.async_request(zc, 3000):  # the address, as a peer needs to connect
                emit(kind="plain", name=name.split(".", maxsplit=1)[0], t=time.monotonic())

        def changed(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            if state_change is ServiceStateChange.Added and name not in seen:
                seen.add(name)
                tg.start_soon(resolve, zeroconf, name)

        browser = AsyncServiceBrowser(azc.zeroconf, [PLAIN_TYPE], handlers=[changed])
        emit(ready=True)
        try:
            async with node.watch_nearby() as watch:
                async for event in watch:
                    if event.change is peerkit.ChangeType.ADDED:
                        emit(kind="peerkit", name=event.peer.nickname, t=time.monotonic())
        finally:
            with anyio.CancelScope(shield=True):
                await browser.async_cancel()
                await azc.async_close()


async def publisher() -> None:
    stdin = anyio.wrap_file(sys.stdin)
    emit(ready=True)
    async for line in stdin:
        command = json.loads(line)
        if command.get("do") == "peerkit":
            async with peerkit.Node(
                nickname=command["name"],
                identity=peerkit.Identity.generate(),
                listen=("0.0.0.0", 0),
                discovery=[MdnsDiscovery(ttl=120)],
            ) as node:
                t0 = time.monotonic()
                await node.sign_in(peerkit.Scope.NEAR_ME)
                emit(t0=t0)
                await stdin.readline()
        elif command.get("do") == "plain":
            azc = AsyncZeroconf()
            await azc.zeroconf.async_wait_for_start()
            info = ServiceInfo(
                PLAIN_TYPE,
                f"{command['name']}.{PLAIN_TYPE}",
                port=7000,
                properties={"v": "1"},
                server=f"{command['name']}.local.",
                parsed_addresses=[command["address"]],
            )
            t0 = time.monotonic()
            await azc.async_register_service(info)
            emit(t0=t0)
            await stdin.readline()
            await azc.async_unregister_service(info)
            await azc.async_close()
        else:
            break


if __name__ == "__main__":
    anyio.run(observer if sys.argv[1] == "observer" else publisher)
