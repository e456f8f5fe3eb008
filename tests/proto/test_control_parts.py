"""Replies in parts (sans-IO): a reply over one message is split and rebuilt exactly."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerkit.errors import ProtocolError
from peerkit.proto.connection import MAX_PLAINTEXT
from peerkit.proto.control import MAX_PARTS, ReplyParts, encode_reply, has_lists, split_reply
from peerkit.proto.messages import decode_message, encode_message


def rebuild(parts: list[dict[str, Any]]) -> dict[str, Any]:
    # Through the wire form, as a receiver sees them.
    assembler = ReplyParts()
    result = None
    for part in parts:
        assert result is None, "a part came after the last one"
        result = assembler.add(decode_message(encode_message(part)))
    assert result is not None
    return result


def test_a_small_reply_is_one_part_without_more() -> None:
    message = {"t": "get_reply", "rid": 3, "objects": [{"id": b"x" * 16, "data": b"d"}]}
    assert split_reply(message) == [message]
    assert rebuild([message]) == message


def test_128_objects_of_16_kib_travel_in_parts_and_come_back_exactly() -> None:
    objects = [{"id": bytes([i]) * 16, "data": bytes([i]) * 16384} for i in range(128)]
    message = {"t": "get_reply", "rid": 9, "objects": objects}
    parts = split_reply(message)
    assert len(parts) > 1
    assert all(len(encode_message(p)) <= MAX_PLAINTEXT for p in parts)
    assert all(p["more"] is True for p in parts[:-1])
    assert "more" not in parts[-1]
    assert all(p["rid"] == 9 and p["t"] == "get_reply" for p in parts)
    assert rebuild(parts) == message


def test_encode_reply_encodes_what_split_reply_makes() -> None:
    small = {"t": "pong", "rid": 4, "seen": ["127.0.0.1", 4000]}
    assert encode_reply(small) == [encode_message(small)]
    objects = [{"id": bytes([i]) * 16, "data": bytes([i]) * 16384} for i in range(16)]
    big = {"t": "get_reply", "rid": 9, "objects": objects}
    encoded = encode_reply(big)
    assert encoded == [encode_message(part) for part in split_reply(big)]
    assert len(encoded) > 1
    assert rebuild([decode_message(part) for part in encoded]) == big


def test_a_subscription_state_splits_along_its_nested_lists() -> None:
    state = {
        "presence": [7, "here"],
        "name": "laptop",
        "apps": [{"id": bytes([i]) * 16, "desc": f"app {i}", "data": b"a" * 16384} for i in range(64)],
        "objects": [{"id": bytes([i]) * 16, "data": b"o" * 16384} for i in range(128)],
    }
    message = {"t": "subscribe_reply", "rid": 1, "inst": b"i" * 16, "state": state}
    parts = split_reply(message)
    assert len(parts) > 1
    assert all(len(encode_message(p)) <= MAX_PLAINTEXT for p in parts)
    assert parts[0]["inst"] == b"i" * 16
    assert "inst" not in parts[1]
    assert rebuild(parts) == message


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20000), max_size=40),
    limit=st.integers(21000, MAX_PLAINTEXT),
)
def test_any_split_rebuilds_the_same_reply(sizes: list[int], limit: int) -> None:
    message = {"t": "get_reply", "rid": 5, "objects": [{"id": b"i" * 16, "data": b"x" * n} for n in sizes]}
    parts = split_reply(message, limit)
    assert all(len(encode_message(p)) <= limit for p in parts)
    assert rebuild(parts) == message


def test_an_item_too_big_for_one_message_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        split_reply({"t": "get_reply", "rid": 1, "objects": [{"data": b"x" * 70000}]})


def test_too_many_parts_is_a_protocol_error() -> None:
    assembler = ReplyParts()
    part = {"t": "get_reply", "rid": 1, "objects": [], "more": True}
    for _ in range(MAX_PARTS):
        assert assembler.add(dict(part, objects=[])) is None
    with pytest.raises(ProtocolError, match=f"more than {MAX_PARTS} parts"):
        assembler.add(dict(part, objects=[]))


@pytest.mark.parametrize(
    ("second", "error"),
    [
        ({"t": "card_reply", "objects": []}, "is a 'card_reply'"),
        ({"t": "get_reply", "apps": []}, "'apps'"),
        ({"t": "get_reply", "objects": [], "more": 1}, '"more" is true or false'),
    ],
)
def test_parts_that_disagree_are_a_protocol_error(second: dict[str, Any], error: str) -> None:
    assembler = ReplyParts()
    assert assembler.add({"t": "get_reply", "rid": 1, "objects": [1], "more": True}) is None
    with pytest.raises(ProtocolError, match=error):
        assembler.add(second)


#: Keys as a decoded message may hold them: text, and the integers and bytes CBOR allows too.
_KEYS = st.sampled_from(["t", "more", "objects", "state"]) | st.integers(-2, 2) | st.binary(max_size=2)
_VALUES = (
    st.integers()
    | st.booleans()
    | st.sampled_from(["get_reply", "x"])
    | st.lists(st.integers(), max_size=3)
    | st.dictionaries(_KEYS, st.lists(st.integers(), max_size=2) | st.integers(), max_size=3)
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.dictionaries(_KEYS, _VALUES, max_size=5), max_size=5))
def test_untrusted_parts_raise_only_protocol_errors(parts: list[dict[str, Any]]) -> None:
    assembler = ReplyParts()
    for part in parts:
        try:
            assembler.add(part)
        except ProtocolError:
            return


def test_only_replies_with_lists_are_checked_for_size() -> None:
    assert not has_lists({"t": "invite_reply", "r": "accepted"})
    assert has_lists({"t": "subscribe_reply", "state": {"apps": []}})
