"""A DHT testnet in one process, on a :class:`~peerkit.dht.transport.MemoryDatagramNetwork`.

For tests and benchmarks of code that uses the DHT: ``count`` nodes that never touch a socket,
joined to each other and to nothing else::

    async with memory_testnet(100) as testnet:
        await testnet.nodes[3].put(item)
        found = await testnet.nodes[60].get(key, salt)
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import anyio.abc

from peerkit.dht.node import DhtNode
from peerkit.dht.routing import K
from peerkit.dht.transport import MemoryDatagramNetwork

__all__ = ("Testnet", "memory_testnet")


@dataclass(slots=True)
class Testnet:
    """The running nodes of :func:`memory_testnet` and the network they share."""

    network: MemoryDatagramNetwork
    nodes: list[DhtNode] = field(default_factory=list)
    _scopes: list[anyio.CancelScope] = field(default_factory=list)

    def kill(self, node: DhtNode) -> None:
        """Stop ``node`` at once, as a crash would (it answers nothing from now on)."""
        self._scopes[self.nodes.index(node)].cancel()

    def alive(self) -> list[DhtNode]:
        """The nodes not killed."""
        return [n for n, s in zip(self.nodes, self._scopes, strict=True) if not s.cancel_called]


@contextlib.asynccontextmanager
async def memory_testnet(
    count: int,
    network: MemoryDatagramNetwork | None = None,
    *,
    seed: int = 2,
    settle: float = 10.0,
) -> AsyncIterator[Testnet]:
    """``count`` running DHT nodes; each joins through the first and up to three earlier ones.

    Yields once every node knows at least K others (or after ``settle`` seconds), and stops them
    all on exit. The network's delay and loss, if any, apply to the joins too; a benchmark that
    wants them for its measurements only sets them after this yields.
    """
    net = network or MemoryDatagramNetwork(seed=1)
    rng = random.Random(seed)
    testnet = Testnet(net)
    async with anyio.create_task_group() as tg:
        net.run_delays_in(tg)

        async def run(
            node: DhtNode, scope: anyio.CancelScope, *, task_status: anyio.abc.TaskStatus[None]
        ) -> None:
            with scope:
                await node.run(task_status=task_status)

        for _ in range(count):
            earlier = [n.address for n in testnet.nodes]
            bootstrap = earlier[:1] + rng.sample(earlier[1:], min(3, len(earlier) - 1)) if earlier else []
            node = DhtNode(net.bind(), bootstrap=bootstrap)
            scope = anyio.CancelScope()
            await tg.start(run, node, scope)
            testnet.nodes.append(node)
            testnet._scopes.append(scope)
        with anyio.move_on_after(settle):
            await anyio.sleep(0.2)
            while any(len(n.table) < min(K, count - 1) for n in testnet.nodes):  # noqa: ASYNC110
                await anyio.sleep(0.1)  # (polled: a table has no event to wait on)
        await testnet.nodes[0].join()  # the first learns of the later ones
        try:
            yield testnet
        finally:
            tg.cancel_scope.cancel()
