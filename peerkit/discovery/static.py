"""The static discovery provider: peers at fixed addresses, checked and learnt by dialling them.

Each entry is ``host:port`` or ``host:port#peer-id`` (IPv6 hosts in brackets). The provider dials
every entry now and then (through the node, so the channel is authenticated), fetches the signed
record the peer publishes, and reports it; an entry that stops answering is reported lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import anyio.abc

from peerkit.discovery.base import Announcement, DiscoverySession, DiscoverySink
from peerkit.errors import PeerkitError
from peerkit.identity import PeerId
from peerkit.model import EndPoint, Scope, quoted

__all__ = ("StaticDiscovery", "StaticEntry")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StaticEntry:
    """One fixed address, and the peer expected there (when known)."""

    #: Where to dial.
    endpoint: EndPoint
    #: The id that must answer there (None: whoever answers).
    peer_id: PeerId | None = None

    @classmethod
    def parse(cls, text: str) -> StaticEntry:
        """Read ``host:port[#peer-id]``.

        :raises ValueError: when it is not in that form, naming what is wrong.
        """
        if not isinstance(text, str):
            raise TypeError(f"a static entry must be text, not {type(text).__name__}")
        address, _, id_text = text.partition("#")
        if ":" not in address:
            raise ValueError(f"static entry {quoted(text)} is not host:port[#peer-id]")
        try:
            endpoint = EndPoint.parse(address)
            peer_id = PeerId.parse(id_text) if id_text else None
        except ValueError as exc:
            raise ValueError(f"static entry {quoted(text)}: {exc}") from None
        return cls(endpoint, peer_id)

    def __str__(self) -> str:
        return f"{self.endpoint}#{self.peer_id}" if self.peer_id is not None else str(self.endpoint)


class _Session:
    # A static provider publishes nothing: peers fetch the record from the node itself.
    async def publish(self, announcement: Announcement) -> None:
        await anyio.lowlevel.checkpoint()

    async def withdraw(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def resolve(self, peer_id: PeerId) -> list[bytes]:
        await anyio.lowlevel.checkpoint()
        return []


class StaticDiscovery:
    """Peers at fixed addresses (NEAR_ME).

    :param entries: ``host:port[#peer-id]`` texts or :class:`StaticEntry` objects.
    :param interval: seconds between checks of each entry.
    :param timeout: seconds one check may take.
    """

    scopes = Scope.NEAR_ME

    def __init__(
        self, entries: Sequence[str | StaticEntry], *, interval: float = 30.0, timeout: float = 5.0
    ) -> None:
        if isinstance(entries, str | StaticEntry):  # (one entry: not a sequence of one-letter ones)
            entries = [entries]
        self.entries = tuple(e if isinstance(e, StaticEntry) else StaticEntry.parse(e) for e in entries)
        if not self.entries:
            raise ValueError("a static provider needs at least one host:port entry")
        if not interval > 0 or not timeout > 0:
            raise ValueError("interval and timeout must be positive")
        self.interval = interval
        self.timeout = timeout

    @property
    def name(self) -> str:
        """``static:`` and the entries."""
        return "static:" + ",".join(map(str, self.entries))

    async def run(self, sink: DiscoverySink, *, task_status: anyio.abc.TaskStatus[DiscoverySession]) -> None:
        """Serve one node until cancelled (see :class:`~peerkit.discovery.DiscoveryProvider`)."""
        known: dict[StaticEntry, PeerId] = {}
        task_status.started(_Session())
        try:
            while True:
                async with anyio.create_task_group() as tg:
                    for entry in self.entries:
                        tg.start_soon(self._check, sink, entry, known)
                await anyio.sleep(self.interval)
        finally:
            for entry, peer_id in known.items():
                sink.lost(peer_id, source=self._source(entry))

    def _source(self, entry: StaticEntry) -> str:
        return f"static:{entry.endpoint}"

    async def _check(self, sink: DiscoverySink, entry: StaticEntry, known: dict[StaticEntry, PeerId]) -> None:
        source = self._source(entry)
        envelope = None
        with anyio.move_on_after(self.timeout):
            try:
                envelope = await sink.fetch_record(entry.endpoint.host, entry.endpoint.port, entry.peer_id)
            except PeerkitError as exc:
                log.debug("static peer %s did not answer: %s", entry, exc)
        previous = known.get(entry)
        if envelope is None:  # unreachable: lost
            if previous is not None:
                del known[entry]
                sink.lost(previous, source=source)
            return
        # It answered; a record the directory does not believe (stale, forged) changes nothing.
        record = sink.found(envelope, source=source, endpoints=(entry.endpoint,))
        if record is None:
            return
        if entry.peer_id is not None and record.id != entry.peer_id:
            log.warning("static peer %s answered with the record of %s", entry, record.id.fingerprint)
            sink.lost(record.id, source=source)
            return
        known[entry] = record.id
        if previous is not None and previous != record.id:
            sink.lost(previous, source=source)

    def __repr__(self) -> str:
        return f"<StaticDiscovery {self.name}>"
