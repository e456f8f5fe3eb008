"""The contacts this node watches (subscriber side): one watch per contact, one link per endpoint.

A :class:`Watching` part runs a watch for every subscribed contact while the node is signed in:
it subscribes at every endpoint where the contact may run (stored, and where discovery sees it),
follows the contact there while the channel lasts, subscribes again when it breaks, and turns
``notify`` messages into events on the node's bus. A link that reaches a node another link already
follows (the same ``inst``) stands by until that one is lost.

A watch whose links all follow the contact holds no task: its next look at the contact is on the
node's clock, and a lost channel, a poke (discovery saw the contact, it was updated) or that look
starts its task again.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import anyio
import anyio.abc

from peerkit.bus import Bus
from peerkit.clock import Clock
from peerkit.contacts import Contact
from peerkit.errors import (
    NotAllowed,
    NotSignedIn,
    PeerkitError,
    PeerUnreachable,
    ProtocolError,
    UnknownContact,
)
from peerkit.events import ApplicationChanged, Event, NameChanged, ObjectChanged, PresenceChanged
from peerkit.identity import PeerId
from peerkit.model import REQUEST_TIMEOUT, ChangeType, EndPoint, Presence, Scope, check_seconds, seconds_text
from peerkit.net.control import ControlChannel, KeepalivePolicy
from peerkit.peers import Peer
from peerkit.presence import OFFLINE, Watched
from peerkit.proto.requests import ErrorCode, Refused, check_reply
from peerkit.sync import Flag

__all__ = ("Watching",)

log = logging.getLogger(__name__)

#: Notifications kept for a subscription that is not answered yet; more drop the channel.
MAX_EARLY_NOTIFY: Final = 256
#: Endpoints of one watched contact that are tried at once, at most.
MAX_LINKS: Final = 64
#: Seconds between two readings of a watched contact's endpoints from the store (sooner when
#: discovery sees it or it is updated).
WATCH_REFRESH: Final = 60.0
#: Seconds between lookups of a watched contact reachable at none of its endpoints (at most,
#: and at least).
ELSEWHERE_REFRESH: Final = 15.0
ELSEWHERE_MIN: Final = 5.0


class _Subscriptions(Protocol):
    # What the part needs of the contact manager.
    def has(self, peer_id: PeerId) -> bool: ...
    async def find_stored(self, peer_id: PeerId) -> Contact | None: ...
    async def set_subscribed(self, peer_id: PeerId, subscribed: bool) -> Contact: ...


@dataclass(slots=True, eq=False)
class _Link:
    # One endpoint of a watched contact (subscriber side): a subscription there, or an attempt.
    endpoint: EndPoint
    state: Watched = field(default_factory=Watched)
    control: ControlChannel | None = None  # while subscribed
    pending: ControlChannel | None = None  # while the subscription is being answered
    early: list[dict[str, Any]] = field(default_factory=list)
    instance: bytes | None = None  # the publisher's instance id (one node run)
    named: EndPoint | None = None  # the endpoint with the name the publisher gives
    was_active: bool = False
    tried: bool = False


@dataclass(slots=True, eq=False)
class _Watch:
    # A contact this node watches (subscriber side): one link per endpoint where it may run. Its
    # task runs while a link is subscribing or there is something to look at; a watch whose links
    # all follow the contact holds no task (see Watching._run_watch).
    peer_id: PeerId
    contact: Contact | None = None
    links: dict[EndPoint, _Link] = field(default_factory=dict)
    first: Flag = field(default_factory=Flag)  # subscribed, or every endpoint failed
    wake: Flag = field(default_factory=Flag)  # try now: the contact may be back
    freed: Flag = field(default_factory=Flag)  # an active link was lost
    stir: Flag = field(default_factory=Flag)  # the watch's task has something to do
    running: bool = False  # its task was started and has not settled or ended
    scope: anyio.CancelScope | None = None  # its task's, while it runs
    group: anyio.abc.TaskGroup | None = None  # where its links run, while the watch runs
    look: bool = True  # read the contact's endpoints again at the next turn
    look_at: float = float("-inf")  # when to read them again anyway
    linking: int = 0  # link tasks running
    relink: list[_Link] = field(default_factory=list)  # lost links, to subscribe again
    looked_elsewhere: float = float("-inf")
    error: PeerkitError | None = None
    offline_told: bool = False

    def active(self) -> list[_Link]:
        return [link for link in self.links.values() if link.control is not None]

    def settled(self) -> bool:
        # Every link follows the contact, and nothing waits to be done: the task may end.
        return (
            not (self.linking or self.relink or self.look)
            and bool(self.links)
            and all(link.control is not None for link in self.links.values())
        )

    def lost(self) -> bool:
        # Every link has tried and none follows the contact: it is reachable at none of them.
        return bool(self.links) and all(link.tried and link.control is None for link in self.links.values())


class _Result(enum.Enum):
    # What subscribing at one endpoint came to.
    ACTIVE = "active"  # subscribed: the contact is followed there
    DUPLICATE = "duplicate"  # the node there is followed through another link already
    FAILED = "failed"


def _look_again(watch: _Watch) -> None:
    # The watch reads the contact's endpoints again (and looks elsewhere if every link failed).
    watch.look = True
    _poke(watch, "stir")


def _poke(watch: _Watch, name: str) -> None:
    # Wake whoever waits on the watch's event ``name`` (they hold the old one), and renew it.
    getattr(watch, name).set()
    setattr(watch, name, Flag())
    if name == "wake":  # the watch's own task wakes too
        _poke(watch, "stir")


class Watching:
    """The subscriber side of subscriptions (see the module docstring).

    :param bus: where the watched contacts' changes are published.
    :param contacts: the contact manager (who is a contact; the stored subscription flag).
    :param control_to: an open control channel to a peer at an endpoint (dialling when needed).
    :param endpoints_of: where a contact may run now.
    :param found_elsewhere: where a contact not at any of the given endpoints is now (the
        Internet scope's providers), or None.
    :param keepalive: the node's keepalive policy (liveness of watched contacts).
    :param scope: the scopes the node is signed in to.
    :param check_running: raises NotRunning when the node is not running.
    :param spawn: start a task in the node's task group.
    :param clock: the node's timer (a settled watch's next look is on it), None when stopped.
    """

    def __init__(
        self,
        *,
        bus: Bus[Any],
        contacts: _Subscriptions,
        control_to: Callable[..., Awaitable[ControlChannel]],
        endpoints_of: Callable[[Peer], tuple[EndPoint, ...]],
        keepalive: KeepalivePolicy,
        found_elsewhere: Callable[[Peer, tuple[EndPoint, ...]], Awaitable[Peer | None]] | None = None,
        scope: Callable[[], Scope],
        check_running: Callable[[], None],
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
        clock: Callable[[], Clock | None],
    ) -> None:
        self._bus = bus
        self._contacts = contacts
        self._control_to = control_to
        self._endpoints_of = endpoints_of
        self._found_elsewhere = found_elsewhere
        self._keepalive = keepalive
        self._scope = scope
        self._check_running = check_running
        self._spawn = spawn
        self._watching: dict[PeerId, _Watch] = {}
        self._link_of: dict[ControlChannel, tuple[_Watch, _Link]] = {}
        self._clock = clock

    def watched(self) -> list[PeerId]:
        """The contacts watched now."""
        return list(self._watching)

    def wake(self, peer_id: PeerId) -> None:
        """Try ``peer_id`` now, if it is watched: it may be back, or have moved."""
        watch = self._watching.get(peer_id)
        if watch is not None:
            _poke(watch, "wake")
            _look_again(watch)
            self._resume(watch)

    def clear(self) -> None:
        """Forget every watch (the node stopped: its task group ended their tasks)."""
        self._watching.clear()

    def presence_of(self, peer_id: PeerId) -> Presence | None:
        """The presence of a watched contact (Offline when it could not be reached), or None."""
        watch = self._watching.get(peer_id)
        if watch is None:
            return None
        active = watch.active()
        if active:
            return active[0].state.presence
        return OFFLINE if watch.first.is_set() else None

    def start(self, peer_id: PeerId) -> _Watch:
        """Watch ``peer_id`` (nothing happens if it is watched already)."""
        watch = self._watching.get(peer_id)
        if watch is None:
            watch = self._watching[peer_id] = _Watch(peer_id)
            self._resume(watch)
        return watch

    def stop(self, peer_id: PeerId) -> list[ControlChannel] | None:
        """Stop watching ``peer_id``: None if it was not watched, else the channels the watch
        followed it on (where to unsubscribe)."""
        watch = self._watching.pop(peer_id, None)
        if watch is None:
            return None
        controls = [link.control for link in watch.links.values() if link.control is not None]
        if watch.scope is not None:
            watch.scope.cancel()  # (its task lets go of the links)
        elif not watch.running:
            self._unlink_all(watch)
        return controls

    def contact_updated(self, peer_id: PeerId) -> None:
        """A contact was updated: its endpoints may have changed, so a watch reads them again now."""
        watch = self._watching.get(peer_id)
        if watch is not None:
            _poke(watch, "wake")
            _look_again(watch)
            self._resume(watch)

    def _resume(self, watch: _Watch) -> None:
        # The watch has something to do: its task does it, started if it is not running.
        if self._watching.get(watch.peer_id) is not watch:
            return  # (stopped)
        if watch.running:
            _poke(watch, "stir")
            return
        watch.running = True
        self._spawn(functools.partial(self._run_watch, watch))

    def _due(self, watch: _Watch) -> None:
        # (the clock's task) a settled watch's next look at the contact
        if not watch.running and anyio.current_time() >= watch.look_at:
            self._resume(watch)

    def _book(self, watch: _Watch) -> None:
        # A settled watch looks again at ``look_at``, started by the node's clock.
        clock = self._clock()
        if clock is not None:  # (else the node is stopping)
            clock.call_at(watch.look_at, functools.partial(self._due, watch))

    async def subscription_changed(self, peer_id: PeerId, subscribed: bool) -> None:
        """The store's ``is_subscribed`` flag of ``peer_id`` changed (contacts.update / delete)."""
        if subscribed and self._scope():
            self.start(peer_id)
        elif not subscribed:
            controls = self.stop(peer_id)
            if controls:
                await self._send_unsubscribe(controls)

    async def _send_unsubscribe(self, controls: list[ControlChannel]) -> None:
        with anyio.move_on_after(REQUEST_TIMEOUT):
            for control in controls:
                await self._unsubscribe_on(control)

    async def _unsubscribe_on(self, control: ControlChannel) -> None:
        if control.usable:
            with contextlib.suppress(PeerUnreachable):
                request = await control.start_request({"t": "unsubscribe"})
                await request.wait()

    async def subscribe(self, contact: Contact, *, wait: bool, timeout: float) -> None:
        """Watch ``contact`` for good (stored); see :meth:`peerkit.Contact.subscribe`."""
        if not isinstance(contact, Contact):
            raise TypeError(f"expected a Contact, not {type(contact).__name__}")
        timeout = check_seconds(timeout, "subscribe timeout", None)
        self._check_running()
        if contact.is_me:
            return  # me is always subscribed to itself
        if not self._scope():
            raise NotSignedIn("sign in before subscribing: await node.sign_in(Scope.ALL)")
        if not self._contacts.has(contact.id):
            raise UnknownContact(f"{contact.fingerprint} is not a contact")
        was_subscribed = contact.id in self._watching
        await self._contacts.set_subscribed(contact.id, True)
        watch = self.start(contact.id)
        if not wait or (was_subscribed and watch.active()):
            return
        kept = False
        try:
            with anyio.move_on_after(timeout):
                await watch.first.wait()
            if watch.active():
                kept = True
                return
            if watch.error is None or isinstance(watch.error, PeerUnreachable):
                why = f": {watch.error}" if watch.error is not None else ""
                raise PeerUnreachable(
                    f"could not subscribe to {contact.fingerprint} within {seconds_text(timeout)}{why}"
                )
            raise watch.error
        finally:
            if not kept and not was_subscribed:
                with anyio.CancelScope(shield=True):
                    self.stop(contact.id)
                    with contextlib.suppress(UnknownContact):
                        await self._contacts.set_subscribed(contact.id, False)

    async def unsubscribe(self, contact: Contact) -> None:
        """Stop watching ``contact`` (stored); see :meth:`peerkit.Contact.unsubscribe`."""
        if not isinstance(contact, Contact):
            raise TypeError(f"expected a Contact, not {type(contact).__name__}")
        self._check_running()
        if contact.is_me:
            return
        await self._contacts.set_subscribed(contact.id, False)
        controls = self.stop(contact.id)
        if controls:
            await self._send_unsubscribe(controls)

    async def _run_watch(self, watch: _Watch) -> None:
        # One link per endpoint where the contact may run (stored, and where discovery sees it);
        # the endpoints are read again when discovery sees the contact, when it is updated, and
        # every WATCH_REFRESH seconds. Once every link follows the contact, the task ends: an
        # idle watch holds no task. The clock (the next look), a poke, or a lost link (closed)
        # starts it again; a stop cancels it, and it lets go of the links then.
        if self._watching.get(watch.peer_id) is not watch:  # (stopped before it started)
            watch.running = False
            self._unlink_all(watch)
            return
        settled = False
        scope = watch.scope = anyio.CancelScope()
        try:
            with scope:
                async with anyio.create_task_group() as tg:
                    watch.group = tg
                    try:
                        while True:
                            stir = watch.stir  # (a poke from now on cuts the wait below short)
                            while watch.relink:
                                self._start_link(watch, watch.relink.pop(), lost=True)
                            if watch.look or anyio.current_time() >= watch.look_at:
                                watch.look = False
                                if not await self._look(watch):
                                    tg.cancel_scope.cancel()  # (no longer a contact)
                                    return
                            if watch.settled():
                                settled = True
                                watch.running, watch.scope, watch.group = False, None, None
                                self._book(watch)
                                return
                            with anyio.move_on_after(watch.look_at - anyio.current_time()):
                                await stir.wait()
                    finally:
                        # Once the body ends (cancelled too), the group may close as soon as its
                        # last link ends, before this task runs on: a link lost meanwhile waits
                        # in ``relink`` rather than being started in a closed group.
                        if watch.group is tg:
                            watch.group = None
        finally:
            if not settled:
                watch.running, watch.scope, watch.group = False, None, None
                self._unlink_all(watch)

    async def _look(self, watch: _Watch) -> bool:
        # Read the contact's endpoints and start a link at each new one; False when the contact
        # is gone.
        contact = await self._contacts.find_stored(watch.peer_id)
        if contact is None:
            return False
        watch.contact = contact
        endpoints = self._endpoints_of(contact)
        if not endpoints and not watch.links:
            watch.error = PeerUnreachable(f"no endpoint of {contact.fingerprint} is known")
            self._contact_offline(watch)
            watch.first.set()
        for endpoint in (*endpoints, *await self._elsewhere(watch, contact)):
            if endpoint not in watch.links and len(watch.links) < MAX_LINKS:
                link = watch.links[endpoint] = _Link(endpoint)
                self._start_link(watch, link, lost=False)
        # Sooner when every link failed, or while the contact is reachable nowhere: it may have
        # moved.
        watch.look_at = anyio.current_time() + (ELSEWHERE_REFRESH if watch.lost() else WATCH_REFRESH)
        return True

    def _start_link(self, watch: _Watch, link: _Link, *, lost: bool) -> None:
        assert watch.group is not None
        watch.linking += 1
        watch.group.start_soon(self._run_link, watch, link, lost)

    def _unlink_all(self, watch: _Watch) -> None:
        for link in watch.links.values():
            self._unlink(link)
        watch.relink.clear()

    async def _run_link(self, watch: _Watch, link: _Link, lost: bool = False) -> None:
        # Subscribe at one endpoint (``lost``: again, its channel broke); once subscribed, the
        # task ends and the contact is followed there while the channel lasts: :meth:`closed`
        # starts the link again when it breaks (no task waits for that). Not restored within the
        # keepalive timeout, the contact is Offline there. A link that reaches a node another
        # link already follows stands by until that one is lost.
        try:
            await self._follow(watch, link, lost)
        finally:
            watch.linking -= 1
            _poke(watch, "stir")  # (the watch may have settled)

    async def _follow(self, watch: _Watch, link: _Link, lost: bool) -> None:
        policy = self._keepalive
        delay = 0.0
        while True:
            limit = policy.timeout if lost else REQUEST_TIMEOUT
            result = await self._subscribe_link(watch, link, limit)
            link.tried = True
            if result is _Result.ACTIVE:
                watch.first.set()
                watch.error, watch.offline_told = None, False
                return
            if result is _Result.DUPLICATE:
                freed = watch.freed
                await freed.wait()
                continue
            if link.was_active:
                self._emit(watch, link, link.state.went_offline(), endpoint=link.named or link.endpoint)
            links = watch.links.values()
            if all(other.tried and other.control is None for other in links):
                if not any(other.was_active for other in links):
                    self._contact_offline(watch)
                watch.first.set()
                _look_again(watch)  # every link failed: the watch looks elsewhere
            lost = False
            delay = min(max(delay * 2, 0.25), policy.interval)
            wake = watch.wake
            with anyio.move_on_after(delay):
                await wake.wait()

    async def _elsewhere(self, watch: _Watch, contact: Contact) -> tuple[EndPoint, ...]:
        # Where a contact reachable at none of its links is now (the Internet scope), if anywhere.
        now = anyio.current_time()
        if self._found_elsewhere is None or not watch.lost() or now - watch.looked_elsewhere < ELSEWHERE_MIN:
            return ()
        watch.looked_elsewhere = now
        found = await self._found_elsewhere(contact, tuple(watch.links))
        return found.endpoints if found is not None else ()

    def _contact_offline(self, watch: _Watch) -> None:
        # Never reached at any endpoint: say so once (a PresenceChanged to Offline, no endpoint).
        if not watch.offline_told and watch.contact is not None:
            watch.offline_told = True
            self._bus.publish(
                PresenceChanged(peer_id=watch.peer_id, contact=watch.contact, endpoint=None, presence=OFFLINE)
            )

    def _unlink(self, link: _Link) -> None:
        if link.control is not None:
            link.control.pins -= 1
            self._link_of.pop(link.control, None)
            link.control = None

    async def _subscribe_link(self, watch: _Watch, link: _Link, timeout: float) -> _Result:
        who = watch.peer_id.fingerprint
        control: ControlChannel | None = None
        with anyio.move_on_after(timeout) as timer:
            try:
                control = await self._control_to(watch.peer_id, link.endpoint, exact=True)
                link.pending, link.early = control, []
                self._link_of[control] = (watch, link)
                request = await control.start_request({"t": "subscribe"})
                try:
                    reply = check_reply(await request.wait(), "subscribe_reply")
                except Refused as exc:
                    if exc.code is ErrorCode.NOT_ALLOWED:
                        watch.error = NotAllowed(f"{who} refused the subscription: {exc.text}")
                        self._link_of.pop(control, None)
                        return _Result.FAILED
                    raise ProtocolError(f"{who} refused the subscription: {exc}") from None
                except ProtocolError as exc:
                    raise ProtocolError(f"{who} {exc}") from None
                instance = reply.get("inst")
                if not isinstance(instance, bytes):
                    instance = None
                if instance is not None and any(
                    other is not link and other.control is not None and other.instance == instance
                    for other in watch.links.values()
                ):
                    self._link_of.pop(control, None)
                    self._spawn(functools.partial(self._unsubscribe_on, control))
                    return _Result.DUPLICATE
                state = link.state.copy()  # a malformed state or notification changes nothing
                changes = state.apply_state(reply.get("state"))
                for early in link.early:
                    changes += state.apply_notify(early)
                link.state = state
            except (PeerUnreachable, ProtocolError, ValueError) as exc:
                watch.error = exc if isinstance(exc, PeerkitError) else PeerUnreachable(str(exc))
                if control is not None:
                    self._link_of.pop(control, None)
                    if isinstance(exc, ProtocolError):
                        log.warning("dropping the channel to %s: %s", who, exc)
                        await control.aclose()
                return _Result.FAILED
            finally:
                link.pending, link.early = None, []
            link.control, link.instance, link.was_active = control, instance, True
            control.pins += 1
            self._emit(watch, link, changes)
            return _Result.ACTIVE
        if control is not None and link.control is not control:
            self._link_of.pop(control, None)
        if timer.cancelled_caught:
            watch.error = PeerUnreachable(
                f"{who} did not answer a subscription within {seconds_text(timeout)}"
            )
        return _Result.FAILED

    def closed(self, control: ControlChannel) -> None:
        """A control channel closed: a link that followed a contact on it subscribes again."""
        entry = self._link_of.get(control)
        if entry is None or entry[1].control is not control:
            return  # (not a link's, or one still subscribing: that task sees the failure)
        watch, link = entry
        self._unlink(link)
        _poke(watch, "freed")
        if watch.group is not None:
            self._start_link(watch, link, lost=True)
        else:
            watch.relink.append(link)
            self._resume(watch)

    def on_notify(self, control: ControlChannel, message: dict[str, Any]) -> None:
        """Apply a ``notify`` message; runs in the channel's reading task, so notifications apply
        in the order they came."""
        entry = self._link_of.get(control)
        if entry is None:
            return
        watch, link = entry
        if link.pending is control and link.control is None:
            link.early.append(message)
            if len(link.early) > MAX_EARLY_NOTIFY:
                self._drop(
                    control, f"more than {MAX_EARLY_NOTIFY} notifications before the subscription's answer"
                )
            return
        if link.control is not control:
            return
        try:
            changes = link.state.apply_notify(message)
        except ProtocolError as exc:
            self._drop(control, str(exc))
            return
        self._emit(watch, link, changes)

    def _drop(self, control: ControlChannel, why: str) -> None:
        log.warning("dropping the channel to %s: %s", control.peer_id.fingerprint, why)
        self._spawn(control.aclose)

    def _emit(
        self,
        watch: _Watch,
        link: _Link,
        changes: list[tuple[str, ChangeType, Any]],
        *,
        endpoint: EndPoint | None = None,
    ) -> None:
        peer_id, contact = watch.peer_id, watch.contact
        assert contact is not None  # set before the first subscription
        if endpoint is None:
            named = link.named
            if named is None or named.name != link.state.name:
                base = (
                    link.control.endpoint
                    if link.control is not None and link.control.endpoint
                    else link.endpoint
                )
                named = link.named = EndPoint(base.host, base.port, link.state.name)
            endpoint = named
        for kind, change, value in changes:
            event: Event
            if kind == "presence":
                event = PresenceChanged(peer_id=peer_id, contact=contact, endpoint=endpoint, presence=value)
            elif kind == "name":
                event = NameChanged(peer_id=peer_id, contact=contact, endpoint=endpoint, name=value)
            elif kind == "app":
                event = ApplicationChanged(
                    peer_id=peer_id, contact=contact, endpoint=endpoint, change=change, application=value
                )
            else:
                event = ObjectChanged(
                    peer_id=peer_id, contact=contact, endpoint=endpoint, change=change, object=value
                )
            self._bus.publish(event)
