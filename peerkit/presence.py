"""What a node publishes and what its watchers hold, without any I/O.

The publisher keeps one :class:`Outbox` per subscriber: what that subscriber has been told. After a
change it computes the difference between what the subscriber may see now and what it was told, and
sends just that (so a change of scope, of permission, or a sign-out reaches each subscriber as the
right ADDED / UPDATED / DELETED). The watcher keeps one :class:`Watched` per contact: the state it
was told, updated from ``subscribe_reply`` and ``notify`` messages that it checks like any untrusted
input.

Wire forms (docs/protocol.md section 7): presence ``[status, text]``; application
``{"id": bytes(16), "desc": text, "data": bytes}``; object ``{"id": bytes(16), "data": bytes}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from typing import Any, Final

from peerkit.errors import ProtocolError
from peerkit.model import (
    MAX_APPLICATIONS,
    MAX_OBJECTS,
    Application,
    ChangeType,
    PeerObject,
    Presence,
    PresenceStatus,
    Scope,
)

__all__ = ("KINDS", "OFFLINE", "Outbox", "Watched")

OFFLINE: Final = Presence(PresenceStatus.OFFLINE)
#: The kinds of thing a notification is about.
KINDS: Final = ("presence", "name", "app", "object")


def presence_wire(presence: Presence) -> list[Any]:
    return [int(presence.status), presence.text]


def app_wire(app: Application) -> dict[str, Any]:
    return {"id": app.id.bytes, "desc": app.description, "data": app.data}


def object_wire(obj: PeerObject) -> dict[str, Any]:
    return {"id": obj.id.bytes, "data": obj.data}


_STATUSES: Final = tuple(sorted(PresenceStatus))  # by value, 0..7 (a lookup, not an enum call)


def read_presence(value: object) -> Presence:
    """A presence from its wire form. :raises ProtocolError: when malformed."""
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], str):
        raise ProtocolError("a presence is [status, text]")
    status = value[0]
    if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 7:
        raise ProtocolError(f"presence status {status!r} is not 0..7")
    try:
        return Presence(_STATUSES[status], value[1])
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"bad presence: {exc}") from None


def _read_id(value: object, what: str) -> uuid.UUID:
    if not isinstance(value, dict) or not isinstance(value.get("id"), bytes) or len(value["id"]) != 16:
        raise ProtocolError(f'an {what} is a map with a 16-byte "id"')
    return uuid.UUID(bytes=value["id"])


def read_app(value: object) -> Application:
    """An application from its wire form. :raises ProtocolError: when malformed or over a limit."""
    app_id = _read_id(value, "application")
    assert isinstance(value, dict)
    try:
        return Application(id=app_id, description=value.get("desc", ""), data=value.get("data", b""))
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"bad application {app_id}: {exc}") from None


def read_object(value: object) -> PeerObject:
    """An object from its wire form. :raises ProtocolError: when malformed or over a limit."""
    object_id = _read_id(value, "object")
    assert isinstance(value, dict)
    try:
        return PeerObject(id=object_id, data=value.get("data"))  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"bad object {object_id}: {exc}") from None


class Outbox:
    """What one subscriber has been told (publisher side)."""

    __slots__ = ("apps", "name", "objects", "presence")

    def __init__(self) -> None:
        self.presence: list[Any] | None = None
        self.name: str | None = None
        self.apps: dict[bytes, dict[str, Any]] = {}
        self.objects: dict[bytes, dict[str, Any]] = {}

    def diff(
        self,
        visible: Scope,
        presence: Presence,
        name: str,
        apps: Iterable[Application],
        objects: Iterable[PeerObject],
        kinds: Collection[str] = KINDS,
    ) -> list[dict[str, Any]]:
        """The ``notify`` messages that bring the subscriber to the current state, as far as
        ``visible`` (the scopes it may see) allows, for the ``kinds`` given (in the order of
        :data:`KINDS`, whatever the order of ``kinds``); records them as sent."""
        messages: list[dict[str, Any]] = []
        for kind in KINDS:
            if kind not in kinds:
                continue
            if kind == "presence":
                wire = presence_wire(presence if visible else OFFLINE)
                if wire != self.presence:
                    self.presence = wire
                    messages.append({"t": "notify", "k": "presence", "v": wire})
            elif kind == "name":
                text = name if visible else ""
                if text != self.name:
                    self.name = text
                    messages.append({"t": "notify", "k": "name", "v": text})
            elif kind == "app":
                want = {a.id.bytes: app_wire(a) for a in apps if a.scope & visible}
                messages += _diff_items("app", self.apps, want)
            elif kind == "object":
                want = {o.id.bytes: object_wire(o) for o in objects if o.scope & visible}
                messages += _diff_items("object", self.objects, want)
        return messages

    def state(self) -> dict[str, Any]:
        """Everything sent so far, as the ``state`` of a ``subscribe_reply``."""
        return {
            "presence": self.presence or presence_wire(OFFLINE),
            "name": self.name or "",
            "apps": list(self.apps.values()),
            "objects": list(self.objects.values()),
        }


def _diff_items(
    kind: str, sent: dict[bytes, dict[str, Any]], want: dict[bytes, dict[str, Any]]
) -> list[dict[str, Any]]:
    messages = []
    for key, wire in want.items():
        before = sent.get(key)
        if before != wire:
            change = ChangeType.ADDED if before is None else ChangeType.UPDATED
            messages.append({"t": "notify", "k": kind, "c": int(change), "v": wire})
            sent[key] = wire
    for key in [k for k in sent if k not in want]:
        del sent[key]
        messages.append({"t": "notify", "k": kind, "c": int(ChangeType.DELETED), "v": {"id": key}})
    return messages


# A change the watcher saw: (kind, change, value) where value is a Presence, a name, an
# Application or a PeerObject.
Change = tuple[str, ChangeType, Any]


class Watched:
    """What a watcher knows of one contact (subscriber side)."""

    __slots__ = ("apps", "name", "objects", "presence")

    def __init__(self) -> None:
        self.presence: Presence | None = None
        self.name = ""
        self.apps: dict[uuid.UUID, Application] = {}
        self.objects: dict[uuid.UUID, PeerObject] = {}

    def copy(self) -> Watched:
        """A copy to apply changes to, kept only when all of them are valid."""
        other = Watched()
        other.presence, other.name = self.presence, self.name
        other.apps, other.objects = dict(self.apps), dict(self.objects)
        return other

    def apply_state(self, state: object) -> list[Change]:
        """Take a whole state (``subscribe_reply``), returning what changed.

        :raises ProtocolError: when it is malformed; nothing is changed then.
        """
        if not isinstance(state, dict):
            raise ProtocolError("a subscription state is a map")
        presence = read_presence(state.get("presence", presence_wire(OFFLINE)))
        name = state.get("name", "")
        if not isinstance(name, str) or len(name) > 255:
            raise ProtocolError("an endpoint name is text of at most 255 characters")
        apps, objects = state.get("apps", []), state.get("objects", [])
        if not isinstance(apps, list) or len(apps) > MAX_APPLICATIONS:
            raise ProtocolError(f'"apps" is a list of at most {MAX_APPLICATIONS}')
        if not isinstance(objects, list) or len(objects) > MAX_OBJECTS:
            raise ProtocolError(f'"objects" is a list of at most {MAX_OBJECTS}')
        new_apps = {a.id: a for a in map(read_app, apps)}
        new_objects = {o.id: o for o in map(read_object, objects)}
        changes: list[Change] = []
        if presence != self.presence:
            self.presence = presence
            changes.append(("presence", ChangeType.UPDATED, presence))
        if name != self.name:
            self.name = name
            changes.append(("name", ChangeType.UPDATED, name))
        changes += _replace_items("app", self.apps, new_apps)
        changes += _replace_items("object", self.objects, new_objects)
        return changes

    def went_offline(self) -> list[Change]:
        """The connection is lost for good: presence becomes Offline (what it published is kept)."""
        if self.presence == OFFLINE:
            return []
        self.presence = OFFLINE
        return [("presence", ChangeType.UPDATED, OFFLINE)]

    def apply_notify(self, message: dict[str, Any]) -> list[Change]:
        """Take one ``notify`` message, returning what changed.

        :raises ProtocolError: when it is malformed or breaks a limit; nothing is changed then.
        """
        kind, value = message.get("k"), message.get("v")
        if kind == "presence":
            presence = read_presence(value)
            if presence == self.presence:
                return []
            self.presence = presence
            return [("presence", ChangeType.UPDATED, presence)]
        if kind == "name":
            if not isinstance(value, str) or len(value) > 255:
                raise ProtocolError("an endpoint name is text of at most 255 characters")
            if value == self.name:
                return []
            self.name = value
            return [("name", ChangeType.UPDATED, value)]
        if kind not in ("app", "object"):
            raise ProtocolError(f"unknown notify kind {kind!r}")
        change = message.get("c")
        if change not in (0, 1, 2) or isinstance(change, bool):
            raise ProtocolError(f'notify "c" must be 0, 1 or 2, not {change!r}')
        table: dict[uuid.UUID, Any] = self.apps if kind == "app" else self.objects
        if change == ChangeType.DELETED:
            item_id = _read_id(value, kind)
            old = table.pop(item_id, None)
            return [] if old is None else [(kind, ChangeType.DELETED, old)]
        item: Application | PeerObject = read_app(value) if kind == "app" else read_object(value)
        limit = MAX_APPLICATIONS if kind == "app" else MAX_OBJECTS
        if item.id not in table and len(table) >= limit:
            raise ProtocolError(f"the peer publishes more than {limit} of kind {kind}")
        old = table.get(item.id)
        table[item.id] = item
        if old == item:
            return []
        return [(kind, ChangeType.ADDED if old is None else ChangeType.UPDATED, item)]


def _replace_items(kind: str, table: dict[uuid.UUID, Any], new: dict[uuid.UUID, Any]) -> list[Change]:
    changes: list[Change] = []
    for key, item in new.items():
        old = table.get(key)
        if old is None:
            changes.append((kind, ChangeType.ADDED, item))
        elif old != item:
            changes.append((kind, ChangeType.UPDATED, item))
    changes += [(kind, ChangeType.DELETED, old) for key, old in table.items() if key not in new]
    table.clear()
    table.update(new)
    return changes
