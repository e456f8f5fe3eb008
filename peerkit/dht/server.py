"""What a DHT node answers to the queries of others (sans-IO).

:class:`Responder` takes a parsed :class:`~peerkit.dht.krpc.Query` and the address it came from,
and returns the bytes to send back: ``ping``, ``find_node`` and ``get_peers`` (the nodes nearest
the target, and a write token; this node keeps no torrent peers), BEP 44's ``get`` (the stored item
when its seq is above the one asked for) and ``put`` (checked and stored within bounds, or refused
with BEP 44's code). Every answer says where the asker was seen from (``ip``, BEP 42). A querier
that is not read-only (BEP 43) is added to the routing table.

Nodes are given in the asker's family (``nodes`` for IPv4, ``nodes6`` for IPv6), or in those its
``want`` names (BEP 32: ``n4``, ``n6``), from the routing table of the other family's node when this
node runs beside one (``sibling``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Final

from peerkit.dht.bencode import BencodeError, Value, decode, encode
from peerkit.dht.bep44 import ItemRefused, MutableItem
from peerkit.dht.krpc import Address, Error, ErrorCode, Node, Query, Response, compact_nodes
from peerkit.dht.routing import K, RoutingTable, distance
from peerkit.dht.storage import ItemStore, Tokens

__all__ = ("Responder",)

#: Nodes given in one answer.
ANSWER_NODES: Final = K


class Responder:
    """Answers queries from the routing table, the tokens and the item store.

    ``group_of`` says which group an address belongs to in the store's fair share (default: its
    host).
    """

    def __init__(
        self,
        table: RoutingTable,
        tokens: Tokens,
        store: ItemStore,
        *,
        sibling: RoutingTable | None = None,
        group_of: Callable[[Address], str] = operator.itemgetter(0),
    ) -> None:
        self.table = table
        self.tokens = tokens
        self.store = store
        self.sibling = sibling
        self.group_of = group_of

    @property
    def own_id(self) -> bytes:
        """This node's id."""
        return self.table.own_id

    def answer(self, query: Query, source: Address, now: float) -> bytes:
        """The reply to ``query`` from ``source``."""
        if not query.read_only:
            self.table.seen(Node(query.sender, source), now)
        method = query.method
        values: dict[bytes, Value] = {b"id": self.own_id}
        want = _wanted(query, source)
        if method == b"ping":
            pass
        elif method == b"find_node":
            self._nodes(values, _bytes(query.args[b"target"]), want)
        elif method == b"get_peers":
            self._nodes(values, _bytes(query.args[b"info_hash"]), want)
            values[b"token"] = self.tokens.token(source, now)
        elif method == b"get":
            target = _bytes(query.args[b"target"])
            self._nodes(values, target, want)
            values[b"token"] = self.tokens.token(source, now)
            item = self.store.get(target, now)
            above = query.args.get(b"seq")
            if item is not None and not (isinstance(above, int) and item.seq <= above):
                values.update({b"k": item.key, b"seq": item.seq, b"sig": item.sig, b"v": decode(item.value)})
        elif method == b"put":
            refusal = self._put(query, source, now)
            if refusal is not None:
                return refusal
        return Response(query.tid, values, ip=source).encode()

    def _nodes(self, values: dict[bytes, Value], target: bytes, want: frozenset[bytes]) -> None:
        tables = [self.table] if self.sibling is None else [self.table, self.sibling]
        for key, ipv6, family in ((b"nodes", False, b"n4"), (b"nodes6", True, b"n6")):
            if family not in want:
                continue
            nodes = [n for table in tables for n in table.closest(target, 2 * ANSWER_NODES)]
            blob = compact_nodes(sorted(nodes, key=lambda n: distance(n.id, target)), ipv6=ipv6)
            if blob:
                values[key] = blob[: ANSWER_NODES * (38 if ipv6 else 26)]

    def _put(self, query: Query, source: Address, now: float) -> bytes | None:
        args = query.args
        token = args[b"token"]
        if not isinstance(token, bytes) or not self.tokens.valid(source, token, now):
            return Error(query.tid, ErrorCode.PROTOCOL, "invalid token").encode()
        key, sig, seq = args.get(b"k"), args.get(b"sig"), args.get(b"seq")
        salt, cas = args.get(b"salt", b""), args.get(b"cas")
        if (
            not isinstance(key, bytes)
            or len(key) != 32
            or not isinstance(sig, bytes)
            or len(sig) != 64
            or not isinstance(seq, int)
            or not isinstance(salt, bytes)
            or (cas is not None and not isinstance(cas, int))
        ):
            return Error(query.tid, ErrorCode.PROTOCOL, "a mutable put needs k, sig and seq").encode()
        try:
            item = MutableItem(key, salt, seq, encode(args[b"v"]), sig)
        except BencodeError:
            return Error(query.tid, ErrorCode.PROTOCOL, "v cannot be stored").encode()
        try:
            self.store.put(item, now, cas=cas if isinstance(cas, int) else None, group=self.group_of(source))
        except ItemRefused as exc:
            return Error(query.tid, exc.code.value, exc.text).encode()
        return None


def _wanted(query: Query, source: Address) -> frozenset[bytes]:
    # The families whose nodes to give (BEP 32): those ``want`` names, else the asker's own.
    want = query.args.get(b"want")
    if isinstance(want, list):
        named = frozenset(w for w in want if w in (b"n4", b"n6"))
        if named:
            return named
    return frozenset({b"n6" if ":" in source[0] else b"n4"})


def _bytes(value: Value) -> bytes:
    assert isinstance(value, bytes)  # krpc.parse checked it
    return value
