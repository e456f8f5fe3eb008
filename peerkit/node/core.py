"""The :class:`Node`: one identity on the network, and everything that runs for it.

A node listens for secure channels, keeps at most one control channel per remote peer (reused for
every request, kept alive with pings, closed when idle), registers applications, answers
invitations through handlers, and carries application streams. Everything it runs lives in its
task group: leaving ``async with node:`` stops all of it.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self, TypeGuard, TypeVar

import anyio
import anyio.abc

from peerkit.apps import AppStream, Handle, Invitation, InvitationAnswered, InvitationPolicy, Subscription
from peerkit.bus import Bus, EventWatch
from peerkit.contacts import (
    PRESENCE_SETTING,
    CardContent,
    Contact,
    ContactManager,
    data_version,
    read_card,
    saved_presence,
)
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
    LimitExceeded,
    NotAllowed,
    NotRunning,
    NotSignedIn,
    PeerkitError,
    PeerUnreachable,
    ProtocolError,
)
from peerkit.events import (
    ApplicationChanged,
    ContactChanged,
    Event,
    NameChanged,
    ObjectChanged,
    PresenceChanged,
    SubscriptionListChanged,
)
from peerkit.identity import Identity, PeerId
from peerkit.model import (
    MAX_APPLICATIONS,
    MAX_INVITATION_WAIT,
    MAX_OBJECTS,
    MAX_TEXT,
    Application,
    ChangeType,
    EndPoint,
    InvitationResponse,
    PeerObject,
    Presence,
    PresenceStatus,
    Scope,
    check_data,
    check_scope,
    check_seconds,
    check_text,
)
from peerkit.net.channel import ChannelListener, SecureChannel
from peerkit.net.control import Answer, ControlChannel, KeepalivePolicy, Reply
from peerkit.net.transport import Transport, local_addresses
from peerkit.node.config import NodeConfig
from peerkit.node.publishing import Published, Publishing, Visibility
from peerkit.node.watching import Watching
from peerkit.peers import NearbyChanged, NearbyPeer, NearbyWatch, Peer, wire_ttl
from peerkit.presence import (
    OFFLINE,
    read_app,
    read_object,
    read_presence,
)
from peerkit.proto.connection import HANDSHAKE_TIMEOUT
from peerkit.proto.messages import USE_STREAM
from peerkit.proto.requests import (
    BadRequest,
    CardRequest,
    ErrorCode,
    GetRequest,
    InviteRequest,
    RecordRequest,
    Request,
    SubscribeRequest,
    UnsubscribeRequest,
    decode_request,
    error_reply,
)
from peerkit.store import DATABASE_FILE, Store

__all__ = ("InvitationHandler", "NearbyHandler", "Node", "StreamHandler")

log = logging.getLogger(__name__)

InvitationHandler = Callable[[Invitation], Awaitable[InvitationResponse | None]]
StreamHandler = Callable[[AppStream], Awaitable[None]]
NearbyHandler = Callable[[NearbyChanged], Awaitable[None]]
EventHandler = Callable[[Any], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

SETTINGS_FILE: Final = "node.json"
#: Control channels one peer may have open to a node at once (more are closed at once): one is the
#: rule, a few more appear briefly after simultaneous dials or when one identity runs on several hosts.
MAX_CHANNELS_PER_PEER: Final = 8
#: Seconds a discovery provider may take to publish or withdraw before the node gives up on it.
PROVIDER_TIMEOUT: Final = 5.0
_RESPONSES: Final = {
    "accepted": InvitationResponse.ACCEPTED,
    "declined": InvitationResponse.DECLINED,
    "expired": InvitationResponse.EXPIRED,
}
_WIRE: Final = {v: k for k, v in _RESPONSES.items()}


#: Seconds the node gives its subscribers, when it stops, to receive its last changes (Offline).
FAREWELL_TIMEOUT: Final = 1.0


class _Started:
    # Passes a provider's started() on, and notes that it was called.
    def __init__(self, ready: Callable[[Any], None]) -> None:
        self.started = ready


def _uint(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(slots=True, eq=False)
class _Dial:
    done: anyio.Event = field(default_factory=anyio.Event)
    control: ControlChannel | None = None
    error: BaseException | None = None


class Node:
    """One peerkit identity on the network; an async context manager.

    :param nickname: shown to other peers, at most 255 characters.
    :param data_dir: where the identity key, settings and contact database live (created if
        missing). Default: the per-user data directory, or ``$PEERKIT_DATA_DIR``.
    :param identity: use this identity instead of the one in ``data_dir``; without a ``data_dir``
        nothing is persisted (contacts are kept in memory).
    :param listen: the address and port to listen on; port 0 picks a free one.
    :param discovery: discovery providers: names (``"mdns"``, ``"static:HOST:PORT[#ID]"``,
        ``"memory"``, or any from the ``peerkit.discovery`` entry points) or provider objects.
    :param network: how to listen and dial: TCP by default, or a :class:`peerkit.testing.MemoryNetwork`.
    :param invitation_policy: who may invite this node.
    :param keepalive: ping interval, ping timeout and idle timeout of control channels. A watched
        contact whose connection is lost and not restored within ``interval + 2 * timeout``
        seconds is seen Offline; a lost contact is tried again at most ``interval`` seconds apart.
    :param handshake_timeout: seconds a dial (connect and handshake) may take.
    :param queue_size: invitations or streams that may wait for an async iterator to take them.
    :param address_check: seconds between checks of this host's addresses (when listening on a
        wildcard address): a change is published to the discovery providers.
    :param store_check: seconds between checks of the contact database for changes made by another
        process (``peerkit contacts ...`` while ``peerkit serve`` runs): they take effect as if made
        here, with their events. A presence saved by ``peerkit presence set`` is published too.

    Several nodes may run in one process. Using a node before ``async with`` or after it raises
    :class:`~peerkit.NotRunning`.
    """

    def __init__(
        self,
        *,
        nickname: str = "",
        data_dir: str | os.PathLike[str] | None = None,
        identity: Identity | None = None,
        listen: tuple[str, int] = ("0.0.0.0", 0),
        discovery: Iterable[str | DiscoveryProvider] = (),
        network: Transport | None = None,
        invitation_policy: InvitationPolicy = InvitationPolicy.ANYONE,
        keepalive: KeepalivePolicy | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        queue_size: int = 16,
        address_check: float = 10.0,
        store_check: float = 1.0,
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
        )
        #: The checked options this node was built with.
        self.config = config
        self._nickname = config.nickname
        self._identity_arg = config.identity
        self._data_dir = config.data_dir
        self._listen = config.listen
        self._providers = list(config.providers)
        self._address_check = config.address_check
        self._store_check = config.store_check
        self._network = config.network
        self._policy = config.invitation_policy
        self._keepalive = config.keepalive
        self._handshake_timeout = config.handshake_timeout
        self._queue_size = config.queue_size

        self._identity: Identity | None = identity
        self._endpoint_name = ""
        self._endpoint: EndPoint | None = None
        self._scope = Scope.NONE
        self._trusted: set[PeerId] = set()
        self._apps: dict[uuid.UUID, Application] = {}
        self._invite_receivers: dict[uuid.UUID, InvitationHandler] = {}
        self._stream_receivers: dict[uuid.UUID, StreamHandler] = {}
        self._controls: dict[PeerId, list[ControlChannel]] = {}
        self._dials: dict[tuple[PeerId | None, EndPoint], _Dial] = {}
        self._incoming: dict[tuple[int, int], tuple[Invitation, anyio.CancelScope]] = {}
        # Requests from peers, by type: each handler returns the reply.
        self._request_handlers: dict[type[Request], Callable[[ControlChannel, Any], Awaitable[Reply]]] = {
            InviteRequest: self._on_invite,
            GetRequest: self._on_get,
            CardRequest: self._on_card,
            RecordRequest: self._on_record,
            SubscribeRequest: self._on_subscribe,
            UnsubscribeRequest: self._on_unsubscribe,
        }
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._listener: ChannelListener | None = None
        self._running = False
        self._closers: set[Callable[[], None]] = set()
        self._observers: list[Callable[[InvitationAnswered], Awaitable[None]]] = []
        self._streams: set[AppStream] = set()
        # Discovery: the providers' sessions, what they report, and who watches it.
        self._sessions: list[tuple[DiscoveryProvider, DiscoverySession]] = []
        self._directory: Directory | None = None
        self._watches: set[NearbyWatch] = set()
        self._seq = 0
        self._record: bytes | None = None
        self._signed_as: tuple[str, str, tuple[str, ...]] | None = None  # what _record says
        self._republish = anyio.Event()
        self._near_me = anyio.Event()  # set while signed in to NEAR_ME
        # Contacts, publication and subscriptions.
        self._store = Store(self._data_dir / DATABASE_FILE if self._data_dir is not None else None)
        self._bus: Bus[Any] = Bus(self._spawn)
        self._early_tasks: list[Callable[[], Coroutine[Any, Any, None]]] = []
        #: The contact store (R7).
        self.contacts = ContactManager(self, self._store, self._bus)
        self._presence = Presence(PresenceStatus.ONLINE)
        self._objects: dict[uuid.UUID, PeerObject] = {}
        # This run of the node is told to subscribers, so that they see one node once, however many
        # of its endpoints they reach.
        self._publishing = Publishing(
            bus=self._bus,
            contacts=self.contacts,
            published=self._published,
            scope=lambda: self._scope,
            near=self._is_near,
            spawn=self._spawn,
            instance=os.urandom(16),
        )
        self._watching_part = Watching(
            bus=self._bus,
            contacts=self.contacts,
            control_to=self._control_to,
            endpoints_of=self._endpoints_of,
            keepalive=self._keepalive,
            scope=lambda: self._scope,
            check_running=self._check_running,
            spawn=self._spawn,
        )

    # -- lifetime --------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._running or self._stack is not None:
            raise RuntimeError("this node is already running; a Node can be entered once")
        if self._identity is None:
            assert self._data_dir is not None
            # A small file, read once: done here rather than in a worker thread, so that a node leaves
            # no thread behind (anyio's worker threads outlive the task that used them).
            self._identity, _ = Identity.load_or_create(self._data_dir)
            self._endpoint_name = self._load_settings().get("endpoint_name", "")
        assert self._identity is not None
        async with contextlib.AsyncExitStack() as stack:
            await self._store.open()
            stack.push_async_callback(self._store.aclose)
            await self.contacts._load()
            listener = await self._network.listen(*self._listen)
            stack.push_async_callback(listener.aclose)
            self._listener = ChannelListener(
                listener,
                self._identity,
                nickname=self._nickname,
                endpoint_name=self._endpoint_name,
                handshake_timeout=self._handshake_timeout,
            )
            bound_host, bound_port = self._listener.address
            self._endpoint = EndPoint(_reachable(bound_host), bound_port, self._endpoint_name)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            await self._tg.start(self._listener.serve, self._on_channel)
            self._directory = Directory(self.id, self._on_nearby_change, fetch_record=self._fetch_record)
            failure: DiscoveryError | None = None
            for provider in self._providers:
                try:
                    session = await self._tg.start(self._run_provider, provider)
                except Exception as exc:
                    failure = DiscoveryError(f"discovery provider {provider.name} could not start: {exc}")
                    failure.__cause__ = exc
                    break
                self._sessions.append((provider, session))
            if failure is None:
                self._tg.start_soon(self._publisher)
                self._tg.start_soon(self._publishing.fanout)
                if self._store.path is not None:
                    self._tg.start_soon(self._follow_store)
                for task in self._early_tasks:
                    self._tg.start_soon(task)
                self._early_tasks.clear()
                self._running = True
                self._stack = stack.pop_all()
            else:  # stop what started, then fail (outside the task group: not wrapped in a group)
                self._sessions.clear()
                self._tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._running = False
        for close in list(self._closers):
            close()  # async iterators of invitations and streams end
        leaving, self._scope = self._scope, Scope.NONE
        if leaving:
            self._scope_changed(leaving, Scope.NONE)
            with anyio.CancelScope(shield=True), anyio.move_on_after(FAREWELL_TIMEOUT):
                await self._publishing.farewell()  # subscribers see Offline before the channels close
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await self._withdraw(leaving)  # goodbyes, sent before the providers stop
        self._end_watches()
        self._bus.close()
        assert self._tg is not None
        assert self._stack is not None
        self._tg.cancel_scope.cancel()
        for stream in list(self._streams):
            await anyio.aclose_forcefully(stream)
        try:
            # The body's own exception is not passed in: it propagates as it is, rather than
            # wrapped in the task group's ExceptionGroup.
            await self._stack.__aexit__(None, None, None)
            return None
        finally:
            self._controls.clear()
            self._incoming.clear()
            self._sessions.clear()
            self._publishing.clear()
            self._watching_part.clear()

    def _spawn(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        # Handlers added before the node starts begin when it starts.
        if self._tg is not None and self._running:
            self._tg.start_soon(task)
        elif self._stack is None:
            self._early_tasks.append(task)

    def _check_running(self) -> None:
        if not self._running:
            raise NotRunning("the node is not running: use it inside 'async with node:'")

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
        """The nickname other peers see, at most 255 characters; a change is published at once."""
        return self._nickname

    @nickname.setter
    def nickname(self, value: str) -> None:
        self._nickname = check_text(value, "nickname")
        if self._listener is not None:
            self._listener.nickname = self._nickname
        self._republish.set()

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
        if self._data_dir is not None and self._identity_arg is None:
            self._save_settings({"endpoint_name": value})
        self._republish.set()
        if self._running:
            self._bus.publish(
                NameChanged(peer_id=self.id, contact=self.contacts.me, endpoint=None, name=value, local=True)
            )

    def _load_settings(self) -> dict[str, Any]:
        assert self._data_dir is not None
        try:
            settings = json.loads((self._data_dir / SETTINGS_FILE).read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable settings file %s: %s", self._data_dir / SETTINGS_FILE, exc)
            return {}
        if not isinstance(settings, dict) or not isinstance(settings.get("endpoint_name", ""), str):
            return {}
        settings["endpoint_name"] = settings.get("endpoint_name", "")[:MAX_TEXT]
        return settings

    def _save_settings(self, changes: dict[str, Any]) -> None:
        assert self._data_dir is not None
        settings = self._load_settings() if (self._data_dir / SETTINGS_FILE).exists() else {}
        settings.update(changes)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        temporary = self._data_dir / f".{SETTINGS_FILE}.tmp"
        temporary.write_text(json.dumps(settings), "utf-8")
        os.replace(temporary, self._data_dir / SETTINGS_FILE)

    # -- sign-in (R3) ----------------------------------------------------------------------
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

    async def _follow_store(self) -> None:
        # Changes another process commits to the database take effect here.
        version = await self._store.read(data_version)
        requested = self.contacts._me_names.get(PRESENCE_SETTING)
        while True:
            await anyio.sleep(self._store_check)
            now = await self._store.read(data_version)
            if now == version:
                continue
            version = now
            try:
                settings = await self.contacts._reload()
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
                self._watching_part.start(peer_id)
        if before and not after:
            for peer_id in self._watching_part.watched():
                self._watching_part.stop(peer_id)
        if bool(before) != bool(after):
            self._local_presence_changed()
        self._bus.publish(Visibility())

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
        if added & Scope.NEAR_ME:
            self._near_me.set()
        if added:
            await self._publish(added)
        await anyio.lowlevel.checkpoint()

    async def sign_out(self, scope: Scope = Scope.ALL) -> None:
        """Sign out of ``scope``, withdrawing what it published; a scope not signed in is a no-op.

        :raises ValueError: for a number that is not a scope.
        :raises TypeError: for a value that is not a number.
        :raises NotRunning: when the node is not running.
        """
        scope = check_scope(scope, "scope")
        self._check_running()
        leaving = scope & self._scope
        before = self._scope
        self._scope &= ~scope
        if leaving:
            self._scope_changed(before, self._scope)
        await self._withdraw(leaving)
        if leaving & Scope.NEAR_ME:
            # People near me are hidden and their watches end; the providers go on following them
            # (what they know is not reported twice), so signing in again shows them at once.
            self._near_me = anyio.Event()
            self._end_watches()
        await anyio.lowlevel.checkpoint()

    async def _withdraw(self, scope: Scope) -> None:
        for provider, session in self._sessions:
            if provider.scopes & scope and not provider.scopes & self._scope:
                try:
                    with anyio.fail_after(PROVIDER_TIMEOUT):
                        await session.withdraw()
                except Exception:
                    log.exception("discovery provider %s failed to withdraw", provider.name)

    # -- discovery ---------------------------------------------------------------------------
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

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(time.time() * 1000))
        return self._seq

    def _hosts(self) -> tuple[str, ...]:
        assert self._endpoint is not None
        return local_addresses(self._listen[0], fallback=self._endpoint.host)

    def _sign_record(self, hosts: tuple[str, ...] | None = None) -> Announcement:
        assert self._endpoint is not None
        hosts = hosts if hosts is not None else self._hosts()
        port = self._endpoint.port
        envelope = make_record(
            self.identity,
            self._next_seq(),
            nickname=self._nickname,
            endpoint_name=self._endpoint_name,
            endpoints=[(host, port) for host in hosts],
        )
        self._record = envelope
        self._signed_as = (self._nickname, self._endpoint_name, hosts)
        return Announcement(id=self.id, nickname=self._nickname, port=port, hosts=hosts, envelope=envelope)

    async def _publish(self, scope: Scope, hosts: tuple[str, ...] | None = None) -> None:
        announcement = self._sign_record(hosts)
        for provider, session in self._sessions:
            if provider.scopes & scope:
                try:
                    with anyio.fail_after(PROVIDER_TIMEOUT):
                        await session.publish(announcement)
                except Exception:
                    log.exception("discovery provider %s failed to publish", provider.name)

    async def _publisher(self) -> None:
        # Publishes again what changed (nickname, endpoint name, this host's addresses).
        while True:
            with anyio.move_on_after(self._address_check):
                await self._republish.wait()
            self._republish = anyio.Event()
            hosts = self._hosts()
            if self._scope and self._signed_as != (self._nickname, self._endpoint_name, hosts):
                await self._publish(self._scope, hosts)

    def _on_nearby_change(self, change: ChangeType, record: NearbyRecord) -> None:
        if change is not ChangeType.DELETED:
            self._watching_part.wake(record.id)  # a watched contact appeared or moved: try it now
        if self._publishing.watches(record.id):
            self._bus.publish(Visibility())
        if not self._scope & Scope.NEAR_ME:
            return
        event = NearbyChanged(change=change, peer=NearbyPeer(self, record))
        for watch in list(self._watches):
            watch._put(event)

    def _end_watches(self) -> None:
        for watch in list(self._watches):
            watch._end()
        self._watches.clear()

    @property
    def discovery_stats(self) -> DirectoryStats:
        """What discovery did with the records it heard: accepted, and dropped as invalid (forged,
        tampered, malformed), stale (replayed) or because the directory was full (R4).

        :raises NotRunning: when the node is not running.
        """
        self._check_running()
        assert self._directory is not None
        return self._directory.stats

    def _check_near_me(self) -> Directory:
        self._check_running()
        if not self._scope & Scope.NEAR_ME:
            raise NotSignedIn("people near me need sign-in: call 'await node.sign_in(Scope.NEAR_ME)' first")
        assert self._directory is not None
        return self._directory

    def nearby(self) -> list[NearbyPeer]:
        """The people near me now (R4), in the order they were first seen.

        :raises NotSignedIn: when the node is not signed in to NEAR_ME.
        :raises NotRunning: when the node is not running.
        """
        return [NearbyPeer(self, record) for record in self._check_near_me().records()]

    def watch_nearby(self, *, initial: bool = False) -> NearbyWatch:
        """Follow the people near me: an async iterator of :class:`~peerkit.NearbyChanged`.

        :param initial: start with an ADDED event for everyone near me now.
        :raises NotSignedIn: when the node is not signed in to NEAR_ME.
        :raises NotRunning: when the node is not running.
        """
        directory = self._check_near_me()
        watch = NearbyWatch(self._watches.discard)
        if initial:
            for record in directory.records():
                watch._put(NearbyChanged(change=ChangeType.ADDED, peer=NearbyPeer(self, record)))
        self._watches.add(watch)
        return watch

    def add_nearby_handler(self, handler: NearbyHandler) -> Handle:
        """Call ``handler`` (a coroutine function) for every change of the people near me.

        It may be added before sign-in; it sees changes while the node is signed in to NEAR_ME,
        starting (at sign-in, or now if signed in) with an ADDED event for everyone near me.
        A handler that raises is logged and keeps receiving. Returns a :class:`Handle`.

        :raises NotRunning: when the node is not running.
        """
        self._check_running()
        assert self._tg is not None
        scope = anyio.CancelScope()

        async def run() -> None:
            with scope:
                while True:
                    await self._near_me.wait()
                    async with self.watch_nearby(initial=True) as watch:
                        async for event in watch:
                            try:
                                await handler(event)
                            except Exception:
                                log.exception("nearby handler %r failed", handler)

        self._tg.start_soon(run)
        return Handle(scope.cancel)

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

        def match(peer: NearbyPeer) -> bool:
            return peer.id == peer_id if peer_id is not None else peer.nickname == nickname

        async with self.watch_nearby(initial=True) as watch:
            with anyio.move_on_after(timeout):
                async for event in watch:
                    if event.change is not ChangeType.DELETED and match(event.peer):
                        return event.peer
        what = f"id {peer_id.fingerprint}" if peer_id is not None else f"nickname {nickname!r}"
        self._check_near_me()
        raise PeerUnreachable(f"no peer near me with {what} appeared within {timeout} s")

    async def _fetch_record(self, host: str, port: int, peer_id: PeerId | None) -> bytes:
        # The signed record the node at host:port publishes (for the static provider).
        control = await self._control_to(peer_id, EndPoint(host, port), exact=True)
        pending = await control.start_request({"t": "record"})
        with anyio.fail_after(self._handshake_timeout):
            reply = await pending.wait()
        who = control.peer_id.fingerprint
        if reply.get("t") != "record_reply" or not isinstance(reply.get("rec"), bytes):
            raise ProtocolError(
                f"{who} answered a record request with {reply.get('t')!r}: {reply.get('code')}"
            )
        envelope: bytes = reply["rec"]
        try:
            record = read_record(envelope)[0]
        except InvalidRecord as exc:
            raise ProtocolError(f"{who} sent a record that does not verify: {exc}") from exc
        if record.id != bytes(control.peer_id):
            raise ProtocolError(f"{who} sent the record of another peer")
        return envelope

    # -- trust and policy ------------------------------------------------------------------
    @property
    def invitation_policy(self) -> InvitationPolicy:
        """Who may invite this node and open streams to it."""
        return self._policy

    @invitation_policy.setter
    def invitation_policy(self, policy: InvitationPolicy) -> None:
        if not isinstance(policy, InvitationPolicy):
            raise TypeError(f"invitation_policy must be an InvitationPolicy, not {type(policy).__name__}")
        self._policy = policy

    @property
    def trusted(self) -> frozenset[PeerId]:
        """The ids trusted for this run only (:meth:`trust`); contacts (``node.contacts``) are trusted too."""
        return frozenset(self._trusted)

    def trust(self, peer_id: PeerId) -> None:
        """Trust ``peer_id`` for this run of the node, without making it a contact: its invitations are
        marked trusted and pass the CONTACTS_ONLY policy. To trust a peer for good, add it to
        ``node.contacts``."""
        if not isinstance(peer_id, PeerId):
            raise TypeError(f"peer_id must be a PeerId, not {type(peer_id).__name__}")
        self._trusted.add(peer_id)

    def untrust(self, peer_id: PeerId) -> None:
        """Stop trusting ``peer_id`` (nothing happens if it was not trusted)."""
        self._trusted.discard(peer_id)

    def _allows(self, peer_id: PeerId) -> bool:
        if self._policy is InvitationPolicy.NOBODY:
            return False
        return self._policy is InvitationPolicy.ANYONE or self._is_trusted(peer_id)

    def _is_trusted(self, peer_id: PeerId) -> bool:
        return peer_id in self._trusted or self.contacts.has(peer_id)

    # -- applications ----------------------------------------------------------------------
    async def register_application(self, application: Application) -> None:
        """Register ``application``: this node can then invite to it and be invited to it.

        :raises TypeError: when it is not an :class:`~peerkit.Application`.
        :raises ValueError: when an application with the same id is already registered.
        :raises LimitExceeded: when 64 applications are already registered.
        :raises NotRunning: when the node is not running.
        """
        if not isinstance(application, Application):
            raise TypeError(f"expected an Application, not {type(application).__name__}")
        self._check_running()
        if application.id in self._apps:
            raise ValueError(f"application {application.id} is already registered")
        if len(self._apps) >= MAX_APPLICATIONS:
            raise LimitExceeded(
                f"{MAX_APPLICATIONS} applications are registered; the limit is {MAX_APPLICATIONS}"
            )
        self._apps[application.id] = application
        self._local_app_changed(ChangeType.ADDED, application)
        await anyio.lowlevel.checkpoint()

    async def unregister_application(self, application: Application | uuid.UUID) -> None:
        """Unregister an application (by object or id); invitations to it are then declined.

        :raises ValueError: when no application with that id is registered.
        :raises NotRunning: when the node is not running.
        """
        app_id = _app_id(application)
        self._check_running()
        old = self._apps.pop(app_id, None)
        if old is None:
            raise ValueError(f"application {app_id} is not registered")
        self._local_app_changed(ChangeType.DELETED, old)
        await anyio.lowlevel.checkpoint()

    def applications(self) -> list[Application]:
        """The registered applications, in registration order."""
        return list(self._apps.values())

    def _local_app_changed(self, change: ChangeType, application: Application) -> None:
        self._bus.publish(
            ApplicationChanged(
                peer_id=self.id,
                contact=self.contacts.me,
                endpoint=None,
                change=change,
                application=application,
                local=True,
            )
        )

    # -- objects (R6) ----------------------------------------------------------------------
    async def set_object(self, obj: PeerObject) -> None:
        """Publish ``obj`` (or replace the object with its id) to those its scope lets see it.

        :raises TypeError: when it is not a :class:`~peerkit.PeerObject`.
        :raises LimitExceeded: when 128 objects are published and this is a new one.
        :raises NotSignedIn: when the node is not signed in.
        :raises NotRunning: when the node is not running.
        """
        if not isinstance(obj, PeerObject):
            raise TypeError(f"set_object takes a PeerObject, not {type(obj).__name__}")
        self._check_running()
        if not self._scope:
            raise NotSignedIn("sign in before publishing objects: await node.sign_in(Scope.ALL)")
        old = self._objects.get(obj.id)
        if old is None and len(self._objects) >= MAX_OBJECTS:
            raise LimitExceeded(f"{MAX_OBJECTS} objects are published; the limit is {MAX_OBJECTS}")
        self._objects[obj.id] = obj
        if old != obj:
            self._local_object_changed(ChangeType.ADDED if old is None else ChangeType.UPDATED, obj)
        await anyio.lowlevel.checkpoint()

    async def delete_object(self, obj: PeerObject | uuid.UUID) -> None:
        """Stop publishing an object (by object or id).

        :raises ValueError: when no object with that id is published.
        :raises NotRunning: when the node is not running.
        """
        object_id = obj.id if isinstance(obj, PeerObject) else obj
        if not isinstance(object_id, uuid.UUID):
            raise TypeError(f"delete_object takes a PeerObject or its uuid.UUID, not {type(obj).__name__}")
        self._check_running()
        old = self._objects.pop(object_id, None)
        if old is None:
            raise ValueError(f"object {object_id} is not published")
        self._local_object_changed(ChangeType.DELETED, old)
        await anyio.lowlevel.checkpoint()

    def objects(self) -> list[PeerObject]:
        """The published objects, in the order they were first set."""
        return list(self._objects.values())

    def _local_object_changed(self, change: ChangeType, obj: PeerObject) -> None:
        self._bus.publish(
            ObjectChanged(
                peer_id=self.id,
                contact=self.contacts.me,
                endpoint=None,
                change=change,
                object=obj,
                local=True,
            )
        )

    # -- events (R6) -----------------------------------------------------------------------
    def events(
        self,
        *types: type[Event],
        peer: Peer | PeerId | None = None,
        local: bool | None = False,
        item: uuid.UUID | None = None,
    ) -> EventWatch[Event]:
        """Events as an async iterator (use it with ``async with``); merged for a slow reader, so
        memory stays bounded (see :class:`~peerkit.EventWatch`).

        :param types: the event classes wanted (default: presence, application, object and name changes).
        :param peer: only this contact's events.
        :param local: False (default) for the contacts this node watches, True for this node's own
            changes, None for both.
        :param item: only events about this application or object id.
        """
        return self._bus.watch(_event_filter(types, peer, local, item))

    def _add_event_handler(
        self,
        kind: type[Event],
        handler: EventHandler,
        peer: Peer | PeerId | None,
        local: bool,
        item: uuid.UUID | None,
    ) -> Handle:
        if not callable(handler):
            raise TypeError(f"a handler must be a coroutine function, not {type(handler).__name__}")
        return self._bus.add_handler(_event_filter((kind,), peer, local, item), handler)

    def add_presence_handler(
        self, handler: EventHandler, *, peer: Peer | PeerId | None = None, local: bool = False
    ) -> Handle:
        """Run ``handler(event)`` for each :class:`~peerkit.PresenceChanged` of the contacts this node
        watches (or of one, with ``peer``; or this node's own, with ``local=True``)."""
        return self._add_event_handler(PresenceChanged, handler, peer, local, None)

    def add_application_handler(
        self,
        handler: EventHandler,
        *,
        peer: Peer | PeerId | None = None,
        application: Application | uuid.UUID | None = None,
        local: bool = False,
    ) -> Handle:
        """Run ``handler(event)`` for each :class:`~peerkit.ApplicationChanged` (filtered as given)."""
        item = _app_id(application) if application is not None else None
        return self._add_event_handler(ApplicationChanged, handler, peer, local, item)

    def add_object_handler(
        self,
        handler: EventHandler,
        *,
        peer: Peer | PeerId | None = None,
        object_id: uuid.UUID | None = None,
        local: bool = False,
    ) -> Handle:
        """Run ``handler(event)`` for each :class:`~peerkit.ObjectChanged` (filtered as given)."""
        return self._add_event_handler(ObjectChanged, handler, peer, local, object_id)

    def add_name_handler(
        self, handler: EventHandler, *, peer: Peer | PeerId | None = None, local: bool = False
    ) -> Handle:
        """Run ``handler(event)`` for each :class:`~peerkit.NameChanged` (filtered as given)."""
        return self._add_event_handler(NameChanged, handler, peer, local, None)

    def on_presence_changed(self, handler: F) -> F:
        """Decorator: ``handler(PresenceChanged)`` for every contact this node watches."""
        self.add_presence_handler(handler)
        return handler

    def on_application_changed(self, handler: F) -> F:
        """Decorator: ``handler(ApplicationChanged)`` for every contact this node watches."""
        self.add_application_handler(handler)
        return handler

    def on_object_changed(self, handler: F) -> F:
        """Decorator: ``handler(ObjectChanged)`` for every contact this node watches."""
        self.add_object_handler(handler)
        return handler

    def on_name_changed(self, handler: F) -> F:
        """Decorator: ``handler(NameChanged)`` for every contact this node watches."""
        self.add_name_handler(handler)
        return handler

    def on_local_presence_changed(self, handler: F) -> F:
        """Decorator: ``handler(PresenceChanged)`` for this node's own presence."""
        self.add_presence_handler(handler, local=True)
        return handler

    def on_local_application_changed(self, handler: F) -> F:
        """Decorator: ``handler(ApplicationChanged)`` for this node's own applications."""
        self.add_application_handler(handler, local=True)
        return handler

    def on_local_object_changed(self, handler: F) -> F:
        """Decorator: ``handler(ObjectChanged)`` for this node's own objects."""
        self.add_object_handler(handler, local=True)
        return handler

    def on_local_name_changed(self, handler: F) -> F:
        """Decorator: ``handler(NameChanged)`` for this node's own endpoint name."""
        self.add_name_handler(handler, local=True)
        return handler

    def _registered(self, application: Application | uuid.UUID) -> Application:
        app_id = _app_id(application)
        app = self._apps.get(app_id)
        if app is None:
            raise ValueError(f"application {app_id} is not registered on this node; register it first")
        return app

    # -- handlers --------------------------------------------------------------------------
    def add_invitation_handler(
        self, application: Application | uuid.UUID, handler: InvitationHandler
    ) -> Handle:
        """Answer invitations to ``application`` with ``handler(invitation)``, a coroutine function.

        It returns an :class:`~peerkit.InvitationResponse` (or calls ``invitation.accept()`` /
        ``decline()``). It is cancelled when the inviter withdraws or the invitation expires; one
        that raises is logged and counts as DECLINED. One handler (or iterator) per application.

        :raises ValueError: when the application already has a handler or iterator.
        """
        if not callable(handler):
            raise TypeError(
                f"an invitation handler must be a coroutine function, not {type(handler).__name__}"
            )
        return self._add_receiver(
            self._invite_receivers, application, _invitation_receiver(handler), "an invitation"
        )

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
        """

        async def wait_for_answer(invitation: Invitation) -> InvitationResponse | None:
            await invitation._answered.wait()
            return invitation.response

        return self._subscribe(
            self._invite_receivers, application, "an invitation", wait_for_answer, InvitationResponse.DECLINED
        )

    def add_stream_handler(self, application: Application | uuid.UUID, handler: StreamHandler) -> Handle:
        """Run ``handler(stream)`` for every application stream opened to ``application``; the stream
        is closed when it returns. One handler (or iterator) per application.

        :raises ValueError: when the application already has a stream handler or iterator.
        :raises TypeError: when ``handler`` is not callable.
        """
        if not callable(handler):
            raise TypeError(f"a stream handler must be a coroutine function, not {type(handler).__name__}")

        async def receiver(stream: AppStream) -> None:
            try:
                await handler(stream)
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                log.debug("stream of %s ended in its handler: %r", stream.application.id, exc)
            except Exception:
                log.exception("stream handler for %s failed", stream.application.id)

        return self._add_receiver(self._stream_receivers, application, receiver, "a stream")

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
        """

        async def wait_until_closed(stream: AppStream) -> None:
            await stream.wait_closed()

        return self._subscribe(self._stream_receivers, application, "a stream", wait_until_closed, None)

    def _subscribe(
        self,
        table: dict[uuid.UUID, Any],
        application: Application | uuid.UUID,
        what: str,
        settle: Callable[[Any], Awaitable[Any]],
        refused: Any,
    ) -> Subscription[Any]:
        # An async iterator in place of a handler: each item is queued (bounded) for the reader, and
        # the handler's part waits for ``settle(item)``; a full or closed queue gives ``refused``.
        app_id = _app_id(application)
        if app_id in table:
            raise ValueError(f"application {app_id} already has {what} handler; remove it first")
        send, receive = anyio.create_memory_object_stream[Any](self._queue_size)

        async def receiver(item: Any) -> Any:
            try:
                send.send_nowait(item)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.warning("refusing %s to %s: nobody is reading the iterator", what, app_id)
                return refused
            return await settle(item)

        handle = self._add_receiver(table, application, receiver, what)

        def remove() -> None:
            handle.remove()
            send.close()
            self._closers.discard(remove)

        self._closers.add(remove)
        return Subscription(receive, remove)

    def _add_receiver(
        self, table: dict[uuid.UUID, Any], application: Application | uuid.UUID, receiver: Any, what: str
    ) -> Handle:
        app_id = _app_id(application)
        if app_id in table:
            raise ValueError(f"application {app_id} already has {what} handler; remove it first")
        table[app_id] = receiver

        def remove() -> None:
            if table.get(app_id) is receiver:
                del table[app_id]

        return Handle(remove)

    # -- peers -----------------------------------------------------------------------------
    def peer(self, peer_id: PeerId, *endpoints: EndPoint, nickname: str = "") -> Peer:
        """A :class:`~peerkit.Peer` for an id and endpoints you already know (nothing is dialled yet).

        :raises ValueError: when no endpoint is given or ``peer_id`` is this node's own id.
        """
        if self._identity is not None and peer_id == self._identity.id:
            raise ValueError("that is this node's own id")
        return Peer(self, peer_id, endpoints, nickname)

    async def peer_at(self, host: str, port: int, peer_id: PeerId | None = None) -> Peer:
        """Dial ``host:port`` and return the :class:`~peerkit.Peer` listening there.

        With ``peer_id`` the handshake is IK and only that peer is accepted; without it, XX, and
        the peer's id is learned from the handshake. The channel stays open for later requests.

        :raises PeerUnreachable: when nothing answers, or not in time.
        :raises HandshakeError: when the peer there is not ``peer_id``.
        :raises ValueError: for a bad address, or when the address is this node itself.
        :raises NotRunning: when the node is not running.

        If cancelled, the caller stops waiting; a dial under way finishes in the node's task group
        and its channel is kept for later requests (or closed when idle).
        """
        endpoint = EndPoint(host, port)
        self._check_running()
        if peer_id is not None and peer_id == self.id:
            raise ValueError("that is this node's own id")
        control = await self._control_to(peer_id, endpoint, exact=True)
        info = control.channel.peer
        return Peer(
            self,
            control.peer_id,
            (EndPoint(endpoint.host, endpoint.port, info.endpoint_name),),
            info.nickname,
        )

    async def resolve(self, peer_id: PeerId) -> Peer:
        """Find ``peer_id`` through the discovery providers.

        :raises PeerUnreachable: when no provider knows it.
        :raises NotRunning: when the node is not running.
        """
        self._check_running()
        assert self._directory is not None
        record = self._directory.get(peer_id)
        if record is not None:
            return NearbyPeer(self, record)
        for _, session in self._sessions:
            for envelope in await session.resolve(peer_id):
                with contextlib.suppress(InvalidRecord):
                    signed, nickname, _, endpoints = read_record(envelope)
                    if signed.id == bytes(peer_id) and endpoints:
                        return Peer(self, peer_id, endpoints, nickname)
        await anyio.lowlevel.checkpoint()
        raise PeerUnreachable(f"no discovery provider knows {peer_id.fingerprint}")

    # -- the connection manager ------------------------------------------------------------
    async def _control_to(self, peer_id: PeerId | None, endpoint: EndPoint, *, exact: bool) -> ControlChannel:
        """An open control channel to ``peer_id`` at ``endpoint`` (any endpoint unless ``exact``),
        dialling one when there is none. Concurrent callers share one dial."""
        for _ in range(3):
            if peer_id is not None:
                usable = [
                    c
                    for c in self._controls.get(peer_id, ())
                    if c.usable and (c.endpoint == endpoint or not exact)
                ]
            else:  # whoever listens at the endpoint
                usable = [
                    c for cs in self._controls.values() for c in cs if c.usable and c.endpoint == endpoint
                ]
            if usable:
                return min(usable, key=ControlChannel.preference)
            key = (peer_id, endpoint)
            dial = self._dials.get(key)
            if dial is None:
                dial = self._dials[key] = _Dial()
                assert self._tg is not None
                self._tg.start_soon(self._dial, key, dial)
            await dial.done.wait()
            if dial.error is not None:
                raise dial.error
            assert dial.control is not None
            if dial.control.usable:
                return dial.control
            peer_id = dial.control.peer_id
        raise PeerUnreachable(f"could not keep a channel open to {endpoint}")

    async def _dial(self, key: tuple[PeerId | None, EndPoint], dial: _Dial) -> None:
        peer_id, endpoint = key
        control: ControlChannel | None = None
        try:
            channel = await self._connect(peer_id, endpoint, use="control")
            if channel.peer.id == self.id:
                await channel.aclose()
                raise ValueError(f"{endpoint} is this node itself")
            control = self._adopt(channel, initiator=True, endpoint=endpoint)
            dial.control = control
        except (PeerkitError, ValueError) as exc:
            dial.error = exc
        except Exception as exc:  # anything else must not take the node down with it
            log.exception("dialling %s failed", endpoint)
            dial.error = PeerUnreachable(f"could not reach {endpoint}: {exc!r}")
            dial.error.__cause__ = exc
        finally:
            if dial.error is None and dial.control is None:  # cancelled: the node is stopping
                dial.error = NotRunning("the node stopped while dialling")
            self._dials.pop(key, None)
            dial.done.set()
        if control is not None:
            await self._run_control(control)

    async def _connect(self, peer_id: PeerId | None, endpoint: EndPoint, *, use: str) -> SecureChannel:
        start = anyio.current_time()
        timeout = self._handshake_timeout
        try:
            with anyio.fail_after(timeout):
                stream = await self._network.connect(
                    endpoint.host, endpoint.port, local_host=self.endpoint.host
                )
        except TimeoutError:
            raise PeerUnreachable(f"could not connect to {endpoint} within {timeout} s") from None
        return await SecureChannel.wrap(
            stream,
            self.identity,
            initiator=True,
            expected_peer=peer_id,
            nickname=self._nickname,
            endpoint_name=self._endpoint_name,
            handshake_timeout=max(timeout - (anyio.current_time() - start), 0.001),
            port=self.endpoint.port,
            use=use,
        )

    def _adopt(self, channel: SecureChannel, *, initiator: bool, endpoint: EndPoint | None) -> ControlChannel:
        control = ControlChannel(
            channel,
            initiator=initiator,
            local_id=self.id,
            endpoint=endpoint,
            handler=self._on_message,
            notices={"notify": self._watching_part.on_notify, "invite_cancel": self._on_invite_cancel},
            keepalive=self._keepalive,
        )
        if self.contacts.has(control.peer_id):
            assert self._tg is not None
            self._tg.start_soon(self.contacts._seen, control.peer_id)
        # The endpoint that was dialled: ours as the peer reached it, or the one we dialled.
        control.via = (
            (endpoint.host, endpoint.port) if initiator and endpoint is not None else channel.local_address
        )
        channels = self._controls.setdefault(control.peer_id, [])
        rivals = [
            c
            for c in channels
            if c.usable
            and c.endpoint is not None
            and c.endpoint == endpoint
            and (c.dialler != control.dialler or c.via == control.via)
        ]
        channels.append(control)
        if rivals:
            # Both peers dialled each other (or one dialled the same endpoint twice): both keep
            # the same channel (the one the lower id dialled) and retire the others, which close
            # once their requests are answered. One peer dialling two addresses of the other is
            # not a rivalry: both channels stay (a watcher follows each endpoint).
            keep = min([*rivals, control], key=ControlChannel.preference)
            assert self._tg is not None
            for other in (*rivals, control):
                if other is not keep:
                    self._tg.start_soon(other.retire)
        return control

    async def _run_control(self, control: ControlChannel) -> None:
        try:
            await control.run()
        finally:
            self._publishing.end(control)
            channels = self._controls.get(control.peer_id)
            if channels is not None and control in channels:
                channels.remove(control)
                if not channels:
                    del self._controls[control.peer_id]

    async def disconnect(self, peer_id: PeerId) -> None:
        """Close every control channel to ``peer_id`` now; requests waiting on them fail with
        :class:`~peerkit.PeerUnreachable` and handlers of its invitations are cancelled. The next
        request to the peer dials again. Nothing happens when there is no channel."""
        for control in list(self._controls.get(peer_id, ())):
            await control.aclose()

    def channels(self, peer_id: PeerId) -> int:
        """How many control channels to ``peer_id`` are open (0 or 1, briefly 2 after a simultaneous dial)."""
        return sum(1 for c in self._controls.get(peer_id, ()) if not c.closed)

    async def _on_channel(self, channel: SecureChannel) -> None:
        # Every channel that completes the handshake on the listener comes here.
        if channel.peer.id == self.id:
            return
        if channel.peer.use == USE_STREAM:
            await self._serve_stream(channel)
            return
        if self.channels(channel.peer.id) >= MAX_CHANNELS_PER_PEER:
            log.warning(
                "refusing a channel from %s: it has %d open already",
                channel.peer.id.fingerprint,
                MAX_CHANNELS_PER_PEER,
            )
            return
        endpoint = None
        if channel.peer.address is not None and channel.peer.port is not None:
            endpoint = EndPoint(channel.peer.address[0], channel.peer.port)
        await self._run_control(self._adopt(channel, initiator=False, endpoint=endpoint))

    # -- publishing to subscribers (R6) ----------------------------------------------------
    def _published(self) -> Published:
        return Published(
            presence=self.presence,
            name=self._endpoint_name,
            apps=self._apps.values(),
            objects=self._objects.values(),
        )

    def _is_near(self, peer_id: PeerId) -> bool:
        return self._directory is not None and self._directory.get(peer_id) is not None

    def subscribers(self) -> list[PeerId]:
        """The ids of the peers that watch this node now (one entry per subscription)."""
        return self._publishing.subscribers()

    def _contact_permission_changed(self, peer_id: PeerId) -> None:
        self._publishing.permission_changed(peer_id)

    # -- watching contacts (R6) ------------------------------------------------------------
    def _watched_presence(self, peer_id: PeerId) -> Presence | None:
        return self._watching_part.presence_of(peer_id)

    def _contact_updated(self, peer_id: PeerId) -> None:
        self._watching_part.contact_updated(peer_id)

    async def _watch_changed(self, peer_id: PeerId, subscribed: bool) -> None:
        await self._watching_part.subscription_changed(peer_id, subscribed)

    async def _subscribe_contact(self, contact: Contact, *, wait: bool, timeout: float) -> None:
        await self._watching_part.subscribe(contact, wait=wait, timeout=timeout)

    async def _unsubscribe_contact(self, contact: Contact) -> None:
        await self._watching_part.unsubscribe(contact)

    # -- one-shot requests -----------------------------------------------------------------
    def _endpoints_of(self, peer: Peer) -> tuple[EndPoint, ...]:
        # Where to reach a peer: for a contact, where discovery sees it now, then what is stored.
        if isinstance(peer, Contact) and self._directory is not None:
            record = self._directory.get(peer.id)
            if record is not None:
                return tuple(dict.fromkeys((*record.endpoints, *peer.endpoints)))
        return tuple(peer.endpoints)

    async def _request(
        self, peer: Peer, message: dict[str, Any], timeout: float, what: str
    ) -> dict[str, Any]:
        # Send ``message`` to the peer (trying each endpoint) and return the reply.
        timeout = check_seconds(timeout, f"{what} timeout", None)
        self._check_running()
        who = peer.id.fingerprint
        errors: list[PeerUnreachable] = []
        with anyio.move_on_after(timeout):
            controls: list[Callable[[], Awaitable[ControlChannel]]]
            if isinstance(peer, _PeerOnChannel):
                controls = [peer._control_or_dial]
            else:
                controls = [
                    functools.partial(self._control_to, peer.id, endpoint, exact=False)
                    for endpoint in self._endpoints_of(peer)
                ]
            for control_for in controls:
                try:
                    control = await control_for()
                    request = await control.start_request(message)
                    reply = await request.wait()
                except PeerUnreachable as exc:
                    errors.append(exc)
                    continue
                if reply["t"] == "error":
                    code, text = reply.get("code"), reply.get("msg")
                    if code in ("not-allowed", "unavailable"):
                        raise NotAllowed(f"{who} refused {what}: {text}")
                    raise ProtocolError(f"{who} refused {what}: {code}: {text}")
                return reply
        if errors:
            raise errors[-1]
        raise PeerUnreachable(f"{who} did not answer {what} within {timeout} s")

    async def _fetch(self, peer: Peer, what: str, timeout: float) -> Any:
        reply = await self._request(peer, {"t": "get", "what": what}, timeout, f"a {what} request")
        who = peer.id.fingerprint
        try:
            if reply["t"] != "get_reply":
                raise ProtocolError(f"answered with {reply['t']!r}")
            if what == "presence":
                return read_presence(reply.get("presence"))
            items = reply.get(what)
            limit = MAX_APPLICATIONS if what == "apps" else MAX_OBJECTS
            if not isinstance(items, list) or len(items) > limit:
                raise ProtocolError(f'"{what}" must be a list of at most {limit}')
            return [read_app(i) for i in items] if what == "apps" else [read_object(i) for i in items]
        except ProtocolError as exc:
            raise ProtocolError(f"{who} sent a bad answer to a {what} request: {exc}") from None

    async def _fetch_card(self, peer: Peer, timeout: float) -> CardContent:
        reply = await self._request(peer, {"t": "card"}, timeout, "a card request")
        who = peer.id.fingerprint
        card = reply.get("card")
        if reply["t"] != "card_reply" or not isinstance(card, bytes):
            raise ProtocolError(f"{who} answered a card request with {reply['t']!r}")
        try:
            content = read_card(card)
        except InvalidRecord as exc:
            raise ProtocolError(f"{who} sent a card that does not verify: {exc}") from exc
        if content.id != peer.id:
            raise ProtocolError(f"{who} sent the card of another peer ({content.id.fingerprint})")
        return content

    # -- requests from peers ---------------------------------------------------------------
    async def _on_message(self, control: ControlChannel, message: dict[str, Any]) -> Reply:
        try:
            request = decode_request(message)
        except BadRequest as exc:
            return exc.reply()
        handler = self._request_handlers[type(request)]
        return await handler(control, request)

    async def _on_record(self, control: ControlChannel, request: RecordRequest) -> Reply:
        if not self._scope or self._record is None:
            return error_reply(ErrorCode.UNAVAILABLE, "this node is not signed in")
        return {"t": "record_reply", "rec": self._record}

    async def _on_card(self, control: ControlChannel, request: CardRequest) -> Reply:
        if not self._scope:
            return error_reply(ErrorCode.UNAVAILABLE, "this node is not signed in")
        return {"t": "card_reply", "card": self.contacts._sign_card()}

    async def _on_get(self, control: ControlChannel, request: GetRequest) -> Reply:
        return self._publishing.get(control.peer_id, request.what)

    async def _on_subscribe(self, control: ControlChannel, request: SubscribeRequest) -> Reply:
        return self._publishing.subscribe(control, self.id)

    async def _on_unsubscribe(self, control: ControlChannel, request: UnsubscribeRequest) -> Reply:
        self._publishing.end(control)
        return {"t": "unsubscribe_reply"}

    def _on_invite_cancel(self, control: ControlChannel, message: dict[str, Any]) -> None:
        entry = self._incoming.get((id(control), message.get("rid")))  # type: ignore[arg-type]
        if entry is not None:
            invitation, scope = entry
            invitation._withdraw("cancelled")
            scope.cancel()

    async def _on_invite(self, control: ControlChannel, request: InviteRequest) -> Reply:
        rid = request.rid
        app_id = request.app
        app = self._apps.get(app_id)
        receiver = self._invite_receivers.get(app_id)
        peer_id = control.peer_id
        if app is None or receiver is None or not self._allows(peer_id):
            why = "not registered" if app is None else "no handler" if receiver is None else "policy"
            log.info("declining an invitation from %s to %s (%s)", peer_id.fingerprint, app_id, why)
            return self._invite_reply(control, request, InvitationResponse.DECLINED, why)
        info = control.channel.peer
        endpoint, peer = self._sender(control)
        contact = await self.contacts.find_stored(peer_id) if self.contacts.has(peer_id) else None
        invitation = Invitation(
            sender_id=peer_id,
            nickname=info.nickname,
            endpoint=endpoint,
            peer=peer,
            application=app,
            message=request.message,
            data=request.data,
            trusted=self._is_trusted(peer_id),
            contact=contact,
            expires_at=anyio.current_time() + request.ttl,
        )
        key = (id(control), rid)
        scope = anyio.CancelScope(deadline=invitation.expires_at)
        self._incoming[key] = (invitation, scope)
        response: InvitationResponse | None = None
        try:
            with scope:
                response = await receiver(invitation)
        finally:
            self._incoming.pop(key, None)
        if invitation.withdrawn_reason == "cancelled":
            await self._observe(control, request, None, "cancelled")
            return None
        if control.closed:
            invitation._withdraw("disconnected")
            await self._observe(control, request, None, "disconnected")
            return None
        why = "handler"
        if response is None:
            invitation._withdraw("expired")
            response, why = InvitationResponse.EXPIRED, "expired"
        elif invitation.response is None:
            invitation._answer = response
        return self._invite_reply(control, request, response, why)

    def _invite_reply(
        self, control: ControlChannel, request: InviteRequest, response: InvitationResponse, why: str
    ) -> Answer:
        # Observers hear of the answer once it went out.
        async def sent(_: bool) -> None:
            await self._observe(control, request, response, why)

        return Answer({"t": "invite_reply", "r": _WIRE[response]}, sent)

    def add_invitation_observer(self, observer: Callable[[InvitationAnswered], Awaitable[None]]) -> Handle:
        """Call ``observer(event)`` (a coroutine function) after every invitation this node receives
        has been answered or withdrawn, whatever the application. One that raises is logged."""
        self._observers.append(observer)

        def remove() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return Handle(remove)

    async def _observe(
        self, control: ControlChannel, request: InviteRequest, response: InvitationResponse | None, why: str
    ) -> None:
        if not self._observers:
            return
        event = InvitationAnswered(
            sender_id=control.peer_id,
            nickname=control.channel.peer.nickname,
            application_id=request.app,
            message=request.message,
            data_size=len(request.data),
            response=response,
            reason=why,
        )
        for observer in list(self._observers):
            try:
                await observer(event)
            except Exception:
                log.exception("invitation observer %r failed", observer)

    def _sender(self, control: ControlChannel) -> tuple[EndPoint | None, Peer]:
        # The inviter's endpoint and Peer, made once per channel.
        cached: tuple[EndPoint | None, Peer] | None = control.sender
        if cached is None:
            info = control.channel.peer
            endpoint: EndPoint | None
            peer: Peer
            if control.endpoint is not None:
                endpoint = EndPoint(control.endpoint.host, control.endpoint.port, info.endpoint_name)
                peer = Peer(self, control.peer_id, (endpoint,), info.nickname)
            else:
                endpoint = EndPoint(*info.address, info.endpoint_name) if info.address is not None else None
                peer = _PeerOnChannel(self, control)
            cached = control.sender = (endpoint, peer)
        return cached

    # -- inviting --------------------------------------------------------------------------
    async def _invite(
        self, peer: Peer, application: Application | uuid.UUID, message: str, data: bytes, timeout: float
    ) -> InvitationResponse:
        app = self._registered(application)
        check_text(message, "invitation message")
        data = check_data(data, "invitation data")
        timeout = check_seconds(timeout, "invitation timeout", MAX_INVITATION_WAIT)
        self._check_running()
        request = {"t": "invite", "app": app.id.bytes, "msg": message, "data": data, "ttl": wire_ttl(timeout)}
        deadline = anyio.current_time() + timeout
        if isinstance(peer, _PeerOnChannel):
            return await self._invite_on(peer._control_or_dial, request, deadline)
        endpoints = self._endpoints_of(peer)
        if not endpoints:
            raise PeerUnreachable(f"no endpoint of {peer.id.fingerprint} is known")
        if len(endpoints) == 1:
            endpoint = endpoints[0]
            return await self._invite_on(
                lambda: self._control_to(peer.id, endpoint, exact=False), request, deadline
            )
        results: list[InvitationResponse] = []
        errors: list[PeerkitError] = []

        async def one(endpoint: EndPoint, scope: anyio.CancelScope) -> None:
            try:
                result = await self._invite_on(
                    lambda: self._control_to(peer.id, endpoint, exact=True), request, deadline
                )
            except (PeerUnreachable, ProtocolError) as exc:
                errors.append(exc)
                return
            results.append(result)
            if result is InvitationResponse.ACCEPTED:
                scope.cancel()  # the first acceptance wins; the others are withdrawn

        async with anyio.create_task_group() as tg:
            for endpoint in endpoints:
                tg.start_soon(one, endpoint, tg.cancel_scope)
        for answer in (InvitationResponse.ACCEPTED, InvitationResponse.DECLINED, InvitationResponse.EXPIRED):
            if answer in results:
                return answer
        raise errors[0]

    async def _invite_on(
        self, control_for: Callable[[], Awaitable[ControlChannel]], request: dict[str, Any], deadline: float
    ) -> InvitationResponse:
        reply: dict[str, Any] | None = None
        with anyio.CancelScope(deadline=deadline):
            control = await control_for()
            pending = await control.start_request(request)
            try:
                reply = await pending.wait()
            except anyio.get_cancelled_exc_class():
                # Withdraw it: our deadline passed, or the caller cancelled.
                control.forget(pending)
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(2),
                    contextlib.suppress(PeerUnreachable),
                ):
                    await control.notify({"t": "invite_cancel", "rid": pending.rid})
                raise
        if reply is None:
            return InvitationResponse.EXPIRED
        who = control.peer_id.fingerprint
        if reply["t"] == "invite_reply":
            answer = _RESPONSES.get(reply.get("r"))  # type: ignore[arg-type]
            if answer is None:
                raise ProtocolError(f"{who} answered the invitation with {reply.get('r')!r}")
            return answer
        if reply["t"] == "error":
            raise ProtocolError(f"{who} refused the invitation: {reply.get('code')}: {reply.get('msg')}")
        raise ProtocolError(f"{who} answered the invitation with a {reply['t']!r} message")

    # -- application streams ---------------------------------------------------------------
    async def _open_stream(
        self, peer: Peer, application: Application | uuid.UUID, timeout: float
    ) -> AppStream:
        app = self._registered(application)
        timeout = check_seconds(timeout, "stream timeout", None)
        self._check_running()
        endpoints = self._endpoints_of(peer) if not isinstance(peer, _PeerOnChannel) else peer._endpoints()
        if not endpoints:
            raise PeerUnreachable(f"{peer.id.fingerprint} did not say where it listens")
        errors: list[PeerUnreachable] = []
        with anyio.move_on_after(timeout):
            for endpoint in endpoints:
                try:
                    return await self._open_stream_at(peer.id, endpoint, app)
                except PeerUnreachable as exc:
                    errors.append(exc)
        if errors:
            raise errors[-1]
        raise PeerUnreachable(f"no endpoint of {peer.id.fingerprint} opened a stream within {timeout} s")

    async def _open_stream_at(self, peer_id: PeerId, endpoint: EndPoint, app: Application) -> AppStream:
        channel = await self._connect(peer_id, endpoint, use=USE_STREAM)
        try:
            await channel.send({"t": "stream", "rid": 1, "app": app.id.bytes})
            reply = await channel.receive()
        except anyio.EndOfStream:
            await channel.aclose()
            raise PeerUnreachable(f"{peer_id.fingerprint} closed the stream before answering") from None
        except BaseException:
            await anyio.aclose_forcefully(channel)
            raise
        if reply.get("t") == "stream_reply" and reply.get("rid") == 1 and reply.get("r") == "accepted":
            stream = AppStream(channel, app, on_close=self._streams.discard)
            self._streams.add(stream)  # closed by the node on exit if its user has not closed it
            return stream
        await channel.aclose()
        if reply.get("t") == "stream_reply" and reply.get("r") == "declined":
            raise NotAllowed(f"{peer_id.fingerprint} declined a stream for application {app.id}")
        if reply.get("t") == "stream_reply":
            raise ProtocolError(f"{peer_id.fingerprint} answered the stream request with {reply.get('r')!r}")
        if reply.get("t") == "error":
            raise ProtocolError(
                f"{peer_id.fingerprint} refused the stream: {reply.get('code')}: {reply.get('msg')}"
            )
        raise ProtocolError(
            f"{peer_id.fingerprint} answered a stream request with a {reply.get('t')!r} message"
        )

    async def _serve_stream(self, channel: SecureChannel) -> None:
        try:
            with anyio.fail_after(self._handshake_timeout):
                message = await channel.receive()
        except (TimeoutError, anyio.EndOfStream, PeerUnreachable, ProtocolError) as exc:
            log.info(
                "stream connection from %s ended before its request: %r", channel.peer.id.fingerprint, exc
            )
            return
        rid = message.get("rid")
        app_bytes = message.get("app")
        if (
            message["t"] != "stream"
            or not _uint(rid)
            or not isinstance(app_bytes, bytes)
            or len(app_bytes) != 16
        ):
            await channel.send(
                {
                    "t": "error",
                    "code": "malformed",
                    "msg": 'a stream connection starts with {"t": "stream", ...}',
                }
            )
            return
        app_id = uuid.UUID(bytes=app_bytes)
        app = self._apps.get(app_id)
        receiver = self._stream_receivers.get(app_id)
        if app is None or receiver is None or not self._allows(channel.peer.id):
            await channel.send({"t": "stream_reply", "rid": rid, "r": "declined"})
            return
        await channel.send({"t": "stream_reply", "rid": rid, "r": "accepted"})
        stream = AppStream(channel, app)
        try:
            await receiver(stream)
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        who = self._identity.id.fingerprint if self._identity is not None else "?"
        return f"<Node {self._nickname or '?'} {who} {state}>"


class _PeerOnChannel(Peer):
    # The inviter of an invitation whose listening port we do not know: reachable over the channel
    # it opened (invite it back), but not dialable for a stream.

    def __init__(self, node: Node, control: ControlChannel) -> None:
        address = control.channel.peer.address
        endpoint = EndPoint(address[0], address[1]) if address is not None else EndPoint("0.0.0.0", 1)
        super().__init__(node, control.peer_id, (endpoint,), control.channel.peer.nickname)
        self._control = control

    async def _control_or_dial(self) -> ControlChannel:
        if self._control.usable:
            return self._control
        raise PeerUnreachable(
            f"the channel from {self.id.fingerprint} is closed and it did not say where it listens"
        )

    def _endpoints(self) -> tuple[EndPoint, ...]:
        return ()


def _invitation_receiver(handler: InvitationHandler) -> InvitationHandler:
    async def receive(invitation: Invitation) -> InvitationResponse | None:
        try:
            result = await handler(invitation)
        except Exception:
            log.exception("invitation handler for %s failed; declining", invitation.application.id)
            return InvitationResponse.DECLINED
        if isinstance(result, InvitationResponse):
            return result
        if invitation.response is not None:
            return invitation.response
        log.warning("invitation handler for %s returned %r; declining", invitation.application.id, result)
        return InvitationResponse.DECLINED

    return receive


def _app_id(application: Application | uuid.UUID) -> uuid.UUID:
    if isinstance(application, Application):
        return application.id
    if isinstance(application, uuid.UUID):
        return application
    raise TypeError(f"expected an Application or its uuid.UUID, not {type(application).__name__}")


def _reachable(host: str) -> str:
    # A wildcard bind address is shown (and dialled) as the loopback address of its family.
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            return "::1" if address.version == 6 else "127.0.0.1"
    return host


def _event_filter(
    types: Iterable[type[Any]], peer: Peer | PeerId | None, local: bool | None, item: uuid.UUID | None
) -> Callable[[Any], bool]:
    wanted = tuple(types) or (PresenceChanged, ApplicationChanged, ObjectChanged, NameChanged)
    for kind in wanted:
        if kind not in (
            PresenceChanged,
            ApplicationChanged,
            ObjectChanged,
            NameChanged,
            ContactChanged,
            SubscriptionListChanged,
        ):
            raise TypeError(f"{kind!r} is not a peerkit event class")
    peer_id = peer.id if isinstance(peer, Peer) else peer
    if peer_id is not None and not isinstance(peer_id, PeerId):
        raise TypeError(f"peer must be a Peer or a PeerId, not {type(peer).__name__}")

    def accept(event: Any) -> bool:
        if not isinstance(event, wanted):
            return False
        if local is not None and getattr(event, "local", False) is not local:
            return False
        if peer_id is not None and getattr(event, "peer_id", None) != peer_id:
            return False
        if item is not None:
            thing = getattr(event, "application", None) or getattr(event, "object", None)
            return thing is not None and thing.id == item
        return True

    return accept
