"""The requests of the control protocol as typed objects, and the one decoder for them (sans-IO).

A control channel carries requests (``invite``, ``get``, ``card``, ``record``, ``subscribe``,
``unsubscribe``, ``reserve``, ``punch``, ``dialback``), their replies, and notices
(``invite_cancel``, ``notify``, ``card_update``, ``circuit``); docs/protocol.md sections 4.1 to
4.7 and 8 define them.
:func:`decode_request` turns an incoming request into one of the classes below, or raises
:class:`BadRequest` with the ``error`` code and text the peer is to be answered with.
:func:`error_reply` builds that answer, and :func:`check_reply` reads the answer to a request of
ours, so no part of the node unpacks an ``error`` by hand::

    try:
        request = decode_request(message)
    except BadRequest as exc:
        return exc.reply()
"""

from __future__ import annotations

import enum
import ipaddress
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from peerkit.errors import ProtocolError
from peerkit.model import MAX_DATA, MAX_INVITATION_WAIT, MAX_TEXT, quoted

__all__ = (
    "NOTICES",
    "BadRequest",
    "CardRequest",
    "DialbackRequest",
    "ErrorCode",
    "GetRequest",
    "InviteRequest",
    "PunchRequest",
    "RecordRequest",
    "Refused",
    "Request",
    "ReserveRequest",
    "StreamRequest",
    "SubscribeRequest",
    "UnsubscribeRequest",
    "What",
    "check_reply",
    "decode_request",
    "decode_stream_request",
    "error_reply",
    "is_uint",
    "read_addresses",
    "seen_address",
)

#: Message types that are notices: they expect no reply and are not counted as requests.
NOTICES: Final = frozenset({"invite_cancel", "notify", "card_update", "circuit", "unreserved"})


class ErrorCode(enum.Enum):
    """The codes of ``error`` messages (docs/protocol.md section 4.1)."""

    #: A value over a limit, or too many requests of the sender handled at once.
    LIMIT = "limit"
    #: A message type the receiver does not know.
    UNKNOWN_TYPE = "unknown-type"
    #: A known type with missing or mistyped fields.
    MALFORMED = "malformed"
    #: The asker may not have what it asked for.
    NOT_ALLOWED = "not-allowed"
    #: The answer does not exist now (the node is not signed in).
    UNAVAILABLE = "unavailable"


class What(enum.Enum):
    """What a ``get`` request asks for."""

    PRESENCE = "presence"
    APPS = "apps"
    OBJECTS = "objects"


def is_uint(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an unsigned integer (a CBOR uint: not a bool, not negative)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def error_reply(code: ErrorCode, text: str, rid: int | None = None) -> dict[str, Any]:
    """An ``error`` message; it answers the request ``rid`` when one is given."""
    message: dict[str, Any] = {"t": "error", "code": code.value, "msg": text}
    if rid is not None:
        message["rid"] = rid
    return message


class BadRequest(Exception):
    """An incoming request the receiver must refuse, with the ``error`` that says why."""

    def __init__(self, code: ErrorCode, text: str, rid: int | None) -> None:
        super().__init__(f"{code.value}: {text}")
        #: The error code to answer with.
        self.code = code
        #: The text to answer with.
        self.text = text
        #: The ``"rid"`` to answer, when the request had a valid one.
        self.rid = rid

    def reply(self) -> dict[str, Any]:
        """The ``error`` message that answers the request."""
        return error_reply(self.code, self.text, self.rid)


@dataclass(frozen=True, slots=True)
class InviteRequest:
    """``invite``: an invitation to an application (section 4.1)."""

    rid: int
    app: uuid.UUID
    message: str
    data: bytes
    #: Seconds the inviter waits for the answer.
    ttl: int


@dataclass(frozen=True, slots=True)
class GetRequest:
    """``get``: the presence, applications or objects the asker may see (section 4.6)."""

    rid: int
    what: What


@dataclass(frozen=True, slots=True)
class CardRequest:
    """``card``: a freshly signed contact card of the receiver (section 4.5)."""

    rid: int


@dataclass(frozen=True, slots=True)
class RecordRequest:
    """``record``: the discovery record the receiver publishes (section 4.4)."""

    rid: int


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """``subscribe``: the receiver's state now, then every change (section 4.7)."""

    rid: int


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    """``unsubscribe``: end the subscription on this channel (section 4.7)."""

    rid: int


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """``reserve``: keep (or renew) a reservation on the receiver, a relay (section 8)."""

    rid: int


@dataclass(frozen=True, slots=True)
class PunchRequest:
    """``punch``: dial me back from your side at once, to these addresses (section 8)."""

    rid: int
    #: Where the sender expects to be seen, each with the port it dials from.
    addrs: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class DialbackRequest:
    """``dialback``: connect to me, at the address you see me at, on this port (section 8)."""

    rid: int
    port: int


def _dialback(rid: int, message: dict[str, Any]) -> DialbackRequest:
    port = message.get("port")
    if not is_uint(port) or not 1 <= port <= 65535:
        raise BadRequest(ErrorCode.MALFORMED, 'dialback "port" is a port, 1 to 65535', rid)
    return DialbackRequest(rid, port)


#: Addresses a ``punch`` (or its reply) carries at most.
MAX_PUNCH_ADDRESSES: Final = 4


def read_addresses(value: object, rid: int | None = None) -> tuple[tuple[str, int], ...]:
    """The ``"addrs"`` of a ``punch`` or ``punch_reply``: at most 4 valid [host, port] pairs.

    :raises BadRequest: (``malformed``) when it is anything else.
    """
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PUNCH_ADDRESSES:
        text = f'"addrs" is a list of 1 to {MAX_PUNCH_ADDRESSES} addresses'
        raise BadRequest(ErrorCode.MALFORMED, text, rid)
    addresses = tuple(seen_address(item) for item in value)
    if None in addresses:
        raise BadRequest(ErrorCode.MALFORMED, '"addrs" entries are [IP address, port] pairs', rid)
    return addresses  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """``stream``: the first message of an application stream connection (section 4.3)."""

    rid: int
    app: uuid.UUID


def decode_stream_request(message: dict[str, Any]) -> StreamRequest:
    """The typed form of the first message of a stream connection.

    :raises BadRequest: (``malformed``, without ``"rid"``) for anything but a well-formed ``stream``.
    """
    rid, app = message.get("rid"), message.get("app")
    if message.get("t") != "stream" or not is_uint(rid) or not isinstance(app, bytes) or len(app) != 16:
        raise BadRequest(ErrorCode.MALFORMED, 'a stream connection starts with {"t": "stream", ...}', None)
    return StreamRequest(rid, uuid.UUID(bytes=app))


Request = (
    InviteRequest
    | GetRequest
    | CardRequest
    | RecordRequest
    | SubscribeRequest
    | UnsubscribeRequest
    | ReserveRequest
    | PunchRequest
    | DialbackRequest
)


def _invite(rid: int, message: dict[str, Any]) -> InviteRequest:
    app, text, data, ttl = (
        message.get("app"),
        message.get("msg", ""),
        message.get("data", b""),
        message.get("ttl"),
    )
    malformed = ErrorCode.MALFORMED
    if not isinstance(app, bytes) or len(app) != 16:
        raise BadRequest(malformed, 'invite "app" must be 16 bytes', rid)
    if not isinstance(text, str):
        raise BadRequest(malformed, 'invite "msg" must be text', rid)
    if not isinstance(data, bytes):
        raise BadRequest(malformed, 'invite "data" must be bytes', rid)
    if not is_uint(ttl):
        raise BadRequest(malformed, 'invite "ttl" must be an unsigned integer', rid)
    limit = ErrorCode.LIMIT
    if len(text) > MAX_TEXT:
        raise BadRequest(limit, f"invitation message is {len(text)} characters; the limit is {MAX_TEXT}", rid)
    if len(data) > MAX_DATA:
        raise BadRequest(limit, f"invitation data is {len(data)} bytes; the limit is {MAX_DATA}", rid)
    if ttl > MAX_INVITATION_WAIT:
        raise BadRequest(limit, f"invitation ttl is {ttl} s; the limit is {MAX_INVITATION_WAIT}", rid)
    return InviteRequest(rid, uuid.UUID(bytes=app), text, data, ttl)


def _get(rid: int, message: dict[str, Any]) -> GetRequest:
    try:
        return GetRequest(rid, What(message.get("what")))
    except ValueError:
        raise BadRequest(ErrorCode.MALFORMED, 'get "what" is "presence", "apps" or "objects"', rid) from None


def _only_rid(
    kind: type[CardRequest | RecordRequest | SubscribeRequest | UnsubscribeRequest | ReserveRequest],
) -> _Decoder:
    def decode(rid: int, _: dict[str, Any]) -> Request:
        return kind(rid)

    return decode


_Decoder = Callable[[int, dict[str, Any]], "Request"]
_DECODERS: Final[dict[str, _Decoder]] = {
    "invite": _invite,
    "get": _get,
    "card": _only_rid(CardRequest),
    "record": _only_rid(RecordRequest),
    "subscribe": _only_rid(SubscribeRequest),
    "unsubscribe": _only_rid(UnsubscribeRequest),
    "reserve": _only_rid(ReserveRequest),
    "punch": lambda rid, message: PunchRequest(rid, read_addresses(message.get("addrs"), rid)),
    "dialback": _dialback,
}


def decode_request(message: dict[str, Any]) -> Request:
    """The typed form of the incoming request ``message`` (a decoded map with a text ``"t"``).

    :raises BadRequest: for an unknown type (``unknown-type``), a missing or mistyped field
        (``malformed``; without ``"rid"`` when the rid itself is bad), or a value over a limit
        (``limit``).
    """
    kind = message.get("t")
    rid = message.get("rid")
    decoder = _DECODERS.get(kind)  # type: ignore[arg-type]
    if decoder is None:
        text = f"unknown message type {quoted(kind)}"
        raise BadRequest(ErrorCode.UNKNOWN_TYPE, text, rid if is_uint(rid) else None)
    if not is_uint(rid):
        raise BadRequest(ErrorCode.MALFORMED, f'{kind} needs an unsigned "rid"', None)
    return decoder(rid, message)


def seen_address(value: object) -> tuple[str, int] | None:
    """An address and port as peerkit sends them (``[host, port]``: a pong's or a relay's
    ``seen``, a punch's ``addrs``), or None when ``value`` is not a valid one."""
    match value:
        case [str(host), int(port)] if len(host) <= 45 and 0 < port < 65536 and not isinstance(port, bool):
            try:
                return str(ipaddress.ip_address(host)), port
            except ValueError:
                return None
    return None


class Refused(Exception):
    """A peer answered a request of ours with an ``error``."""

    def __init__(self, code: object, text: object) -> None:
        super().__init__(f"{code}: {text}")
        #: The error code, as the peer sent it (an :class:`ErrorCode` when it is a known one).
        self.code: ErrorCode | object = _known(code)
        #: The error text, as the peer sent it.
        self.text = text


def _known(code: object) -> ErrorCode | object:
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def check_reply(reply: dict[str, Any], expected: str) -> dict[str, Any]:
    """``reply`` when its type is ``expected``.

    :raises Refused: when it is an ``error``.
    :raises ProtocolError: when it is another reply type.
    """
    kind = reply.get("t")
    if kind == expected:
        return reply
    if kind == "error":
        raise Refused(reply.get("code"), reply.get("msg"))
    raise ProtocolError(f"answered with a {quoted(kind)} message instead of {expected!r}")
