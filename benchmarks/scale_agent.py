"""The two processes of the ``scale`` benchmark (see benchmarks/bench_scale.py).

    python -m benchmarks.scale_agent publisher N        # the node measured
    python -m benchmarks.scale_agent subscribers N PORT # N nodes that subscribe to it

The subscribers' identities come from the seeds 1..N, so the publisher makes them its contacts
(allowed to watch it) without being told who they are. Both speak JSON lines: the publisher
answers commands on stdin ({"do": "rss" | "idle" | "presence" | "quit"}); the subscribers print
their progress and, for each presence text, the monotonic time when the last of them saw it
(the clock is the machine's, the same in both processes).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

import anyio

from benchmarks.bench_fanout import Counter, run_node
from peerkit.events import PresenceChanged
from peerkit.identity import Identity, PeerId
from peerkit.model import EndPoint, Presence, PresenceStatus, Scope
from peerkit.node import Node
from peerkit.proto.admission import AdmissionPolicy
from peerkit.proto.holdings import HoldingsPolicy

#: Subscriptions the subscribers' process starts at once while setting up (a multiple of 500).
SUBSCRIBE_BATCH = 50


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def subscriber(i: int) -> Identity:
    """The identity of subscriber ``i`` (1..N)."""
    return Identity.from_seed(i.to_bytes(32, "big"))


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def more_descriptors() -> None:
    # Each subscriber holds a connection: as many descriptors as the hard limit allows.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def publisher(n: int) -> None:
    more_descriptors()
    # Every subscriber dials from 127.0.0.1, faster than one source may start handshakes (50 a
    # second) and SUBSCRIBE_BATCH at once (the default allows 16 under way): the figure is the
    # node's scale, so those limits are lifted; and the node holds more channels than its 1,024.
    async with Node(
        nickname="publisher",
        identity=Identity.generate(),
        listen=("127.0.0.1", 0),
        admission=AdmissionPolicy(max_per_source=2 * SUBSCRIBE_BATCH, rate=10.0**7, burst=10**7),
        holdings=HoldingsPolicy(max_connections=n + 1024),
    ) as node:
        await node.sign_in(Scope.INTERNET)
        for i in range(1, n + 1):
            await node.contacts.add(subscriber(i).id)
        emit(port=node.endpoint.port, id=str(node.id), rss=rss())
        async for line in anyio.wrap_file(sys.stdin):
            command = json.loads(line)
            if command["do"] == "rss":
                emit(rss=rss())
            elif command["do"] == "idle":
                cpu = time.process_time()
                await anyio.sleep(command["seconds"])
                emit(cpu=(time.process_time() - cpu) / command["seconds"])
            elif command["do"] == "presence":
                t0 = time.monotonic()
                await node.set_presence(Presence(PresenceStatus.BUSY, command["text"]))
                emit(t0=t0)
            else:
                break


async def subscribers(n: int, port: int, publisher_id: str) -> None:
    more_descriptors()
    counter = Counter(n)

    async def handler(event: PresenceChanged) -> None:
        counter.arrived(event.presence.text)
        if counter.done.is_set() and counter.seen == n:
            counter.seen += 1  # (told once)
            emit(text=event.presence.text, t=time.monotonic())

    where = EndPoint("127.0.0.1", port)
    async with anyio.create_task_group() as tg:
        contacts = []
        for i in range(1, n + 1):
            node = await tg.start(run_node, Node(identity=subscriber(i), listen=("127.0.0.1", 0)))
            await node.sign_in(Scope.INTERNET)
            node.add_presence_handler(handler)
            contacts.append(await node.contacts.add(PeerId.parse(publisher_id), endpoints=[where]))
            if i % 500 == 0:
                emit(started=i)
        counter.expect("\0")  # (nothing yet: subscribe() waits for each first state)
        # SUBSCRIBE_BATCH at a time: one at a time, each waited for its round trips to the other
        # process while both cores idled in turn (a minute of the run for 5,000).
        for start in range(0, n, SUBSCRIBE_BATCH):
            async with anyio.create_task_group() as batch:
                for contact in contacts[start : start + SUBSCRIBE_BATCH]:
                    batch.start_soon(contact.subscribe)
            done = min(start + SUBSCRIBE_BATCH, n)
            if done % 500 == 0:
                emit(subscribed=done)
        async for line in anyio.wrap_file(sys.stdin):
            command = json.loads(line)
            if command["do"] != "expect":
                break
            counter.expect(command["text"])
            emit(expecting=command["text"])
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    if sys.argv[1] == "publisher":
        anyio.run(publisher, int(sys.argv[2]))
    else:
        anyio.run(subscribers, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
