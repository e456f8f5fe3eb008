"""Contacts (REFERENCE.md R7): trusted peers in a persistent store, and contact cards.

A :class:`Contact` is a :class:`~peerkit.Peer` this node trusts: its public key, names, email,
endpoints, and two flags: ``subscribe_allowed`` (may it watch me) and ``is_subscribed`` (do I watch
it). :class:`ContactManager` (``node.contacts``) keeps them in the node's SQLite database.

A **contact card** is the self-signed description of a peer: the canonical CBOR body
``{"id", "seq", "nick", "dname", "email", "name", "addrs": [[host, port], ...]}`` signed with the
``peerkit-card-v1`` domain (PROTOCOL.md section 5). Its text form is ``peerkit:`` followed by the
base64url (unpadded) envelope, short enough for a QR code; its file form is the envelope's bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from peerkit.apps import Handle
from peerkit.bus import Bus, EventWatch
from peerkit.errors import ContactExists, InvalidRecord, LimitExceeded, UnknownContact
from peerkit.events import ContactChanged, Event, SubscriptionListChanged
from peerkit.identity import PeerId
from peerkit.model import (
    MAX_CONTACT_ENDPOINTS,
    MAX_TEXT,
    ChangeType,
    EndPoint,
    Presence,
    PresenceStatus,
    SubscribePermission,
    check_text,
)
from peerkit.peers import Peer
from peerkit.proto import records
from peerkit.store import Store

if TYPE_CHECKING:
    from peerkit.node import Node

__all__ = ("CARD_PREFIX", "CardContent", "Contact", "ContactManager", "read_card")

#: The text form of a card starts with this.
CARD_PREFIX: Final = "peerkit:"
#: Addresses a card carries, at most.
MAX_CARD_ADDRESSES: Final = 16
#: Seconds between two updates of a contact's ``last_seen``.
SEEN_INTERVAL: Final = 60.0
#: The settings key of the presence saved by ``peerkit presence set`` (JSON ``[status, text]``).
PRESENCE_SETTING: Final = "presence"
#: Bytes of a card file that are read, at most.
MAX_CARD_FILE: Final = 2 * records.MAX_ENVELOPE


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
        raise InvalidRecord(f"contact card rejected: {exc}") from None
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
        id=PeerId._verified(record.id),
        seq=record.seq,
        nickname=texts["nick"],
        display_name=texts["dname"],
        email=texts["email"],
        endpoints=tuple(dict.fromkeys(endpoints)),
        envelope=envelope,
    )


def saved_presence(settings: dict[str, str]) -> Presence | None:
    """The presence saved in the settings by ``peerkit presence set``, or None (none or unreadable)."""
    try:
        status, text = json.loads(settings[PRESENCE_SETTING])
        presence = Presence(PresenceStatus(status), text)
    except (KeyError, ValueError, TypeError):
        return None
    return None if presence.status is PresenceStatus.OFFLINE else presence


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

    def __init__(
        self,
        node: Node,
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
        self._node = node
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
    def is_me(self) -> bool:
        """Whether this is the node's own contact (``node.contacts.me``)."""
        return self._node._identity is not None and self.id == self._node._identity.id

    @property
    def fingerprint(self) -> str:
        """The short form of its id shown to people."""
        return self.id.fingerprint

    @property
    def presence(self) -> Presence | None:
        """Its presence as last seen through the subscription, or None when this node does not watch it."""
        return self._node._watched_presence(self.id)

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
        fields = self._fields()
        fields.update(changes)
        return Contact(self._node, self.id, **fields)

    def _fields(self) -> dict[str, Any]:
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
        """Watch this contact: its presence, applications, objects and endpoint name, live (R6).

        The subscription is saved and resumes by itself after a restart or a lost connection. With
        ``wait`` (the default) it returns once the contact has sent its current state.

        :raises NotSignedIn: when the node is not signed in.
        :raises NotAllowed: when the contact refuses (it does not have this node as a contact).
        :raises PeerUnreachable: when the contact cannot be reached within ``timeout`` seconds
            (the subscription is then not kept; use ``wait=False`` to keep it for when it appears).
        :raises UnknownContact: when the contact was deleted.

        If cancelled while waiting, the subscription is not kept.
        """
        await self._node._subscribe_contact(self, wait=wait, timeout=timeout)

    async def unsubscribe(self) -> None:
        """Stop watching this contact; nothing happens if it is not watched.

        :raises UnknownContact: when the contact was deleted.
        """
        await self._node._unsubscribe_contact(self)

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
            return self._node.contacts._sign_card()
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
        return isinstance(other, Contact) and other.id == self.id and other._fields() == self._fields()

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        name = self.display_name or self.nickname or "?"
        return f"<Contact {name} {self.id.fingerprint}>"


_COLUMNS: Final = (
    "id, nickname, display_name, email, endpoints, subscribe_allowed, is_subscribed, added, last_seen, card"
)


def _row(contact: Contact) -> tuple[Any, ...]:
    endpoints = json.dumps([[e.host, e.port, e.name] for e in contact.endpoints])
    return (
        bytes(contact.id),
        contact.nickname,
        contact.display_name,
        contact.email,
        endpoints,
        int(contact.subscribe_allowed),
        int(contact.is_subscribed),
        contact.added,
        contact.last_seen,
        contact.card,
    )


def _insert(connection: sqlite3.Connection, row: tuple[Any, ...]) -> bool:
    try:
        connection.execute(f"INSERT INTO contacts ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
    except sqlite3.IntegrityError:
        return False
    return True


def _replace(connection: sqlite3.Connection, row: tuple[Any, ...]) -> bool:
    cursor = connection.execute(
        "UPDATE contacts SET nickname=?, display_name=?, email=?, endpoints=?, subscribe_allowed=?,"
        " is_subscribed=?, added=?, last_seen=?, card=? WHERE id=?",
        (*row[1:], row[0]),
    )
    return cursor.rowcount == 1


def _delete(connection: sqlite3.Connection, key: bytes) -> bool:
    return connection.execute("DELETE FROM contacts WHERE id=?", (key,)).rowcount == 1


def _select(connection: sqlite3.Connection, key: bytes) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = connection.execute(
        f"SELECT {_COLUMNS} FROM contacts WHERE id=?", (key,)
    ).fetchone()
    return row


def _select_all(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return connection.execute(f"SELECT {_COLUMNS} FROM contacts ORDER BY added, id").fetchall()


def _flags(connection: sqlite3.Connection) -> list[tuple[bytes, int, int]]:
    return connection.execute("SELECT id, subscribe_allowed, is_subscribed FROM contacts").fetchall()


def data_version(connection: sqlite3.Connection) -> int:
    """A number that changes when another connection commits to the database."""
    version: int = connection.execute("PRAGMA data_version").fetchone()[0]
    return version


def _settings(connection: sqlite3.Connection) -> dict[str, str]:
    return dict(connection.execute("SELECT key, value FROM settings").fetchall())


def _save_settings(connection: sqlite3.Connection, values: dict[str, str]) -> None:
    connection.executemany(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        list(values.items()),
    )


def _seen(connection: sqlite3.Connection, key: bytes, when: float) -> None:
    connection.execute("UPDATE contacts SET last_seen=? WHERE id=?", (when, key))


_PERMISSIONS: Final = {int(p): p for p in SubscribePermission}


def _stored_endpoint(host: str, port: int, name: str) -> EndPoint:
    # An endpoint as this module stored it (checked when it was stored).
    endpoint: EndPoint = object.__new__(EndPoint)
    object.__setattr__(endpoint, "host", host)
    object.__setattr__(endpoint, "port", port)
    object.__setattr__(endpoint, "name", name)
    return endpoint


def _flag_table(rows: list[tuple[bytes, int, int]]) -> dict[PeerId, tuple[SubscribePermission, bool]]:
    return {
        PeerId._verified(key): (SubscribePermission(allowed), bool(subscribed))
        for key, allowed, subscribed in rows
    }


class ContactManager:
    """The node's contacts (``node.contacts``, the original ``ContactManager``); see the module docstring.

    Reads and writes go to the SQLite database in the node's data dir (or a database in memory for
    a node made from an identity without a data dir). Every method that changes the store raises an
    event (:class:`~peerkit.ContactChanged`, :class:`~peerkit.SubscriptionListChanged`).
    """

    def __init__(self, node: Node, store: Store, bus: Bus[Event]) -> None:
        self._node = node
        self._store = store
        self._bus = bus
        # id -> (subscribe_allowed, is_subscribed): what the node must know without waiting.
        self._flags: dict[PeerId, tuple[SubscribePermission, bool]] = {}
        self._me_names: dict[str, str] = {}
        self._seen_at: dict[PeerId, float] = {}

    async def _load(self) -> None:
        self._flags = _flag_table(await self._store.read(_flags))
        self._me_names = await self._store.read(_settings)

    async def _reload(self) -> dict[str, str]:
        # Another process (the CLI) changed the database: take its changes as if made here, with
        # their events, and return the settings as they are now.
        now = _flag_table(await self._store.read(_flags))
        before, self._flags = self._flags, now
        node = self._node
        for peer_id in set(before) | set(now):
            old, new = before.get(peer_id), now.get(peer_id)
            if old == new:
                continue
            row = await self._store.read(_select, bytes(peer_id))
            contact = self._contact(row) if row is not None else Contact(node, peer_id)
            if new is None:
                self._bus.publish(ContactChanged(change=ChangeType.DELETED, contact=contact))
            else:
                change = ChangeType.ADDED if old is None else ChangeType.UPDATED
                self._bus.publish(ContactChanged(change=change, contact=contact))
            was_subscribed, is_subscribed = bool(old and old[1]), bool(new and new[1])
            if was_subscribed != is_subscribed:
                change = ChangeType.ADDED if is_subscribed else ChangeType.DELETED
                self._bus.publish(SubscriptionListChanged(change=change, contact=contact))
                await node._watch_changed(peer_id, is_subscribed)
            if (old and old[0]) != (new and new[0]):
                node._contact_permission_changed(peer_id)
        self._me_names = await self._store.read(_settings)
        return self._me_names

    async def _save_setting(self, key: str, value: str) -> None:
        await self._store.write(_save_settings, {key: value})
        self._me_names[key] = value

    # -- what the node asks, without waiting ------------------------------------------------
    def has(self, peer_id: PeerId) -> bool:
        """Whether ``peer_id`` is a contact."""
        return peer_id in self._flags

    def permission(self, peer_id: PeerId) -> SubscribePermission | None:
        """The contact's ``subscribe_allowed``, or None when it is not a contact."""
        flags = self._flags.get(peer_id)
        return None if flags is None else flags[0]

    def watched(self) -> list[PeerId]:
        """The ids of the contacts this node watches (``is_subscribed``)."""
        return [peer_id for peer_id, (_, subscribed) in self._flags.items() if subscribed]

    def __len__(self) -> int:
        return len(self._flags)

    # -- me -----------------------------------------------------------------------------------
    @property
    def me(self) -> Contact:
        """This node as a contact (``LocalContact``): always allowed and subscribed to itself.

        Only its nickname, display name and email can change (through :meth:`update`).
        """
        node = self._node
        return Contact(
            node,
            node.id,
            nickname=node.nickname,
            display_name=self._me_names.get("me.display_name", ""),
            email=self._me_names.get("me.email", ""),
            endpoints=(node.endpoint,) if node.running else (),
            subscribe_allowed=SubscribePermission.ALLOWED,
            is_subscribed=True,
            added=0.0,
            last_seen=time.time(),
        )

    def _sign_card(self, endpoints: Iterable[EndPoint] | None = None) -> bytes:
        # A fresh card of me: at ``endpoints``, or where the node listens now.
        node = self._node
        me = self.me
        if endpoints is None:
            port = node.endpoint.port if node.running else 0
            addrs = [[host, port] for host in node._hosts()] if port else []
        else:
            addrs = [[e.host, e.port] for e in endpoints]
        content = {
            "nick": me.nickname,
            "dname": me.display_name,
            "email": me.email,
            "name": node.endpoint_name,
            "addrs": addrs[:MAX_CARD_ADDRESSES],
        }
        return records.sign_record(node.identity, node._next_seq(), content, domain=records.CARD_DOMAIN)

    # -- the store -------------------------------------------------------------------------------
    def _contact(self, row: tuple[Any, ...]) -> Contact:
        # A row this manager wrote (every field was checked then): built without checking again,
        # so that listing thousands of contacts stays cheap.
        key, nickname, display_name, email, endpoints, allowed, subscribed, added, last_seen, card = row
        contact: Contact = object.__new__(Contact)
        contact._node = self._node
        contact.id = PeerId._verified(key)
        contact.nickname, contact.display_name, contact.email = nickname, display_name, email
        contact.endpoints = tuple(_stored_endpoint(h, p, n) for h, p, n in json.loads(endpoints))
        contact.subscribe_allowed = _PERMISSIONS[allowed]
        contact.is_subscribed = bool(subscribed)
        contact.added, contact.last_seen, contact.card = added, last_seen, card
        return contact

    def read_card(self, card: str | bytes | os.PathLike[str]) -> Contact:
        """Verify a card (text, bytes, or a file holding either) and make a contact of it, without
        adding it to the store.

        :raises InvalidRecord: when the card is malformed or tampered with.
        :raises OSError: when the file cannot be read.
        """
        if isinstance(card, os.PathLike):
            path = Path(card)
            if path.stat().st_size > MAX_CARD_FILE:
                raise InvalidRecord(f"{path} is {path.stat().st_size} bytes; a contact card is far smaller")
            data = path.read_bytes()
            card = data.decode("ascii", "replace") if data.lstrip().startswith(CARD_PREFIX.encode()) else data
        content = read_card(card)
        return self._from_card(content)

    def _from_card(self, content: CardContent) -> Contact:
        return Contact(
            self._node,
            content.id,
            nickname=content.nickname,
            display_name=content.display_name,
            email=content.email,
            endpoints=content.endpoints,
            card=content.envelope,
        )

    async def add(
        self,
        contact: Contact | PeerId,
        *,
        nickname: str = "",
        display_name: str = "",
        email: str = "",
        endpoints: Iterable[EndPoint] = (),
        subscribe_allowed: SubscribePermission = SubscribePermission.ALLOWED,
    ) -> Contact:
        """Add a contact: a :class:`Contact` (from :meth:`read_card`), or an id with its details.

        :raises ContactExists: when it is already a contact.
        :raises ValueError: when it is this node's own id.
        :raises TypeError, LimitExceeded: for bad details.
        :raises NotRunning: when the node is not running.

        Not cancellable once the write has started: the contact is then added.
        """
        if isinstance(contact, PeerId):
            contact = Contact(
                self._node,
                contact,
                nickname=nickname,
                display_name=display_name,
                email=email,
                endpoints=endpoints,
                subscribe_allowed=subscribe_allowed,
            )
        elif not isinstance(contact, Contact):
            raise TypeError(f"add takes a Contact or a PeerId, not {type(contact).__name__}")
        self._node._check_running()
        if contact.id == self._node.id:
            raise ValueError("this node's own id is not a contact: it is contacts.me")
        if contact.id in self._flags:
            raise ContactExists(f"{contact.fingerprint} is already a contact")
        contact = Contact(
            self._node, contact.id, **{**contact._fields(), "added": time.time(), "is_subscribed": False}
        )
        if not await self._store.write(_insert, _row(contact)):
            raise ContactExists(f"{contact.fingerprint} is already a contact")
        self._flags[contact.id] = (contact.subscribe_allowed, False)
        self._bus.publish(ContactChanged(change=ChangeType.ADDED, contact=contact))
        self._node._contact_permission_changed(contact.id)
        return contact

    async def import_card(self, card: str | bytes | os.PathLike[str]) -> Contact:
        """Verify a card (see :meth:`read_card`) and add the contact it describes.

        :raises InvalidRecord: when the card is malformed or tampered with (nothing is added).
        :raises ContactExists: when it is already a contact.
        """
        return await self.add(self.read_card(card))

    async def add_from(self, peer: Peer, *, timeout: float = 30.0) -> Contact:
        """Fetch ``peer``'s signed card over a secure channel, check it, and add it as a contact.

        :raises ContactExists: when it is already a contact.
        :raises PeerUnreachable: when the peer cannot be reached within ``timeout`` seconds.
        :raises ProtocolError: when it sends no card, a card that does not verify, or another's card.
        :raises NotAllowed: when it does not give its card (it is not signed in).
        """
        if not isinstance(peer, Peer):
            raise TypeError(f"add_from takes a Peer, not {type(peer).__name__}")
        self._node._check_running()
        if peer.id in self._flags:
            raise ContactExists(f"{peer.id.fingerprint} is already a contact")
        content = await self._node._fetch_card(peer, timeout)
        contact = self._from_card(content)
        if not contact.endpoints:
            contact = contact.replace(endpoints=peer.endpoints[:MAX_CONTACT_ENDPOINTS])
        return await self.add(contact)

    async def get(self, peer_id: PeerId) -> Contact:
        """The contact with ``peer_id`` (its id, or ``node.id`` for :attr:`me`).

        :raises UnknownContact: when there is none.
        """
        if not isinstance(peer_id, PeerId):
            raise TypeError(f"get takes a PeerId, not {type(peer_id).__name__}")
        self._node._check_running()
        if peer_id == self._node.id:
            return self.me
        row = await self._store.read(_select, bytes(peer_id))
        if row is None:
            raise UnknownContact(f"{peer_id.fingerprint} is not a contact")
        return self._contact(row)

    async def find(self, peer_id: PeerId) -> Contact | None:
        """The contact with ``peer_id``, or None when it is not a contact."""
        try:
            return await self.get(peer_id)
        except UnknownContact:
            return None

    async def find_stored(self, peer_id: PeerId) -> Contact | None:
        """The stored contact ``peer_id``, or None: :meth:`find` for the node's own tasks, which
        may run on while the node stops (it does not check that the node runs)."""
        row = await self._store.read(_select, bytes(peer_id))
        return None if row is None else self._contact(row)

    async def list(self) -> list[Contact]:
        """Every contact (not :attr:`me`), oldest first."""
        self._node._check_running()
        return [self._contact(row) for row in await self._store.read(_select_all)]

    async def update(self, contact: Contact) -> Contact:
        """Save a changed contact (made with :meth:`Contact.replace`) and return it as stored.

        Changing ``is_subscribed`` subscribes or unsubscribes (without waiting for the contact);
        changing ``subscribe_allowed`` applies at once to a subscription the contact has open.
        For :attr:`me`, only the nickname, display name and email can change.

        :raises UnknownContact: when it is not (or no longer) a contact.
        :raises ValueError: when a field of :attr:`me` other than names and email was changed.
        """
        if not isinstance(contact, Contact):
            raise TypeError(f"update takes a Contact, not {type(contact).__name__}")
        node = self._node
        node._check_running()
        if contact.id == node.id:
            me = self.me
            if (contact.subscribe_allowed, contact.is_subscribed) != (me.subscribe_allowed, me.is_subscribed):
                raise ValueError("only the nickname, display name and email of me can change")
            names = {"me.display_name": contact.display_name, "me.email": contact.email}
            await self._store.write(_save_settings, names)
            self._me_names.update(names)
            if contact.nickname != node.nickname:
                node.nickname = contact.nickname
            updated = self.me
            self._bus.publish(ContactChanged(change=ChangeType.UPDATED, contact=updated))
            return updated
        before = self._flags.get(contact.id)
        if before is None:
            raise UnknownContact(f"{contact.fingerprint} is not a contact")
        if not await self._store.write(_replace, _row(contact)):
            self._flags.pop(contact.id, None)
            raise UnknownContact(f"{contact.fingerprint} is not a contact")
        self._flags[contact.id] = (contact.subscribe_allowed, contact.is_subscribed)
        self._bus.publish(ContactChanged(change=ChangeType.UPDATED, contact=contact))
        node._contact_updated(contact.id)
        if before[1] != contact.is_subscribed:
            change = ChangeType.ADDED if contact.is_subscribed else ChangeType.DELETED
            self._bus.publish(SubscriptionListChanged(change=change, contact=contact))
            await node._watch_changed(contact.id, contact.is_subscribed)
        if before[0] != contact.subscribe_allowed:
            node._contact_permission_changed(contact.id)
        return contact

    async def delete(self, contact: Contact | PeerId) -> None:
        """Delete a contact (it stops being watched, and can no longer watch this node).

        :raises UnknownContact: when it is not a contact.
        :raises ValueError: for :attr:`me`.
        """
        peer_id = contact.id if isinstance(contact, Contact) else contact
        if not isinstance(peer_id, PeerId):
            raise TypeError(f"delete takes a Contact or a PeerId, not {type(contact).__name__}")
        node = self._node
        node._check_running()
        if peer_id == node.id:
            raise ValueError("me cannot be deleted")
        row = await self._store.read(_select, bytes(peer_id))
        if row is None or not await self._store.write(_delete, bytes(peer_id)):
            self._flags.pop(peer_id, None)
            raise UnknownContact(f"{peer_id.fingerprint} is not a contact")
        old = self._contact(row)
        flags = self._flags.pop(peer_id, None)
        if flags is not None and flags[1]:
            self._bus.publish(SubscriptionListChanged(change=ChangeType.DELETED, contact=old))
            await node._watch_changed(peer_id, False)
        self._bus.publish(ContactChanged(change=ChangeType.DELETED, contact=old))
        node._contact_permission_changed(peer_id)

    async def set_subscribed(self, peer_id: PeerId, subscribed: bool) -> Contact:
        """Store the contact's ``is_subscribed`` flag alone (for the node's watching part).

        :raises UnknownContact: when ``peer_id`` is not a contact.
        """
        row = await self._store.read(_select, bytes(peer_id))
        if row is None:
            raise UnknownContact(f"{peer_id.fingerprint} is not a contact")
        contact = self._contact(row)
        if contact.is_subscribed == subscribed:
            return contact
        contact = contact.replace(is_subscribed=subscribed)
        if not await self._store.write(_replace, _row(contact)):
            raise UnknownContact(f"{peer_id.fingerprint} is not a contact")
        self._flags[peer_id] = (contact.subscribe_allowed, subscribed)
        change = ChangeType.ADDED if subscribed else ChangeType.DELETED
        self._bus.publish(ContactChanged(change=ChangeType.UPDATED, contact=contact))
        self._bus.publish(SubscriptionListChanged(change=change, contact=contact))
        return contact

    async def _seen(self, peer_id: PeerId) -> None:
        # A channel to the contact opened: note when (at most once a minute per contact).
        now = time.time()
        if peer_id in self._flags and now - self._seen_at.get(peer_id, 0.0) >= SEEN_INTERVAL:
            self._seen_at[peer_id] = now
            await self._store.write(_seen, bytes(peer_id), now)

    # -- events -----------------------------------------------------------------------------------
    def watch(self) -> EventWatch[Event]:
        """Contact and subscription-list changes as an async iterator (use it with ``async with``)."""
        return self._bus.watch(lambda e: isinstance(e, (ContactChanged, SubscriptionListChanged)))

    def add_handler(self, handler: Any) -> Handle:
        """Run ``handler(event)`` (a coroutine function) for each :class:`~peerkit.ContactChanged`."""
        return self._bus.add_handler(lambda e: isinstance(e, ContactChanged), handler)

    def on_changed(self, handler: Any) -> Any:
        """Decorator form of :meth:`add_handler`."""
        self.add_handler(handler)
        return handler

    def add_subscription_list_handler(self, handler: Any) -> Handle:
        """Run ``handler(event)`` for each :class:`~peerkit.SubscriptionListChanged`."""
        return self._bus.add_handler(lambda e: isinstance(e, SubscriptionListChanged), handler)

    def on_subscription_list_changed(self, handler: Any) -> Any:
        """Decorator form of :meth:`add_subscription_list_handler`."""
        self.add_subscription_list_handler(handler)
        return handler
