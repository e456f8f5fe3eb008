"""The discovery provider protocol, and the directory that believes only signed records.

A *provider* carries signed records (docs/protocol.md section 5) between nodes: over mDNS, from fixed
addresses, in memory, through a DHT. It knows nothing about invitations. A node starts each of its
providers in its task group with ``session = await task_group.start(provider.run, sink)``; the
provider then publishes through ``session`` and reports what it hears to ``sink`` until it is
cancelled, and it must close everything it opened when that happens.

Providers are transports and are not trusted: the :class:`Directory` (the sink a node gives them)
verifies every record's signature and freshness, so a provider never has to.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import anyio.abc

from peerkit.errors import InvalidRecord
from peerkit.identity import PeerId
from peerkit.model import MAX_HOW, MAX_TEXT, ChangeType, EndPoint, Scope
from peerkit.proto import records
from peerkit.proto.admission import group_of, source_of
from peerkit.proto.shares import FairShare

__all__ = (
    "MAX_ADDRESSES",
    "MAX_RECORD_APPLICATIONS",
    "MAX_RELAYS",
    "Announcement",
    "Directory",
    "DirectoryStats",
    "DiscoveryProvider",
    "DiscoverySession",
    "DiscoverySink",
    "NearbyRecord",
    "make_record",
    "offers_relay",
    "read_record",
    "record_applications",
)

#: The most addresses one record may carry.
MAX_ADDRESSES: Final = 16
#: The most relays one record may name.
MAX_RELAYS: Final = 4
#: The most application ids one record may carry (those its node shows to people near it).
MAX_RECORD_APPLICATIONS: Final = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class Announcement:
    """What a node asks its providers to publish."""

    #: The node's id.
    id: PeerId
    #: Its nickname (for instance names and the like; the signed record is authoritative).
    nickname: str
    #: Its listening port.
    port: int
    #: Its addresses (the hosts of the signed record's endpoints).
    hosts: tuple[str, ...]
    #: The signed record envelope (docs/protocol.md section 5).
    envelope: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class NearbyRecord:
    """A verified record of a peer, as the directory holds it."""

    #: The peer's id.
    id: PeerId
    #: Its nickname.
    nickname: str
    #: The name of its endpoint.
    endpoint_name: str
    #: Where it listens: the addresses it signed, and the ones providers saw it at.
    endpoints: tuple[EndPoint, ...]
    #: The record's sequence number.
    seq: int
    #: When this node first saw it (Unix time, seconds).
    since: float
    #: The providers that report it.
    sources: frozenset[str]
    #: The envelope as received.
    envelope: bytes = field(repr=False)
    #: The ids of the applications the peer shows to people near it (scope NEAR_ME or ALL).
    applications: frozenset[uuid.UUID] = frozenset()


@runtime_checkable
class DiscoverySession(Protocol):
    """What a running provider gives its node: the means to publish the node's record."""

    async def publish(self, announcement: Announcement) -> None:
        """Publish ``announcement`` (replacing the last one) for as long as the provider runs."""

    async def withdraw(self) -> None:
        """Stop publishing, saying goodbye where the medium allows; a no-op when nothing is published."""

    async def resolve(self, peer_id: PeerId) -> list[bytes]:
        """Signed record envelopes for ``peer_id`` (empty when the provider cannot resolve)."""


class DiscoverySink(Protocol):
    """Where a provider reports what it hears (the node's :class:`Directory`)."""

    @property
    def local_id(self) -> PeerId:
        """The id of the node the provider serves (its own records are ignored)."""

    def found(
        self,
        envelope: bytes,
        *,
        source: str,
        endpoints: Sequence[EndPoint] = (),
        claimed_id: PeerId | bytes | None = None,
        origin: str | None = None,
    ) -> NearbyRecord | None:
        """A record was heard (new or refreshed). Returns what the directory now believes of that
        peer, or None when the record was not believed (it is then counted). ``claimed_id`` is the
        id the medium said the record is of (an mDNS TXT ``id``): a record of another id is refused.
        ``origin`` is the address the record came from, when the medium tells it (an mDNS
        packet's source): a full directory shares strangers' places fairly by its group."""

    def lost(self, peer_id: PeerId, *, source: str) -> None:
        """``source`` no longer sees ``peer_id`` (goodbye, expiry, unreachable)."""

    async def fetch_record(self, host: str, port: int, peer_id: PeerId | None = None) -> bytes:
        """Connect to ``host:port`` (expecting ``peer_id`` when given) and return the signed record
        it publishes. Raises a :class:`~peerkit.PeerkitError` when it cannot."""


@runtime_checkable
class DiscoveryProvider(Protocol):
    """A discovery provider (see the module documentation)."""

    @property
    def name(self) -> str:
        """A short name for logs and sources (``"mdns"``, ``"static:10.0.0.2:7000"``)."""

    @property
    def scopes(self) -> Scope:
        """The scopes this provider serves (NEAR_ME for LAN discovery)."""

    async def run(self, sink: DiscoverySink, *, task_status: anyio.abc.TaskStatus[DiscoverySession]) -> None:
        """Serve one node until cancelled: call ``task_status.started(session)`` once ready."""


def make_record(
    signer: records.Signer,
    seq: int,
    *,
    nickname: str,
    endpoint_name: str,
    endpoints: Iterable[tuple[str, int] | tuple[str, int, str]],
    relays: Iterable[tuple[str, int, bytes]] = (),
    relay: bool = False,
    applications: Iterable[uuid.UUID] = (),
) -> bytes:
    """Sign a discovery record: ``{"id", "seq", "nick", "name", "addrs": [[host, port], ...]}``,
    ``"how": [mark, ...]`` beside ``"addrs"`` when an endpoint is given as ``(host, port, how)``
    (``"mapped"``, ``"interface"``; ``""`` for one given without), ``"relays": [[host, port,
    relay id], ...]`` when the node is reachable through relays, ``"relay": true`` when it
    serves as a relay (:func:`offers_relay`), and ``"apps": [16-byte UUID, ...]`` for the first
    :data:`MAX_RECORD_APPLICATIONS` of ``applications``."""
    given = list(endpoints)[:MAX_ADDRESSES]
    addrs = [[item[0], item[1]] for item in given]
    marks = [item[2] if len(item) == 3 else "" for item in given]
    content: dict[str, object] = {"nick": nickname, "name": endpoint_name, "addrs": addrs}
    if any(marks):
        content["how"] = marks
    through = [[host, port, bytes(key)] for host, port, key in relays][:MAX_RELAYS]
    if through:
        content["relays"] = through
    if relay:
        content["relay"] = True
    apps = [app.bytes for app in dict.fromkeys(applications)][:MAX_RECORD_APPLICATIONS]
    if apps:
        content["apps"] = apps
    return records.sign_record(signer, seq, content)


def offers_relay(record: records.SignedRecord) -> bool:
    """Whether a discovery record says its node serves as a relay (``"relay": true``: it can be
    asked for a reservation, by its contacts at least)."""
    return record.body.get("relay") is True


def record_applications(record: records.SignedRecord) -> frozenset[uuid.UUID]:
    """The application ids a discovery record carries (``"apps"``; none when it has no such key).

    :raises InvalidRecord: when ``"apps"`` is not a list of at most 32 16-byte ids.
    """
    apps = record.body.get("apps", [])
    if (
        not isinstance(apps, list)
        or len(apps) > MAX_RECORD_APPLICATIONS
        or not all(isinstance(app, bytes) and len(app) == 16 for app in apps)
    ):
        raise InvalidRecord(
            f'record "apps" must be a list of at most {MAX_RECORD_APPLICATIONS} 16-byte application ids'
        )
    return frozenset(uuid.UUID(bytes=app) for app in apps)


def read_record(envelope: bytes) -> tuple[records.SignedRecord, str, str, tuple[EndPoint, ...]]:
    """Verify a discovery record and read its content.

    :returns: the record, the nickname, the endpoint name and the signed endpoints (its own
        addresses, then the relays it is reachable through).
    :raises InvalidRecord: when it does not verify or its content is malformed.
    """
    record = records.open_record(envelope)
    body = record.body
    nickname, name, addrs = body.get("nick", ""), body.get("name", ""), body.get("addrs", [])
    if not isinstance(nickname, str) or len(nickname) > MAX_TEXT:
        raise InvalidRecord('record "nick" must be text of at most 255 characters')
    if not isinstance(name, str) or len(name) > MAX_TEXT:
        raise InvalidRecord('record "name" must be text of at most 255 characters')
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRESSES:
        raise InvalidRecord(f'record "addrs" must be a list of at most {MAX_ADDRESSES} addresses')
    marks = body.get("how", [""] * len(addrs))
    if (
        not isinstance(marks, list)
        or len(marks) != len(addrs)
        or not all(isinstance(m, str) and len(m) <= MAX_HOW for m in marks)
    ):
        raise InvalidRecord(
            f'record "how" must be a list of texts of at most {MAX_HOW} characters, one per address'
        )
    endpoints = []
    for item, how in zip(addrs, marks, strict=True):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
        ):
            raise InvalidRecord('record "addrs" entries must be [host, port] pairs')
        try:
            endpoints.append(EndPoint(item[0], item[1], name, how=how))
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"record address {item!r} is not valid: {exc}") from None
    relays = body.get("relays", [])
    if not isinstance(relays, list) or len(relays) > MAX_RELAYS:
        raise InvalidRecord(f'record "relays" must be a list of at most {MAX_RELAYS} relays')
    for item in relays:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not isinstance(item[1], int)
            or isinstance(item[1], bool)
            or not isinstance(item[2], bytes)
            or len(item[2]) != 32
        ):
            raise InvalidRecord('record "relays" entries must be [host, port, 32-byte id] lists')
        try:
            endpoints.append(EndPoint(item[0], item[1], name, relay=PeerId(item[2])))
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"record relay {item[:2]!r} is not valid: {exc}") from None
    record_applications(record)
    return record, nickname, name, tuple(endpoints)


@dataclass(slots=True)
class DirectoryStats:
    """What a directory did with the records it was given."""

    #: Records believed (new peers, updates and refreshes).
    accepted: int = 0
    #: Records dropped because they did not verify (forged, tampered, malformed).
    invalid: int = 0
    #: Records dropped because their ``seq`` was older than one already believed (replays).
    stale: int = 0
    #: Records of new peers dropped because the directory was full (or, of strangers, to make room
    #: for a contact's).
    full: int = 0


@dataclass(slots=True)
class _Entry:
    record: NearbyRecord
    #: Where each source saw the peer.
    sources: dict[str, tuple[EndPoint, ...]]
    #: The endpoints the record signs.
    signed: tuple[EndPoint, ...]
    #: The group of the origin a stranger's record first came from (None: a contact's).
    group: str | None = None


class Directory:
    """The peers a node's providers see, believed only when signed and fresh (a :class:`DiscoverySink`).

    :param local_id: this node's id; records for it are ignored.
    :param on_change: called with (ChangeType, record) for every change, synchronously.
    :param fetch_record: what :meth:`fetch_record` does (the node dials); providers that do not need
        it may be tested without it.
    :param capacity: the most peers held at once; records of further peers are dropped and counted,
        but a contact's record takes a stranger's place (strangers never take a contact's place, and
        their records never make a contact's replays pass again), and so does a stranger's whose
        origin group (see :meth:`found`) holds fewer places than the busiest group by more than
        one: that group's stranger found last gives way. Under a flood of new ids from one origin,
        the peers that were there before it are kept, and newcomers from elsewhere are still shown.
    :param is_contact: whether a peer is one of the node's contacts (None: none is).
    """

    def __init__(
        self,
        local_id: PeerId,
        on_change: Callable[[ChangeType, NearbyRecord], None] = lambda change, record: None,
        *,
        fetch_record: Callable[[str, int, PeerId | None], Any] | None = None,
        capacity: int = 1024,
        signer: records.Signer | None = None,
        locator_key: Callable[[PeerId | None], Awaitable[bytes | None]] | None = None,
        state_dir: Path | None = None,
        listen_port: int | None = None,
        listen_host: str | None = None,
        contact_addresses: Callable[[], Awaitable[list[tuple[str, int]]]] | None = None,
        is_contact: Callable[[PeerId], bool] | None = None,
    ) -> None:
        self._local_id = local_id
        self._is_contact = is_contact
        #: Where providers may keep state between runs (the node's data dir), or None.
        self.state_dir = state_dir
        #: The port the node listens on (a DHT node binds the same number for UDP), or None.
        self.listen_port = listen_port
        #: The address the node listens on ("", "0.0.0.0" or "::": every address of its family),
        #: or None: a DHT node binds the same one unless told otherwise.
        self.listen_host = listen_host
        self._contact_addresses = contact_addresses
        #: What signs this node's items in a DHT (its identity), or None (no DHT publishing).
        self.signer = signer
        self._locator_key = locator_key
        self._on_change = on_change
        self._fetch = fetch_record
        self._capacity = capacity
        self._entries: dict[PeerId, _Entry] = {}
        # strangers' places, by origin group; a flood's newest give way
        self._strangers: FairShare[PeerId] = FairShare(capacity, newest_first=True)
        # Remembers freshness of ids seen, longer than entries live, so a replay after a goodbye
        # is still refused; bounded.
        self._seqs = records.SeqTracker(capacity * 4)
        #: Counters (accepted, invalid, stale, full).
        self.stats = DirectoryStats()

    @property
    def local_id(self) -> PeerId:
        """This node's id."""
        return self._local_id

    async def locator_key(self, peer_id: PeerId | None = None) -> bytes | None:
        """The locator key of contact ``peer_id`` (from its card), or this node's own (None), for
        providers that seal records (the DHT); None when there is none."""
        if self._locator_key is None:
            return None
        return await self._locator_key(peer_id)

    async def contact_addresses(self) -> list[tuple[str, int]]:
        """Where the node's contacts were last known to be, most recently seen first (a DHT
        joins through them: their DHT nodes listen on the same port numbers)."""
        return [] if self._contact_addresses is None else await self._contact_addresses()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, peer_id: PeerId) -> NearbyRecord | None:
        """What is believed of ``peer_id`` now."""
        entry = self._entries.get(peer_id)
        return entry.record if entry is not None else None

    def records(self) -> list[NearbyRecord]:
        """Every peer believed now, in the order they were first seen."""
        return [entry.record for entry in self._entries.values()]

    def found(
        self,
        envelope: bytes,
        *,
        source: str,
        endpoints: Sequence[EndPoint] = (),
        claimed_id: PeerId | bytes | None = None,
        origin: str | None = None,
    ) -> NearbyRecord | None:
        """See :meth:`DiscoverySink.found`."""
        # Signatures cost the most here (about 0.1 ms each), and records are heard again and again
        # (every announcement, every answer; a LAN peer may repeat one as fast as it likes): the
        # very bytes believed now are not verified again, and a stranger's record that the
        # directory has no room for is dropped before its signature is checked.
        claimed = self._claimed(claimed_id)
        known = self._entries.get(claimed) if claimed is not None else None
        if claimed is not None and known is not None and known.record.envelope == envelope:
            self.stats.accepted += 1
            now = known.record
            return self._take(
                claimed,
                known,
                envelope,
                now.nickname,
                now.endpoint_name,
                known.signed,
                now.seq,
                now.applications,
                source,
                endpoints,
            )
        group = f"via {source}" if origin is None else group_of(source_of(origin))
        if (
            claimed is not None
            and known is None
            and len(self._entries) >= self._capacity
            and not (self._is_contact is not None and self._is_contact(claimed))
            and not self._strangers.room_for(group, full=True)
        ):
            self.stats.full += 1
            return None
        try:
            record, nickname, name, signed = read_record(envelope)
        except (InvalidRecord, TypeError):
            self.stats.invalid += 1
            return None
        if claimed_id is not None and bytes(claimed_id) != record.id:
            self.stats.invalid += 1  # a record of one id offered as another's
            return None
        peer_id = PeerId.from_verified(record.id)  # its signature just verified
        if peer_id == self._local_id:
            return None
        entry = self._entries.get(peer_id)
        last = self._seqs.last(record.id)
        # An older seq is a replay. The same seq is the same statement heard again (a refresh, another
        # provider, the peer back after a partition), unless it differs from what is believed now.
        if last is not None and (
            record.seq < last
            or (record.seq == last and entry is not None and entry.record.envelope != envelope)
        ):
            self.stats.stale += 1
            return None
        contact = self._is_contact is not None and self._is_contact(peer_id)
        placed = None if contact else group
        if entry is None and not self._room(peer_id, placed):
            self.stats.full += 1
            return None
        if last is None or record.seq > last:
            self._seqs.accept(record, kept=contact)
        self.stats.accepted += 1
        applications = record_applications(record)
        seq = record.seq
        return self._take(
            peer_id, entry, envelope, nickname, name, signed, seq, applications, source, endpoints, placed
        )

    @staticmethod
    def _claimed(claimed_id: PeerId | bytes | None) -> PeerId | None:
        # The id a provider says a record is of, to look it up with (not believed: only compared).
        if claimed_id is None or isinstance(claimed_id, PeerId):
            return claimed_id
        key = bytes(claimed_id)
        return PeerId.from_verified(key) if len(key) == 32 else None

    def _take(
        self,
        peer_id: PeerId,
        entry: _Entry | None,
        envelope: bytes,
        nickname: str,
        name: str,
        signed: tuple[EndPoint, ...],
        seq: int,
        applications: frozenset[uuid.UUID],
        source: str,
        endpoints: Sequence[EndPoint],
        group: str | None = None,
    ) -> NearbyRecord:
        # Believe a record (verified, fresh, with room for it) as ``source`` heard it; a new
        # stranger's took a place of ``group``.
        sources = dict(entry.sources) if entry is not None else {}
        sources[source] = tuple(EndPoint(e.host, e.port, name) for e in endpoints)
        believed = NearbyRecord(
            id=peer_id,
            nickname=nickname,
            endpoint_name=name,
            endpoints=_endpoints(sources, signed),
            seq=seq,
            since=entry.record.since if entry is not None else time.time(),
            sources=frozenset(sources),
            envelope=envelope,
            applications=applications,
        )
        if entry is None:
            self._entries[peer_id] = _Entry(believed, sources, signed, group)
            self._on_change(ChangeType.ADDED, believed)
        else:
            previous = entry.record
            entry.record, entry.sources, entry.signed = believed, sources, signed
            if _differs(previous, believed):
                self._on_change(ChangeType.UPDATED, believed)
        return believed

    def _room(self, peer_id: PeerId, group: str | None) -> bool:
        # A place for a new peer: a contact's (``group`` None) or a stranger's of ``group``; a
        # stranger may give way (see the class docstring). Whether there is one.
        full = len(self._entries) >= self._capacity
        if full:
            self._promote_contacts()
        taken = self._strangers.admit(group, peer_id, full=full)
        if taken is None:
            return False
        if taken.evicted is not None:
            gone = self._entries.pop(taken.evicted)
            self.stats.full += 1
            self._on_change(ChangeType.DELETED, gone.record)
        return True

    def _promote_contacts(self) -> None:
        # Strangers who have become contacts since they took their places hold them no longer
        # as strangers: no stranger's record may take their place.
        if self._is_contact is None:
            return
        for peer_id, entry in self._entries.items():
            if entry.group is not None and self._is_contact(peer_id):
                self._strangers.give_back(entry.group, peer_id)
                entry.group = None

    def lost(self, peer_id: PeerId, *, source: str) -> None:
        """See :meth:`DiscoverySink.lost`."""
        entry = self._entries.get(peer_id)
        if entry is None or source not in entry.sources:
            return
        del entry.sources[source]
        if not entry.sources:
            del self._entries[peer_id]
            if entry.group is not None:
                self._strangers.give_back(entry.group, peer_id)
            self._on_change(ChangeType.DELETED, entry.record)
            return
        old = entry.record
        entry.record = dataclasses.replace(
            old, endpoints=_endpoints(entry.sources, entry.signed), sources=frozenset(entry.sources)
        )
        if _differs(old, entry.record):
            self._on_change(ChangeType.UPDATED, entry.record)

    def drop_source(self, source: str) -> None:
        """Forget everything ``source`` reported (its provider stopped)."""
        for peer_id in [p for p, e in self._entries.items() if source in e.sources]:
            self.lost(peer_id, source=source)

    async def fetch_record(self, host: str, port: int, peer_id: PeerId | None = None) -> bytes:
        """See :meth:`DiscoverySink.fetch_record`."""
        if self._fetch is None:
            raise NotImplementedError("this directory cannot dial")
        result: bytes = await self._fetch(host, port, peer_id)
        return result


def _endpoints(
    sources: dict[str, tuple[EndPoint, ...]], signed: tuple[EndPoint, ...]
) -> tuple[EndPoint, ...]:
    # Where a provider saw the peer first (it just worked there), then what the peer signed.
    return tuple(dict.fromkeys([*(e for seen in sources.values() for e in seen), *signed]))


def _differs(old: NearbyRecord, new: NearbyRecord) -> bool:
    return (old.nickname, old.endpoint_name, old.endpoints, old.seq, old.applications) != (
        new.nickname,
        new.endpoint_name,
        new.endpoints,
        new.seq,
        new.applications,
    )
