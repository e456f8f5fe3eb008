"""A contact (a trusted peer) and its contact card.

A :class:`Contact` is a :class:`~peerkit.Peer` this node trusts: its public key, names, email,
endpoints, and two flags: ``subscribe_allowed`` (may it watch me) and ``is_subscribed`` (do I watch
it). ``node.contacts`` (:class:`~peerkit.ContactManager`) keeps them.

A **contact card** is the self-signed description of a peer: the canonical CBOR body
``{"id", "seq", "nick", "dname", "email", "name", "addrs": [[host, port], ...], "loc"}`` signed with the
``peerkit-card-v1`` domain (docs/protocol.md section 5). Its text form is ``peerkit:`` followed by
the base64url (unpadded) envelope, short enough for a QR code; its file form is the envelope's bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from peerkit.errors import InvalidRecord, LimitExceeded
from peerkit.identity import PeerId
from peerkit.model import (
    MAX_CONTACT_ENDPOINTS,
    MAX_TEXT,
    EndPoint,
    Presence,
    SubscribePermission,
    check_text,
    printable,
)
from peerkit.peers import Peer, PeerOps
from peerkit.proto import records

__all__ = (
    "CARD_PREFIX",
    "CardContent",
    "Contact",
    "ContactOps",
    "card_text",
    "read_card",
    "unchecked_contact",
)

#: The text form of a card starts with this.
CARD_PREFIX: Final = "peerkit:"
#: Addresses a card carries, at most.
MAX_CARD_ADDRESSES: Final = 16


class ContactOps(PeerOps, Protocol):
    """What a :class:`Contact` asks of the node it belongs to, besides a peer's operations."""

    @property
    def local_id(self) -> PeerId | None:
        """The node's own id (None before it has one)."""
        ...

    def watched_presence(self, peer_id: PeerId) -> Presence | None:
        """The presence of a watched contact, or None when it is not watched."""
        ...

    async def subscribe_contact(self, contact: Contact, *, wait: bool, timeout: float) -> None:
        """Watch ``contact`` (see :meth:`Contact.subscribe`)."""
        ...

    async def unsubscribe_contact(self, contact: Contact) -> None:
        """Stop watching ``contact``."""
        ...

    def sign_card(self) -> bytes:
        """A freshly signed card of the node itself."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CardContent:
    """What a verified contact card says."""

    #: The signer's id.
    id: PeerId
    #: The card's sequence number (newer cards have larger ones).
    seq: int
    #: Nickname.
    nickname: str
    #: Display name.
    display_name: str
    #: Email address (free text; not checked).
    email: str
    #: Endpoints where the signer listened when it signed the card.
    endpoints: tuple[EndPoint, ...]
    #: The signed envelope, as read.
    envelope: bytes
    #: The key that opens the signer's record in the DHT (None when the card has none).
    locator_key: bytes | None = None


def read_card(card: str | bytes) -> CardContent:
    """Verify a contact card (text form ``peerkit:...`` or the envelope's bytes) and read it.

    :raises InvalidRecord: when it is malformed, tampered with, or not a card; the message says which.
    :raises TypeError: when ``card`` is neither text nor bytes.
    """
    if isinstance(card, str):
        text = card.strip()
        if not text.startswith(CARD_PREFIX):
            raise InvalidRecord(f"a contact card's text starts with {CARD_PREFIX!r}")
        encoded = text[len(CARD_PREFIX) :]
        if len(encoded) > records.MAX_ENVELOPE * 2:
            raise InvalidRecord(f"contact card text is {len(text)} characters; far over the size of a card")
        try:
            envelope = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            raise InvalidRecord("contact card text is not valid base64url") from None
    elif isinstance(card, (bytes, bytearray, memoryview)):
        envelope = bytes(card)
    else:
        raise TypeError(f"a contact card is text or bytes, not {type(card).__name__}")
    try:
        record = records.open_record(envelope, domain=records.CARD_DOMAIN)
    except InvalidRecord as exc:
        cut = isinstance(card, str) and str(exc).startswith(records.MALFORMED)
        # (a card's text pasted in part: said so, before what the decoder found)
        hint = f"its text is cut short or damaged (copy all of it, from {CARD_PREFIX!r} on): " if cut else ""
        raise InvalidRecord(f"contact card rejected: {hint}{exc}") from None
    body = record.body
    texts = {}
    for key, what in (
        ("nick", "nickname"),
        ("dname", "display name"),
        ("email", "email"),
        ("name", "endpoint name"),
    ):
        value = body.get(key, "")
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise InvalidRecord(f"contact card {what} must be text of at most {MAX_TEXT} characters")
        texts[key] = value
    locator = body.get("loc")
    if locator is not None and (not isinstance(locator, bytes) or len(locator) != 32):
        raise InvalidRecord('contact card "loc" must be a 32-byte key')
    addrs = body.get("addrs", [])
    if not isinstance(addrs, list) or len(addrs) > MAX_CARD_ADDRESSES:
        raise InvalidRecord(f'contact card "addrs" must be a list of at most {MAX_CARD_ADDRESSES} addresses')
    endpoints = []
    for item in addrs:
        try:
            host, port = item
            endpoints.append(EndPoint(host, port, texts["name"]))
        except (TypeError, ValueError):
            raise InvalidRecord('contact card "addrs" entries must be [host, port] pairs') from None
    return CardContent(
        id=PeerId.from_verified(record.id),
        seq=record.seq,
        nickname=texts["nick"],
        display_name=texts["dname"],
        email=texts["email"],
        endpoints=tuple(dict.fromkeys(endpoints)),
        envelope=envelope,
        locator_key=locator,
    )


def card_text(envelope: bytes) -> str:
    """The text form of a card envelope."""
    return CARD_PREFIX + base64.urlsafe_b64encode(envelope).rstrip(b"=").decode("ascii")


def _check_endpoints(endpoints: Iterable[EndPoint]) -> tuple[EndPoint, ...]:
    if isinstance(endpoints, EndPoint):
        endpoints = (endpoints,)
    result = tuple(dict.fromkeys(endpoints))
    for endpoint in result:
        if not isinstance(endpoint, EndPoint):
            raise TypeError(f"contact endpoints must be EndPoint objects, not {type(endpoint).__name__}")
    if len(result) > MAX_CONTACT_ENDPOINTS:
        raise LimitExceeded(f"a contact has {len(result)} endpoints; the limit is {MAX_CONTACT_ENDPOINTS}")
    return result


class Contact(Peer):
    """A trusted peer from the contact store (``PeerContact``); also a :class:`~peerkit.Peer`.

    A contact is a snapshot: change it with :meth:`replace` and ``await node.contacts.update(...)``.
    Inviting it reaches every endpoint it is known at (stored, and where discovery sees it now).
    """

    _ops: ContactOps

    def __init__(
        self,
        ops: ContactOps,
        peer_id: PeerId,
        *,
        nickname: str = "",
        display_name: str = "",
        email: str = "",
        endpoints: Iterable[EndPoint] = (),
        subscribe_allowed: SubscribePermission = SubscribePermission.ALLOWED,
        is_subscribed: bool = False,
        added: float | None = None,
        last_seen: float | None = None,
        card: bytes | None = None,
    ) -> None:
        if not isinstance(peer_id, PeerId):
            raise TypeError(f"a contact's id must be a PeerId, not {type(peer_id).__name__}")
        self._ops = ops
        #: The contact's id (its public key).
        self.id = peer_id
        #: Its nickname.
        self.nickname = check_text(nickname, "nickname")
        #: Its display name.
        self.display_name = check_text(display_name, "display name")
        #: Its email address (free text).
        self.email = check_text(email, "email")
        #: Where it listens, as far as this node knows (at most 50).
        self.endpoints = _check_endpoints(endpoints)
        if not isinstance(subscribe_allowed, SubscribePermission):
            try:
                subscribe_allowed = SubscribePermission(subscribe_allowed)
            except ValueError:
                raise ValueError(
                    f"subscribe_allowed must be ALLOWED or BLOCKED, not {subscribe_allowed!r}"
                ) from None
        #: Whether it may watch this node's presence, applications and objects.
        self.subscribe_allowed = subscribe_allowed
        if not isinstance(is_subscribed, bool):
            raise TypeError(f"is_subscribed must be a bool, not {type(is_subscribed).__name__}")
        #: Whether this node watches it.
        self.is_subscribed = is_subscribed
        #: When it was added (Unix time).
        self.added = time.time() if added is None else float(added)
        #: When this node last had a connection with it (Unix time), or None.
        self.last_seen = last_seen
        #: Its own signed card, when it came from one (see :meth:`export_card`).
        self.card = card

    @property
    def locator_key(self) -> bytes | None:
        """The key that opens this contact's record in the DHT (from its card), or None."""
        if self.card is None:
            return None
        try:
            return read_card(self.card).locator_key
        except InvalidRecord:
            return None

    @property
    def is_me(self) -> bool:
        """Whether this is the node's own contact (``node.contacts.me``)."""
        return self.id == self._ops.local_id

    @property
    def fingerprint(self) -> str:
        """The short form of its id shown to people."""
        return self.id.fingerprint

    @property
    def presence(self) -> Presence | None:
        """Its presence as last seen through the subscription, or None when this node does not watch it."""
        return self._ops.watched_presence(self.id)

    def replace(self, **changes: Any) -> Contact:
        """A copy with ``changes`` (nickname, display_name, email, endpoints, subscribe_allowed,
        is_subscribed); save it with :meth:`ContactManager.update`.

        :raises TypeError: for an unknown field or a value of the wrong type.
        :raises LimitExceeded: for a text or endpoint list over its limit.
        """
        allowed = {"nickname", "display_name", "email", "endpoints", "subscribe_allowed", "is_subscribed"}
        unknown = set(changes) - allowed
        if unknown:
            raise TypeError(
                f"a contact has no field {sorted(unknown)[0]!r} to change; it has {sorted(allowed)}"
            )
        fields = self.fields()
        fields.update(changes)
        return Contact(self._ops, self.id, **fields)

    def fields(self) -> dict[str, Any]:
        """Its details, as keyword arguments of :class:`Contact` (after its id)."""
        return {
            "nickname": self.nickname,
            "display_name": self.display_name,
            "email": self.email,
            "endpoints": self.endpoints,
            "subscribe_allowed": self.subscribe_allowed,
            "is_subscribed": self.is_subscribed,
            "added": self.added,
            "last_seen": self.last_seen,
            "card": self.card,
        }

    async def subscribe(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Watch this contact: its presence, applications, objects and endpoint name, live.

        The subscription is saved and resumes by itself after a restart or a lost connection. With
        ``wait`` (the default) it returns once the contact has sent its current state.

        :raises NotSignedIn: when the node is not signed in.
        :raises NotAllowed: when the contact refuses (it does not have this node as a contact).
        :raises PeerUnreachable: when the contact cannot be reached within ``timeout`` seconds
            (the subscription is then not kept; use ``wait=False`` to keep it for when it appears).
        :raises UnknownContact: when the contact was deleted.

        If cancelled while waiting, the subscription is not kept.
        """
        await self._ops.subscribe_contact(self, wait=wait, timeout=timeout)

    async def unsubscribe(self) -> None:
        """Stop watching this contact; nothing happens if it is not watched.

        :raises UnknownContact: when the contact was deleted.

        Cancelling it does not undo a change the store has begun to save.
        """
        await self._ops.unsubscribe_contact(self)

    def export_card(self) -> str:
        """The contact's card as text (``peerkit:...``).

        For ``node.contacts.me`` a fresh card is signed; for another contact, its own signed card
        is passed on unchanged (it can be verified by whoever imports it).

        :raises ValueError: when this contact did not come from a card it signed.
        """
        return card_text(self.card_bytes())

    def card_bytes(self) -> bytes:
        """The card's file form: the signed envelope's bytes (see :meth:`export_card`)."""
        if self.is_me:
            return self._ops.sign_card()
        if self.card is None:
            raise ValueError(
                f"no card signed by {self.fingerprint} is known: it was added by id, not from its card"
            )
        return self.card

    def save_card(self, path: str | os.PathLike[str]) -> None:
        """Write the card's file form to ``path`` (replacing the file atomically)."""
        data = self.card_bytes()
        target = Path(path)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Contact) and other.id == self.id and other.fields() == self.fields()

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        name = printable(self.display_name or self.nickname) or "?"
        return f"<Contact {name} {self.id.fingerprint}>"


def unchecked_contact(
    ops: ContactOps,
    peer_id: PeerId,
    nickname: str,
    display_name: str,
    email: str,
    endpoints: tuple[EndPoint, ...],
    subscribe_allowed: SubscribePermission,
    is_subscribed: bool,
    added: float,
    last_seen: float | None,
    card: bytes | None,
) -> Contact:
    """A :class:`Contact` made without checking its fields: for rows the contact store wrote
    (every field was checked then), so that listing thousands of contacts stays cheap."""
    contact: Contact = object.__new__(Contact)
    contact._ops = ops
    contact.id = peer_id
    contact.nickname, contact.display_name, contact.email = nickname, display_name, email
    contact.endpoints = endpoints
    contact.subscribe_allowed, contact.is_subscribed = subscribe_allowed, is_subscribed
    contact.added, contact.last_seen, contact.card = added, last_seen, card
    return contact
