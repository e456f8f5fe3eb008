"""Bencoding (BEP 3), strict both ways (sans-IO).

The DHT speaks bencode. :func:`decode` accepts exactly the canonical encoding and nothing else:
trailing bytes, integers with leading zeros or ``-0``, string lengths with leading zeros,
dictionary keys that are not byte strings in strictly ascending order (so no duplicates), nesting
deeper than :data:`MAX_DEPTH` and more than :data:`MAX_ITEMS` items are all refused with
:class:`BencodeError` naming the problem and its offset. Canonical input means that
``encode(decode(data)) == data`` for everything accepted, which BEP 44's signatures rely on.

Values are :class:`bytes`, :class:`int`, :class:`list` and :class:`dict` with :class:`bytes` keys.
"""

from __future__ import annotations

from typing import Final, TypeAlias

__all__ = ("MAX_DEPTH", "MAX_ITEMS", "BencodeError", "Value", "decode", "encode")

#: Nesting deeper than this is refused (a KRPC message needs 3 or 4 levels).
MAX_DEPTH: Final = 32
#: Items (of every kind, at every level) one message may hold.
MAX_ITEMS: Final = 4096

Value: TypeAlias = bytes | int | list["Value"] | dict[bytes, "Value"]

_DIGITS: Final = frozenset(b"0123456789")


class BencodeError(ValueError):
    """Bytes that are not canonical bencoding, or a value that cannot be bencoded."""


def encode(value: Value) -> bytes:
    """The canonical bencoding of ``value`` (dictionary keys sorted).

    :raises BencodeError: for a value of another type (a str, a float, a bool, a key that is not
        bytes).
    """
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def _encode(value: object, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BencodeError(f"nesting deeper than {MAX_DEPTH} levels")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out.append(b"%d:" % len(data))
        out.append(data)
    elif isinstance(value, bool):
        raise BencodeError("a bool cannot be bencoded (use 0 or 1)")
    elif isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        for key in sorted(value):
            if not isinstance(key, bytes):
                raise BencodeError(f"dictionary keys must be bytes, not {type(key).__name__}")
            out.append(b"%d:" % len(key))
            out.append(key)
            _encode(value[key], out, depth + 1)
        out.append(b"e")
    else:
        raise BencodeError(f"a {type(value).__name__} cannot be bencoded")


def decode(data: bytes) -> Value:
    """The value ``data`` encodes; ``data`` must be exactly one canonical value.

    :raises BencodeError: naming what is wrong and where.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BencodeError(f"bencoded data must be bytes, not {type(data).__name__}")
    decoder = _Decoder(bytes(data))
    value = decoder.value(0)
    if decoder.at != len(decoder.data):
        raise BencodeError(f"{len(decoder.data) - decoder.at} bytes after the value at offset {decoder.at}")
    return value


class _Decoder:
    __slots__ = ("at", "data", "items")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0
        self.items = 0

    def _fail(self, what: str) -> BencodeError:
        return BencodeError(f"{what} at offset {self.at}")

    def value(self, depth: int) -> Value:
        data, at = self.data, self.at
        if at >= len(data):
            raise self._fail("the data ends where a value should be")
        self.items += 1
        if self.items > MAX_ITEMS:
            raise self._fail(f"more than {MAX_ITEMS} items")
        lead = data[at]
        if lead == 0x69:  # i
            return self._int()
        if lead in _DIGITS:
            return self._bytes()
        if depth >= MAX_DEPTH:
            raise self._fail(f"nesting deeper than {MAX_DEPTH} levels")
        if lead == 0x6C:  # l
            self.at += 1
            items: list[Value] = []
            while True:
                if self.at >= len(data):
                    raise self._fail("the data ends inside a list")
                if data[self.at] == 0x65:  # e
                    self.at += 1
                    return items
                items.append(self.value(depth + 1))
        if lead == 0x64:  # d
            self.at += 1
            result: dict[bytes, Value] = {}
            previous: bytes | None = None
            while True:
                if self.at >= len(data):
                    raise self._fail("the data ends inside a dictionary")
                if data[self.at] == 0x65:
                    self.at += 1
                    return result
                if data[self.at] not in _DIGITS:
                    raise self._fail("a dictionary key that is not a byte string")
                key_at = self.at
                key = self._bytes()
                if previous is not None and key <= previous:
                    self.at = key_at
                    raise self._fail("a dictionary key out of order or repeated")
                previous = key
                result[key] = self.value(depth + 1)
        raise self._fail(f"an unexpected byte {bytes([lead])!r}")

    def _int(self) -> int:
        data = self.data
        end = data.find(b"e", self.at + 1)
        if end < 0:
            raise self._fail("an integer without its end")
        text = data[self.at + 1 : end]
        digits = text[1:] if text[:1] == b"-" else text
        if not digits or not all(c in _DIGITS for c in digits):
            raise self._fail(f"a malformed integer {text[:20]!r}")
        if (digits[0] == 0x30 and len(digits) > 1) or text == b"-0":
            raise self._fail(f"a non-canonical integer {text[:20]!r}")
        self.at = end + 1
        return int(text)

    def _bytes(self) -> bytes:
        data = self.data
        colon = data.find(b":", self.at, self.at + 21)
        if colon < 0:
            raise self._fail("a byte string without its length")
        text = data[self.at : colon]
        if not all(c in _DIGITS for c in text):
            raise self._fail(f"a malformed length {text!r}")
        if text[0] == 0x30 and len(text) > 1:
            raise self._fail(f"a non-canonical length {text!r}")
        length = int(text)
        start = colon + 1
        if start + length > len(data):
            raise self._fail(f"a byte string of {length} bytes where {len(data) - start} remain")
        self.at = start + length
        return data[start : self.at]
