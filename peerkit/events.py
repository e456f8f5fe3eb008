"""Every public event: contacts, presence, applications, objects, people near me, invitations.

Each is a frozen, slotted, keyword-only dataclass. An event about this node itself (a local change)
has ``local=True`` and ``peer_id`` equal to the node's own id; the others come from the contacts this
node watches.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peerkit.identity import PeerId
from peerkit.invitations import AnswerReason
from peerkit.model import Application, ChangeType, EndPoint, InvitationResponse, PeerObject, Presence

if TYPE_CHECKING:
    from peerkit.contact import Contact
    from peerkit.peers import NearbyPeer

__all__ = (
    "ApplicationChanged",
    "ContactChanged",
    "Event",
    "InvitationAnswered",
    "NameChanged",
    "NearbyChanged",
    "ObjectChanged",
    "PresenceChanged",
    "SubscriptionListChanged",
    "event_filter",
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
@dataclass(frozen=True, slots=True, kw_only=True)
class NearbyChanged:
    """A peer near me appeared, changed or left."""

    #: ADDED, UPDATED or DELETED.
    change: ChangeType
    #: The peer (for DELETED, as it was last seen).
    peer: NearbyPeer

    @property
    def key(self) -> Hashable:
        """Changes of one peer are merged for a slow reader."""
        return ("nearby", self.peer.id)


@dataclass(frozen=True, slots=True, kw_only=True)
class InvitationAnswered:
    """An invitation this node received and what became of it (see
    :meth:`~peerkit.Node.add_invitation_observer`)."""

    #: The inviter's verified id.
    sender_id: PeerId
    #: The nickname the inviter gave.
    nickname: str
    #: The application's id (it may not be registered here).
    application_id: uuid.UUID
    #: The inviter's message.
    message: str
    #: The size of the inviter's data, in bytes.
    data_size: int
    #: The answer sent, or ``None`` when the inviter withdrew or went away first.
    response: InvitationResponse | None
    #: Why the node answered as it did.
    reason: AnswerReason
    #: Whether the inviter is trusted: a contact, or trusted for this run (what to show of a
    #: stranger's, who may invite in a loop, is the observer's to choose).
    trusted: bool = False


Event = (
    PresenceChanged
    | ApplicationChanged
    | ObjectChanged
    | NameChanged
    | ContactChanged
    | SubscriptionListChanged
)


def event_filter(
    types: Iterable[type[Any]], peer_id: PeerId | None, local: bool | None, item: uuid.UUID | None
) -> Callable[[Any], bool]:
    """Whether an event is one of ``types`` (default: presence, application, object and name
    changes), of ``peer_id``, local or not (None: either), about ``item``; for the bus.

    :raises TypeError: when a type is not a peerkit event class.
    """
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
