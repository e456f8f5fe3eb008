"""The life of a control channel, and replies that do not fit in one message (sans-IO).

:class:`ControlState` is one control channel's bookkeeping (docs/protocol.md section 4.2) without
any I/O, like :mod:`peerkit.proto.connection`: the owner hands it each message it receives and
gets back what the message is (:class:`ReplyReceived`, :class:`RequestReceived`, ...); it tells it
what it sends (:meth:`ControlState.start_request`, :meth:`ControlState.answered`,
:meth:`ControlState.retire`) and closes the connection when :attr:`ControlState.done` says so.
Every legal change of :class:`Phase` is in :data:`TRANSITIONS`.

A transport message holds at most 65,519 bytes of plaintext, but a reply may carry more: 128
objects of 16 KiB, or 64 applications with their data, in a ``get_reply`` or in the state of a
``subscribe_reply``. Such a reply travels in parts (docs/protocol.md section 4.2, "Replies in
parts"): every part is a reply with the same ``"t"`` and ``"rid"``; every part but the last
carries ``"more": true``. The lists of the reply (at the top level, or one level down in a map
such as ``"state"``) are split between the parts in order; every other field is in the first part.
The receiver concatenates the lists, in order, and takes the other fields from the first part.
:func:`split_reply` makes the parts; :class:`ReplyParts` rebuilds a reply from them, within limits.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from peerkit.errors import ProtocolError
from peerkit.model import quoted
from peerkit.proto.connection import MAX_PLAINTEXT
from peerkit.proto.messages import encode, encode_message
from peerkit.proto.requests import NOTICES, BadRequest, ErrorCode, decode_request, error_reply, is_uint

__all__ = (
    "MAX_CONCURRENT",
    "MAX_PARTS",
    "REPLY_TYPES",
    "TRANSITIONS",
    "ControlEvent",
    "ControlState",
    "NoticeReceived",
    "Phase",
    "PingReceived",
    "Refuse",
    "ReplyParts",
    "ReplyReceived",
    "RequestReceived",
    "RetireReceived",
    "Unmatched",
    "encode_reply",
    "has_lists",
    "is_reply",
    "split_reply",
    "take",
)

_V = TypeVar("_V")

#: Requests from the peer handled at the same time, at most; more are refused with ``"limit"``.
MAX_CONCURRENT: Final = 128
#: Message types that answer a request besides every type ending in ``_reply``.
REPLY_TYPES: Final = frozenset({"pong", "error"})

#: Parts one reply may come in, at most (so a reply holds at most 64 x 65,519 bytes, about 4 MiB);
#: more are a protocol error.
MAX_PARTS: Final = 64
#: Room kept in each part for the ``"more"`` key and list headers that grow as items are added.
_SLACK: Final = 64

_Path = tuple[str, ...]


def _lists(message: Mapping[str, Any]) -> Iterator[tuple[_Path, list[Any]]]:
    # The lists a reply may be split along: top-level lists, and lists in a top-level map.
    for key, value in message.items():
        if isinstance(value, list):
            yield (key,), value
        elif isinstance(value, dict):
            for inner, item in value.items():
                if isinstance(item, list):
                    yield (key, inner), item


def _with_lists(message: Mapping[str, Any], lists: dict[_Path, list[Any]]) -> dict[str, Any]:
    # A copy of ``message`` whose lists are replaced by ``lists`` (each path given).
    out = dict(message)
    for path, items in lists.items():
        if len(path) == 1:
            out[path[0]] = items
        else:
            out[path[0]] = {**out[path[0]], path[1]: items}
    return out


def has_lists(message: Mapping[str, Any]) -> bool:
    """Whether ``message`` has lists it could be split along (only such a reply may need parts)."""
    for value in message.values():  # on every reply's path: no generator
        if isinstance(value, list):
            return True
        if isinstance(value, dict):
            for item in value.values():
                if isinstance(item, list):
                    return True
    return False


def encode_reply(message: Mapping[str, Any], limit: int = MAX_PLAINTEXT) -> list[bytes]:
    """``message`` encoded as the parts :func:`split_reply` makes of it: encoded once when it fits
    in one.

    :raises ValueError: as :func:`split_reply`.
    """
    whole = encode_message(message)
    if len(whole) <= limit:
        return [whole]
    return [encode_message(part) for part in _split(message, limit)]


def split_reply(message: Mapping[str, Any], limit: int = MAX_PLAINTEXT) -> list[dict[str, Any]]:
    """``message`` as one or more parts of at most ``limit`` encoded bytes each (one part when it fits).

    :raises ValueError: when a single list item, or the message without its lists, does not fit.
    """
    whole = dict(message)
    if len(encode_message(whole)) <= limit:
        return [whole]
    return _split(message, limit)


def _split(message: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    # split_reply's parts of a message known not to fit in one.
    lists = dict(_lists(message))
    empty: dict[_Path, list[Any]] = {path: [] for path in lists}
    base = len(encode_message(_with_lists(message, empty))) + _SLACK
    if base > limit:
        raise ValueError(f"a reply without its lists is {base} bytes; a message holds {limit}")
    parts: list[dict[str, Any]] = []
    current: dict[_Path, list[Any]] = {path: [] for path in lists}
    size = base
    for path, items in lists.items():
        for item in items:
            cost = len(encode(item))
            if base + cost > limit:
                raise ValueError(f"an item of {cost} bytes does not fit in a message of {limit}")
            if size + cost > limit:
                parts.append(_with_lists(message if not parts else _rest(message), current))
                current = {p: [] for p in lists}
                size = base
            current[path].append(item)
            size += cost
    parts.append(_with_lists(message if not parts else _rest(message), current))
    for part in parts[:-1]:
        part["more"] = True
    return parts


def _rest(message: Mapping[str, Any]) -> dict[str, Any]:
    # The fields every part carries: its type, rid, and the maps that hold lists.
    rest: dict[str, Any] = {"t": message["t"]}
    if "rid" in message:
        rest["rid"] = message["rid"]
    for key, value in message.items():
        if isinstance(value, dict) and any(isinstance(v, list) for v in value.values()):
            rest[key] = {k: v for k, v in value.items() if isinstance(v, list)}
    return rest


class ReplyParts:
    """Rebuilds one reply from its parts (see the module docstring), within ``max_parts``."""

    def __init__(self, *, max_parts: int = MAX_PARTS) -> None:
        self._first: dict[str, Any] | None = None
        self._parts = 0
        self._max_parts = max_parts

    def add(self, part: dict[str, Any]) -> dict[str, Any] | None:
        """Take the next part; the whole reply once the last one came (None until then).

        :raises ProtocolError: when the parts disagree (type, shape) or are too many.
        """
        self._parts += 1
        if self._parts > self._max_parts:
            raise ProtocolError(f"a reply came in more than {self._max_parts} parts")
        more = part.pop("more", False)
        if more is not True and more is not False:
            raise ProtocolError('"more" is true or false')
        if self._first is None:
            self._first = part
        else:
            self._merge(part)
        if more:
            return None
        whole, self._first = self._first, None
        return whole

    def _merge(self, part: dict[str, Any]) -> None:
        first = self._first
        assert first is not None
        if part.get("t") != first.get("t"):
            raise ProtocolError(f"a part of a {quoted(first.get('t'))} reply is a {quoted(part.get('t'))}")
        for path, items in _lists(part):
            holder: Any = first
            for key in path[:-1]:
                holder = holder.get(key)
                if not isinstance(holder, dict):
                    break
            target = holder.get(path[-1]) if isinstance(holder, dict) else None
            if not isinstance(target, list):
                joined = quoted(".".join(str(key) for key in path))
                raise ProtocolError(f"a part of a reply has {joined}; the first part does not")
            target.extend(items)


# -- the life of a control channel ---------------------------------------------------------------


class Phase(enum.Enum):
    """Where a control channel is."""

    #: Requests flow both ways.
    OPEN = "open"
    #: A ``retire`` was sent or received: no new request of ours; replies still flow both ways.
    RETIRING = "retiring"
    #: Ended; nothing more is sent or accepted.
    CLOSED = "closed"


#: Every legal change of phase, with what causes it.
TRANSITIONS: Final[dict[tuple[Phase, Phase], str]] = {
    (Phase.OPEN, Phase.RETIRING): "retire() (this side retires), or a retire received",
    (Phase.OPEN, Phase.CLOSED): (
        "close(): the connection broke, a ping went unanswered, or the owner closed it"
    ),
    (Phase.RETIRING, Phase.CLOSED): "both sides retired and nothing is outstanding (done), or close()",
}


def is_reply(message: Mapping[str, Any]) -> bool:
    """Whether ``message`` answers a request (its type ends in ``_reply``, or is ``pong``/``error``
    with a ``"rid"``)."""
    kind = message["t"]
    return (kind in REPLY_TYPES or kind.endswith("_reply")) and is_uint(message.get("rid"))


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The whole reply to our request ``rid`` came (its parts put together)."""

    rid: int
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request of the peer, to be answered (the owner calls :meth:`ControlState.answered` once
    it has sent the reply, or decided to send none)."""

    rid: int
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A ``ping``, to be answered with a ``pong`` (and then :meth:`ControlState.answered`)."""

    rid: int


@dataclass(frozen=True, slots=True)
class NoticeReceived:
    """A message that expects no reply (``invite_cancel``, ``notify``)."""

    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RetireReceived:
    """The peer retired the channel; ``answer`` says whether this side must send its own ``retire``."""

    answer: bool


@dataclass(frozen=True, slots=True)
class Refuse:
    """A request refused before it is handled (too many at once, a bad or repeated ``"rid"``):
    send ``reply`` (an ``error``) now."""

    reply: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A reply to no request of ours (abandoned, or never made), or an ``error`` about none."""

    message: dict[str, Any]


ControlEvent = (
    ReplyReceived | RequestReceived | PingReceived | NoticeReceived | RetireReceived | Refuse | Unmatched
)


class ControlState:
    """The bookkeeping of one control channel: our requests by ``"rid"`` (with replies in parts),
    the peer's requests being handled, and the phase; see the module docstring."""

    def __init__(self, *, max_concurrent: int = MAX_CONCURRENT) -> None:
        self.phase = Phase.OPEN
        #: Requests of the peer handled at once, at most.
        self.max_concurrent = max_concurrent
        #: Whether this side sent ``retire``.
        self.retire_sent = False
        #: Whether the peer sent ``retire``.
        self.retire_received = False
        self._next_rid = 1
        self._sent: dict[int, ReplyParts | None] = {}  # our outstanding requests
        # The peer's requests not yet answered (a dict as a set: an empty one is a quarter the size).
        self._received: dict[int, None] = {}

    def _to(self, phase: Phase) -> None:
        if phase is self.phase:
            return
        if (self.phase, phase) not in TRANSITIONS:
            raise RuntimeError(f"a control channel cannot go from {self.phase.value} to {phase.value}")
        self.phase = phase

    # -- what the owner asks -----------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Whether a new request may be sent."""
        return self.phase is Phase.OPEN

    @property
    def outstanding(self) -> bool:
        """Whether a request either way still waits for its reply."""
        return bool(self._sent or self._received)

    @property
    def handling(self) -> int:
        """Requests of the peer not yet answered."""
        return len(self._received)

    @property
    def done(self) -> bool:
        """Whether the channel is to be closed now: both sides retired and nothing is outstanding."""
        return (
            self.phase is Phase.RETIRING
            and self.retire_sent
            and self.retire_received
            and not self.outstanding
        )

    # -- what the owner does -----------------------------------------------------------------
    def start_request(self, *, keepalive: bool = False) -> int:
        """A fresh ``"rid"`` for a request about to be sent; ``keepalive`` pings may go on a
        retiring channel too.

        :raises RuntimeError: when the channel takes no new request (the caller checks first).
        """
        if not (self.usable or (keepalive and self.phase is Phase.RETIRING)):
            raise RuntimeError(f"a {self.phase.value} control channel takes no new request")
        rid = self._next_rid
        self._next_rid += 1
        self._sent[rid] = None
        return rid

    def abandon(self, rid: int) -> None:
        """Stop waiting for the reply to ``rid`` (it could not be sent, or nobody waits any more);
        a reply that comes later is :class:`Unmatched`."""
        take(self._sent, rid)

    def answered(self, rid: int) -> None:
        """The peer's request ``rid`` has its reply sent (or will get none: it was withdrawn)."""
        take(self._received, rid)

    def retire(self) -> bool:
        """This side retires the channel; whether a ``retire`` is to be sent now."""
        if self.phase is Phase.CLOSED or self.retire_sent:
            return False
        self._to(Phase.RETIRING)
        self.retire_sent = True
        return True

    def close(self) -> list[int]:
        """The channel ended; the rids of our requests that will never get a reply."""
        self._to(Phase.CLOSED)
        failed = list(self._sent)
        self._sent.clear()
        self._received.clear()
        return failed

    # -- what the peer sent ------------------------------------------------------------------
    def receive(self, message: dict[str, Any]) -> ControlEvent | None:
        """What ``message`` (decoded, with a text ``"t"``) is; None for a part of a reply that is
        not the last.

        :raises ProtocolError: for parts of a reply that do not fit together.
        :raises RuntimeError: when the channel is closed.
        """
        if self.phase is Phase.CLOSED:
            raise RuntimeError("a closed control channel receives nothing")
        kind = message["t"]
        rid = message.get("rid")
        if is_reply(message):
            if rid not in self._sent:
                return Unmatched(message)
            parts = self._sent[rid]
            if "more" in message or parts is not None:
                if parts is None:
                    parts = self._sent[rid] = ReplyParts()
                whole = parts.add(message)
                if whole is None:
                    return None
                message = whole
            take(self._sent, rid)
            return ReplyReceived(rid, message)
        if kind == "error":  # an error that answers no request
            return Unmatched(message)
        if kind == "retire":
            self.retire_received = True
            self._to(Phase.RETIRING)
            return RetireReceived(answer=not self.retire_sent)
        if kind in NOTICES:
            return NoticeReceived(message)
        if not is_uint(rid):
            # Refused at once: no task is spent on a request that cannot be answered.
            if kind == "ping":
                return Refuse(error_reply(ErrorCode.MALFORMED, 'ping needs an unsigned "rid"'))
            try:
                decode_request(message)
            except BadRequest as exc:
                return Refuse(exc.reply())
            raise AssertionError("a request without a rid was decoded")  # pragma: no cover
        if rid in self._received:
            text = f"request {rid} is still being handled; a rid is unique among outstanding requests"
            return Refuse(error_reply(ErrorCode.MALFORMED, text))
        if len(self._received) >= self.max_concurrent:
            busy = len(self._received)
            text = f"{busy} requests of yours are being handled; the limit is {self.max_concurrent}"
            return Refuse(error_reply(ErrorCode.LIMIT, text, rid))
        self._received[rid] = None
        if kind == "ping":
            return PingReceived(rid)
        return RequestReceived(rid, message)


def take(table: dict[int, _V], rid: int) -> _V | None:
    """Remove ``rid`` from a table of requests and return what it held (None when it held none).

    An emptied dict keeps its table (160 bytes more than a new one) until it is cleared, so an
    emptied table is cleared: a node keeps thousands of idle channels, each with three of these.
    """
    value = table.pop(rid, None)
    if not table:
        table.clear()
    return value
