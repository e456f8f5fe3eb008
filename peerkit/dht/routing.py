"""The routing table (BEP 5): nodes by XOR distance, at most K per bucket (sans-IO).

Bucket ``i`` holds nodes whose distance from this node's id has ``i`` as the index of its highest
set bit (0-159), so nearer buckets cover fewer ids, as Kademlia's splitting tree does. A full
bucket keeps its nodes while they answer: a newcomer waits in the bucket's small replacement
list and takes the place of a node that failed :data:`MAX_FAILURES` queries in a row.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from peerkit.dht.krpc import ID_SIZE, Address, Node

__all__ = ("MAX_FAILURES", "K", "RoutingTable", "distance")

#: Nodes per bucket.
K: Final = 8
#: Queries a node may fail in a row before it is dropped.
MAX_FAILURES: Final = 3
#: Newcomers remembered per full bucket.
REPLACEMENTS: Final = 8


def distance(a: bytes, b: bytes) -> int:
    """The XOR distance of two ids."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


@dataclass(slots=True)
class _Entry:
    node: Node
    seen: float
    failures: int = 0


class RoutingTable:
    """Nodes this node knows, by distance from ``own_id``."""

    def __init__(self, own_id: bytes) -> None:
        if len(own_id) != ID_SIZE:
            raise ValueError(f"a node id is {ID_SIZE} bytes, not {len(own_id)}")
        self.own_id = own_id
        # Buckets (and their waiting newcomers) by index, made when first needed: a node uses
        # a dozen or two of the 160.
        self._buckets: dict[int, OrderedDict[bytes, _Entry]] = {}
        self._waiting: dict[int, OrderedDict[bytes, Node]] = {}

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def _index(self, node_id: bytes) -> int | None:
        d = distance(self.own_id, node_id)
        return d.bit_length() - 1 if d else None

    def seen(self, node: Node, now: float) -> None:
        """``node`` answered (or queried us, and is not read-only): keep it, or keep it waiting."""
        if len(node.id) != ID_SIZE:
            return
        index = self._index(node.id)
        if index is None:
            return
        bucket = self._buckets.setdefault(index, OrderedDict())
        entry = bucket.get(node.id)
        if entry is not None:
            if entry.node.address != node.address:
                return  # an id moving to another address is not believed from a single packet
            entry.seen, entry.failures = now, 0
            bucket.move_to_end(node.id)
            return
        if len(bucket) < K:
            bucket[node.id] = _Entry(node, now)
            return
        waiting = self._waiting.setdefault(index, OrderedDict())
        waiting[node.id] = node
        waiting.move_to_end(node.id)
        while len(waiting) > REPLACEMENTS:
            waiting.popitem(last=False)

    def failed(self, node: Node) -> None:
        """A query to ``node`` went unanswered; after :data:`MAX_FAILURES` in a row it goes, and a
        waiting newcomer takes its place."""
        index = self._index(node.id)
        if index is None:
            return
        bucket = self._buckets.get(index)
        entry = None if bucket is None else bucket.get(node.id)
        if bucket is None or entry is None or entry.node.address != node.address:
            if index in self._waiting:
                self._waiting[index].pop(node.id, None)
            return
        entry.failures += 1
        if entry.failures >= MAX_FAILURES:
            del bucket[node.id]
            waiting = self._waiting.get(index)
            if waiting:
                _, newcomer = waiting.popitem()
                bucket[newcomer.id] = _Entry(newcomer, 0.0)

    def closest(self, target: bytes, count: int = K) -> list[Node]:
        """The ``count`` known nodes nearest ``target``."""
        entries = [
            e.node for bucket in self._buckets.values() for e in bucket.values() if e.failures < MAX_FAILURES
        ]
        entries.sort(key=lambda node: distance(node.id, target))
        return entries[:count]

    def nodes(self) -> list[Node]:
        """Every node in the table."""
        return [e.node for bucket in self._buckets.values() for e in bucket.values()]

    def stale(self, now: float, age: float) -> list[Node]:
        """Nodes not heard from in ``age`` seconds (to ping)."""
        return [e.node for bucket in self._buckets.values() for e in bucket.values() if now - e.seen > age]

    def contains(self, address: Address) -> bool:
        """Whether a node at ``address`` is in the table."""
        return any(e.node.address == address for bucket in self._buckets.values() for e in bucket.values())
