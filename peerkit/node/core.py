"""The :class:`Node`: one identity on the network, and everything that runs for it.

A node listens for secure channels, keeps at most one control channel per remote peer (reused for
every request, kept alive with pings, closed when idle), registers applications, answers
invitations through handlers, and carries application streams. Everything it runs lives in its
task group: leaving ``async with node:`` stops all of it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from peerkit.bus import Bus
from peerkit.contact import Contact
from peerkit.contacts import PRESENCE_SETTING, ContactManager, data_version, saved_presence
from peerkit.discovery.base import DiscoveryProvider, NearbyRecord
from peerkit.errors import DiscoveryError, NotRunning, NotSignedIn, PeerkitError
from peerkit.events import (
    InvitationAnswered,
    NameChanged,
    PresenceChanged,
)
from peerkit.handles import Handle, Subscription
from peerkit.identity import Identity, PeerId
from peerkit.invitations import Invitation, InvitationPolicy
from peerkit.model import (
    Application,
    ChangeType,
    EndPoint,
    PeerObject,
    Presence,
    PresenceStatus,
    Scope,
    check_scope,
    check_text,
)
from peerkit.net.channel import ChannelListener, SecureChannel
from peerkit.net.control import ControlChannel, KeepalivePolicy, Reply
from peerkit.net.fds import fd_budget
from peerkit.net.transport import TcpTransport, Transport, listening, reachable_host
from peerkit.node.config import NodeConfig
from peerkit.node.connections import MAX_CHANNELS_PER_PEER, Connections, Me
from peerkit.node.eventing import EventMethods
from peerkit.node.finding import FindingMethods
from peerkit.node.invitations import InvitationHandler, Invitations
from peerkit.node.link import ContactEvents, Link, NodeSide
from peerkit.node.locator import Locator
from peerkit.node.nearby import PROVIDER_TIMEOUT, Nearby, NearbyHandler
from peerkit.node.offered import OfferedMethods
from peerkit.node.pairing import PairingMethods
from peerkit.node.publishing import Published, Publishing, Visibility
from peerkit.node.reaching import Reach, Reaching
from peerkit.node.receivers import app_id as id_of
from peerkit.node.requests import Requests
from peerkit.node.settings import ENDPOINT_NAME, NICKNAME, Settings
from peerkit.node.streams import StreamHandler, Streams
from peerkit.node.watching import Watching
from peerkit.peers import Peer
from peerkit.presence import OFFLINE
from peerkit.proto.admission import AdmissionPolicy, RequestPolicy
from peerkit.proto.connection import HANDSHAKE_TIMEOUT
from peerkit.proto.holdings import Holdings, HoldingsPolicy
from peerkit.proto.relay import RelayPolicy
from peerkit.proto.requests import (
    CardRequest,
    DialbackRequest,
    GetRequest,
    InviteRequest,
    PunchRequest,
    RecordRequest,
    ReserveRequest,
    SubscribeRequest,
    UnsubscribeRequest,
)
from peerkit.store import DATABASE_FILE, Store
from peerkit.streams import AppStream

__all__ = (
    "MAX_CHANNELS_PER_PEER",
    "PROVIDER_TIMEOUT",
    "InvitationHandler",
    "NearbyHandler",
    "Node",
    "StreamHandler",
)

log = logging.getLogger(__name__)

EventHandler = Callable[[Any], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

#: Seconds the node gives its subscribers, when it stops, to receive its last changes (Offline).
FAREWELL_TIMEOUT: Final = 1.0


class Node(EventMethods, FindingMethods, OfferedMethods, PairingMethods):
    """One peerkit identity on the network; an async context manager.

    :param nickname: shown to other peers, at most 255 characters; saved in the data dir (without
        one, the nickname saved there is used).
    :param data_dir: where the identity key, settings and contact database live (created if
        missing). Default: the per-user data directory, or ``$PEERKIT_DATA_DIR``.
    :param identity: use this identity instead of the one in ``data_dir``; without a ``data_dir``
        nothing is persisted (contacts are kept in memory).
    :param listen: ``(host, port)`` or ``"HOST:PORT"`` to listen on (host ``""``, the default: every
        address, IPv4 and IPv6; ``"0.0.0.0"``: every IPv4 one; ``"::"``: every IPv6 one); port 0: any.
    :param discovery: discovery providers: names (``"mdns"``, ``"static:HOST:PORT[#ID]"``,
        ``"memory"``, or any from the ``peerkit.discovery`` entry points) or provider objects.
    :param network: how to listen and dial: TCP by default, or a :class:`peerkit.testing.MemoryNetwork`.
    :param invitation_policy: who may invite this node.
    :param keepalive: ping interval, ping timeout and idle timeout of control channels. A watched
        contact whose connection is lost and not restored within ``interval + 2 * timeout``
        seconds is seen Offline; a lost contact is tried again at most ``interval`` seconds apart.
    :param handshake_timeout: seconds a dial (connect and handshake) may take.
    :param queue_size: invitations or streams that may wait for an async iterator (strangers' 3/4 of them).
    :param address_check: seconds between checks of this host's addresses (when listening on a
        wildcard address): a change is published to the discovery providers.
    :param store_check: seconds between checks of the contact database for changes made by another
        process (``peerkit contacts ...`` while ``peerkit serve`` runs): they take effect as if made
        here, with their events. A presence saved by ``peerkit presence set`` is published too.
    :param dht_bootstrap: (host, port) pairs the ``dht`` provider joins through instead of the public
        routers (a ``dht`` provider is added when ``discovery`` has none).
    :param request_budget: how many requests each peer, and the strangers of one address together,
        may make (default: 1,000 a second, bursts of 2,000); over it a request is answered with
        ``error`` "limit", and a peer whose last 100 requests were all over it is disconnected.
    :param admission: how many handshakes the listener takes, in all and from one source, and how
        fast a source may start them (default: :class:`~peerkit.AdmissionPolicy`'s, 50 a second
        from one address); over TCP its handshakes still hold at most a quarter of the file
        descriptors.
    :param holdings: how many channels and streams peers may make the node hold, in all, for
        strangers and from one source (default: :class:`~peerkit.HoldingsPolicy`'s, 1,024 in all);
        over TCP at most what its file descriptors leave.
    :param relay: serve as a relay for peers that cannot be dialled (``True``: for contacts, with
        the default limits; or a :class:`~peerkit.RelayPolicy`).
    :param relays: relays to keep reservations on (``EndPoint(host, port, relay=relay_id)``): while
        one is held, peers reach this node through it, and its record says so.
    :param port_mapping: map the port through the home router (PCP, NAT-PMP or UPnP) when the node
        listens behind one; default on over TCP (off with a ``network`` of your own), unless
        ``PEERKIT_PORT_MAPPING=off`` is in the environment.
    :param auto_relay: while the node cannot be reached directly (no mapped port, and peers see
        it at an address not its own), keep reservations on up to two contacts whose records say
        they relay (:attr:`Reach.auto_relays`), as well as on ``relays``.

    Several nodes may run in one process. Using a node before ``async with`` or after it raises
    :class:`~peerkit.NotRunning`.
    """

    def __init__(
        self,
        *,
        nickname: str = "",
        data_dir: str | os.PathLike[str] | None = None,
        identity: Identity | None = None,
        listen: tuple[str, int] | str = ("", 0),
        discovery: Iterable[str | DiscoveryProvider] = (),
        network: Transport | None = None,
        invitation_policy: InvitationPolicy = InvitationPolicy.ANYONE,
        keepalive: KeepalivePolicy | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        queue_size: int = 16,
        address_check: float = 10.0,
        store_check: float = 1.0,
        request_budget: RequestPolicy | None = None,
        admission: AdmissionPolicy | None = None,
        holdings: HoldingsPolicy | None = None,
        dht_bootstrap: Iterable[tuple[str, int]] | None = None,
        relay: bool | RelayPolicy = False,
        relays: Iterable[EndPoint] = (),
        port_mapping: bool | None = None,
        auto_relay: bool = True,
    ) -> None:
        config = NodeConfig.create(
            nickname=nickname,
            data_dir=data_dir,
            identity=identity,
            listen=listen,
            discovery=discovery,
            network=network,
            invitation_policy=invitation_policy,
            keepalive=keepalive,
            handshake_timeout=handshake_timeout,
            queue_size=queue_size,
            address_check=address_check,
            store_check=store_check,
            request_budget=request_budget,
            admission=admission,
            holdings=holdings,
            dht_bootstrap=dht_bootstrap,
            relay=relay,
            relays=relays,
            port_mapping=port_mapping,
            auto_relay=auto_relay,
        )
        #: The checked options this node was built with.
        self.config = config
        self._nickname = config.nickname
        self._data_dir = config.data_dir
        self._listen = config.listen
        self._providers = list(config.providers)
        self._address_check = config.address_check
        self._store_check = config.store_check
        self._network = config.network
        self._keepalive = config.keepalive
        self._handshake_timeout = config.handshake_timeout
        self._queue_size = config.queue_size

        self._identity: Identity | None = identity
        self._endpoint_name = ""
        self._endpoint: EndPoint | None = None
        self._scope = Scope.NONE
        self._apps: dict[uuid.UUID, Application] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._listener: ChannelListener | None = None
        self._running = False
        self._store = Store(self._data_dir / DATABASE_FILE if self._data_dir is not None else None)
        self._bus: Bus[Any] = Bus(self._spawn)
        self._early_tasks: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._presence = Presence(PresenceStatus.ONLINE)
        self._objects: dict[uuid.UUID, PeerObject] = {}
        # The parts. Peers and contacts reach the node through one link (their Protocols).
        link = Link(
            NodeSide(
                identity=lambda: self.identity,
                local_id=lambda: self._identity.id if self._identity is not None else None,
                nickname=lambda: self._nickname,
                set_nickname=functools.partial(setattr, self, "nickname"),
                endpoint_name=lambda: self._endpoint_name,
                listening=lambda: self._endpoint if self._running else None,
                check_running=self._check_running,
            )
        )
        #: The contact store.
        self.contacts = ContactManager(link, self._store, self._bus)
        self._settings = Settings(self.contacts, self._data_dir)
        self._connections = Connections(
            network=self._network,
            keepalive=self._keepalive,
            handshake_timeout=self._handshake_timeout,
            handler=self._dispatch,
            notices={  # (lambdas: the parts that take them are made below)
                "notify": lambda c, m: self._watching.on_notify(c, m),  # noqa: PLW0108
                "invite_cancel": lambda c, m: self._invitations.on_cancel(c, m),  # noqa: PLW0108
                "card_update": lambda c, m: self._locator.on_card(c, m),  # noqa: PLW0108 (made later)
                "circuit": lambda c, m: self._reaching.on_circuit(c, m),  # noqa: PLW0108
                "unreserved": lambda c, m: self._reaching.on_unreserved(c, m),  # noqa: PLW0108
            },
            on_closed=self._channel_closed,
            on_peer=self._channel_opened,
            serve_stream=self._serve_stream,
            peer_ops=link,
            is_contact=self.contacts.has,
            holdings=config.holdings,
        )
        self._reaching = Reaching(
            policy=config.relay,
            relays=config.relays,
            is_contact=self.contacts.has,
            connections=self._connections,
            network=self._network,
            me=self._me,
            changed=lambda: self._nearby.republish(),  # noqa: PLW0108 (made later)
            port_mapping=config.port_mapping,
            auto_relay=config.auto_relay,
            record_of=lambda control: self._requests.record_of(control),  # noqa: PLW0108 (made later)
            internet=lambda: bool(self._scope & Scope.INTERNET),
        )
        self._invitations = Invitations(
            policy=config.invitation_policy,
            queue_size=self._queue_size,
            contacts=self.contacts,
            registered=self._registered,
            application=self._apps.get,
            sender=self._connections.sender,
            routes=lambda peer, exact: self._connections.routes(peer, self._endpoints_of(peer), exact=exact),
            connected=lambda peer_id: self._connections.channels(peer_id) > 0,
            check_running=self._check_running,
            fallback=self._elsewhere,
        )
        self._streams = Streams(
            queue_size=self._queue_size,
            handshake_timeout=self._handshake_timeout,
            connect=self._connections.connect,
            endpoints_of=self._endpoints_of,
            fallback=self._elsewhere,
            registered=self._registered,
            application=self._apps.get,
            policy=self._invitations,
            check_running=self._check_running,
            holed=self._reaching.holed,
            punch=self._reaching.punch_stream,
        )
        self._publishing = Publishing(
            bus=self._bus,
            contacts=self.contacts,
            published=self._published,
            scope=lambda: self._scope,
            near=self._is_near,
            spawn=self._spawn,
            instance=os.urandom(16),  # this run, told to subscribers: one node seen once at any endpoint
        )
        self._requests = Requests(
            handlers={
                InviteRequest: self._invitations.on_invite,
                GetRequest: self._publishing.on_get,
                CardRequest: lambda c, r: self._locator.on_card_request(c, r),  # noqa: PLW0108 (made later)
                RecordRequest: lambda c, r: self._locator.on_record_request(c, r),  # noqa: PLW0108
                SubscribeRequest: self._publishing.on_subscribe,
                UnsubscribeRequest: self._publishing.on_unsubscribe,
                ReserveRequest: self._reaching.on_reserve,
                PunchRequest: self._reaching.on_punch,
                DialbackRequest: self._reaching.reachability.on_dialback,
            },
            routes=lambda peer: self._connections.routes(peer, self._endpoints_of(peer)),
            fallback=self._elsewhere,
            control_to=self._connections.control_to,
            check_running=self._check_running,
            record_timeout=self._handshake_timeout,
            disconnect=self._connections.disconnect,
            budget=config.request_budget,
            is_contact=self.contacts.has,
        )
        self._nearby = Nearby(
            providers=self._providers,
            listen_host=self._listen[0],
            address_check=self._address_check,
            scope=lambda: self._scope,
            me=self._me,
            peer_ops=link,
            fetch_record=self._requests.fetch_record,
            on_change=self._nearby_changed,
            locator_key=self.contacts.locator_key_of,
            state_dir=self._data_dir,
            contact_addresses=self.contacts.last_addresses,
            is_contact=self.contacts.has,
            settings=self._settings,
        )
        self._watching = Watching(
            bus=self._bus,
            contacts=self.contacts,
            control_to=self._connections.control_to,
            endpoints_of=self._endpoints_of,
            found_elsewhere=self._nearby.found_elsewhere,
            keepalive=self._keepalive,
            scope=lambda: self._scope,
            check_running=self._check_running,
            spawn=self._spawn,
            clock=lambda: self._connections.clock,
        )
        self._locator = Locator(self.contacts, self._connections, self._nearby, lambda: self._scope)
        self.contacts.add_listener(ContactEvents(self._watching, self._publishing, self._locator.changed))
        link.invitations, link.streams, link.requests = self._invitations, self._streams, self._requests
        link.watching, link.nearby, link.contacts = self._watching, self._nearby, self.contacts
        self._link = link

    # -- lifetime --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._running:
            raise RuntimeError("this node is already running; a Node can be entered once")
        if self._stack is not None:
            raise NotRunning("this node has stopped; a Node runs once: make a new one to start again")
        if self._identity is None:
            assert self._data_dir is not None
            # A small file, read here: a worker thread would outlive the node (anyio keeps them).
            self._identity, _ = Identity.load_or_create(self._data_dir)
        assert self._identity is not None
        async with contextlib.AsyncExitStack() as stack:
            await self._store.open()
            stack.push_async_callback(self._store.aclose)
            await self.contacts.load()
            await self._settings.load()
            self._endpoint_name = self._settings.get(ENDPOINT_NAME)
            if not self._nickname:
                self._nickname = self._settings.get(NICKNAME)  # the one saved in the data dir
            elif self._nickname != self._settings.get(NICKNAME):
                self._settings.set(NICKNAME, self._nickname)  # given: kept for the next start
                await self._settings.flush()
            listener = await self._network.listen(*self._listen)
            stack.push_async_callback(listener.aclose)
            # Over TCP, what strangers can make the node hold fits in its file descriptors.
            places = fd_budget().usable if isinstance(self._network, TcpTransport) else None
            admission = (
                AdmissionPolicy.within(places, self.config.admission) if places else self.config.admission
            )
            if places is not None and admission is not None:
                held = HoldingsPolicy.within(places - admission.max_pending, self.config.holdings)
                self._connections.holdings = Holdings(held)
            self._listener = ChannelListener(
                listener,
                self._identity,
                nickname=self._nickname,
                endpoint_name=self._endpoint_name,
                handshake_timeout=self._handshake_timeout,
                admission=admission,
            )
            self._listener.is_contact = self.contacts.has
            if self._reaching.service is not None:
                self._listener.relay = self._reaching.service.serve
            bound_host, bound_port = listening(self._listen[0], self._listener.address)
            self._endpoint = EndPoint(reachable_host(bound_host), bound_port, self._endpoint_name)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._connections.start(self._tg, self._me)
            self._locator.start(self._tg)
            await self._tg.start(self._listener.serve, self._connections.on_channel)
            channels = self._listener
            self._reaching.start(
                self._tg,
                channels.take,
                listening(self._listen[0], channels.address),
                accepted_publicly=lambda: channels.accepted_publicly,
            )
            failure: DiscoveryError | None = None
            try:
                await self._nearby.start(self._tg, self._identity.id)
            except DiscoveryError as exc:
                failure = exc
            if failure is None:
                self._tg.start_soon(self._publishing.fanout)
                if self._store.path is not None:
                    self._tg.start_soon(self._follow_store)
                for task in self._early_tasks:
                    self._tg.start_soon(task)
                self._early_tasks.clear()
                self._running = True
                self._stack = stack.pop_all()
            else:  # stop what started, then fail (outside the task group: not wrapped in a group)
                self._tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._running = False
        self._invitations.clear()  # async iterators of invitations end
        leaving, self._scope = self._scope, Scope.NONE
        if leaving:
            self._scope_changed(leaving, Scope.NONE)
            with anyio.CancelScope(shield=True), anyio.move_on_after(FAREWELL_TIMEOUT):
                await self._publishing.farewell()  # subscribers see Offline before the channels close
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await self._nearby.withdraw(leaving)  # goodbyes, sent before the providers stop
        self._nearby.end_watches()
        self._bus.close()
        assert self._tg is not None
        assert self._stack is not None
        self._tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self._streams.close_all()  # and their async iterators end
            await self._settings.stop()  # (and the last hello stamp)
        try:
            await self._stack.__aexit__(None, None, None)  # (the body's error goes on, ungrouped)
            return None
        finally:
            self._connections.clear()
            self._reaching.clear()
            self._locator.stop()
            self._nearby.clear()
            self._publishing.clear()
            self._watching.clear()

    def _spawn(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        # Handlers added before the node starts begin when it starts.
        if self._tg is not None and self._running:
            self._tg.start_soon(task)
        elif self._stack is None:
            self._early_tasks.append(task)

    def _check_running(self) -> None:
        if not self._running and self._stack is not None:  # (a node that stopped keeps its stack)
            raise NotRunning("the node has stopped")
        if not self._running:
            raise NotRunning("the node is not running: use it inside 'async with node:'")

    def _me(self) -> Me:
        assert self._identity is not None
        assert self._endpoint is not None
        return Me(
            identity=self._identity,
            nickname=self._nickname,
            endpoint_name=self._endpoint_name,
            endpoint=self._endpoint,
            relays=self._reaching.endpoints,
            mapped=self._reaching.mapping.endpoint,
            relaying=self._reaching.advertises,
            applications=tuple(a.id for a in self._apps.values() if a.scope & Scope.NEAR_ME),
        )

    @property
    def running(self) -> bool:
        """Whether the node is inside its ``async with`` block."""
        return self._running

    # -- who and where ---------------------------------------------------------------------
    @property
    def identity(self) -> Identity:
        """This node's identity (loaded or created on entry).

        :raises NotRunning: before the node was first entered (when it came from ``data_dir``).
        """
        if self._identity is None:
            raise NotRunning("the identity is loaded when the node starts: use it inside 'async with node:'")
        return self._identity

    @property
    def id(self) -> PeerId:
        """This node's peer id."""
        return self.identity.id

    @property
    def nickname(self) -> str:
        """The nickname other peers see, at most 255 characters; a change is published at once and
        saved in the data dir (a node started there without a nickname takes the saved one)."""
        return self._nickname

    @nickname.setter
    def nickname(self, value: str) -> None:
        self._nickname = check_text(value, "nickname")
        self._settings.set(NICKNAME, self._nickname)  # (saved in the data dir, like the endpoint name)
        if self._running:
            self._spawn(self._settings.flush)
        if self._listener is not None:
            self._listener.nickname = self._nickname
        self._nearby.republish()

    @property
    def endpoint(self) -> EndPoint:
        """Where this node listens, with the real bound port (a wildcard address shows as loopback).

        :raises NotRunning: when the node is not running.
        """
        self._check_running()
        assert self._endpoint is not None
        return self._endpoint

    @property
    def endpoint_name(self) -> str:
        """The display name of this endpoint (persisted in the data dir); at most 255 characters."""
        return self._endpoint_name

    @endpoint_name.setter
    def endpoint_name(self, value: str) -> None:
        self._endpoint_name = check_text(value, "endpoint name")
        if self._listener is not None:
            self._listener.endpoint_name = value
        if self._endpoint is not None:
            self._endpoint = EndPoint(self._endpoint.host, self._endpoint.port, value)
        self._settings.set(ENDPOINT_NAME, self._endpoint_name)
        if self._running:
            self._spawn(self._settings.flush)
        self._nearby.republish()
        if self._running:
            self._bus.publish(
                NameChanged(peer_id=self.id, contact=self.contacts.me, endpoint=None, name=value, local=True)
            )

    # -- sign-in ----------------------------------------------------------------------
    @property
    def scope(self) -> Scope:
        """The scopes this node is signed in to."""
        return self._scope

    @property
    def presence(self) -> Presence:
        """This node's presence: Online at sign-in (or what :meth:`set_presence` set), Offline when
        not signed in."""
        return self._presence if self._scope else OFFLINE

    async def set_presence(self, presence: Presence) -> None:
        """Publish ``presence`` to the contacts that watch this node and to peers near me.

        :raises TypeError: when it is not a :class:`~peerkit.Presence`.
        :raises ValueError: for Offline: others see Offline after :meth:`sign_out`.
        :raises NotSignedIn: when the node is not signed in.
        :raises NotRunning: when the node is not running.

        The change is made before the call first waits: cancelling the call does not undo it.
        """
        if not isinstance(presence, Presence):
            raise TypeError(f"set_presence takes a Presence, not {type(presence).__name__}")
        self._check_running()
        if not self._scope:
            raise NotSignedIn("sign in before setting a presence: await node.sign_in(Scope.ALL)")
        if presence.status is PresenceStatus.OFFLINE:
            raise ValueError("a signed-in node cannot be Offline; sign out to appear Offline")
        if presence != self._presence:
            self._presence = presence
            self._local_presence_changed()
        await anyio.lowlevel.checkpoint()

    async def _follow_store(self) -> None:  # (what another process commits to the database)
        version = await self._store.read(data_version)
        requested = self.contacts.setting(PRESENCE_SETTING)
        while True:
            await anyio.sleep(self._store_check)
            await self._settings.keep_stamp()  # (and the last hello stamp: see Settings)
            now = await self._store.read(data_version)
            if now == version:
                continue
            version = now
            try:
                settings = await self.contacts.reload()
            except PeerkitError:
                log.exception("could not read the changes made to %s", self._store.path)
                continue
            if settings.get(PRESENCE_SETTING) != requested:
                requested = settings.get(PRESENCE_SETTING)
                presence = saved_presence(settings)
                if presence is not None and self._scope and presence != self._presence:
                    self._presence = presence
                    self._local_presence_changed()

    def _local_presence_changed(self) -> None:
        self._bus.publish(
            PresenceChanged(
                peer_id=self.id, contact=self.contacts.me, endpoint=None, presence=self.presence, local=True
            )
        )

    def _scope_changed(self, before: Scope, after: Scope) -> None:
        # Sign-in or sign-out: presence, what subscribers may see, and the contacts this node watches.
        if not before and after:
            self._presence = Presence(PresenceStatus.ONLINE)
            for peer_id in self.contacts.watched():
                self._watching.start(peer_id)
        if before and not after:
            for peer_id in self._watching.watched():
                self._watching.stop(peer_id)
        if bool(before) != bool(after):
            self._local_presence_changed()
        self._bus.publish(Visibility())
        self._reaching.wake()  # relays among the contacts are kept while signed in to INTERNET

    async def sign_in(self, scope: Scope) -> None:
        """Sign in to ``scope`` (NEAR_ME, INTERNET or ALL); signing in again is a no-op.

        NEAR_ME publishes this node's signed record (id, nickname, endpoint name, addresses) through
        the providers that serve NEAR_ME, and makes the people they find near me visible.

        :raises ValueError: for ``Scope.NONE`` or a number that is not a scope.
        :raises TypeError: for a value that is not a number.
        :raises NotRunning: when the node is not running.

        Cancelling it is harmless: the scope is then either signed in or not, never half.
        """
        scope = check_scope(scope, "scope")
        if scope is Scope.NONE:
            raise ValueError("cannot sign in to Scope.NONE; use NEAR_ME, INTERNET or ALL")
        self._check_running()
        added = scope & ~self._scope
        before = self._scope
        self._scope |= scope
        if added:
            self._scope_changed(before, self._scope)
        await self._nearby.signed_in(added)
        await anyio.lowlevel.checkpoint()

    async def sign_out(self, scope: Scope = Scope.ALL) -> None:
        """Sign out of ``scope``, withdrawing what it published; a scope not signed in is a no-op.

        :raises ValueError: for a number that is not a scope.
        :raises TypeError: for a value that is not a number.
        :raises NotRunning: when the node is not running.

        The node counts as signed out of ``scope`` at once; cancelling the call stops waiting for
        the providers' goodbyes (each gives up after 5 s anyway).
        """
        scope = check_scope(scope, "scope")
        self._check_running()
        leaving = scope & self._scope
        before = self._scope
        self._scope &= ~scope
        if leaving:
            self._scope_changed(before, self._scope)
        await self._nearby.signed_out(leaving)
        await anyio.lowlevel.checkpoint()

    # -- discovery and people near me ---------------------------------------------------
    def _nearby_changed(self, change: ChangeType, record: NearbyRecord) -> None:
        if change is not ChangeType.DELETED:
            self._watching.wake(record.id)  # a watched contact appeared or moved: try it now
        if self._publishing.watches(record.id):
            self._bus.publish(Visibility())

    def _is_near(self, peer_id: PeerId) -> bool:
        return self._nearby.is_near(peer_id)

    # -- trust and policy ------------------------------------------------------------------
    @property
    def invitation_policy(self) -> InvitationPolicy:
        """Who may invite this node and open streams to it."""
        return self._invitations.policy

    @invitation_policy.setter
    def invitation_policy(self, policy: InvitationPolicy) -> None:
        self._invitations.policy = policy

    @property
    def trusted(self) -> frozenset[PeerId]:
        """The ids trusted for this run only (:meth:`trust`); contacts (``node.contacts``) are trusted too."""
        return self._invitations.trusted

    def trust(self, peer_id: PeerId) -> None:
        """Trust ``peer_id`` for this run of the node, without making it a contact: its invitations are
        marked trusted and pass the CONTACTS_ONLY policy. To trust a peer for good, add it to
        ``node.contacts``."""
        self._invitations.trust(peer_id)

    def untrust(self, peer_id: PeerId) -> None:
        """Stop trusting ``peer_id`` (nothing happens if it was not trusted)."""
        self._invitations.untrust(peer_id)

    def _registered(self, application: Application | uuid.UUID) -> Application:
        app_id = id_of(application)
        app = self._apps.get(app_id)
        if app is None:
            raise ValueError(f"application {app_id} is not registered on this node; register it first")
        return app

    # -- invitations and streams ------------------------------------------------------
    def add_invitation_handler(
        self, application: Application | uuid.UUID, handler: InvitationHandler
    ) -> Handle:
        """Answer invitations to ``application`` with ``handler(invitation)``, a coroutine function.

        It returns an :class:`~peerkit.InvitationResponse` (or calls ``invitation.accept()`` /
        ``decline()``). It is cancelled when the inviter withdraws or the invitation expires; one
        that raises is logged and counts as DECLINED. One handler (or iterator) per application.

        :raises ValueError: when the application already has a handler or iterator.
        :raises NotRunning: when the node has stopped.
        """
        return self._invitations.add_handler(application, handler)

    def on_invitation(self, application: Application | uuid.UUID) -> Callable[[F], F]:
        """Decorator form of :meth:`add_invitation_handler`; returns the function unchanged."""

        def decorate(handler: F) -> F:
            self.add_invitation_handler(application, handler)
            return handler

        return decorate

    def invitations(self, application: Application | uuid.UUID) -> Subscription[Invitation]:
        """Invitations to ``application`` as an async iterator; answer each with ``accept()`` or
        ``decline()``. Use ``async with`` so that it stops when you are done.

        :raises ValueError: when the application already has a handler or iterator.
        :raises NotRunning: when the node has stopped.
        """
        return self._invitations.iterator(application)

    def add_invitation_observer(self, observer: Callable[[InvitationAnswered], Awaitable[None]]) -> Handle:
        """Call ``observer(event)`` (a coroutine function) after every invitation this node receives
        has been answered or withdrawn, whatever the application. One that raises is logged."""
        return self._invitations.add_observer(observer)

    def add_stream_handler(self, application: Application | uuid.UUID, handler: StreamHandler) -> Handle:
        """Run ``handler(stream)`` for every application stream opened to ``application``; the stream
        is closed when it returns. One handler (or iterator) per application.

        :raises ValueError: when the application already has a stream handler or iterator.
        :raises TypeError: when ``handler`` is not callable.
        :raises NotRunning: when the node has stopped.
        """
        return self._streams.add_handler(application, handler)

    def on_stream(self, application: Application | uuid.UUID) -> Callable[[F], F]:
        """Decorator form of :meth:`add_stream_handler`; returns the function unchanged."""

        def decorate(handler: F) -> F:
            self.add_stream_handler(application, handler)
            return handler

        return decorate

    def streams(self, application: Application | uuid.UUID) -> Subscription[AppStream]:
        """Application streams opened to ``application``, as an async iterator. Each stream stays
        open until you close it (``async with stream:``).

        :raises ValueError: when the application already has a stream handler or iterator.
        :raises NotRunning: when the node has stopped.
        """
        return self._streams.iterator(application)

    def _serve_stream(self, channel: SecureChannel) -> Awaitable[None]:
        return self._streams.serve(channel)  # the coroutine itself: no frame of its own

    # -- peers -----------------------------------------------------------------------------
    def peer(self, peer_id: PeerId, *endpoints: EndPoint, nickname: str = "") -> Peer:
        """A :class:`~peerkit.Peer` for an id and endpoints you already know (nothing is dialled yet).

        :raises ValueError: when no endpoint is given or ``peer_id`` is this node's own id.
        """
        if self._identity is not None and peer_id == self._identity.id:
            raise ValueError("that is this node's own id")
        return Peer(self._link, peer_id, endpoints, nickname)

    async def peer_at(self, host: str, port: int, peer_id: PeerId | None = None) -> Peer:
        """Dial ``host:port`` and return the :class:`~peerkit.Peer` listening there.

        With ``peer_id`` the handshake is IK and only that peer is accepted; without it, XX, and
        the peer's id is learned from the handshake. The channel stays open for later requests.

        :raises PeerUnreachable: when nothing answers, or not in time.
        :raises HandshakeError: when the handshake fails: the peer there is not ``peer_id``, it
            refused the connection (too many from this address), or what answers is no peerkit node.
        :raises ValueError: for a bad address, or when the address is this node itself.
        :raises NotRunning: when the node is not running.

        If cancelled, the caller stops waiting; a dial under way finishes in the node's task group
        and its channel is kept for later requests (or closed when idle).
        """
        endpoint = EndPoint(host, port)
        self._check_running()
        if peer_id is not None and peer_id == self.id:
            raise ValueError("that is this node's own id")
        control = await self._connections.control_to(peer_id, endpoint, exact=True)
        info = control.channel.peer
        named = EndPoint(endpoint.host, endpoint.port, info.endpoint_name)
        return Peer(self._link, control.peer_id, (named,), info.nickname)

    def _endpoints_of(self, peer: Peer) -> tuple[EndPoint, ...]:
        # Where to reach a peer: for a contact, where discovery sees it now, then what is stored.
        if isinstance(peer, Contact):
            record = self._nearby.record_of(peer.id)
            if record is not None:
                return tuple(dict.fromkeys((*record.endpoints, *peer.endpoints)))
        return tuple(peer.endpoints)

    async def disconnect(self, peer_id: PeerId) -> None:
        """Close every control channel to ``peer_id`` now; requests waiting on them fail with
        :class:`~peerkit.PeerUnreachable` and handlers of its invitations are cancelled. The next
        request to the peer dials again. Nothing happens when there is no channel."""
        await self._connections.disconnect(peer_id)

    def channels(self, peer_id: PeerId) -> int:
        """How many control channels to ``peer_id`` are open (0 or 1, briefly 2 after a simultaneous dial)."""
        return self._connections.channels(peer_id)

    def _elsewhere(self, peer: Peer) -> Awaitable[Peer | None]:
        return self._nearby.found_elsewhere(peer, tuple(peer.endpoints))  # (a record heard since: new)

    def _channel_opened(self, peer_id: PeerId) -> None:
        if self.contacts.has(peer_id):
            assert self._tg is not None
            self._tg.start_soon(self.contacts.seen, peer_id)
            self._reaching.wake()  # a contact that relays, for a node that cannot be reached?

    def _channel_closed(self, control: ControlChannel) -> None:
        self._publishing.end(control)
        self._reaching.closed(control)
        self._watching.closed(control)

    # -- requests from peers ---------------------------------------------------------------
    def _dispatch(self, control: ControlChannel, message: dict[str, Any]) -> Awaitable[Reply]:
        return self._requests.dispatch(control, message)  # the coroutine itself: no frame of its own

    # -- publishing to subscribers ----------------------------------------------------
    def _published(self) -> Published:
        apps, objects = self._apps.values(), self._objects.values()
        return Published(presence=self.presence, name=self._endpoint_name, apps=apps, objects=objects)

    def reach(self) -> Reach:
        """How this node can be reached now: its mapped port, its relays, what it relays."""
        return self._reaching.reach()

    def subscribers(self) -> list[PeerId]:
        """The ids of the peers that watch this node now (one entry per subscription)."""
        return self._publishing.subscribers()

    def __repr__(self) -> str:
        state = f"running at {self._endpoint}" if self._running else "stopped"
        who = self._identity.id.fingerprint if self._identity is not None else "?"
        return f"<Node {self._nickname or '?'} {who} {state}>"
