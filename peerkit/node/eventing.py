"""The event methods of a :class:`~peerkit.Node`: watch and handle presence, application, object
and name changes through the node's event bus."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from peerkit.bus import Bus, EventWatch
from peerkit.errors import NotRunning
from peerkit.events import (
    ApplicationChanged,
    Event,
    NameChanged,
    ObjectChanged,
    PresenceChanged,
    event_filter,
)
from peerkit.handles import Handle
from peerkit.identity import PeerId
from peerkit.model import Application
from peerkit.node.receivers import app_id as id_of
from peerkit.peers import Peer

__all__ = ("EventHandler", "EventMethods")

#: An event handler: a coroutine function (run in a task of its own) or a plain function (called
#: as the event happens; it must return quickly). See :meth:`EventMethods.add_presence_handler`.
EventHandler = Callable[[Any], Awaitable[None] | None]
F = TypeVar("F", bound=Callable[..., Any])


class EventMethods:
    """Events of the contacts a node watches, and of the node itself; mixed into the Node, whose
    event bus they read."""

    _bus: Bus[Any]

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
        :raises NotRunning: when the node has stopped (the iterator would never end).
        """
        self._check_not_stopped()
        return self._bus.watch(event_filter(types, _peer_id(peer), local, item))

    def _check_not_stopped(self) -> None:
        # Watches and handlers may be made before the node starts; once it stopped, nothing more
        # comes to them.
        if self._bus.closed:
            raise NotRunning("the node has stopped: use it inside 'async with node:'")

    def _add_event_handler(
        self,
        kind: type[Event],
        handler: EventHandler,
        peer: Peer | PeerId | None,
        local: bool,
        item: uuid.UUID | None,
    ) -> Handle:
        if not callable(handler):
            raise TypeError(
                f"a handler must be a function or a coroutine function, not {type(handler).__name__}"
            )
        self._check_not_stopped()
        return self._bus.add_handler(event_filter((kind,), _peer_id(peer), local, item), handler)

    def add_presence_handler(
        self, handler: EventHandler, *, peer: Peer | PeerId | None = None, local: bool = False
    ) -> Handle:
        """Run ``handler(event)`` for each :class:`~peerkit.PresenceChanged` of the contacts this node
        watches (or of one, with ``peer``; or this node's own, with ``local=True``).

        A coroutine function runs in a task of its own, one event at a time, so a slow handler holds
        up nothing; the events that wait for it merge (the latest presence wins). A plain function
        is called at once, in the task that received the change (the contact's channel), with
        every event: it is the fastest way to follow many contacts, and it must not block, as the
        channel waits for it. A handler that raises is logged, and the next event still comes.

        :returns: a handle whose ``remove()`` stops the handler.
        :raises TypeError: when ``handler`` is not callable.
        :raises NotRunning: when the node has stopped.
        """
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
        item = id_of(application) if application is not None else None
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


def _peer_id(peer: Peer | PeerId | None) -> PeerId | None:
    if peer is None or isinstance(peer, PeerId):
        return peer
    if isinstance(peer, Peer):
        return peer.id
    raise TypeError(f"peer must be a Peer or a PeerId, not {type(peer).__name__}")
