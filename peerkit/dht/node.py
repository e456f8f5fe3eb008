"""A Mainline DHT node: the sans-IO parts run over a :class:`~peerkit.dht.transport.Datagrams`.

:class:`DhtNode` answers queries (unless read-only, BEP 43), joins through its bootstrap
addresses, and offers BEP 44 :meth:`DhtNode.get` and :meth:`DhtNode.put`. With
``read_only=None`` it finds out whether others can reach it: it serves, and a query from an
address it never sent to proves it reachable; when none comes within its reachability window
(behind a NAT or a firewall that drops what it did not ask for), it runs read-only, so that
nobody keeps it in a routing table in vain, and tries again every :data:`REPROBE` seconds.

Each query has a hard timeout (:data:`QUERY_TIMEOUT`); lookups move on from a silent node after
the soft timeout (:mod:`peerkit.dht.lookup`). It is polite: no remote address gets more than
:data:`POLITE_RATE` packets a second from it on average (bursts of :data:`POLITE_BURST`), and it
answers at most four times as many queries a second from any one address (more are dropped;
the addresses of one IPv6 /48 count as one, as its /64s are free to whoever has it). On
loopback, where the nodes of one machine share an address, the budgets are per node.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc

from peerkit.dht.bencode import BencodeError, Value, encode
from peerkit.dht.bep44 import MutableItem, target
from peerkit.dht.external import ExternalAddress
from peerkit.dht.krpc import ID_SIZE, Address, Error, KrpcError, Node, Query, Response, parse
from peerkit.dht.lookup import Lookup, RoundTrips
from peerkit.dht.routing import K, RoutingTable
from peerkit.dht.server import Responder
from peerkit.dht.storage import ItemStore, Tokens
from peerkit.dht.transport import Datagrams
from peerkit.net.transport import ON_LINK
from peerkit.proto.admission import Charge, RequestBudget, RequestPolicy, group_of, source_of

__all__ = (
    "LOOKUP_TIMEOUT",
    "POLITE_BURST",
    "POLITE_RATE",
    "QUERY_TIMEOUT",
    "REACHABILITY_WINDOW",
    "DhtNode",
    "DhtStatus",
    "PutResult",
)

log = logging.getLogger(__name__)

#: Seconds a query may go unanswered before it has failed.
QUERY_TIMEOUT: Final = 2.0
#: Seconds a whole get or put may take.
LOOKUP_TIMEOUT: Final = 10.0
#: Packets a second one remote address gets from this node, on average, and at once.
POLITE_RATE: Final = 4.0
POLITE_BURST: Final = 10
#: Nodes a put goes to, and how many must have stored it before it returns (the others are
#: still asked, in the background).
PUT_WIDTH: Final = 20
PUT_QUORUM: Final = 8
#: Seconds between tries to join while the routing table holds fewer than K nodes, and between
#: checks once it holds more.
REJOIN: Final = 2.0
REFRESH: Final = 60.0
#: Refusals in a row that would disconnect a peer: never, for packets (they are only dropped).
NEVER: Final = 2**31
#: Seconds a node deciding its own reachability waits for a query it did not ask for, and
#: between tries once it found itself unreachable.
REACHABILITY_WINDOW: Final = 300.0
REPROBE: Final = 3600.0
#: Addresses remembered as sent to (a query from any other proves this node reachable).
CONTACTED: Final = 4096
#: The longest datagram read (a put of the largest item takes about 1,300 bytes); longer ones
#: are dropped unread.
MAX_DATAGRAM: Final = 2048


@dataclass(slots=True)
class _Pending:
    node: Node
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: Response | Error | None = None


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a put achieved."""

    #: Nodes that stored the item by the time the put returned.
    stored: int
    #: Nodes that refused it, with their BEP 44 code (302: they hold a newer seq).
    refused: dict[int, int]
    #: Nodes near the target that held this very item already.
    copies: int = 0
    #: Whether the put was skipped because enough copies were found (``skip_above``).
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class DhtStatus:
    """What a :class:`DhtNode` is doing (:meth:`DhtNode.status`)."""

    #: Where it listens.
    address: Address
    #: Nodes in its routing table.
    nodes: int
    #: Whether it answers no queries (BEP 43).
    read_only: bool
    #: Whether others reached it with queries it did not ask for (None: not known yet).
    reachable: bool | None
    #: Items it stores for others, and their bytes.
    items: int
    item_bytes: int
    #: Queries it answered, and sent.
    queries_answered: int
    queries_sent: int
    #: Where others see it (the ``ip`` of their responses, BEP 42), once enough agree; behind
    #: a NAT, the router's public address and the port it mapped.
    external_address: Address | None = None


class DhtNode:
    """One DHT node (see the module docstring).

    :param transport: where it sends and receives.
    :param bootstrap: addresses to join through (never a default here: the caller chooses).
    :param node_id: its id (default: random).
    :param read_only: do not answer queries, and say so in every query (BEP 43); None: decide
        by reachability (see the module docstring).
    :param reachability_window: seconds to wait for proof of reachability (``read_only=None``).
    """

    def __init__(
        self,
        transport: Datagrams,
        *,
        bootstrap: Sequence[Address] = (),
        node_id: bytes | None = None,
        read_only: bool | None = False,
        store: ItemStore | None = None,
        reachability_window: float = REACHABILITY_WINDOW,
    ) -> None:
        self.transport = transport
        self._address = transport.local_address
        self.bootstrap_addresses = list(bootstrap)
        self.id = node_id or os.urandom(ID_SIZE)
        self._auto = read_only is None
        self.read_only = bool(read_only)
        #: Whether others reached it unasked (None: not known yet; see the module docstring).
        self.reachable: bool | None = None
        self.reachability_window = reachability_window
        self._contacted: OrderedDict[str, None] = OrderedDict()
        self.queries_answered = 0
        self.table = RoutingTable(self.id)
        #: The routing table of this node's twin in the other address family, if it has one (its
        #: nodes answer BEP 32's ``want``).
        self.sibling_table: RoutingTable | None = None
        self.store = store or ItemStore()
        self._responder: Responder | None = None
        self._pending: dict[bytes, _Pending] = {}
        self._next_tid = int.from_bytes(os.urandom(2), "big")
        # A token bucket per remote (bounded), as a node keeps for the requests of its peers.
        self._out = RequestBudget(RequestPolicy(rate=POLITE_RATE, burst=POLITE_BURST, strikes=NEVER))
        self._in = RequestBudget(RequestPolicy(rate=4 * POLITE_RATE, burst=4 * POLITE_BURST, strikes=NEVER))
        self._tg: anyio.abc.TaskGroup | None = None
        #: Queries sent (for the benchmark's counts).
        self.queries_sent = 0
        #: The round trips of answered queries (they set the lookups' soft timeout).
        self.round_trips = RoundTrips()
        #: Where others see this node (the ``ip`` field of their responses).
        self.external = ExternalAddress()

    @staticmethod
    def _polite(budget: RequestBudget, key: str, now: float) -> bool:
        # Whether a packet to or from the remote ``key`` (_budget_key) is within its budget (it
        # is counted if so).
        return budget.charge(key.encode(), now) is Charge.ANSWER

    @property
    def address(self) -> Address:
        """Where it listens (known also once it stopped)."""
        return self._address

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled: answer queries and join through the bootstrap addresses.
        ``task_status.started()`` comes once it is receiving (before the join is done)."""
        self._responder = Responder(
            self.table,
            Tokens(anyio.current_time()),
            self.store,
            sibling=self.sibling_table,
            group_of=_asker_key,
        )
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    tg.start_soon(self._receive_loop)
                    if self._auto:
                        tg.start_soon(self._find_reachability)
                    task_status.started()
                    await self.join()
                    while True:  # joined through nobody (yet): try again, then now and then
                        await anyio.sleep(REJOIN if len(self.table) < K else REFRESH)
                        if len(self.table) < K:
                            await self.join()
                finally:
                    # Before the group waits for its tasks: once they end, trio closes it to new
                    # ones, and a put from another task must not hand its stragglers over then.
                    self._tg = None
        finally:
            with anyio.CancelScope(shield=True):
                await self.transport.aclose()

    def status(self) -> DhtStatus:
        """What it is doing now."""
        return DhtStatus(
            address=self.address,
            nodes=len(self.table),
            read_only=self.read_only,
            reachable=self.reachable,
            items=len(self.store),
            item_bytes=self.store.size,
            queries_answered=self.queries_answered,
            queries_sent=self.queries_sent,
            external_address=self.external.address,
        )

    # -- reachability (BEP 43) ---------------------------------------------------------------
    def _note_contacted(self, key: str) -> None:
        self._contacted[key] = None
        self._contacted.move_to_end(key)
        if len(self._contacted) > CONTACTED:
            self._contacted.popitem(last=False)

    def _reached(self) -> None:
        # A query from an address never sent to: others can reach this node.
        if self.read_only:
            log.info("DHT node %s:%d is reachable after all: serving queries", *self.address)
        self.reachable, self.read_only = True, False

    async def _find_reachability(self) -> None:
        while True:
            await anyio.sleep(self.reachability_window)
            if self.reachable:
                return
            self.reachable, self.read_only = False, True
            log.info(
                "DHT node %s:%d got no query it did not ask for in %.0f s: read-only (BEP 43)",
                *self.address,
                self.reachability_window,
            )
            await anyio.sleep(REPROBE)
            self.read_only = False  # serving again: nodes that hear from it may keep it, and ask
            await self.join()

    # -- receiving ---------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        while True:
            try:
                data, source = await self.transport.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
            await self._received(data, source)

    async def _received(self, data: bytes, source: Address) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        now = anyio.current_time()
        try:
            message = parse(data)
        except KrpcError as exc:
            if exc.tid is not None and not self.read_only and self._polite(self._in, _asker_key(source), now):
                await self.transport.send(exc.reply(), source)
            return
        if isinstance(message, Query):
            remote = _budget_key(source)
            if self._auto and not self.reachable and remote not in self._contacted:
                self._reached()
            if (
                self.read_only
                or self._responder is None
                or not self._polite(self._in, _asker_key(source), now)
            ):
                return
            self.queries_answered += 1
            await self.transport.send(self._responder.answer(message, source, now), source)
            return
        pending = self._pending.get(message.tid)
        if pending is None or pending.node.address != source:
            return  # not an answer to anything we asked (or from elsewhere): ignored
        if isinstance(message, Response) and pending.node.id and message.sender != pending.node.id:
            return
        del self._pending[message.tid]
        pending.answer = message
        pending.done.set()

    # -- asking ------------------------------------------------------------------------------
    def _tid(self) -> bytes:
        for _ in range(65536):
            self._next_tid = (self._next_tid + 1) & 0xFFFF
            tid = self._next_tid.to_bytes(2, "big")
            if tid not in self._pending:
                return tid
        raise RuntimeError("every transaction id is in use")

    async def query(self, node: Node, method: bytes, args: dict[bytes, Value]) -> Response | Error | None:
        """Ask ``node`` (its id may be empty when unknown: a bootstrap address); None when it
        does not answer within :data:`QUERY_TIMEOUT` or politeness forbids asking now."""
        sent = anyio.current_time()
        remote = _budget_key(node.address)
        if not self._polite(self._out, remote, sent):
            return None
        tid = self._tid()
        pending = self._pending[tid] = _Pending(node)
        self.queries_sent += 1
        self._note_contacted(remote)
        try:
            await self.transport.send(
                Query(tid, method, {b"id": self.id, **args}, self.read_only).encode(), node.address
            )
            with anyio.move_on_after(QUERY_TIMEOUT):
                await pending.done.wait()
        finally:
            self._pending.pop(tid, None)
        answer = pending.answer
        if answer is not None:
            self.round_trips.seen(anyio.current_time() - sent)
        if isinstance(answer, Response) and answer.ip is not None:
            self.external.seen(remote, answer.ip)
        if isinstance(answer, Response):
            if (node.id and not self.read_only) or not node.id:
                self.table.seen(Node(answer.sender, node.address), anyio.current_time())
        elif answer is None and node.id:
            self.table.failed(node)
        return answer

    async def _lookup(
        self, key: bytes, method: bytes, args: dict[bytes, Value], *, width: int, deadline: float
    ) -> Lookup:
        lookup = Lookup(key, width=width, soft_timeout=self.round_trips.soft_timeout)
        lookup.add(self.table.closest(key, width))
        changed = anyio.Event()

        async def ask(node: Node) -> None:
            nonlocal changed
            answer = await self.query(node, method, args)
            if isinstance(answer, Response):
                lookup.answered(node, answer)
            else:
                lookup.failed(node)
            changed.set()

        async with anyio.create_task_group() as tg:
            while True:
                now = anyio.current_time()
                lookup.soft_timeout = self.round_trips.soft_timeout
                if lookup.done(now) or now >= deadline:
                    break
                for node in lookup.due(now):
                    tg.start_soon(ask, node)
                changed = anyio.Event()
                with anyio.move_on_after(0.05):
                    await changed.wait()
            tg.cancel_scope.cancel()
        return lookup

    async def join(self) -> None:
        """Ask the bootstrap addresses for the nodes nearest this one, then look this id up."""
        find: dict[bytes, Value] = {b"target": self.id}
        async with anyio.create_task_group() as tg:
            for address in self.bootstrap_addresses:
                tg.start_soon(self.query, Node(b"", address), b"find_node", find)
        if len(self.table):
            deadline = anyio.current_time() + LOOKUP_TIMEOUT
            await self._lookup(self.id, b"find_node", {b"target": self.id}, width=8, deadline=deadline)

    # -- BEP 44 --------------------------------------------------------------------------------
    async def get(
        self, key: bytes, salt: bytes = b"", *, timeout: float = LOOKUP_TIMEOUT
    ) -> MutableItem | None:
        """The newest valid item stored under ``key`` and ``salt``, or None when no node near
        its target holds one (items that do not verify are ignored)."""
        tops = await self.newest(key, salt, timeout=timeout)
        return tops[0] if tops else None

    async def newest(
        self, key: bytes, salt: bytes = b"", *, timeout: float = LOOKUP_TIMEOUT
    ) -> list[MutableItem]:
        """Every distinct valid item found under ``key`` and ``salt`` at the highest seq, the one
        :meth:`get` returns first (more than one: values written under one seq, a split)."""
        tops, _, _ = await self._get(key, salt, timeout, width=K)
        return tops

    async def _get(
        self, key: bytes, salt: bytes, timeout: float, *, width: int
    ) -> tuple[list[MutableItem], Lookup, list[MutableItem]]:
        # The ``width`` nearest nodes that answer are asked: K for a read (a put reached the
        # PUT_WIDTH nearest), PUT_WIDTH for a put (it needs their write tokens).
        wanted = target(key, salt)
        deadline = anyio.current_time() + timeout
        lookup = await self._lookup(wanted, b"get", {b"target": wanted}, width=width, deadline=deadline)
        found = [item for _, response in lookup.answers() if (item := _item(response, key, salt))]
        local = self.store.get(wanted, anyio.current_time())
        return _newest([*found, *([local] if local is not None else [])]), lookup, found

    async def put(
        self,
        item: MutableItem,
        *,
        cas: int | None = None,
        timeout: float = LOOKUP_TIMEOUT,
        skip_above: int | None = None,
    ) -> PutResult:
        """Store ``item`` on the :data:`PUT_WIDTH` nodes nearest its target that gave a write
        token; returns once :data:`PUT_QUORUM` of them stored it (or each has answered or timed
        out), while the others are still asked in the background. With ``skip_above``, nothing
        is stored when more than that many of the nearest nodes hold this very item already (a
        republish that is not needed)."""
        _, lookup, found = await self._get(item.key, item.salt, timeout, width=PUT_WIDTH)
        return await self._store(item, lookup, found, cas, skip_above)

    async def update(
        self,
        key: bytes,
        salt: bytes,
        build: Callable[[list[MutableItem]], MutableItem],
        *,
        timeout: float = LOOKUP_TIMEOUT,
        skip_above: int | None = None,
    ) -> tuple[PutResult, MutableItem]:
        """Read-modify-write: find the newest items under ``key`` and ``salt`` (as
        :meth:`newest`: none, one, or several under one seq), store what ``build`` makes of them,
        with BEP 44's cas set to the seq found (nodes that hold another seq refuse it: 301), in
        one lookup. Returns what the put achieved and the item stored (see :meth:`put` for
        ``skip_above``)."""
        tops, lookup, found = await self._get(key, salt, timeout, width=PUT_WIDTH)
        item = build(tops)
        cas = tops[0].seq if tops and tops[0].seq < item.seq else None
        return await self._store(item, lookup, found, cas, skip_above), item

    async def _store(
        self,
        item: MutableItem,
        lookup: Lookup,
        found: list[MutableItem],
        cas: int | None,
        skip_above: int | None,
    ) -> PutResult:
        copies = sum(1 for held in found if held == item)
        if skip_above is not None and copies > skip_above:
            return PutResult(0, {}, copies=copies, skipped=True)
        args: dict[bytes, Value] = {
            b"k": item.key,
            b"seq": item.seq,
            b"sig": item.sig,
            b"v": item.decoded(),
        }
        if item.salt:
            args[b"salt"] = item.salt
        if cas is not None:
            args[b"cas"] = cas
        with contextlib.suppress(Exception):
            self.store.put(item, anyio.current_time(), cas=cas)  # this node holds it too
        targets = [
            (node, token)
            for node, response in lookup.answers()[:PUT_WIDTH]
            if isinstance(token := response.values.get(b"token"), bytes)
        ]
        quorum = min(PUT_QUORUM, len(targets))
        stored, answered = 0, 0
        refused: dict[int, int] = {}
        enough = anyio.Event()

        async def put_one(node: Node, token: bytes) -> None:
            nonlocal stored, answered
            answer: Response | Error | None = None
            try:
                answer = await self.query(node, b"put", {**args, b"token": token})
            finally:  # (cancelled as the node stops: no answer, and the caller is told)
                answered += 1
                if isinstance(answer, Response):
                    stored += 1
                elif isinstance(answer, Error):
                    refused[answer.code] = refused.get(answer.code, 0) + 1
                if stored >= quorum or answered == len(targets):
                    enough.set()

        if self._tg is None:  # not running: wait for every answer
            async with anyio.create_task_group() as tg:
                for node, token in targets:
                    tg.start_soon(put_one, node, token)
        elif targets:
            for node, token in targets:  # those past the quorum finish in the background
                self._tg.start_soon(put_one, node, token)
            await enough.wait()
        return PutResult(stored, dict(refused), copies=copies)


def _asker_key(address: Address) -> str:
    # Whose budget of answers a query counts against: the asker's group (an IPv4 address; the
    # /48 of an IPv6 one, whose /64s, and each /64's addresses, are free to whoever has it); on
    # loopback, each node.
    if _loopback(address[0]):
        return f"{address[0]}:{address[1]}"
    return group_of(source_of(address, ON_LINK))


def _budget_key(address: Address) -> str:
    # Whose packet budget a packet counts against: the remote host (as other DHT nodes ban by
    # address); on loopback, where many nodes of one machine share the address, each node.
    host = address[0]
    return f"{host}:{address[1]}" if _loopback(host) else host


def _loopback(host: str) -> bool:
    # Whether ``host`` is this machine's, where the DHT nodes of one machine share the address.
    return host.startswith("127.") or host == "::1"


def _newest(items: list[MutableItem]) -> list[MutableItem]:
    # The distinct items at the highest seq, the winner first. Two values under one seq (some
    # implementations, libtorrent among them, take a new value at the seq they hold; two writers
    # in the same millisecond) are told apart the same way by every reader: the one more nodes
    # hold, then the greater signature.
    if not items:
        return []
    top = max(item.seq for item in items)
    held = Counter(item for item in items if item.seq == top)
    return sorted(held, key=lambda item: (held[item], item.sig), reverse=True)


def _item(response: Response, key: bytes, salt: bytes) -> MutableItem | None:
    values: dict[bytes, Any] = response.values
    k, seq, sig, v = values.get(b"k"), values.get(b"seq"), values.get(b"sig"), values.get(b"v")
    if k != key or not isinstance(seq, int) or not isinstance(sig, bytes) or v is None:
        return None
    try:
        item = MutableItem(key, salt, seq, encode(v), sig)
    except BencodeError:
        return None
    return item if item.verify() else None
