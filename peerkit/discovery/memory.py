"""The in-memory discovery provider: nodes of one process find each other (for tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import anyio
import anyio.abc

from peerkit.discovery.base import Announcement, DiscoverySession, DiscoverySink
from peerkit.identity import PeerId
from peerkit.model import Scope

__all__ = ("MemoryDiscovery",)


@dataclass(eq=False, slots=True)
class _Member:
    sink: DiscoverySink
    hub: MemoryDiscovery
    announcement: Announcement | None = None
    peers: set[PeerId] = field(default_factory=set)

    async def publish(self, announcement: Announcement) -> None:
        if not isinstance(announcement, Announcement):
            raise TypeError(f"expected an Announcement, not {type(announcement).__name__}")
        self.announcement = announcement
        for other in self.hub._others(self):
            other._hear(announcement)
        await anyio.lowlevel.checkpoint()

    async def withdraw(self) -> None:
        self._withdraw()
        await anyio.lowlevel.checkpoint()

    def _withdraw(self) -> None:
        if self.announcement is None:
            return
        gone, self.announcement = self.announcement.id, None
        for other in self.hub._others(self):
            other.sink.lost(gone, source=self.hub.name)

    async def resolve(self, peer_id: PeerId) -> list[bytes]:
        await anyio.lowlevel.checkpoint()
        return [a.envelope for a in self.hub._announcements() if a.id == peer_id]

    def _hear(self, announcement: Announcement) -> None:
        self.sink.found(announcement.envelope, source=self.hub.name)


class MemoryDiscovery:
    """A discovery medium inside one process: every node given the same instance sees the others.

    Pass one instance to several nodes (``Node(discovery=[hub])``), or name it ``"memory"`` to use
    the process-wide instance (:meth:`default`). It serves NEAR_ME.
    """

    name = "memory"
    scopes = Scope.NEAR_ME
    _default: ClassVar[MemoryDiscovery | None] = None

    def __init__(self) -> None:
        self._members: list[_Member] = []

    @classmethod
    def default(cls) -> MemoryDiscovery:
        """The process-wide instance that the name ``"memory"`` selects."""
        if MemoryDiscovery._default is None:
            MemoryDiscovery._default = cls()
        return MemoryDiscovery._default

    def _others(self, member: _Member) -> list[_Member]:
        return [m for m in self._members if m is not member]

    def _announcements(self) -> list[Announcement]:
        return [m.announcement for m in self._members if m.announcement is not None]

    def announcements(self) -> list[Announcement]:
        """What the nodes on this medium publish now."""
        return self._announcements()

    async def run(self, sink: DiscoverySink, *, task_status: anyio.abc.TaskStatus[DiscoverySession]) -> None:
        """Serve one node until cancelled (see :class:`~peerkit.discovery.DiscoveryProvider`)."""
        member = _Member(sink, self)
        self._members.append(member)
        try:
            for announcement in self._announcements():
                member._hear(announcement)
            task_status.started(member)
            await anyio.sleep_forever()
        finally:
            member._withdraw()
            self._members.remove(member)

    def __repr__(self) -> str:
        return f"<MemoryDiscovery {len(self._members)} nodes>"
