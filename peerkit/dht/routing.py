"""The routing table (BEP 5): nodes by XOR distance, at most K per bucket (sans-IO).

Bucket ``i`` holds nodes whose distance from this node's id has ``i`` as the index of its highest
set bit (0-159), so nearer buckets cover fewer ids, as Kademlia's splitting tree does. A full
bucket keeps its nodes while they answer: a newcomer waits in the bucket's small replacement
list and takes the place of a node that failed :data:`MAX_FAILURES` queries in a row.

Ids cost nothing, so one host could otherwise fill the buckets near this node's id with ids of its
choosing and see (or drop) every lookup that passes through them. As other DHT implementations
do, an address holds at most one place in the table, and two nodes of one bucket are never of one
network (an IPv4 /24, an IPv6 /64) when their addresses are public ones. Loopback addresses are
exempt (a testnet on one machine), and private ones from the second rule (a LAN's hosts share
a /24).
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from peerkit.dht.krpc import ID_SIZE, Address, Node

__all__ = ("MAX_FAILURES", "K", "RoutingTable", "distance", "network_of")

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
    #: The network a public address is in, that no other node of its bucket may share.
    network: str | None = None


@functools.lru_cache(maxsize=4096)
def _place(host: str) -> tuple[bool, str | None]:
    # Whether ``host`` holds a place of its own in the table (not loopback), and the network no
    # two nodes of a bucket may share (a public IPv4 address's /24, a public IPv6 address's /64).
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return True, None  # (a name: in-memory tests)
    if address.is_loopback:
        return False, None
    if not address.is_global:
        return True, None
    prefix = 24 if address.version == 4 else 64
    return True, str(ipaddress.ip_network((address, prefix), strict=False))


def network_of(address: Address) -> str:
    """Which network ``address`` counts as, where one node per network is believed (a lookup's
    candidates): a public IPv4 address's /24, a public IPv6 address's /64, any other address
    itself, and on loopback each port (a testnet on one machine)."""
    own, network = _place(address[0])
    if not own:
        return f"{address[0]}:{address[1]}"
    return address[0] if network is None else network


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
        self._hosts: dict[str, bytes] = {}  # the node id at each address that holds a place

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
            self._add(bucket, node, now)
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
            self._remove(bucket, entry)
            waiting = self._waiting.get(index)
            while waiting and not self._add(bucket, waiting.popitem()[1], 0.0):
                pass  # (one that may not take a place now is forgotten)

    def _add(self, bucket: OrderedDict[bytes, _Entry], node: Node, now: float) -> bool:
        # A place for ``node`` in ``bucket``, unless its address holds one already or a node of
        # the bucket is of its network (see the module docstring).
        host = node.address[0]
        own, network = _place(host)
        if own and host in self._hosts:
            return False
        if network is not None and any(e.network == network for e in bucket.values()):
            return False
        bucket[node.id] = _Entry(node, now, network=network)
        if own:
            self._hosts[host] = node.id
        return True

    def _remove(self, bucket: OrderedDict[bytes, _Entry], entry: _Entry) -> None:
        del bucket[entry.node.id]
        host = entry.node.address[0]
        if self._hosts.get(host) == entry.node.id:
            del self._hosts[host]

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
