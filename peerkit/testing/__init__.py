"""Helpers for testing code built on peerkit without a network.

- :func:`nodes` and :func:`node_pair` run several :class:`~peerkit.Node` objects on one network in
  memory, ready to invite, stream to and watch each other: the quickest start for an
  application's own tests.
- :func:`memory_stream_pair` gives two connected anyio byte streams, so a
  :class:`~peerkit.SecureChannel` (or anything else that takes a byte stream) can run in memory.
- :class:`MemoryNetwork` is a whole network in memory: give it to several
  :class:`~peerkit.Node` objects (``Node(network=net, ...)``) and they listen, dial, invite and stream
  to each other with no socket. It can also cut a node off silently, like a pulled cable.
- :class:`MemoryDiscovery` is an in-memory directory: nodes signed in to ``NEAR_ME`` publish their
  id, nickname and endpoint there, and :meth:`~peerkit.Node.resolve` finds peers through it.
- :func:`check_discovery_provider` runs the conformance checks a discovery provider should pass;
  :func:`running_tasks` counts tasks on asyncio or trio; :class:`NamespaceLan` is a LAN of
  Linux network namespaces for tests of real discovery.
"""

from peerkit.discovery.memory import MemoryDiscovery
from peerkit.testing.conformance import check_discovery_provider
from peerkit.testing.lan import HomeRouter, NamespaceLan
from peerkit.testing.memory import MemoryByteStream, MemoryListener, MemoryNetwork, memory_stream_pair
from peerkit.testing.nodes import node_pair, nodes
from peerkit.testing.tasks import running_tasks

__all__ = (
    "HomeRouter",
    "MemoryByteStream",
    "MemoryDiscovery",
    "MemoryListener",
    "MemoryNetwork",
    "NamespaceLan",
    "check_discovery_provider",
    "memory_stream_pair",
    "node_pair",
    "nodes",
    "running_tasks",
)
