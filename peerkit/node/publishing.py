"""What this node publishes, and to whom: the subscribers that watch it (publisher side).

One :class:`Publishing` part per node keeps, per subscription, an outbox of what the subscriber
was told, answers ``subscribe`` and ``get`` requests, and sends every subscriber the changes it may
see: one fan-out task sends without waiting on any connection, and a congested subscriber gets a
task of its own until it has caught up. When the node stops, :meth:`Publishing.farewell` waits
(bounded by the caller) until every subscriber has been sent what is queued for it.

What a subscriber is sent is always the difference between what it was told (its outbox) and what
it may see now, so a change need not be queued per subscriber: the part notes which kinds of thing
changed (presence, name, applications, objects), and the next fan-out pass works out each
subscriber's difference for those kinds. A congested subscriber notes its own kinds until its
task catches up; however many changes it misses, it is owed at most one message per thing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import anyio

from peerkit.bus import Bus
from peerkit.errors import PeerUnreachable
from peerkit.events import ApplicationChanged, NameChanged, ObjectChanged, PresenceChanged
from peerkit.identity import PeerId
from peerkit.model import Application, PeerObject, Presence, Scope, SubscribePermission
from peerkit.net.control import Answer, ControlChannel, Reply
from peerkit.presence import KINDS, Outbox, app_wire, object_wire, presence_wire
from peerkit.proto import messages
from peerkit.proto.requests import (
    ErrorCode,
    GetRequest,
    SubscribeRequest,
    UnsubscribeRequest,
    What,
    error_reply,
)
from peerkit.sync import Flag

__all__ = ("Publishing", "Visibility")

log = logging.getLogger(__name__)

#: Distinct notifications kept encoded for reuse across subscribers, at most.
ENCODED_CACHE: Final = 256

_NEAR_ME_SIGNED: Final = frozenset({Scope.NEAR_ME, Scope.ALL})
_INTERNET_SIGNED: Final = frozenset({Scope.INTERNET, Scope.ALL})
_VISIBLE: Final = {
    (False, False): Scope.NONE,
    (True, False): Scope.NEAR_ME,
    (False, True): Scope.INTERNET,
    (True, True): Scope.ALL,
}


class Visibility:
    """An internal bus signal (not a public event): what some subscribers may see changed (a
    scope, a permission, a peer's nearness)."""

    __slots__ = ()
    key = ("visibility",)


class _Permissions(Protocol):
    # What the part needs of the contact manager.
    def has(self, peer_id: PeerId) -> bool: ...
    def permission(self, peer_id: PeerId) -> SubscribePermission | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Published:
    """What this node shows now (before the visibility rule is applied)."""

    presence: Presence
    name: str
    apps: Iterable[Application]
    objects: Iterable[PeerObject]


@dataclass(slots=True, eq=False)
class _Subscriber:
    # A peer watching this node over one control channel.
    control: ControlChannel
    outbox: Outbox = field(default_factory=Outbox)
    # Set while a task of its own sends to it (its state is on its way, or its connection was
    # congested); otherwise the fan-out task sends to it without waiting. (While slow, the kinds
    # of thing that changed since it was last sent its difference are noted in Publishing._slow.)
    slow: bool = False
    # While slow: what its connection did not take at once (none kept otherwise: a node has
    # thousands of subscribers, nearly all of them idle).
    backlog: list[bytes] | None = None


@dataclass(slots=True)
class _Pass:
    # What one fan-out pass works out once for all its subscribers.
    now: Published
    scope: Scope


class Publishing:
    """The publisher side of subscriptions and one-shot gets (see the module docstring).

    :param bus: the node's bus (local changes and :class:`Visibility` signals come from it).
    :param contacts: who is a contact and what it is allowed.
    :param published: what this node shows now.
    :param scope: the scopes the node is signed in to now.
    :param near: whether a peer is near me now (holds a verified discovery record).
    :param spawn: start a task in the node's task group.
    :param instance: this run of the node (told to subscribers).
    """

    def __init__(
        self,
        *,
        bus: Bus[Any],
        contacts: _Permissions,
        published: Callable[[], Published],
        scope: Callable[[], Scope],
        near: Callable[[PeerId], bool],
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
        instance: bytes,
    ) -> None:
        self._bus = bus
        self._contacts = contacts
        self._published = published
        self._scope = scope
        self._near = near
        self._spawn = spawn
        self.instance = instance
        self._subscribers: dict[ControlChannel, _Subscriber] = {}
        # The slow subscribers, each with the kinds of thing changed since it was last sent them.
        self._slow: dict[_Subscriber, set[str]] = {}
        self._encoded: dict[tuple[Any, ...], bytes] = {}
        self._dirty: set[str] = set()  # kinds changed since the last pass
        self._passing = False  # a pass is under way (it lets others run every 128 subscribers)
        self._wake = Flag()
        bus.add_handler(_for_subscribers, self._changed)  # (a plain function: called at once)

    # -- who sees what ----------------------------------------------------------------------
    def visible(self, peer_id: PeerId) -> Scope:
        """The scopes whose items ``peer_id`` may see now: NEAR_ME when it is near me (and I am
        signed in there), INTERNET when it is an allowed contact (and I am signed in there)."""
        return self._visible(peer_id, self._contacts.permission(peer_id), self._scope())

    def _visible(self, peer_id: PeerId, permission: SubscribePermission | None, scope: Scope) -> Scope:
        if permission is SubscribePermission.BLOCKED or not scope:
            return Scope.NONE
        # (a table, not flag arithmetic: this runs for each subscriber of each change)
        near = scope in _NEAR_ME_SIGNED and self._near(peer_id)
        allowed = scope in _INTERNET_SIGNED and permission is SubscribePermission.ALLOWED
        return _VISIBLE[near, allowed]

    def subscribers(self) -> list[PeerId]:
        """The ids of the peers that watch this node now (one entry per subscription)."""
        return [control.peer_id for control in self._subscribers]

    def watches(self, peer_id: PeerId) -> bool:
        """Whether ``peer_id`` has a subscription here."""
        return any(control.peer_id == peer_id for control in self._subscribers)

    def permission_changed(self, peer_id: PeerId) -> None:
        """A contact's permission changed (a listener of the contact manager)."""
        if self.watches(peer_id):
            self._bus.publish(Visibility())

    # -- requests ---------------------------------------------------------------------------
    def get(self, peer_id: PeerId, what: What) -> dict[str, Any]:
        """The reply to a ``get`` request of ``peer_id`` (a ``get_reply`` or an ``error``)."""
        visible = self.visible(peer_id)
        if not visible:
            return error_reply(ErrorCode.NOT_ALLOWED, "this node lets you see nothing of it")
        now = self._published()
        if what is What.PRESENCE:
            return {"t": "get_reply", "presence": presence_wire(now.presence)}
        if what is What.APPS:
            return {"t": "get_reply", "apps": [app_wire(a) for a in now.apps if a.scope & visible]}
        return {"t": "get_reply", "objects": [object_wire(o) for o in now.objects if o.scope & visible]}

    def subscribe(self, control: ControlChannel) -> Reply:
        """The answer to a ``subscribe`` request: the current state; every change follows once it
        went out."""
        permission = self._contacts.permission(control.peer_id)
        if permission is None:
            return error_reply(ErrorCode.NOT_ALLOWED, "this node does not have you as a contact")
        self.end(control)
        subscriber = _Subscriber(control)
        self._diff_for(subscriber, KINDS, self._pass(), permission)
        self._subscribers[control] = subscriber
        control.pins += 1
        # Changes from now on are noted in its own ``dirty`` until the state is sent.
        subscriber.slow = True
        self._slow[subscriber] = set()
        state = subscriber.outbox.state()

        async def sent(ok: bool) -> None:
            if self._subscribers.get(control) is not subscriber:
                return
            if not ok:
                self.end(control)
                return
            kinds = self._slow.get(subscriber, set())  # what changed meanwhile
            self._caught_up(subscriber)
            if kinds:
                self._send_now(subscriber, kinds, self._pass())

        return Answer({"t": "subscribe_reply", "state": state, "inst": self.instance}, sent)

    # -- the request handlers (the node's dispatch table) ------------------------------------
    async def on_get(self, control: ControlChannel, request: GetRequest) -> Reply:
        """Answer a ``get`` request."""
        return self.get(control.peer_id, request.what)

    async def on_subscribe(self, control: ControlChannel, request: SubscribeRequest) -> Reply:
        """Answer a ``subscribe`` request."""
        return self.subscribe(control)

    async def on_unsubscribe(self, control: ControlChannel, request: UnsubscribeRequest) -> Reply:
        """Answer an ``unsubscribe`` request."""
        self.end(control)
        return {"t": "unsubscribe_reply"}

    def end(self, control: ControlChannel) -> None:
        """The subscription on ``control`` ends (``unsubscribe``, or the channel closed)."""
        subscriber = self._subscribers.pop(control, None)
        if subscriber is not None:
            self._slow.pop(subscriber, None)
            control.pins -= 1

    def clear(self) -> None:
        """Forget every subscription (the node stopped)."""
        self._subscribers.clear()
        self._slow.clear()

    # -- sending ----------------------------------------------------------------------------
    def _changed(self, event: Any) -> None:
        # A local change or a Visibility signal (the bus calls this as it happens): the fan-out
        # task sends it on; a slow subscriber notes it for its own task.
        kinds = _kinds_of(event)
        for dirty in self._slow.values():
            dirty.update(kinds)
        if self._subscribers:
            self._dirty.update(kinds)
            self._wake.set()

    def _pass(self) -> _Pass:
        return _Pass(self._published(), self._scope())

    def _diff_for(
        self,
        subscriber: _Subscriber,
        kinds: Collection[str],
        now: _Pass,
        permission: SubscribePermission | None,  # (None: no longer a contact)
    ) -> list[dict[str, Any]]:
        peer_id = subscriber.control.peer_id
        visible = Scope.NONE if permission is None else self._visible(peer_id, permission, now.scope)
        published = now.now
        return subscriber.outbox.diff(
            visible, published.presence, published.name, published.apps, published.objects, kinds
        )

    async def fanout(self) -> None:
        """Send every subscriber its changes, without waiting on any connection; runs until cancelled.

        A change reaches a thousand subscribers in one pass. A subscriber whose connection is
        congested gets a task of its own until it has caught up.
        """
        while True:
            await self._wake.wait()
            self._wake = Flag()
            kinds, self._dirty = self._dirty, set()
            now = self._pass()
            self._passing = True
            try:
                for count, subscriber in enumerate(list(self._subscribers.values()), 1):
                    if not subscriber.slow and self._subscribers.get(subscriber.control) is subscriber:
                        self._send_now(subscriber, kinds, now)
                    if count % 128 == 0:
                        await anyio.lowlevel.checkpoint()  # let the others run during a long pass
                        now = self._pass()  # (what changed meanwhile comes in the next pass too)
            finally:
                self._passing = False

    def _send_now(self, subscriber: _Subscriber, kinds: set[str], now: _Pass) -> None:
        control = subscriber.control
        channel = control.channel
        permission = self._contacts.permission(control.peer_id)  # (it cannot change before the end)
        try:
            encoded = [self._encode(m) for m in self._diff_for(subscriber, kinds, now, permission)]
            for index, plaintext in enumerate(encoded):
                if not channel.try_send_encoded(plaintext):
                    subscriber.backlog = encoded[index:]
                    subscriber.slow = True
                    # What changed since this pass began is for the next pass, which skips a
                    # slow subscriber: its own task sends it.
                    self._slow[subscriber] = set(self._dirty)
                    self._spawn(functools.partial(self._send_slowly, subscriber))
                    return
        except PeerUnreachable as exc:
            log.debug("subscriber %s is gone: %s", control.peer_id.fingerprint, exc)
            self.end(control)
            return
        if permission is None:
            self.end(control)  # no longer a contact: it was told Offline, and hears no more

    async def _send_slowly(self, subscriber: _Subscriber) -> None:
        # The subscriber's connection is congested (or its state was just sent): send at its pace,
        # noting the kinds that change meanwhile.
        control = subscriber.control
        try:
            backlog, subscriber.backlog = subscriber.backlog, None
            for plaintext in backlog or ():
                await control.notify_encoded(plaintext)
            while self._slow.get(subscriber):  # (not once it ended)
                kinds, self._slow[subscriber] = self._slow[subscriber], set()
                permission = self._contacts.permission(control.peer_id)
                for message in self._diff_for(subscriber, kinds, self._pass(), permission):
                    await control.notify_encoded(self._encode(message))
        except PeerUnreachable as exc:
            log.debug("subscriber %s is gone: %s", control.peer_id.fingerprint, exc)
            self.end(control)
            return
        finally:
            self._caught_up(subscriber)
        if not self._contacts.has(control.peer_id):
            self.end(control)

    def _caught_up(self, subscriber: _Subscriber) -> None:
        subscriber.slow = False
        self._slow.pop(subscriber, None)

    def _encode(self, message: dict[str, Any]) -> bytes:
        # Subscribers are mostly told the same things: each distinct notification is encoded once.
        kind, value = message["k"], message["v"]
        # (a presence is [status, text]: made hashable without walking it)
        key = (kind, message.get("c"), tuple(value) if kind == "presence" else _frozen(value))
        encoded = self._encoded.get(key)
        if encoded is None:
            if len(self._encoded) >= ENCODED_CACHE:
                self._encoded.clear()
            encoded = self._encoded[key] = messages.encode_message(message)
        return encoded

    async def farewell(self) -> None:
        """Wait until every subscriber has been sent what is queued for it (the caller bounds it)."""
        while self._dirty or self._passing or self._slow:  # noqa: ASYNC110
            await anyio.sleep(0.01)  # bounded by the caller; senders share no event to wait on


def _for_subscribers(event: Any) -> bool:
    return isinstance(event, Visibility) or getattr(event, "local", False) is True


def _kinds_of(event: Any) -> Collection[str]:
    if isinstance(event, PresenceChanged):
        return ("presence",)
    if isinstance(event, ApplicationChanged):
        return ("app",)
    if isinstance(event, ObjectChanged):
        return ("object",)
    if isinstance(event, NameChanged):
        return ("name",)
    return KINDS


def _frozen(value: Any) -> Any:
    # A hashable stand-in for a notification's value (lists, maps, text, bytes, numbers).
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _frozen(v)) for k, v in value.items())
    return value
