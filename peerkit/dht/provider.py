"""The ``dht`` discovery provider: the Internet scope on the Mainline DHT.

Signed in to :attr:`~peerkit.Scope.INTERNET`, a node publishes its record in the DHT under its
own key, sealed with its locator key (:mod:`peerkit.dht.record`), and republishes it when it
changes and every hour (unless more than :data:`ENOUGH_COPIES` nodes near its target still hold
it). Its contacts, who hold its locator key from its card, find it with
:meth:`~peerkit.Node.resolve` (and invitations and fetches that fall back on it) wherever it is.
A stranger who knows its id learns only that a record exists. Signing out publishes a record
without addresses.

Bootstrap: by default the public Mainline routers (:data:`DEFAULT_BOOTSTRAP`); tests, examples
and private networks pass their own (``DhtDiscovery(bootstrap=[("10.0.0.2", 6881)])``, or the
provider name ``dht:HOST:PORT[,HOST:PORT...]``). A node joining the public DHT also joins
through its saved routing table and its contacts' last-known addresses: its DHT node takes the
UDP port of the number its node listens on for TCP, so a contact's endpoint is also where its DHT
node is. On the public DHT the node finds out whether it is reachable and runs read-only (BEP 43)
when it is not; with a bootstrap of your own it serves.

While it runs, the provider writes what its node is doing to ``dht-status.json`` in the node's
data dir every :data:`STATUS_EVERY` seconds and when it stops; ``peerkit dht status`` reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc

from peerkit.dht.bep44 import MutableItem
from peerkit.dht.krpc import Address, Node
from peerkit.dht.node import PUT_QUORUM, DhtNode
from peerkit.dht.record import (
    SALT,
    STALE,
    TAG_SIZE,
    LocatorError,
    carries,
    fit_record,
    merged_item,
    open_item,
    own_entry,
)
from peerkit.dht.transport import Datagrams, UdpDatagrams
from peerkit.discovery.base import Announcement, DiscoverySession, DiscoverySink, offers_relay, read_record
from peerkit.errors import InvalidRecord
from peerkit.identity import PeerId
from peerkit.model import EndPoint, Scope
from peerkit.net.transport import kept_to
from peerkit.statusfile import read_status_file, write_whole

__all__ = (
    "DEFAULT_BOOTSTRAP",
    "ENOUGH_COPIES",
    "REPUBLISH",
    "STATUS_FILE",
    "DhtDiscovery",
    "Published",
    "read_status",
)

log = logging.getLogger(__name__)

#: The public Mainline routers a node joins through when given no bootstrap of its own.
DEFAULT_BOOTSTRAP: Final[tuple[Address, ...]] = (
    ("router.bittorrent.com", 6881),
    ("dht.transmissionbt.com", 6881),
    ("router.utorrent.com", 6881),
    ("dht.libtorrent.org", 25401),
)
#: Seconds between republications of an unchanged record.
REPUBLISH: Final = 3600.0
#: Seconds, at most, between tries of a put that no node took.
RETRY_MAX: Final = 60.0
#: Seconds after a publication when the provider looks again (see _Session.keep_published).
SETTLE: Final = 2.0
#: Copies of the record found near its target above which a republication is skipped.
ENOUGH_COPIES: Final = 8
#: The file in the node's data dir that keeps the routing table's nodes between runs, and how
#: many it keeps.
NODES_FILE: Final = "dht-nodes.json"
SAVED_NODES: Final = 64
#: Contacts' last-known addresses a node joins the public DHT through, at most.
CONTACT_BOOTSTRAP: Final = 32
#: The file in the node's data dir that says what its DHT node is doing, and how often (seconds)
#: it is written.
STATUS_FILE: Final = "dht-status.json"
STATUS_EVERY: Final = 10.0


@dataclass(frozen=True, slots=True)
class Published:
    """The provider's last publication of the node's record."""

    #: When (Unix time), at which seq, on how many nodes, and whether it was a withdrawal.
    at: float
    seq: int
    stored: int
    withdrawn: bool


class DhtDiscovery:
    """People anywhere, through the Mainline DHT (see the module docstring).

    :param bootstrap: addresses to join through (default: :data:`DEFAULT_BOOTSTRAP`).
    :param host: the IPv4 address its UDP socket binds to (None: no IPv4 node). By default
        (``""``) where the node listens: every IPv4 address (``0.0.0.0``), or, for a node that
        listens on one address only, that one (and no IPv4 node when it is an IPv6 address): a
        node kept to loopback or to one network keeps its DHT node there too.
    :param host6: the IPv6 address of its IPv6 node (BEP 32), which runs when some bootstrap
        address (or a saved node) is IPv6 and the address can be bound (None: never). By default
        (``""``) where the node listens, as for ``host`` (every IPv6 address: ``::``).
    :param port: its UDP port, the same for both (0: the port number the node listens on for
        TCP, when it is free, else any; so a contact's endpoint is also where its DHT node is).
    :param transport: makes its datagram transport instead of UDP (an in-memory testnet).
    :param read_only: run read-only (BEP 43); None (the default) decides: on the public DHT by
        reachability, with a bootstrap of your own never.
    """

    scopes = Scope.INTERNET

    def __init__(
        self,
        *,
        bootstrap: Sequence[Address] | None = None,
        host: str | None = "",
        host6: str | None = "",
        port: int = 0,
        transport: Callable[[], Datagrams] | None = None,
        read_only: bool | None = None,
    ) -> None:
        if host is None and host6 is None and transport is None:
            raise ValueError("a DHT provider needs an IPv4 or an IPv6 address to bind")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"a DHT port is an int, not {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"a DHT port is 0 to 65535 (0: the node's own, else any), not {port}")
        self.bootstrap = (
            tuple(_bootstrap_address(a) for a in bootstrap) if bootstrap is not None else DEFAULT_BOOTSTRAP
        )
        self._public = bootstrap is None
        if read_only is None and bootstrap is not None:
            read_only = False  # a private DHT: its nodes are there to serve each other
        self.read_only = read_only
        self.host = host
        self.host6 = host6
        self.port = port
        self._transport = transport
        #: The running DHT nodes, IPv4 first (empty when the provider does not run).
        self.nodes: list[DhtNode] = []
        #: Its last publication (None: none yet).
        self.published: Published | None = None
        self._status_changed: anyio.Event | None = None  # made in run(): an event needs a loop

    @property
    def node(self) -> DhtNode | None:
        """The running DHT node (the IPv4 one when there are two; None when not running)."""
        return self.nodes[0] if self.nodes else None

    @property
    def name(self) -> str:
        """``dht``."""
        return "dht"

    async def run(self, sink: DiscoverySink, *, task_status: anyio.abc.TaskStatus[DiscoverySession]) -> None:
        """Join the DHT (IPv4, and IPv6 when it has a way in) and serve until cancelled."""
        known = [address for host, port in self.bootstrap for address in await _addresses(host, port)]
        state_dir = getattr(sink, "state_dir", None)
        saved = state_dir / NODES_FILE if isinstance(state_dir, Path) else None
        if saved is not None:  # the nodes known when it last stopped: a restart rejoins through them
            known += [a for a in await _load_nodes(saved) if a not in known]
        contacts = getattr(sink, "contact_addresses", None)
        if self._public and contacts is not None:  # their DHT nodes listen on their ports too
            known += [a for a in (await contacts())[:CONTACT_BOOTSTRAP] if a not in known]
        listen_port = getattr(sink, "listen_port", None)
        listen_host = getattr(sink, "listen_host", None)
        host, host6 = self._hosts(listen_host if isinstance(listen_host, str) else None)
        nodes = await self._nodes(known, listen_port if isinstance(listen_port, int) else None, host, host6)
        session = _Session(nodes, sink, _device_tag(state_dir if isinstance(state_dir, Path) else None), self)
        status = state_dir / STATUS_FILE if isinstance(state_dir, Path) else None
        self._status_changed = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                for node in nodes:
                    await tg.start(node.run)
                self.nodes = nodes
                tg.start_soon(session.keep_published)
                if status is not None:
                    tg.start_soon(self._keep_status, status, nodes)
                task_status.started(session)
        finally:
            self.nodes = []
            with anyio.CancelScope(shield=True):
                for node in nodes:  # a node that never ran still holds its socket
                    await node.transport.aclose()
                if status is not None:
                    await _write_json(status, self._status(nodes, running=False))
                if saved is not None:
                    share = SAVED_NODES // len(nodes)
                    await _save_nodes(saved, [n for node in nodes for n in node.table.nodes()[:share]])

    def _hosts(self, listen_host: str | None) -> tuple[str | None, str | None]:
        # The addresses to bind (None: no node of that family): those given, and where a default
        # is left (""), every address of the family, or the one the node listens on alone.
        one = kept_to(listen_host)
        host, host6 = self.host, self.host6
        if host == "":
            host = "0.0.0.0" if one is None else str(one) if one.version == 4 else None
        if host6 == "":
            host6 = "::" if one is None else str(one) if one.version == 6 else None
        if host is None and host6 is None:
            raise ValueError(
                f"the node listens on {listen_host} only, and the DHT provider binds no address of its "
                f"family (host={self.host!r}, host6={self.host6!r}): give it one"
            )
        return host, host6

    async def _nodes(
        self, known: list[Address], listen_port: int | None, host: str | None, host6: str | None
    ) -> list[DhtNode]:
        # One node per family that has a way in (BEP 32: separate tables, one id), IPv4 first, on
        # the UDP port of the number the node listens on for TCP when it is free.
        if self._transport is not None:
            return [DhtNode(self._transport(), bootstrap=known, read_only=self.read_only)]
        four = [a for a in known if ":" not in a[0]]
        six = [a for a in known if ":" in a[0]]
        node_id = os.urandom(20)
        nodes = []
        port = self.port or listen_port or 0
        if host is not None and (four or not six or host6 is None):
            transport = await self._bind(host, port)
            port = transport.local_address[1]
            nodes.append(DhtNode(transport, bootstrap=four, node_id=node_id, read_only=self.read_only))
        if host6 is not None and (six or not nodes):
            try:
                transport = await self._bind(host6, port)
            except OSError as exc:
                if not nodes:
                    raise
                log.info("no IPv6 DHT node: cannot bind %s: %s", host6, exc)
            else:
                nodes.append(DhtNode(transport, bootstrap=six, node_id=node_id, read_only=self.read_only))
        if len(nodes) == 2:  # each answers BEP 32's "want" with the other's nodes too
            nodes[0].sibling_table, nodes[1].sibling_table = nodes[1].table, nodes[0].table
        return nodes

    async def _bind(self, host: str, port: int) -> UdpDatagrams:
        # ``port``; when it is taken and no port was asked for, any.
        try:
            return await UdpDatagrams.bind(host, port)
        except OSError:
            if self.port or not port:
                raise
            log.info("UDP port %d is taken on %s: the DHT node takes another", port, host)
            return await UdpDatagrams.bind(host, 0)

    def _status(self, nodes: list[DhtNode], *, running: bool) -> dict[str, object]:
        published = self.published
        return {
            "running": running,
            "pid": os.getpid(),
            "updated": time.time(),
            "bootstrap": [f"{host}:{port}" for host, port in self.bootstrap],
            **asdict(nodes[0].status()),
            "others": [asdict(node.status()) for node in nodes[1:]],
            "last_publish": None if published is None else asdict(published),
        }

    def _published(self, published: Published) -> None:
        self.published = published
        if self._status_changed is not None:
            self._status_changed.set()

    async def _keep_status(self, path: Path, nodes: list[DhtNode]) -> None:
        # Every STATUS_EVERY seconds, and at once after a publication.
        while True:
            await _write_json(path, self._status(nodes, running=True))
            changed = self._status_changed = anyio.Event()
            with anyio.move_on_after(STATUS_EVERY):
                await changed.wait()

    def __repr__(self) -> str:
        return f"DhtDiscovery(bootstrap={list(self.bootstrap)!r})"


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """What the DHT node of the node on ``data_dir`` is doing (its last ``dht-status.json``), or
    None when no node with the ``dht`` provider ran there. ``running`` is true only when the node
    is running now (it wrote the file lately, and its process is alive).

    :raises ValueError: when the file is damaged.
    """
    return read_status_file(data_dir / STATUS_FILE, "a DHT status", STATUS_EVERY)


# The files below are a few KiB, read and written at once (peerkit.statusfile says why).


def _read_text(path: Path) -> str:
    return path.read_text("utf-8")


async def _load_nodes(path: Path) -> list[Address]:
    # The addresses saved by _save_nodes (none when there is no file, or it is damaged).
    await anyio.lowlevel.checkpoint()
    try:
        saved = json.loads(_read_text(path))
        return [(str(host), int(port)) for host, port in saved["nodes"]][:SAVED_NODES]
    except (OSError, ValueError, KeyError, TypeError):
        return []


async def _save_nodes(path: Path, nodes: Sequence[Node]) -> None:
    # The routing table's nodes.
    await _write_json(path, {"nodes": [[n.address[0], n.address[1]] for n in nodes[:SAVED_NODES]]})


async def _write_json(path: Path, content: object) -> None:
    # Written whole or not at all (a failure is logged: the node goes on without it).
    await anyio.lowlevel.checkpoint()
    try:
        write_whole(path, json.dumps(content))
    except OSError as exc:
        log.info("could not write %s: %s", path, exc)


async def _addresses(host: str, port: int) -> list[Address]:
    # A bootstrap name's addresses (a literal address is itself, with no lookup in a worker
    # thread); none when it does not resolve.
    with contextlib.suppress(ValueError):
        return [(str(ipaddress.ip_address(host)), port)]
    try:
        infos = await anyio.getaddrinfo(host, port, type=2)  # SOCK_DGRAM
    except OSError as exc:
        log.info("DHT bootstrap %s:%d does not resolve: %s", host, port, exc)
        return []
    return list(dict.fromkeys((str(info[4][0]), int(info[4][1])) for info in infos))


def _device_tag(state_dir: Path | None) -> bytes:
    # Which device's entry of the identity's record is this node's: the same on each start of a
    # node on this host with this data dir; another on another host, even with a copy of it.
    if state_dir is None:
        return os.urandom(TAG_SIZE)
    where = f"{socket.gethostname()}\0{state_dir.resolve()}".encode()
    return hashlib.blake2b(where, digest_size=TAG_SIZE, person=b"peerkit-device").digest()


class _Session:
    def __init__(self, nodes: list[DhtNode], sink: DiscoverySink, tag: bytes, provider: DhtDiscovery) -> None:
        self._nodes = nodes  # one per address family (BEP 32), each its own DHT
        self._sink = sink
        self._tag = tag
        self._provider = provider
        self._wanted: Announcement | None = None
        self._withdrawn = False
        self._seq = 0
        self._changed = anyio.Event()

    async def publish(self, announcement: Announcement) -> None:
        self._wanted, self._withdrawn = announcement, False
        self._changed.set()
        await anyio.lowlevel.checkpoint()

    async def withdraw(self) -> None:
        if self._wanted is not None:
            self._withdrawn = True
            self._changed.set()
        await anyio.lowlevel.checkpoint()

    async def resolve(self, peer_id: PeerId) -> list[bytes]:
        key = await _locator_key(self._sink, peer_id)
        if key is None:
            return []  # not a contact whose card gave a locator key: nothing to open
        items: list[MutableItem] = []

        async def get(node: DhtNode) -> None:
            item = await node.get(peer_id.key, SALT)
            if item is not None:
                items.append(item)

        async with anyio.create_task_group() as tg:
            for node in self._nodes:
                tg.start_soon(get, node)
        envelopes: dict[bytes, int] = {}
        for item in items:
            try:
                opened = open_item(item, key)  # each device signed in with the id, newest first
            except LocatorError as exc:
                log.info("the DHT record of %s does not open: %s", peer_id.fingerprint, exc)
                continue
            for envelope in opened:
                envelopes.setdefault(envelope, read_record(envelope)[0].seq)
        return sorted(envelopes, key=lambda e: -envelopes[e])  # both families' devices, newest first

    async def keep_published(self) -> None:
        # Publishes what is wanted when it changes, and every REPUBLISH seconds; a put that no
        # node took (the DHT not joined yet, or out of reach) is tried again, 1 s later, then 2 s,
        # ... up to RETRY_MAX. SETTLE seconds after a change is published, it looks once more
        # (a republish that writes nothing when the record is as it left it): another device of
        # this id may have written in the same millisecond, and the nodes be split between the
        # two values; the look merges them.
        retry: float | None = None
        while True:
            with anyio.move_on_after(retry if retry is not None else REPUBLISH):
                await self._changed.wait()
            changed, self._changed = self._changed.is_set(), anyio.Event()
            if self._wanted is None:
                retry = None
                continue
            try:
                done = await self._put(self._wanted, withdrawn=self._withdrawn, refresh=not changed)
            except Exception:
                log.exception("publishing the record in the DHT failed")
                done = False
            if done:
                retry = SETTLE if changed else None
            else:
                retry = min(2 * retry if retry and retry != SETTLE else 1.0, RETRY_MAX)

    async def _put(self, announcement: Announcement, *, withdrawn: bool, refresh: bool = False) -> bool:
        # Whether it is done (in one family at least): stored, not needed, or impossible.
        prepared = await self._builder(announcement, withdrawn)
        if prepared is None:
            return True  # it cannot be published: trying again would not help
        key, build = prepared
        done: list[bool] = []

        async def put(node: DhtNode) -> None:
            done.append(await self._put_on(node, key, build, withdrawn=withdrawn, refresh=refresh))

        async with anyio.create_task_group() as tg:
            for node in self._nodes:
                tg.start_soon(put, node)
        return any(done)

    async def _builder(
        self, announcement: Announcement, withdrawn: bool
    ) -> tuple[bytes, Callable[[list[MutableItem]], MutableItem]] | None:
        # The identity's key and what makes the item to store from the items found (the same
        # for every address family); None when the node cannot publish this announcement.
        signer = getattr(self._sink, "signer", None)
        key = await _locator_key(self._sink, None)
        if signer is None or key is None:
            log.warning("the DHT provider cannot publish: its node gives no signer or locator key")
            return None
        try:
            record, nickname, name, endpoints = read_record(announcement.envelope)
        except InvalidRecord:
            log.warning("not publishing a record that does not verify")
            return None
        if record.id != bytes(signer.id):
            log.warning("not publishing a record of another id")
            return None
        # The node's seq, or above the last this provider used (a withdrawal, or a conflict).
        base = max(record.seq, self._seq + 1) if withdrawn else max(record.seq, self._seq)
        addresses = [] if withdrawn else [(e.host, e.port, e.how) for e in endpoints if e.relay is None]
        relaying = offers_relay(record)
        relays = [(e.host, e.port, e.relay.key) for e in endpoints if e.relay is not None and not withdrawn]

        def build(tops: list[MutableItem]) -> MutableItem:
            # This device's entry replaced in what the other devices of this id stored. (Several
            # items under one seq: devices wrote at the same moment; all are merged, above it.)
            def made(seq: int) -> MutableItem:
                own = None
                if not withdrawn:
                    own = fit_record(
                        signer,
                        seq,
                        nickname=nickname,
                        endpoint_name=name,
                        endpoints=addresses,
                        relays=relays,
                        relay=relaying,
                    )
                now_ms = int(time.time() * 1000)
                return merged_item(signer, own, seq, key, tag=self._tag, current=tops, now_ms=now_ms)

            if not tops:
                return made(base)
            current = tops[0]
            if len(tops) == 1:
                mine = own_entry(current, self._tag, key)
                if _says(mine, nickname, name, endpoints, withdrawn, relaying):
                    # This device's entry is there, says what it would say, and is fresh enough
                    # that the other devices keep it (STALE): nothing to write; the item is put
                    # again as it is.
                    return current
            else:  # a split: above it, whatever this device wrote there
                return made(max(base, current.seq + 1))
            item = made(max(base, current.seq))
            return item if item == current or item.seq > current.seq else made(current.seq + 1)

        return bytes(signer.id), build

    async def _put_on(
        self,
        node: DhtNode,
        key: bytes,
        build: Callable[[list[MutableItem]], MutableItem],
        *,
        withdrawn: bool,
        refresh: bool,
    ) -> bool:
        for _ in range(3):
            result, item = await node.update(key, SALT, build, skip_above=ENOUGH_COPIES if refresh else None)
            self._seq = max(self._seq, item.seq)
            if result.stored:
                self._provider._published(Published(time.time(), item.seq, result.stored, withdrawn))
            if result.skipped:
                log.debug(
                    "DHT record at seq %d: %d fresh copies found, not republished", item.seq, result.copies
                )
                return True
            conflicts = result.refused.get(301, 0) + result.refused.get(302, 0)
            if not result.stored and not conflicts:
                return False  # no node took it: tried again later
            if result.stored >= PUT_QUORUM or (result.stored and not conflicts):
                # Another device of this id may have written at the same moment (BEP 44's cas
                # cannot say "nothing there yet"): read back, and merge again if this device's
                # entry is not in what is there now.
                tops = await node.newest(key, SALT)
                if (
                    not tops
                    or tops == [item]
                    or (len(tops) == 1 and carries(tops[0], self._tag) != withdrawn)
                ):
                    log.debug("DHT record at seq %d stored on %d nodes", item.seq, result.stored)
                    return True
            # Nodes hold another seq: another device of this id wrote meanwhile, or a clock went
            # back. Read again and merge with what is there now.
        return False


def _says(
    envelope: bytes | None, nickname: str, name: str, says: tuple[EndPoint, ...], withdrawn: bool, relay: bool
) -> bool:
    # Whether this device's entry (``envelope``; None: it has none) says what it would publish
    # now (the same nickname, endpoint name and addresses, or nothing when it withdraws), and is
    # fresh enough that the other devices keep it (half of STALE).
    if envelope is None:
        return withdrawn
    if withdrawn:
        return False
    try:
        record, nick, endpoint_name, endpoints = read_record(envelope)
    except InvalidRecord:
        return False
    if record.seq < time.time() * 1000 - STALE * 500:
        return False
    # (A record cut to fit never says all of it: such a device writes at each publication.)
    return (nick, endpoint_name, endpoints, offers_relay(record)) == (nickname, name, says, relay)


async def _locator_key(sink: DiscoverySink, peer_id: PeerId | None) -> bytes | None:
    lookup = getattr(sink, "locator_key", None)
    if lookup is None:
        return None
    key: bytes | None = await lookup(peer_id)
    return key


def _bootstrap_address(address: object) -> Address:
    # A (host, port) to join the DHT through, checked: a port out of range would fail each send.
    if (
        isinstance(address, tuple | list)
        and len(address) == 2
        and isinstance(address[0], str)
        and type(address[1]) is int
        and 1 <= address[1] <= 65535
    ):
        return address[0], address[1]
    raise ValueError(f"a DHT bootstrap address is (host, port 1..65535), not {address!r}")
