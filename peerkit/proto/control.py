"""The control protocol's replies that do not fit in one message (sans-IO).

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

from collections.abc import Iterator, Mapping
from typing import Any, Final

from peerkit.errors import ProtocolError
from peerkit.proto.connection import MAX_PLAINTEXT
from peerkit.proto.messages import encode, encode_message

__all__ = ("MAX_PARTS", "ReplyParts", "has_lists", "split_reply")

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
    return any(True for _ in _lists(message))


def split_reply(message: Mapping[str, Any], limit: int = MAX_PLAINTEXT) -> list[dict[str, Any]]:
    """``message`` as one or more parts of at most ``limit`` encoded bytes each (one part when it fits).

    :raises ValueError: when a single list item, or the message without its lists, does not fit.
    """
    whole = dict(message)
    if len(encode_message(whole)) <= limit:
        return [whole]
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
            raise ProtocolError(f"a part of a {first.get('t')!r} reply is a {part.get('t')!r}")
        for path, items in _lists(part):
            holder: Any = first
            for key in path[:-1]:
                holder = holder.get(key)
                if not isinstance(holder, dict):
                    raise ProtocolError(f"a part of a reply has {'.'.join(path)!r}; the first part does not")
            target = holder.get(path[-1])
            if not isinstance(target, list):
                raise ProtocolError(f"a part of a reply has {'.'.join(path)!r}; the first part does not")
            target.extend(items)
