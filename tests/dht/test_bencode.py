"""peerkit.dht.bencode: canonical bencoding both ways, and every non-canonical form refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit.dht.bencode import MAX_DEPTH, MAX_ITEMS, BencodeError, Value, decode, encode

values: st.SearchStrategy[Value] = st.recursive(
    st.binary(max_size=40) | st.integers(min_value=-(2**70), max_value=2**70),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.binary(max_size=8), inner, max_size=6),
    max_leaves=40,
)


@given(values)
def test_every_value_round_trips(value: Value) -> None:
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_canonically_or_fail_cleanly(data: bytes) -> None:
    try:
        value = decode(data)
    except BencodeError:
        return
    assert encode(value) == data  # what is accepted is exactly the canonical encoding


@given(values, st.integers(min_value=0, max_value=500), st.integers(0, 255))
def test_a_flipped_byte_is_refused_or_canonical(value: Value, where: int, byte: int) -> None:
    data = bytearray(encode(value))
    data[where % len(data)] = byte
    try:
        decoded = decode(bytes(data))
    except BencodeError:
        return
    assert encode(decoded) == bytes(data)


def test_the_beps_examples() -> None:
    assert encode({b"cow": b"moo", b"spam": b"eggs"}) == b"d3:cow3:moo4:spam4:eggse"
    assert encode([b"spam", b"eggs"]) == b"l4:spam4:eggse"
    assert encode(-3) == b"i-3e"
    assert encode(0) == b"i0e"
    assert encode({b"spam": [b"a", b"b"]}) == b"d4:spaml1:a1:bee"
    assert decode(b"0:") == b""


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"i3eX", "1 bytes after the value at offset 3"),
        (b"i03e", "non-canonical integer"),
        (b"i-0e", "non-canonical integer"),
        (b"i-e", "malformed integer"),
        (b"ie", "malformed integer"),
        (b"i1.5e", "malformed integer"),
        (b"i12", "integer without its end"),
        (b"03:abc", "non-canonical length"),
        (b"5:abc", "a byte string of 5 bytes where 3 remain"),
        (b"3abc", "without its length"),
        (b"d3:cow3:moo3:bar3:bare", "key out of order or repeated"),
        (b"d3:cow3:moo3:cow3:mooe", "key out of order or repeated"),
        (b"di1e3:mooe", "key that is not a byte string"),
        (b"l4:spam", "ends inside a list"),
        (b"d3:cow", "ends where a value should be"),
        (b"d3:cow3:moo", "ends inside a dictionary"),
        (b"x", "unexpected byte"),
        (b"", "ends where a value should be"),
    ],
)
def test_non_canonical_or_malformed_input_is_refused_with_its_reason(data: bytes, problem: str) -> None:
    with pytest.raises(BencodeError, match=problem):
        decode(data)


def test_depth_and_size_are_bounded() -> None:
    deep = b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1)
    with pytest.raises(BencodeError, match="nesting deeper than 32 levels"):
        decode(deep)
    assert decode(b"l" * MAX_DEPTH + b"e" * MAX_DEPTH) is not None
    many = b"l" + b"i0e" * MAX_ITEMS + b"e"
    with pytest.raises(BencodeError, match=f"more than {MAX_ITEMS} items"):
        decode(many)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("text", "a str cannot be bencoded"),
        (1.5, "a float"),
        (True, "a bool"),
        ({"k": 1}, "keys must be bytes"),
    ],
)
def test_what_cannot_be_bencoded_is_named(value: object, problem: str) -> None:
    with pytest.raises(BencodeError, match=problem):
        encode(value)  # type: ignore[arg-type]


def test_decode_takes_bytes_only() -> None:
    with pytest.raises(BencodeError, match="must be bytes, not str"):
        decode("i1e")  # type: ignore[arg-type]
