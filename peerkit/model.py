"""The objects of the collaboration model and their limits.

Numeric values of the enums are those of the original .NET API, so they can be compared and stored.
Every constructor checks its limits and raises :class:`~peerkit.errors.LimitExceeded` (a
``ValueError``) naming the limit, or ``TypeError`` for a value of the wrong type.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import math
import reprlib
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Final

from peerkit.errors import LimitExceeded
from peerkit.identity import PeerId

__all__ = (
    "MAX_APPLICATIONS",
    "MAX_CONTACT_ENDPOINTS",
    "MAX_DATA",
    "MAX_HOW",
    "MAX_INVITATION_WAIT",
    "MAX_OBJECTS",
    "MAX_TEXT",
    "REQUEST_TIMEOUT",
    "Application",
    "ChangeType",
    "EndPoint",
    "InvitationResponse",
    "PeerObject",
    "Presence",
    "PresenceStatus",
    "Scope",
    "SubscribePermission",
    "check_encodable",
    "check_max_bytes",
    "check_scope",
    "check_seconds",
    "host_and_port",
    "printable",
    "quoted",
    "seconds_text",
    "shows_as_itself",
)

#: Presence text, nicknames, display names, endpoint names, invitation messages: characters.
MAX_TEXT: Final = 255
#: Invitation, application and object data: bytes.
MAX_DATA: Final = 16384
#: Registered applications per node.
MAX_APPLICATIONS: Final = 64
#: Published objects per node.
MAX_OBJECTS: Final = 128
#: Default and maximum invitation wait, in seconds.
MAX_INVITATION_WAIT: Final = 300
#: Deadline of subscribe, refresh and contact update, in seconds.
REQUEST_TIMEOUT: Final = 30
#: Endpoints of one contact.
MAX_CONTACT_ENDPOINTS: Final = 50
#: Characters of an endpoint's ``how`` mark.
MAX_HOW: Final = 16


def check_text(value: object, what: str, limit: int = MAX_TEXT) -> str:
    """Return ``value`` if it is a ``str`` of at most ``limit`` characters that UTF-8 can carry.

    :raises TypeError: when it is not a string.
    :raises LimitExceeded: when it is too long; the message names ``what`` and the limit.
    :raises ValueError: when it holds a lone surrogate (see :func:`check_encodable`).
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if len(value) > limit:
        raise LimitExceeded(f"{what} is {len(value)} characters; the limit is {limit}")
    return check_encodable(value, what)


def check_encodable(value: str, what: str) -> str:
    """Return ``value`` if UTF-8 can carry it, as the protocol and the store write text.

    :raises ValueError: when it holds a lone surrogate, which no text holds: Python reads a byte
        that is not UTF-8 in a command-line argument or a file name so (``'\\udcff'`` for 0xFF).
    """
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} holds {value[exc.start]!r}, which is no character (a byte that was not "
                "UTF-8, read as text?)"
            ) from None
    return value


#: Characters that reorder the text around them when shown (Unicode's bidirectional controls): a
#: name holding one can look like another.
_BIDI_CONTROLS: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Characters that show as nothing (a soft hyphen, zero-width spaces, a word joiner, the Hangul
#: fillers): "ali\u200bce" would pass for "alice", and a name of fillers for no name. The joiners
#: that emoji and some scripts need (U+200C, U+200D) are not among them.
_INVISIBLE: Final = frozenset("\u00ad\u115f\u1160\u180e\u200b\u2060\u3164\ufeff\uffa0")
_ESCAPED: Final = _BIDI_CONTROLS | _INVISIBLE
#: Unicode categories shown escaped: control characters (escape sequences, carriage returns,
#: bells...), line and paragraph separators, and lone surrogates (which no terminal can print).
_HIDDEN_CATEGORIES: Final = frozenset(("Cc", "Zl", "Zp", "Cs"))
_NAMED_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, limit: int | None = None, *, newlines: bool = False) -> str:
    """``text`` as it can be shown on a terminal or written to a log: every control character
    (an escape sequence, a carriage return, a bell...), bidirectional control, line separator,
    character that shows as nothing (a zero-width space) and lone surrogate is written as its
    Python escape (``\\x1b``, ``\\u202e``, ``\\u200b``), so that the text shows as itself and cannot
    move the cursor, recolour the screen or pass for other text. Text from peers (nicknames,
    messages, presence text) may hold any of these: show it through this.

    With ``newlines`` a line feed is kept (for text that is meant to span lines); with ``limit``
    text longer than ``limit`` characters is cut there and ends with "…".

    :raises TypeError: when ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise TypeError(f"printable takes a str, not {type(text).__name__}")
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    if _plain(text):  # (most text: nothing to look at character by character)
        return text
    return "".join(_escape(char) if _hidden(char, newlines) else char for char in text)


def shows_as_itself(text: str) -> bool:
    """Whether ``text`` holds none of what :func:`printable` escapes (line feeds included)."""
    return _plain(text) or not any(_hidden(char, False) for char in text)


def _plain(text: str) -> bool:
    # Whether ``text`` has nothing to escape, told at C speed (the common case): no character
    # Python counts unprintable (controls, separators, surrogates...) and none that shows as nothing.
    return text.isprintable() and _INVISIBLE.isdisjoint(text)


def _hidden(char: str, newlines: bool) -> bool:
    if char == "\n":
        return not newlines
    return char in _ESCAPED or unicodedata.category(char) in _HIDDEN_CATEGORIES


def _escape(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _quoting() -> reprlib.Repr:
    shortened = reprlib.Repr()
    shortened.maxstring = shortened.maxother = shortened.maxlong = 60
    shortened.maxlist = shortened.maxtuple = shortened.maxdict = shortened.maxset = 6
    shortened.maxlevel = 3
    return shortened


_QUOTING: Final = _quoting()


def quoted(value: object) -> str:
    """A value a peer sent, as an error message or a log line quotes it: its ``repr``, cut short
    (about 60 characters of a string, 6 items of a list, 3 levels deep, 200 characters in all),
    control characters escaped. A peer's mistake is named without echoing all of it."""
    return printable(_QUOTING.repr(value), 200)


def host_and_port(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """Read ``HOST:PORT`` or ``[IPv6]:PORT`` as a (host, port) pair, the port 0 to 65535 and an
    IPv6 host without its brackets. With a ``default_host``, ``:PORT`` stands for that host.

    An IPv6 address must be in brackets: ``fe80::1:7000`` could be read two ways.

    :raises TypeError: when ``text`` is not a string.
    :raises ValueError: when it is not in that form, naming what is wrong.
    """
    if not isinstance(text, str):
        raise TypeError(f"an address must be text (HOST:PORT), not {type(text).__name__}")
    shown = quoted(text)
    host, sep, port = text.strip().rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{shown} is not HOST:PORT (for IPv6: [ADDRESS]:PORT)")
    if len(port) > 5 or int(port) > 65535:
        number = f"port {int(port)}" if len(port) <= 5 else "the port"
        raise ValueError(f"{shown}: {number} is outside 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or ":" not in host:
            raise ValueError(f"{shown}: brackets are for an IPv6 address, as in [::1]:{port}")
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"{shown} is not HOST:PORT: an IPv6 address goes in brackets, [ADDRESS]:PORT")
    if not host:
        if default_host is None:
            raise ValueError(f"{shown} names no host: HOST:PORT")
        host = default_host
    return host, int(port)


def check_data(value: object, what: str, limit: int = MAX_DATA, *, allow_empty: bool = True) -> bytes:
    """Return ``value`` as ``bytes`` if it is bytes-like and at most ``limit`` bytes long.

    :raises TypeError: when it is not bytes-like.
    :raises LimitExceeded: when it is too long (or empty where that is not allowed).
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) > limit:
        raise LimitExceeded(f"{what} is {len(value)} bytes; the limit is {limit}")
    if not value and not allow_empty:
        raise LimitExceeded(f"{what} is empty; it must hold 1 to {limit} bytes")
    return value


def _check_uuid(value: object, what: str) -> uuid.UUID:
    if not isinstance(value, uuid.UUID):
        raise TypeError(f"{what} must be a uuid.UUID, not {type(value).__name__}")
    return value


def check_scope(value: object, what: str) -> Scope:
    """``value`` as a :class:`Scope` (the one scope check of peerkit).

    :raises TypeError: when it is not an integer (a bool is not a scope).
    :raises ValueError: when it is outside NONE..ALL.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a Scope, not {type(value).__name__}")
    if not 0 <= value <= 3:
        raise ValueError(f"{what} {value} is not a Scope (NONE=0, NEAR_ME=1, INTERNET=2, ALL=3)")
    return Scope(value)


def seconds_text(value: float) -> str:
    """A duration as people read it in a message: ``10 s``, ``0.5 s``, ``9.99 s``, ``300 s`` (three
    significant digits; never ``9.9994050160003 s``)."""
    return f"{value:.0f} s" if value >= 100 else f"{value:.3g} s"


def check_seconds(value: object, what: str, limit: float | None = None) -> float:
    """``value`` as a positive, finite number of seconds (the one timeout check of peerkit).

    :raises TypeError: when it is not a number (a bool is not one).
    :raises ValueError: when it is not positive and finite.
    :raises LimitExceeded: when it is over ``limit``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a positive number of seconds, not {value}")
    if limit is not None and value > limit:
        raise LimitExceeded(f"{what} is {value} s; the limit is {limit}")
    return float(value)


def check_max_bytes(value: object) -> int:
    """``value`` as the ``max_bytes`` of a stream's ``receive``: a whole number of at least 1.

    :raises TypeError: when it is not an integer (a bool is not one).
    :raises ValueError: when it is less than 1.
    """
    # (An int, the common case, takes one test per receive.)
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"max_bytes must be an integer, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"max_bytes must be at least 1, not {value}")
    return value


class Scope(enum.IntFlag):
    """Who can see something, or where a node is signed in (``PeerScope``)."""

    NONE = 0
    NEAR_ME = 1
    INTERNET = 2
    ALL = 3


class PresenceStatus(enum.IntEnum):
    """A person's availability (``PeerPresenceStatus``)."""

    OFFLINE = 0
    OUT_TO_LUNCH = 1
    AWAY = 2
    BE_RIGHT_BACK = 3
    IDLE = 4
    BUSY = 5
    ON_THE_PHONE = 6
    ONLINE = 7


class InvitationResponse(enum.IntEnum):
    """The answer to an invitation (``PeerInvitationResponseType``)."""

    DECLINED = 0
    ACCEPTED = 1
    EXPIRED = 2


class ChangeType(enum.IntEnum):
    """What happened to an item in a changed-event (``PeerChangeType``)."""

    ADDED = 0
    DELETED = 1
    UPDATED = 2


class SubscribePermission(enum.IntEnum):
    """Whether a contact may watch me (``SubscriptionType``)."""

    BLOCKED = 0
    ALLOWED = 1


@dataclass(frozen=True, slots=True)
class Presence:
    """A presence status with an optional free text."""

    #: The availability.
    status: PresenceStatus = PresenceStatus.ONLINE
    #: Free text shown beside the status, at most 255 characters.
    text: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.status, PresenceStatus):
            try:
                object.__setattr__(self, "status", PresenceStatus(self.status))
            except (ValueError, TypeError):
                raise ValueError(f"{self.status!r} is not a presence status (0 to 7)") from None
        check_text(self.text, "presence text")


@dataclass(frozen=True, slots=True)
class EndPoint:
    """An address and port where a node listens, with a display name; or, with ``relay``, the
    address and port of a relay through which the node can be reached.

    Two endpoints are equal when their host, port and relay are; the name is only a label.
    """

    #: An IPv4 or IPv6 address, or a host name.
    host: str
    #: The TCP port, 1 to 65535.
    port: int
    #: A display label for people (the endpoint name), at most 255 characters.
    name: str = field(default="", compare=False)
    #: The relay's peer id when ``host:port`` is a relay the node keeps a reservation on (the
    #: node is reached through it); None for the node's own address.
    relay: PeerId | None = None
    #: How the node learned this address of its own, as its signed record says: ``"mapped"`` (a
    #: port its home router maps to it, over NAT-PMP, PCP or UPnP) or ``"interface"`` (an
    #: address of one of its network interfaces); ``""`` when unknown. Only a label, like ``name``.
    how: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise TypeError(f"endpoint host must be str, not {type(self.host).__name__}")
        host = self.host.strip("[]")
        if not host or len(host) > 253 or any(c.isspace() for c in host):
            raise ValueError(f"endpoint host {self.host!r} is not an address or host name")
        with contextlib.suppress(ValueError):
            host = str(ipaddress.ip_address(host))
        object.__setattr__(self, "host", host)
        if not isinstance(self.port, int) or isinstance(self.port, bool):
            raise TypeError(f"endpoint port must be int, not {type(self.port).__name__}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"endpoint port {self.port} is outside 1..65535")
        check_text(self.name, "endpoint name")
        if not isinstance(self.how, str) or len(self.how) > MAX_HOW:
            raise ValueError(f"endpoint how must be text of at most {MAX_HOW} characters")
        if self.relay is not None and not isinstance(self.relay, PeerId):
            raise TypeError(f"endpoint relay must be a PeerId or None, not {type(self.relay).__name__}")

    @classmethod
    def parse(cls, text: str) -> EndPoint:
        """The endpoint ``HOST:PORT`` or ``[IPv6]:PORT`` names (what ``str()`` of one gives,
        without a relay): ``EndPoint.parse("192.168.1.20:7000")``.

        :raises TypeError: when ``text`` is not a string.
        :raises ValueError: when it is not in that form or the port is 0, naming what is wrong.
        """
        return cls(*host_and_port(text))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.relay is None else f"relay {host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Application:
    """An application that can be invited to and published (``PeerApplication``).

    ``path`` and ``arguments`` are local: they are never sent to other peers.
    """

    #: The application's identity, shared by every peer that runs it.
    id: uuid.UUID
    #: A description for people, at most 255 characters.
    description: str = ""
    #: Application data published with it, at most 16,384 bytes.
    data: bytes = b""
    #: Who can see that this node has the application.
    scope: Scope = Scope.ALL
    #: Local only: a program to launch for an invitation.
    path: str | None = None
    #: Local only: its command-line arguments.
    arguments: str | None = None

    def __post_init__(self) -> None:
        _check_uuid(self.id, "application id")
        check_text(self.description, "application description")
        object.__setattr__(self, "data", check_data(self.data, "application data"))
        object.__setattr__(self, "scope", check_scope(self.scope, "application scope"))
        for name in ("path", "arguments"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"application {name} must be str or None, not {type(value).__name__}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerObject:
    """A piece of data a node publishes, such as a picture or a document state (``PeerObject``)."""

    #: The object's identity; a node publishes at most one object per id.
    id: uuid.UUID
    #: The object's content, 1 to 16,384 bytes.
    data: bytes
    #: Who can see the object.
    scope: Scope = Scope.ALL

    def __post_init__(self) -> None:
        _check_uuid(self.id, "object id")
        object.__setattr__(self, "data", check_data(self.data, "object data", allow_empty=False))
        object.__setattr__(self, "scope", check_scope(self.scope, "object scope"))
