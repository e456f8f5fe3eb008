"""Running nodes in a test: several :class:`~peerkit.Node` objects on one network in memory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from peerkit.discovery.memory import MemoryDiscovery
from peerkit.identity import Identity
from peerkit.node import Node
from peerkit.testing.memory import MemoryNetwork

__all__ = ("NICKNAMES", "node_pair", "nodes")

#: The nicknames :func:`nodes` gives, in order (then ``node5``, ``node6``...).
NICKNAMES = ("alice", "bob", "carol", "dave")


@contextlib.asynccontextmanager
async def nodes(
    count: int = 2,
    *,
    nicknames: Sequence[str] | None = None,
    network: MemoryNetwork | None = None,
    discovery: MemoryDiscovery | bool | None = True,
    data_dir: str | os.PathLike[str] | None = None,
    port: int = 0,
    **options: Any,
) -> AsyncIterator[list[Node]]:
    """``count`` running nodes on one in-memory network; all stop when the block ends.

    Node ``i`` listens on ``10.0.0.{i + 1}`` (at ``port``; 0 picks one) with a fresh identity.
    With ``discovery`` (the default) they share one :class:`MemoryDiscovery` medium, so that once
    signed in to NEAR_ME they see each other; give a medium of your own, or False for none. With a
    ``data_dir``, each node keeps its key and database in a subdirectory named by its nickname (and
    has the same identity in the next run); without one, each has a fresh identity in memory.
    Other keyword arguments go to every :class:`~peerkit.Node`::

        async with nodes(2) as (alice, bob):
            peer = await alice.peer_at(bob.endpoint.host, bob.endpoint.port)

    :raises ValueError: for fewer than one node, or too few nicknames.
    """
    if count < 1:
        raise ValueError(f"nodes() makes at least one node, not {count}")
    names = (
        list(nicknames) if nicknames is not None else [*NICKNAMES, *(f"node{i + 1}" for i in range(4, count))]
    )
    if len(names) < count:
        raise ValueError(f"{count} nodes need {count} nicknames; {len(names)} were given")
    net = network if network is not None else MemoryNetwork()
    medium = MemoryDiscovery() if discovery is True else discovery or None
    async with contextlib.AsyncExitStack() as stack:
        running = []
        for i in range(count):
            node = Node(
                nickname=names[i],
                # With a data dir, the node keeps the identity it finds there (or makes one).
                identity=Identity.generate() if data_dir is None else None,
                data_dir=Path(data_dir) / names[i] if data_dir is not None else None,
                network=net,
                listen=(f"10.0.0.{i + 1}", port),
                discovery=[medium] if medium is not None else [],
                **options,
            )
            running.append(await stack.enter_async_context(node))
        yield running


@contextlib.asynccontextmanager
async def node_pair(**options: Any) -> AsyncIterator[tuple[Node, Node]]:
    """Two running nodes, ``alice`` and ``bob`` (see :func:`nodes` for the options)."""
    async with nodes(2, **options) as (alice, bob):
        yield alice, bob
