"""py-libp2p's side of ``python -m benchmarks peers``, run by the interpreter of its own venv (see
benchmarks/peers.py): two hosts in one trio process, as peerkit's side runs two nodes in one.

    python libp2p_agent.py connect COUNT [--defaults]   # p50 of COUNT dials: TCP, Noise XX, yamux
    python libp2p_agent.py stream BYTES                 # one stream, 64 KiB writes, to a sink
    python libp2p_agent.py publish N ROUNDS             # gossipsub: publish until all N have it

Prints one JSON line. The hosts are set up as a tuned application would: Noise and yamux only,
and (without ``--defaults``) no 250 ms happy-eyeballs head start on a dial to a single address
(py-libp2p waits it out even when the first dial succeeds).

``publish`` runs N + 1 hosts: N subscribers, each connected to the publisher, all subscribed to
one topic. The mesh degree is N, so that gossipsub pushes each message to every subscriber
directly, the shape of peerkit's subscriptions (otherwise all but D = 6 of them would wait for
gossip). The heartbeat is gossipsub's usual 1 s; messages are signed and checked, its default.
A round publishes one message and times it until every subscriber has read it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network import swarm
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service.context import background_trio_service

SINK = TProtocol("/peerkit-bench/sink/1.0.0")
WRITE = 65536
TOPIC = "peerkit-bench"


def host() -> Any:
    keys = create_new_key_pair()
    noise = NoiseTransport(keys, noise_privkey=x25519_key_pair().private_key)
    return new_host(key_pair=keys, sec_opt={NOISE: noise}, muxer_opt={YAMUX: Yamux})


async def sink(stream: Any) -> None:
    received = 0
    try:
        while data := await stream.read(WRITE):
            received += len(data)
    except Exception:  # py-libp2p ends a read at the writer's close with StreamEOF
        pass
    await stream.write(str(received).encode())
    await stream.close()


async def publish(n: int, rounds: int) -> dict[str, Any]:
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with contextlib.AsyncExitStack() as stack:
        hosts, pubsubs, routers = [], [], []
        for _ in range(n + 1):
            h = host()
            router = GossipSub([PROTOCOL_ID_V11], degree=n, degree_low=n, degree_high=n, heartbeat_interval=1)
            pubsub = Pubsub(h, router)
            await stack.enter_async_context(h.run(listen_addrs=listen))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await pubsub.wait_until_ready()
            hosts.append(h)
            pubsubs.append(pubsub)
            routers.append(router)
        publisher = hosts[0]
        info = info_from_p2p_addr(publisher.get_addrs()[0])
        await pubsubs[0].subscribe(TOPIC)
        subscriptions = []
        for h, pubsub in zip(hosts[1:], pubsubs[1:], strict=True):
            await h.connect(info)
            subscriptions.append(await pubsub.subscribe(TOPIC))
        with trio.fail_after(60):  # until the publisher's mesh holds every subscriber
            while len(routers[0].mesh.get(TOPIC, ())) < n:  # noqa: ASYNC110 (no event for it)
                await trio.sleep(0.05)
        times = []
        got: list[bytes] = []

        async def read(subscription: Any, data: bytes, done: trio.Event) -> None:
            while (await subscription.get()).data != data:
                pass
            got.append(data)
            if len(got) == n:
                done.set()

        for i in range(rounds + 2):
            data = f"sample {i}".encode()
            got.clear()
            done = trio.Event()
            async with trio.open_nursery() as nursery:
                for subscription in subscriptions:
                    nursery.start_soon(read, subscription, data, done)
                await trio.sleep(0.15)  # (under gossipsub's default limit of 10 messages a second)
                start = time.perf_counter()
                await pubsubs[0].publish(TOPIC, data)
                with trio.fail_after(60):
                    await done.wait()
                if i >= 2:  # warm-up rounds are dropped
                    times.append(time.perf_counter() - start)
        return {"publish_ms": sorted(t * 1000 for t in times)}


async def main(mode: str, amount: int) -> dict[str, Any]:
    if mode == "publish":
        return await publish(amount, int(sys.argv[3]))
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    a, b = host(), host()
    async with a.run(listen_addrs=listen), b.run(listen_addrs=listen):
        b.set_stream_handler(SINK, sink)
        info = info_from_p2p_addr(b.get_addrs()[0])
        if mode == "connect":
            times = []
            for _ in range(amount):
                start = time.perf_counter()
                await a.connect(info)
                times.append(time.perf_counter() - start)
                await a.disconnect(info.peer_id)
            return {"connect_ms": sorted(t * 1000 for t in times)}
        await a.connect(info)
        stream = await a.new_stream(info.peer_id, [SINK])
        piece = b"\x00" * WRITE
        start = time.perf_counter()
        for _ in range(amount // WRITE):
            await stream.write(piece)
        await stream.close_write()
        acknowledged = int(await stream.read(64))
        seconds = time.perf_counter() - start
        assert acknowledged == amount // WRITE * WRITE, acknowledged
        return {"mb_s": acknowledged / seconds / 1e6}


if __name__ == "__main__":
    if "--defaults" not in sys.argv:
        swarm._HAPPY_EYEBALLS_DELAY = 0
    print(json.dumps(trio.run(main, sys.argv[1], int(sys.argv[2]))), flush=True)
