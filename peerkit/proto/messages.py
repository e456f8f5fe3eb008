"""Strict CBOR for everything peerkit sends (docs/protocol.md sections 3 to 5).

Encoding is RFC 8949 core deterministic encoding (cbor2's canonical mode). Decoding accepts exactly
one data item and refuses what the protocol forbids: trailing bytes, tags, indefinite lengths,
duplicate map keys, nesting deeper than :data:`MAX_DEPTH`, simple values other than
``false``/``true``/``null``, and invalid UTF-8. Every refusal is a
:class:`~peerkit.errors.ProtocolError`; no other exception escapes :func:`decode`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from peerkit.errors import ProtocolError
from peerkit.model import MAX_TEXT, quoted

__all__ = (
    "LARGE_VALUE",
    "MAX_DEPTH",
    "MAX_ITEMS",
    "PROTOCOL_VERSION",
    "USE_CONTROL",
    "USE_STREAM",
    "Hello",
    "check_message",
    "decode",
    "decode_hello",
    "decode_message",
    "encode",
    "encode_deterministic",
    "encode_hello",
    "encode_message",
    "encode_pong",
    "message_parts",
)

#: How deep arrays and maps may nest in anything peerkit decodes.
MAX_DEPTH: Final = 16
#: CBOR items one decoded value may hold, at most (every string, number, list, map and entry counts).
#: The largest valid message (a subscription's state: 64 applications and 128 objects) holds about
#: 1,100; a peer's 65,000-element array is refused when its head is read, before any work is done.
MAX_ITEMS: Final = 8192
#: The protocol version carried in the hello.
PROTOCOL_VERSION: Final = 1

_unpack_half = struct.Struct(">e").unpack_from
_unpack_single = struct.Struct(">f").unpack_from
_unpack_double = struct.Struct(">d").unpack_from


def encode(value: Any) -> bytes:
    """A compact CBOR encoding of ``value`` (cbor2's canonical mode: shortest forms, sorted keys).

    Transport messages need no more. Signed data uses :func:`encode_deterministic`.

    :raises TypeError: when ``value`` holds something CBOR cannot carry.
    """
    try:
        return bytes(cbor2.dumps(value, canonical=True))
    except cbor2.CBOREncodeError as exc:
        raise TypeError(f"cannot encode as CBOR: {exc}") from exc


def _head(major: int, argument: int) -> bytes:
    if argument < 24:
        return bytes((major << 5 | argument,))
    if argument < 0x100:
        return bytes((major << 5 | 24, argument))
    if argument < 0x10000:
        return bytes((major << 5 | 25,)) + argument.to_bytes(2, "big")
    if argument < 0x100000000:
        return bytes((major << 5 | 26,)) + argument.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + argument.to_bytes(8, "big")


def _float(value: float) -> bytes:
    # Preferred serialization: the shortest of half, single, double that holds the value exactly.
    if math.isnan(value):
        return b"\xf9\x7e\x00"
    for code, fmt in ((0xF9, ">e"), (0xFA, ">f")):
        try:
            packed = struct.pack(fmt, value)
        except OverflowError:
            continue
        if struct.unpack(fmt, packed)[0] == value:
            return bytes((code,)) + packed
    return b"\xfb" + struct.pack(">d", value)


def _deterministic(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"value nests deeper than {MAX_DEPTH} levels")
    if value is None:
        out.append(b"\xf6")
    elif value is True:
        out.append(b"\xf5")
    elif value is False:
        out.append(b"\xf4")
    elif isinstance(value, int):
        if not -(2**64) <= value < 2**64:
            raise ValueError(f"integer {value} does not fit in 64 bits")
        out.append(_head(0, value) if value >= 0 else _head(1, -1 - value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(_head(2, len(data)))
        out.append(data)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out.append(_head(3, len(data)))
        out.append(data)
    elif isinstance(value, (list, tuple)):
        out.append(_head(4, len(value)))
        for item in value:
            _deterministic(item, out, depth + 1)
    elif isinstance(value, Mapping):
        entries = []
        for key, item in value.items():
            if not isinstance(key, (str, int, bytes)) or isinstance(key, bool):
                raise TypeError(f"map key of type {type(key).__name__} is not allowed")
            encoded_key: list[bytes] = []
            _deterministic(key, encoded_key, depth + 1)
            encoded_item: list[bytes] = []
            _deterministic(item, encoded_item, depth + 1)
            entries.append((b"".join(encoded_key), b"".join(encoded_item)))
        entries.sort(key=lambda entry: entry[0])
        out.append(_head(5, len(entries)))
        for encoded_key_bytes, encoded_item_bytes in entries:
            out.append(encoded_key_bytes)
            out.append(encoded_item_bytes)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


def encode_deterministic(value: Any) -> bytes:
    """The RFC 8949 core deterministic encoding of ``value`` (section 4.2.1).

    Shortest integer and length forms, floats in their shortest exact form, no indefinite lengths,
    and map entries sorted by the bytewise order of their encoded keys. Signed records use it, so
    that every implementation derives the same bytes from the same content.

    :raises TypeError: when ``value`` holds something CBOR cannot carry here.
    :raises ValueError: when an integer does not fit in 64 bits or nesting is too deep.
    """
    out: list[bytes] = []
    _deterministic(value, out, 0)
    return b"".join(out)


def decode(
    data: bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS
) -> Any:
    """Decode exactly one CBOR item from ``data`` (any bytes-like object), strictly.

    Byte strings in the result are always new ``bytes`` objects.

    :raises ProtocolError: when ``data`` is not exactly one item the protocol allows.
    """
    if type(data) is bytes:
        return _decode(data, max_depth, max_items)
    if not isinstance(data, (bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    with memoryview(data) as view:
        return _decode(view.cast("B") if view.format != "B" or view.ndim != 1 else view, max_depth, max_items)


def _decode(data: bytes | memoryview, max_depth: int, max_items: int) -> Any:
    value, pos = _Decoder(data, max_depth, max_items).item(0, 0)
    if pos != len(data):
        raise ProtocolError(f"CBOR item is followed by {len(data) - pos} trailing bytes")
    return value


class _Decoder:
    __slots__ = ("budget", "data", "max_depth", "max_items")

    def __init__(self, data: bytes | memoryview, max_depth: int, max_items: int) -> None:
        self.data = data
        self.max_depth = max_depth
        self.max_items = max_items
        self.budget = max_items  # items that may still be decoded

    def head(self, pos: int) -> tuple[int, int, int]:
        """Return (major type, argument, position after the head)."""
        data = self.data
        if pos >= len(data):
            raise ProtocolError("CBOR data is truncated")
        initial = data[pos]
        major = initial >> 5
        info = initial & 0x1F
        pos += 1
        if info < 24:
            return major, info, pos
        if info > 27:
            if info == 31:
                raise ProtocolError("indefinite-length CBOR items are not allowed")
            raise ProtocolError(f"reserved CBOR additional information {info}")
        size = 1 << (info - 24)
        if pos + size > len(data):
            raise ProtocolError("CBOR data is truncated")
        return major, int.from_bytes(data[pos : pos + size], "big"), pos + size

    def item(self, pos: int, depth: int) -> tuple[Any, int]:
        data = self.data
        if pos < len(data) and data[pos] >> 5 == 7:
            return self.simple(pos)
        major, arg, pos = self.head(pos)
        if major == 0:
            return arg, pos
        if major == 1:
            return -1 - arg, pos
        if major in (2, 3):
            end = pos + arg
            if end > len(data):
                raise ProtocolError(f"CBOR string claims {arg} bytes but only {len(data) - pos} remain")
            raw = data[pos:end]
            if major == 2:
                return (raw if type(raw) is bytes else bytes(raw)), end
            try:
                return str(raw, "utf-8"), end
            except UnicodeDecodeError:
                raise ProtocolError("CBOR text string is not valid UTF-8") from None
        if major == 6:
            raise ProtocolError(f"CBOR tags are not allowed (found tag {arg})")
        if depth >= self.max_depth:
            raise ProtocolError(f"CBOR nesting is deeper than {self.max_depth} levels")
        # Every element takes at least one byte: refuse impossible counts before looping, and counts
        # over the item budget before any of the work.
        if arg > len(data) - pos:
            raise ProtocolError(f"CBOR container claims {arg} items but only {len(data) - pos} bytes remain")
        self.budget -= arg if major == 4 else 2 * arg
        if self.budget < 0:
            raise ProtocolError(f"CBOR value holds more than {self.max_items} items")
        if major == 4:
            items = []
            for _ in range(arg):
                value, pos = self.item(pos, depth + 1)
                items.append(value)
            return items, pos
        result: dict[Any, Any] = {}
        for _ in range(arg):
            key, pos = self.item(pos, depth + 1)
            if not isinstance(key, (str, int, bytes)) or isinstance(key, bool):
                raise ProtocolError(f"CBOR map key of type {type(key).__name__} is not allowed")
            if key in result:
                raise ProtocolError(f"CBOR map has the key {quoted(key)} twice")
            result[key], pos = self.item(pos, depth + 1)
        return result, pos

    def simple(self, pos: int) -> tuple[Any, int]:
        data = self.data
        info = data[pos] & 0x1F
        pos += 1
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22:
            return None, pos
        sizes = {25: 2, 26: 4, 27: 8}
        if info in sizes:
            size = sizes[info]
            if pos + size > len(data):
                raise ProtocolError("CBOR data is truncated")
            unpack = {25: _unpack_half, 26: _unpack_single, 27: _unpack_double}[info]
            return unpack(data, pos)[0], pos + size
        if info == 31:
            raise ProtocolError("unexpected CBOR break code")
        raise ProtocolError(f"CBOR simple value {info} is not allowed")


# -- transport messages --------------------------------------------------------------------


def check_message(message: object) -> None:
    """Check that ``message`` is a transport message peerkit's own decoder would accept.

    It must be a mapping with a text ``"t"``, holding only maps (text, integer or byte-string keys),
    lists, tuples, text, byte strings, integers that fit in 64 bits, floats, booleans and ``None``,
    nested at most :data:`MAX_DEPTH` deep. (CBOR tags, which other types would need, are refused
    by every peerkit receiver, so they are refused here before anything is sent.)

    :raises TypeError: when it is not a mapping or holds a value of another type.
    :raises ValueError: when it has no text ``"t"``, an integer is too large or nesting too deep.
    """
    if not isinstance(message, Mapping):
        raise TypeError(f"a message must be a mapping, not {type(message).__name__}")
    if not isinstance(message.get("t"), str):
        raise ValueError('a message must have a text "t" naming its type')
    _check(message, 0)


def _check(value: object, depth: int) -> None:
    kind = type(value)
    if kind is str or kind is bytes or kind is bool or kind is float or value is None:
        return
    if kind is int:
        if not -(2**64) <= value < 2**64:  # type: ignore[operator]
            raise ValueError(f"integer {value} does not fit in 64 bits")
        return
    if depth >= MAX_DEPTH:
        raise ValueError(f"message nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if type(key) not in (str, int, bytes):
                raise TypeError(f"map key of type {type(key).__name__} is not allowed in a message")
            _check(key, depth + 1)
            _check(item, depth + 1)
    elif kind is list or kind is tuple:
        for item in value:  # type: ignore[attr-defined]
            _check(item, depth + 1)
    elif isinstance(value, (bytes, bytearray, str, int, float)):
        return  # subclasses encode as their base type
    else:
        raise TypeError(f"a message cannot carry a value of type {kind.__name__}")


def encode_message(message: Mapping[str, Any]) -> bytes:
    """Encode a transport message: a map with a text ``"t"`` naming its type (see
    :func:`check_message` for what it may hold).

    :raises ValueError: when ``message`` has no text ``"t"``, or a value is out of range.
    :raises TypeError: when it is not a mapping or holds a value of a type a message cannot carry.
    """
    check_message(message)
    return encode(dict(message))


#: Byte strings at least this long are not copied by :func:`message_parts`.
LARGE_VALUE: Final = 4096


def message_parts(message: Mapping[str, Any]) -> list[bytes]:
    """The encoding of a transport message as pieces to be joined (see :func:`encode_message`).

    Large byte strings at the top level of the map are passed through by reference, so that a
    caller writing the pieces into one buffer copies them once. Small messages are one piece.

    :raises ValueError: when ``message`` has no text ``"t"``.
    :raises TypeError: when it is not a mapping or holds a value CBOR cannot carry.
    """
    check_message(message)
    if not any(type(value) is bytes and len(value) >= LARGE_VALUE for value in message.values()):
        return [encode(dict(message))]
    parts = [_head(5, len(message))]
    for key, value in message.items():
        parts.append(encode(key))
        if type(value) is bytes and len(value) >= LARGE_VALUE:
            parts.append(_head(2, len(value)))
            parts.append(value)
        else:
            parts.append(encode(value))
    return parts


_PONG_HEAD: Final = b"\xa2\x61t\x64pong\x63rid"  # {"t": "pong", "rid": ...
_PONG_SEEN_HEAD: Final = b"\xa3\x61t\x64pong\x63rid"  # {"t": "pong", "rid": ..., "seen": ...
_SEEN_KEY: Final = b"\x64seen\x82"  # "seen": [host, port]


def encode_pong(rid: int, seen: tuple[str, int] | None = None) -> bytes:
    """The pong answering ping ``rid``: ``{"t": "pong", "rid": rid}``, with ``"seen": [host, port]``
    when ``seen`` is given, encoded exactly as :func:`encode_message` encodes it.

    Every channel answers a ping an interval, so a node with thousands of channels answers
    hundreds a second: the bytes are put together directly, at a fifth of the general path's cost.

    :raises ValueError: when ``rid`` is not an unsigned 64-bit integer or the port not 0-65535.
    """
    if type(rid) is not int or not 0 <= rid < 2**64:
        raise ValueError(f"a pong's rid is an unsigned 64-bit integer, not {rid!r}")
    if seen is None:
        return _PONG_HEAD + _head(0, rid)
    host, port = seen
    if type(port) is not int or not 0 <= port <= 0xFFFF:
        raise ValueError(f"a pong's seen port is 0-65535, not {port!r}")
    text = host.encode()
    return b"".join((_PONG_SEEN_HEAD, _head(0, rid), _SEEN_KEY, _head(3, len(text)), text, _head(0, port)))


#: A message's first bytes when it is ``{"t": <text>, "d": <bytes>}`` with "t" first: a stream's
#: data (and other bulk messages), decoded by :func:`_decode_data` without the general decoder.
_T_FIRST: Final = b"\xa2\x61t"


def _decode_data(data: bytes | bytearray | memoryview) -> dict[str, Any] | None:
    # {"t": <text under 24 bytes>, "d": <bytes, length in the head or 1-2 bytes after it>} filling
    # ``data`` exactly, decoded as the general decoder would; None for anything else (including
    # what the general decoder refuses: it decides).
    initial = data[3]
    if not 0x60 <= initial < 0x78:
        return None
    pos = 4 + initial - 0x60
    if data[pos : pos + 2] != b"\x61d":
        return None
    initial = data[pos + 2] if pos + 2 < len(data) else 0
    if 0x40 <= initial < 0x58:
        start, length = pos + 3, initial - 0x40
    elif initial == 0x58 and pos + 3 < len(data):
        start, length = pos + 4, data[pos + 3]
    elif initial == 0x59 and pos + 4 < len(data):
        start, length = pos + 5, (data[pos + 3] << 8) | data[pos + 4]
    else:
        return None
    if start + length != len(data):
        return None
    try:
        kind = str(data[4:pos], "utf-8")
    except UnicodeDecodeError:
        return None
    return {"t": kind, "d": bytes(data[start:])}


def decode_message(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a transport message's plaintext.

    :raises ProtocolError: when it is not one strict CBOR map with a text ``"t"``.
    """
    if data[:3] == _T_FIRST and len(data) > 8 and (fast := _decode_data(data)) is not None:
        return fast
    value = decode(data)
    if not isinstance(value, dict):
        raise ProtocolError(f"a message must be a CBOR map, not {type(value).__name__}")
    if not isinstance(value.get("t"), str):
        raise ProtocolError('a message has no text "t" naming its type')
    return value


# -- hello ---------------------------------------------------------------------------------


#: Values of the hello's ``"use"`` extension.
USE_CONTROL: Final = "control"
USE_STREAM: Final = "stream"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """What a party says about itself in the handshake (docs/protocol.md section 3)."""

    #: The sender's Ed25519 public key (its peer id), 32 bytes.
    id: bytes
    #: The sender's nickname, at most 255 characters.
    nick: str = ""
    #: The sender's endpoint name, at most 255 characters.
    name: str = ""
    #: Extension ``"port"``: the TCP port the sender listens on, if it does (lets the receiver
    #: recognise a connection from a peer it also dialled).
    port: int | None = None
    #: Extension ``"use"``: what the initiator opened the connection for: ``"control"`` (requests,
    #: the default when absent) or ``"stream"`` (one application stream).
    use: str = USE_CONTROL
    #: Extension ``"ts"``: when the initiator sent it, in nanoseconds since the Unix epoch on its own
    #: clock; a responder refuses an IK message 1 whose ``"ts"`` it has seen (a replay).
    ts: int | None = None
    #: Extension ``"ciphers"``: the Noise cipher functions the sender would rather be dialled with
    #: than ChaChaPoly, best first (``("AESGCM",)`` where its CPU has AES instructions).
    ciphers: tuple[str, ...] = ()


#: The most cipher names a hello's ``"ciphers"`` lists, and their longest.
MAX_HELLO_CIPHERS: Final = 8
MAX_CIPHER_NAME: Final = 32


def encode_hello(hello: Hello) -> bytes:
    """The CBOR form of ``hello``; extension keys are written only when they say something."""
    value: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": hello.id, "nick": hello.nick, "name": hello.name}
    if hello.port is not None:
        value["port"] = hello.port
    if hello.use != USE_CONTROL:
        value["use"] = hello.use
    if hello.ts is not None:
        value["ts"] = hello.ts
    if hello.ciphers:
        value["ciphers"] = list(hello.ciphers)
    return encode(value)


def decode_hello(data: bytes) -> Hello:
    """Read a hello, ignoring unknown keys.

    :raises ProtocolError: when it is malformed or of another protocol version.
    """
    value = decode(data)
    if not isinstance(value, dict):
        raise ProtocolError("hello is not a CBOR map")
    if type(value.get("v")) is not int or value["v"] != PROTOCOL_VERSION:  # not 1.0, not True
        raise ProtocolError(
            f"hello has protocol version {quoted(value.get('v'))}; peerkit speaks {PROTOCOL_VERSION}"
        )
    peer_id = value.get("id")
    if not isinstance(peer_id, bytes) or len(peer_id) != 32:
        raise ProtocolError('hello "id" is not a 32-byte string')
    fields = {}
    for key in ("nick", "name"):
        text = value.get(key, "")
        if not isinstance(text, str):
            raise ProtocolError(f'hello "{key}" is not text')
        if len(text) > MAX_TEXT:
            raise ProtocolError(f'hello "{key}" is {len(text)} characters; the limit is {MAX_TEXT}')
        fields[key] = text
    # Extensions: a value that does not make sense is ignored like an unknown key.
    port = value.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        port = None
    use = USE_STREAM if value.get("use") == USE_STREAM else USE_CONTROL
    ts = value.get("ts")
    if type(ts) is not int or not 0 <= ts < 1 << 64:
        ts = None
    ciphers = value.get("ciphers")
    if not (
        isinstance(ciphers, list)
        and len(ciphers) <= MAX_HELLO_CIPHERS
        and all(isinstance(c, str) and len(c) <= MAX_CIPHER_NAME for c in ciphers)
    ):
        ciphers = []
    nick, name = fields["nick"], fields["name"]
    return Hello(id=peer_id, nick=nick, name=name, port=port, use=use, ts=ts, ciphers=tuple(ciphers))
