"""People near me: the discovery providers, this node's own signed record, and who watches them.

One :class:`Nearby` part per node runs the discovery providers into one :class:`Directory`, signs
and publishes this node's record (again when its nickname, endpoint name or addresses change),
withdraws it at sign-out, and hands the changes of the people near me to watches and handlers
while the node is signed in to NEAR_ME.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel

from peerkit.bus import NearbyWatch
from peerkit.discovery.base import (
    Announcement,
    Directory,
    DirectoryStats,
    DiscoveryProvider,
    DiscoverySession,
    NearbyRecord,
    make_record,
    read_record,
)
from peerkit.discovery.island import needs_asyncio_thread, run_in_asyncio_thread
from peerkit.errors import (
    DiscoveryError,
    InvalidRecord,
    NotRunning,
    NotSignedIn,
    PeerkitError,
    PeerUnreachable,
    StoreError,
)
from peerkit.events import NearbyChanged
from peerkit.handles import Handle
from peerkit.identity import PeerId
from peerkit.model import ChangeType, EndPoint, Scope, seconds_text
from peerkit.net.transport import WILDCARDS, local_addresses
from peerkit.node.connections import ChannelPeer, Me
from peerkit.node.settings import LAST_SEQ, Settings
from peerkit.peers import NearbyPeer, Peer, PeerOps
from peerkit.sync import Flag, Lock

__all__ = ("NEAR_SETTLE", "NEAR_WAIT", "PROVIDER_TIMEOUT", "Nearby", "NearbyHandler")

log = logging.getLogger(__name__)

#: Seconds a discovery provider may take to publish or withdraw before it is given up on.
PROVIDER_TIMEOUT: Final = 5.0
#: Seconds a peer that is not where it was known to be is waited for among the people near me.
NEAR_WAIT: Final = 1.5
#: Seconds after its start in which a node may not have heard all of its LAN yet (a multicast
#: answer lost, or a busy machine): a peer looked for near me sooner is waited for until then.
NEAR_SETTLE: Final = 5.0

NearbyHandler = Callable[[NearbyChanged], Awaitable[None]]


class _Started:
    # Passes a provider's started() on.
    def __init__(self, ready: Callable[[Any], None]) -> None:
        self.started = ready


class Nearby:
    """Discovery and people near me; see the module docstring."""

    def __init__(
        self,
        *,
        providers: list[DiscoveryProvider],
        listen_host: str,
        address_check: float,
        scope: Callable[[], Scope],
        me: Callable[[], Me],
        peer_ops: PeerOps,
        fetch_record: Callable[[str, int, PeerId | None], Awaitable[bytes]],
        on_change: Callable[[ChangeType, NearbyRecord], None],
        locator_key: Callable[[PeerId | None], Awaitable[bytes | None]] | None = None,
        state_dir: Path | None = None,
        contact_addresses: Callable[[], Awaitable[list[tuple[str, int]]]] | None = None,
        is_contact: Callable[[PeerId], bool] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._is_contact = is_contact
        self._settings = settings
        self._locator_key = locator_key
        self._contact_addresses = contact_addresses
        self._state_dir = state_dir
        self._providers = providers
        self._listen_host = listen_host
        self._address_check = address_check
        self._scope = scope
        self._me = me
        self._peer_ops = peer_ops
        self._fetch_record = fetch_record
        self._on_change = on_change
        self._sessions: list[tuple[DiscoveryProvider, DiscoverySession]] = []
        self._directory: Directory | None = None
        self._watches: set[NearbyWatch] = set()
        self._seq = 0
        self._publishing = Lock()
        #: The signed record this node publishes now (None before the first sign-in).
        self.record: bytes | None = None
        # What the record says: nickname, endpoint name, addresses, relays, mapped endpoint, relaying.
        self._signed_as: tuple[object, ...] | None = None
        self._republish = Flag()
        self._near_me = Flag()  # set while signed in to NEAR_ME
        self._tg: anyio.abc.TaskGroup | None = None
        self._started = -math.inf  # when the providers started, on anyio's clock

    # -- lifetime ----------------------------------------------------------------------------
    async def start(self, tg: anyio.abc.TaskGroup, local_id: PeerId) -> None:
        """Start every provider in ``tg``, and the task that publishes changes of the record.

        :raises DiscoveryError: when a provider cannot start (those started are then stopped
            with ``tg``).
        """
        self._tg = tg
        self._started = anyio.current_time()
        self._directory = Directory(
            local_id,
            self._changed,
            fetch_record=self._fetch_record,
            signer=self._me().identity,
            locator_key=self._locator_key,
            state_dir=self._state_dir,
            listen_port=self._me().endpoint.port or None,
            # (the address bound for one that names one: a host name is resolved there)
            listen_host=self._listen_host if self._listen_host in WILDCARDS else self._me().endpoint.host,
            contact_addresses=self._contact_addresses,
            is_contact=self._is_contact,
        )
        for provider in self._providers:
            try:
                session = await tg.start(self._run_provider, provider)
            except Exception as exc:
                failure = DiscoveryError(f"discovery provider {provider.name} could not start: {exc}")
                failure.__cause__ = exc
                self._sessions.clear()
                raise failure from exc
            self._sessions.append((provider, session))
        tg.start_soon(self._publisher)

    def clear(self) -> None:
        """Forget the sessions and end the watches (the node stopped)."""
        self.end_watches()
        self._sessions.clear()
        self._tg = None

    async def _run_provider(
        self, provider: DiscoveryProvider, *, task_status: anyio.abc.TaskStatus[DiscoverySession]
    ) -> None:
        # A provider that fails to start fails the node's start; one that fails later is logged,
        # and what it reported is forgotten.
        started = False

        def ready(session: DiscoverySession) -> None:
            nonlocal started
            started = True
            task_status.started(session)

        assert self._directory is not None
        status: Any = _Started(ready)
        try:
            if needs_asyncio_thread(provider):
                await run_in_asyncio_thread(provider, self._directory, task_status=status)
            else:
                await provider.run(self._directory, task_status=status)
        except Exception:
            if not started:
                raise
            log.exception("discovery provider %s failed", provider.name)
        finally:
            self._directory.drop_source(provider.name)

    # -- this node's record ------------------------------------------------------------------
    def next_seq(self) -> int:
        """A sequence number for a new record or card: above every earlier one, even across runs.

        It is Unix time in milliseconds, or above the last one when the clock is behind it: the
        last is saved with the settings, so that a clock set back (a wrong clock put right, a
        machine that keeps local time in its clock) makes no record or card look older than the
        ones peers and contacts already hold, which they would ignore.
        """
        if not self._seq and self._settings is not None:
            self._seq = self._settings.get_number(LAST_SEQ)
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        if self._settings is not None:
            self._settings.set(LAST_SEQ, str(self._seq))  # saved by publish() or when the node stops
        return self._seq

    def hosts(self) -> tuple[str, ...]:
        """The addresses this node is reachable at now."""
        return local_addresses(self._listen_host, fallback=self._me().endpoint.host)

    def _sign_record(self, hosts: tuple[str, ...] | None = None) -> Announcement:
        me = self._me()
        hosts = hosts if hosts is not None else self.hosts()
        port = me.endpoint.port
        envelope = make_record(
            me.identity,
            self.next_seq(),
            nickname=me.nickname,
            endpoint_name=me.endpoint_name,
            # The mapped public endpoint first: it is the one a peer elsewhere can dial.
            endpoints=[
                *([(me.mapped.host, me.mapped.port, "mapped")] if me.mapped else []),
                *((h, port, "interface") for h in hosts),
            ],
            relays=[(e.host, e.port, e.relay.key) for e in me.relays if e.relay is not None],
            relay=me.relaying,
            applications=me.applications,
        )
        self.record = envelope
        self._signed_as = _says(me, hosts)
        return Announcement(
            id=me.identity.id, nickname=me.nickname, port=port, hosts=hosts, envelope=envelope
        )

    async def publish(self, scope: Scope, hosts: tuple[str, ...] | None = None) -> None:
        """Sign the record and publish it through the providers that serve ``scope``."""
        # One at a time, withdrawals too: a record signed while an older one was on its way to
        # the providers reaches each of them after it (not leaving one with the older record),
        # and one that waited its turn while the node signed out there is not published at all.
        async with self._publishing:
            scope &= self._scope()
            if not scope:
                return
            announcement = self._sign_record(hosts)
            for provider, session in self._sessions:
                if provider.scopes & scope:
                    try:
                        with anyio.fail_after(PROVIDER_TIMEOUT):
                            await session.publish(announcement)
                    except Exception:
                        log.exception("discovery provider %s failed to publish", provider.name)
            if self._settings is not None:
                try:
                    await self._settings.flush()  # (its seq)
                except StoreError as exc:
                    log.warning("could not save the record's sequence number: %s", exc)

    async def withdraw(self, scope: Scope) -> None:
        """Withdraw the record from the providers that serve ``scope`` and no scope still signed in
        (once a publication under way has reached them)."""
        async with self._publishing:
            for provider, session in self._sessions:
                if provider.scopes & scope and not provider.scopes & self._scope():
                    try:
                        with anyio.fail_after(PROVIDER_TIMEOUT):
                            await session.withdraw()
                    except Exception:
                        log.exception("discovery provider %s failed to withdraw", provider.name)

    def republish(self) -> None:
        """Publish the record again soon (the nickname or endpoint name changed)."""
        self._republish.set()

    async def _publisher(self) -> None:
        # Publishes again what changed (nickname, endpoint name, this host's addresses).
        while True:
            with anyio.move_on_after(self._address_check):
                await self._republish.wait()
            self._republish = Flag()
            hosts = self.hosts()
            me = self._me()
            scope = self._scope()
            if scope and self._signed_as != _says(me, hosts):
                await self.publish(scope, hosts)

    # -- sign-in -----------------------------------------------------------------------------
    async def signed_in(self, added: Scope) -> None:
        """The node signed in to ``added``: publish there."""
        if added & Scope.NEAR_ME:
            self._near_me.set()
        if added:
            await self.publish(added)

    async def signed_out(self, leaving: Scope) -> None:
        """The node signed out of ``leaving``: withdraw there; people near me are hidden."""
        await self.withdraw(leaving)
        if leaving & Scope.NEAR_ME:
            # Their watches end; the providers go on following them (what they know is not
            # reported twice), so signing in again shows them at once.
            self._near_me = Flag()
            self.end_watches()

    # -- people near me ----------------------------------------------------------------------
    def _changed(self, change: ChangeType, record: NearbyRecord) -> None:
        self._on_change(change, record)
        if not self._scope() & Scope.NEAR_ME:
            return
        event = NearbyChanged(change=change, peer=NearbyPeer(self._peer_ops, record))
        for watch in list(self._watches):
            watch.put(event)

    def end_watches(self) -> None:
        """End every watch of the people near me."""
        for watch in list(self._watches):
            watch.end()
        self._watches.clear()

    def is_near(self, peer_id: PeerId) -> bool:
        """Whether discovery holds a verified record of ``peer_id`` now."""
        return self._directory is not None and self._directory.get(peer_id) is not None

    def record_of(self, peer_id: PeerId) -> NearbyRecord | None:
        """The record discovery holds of ``peer_id``, if any (signed in or not)."""
        return self._directory.get(peer_id) if self._directory is not None else None

    @property
    def stats(self) -> DirectoryStats:
        """What discovery did with the records it heard."""
        if self._directory is None:
            raise NotRunning("the node is not running: use it inside 'async with node:'")
        return self._directory.stats

    def _directory_near_me(self) -> Directory:
        if self._directory is None:
            raise NotRunning("the node is not running: use it inside 'async with node:'")
        if not self._scope() & Scope.NEAR_ME:
            raise NotSignedIn("people near me need sign-in: call 'await node.sign_in(Scope.NEAR_ME)' first")
        return self._directory

    def nearby(self) -> list[NearbyPeer]:
        """The people near me now, in the order they were first seen."""
        return [NearbyPeer(self._peer_ops, record) for record in self._directory_near_me().records()]

    def watch(self, *, initial: bool = False, application: uuid.UUID | None = None) -> NearbyWatch:
        """Follow the people near me (see :meth:`Node.watch_nearby`)."""
        directory = self._directory_near_me()
        watch = NearbyWatch(self._watches.discard, application)
        if initial:
            for record in directory.records():
                watch.put(NearbyChanged(change=ChangeType.ADDED, peer=NearbyPeer(self._peer_ops, record)))
        self._watches.add(watch)
        return watch

    def add_handler(self, handler: NearbyHandler) -> Handle:
        """Run ``handler`` for every change while signed in to NEAR_ME (see
        :meth:`Node.add_nearby_handler`)."""
        if self._tg is None:
            raise NotRunning("the node is not running: use it inside 'async with node:'")
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                while True:
                    await self._near_me.wait()
                    async with self.watch(initial=True) as watch:
                        async for event in watch:
                            try:
                                await handler(event)
                            except Exception:
                                log.exception("nearby handler %r failed", handler)

        self._tg.start_soon(run)
        return Handle(scope.cancel)

    async def find(
        self,
        *,
        nickname: str | None = None,
        peer_id: PeerId | None = None,
        application: uuid.UUID | None = None,
        timeout: float,
    ) -> NearbyPeer:
        """The first peer near me that matches (see :meth:`Node.find_nearby`)."""

        def match(peer: NearbyPeer) -> bool:
            if peer_id is not None and peer.id != peer_id:
                return False
            return nickname is None or peer.nickname == nickname

        async with self.watch(initial=True, application=application) as watch:
            with anyio.move_on_after(timeout):
                async for event in watch:
                    if event.change is not ChangeType.DELETED and match(event.peer):
                        return event.peer
        wants = [
            *([f"id {peer_id.fingerprint}"] if peer_id is not None else []),
            *([f"nickname {nickname!r}"] if nickname is not None else []),
            *([f"application {application}"] if application is not None else []),
        ]
        what = " and ".join(wants)
        self._directory_near_me()
        raise PeerUnreachable(f"no peer near me with {what} appeared within {seconds_text(timeout)}")

    async def found_elsewhere(self, peer: Peer, tried: tuple[EndPoint, ...]) -> Peer | None:
        """``peer``, not where it was known to be (``tried``), found anew by the providers that
        resolve remote peers (the DHT): at the endpoints not tried yet; None when there are none."""
        if isinstance(peer, ChannelPeer):
            return None  # reachable only over the channel it opened
        known = set(tried)
        fresh: tuple[EndPoint, ...] = ()
        async with anyio.create_task_group() as tg:

            async def near() -> None:  # a peer on the LAN that listens elsewhere now
                nonlocal fresh
                found = tuple(e for e in await self._near_endpoints(peer.id) if e not in known)
                if found:
                    fresh = found
                    tg.cancel_scope.cancel()

            async def remote() -> None:
                nonlocal fresh
                found = tuple(e for e in await self.resolve_remote(peer.id) if e not in known)
                if found and not fresh:
                    fresh = found
                    tg.cancel_scope.cancel()

            tg.start_soon(near)
            tg.start_soon(remote)
        return Peer(self._peer_ops, peer.id, fresh, peer.nickname) if fresh else None

    async def _near_endpoints(self, peer_id: PeerId) -> tuple[EndPoint, ...]:
        # Where people-near-me discovery sees ``peer_id``; signed in near me, waiting up to
        # NEAR_WAIT seconds for its record, or until NEAR_SETTLE seconds after the start (a node
        # that just started hears its LAN within a few hundred milliseconds, unless an answer was
        # lost or the machine is busy: a command that signs in and invites at once).
        record = self.record_of(peer_id)
        if record is not None or not self._scope() & Scope.NEAR_ME:
            return record.endpoints if record is not None else ()
        wait = max(NEAR_WAIT, self._started + NEAR_SETTLE - anyio.current_time())
        try:
            return (await self.find(peer_id=peer_id, timeout=wait)).endpoints
        except (PeerUnreachable, NotSignedIn):  # not near in time, or signed out meanwhile
            return ()

    async def resolve_remote(self, peer_id: PeerId) -> tuple[EndPoint, ...]:
        """Where the providers that serve the Internet scope find ``peer_id`` now (none: empty)."""
        for provider, session in self._sessions:
            if not provider.scopes & Scope.INTERNET:
                continue
            try:
                with anyio.fail_after(PROVIDER_TIMEOUT):
                    envelopes = await session.resolve(peer_id)
            except (TimeoutError, PeerkitError) as exc:
                log.info(
                    "discovery provider %s could not resolve %s: %s", provider.name, peer_id.fingerprint, exc
                )
                continue
            found = _endpoints_in(peer_id, envelopes)[1]
            if found:
                return found
        return ()

    async def resolve(self, peer_id: PeerId) -> Peer:
        """Find ``peer_id`` through the discovery providers (see :meth:`Node.resolve`)."""
        record = self.record_of(peer_id)
        if record is not None:
            return NearbyPeer(self._peer_ops, record)
        for _, session in self._sessions:
            nickname, endpoints = _endpoints_in(peer_id, await session.resolve(peer_id))
            if endpoints:
                return Peer(self._peer_ops, peer_id, endpoints, nickname)
        await anyio.lowlevel.checkpoint()
        raise PeerUnreachable(f"no discovery provider knows {peer_id.fingerprint}")


def _endpoints_in(peer_id: PeerId, envelopes: list[bytes]) -> tuple[str, tuple[EndPoint, ...]]:
    # The nickname of the newest of ``peer_id``'s records among ``envelopes`` (newest first: one
    # per device signed in with the id) and the endpoints of them all, newest first.
    nickname, endpoints = "", dict[EndPoint, None]()
    for envelope in envelopes:
        with contextlib.suppress(InvalidRecord):
            signed, nick, _, found = read_record(envelope)
            if signed.id == bytes(peer_id) and found:
                nickname = nickname or nick
                endpoints.update(dict.fromkeys(found))
    return nickname, tuple(endpoints)


def _says(me: Me, hosts: tuple[str, ...]) -> tuple[object, ...]:
    # What a record signed now would say (a change is published again).
    return (me.nickname, me.endpoint_name, hosts, me.relays, me.mapped, me.relaying, me.applications)
