"""The events of contacts, presence, applications and objects (REFERENCE.md R6, R7).

Each is a frozen, slotted, keyword-only dataclass. An event about this node itself (a local change)
has ``local=True`` and ``peer_id`` equal to the node's own id; the others come from the contacts this
node watches.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peerkit.identity import PeerId
from peerkit.model import Application, ChangeType, EndPoint, PeerObject, Presence

if TYPE_CHECKING:
    from peerkit.contacts import Contact

__all__ = (
    "ApplicationChanged",
    "ContactChanged",
    "Event",
    "NameChanged",
    "ObjectChanged",
    "PresenceChanged",
    "SubscriptionListChanged",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceChanged:
    """A watched contact's presence changed (or this node's own, when ``local``)."""

    #: Whose presence.
    peer_id: PeerId
    #: The contact, as the store had it when the event was made (``contacts.me`` when local).
    contact: Contact
    #: The endpoint it came from (None for local events and for Offline after a lost connection).
    endpoint: EndPoint | None
    #: The new presence.
    presence: Presence
    #: Whether this is this node's own presence.
    local: bool = False

    @property
    def key(self) -> Hashable:
        """Events with equal keys (one peer at one endpoint) are merged for a slow reader: the latest
        presence wins."""
        return ("presence", self.local, self.peer_id, self.endpoint)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplicationChanged:
    """An application a watched contact publishes was added, updated or deleted."""

    #: Whose application.
    peer_id: PeerId
    #: The contact (``contacts.me`` when local).
    contact: Contact
    #: The endpoint it came from (None for local events).
    endpoint: EndPoint | None
    #: ADDED, UPDATED or DELETED.
    change: ChangeType
    #: The application (for DELETED, as it was); ``path`` and ``arguments`` are never sent.
    application: Application
    #: Whether this is this node's own application.
    local: bool = False

    @property
    def key(self) -> Hashable:
        """Events with equal keys are merged for a slow reader."""
        return ("application", self.local, self.peer_id, self.endpoint, self.application.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectChanged:
    """An object a watched contact publishes was added, updated or deleted."""

    #: Whose object.
    peer_id: PeerId
    #: The contact (``contacts.me`` when local).
    contact: Contact
    #: The endpoint it came from (None for local events).
    endpoint: EndPoint | None
    #: ADDED, UPDATED or DELETED.
    change: ChangeType
    #: The object (for DELETED, as it was).
    object: PeerObject
    #: Whether this is this node's own object.
    local: bool = False

    @property
    def key(self) -> Hashable:
        """Events with equal keys are merged for a slow reader."""
        return ("object", self.local, self.peer_id, self.endpoint, self.object.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class NameChanged:
    """A watched contact's endpoint name changed (or this node's own, when ``local``)."""

    #: Whose endpoint.
    peer_id: PeerId
    #: The contact (``contacts.me`` when local).
    contact: Contact
    #: The endpoint, with its new name (None for local events).
    endpoint: EndPoint | None
    #: The new endpoint name.
    name: str
    #: Whether this is this node's own endpoint name.
    local: bool = False

    @property
    def key(self) -> Hashable:
        """Events with equal keys are merged for a slow reader (the latest name wins)."""
        return ("name", self.local, self.peer_id, self.endpoint)


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactChanged:
    """A contact was added to, updated in or deleted from the store."""

    #: ADDED, UPDATED or DELETED.
    change: ChangeType
    #: The contact (for DELETED, as it was).
    contact: Contact

    @property
    def key(self) -> Hashable:
        """Events with equal keys are merged for a slow reader."""
        return ("contact", self.contact.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionListChanged:
    """The list of contacts this node watches changed: ADDED when one is watched, DELETED when not."""

    #: ADDED or DELETED.
    change: ChangeType
    #: The contact.
    contact: Contact

    @property
    def key(self) -> Hashable:
        """Events with equal keys are merged for a slow reader."""
        return ("subscription", self.contact.id)


#: Every event of this module.
Event = (
    PresenceChanged
    | ApplicationChanged
    | ObjectChanged
    | NameChanged
    | ContactChanged
    | SubscriptionListChanged
)
