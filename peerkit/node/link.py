"""What peers, contacts and the contact store ask of the node, answered by the node's parts.

A :class:`~peerkit.Peer` (and a :class:`~peerkit.Contact`, and the
:class:`~peerkit.ContactManager`) never sees the node: each holds a :class:`Link`, which
satisfies their Protocols (:class:`~peerkit.peers.PeerOps`, :class:`~peerkit.contact.ContactOps`,
:class:`~peerkit.contacts.ContactsHost`) by passing each call to the part that does it.
:class:`ContactEvents` passes what the contact store tells on to the watching and publishing parts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from peerkit.contact import CardContent, Contact
from peerkit.identity import Identity, PeerId
from peerkit.model import Application, EndPoint, InvitationResponse, Presence
from peerkit.peers import Peer
from peerkit.streams import AppStream

if TYPE_CHECKING:
    from peerkit.contacts import ContactManager
    from peerkit.node.invitations import Invitations
    from peerkit.node.nearby import Nearby
    from peerkit.node.publishing import Publishing
    from peerkit.node.requests import Requests
    from peerkit.node.streams import Streams
    from peerkit.node.watching import Watching

__all__ = ("ContactEvents", "Link", "NodeSide")

T = TypeVar("T")


def _need(part: T | None) -> T:
    assert part is not None, "the node has not connected its parts"
    return part


class NodeSide:
    """The few things of the node itself a :class:`Link` needs (the node passes its own)."""

    def __init__(
        self,
        *,
        identity: Callable[[], Identity],
        local_id: Callable[[], PeerId | None],
        nickname: Callable[[], str],
        set_nickname: Callable[[str], None],
        endpoint_name: Callable[[], str],
        listening: Callable[[], EndPoint | None],
        check_running: Callable[[], None],
    ) -> None:
        self.identity = identity
        self.local_id = local_id
        self.nickname = nickname
        self.set_nickname = set_nickname
        self.endpoint_name = endpoint_name
        self.listening = listening
        self.check_running = check_running


class Link:
    """Peer, contact and contact-store operations, done by the node's parts."""

    def __init__(self, node: NodeSide) -> None:
        self._node = node
        self.invitations: Invitations | None = None
        self.streams: Streams | None = None
        self.requests: Requests | None = None
        self.watching: Watching | None = None
        self.nearby: Nearby | None = None
        self.contacts: ContactManager | None = None

    # -- PeerOps -----------------------------------------------------------------------------
    # Each returns the part's coroutine itself, so that the link adds no frame to every resume.
    def invite(
        self, peer: Peer, application: Application | uuid.UUID, message: str, data: bytes, timeout: float
    ) -> Coroutine[Any, Any, InvitationResponse]:
        """See :meth:`Peer.invite`."""
        return _need(self.invitations).invite(peer, application, message, data, timeout)

    def open_stream(
        self, peer: Peer, application: Application | uuid.UUID, timeout: float
    ) -> Coroutine[Any, Any, AppStream]:
        """See :meth:`Peer.open_stream`."""
        return _need(self.streams).open(peer, application, timeout)

    def fetch(self, peer: Peer, what: str, timeout: float) -> Coroutine[Any, Any, Any]:
        """See :meth:`Peer.get_presence`."""
        return _need(self.requests).fetch(peer, what, timeout)

    # -- ContactOps --------------------------------------------------------------------------
    @property
    def local_id(self) -> PeerId | None:
        """The node's id, once it has one."""
        return self._node.local_id()

    def watched_presence(self, peer_id: PeerId) -> Presence | None:
        """The presence of a watched contact."""
        return _need(self.watching).presence_of(peer_id)

    async def subscribe_contact(self, contact: Contact, *, wait: bool, timeout: float) -> None:
        """See :meth:`Contact.subscribe`."""
        await _need(self.watching).subscribe(contact, wait=wait, timeout=timeout)

    async def unsubscribe_contact(self, contact: Contact) -> None:
        """See :meth:`Contact.unsubscribe`."""
        await _need(self.watching).unsubscribe(contact)

    def sign_card(self) -> bytes:
        """A fresh card of the node."""
        return _need(self.contacts).sign_card()

    # -- ContactsHost ------------------------------------------------------------------------
    @property
    def identity(self) -> Identity:
        """The node's identity."""
        return self._node.identity()

    @property
    def nickname(self) -> str:
        """The node's nickname."""
        return self._node.nickname()

    @nickname.setter
    def nickname(self, value: str) -> None:
        self._node.set_nickname(value)

    @property
    def endpoint_name(self) -> str:
        """The node's endpoint name."""
        return self._node.endpoint_name()

    def listening(self) -> EndPoint | None:
        """Where the node listens, or None when it is not running."""
        return self._node.listening()

    def check_running(self) -> None:
        """Raise NotRunning unless the node runs."""
        self._node.check_running()

    def hosts(self) -> tuple[str, ...]:
        """The addresses the node is reachable at."""
        return _need(self.nearby).hosts()

    def next_seq(self) -> int:
        """A fresh sequence number."""
        return _need(self.nearby).next_seq()

    async def fetch_card(self, peer: Peer, timeout: float) -> CardContent:
        """``peer``'s verified card."""
        return await _need(self.requests).fetch_card(peer, timeout)


class ContactEvents:
    """Passes the contact store's changes to the parts that care (a ContactListener)."""

    def __init__(self, watching: Watching, publishing: Publishing, locator: Callable[[], None]) -> None:
        self._watching = watching
        self._publishing = publishing
        self._locator = locator

    async def subscription_changed(self, peer_id: PeerId, subscribed: bool) -> None:
        """Start or stop watching the contact."""
        await self._watching.subscription_changed(peer_id, subscribed)

    def permission_changed(self, peer_id: PeerId) -> None:
        """What the contact may see changed."""
        self._publishing.permission_changed(peer_id)

    def contact_updated(self, peer_id: PeerId) -> None:
        """The contact's endpoints may have changed."""
        self._watching.contact_updated(peer_id)

    def locator_changed(self) -> None:
        """The node's locator key was replaced."""
        self._locator()
