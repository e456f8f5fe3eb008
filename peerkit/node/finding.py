"""The methods of a :class:`~peerkit.Node` that find peers: the people near me (live, as a
list, or the first that matches) and a peer anywhere through the discovery providers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from peerkit.bus import NearbyWatch
from peerkit.discovery.base import DirectoryStats
from peerkit.handles import Handle
from peerkit.identity import PeerId
from peerkit.node.nearby import Nearby, NearbyHandler
from peerkit.peers import NearbyPeer, Peer

__all__ = ("FindingMethods",)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class FindingMethods:
    """Finding peers; mixed into the Node, whose discovery part (``_nearby``) they use."""

    _nearby: Nearby

    def _check_running(self) -> None:
        raise NotImplementedError  # (the Node's)

    @property
    def discovery_stats(self) -> DirectoryStats:
        """What discovery did with the records it heard: accepted, and dropped as invalid (forged,
        tampered, malformed), stale (replayed) or because the directory was full.

        :raises NotRunning: when the node is not running.
        """
        self._check_running()
        return self._nearby.stats

    def nearby(self) -> list[NearbyPeer]:
        """The people near me now, in the order they were first seen.

        :raises NotSignedIn: when the node is not signed in to NEAR_ME.
        :raises NotRunning: when the node is not running.
        """
        self._check_running()
        return self._nearby.nearby()

    def watch_nearby(self, *, initial: bool = False) -> NearbyWatch:
        """Follow the people near me: an async iterator of :class:`~peerkit.NearbyChanged`.

        :param initial: start with an ADDED event for everyone near me now.
        :raises NotSignedIn: when the node is not signed in to NEAR_ME.
        :raises NotRunning: when the node is not running.
        """
        self._check_running()
        return self._nearby.watch(initial=initial)

    def add_nearby_handler(self, handler: NearbyHandler) -> Handle:
        """Call ``handler`` (a coroutine function) for every change of the people near me.

        It may be added before sign-in; it sees changes while the node is signed in to NEAR_ME,
        starting (at sign-in, or now if signed in) with an ADDED event for everyone near me.
        A handler that raises is logged and keeps receiving. Returns a :class:`Handle`.

        :raises NotRunning: when the node is not running.
        """
        self._check_running()
        return self._nearby.add_handler(handler)

    def on_nearby_changed(self, handler: F) -> F:
        """Decorator form of :meth:`add_nearby_handler`."""
        self.add_nearby_handler(handler)
        return handler

    async def find_nearby(
        self, *, nickname: str | None = None, peer_id: PeerId | None = None, timeout: float = 10.0
    ) -> NearbyPeer:
        """The first peer near me with that nickname or id, waiting up to ``timeout`` seconds.

        :raises ValueError: unless exactly one of ``nickname`` and ``peer_id`` is given.
        :raises PeerUnreachable: when no such peer appears in time.
        :raises NotSignedIn: when the node is not signed in to NEAR_ME.
        :raises NotRunning: when the node is not running.
        """
        if (nickname is None) == (peer_id is None):
            raise ValueError("find_nearby takes exactly one of nickname= and peer_id=")
        self._check_running()
        return await self._nearby.find(nickname=nickname, peer_id=peer_id, timeout=timeout)

    async def resolve(self, peer_id: PeerId) -> Peer:
        """Find ``peer_id`` through the discovery providers.

        :raises PeerUnreachable: when no provider knows it.
        :raises NotRunning: when the node is not running.
        """
        self._check_running()
        return await self._nearby.resolve(peer_id)
