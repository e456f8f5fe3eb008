"""The methods of a :class:`~peerkit.Node` that find peers: the people near me (live, as a
list, or the first that matches) and a peer anywhere through the discovery providers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from peerkit.bus import NearbyWatch
from peerkit.contacts import ContactManager
from peerkit.discovery.base import DirectoryStats
from peerkit.handles import Handle
from peerkit.identity import PeerId, check_peer_id
from peerkit.model import Application, check_seconds
from peerkit.node.nearby import Nearby, NearbyHandler
from peerkit.node.reaching import Reaching, ReachStep
from peerkit.peers import NearbyPeer, Peer

__all__ = ("FindingMethods",)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class FindingMethods:
    """Finding peers; mixed into the Node, whose discovery part (``_nearby``) they use."""

    _nearby: Nearby
    _reaching: Reaching
    contacts: ContactManager

    @property
    def id(self) -> PeerId:
        """This node's id (the Node's)."""
        raise NotImplementedError

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

    def nearby(self, *, application: Application | uuid.UUID | None = None) -> list[NearbyPeer]:
        """The people near me now, in the order they were first seen.

        :param application: only those whose record shows this application (an
            :class:`~peerkit.Application` or its id): the peers near me that have it installed
            and show it to people near them (scope NEAR_ME or ALL).
        :raises TypeError: when ``application`` is neither an Application nor a UUID.
        :raises NotSignedIn: when the node is not signed in to NEAR_ME.
        :raises NotRunning: when the node is not running.
        """
        wanted = _application_id(application)
        self._check_running()
        peers = self._nearby.nearby()
        return peers if wanted is None else [p for p in peers if wanted in p.applications]

    def watch_nearby(
        self, *, initial: bool = False, application: Application | uuid.UUID | None = None
    ) -> NearbyWatch:
        """Follow the people near me: an async iterator of :class:`~peerkit.NearbyChanged`.

        :param initial: start with an ADDED event for everyone near me now (who shows
            ``application``, when given).
        :param application: follow only the people near me who show this application: a peer
            comes ADDED when it appears with it or registers it, UPDATED when it changes while it
            has it, and DELETED when it leaves or unregisters it.
        :raises TypeError: when ``application`` is neither an Application nor a UUID.
        :raises NotSignedIn: when the node is not signed in to NEAR_ME.
        :raises NotRunning: when the node is not running.
        """
        wanted = _application_id(application)
        self._check_running()
        return self._nearby.watch(initial=initial, application=wanted)

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
        self,
        *,
        nickname: str | None = None,
        peer_id: PeerId | None = None,
        application: Application | uuid.UUID | None = None,
        timeout: float = 10.0,
    ) -> NearbyPeer:
        """The first peer near me with that nickname or id, or that shows that application (or
        all of those given), waiting up to ``timeout`` seconds.

        :raises ValueError: when none of them, or both ``nickname`` and ``peer_id``, are given.
        :raises TypeError: when ``application`` is neither an Application nor a UUID.
        :raises PeerUnreachable: when no such peer appears in time.
        :raises NotSignedIn: when the node is not signed in to NEAR_ME.
        :raises NotRunning: when the node is not running.

        If cancelled, it stops waiting; nothing else changes.
        """
        wanted = _application_id(application)
        if nickname is not None and peer_id is not None:
            raise ValueError("find_nearby takes nickname= or peer_id=, not both")
        if nickname is None and peer_id is None and wanted is None:
            raise ValueError("find_nearby needs nickname=, peer_id= or application=")
        self._check_running()
        return await self._nearby.find(
            nickname=nickname, peer_id=peer_id, application=wanted, timeout=timeout
        )

    async def trace(self, peer_id: PeerId, *, timeout: float = 10.0) -> list[ReachStep]:
        """How ``peer_id`` can be reached now, tried way by way: looked up through the discovery
        providers (a contact), then each endpoint on a channel of its own, direct or relayed
        (within ``timeout`` each), then a hole punched beside a relay that worked. For
        ``peerkit reach CONTACT``; every channel it opens is closed again.

        :raises NotRunning: when the node is not running.
        :raises ValueError: when ``timeout`` is not positive or ``peer_id`` is this node's.

        If cancelled, the ways being tried are abandoned and their channels closed.
        """
        self._check_running()
        timeout = check_seconds(timeout, "trace timeout")
        if check_peer_id(peer_id) == self.id:
            raise ValueError("that is this node's own id")
        known = await self.contacts.find_stored(peer_id)
        endpoints = known.endpoints if known is not None else ()
        return await self._reaching.trace(peer_id, endpoints, timeout, resolve=self._nearby.resolve)

    async def resolve(self, peer_id: PeerId) -> Peer:
        """Find ``peer_id`` through the discovery providers.

        :raises PeerUnreachable: when no provider knows it.
        :raises NotRunning: when the node is not running.

        If cancelled, the lookups under way are abandoned.
        """
        self._check_running()
        return await self._nearby.resolve(check_peer_id(peer_id))


def _application_id(application: Application | uuid.UUID | None) -> uuid.UUID | None:
    if application is None or isinstance(application, uuid.UUID):
        return application
    if isinstance(application, Application):
        return application.id
    raise TypeError(f"application must be an Application or a UUID, not {type(application).__name__}")
