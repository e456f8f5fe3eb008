"""The contact store: :class:`ContactManager` (``node.contacts``) keeps the node's contacts.

Contacts (:class:`~peerkit.Contact`, in :mod:`peerkit.contact`) live in the node's SQLite
database. The manager asks its node for what it needs through a :class:`ContactsHost`, and tells
registered :class:`ContactListener`s (the node's watching and publishing parts) when a contact's
subscription, permission or details change.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, Protocol

from peerkit.bus import Bus, EventWatch
from peerkit.contact import (
    CARD_PREFIX,
    MAX_CARD_ADDRESSES,
    CardContent,
    Contact,
    ContactOps,
    card_text,
    read_card,
    unchecked_contact,
)
from peerkit.errors import ContactExists, InvalidRecord, UnknownContact
from peerkit.events import ContactChanged, Event, SubscriptionListChanged
from peerkit.handles import Handle
from peerkit.identity import Identity, PeerId, check_peer_id
from peerkit.model import (
    MAX_CONTACT_ENDPOINTS,
    ChangeType,
    EndPoint,
    Presence,
    PresenceStatus,
    SubscribePermission,
    printable,
)
from peerkit.peers import Peer
from peerkit.proto import records
from peerkit.store import Store

__all__ = (
    "CARD_PREFIX",
    "CardContent",
    "Contact",
    "ContactListener",
    "ContactManager",
    "ContactsHost",
    "card_text",
    "read_card",
)

#: Seconds between two updates of a contact's ``last_seen``.
SEEN_INTERVAL: Final = 60.0
#: The settings key of the presence saved by ``peerkit presence set`` (JSON ``[status, text]``).
PRESENCE_SETTING: Final = "presence"
#: Bytes of a card file that are read, at most.
MAX_CARD_FILE: Final = 2 * records.MAX_ENVELOPE
#: The setting that holds the node's locator key (hex).
LOCATOR_SETTING: Final = "locator_key"


def _locator(text: str | None) -> bytes | None:
    # A locator key from its setting, or None when there is none (or it is damaged).
    try:
        key = bytes.fromhex(text or "")
    except ValueError:
        return None
    return key if len(key) == 32 else None


def saved_presence(settings: dict[str, str]) -> Presence | None:
    """The presence saved in the settings by ``peerkit presence set``, or None (none or unreadable)."""
    try:
        status, text = json.loads(settings[PRESENCE_SETTING])
        presence = Presence(PresenceStatus(status), text)
    except (KeyError, ValueError, TypeError):
        return None
    return None if presence.status is PresenceStatus.OFFLINE else presence


_COLUMNS: Final = (
    "id, nickname, display_name, email, endpoints, subscribe_allowed, is_subscribed, added, last_seen, card"
)


def _row(contact: Contact) -> tuple[Any, ...]:
    # (Relays are not stored: the record says which a contact holds a reservation on now.)
    endpoints = json.dumps([[e.host, e.port, e.name] for e in contact.endpoints if e.relay is None])
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


def _is_text(data: bytes) -> bool:
    # Whether ``data`` reads as lines of text (UTF-8, no control characters but line ends and
    # tabs): a card's envelope (CBOR) starts with a map's byte (0xa2), never text.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text.strip()) and all(c.isprintable() or c in "\t\r\n" for c in text)


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
    object.__setattr__(endpoint, "relay", None)
    object.__setattr__(endpoint, "how", "")
    return endpoint


def _flag_table(rows: list[tuple[bytes, int, int]]) -> dict[PeerId, tuple[SubscribePermission, bool]]:
    return {
        PeerId.from_verified(key): (SubscribePermission(allowed), bool(subscribed))
        for key, allowed, subscribed in rows
    }


class ContactsHost(ContactOps, Protocol):
    """What the :class:`ContactManager` asks of the node it belongs to."""

    @property
    def identity(self) -> Identity:
        """The node's identity (signs its card)."""
        ...

    nickname: str

    @property
    def endpoint_name(self) -> str:
        """The node's endpoint name."""
        ...

    def listening(self) -> EndPoint | None:
        """Where the node listens, or None when it is not running."""
        ...

    def check_running(self) -> None:
        """Raise :class:`~peerkit.NotRunning` unless the node is running."""
        ...

    def hosts(self) -> tuple[str, ...]:
        """The addresses the node is reachable at now."""
        ...

    def next_seq(self) -> int:
        """A sequence number above every earlier one, for a new card."""
        ...

    async def fetch_card(self, peer: Peer, timeout: float) -> CardContent:
        """``peer``'s verified card."""
        ...


class ContactListener(Protocol):
    """Told by the :class:`ContactManager` what changed (the node's parts register one)."""

    async def subscription_changed(self, peer_id: PeerId, subscribed: bool) -> None:
        """A contact's ``is_subscribed`` changed (or it was deleted while subscribed)."""
        ...

    def permission_changed(self, peer_id: PeerId) -> None:
        """A contact's ``subscribe_allowed`` changed, or it was added or deleted."""
        ...

    def contact_updated(self, peer_id: PeerId) -> None:
        """A contact's details (endpoints, names) changed."""
        ...

    def locator_changed(self) -> None:
        """The node's locator key was replaced (a contact was blocked or deleted)."""
        ...


class ContactManager:
    """The node's contacts (``node.contacts``, the original ``ContactManager``); see the module docstring.

    Reads and writes go to the SQLite database in the node's data dir (or a database in memory for
    a node made from an identity without a data dir). Every method that changes the store raises an
    event (:class:`~peerkit.ContactChanged`, :class:`~peerkit.SubscriptionListChanged`).

    Cancellation: a method that only reads stops waiting when cancelled (the read ends on the
    store's thread); one that writes cannot be cancelled once its write has begun: it waits for the
    commit, so that what its caller does next sees the change. :meth:`add_from` stops asking the
    peer for its card when cancelled before the card came.
    """

    def __init__(self, host: ContactsHost, store: Store, bus: Bus[Event]) -> None:
        self._node = host
        self._listeners: list[ContactListener] = []
        self._store = store
        self._bus = bus
        # id -> (subscribe_allowed, is_subscribed): what the node must know without waiting.
        self._flags: dict[PeerId, tuple[SubscribePermission, bool]] = {}
        self._me_names: dict[str, str] = {}
        self._seen_at: dict[PeerId, float] = {}

    def add_listener(self, listener: ContactListener) -> None:
        """Tell ``listener`` of every change of subscriptions, permissions and details."""
        self._listeners.append(listener)

    async def _subscription_changed(self, peer_id: PeerId, subscribed: bool) -> None:
        for listener in self._listeners:
            await listener.subscription_changed(peer_id, subscribed)

    def _permission_changed(self, peer_id: PeerId) -> None:
        for listener in self._listeners:
            listener.permission_changed(peer_id)

    def _contact_updated(self, peer_id: PeerId) -> None:
        for listener in self._listeners:
            listener.contact_updated(peer_id)

    async def load(self) -> None:
        """Read the contacts' flags and the settings from the store (the node starts); make the
        node's locator key the first time."""
        self._flags = _flag_table(await self._store.read(_flags))
        self._me_names = await self._store.read(_settings)
        if _locator(self._me_names.get(LOCATOR_SETTING)) is None:
            await self.save_setting(LOCATOR_SETTING, secrets.token_bytes(32).hex())

    async def locator_key_of(self, peer_id: PeerId | None) -> bytes | None:
        """The locator key of contact ``peer_id`` (from its card), or this node's own (None);
        None for a stranger, or a contact whose card had none."""
        if peer_id is None:
            return self.locator_key
        if peer_id not in self._flags:
            return None
        row = await self._store.read(_select, bytes(peer_id))
        return self._contact(row).locator_key if row is not None else None

    @property
    def locator_key(self) -> bytes | None:
        """This node's locator key: it seals the node's record in the DHT, and its contacts get it
        in its card (None before the store is loaded)."""
        return _locator(self._me_names.get(LOCATOR_SETTING))

    async def reload(self) -> dict[str, str]:
        """Take the changes another process (the CLI) made to the database as if made here, with
        their events; the settings as they are now."""
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
                await self._subscription_changed(peer_id, is_subscribed)
            if (old and old[0]) != (new and new[0]):
                self._permission_changed(peer_id)
        self._me_names = await self._store.read(_settings)
        return self._me_names

    def settings(self) -> dict[str, str]:
        """The settings saved in the store (as last read)."""
        return dict(self._me_names)

    def setting(self, key: str) -> str | None:
        """A setting saved in the store (as last read), or None."""
        return self._me_names.get(key)

    async def save_setting(self, key: str, value: str) -> None:
        """Save a setting in the store."""
        await self._store.write(_save_settings, {key: value})
        self._me_names[key] = value

    # -- what the node asks, without waiting ------------------------------------------------
    def has(self, peer_id: PeerId) -> bool:
        """Whether ``peer_id`` is a contact."""
        return check_peer_id(peer_id) in self._flags

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
        endpoint = node.listening()
        return Contact(
            node,
            node.identity.id,
            nickname=node.nickname,
            display_name=self._me_names.get("me.display_name", ""),
            email=self._me_names.get("me.email", ""),
            endpoints=(endpoint,) if endpoint is not None else (),
            subscribe_allowed=SubscribePermission.ALLOWED,
            is_subscribed=True,
            added=0.0,
            last_seen=time.time(),
        )

    def sign_card(self, endpoints: Iterable[EndPoint] | None = None) -> bytes:
        """A freshly signed card of this node: at ``endpoints``, or where it listens now."""
        node = self._node
        me = self.me
        if endpoints is None:
            endpoint = node.listening()
            port = endpoint.port if endpoint is not None else 0
            addrs = [[host, port] for host in node.hosts()] if port else []
        else:
            addrs = [[e.host, e.port] for e in endpoints]
        content: dict[str, Any] = {
            "nick": me.nickname,
            "dname": me.display_name,
            "email": me.email,
            "name": node.endpoint_name,
            "addrs": addrs[:MAX_CARD_ADDRESSES],
        }
        if self.locator_key is not None:
            content["loc"] = self.locator_key
        return records.sign_record(node.identity, node.next_seq(), content, domain=records.CARD_DOMAIN)

    # -- the store -------------------------------------------------------------------------------
    def _contact(self, row: tuple[Any, ...]) -> Contact:
        # A row this manager wrote (every field was checked then): built without checking again,
        # so that listing thousands of contacts stays cheap.
        key, nickname, display_name, email, endpoints, allowed, subscribed, added, last_seen, card = row
        return unchecked_contact(
            self._node,
            PeerId.from_verified(key),
            nickname,
            display_name,
            email,
            tuple(_stored_endpoint(h, p, n) for h, p, n in json.loads(endpoints)),
            _PERMISSIONS[allowed],
            bool(subscribed),
            added,
            last_seen,
            card,
        )

    def read_card(self, card: str | bytes | os.PathLike[str]) -> Contact:
        """Verify a card (text, bytes, or a file holding either) and make a contact of it, without
        adding it to the store.

        :raises InvalidRecord: when the card is malformed or tampered with.
        :raises OSError: when the file cannot be read.
        """
        return self._from_card(self._verify_card(card))

    def _verify_card(self, card: str | bytes | os.PathLike[str]) -> CardContent:
        if isinstance(card, os.PathLike):
            path = Path(card)
            if path.stat().st_size > MAX_CARD_FILE:
                raise InvalidRecord(f"{path} is {path.stat().st_size} bytes; a contact card is far smaller")
            data = path.read_bytes()
            if data.lstrip().startswith(CARD_PREFIX.encode()):
                card = data.decode("ascii", "replace")
            elif _is_text(data):  # (a file of text, but no card's: not tried as a card's bytes)
                raise InvalidRecord(
                    f"{printable(str(path))} holds no contact card: a card's text starts with {CARD_PREFIX!r}"
                )
            else:
                card = data
        return read_card(card)

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
        :raises TypeError: when a detail has the wrong type.
        :raises LimitExceeded: when a detail is over its limit.
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
        self._node.check_running()
        if contact.id == self._node.identity.id:
            raise ValueError("this node's own id is not a contact: it is contacts.me")
        if contact.id in self._flags:
            raise ContactExists(f"{contact.fingerprint} is already a contact")
        contact = Contact(
            self._node, contact.id, **{**contact.fields(), "added": time.time(), "is_subscribed": False}
        )
        if not await self._store.write(_insert, _row(contact)):
            raise ContactExists(f"{contact.fingerprint} is already a contact")
        self._flags[contact.id] = (contact.subscribe_allowed, False)
        self._bus.publish(ContactChanged(change=ChangeType.ADDED, contact=contact))
        self._permission_changed(contact.id)
        return contact

    async def import_card(self, card: str | bytes | os.PathLike[str], *, update: bool = False) -> Contact:
        """Verify a card (see :meth:`read_card`) and add the contact it describes.

        :param update: when its peer is a contact already, take the card's names, addresses and
            locator key instead (when it is newer than the card kept; an older or the same card
            changes nothing). The contact's permission and subscription stay as they are.
        :raises InvalidRecord: when the card is malformed or tampered with (nothing is added).
        :raises ContactExists: when it is already a contact (without ``update``).
        """
        content = self._verify_card(card)  # (verified once: its seq is read from it here)
        fresh = self._from_card(content)
        if not update or not self.has(fresh.id):
            return await self.add(fresh)
        kept = await self.get(fresh.id)
        if kept.card is not None and read_card(kept.card).seq >= content.seq:
            return kept
        renewed = kept.replace(
            nickname=fresh.nickname,
            display_name=fresh.display_name,
            email=fresh.email,
            endpoints=fresh.endpoints or kept.endpoints,
        )
        renewed.card = fresh.card
        return await self.update(renewed)

    async def add_from(self, peer: Peer, *, timeout: float = 30.0) -> Contact:
        """Fetch ``peer``'s signed card over a secure channel, check it, and add it as a contact.

        :raises ContactExists: when it is already a contact.
        :raises PeerUnreachable: when the peer cannot be reached within ``timeout`` seconds.
        :raises ProtocolError: when it sends no card, a card that does not verify, or another's card.
        :raises NotAllowed: when it does not give its card (it is not signed in).
        """
        if not isinstance(peer, Peer):
            raise TypeError(f"add_from takes a Peer, not {type(peer).__name__}")
        self._node.check_running()
        if peer.id in self._flags:
            raise ContactExists(f"{peer.id.fingerprint} is already a contact")
        content = await self._node.fetch_card(peer, timeout)
        contact = self._from_card(content)
        if not contact.endpoints:
            direct = [e for e in peer.endpoints if e.relay is None]
            contact = contact.replace(endpoints=direct[:MAX_CONTACT_ENDPOINTS])
        return await self.add(contact)

    async def get(self, peer_id: PeerId) -> Contact:
        """The contact with ``peer_id`` (its id, or ``node.id`` for :attr:`me`).

        :raises UnknownContact: when there is none.
        """
        if not isinstance(peer_id, PeerId):
            raise TypeError(f"get takes a PeerId, not {type(peer_id).__name__}")
        self._node.check_running()
        if peer_id == self._node.identity.id:
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

    async def last_addresses(self) -> list[tuple[str, int]]:
        """Where the contacts were last known to be (their stored endpoints), the most recently
        seen contact first; blocked contacts are left out. (Read while the node starts.)"""
        every = [self._contact(row) for row in await self._store.read(_select_all)]
        contacts = [c for c in every if c.subscribe_allowed is not SubscribePermission.BLOCKED]
        contacts.sort(key=lambda c: c.last_seen or 0.0, reverse=True)
        return list(dict.fromkeys((e.host, e.port) for c in contacts for e in c.endpoints))

    async def list(self) -> list[Contact]:
        """Every contact (not :attr:`me`), oldest first."""
        self._node.check_running()
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
        node.check_running()
        if contact.id == node.identity.id:
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
        self._contact_updated(contact.id)
        if before[1] != contact.is_subscribed:
            change = ChangeType.ADDED if contact.is_subscribed else ChangeType.DELETED
            self._bus.publish(SubscriptionListChanged(change=change, contact=contact))
            await self._subscription_changed(contact.id, contact.is_subscribed)
        if before[0] != contact.subscribe_allowed:
            self._permission_changed(contact.id)
            if contact.subscribe_allowed is SubscribePermission.BLOCKED:
                await self._rotate_locator()
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
        node.check_running()
        if peer_id == node.identity.id:
            raise ValueError("me cannot be deleted")
        row = await self._store.read(_select, bytes(peer_id))
        if row is None or not await self._store.write(_delete, bytes(peer_id)):
            self._flags.pop(peer_id, None)
            raise UnknownContact(f"{peer_id.fingerprint} is not a contact")
        old = self._contact(row)
        flags = self._flags.pop(peer_id, None)
        if flags is not None and flags[1]:
            self._bus.publish(SubscriptionListChanged(change=ChangeType.DELETED, contact=old))
            await self._subscription_changed(peer_id, False)
        self._bus.publish(ContactChanged(change=ChangeType.DELETED, contact=old))
        self._permission_changed(peer_id)
        await self._rotate_locator()

    async def _rotate_locator(self) -> None:
        # A blocked or deleted contact holds the old locator key: a new one seals the record from
        # now on, and the contacts still allowed get it (the listeners spread it).
        await self.save_setting(LOCATOR_SETTING, secrets.token_bytes(32).hex())
        for listener in self._listeners:
            listener.locator_changed()

    async def take_card(self, content: CardContent) -> bool:
        """Keep a newer card a contact sent of itself (its locator key may have changed); its
        names and endpoints stay as they are. Returns whether it was kept."""
        row = await self._store.read(_select, bytes(content.id))
        if row is None:
            return False
        contact = self._contact(row)
        if contact.card is not None and read_card(contact.card).seq >= content.seq:
            return False
        contact.card = content.envelope
        return bool(await self._store.write(_replace, _row(contact)))

    async def set_subscribed(self, peer_id: PeerId, subscribed: bool) -> Contact:
        """Store the contact's ``is_subscribed`` flag alone (for the node's watching part).

        :raises UnknownContact: when ``peer_id`` is not a contact.
        """
        row = await self._store.read(_select, bytes(check_peer_id(peer_id)))
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

    async def seen(self, peer_id: PeerId) -> None:
        """A channel to ``peer_id`` opened: note when, if it is a contact (at most once a minute)."""
        now = time.time()
        if peer_id in self._flags and now - self._seen_at.get(peer_id, 0.0) >= SEEN_INTERVAL:
            self._seen_at[peer_id] = now
            await self._store.write(_seen, bytes(peer_id), now)

    # -- events -----------------------------------------------------------------------------------
    def watch(self) -> EventWatch[Event]:
        """Contact and subscription-list changes as an async iterator (use it with ``async with``)."""
        return self._bus.watch(lambda e: isinstance(e, (ContactChanged, SubscriptionListChanged)))

    def add_handler(self, handler: Any) -> Handle:
        """Run ``handler(event)`` for each :class:`~peerkit.ContactChanged`: a coroutine function in a
        task of its own, a plain function at once (see :meth:`Node.add_presence_handler`)."""
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
