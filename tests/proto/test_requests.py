"""The typed requests of the control protocol and their one decoder."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerkit.errors import ProtocolError
from peerkit.proto.requests import (
    BadRequest,
    CardRequest,
    ErrorCode,
    GetRequest,
    InviteRequest,
    PunchRequest,
    RecordRequest,
    Refused,
    ReserveRequest,
    SubscribeRequest,
    UnsubscribeRequest,
    What,
    check_reply,
    decode_request,
)

APP = uuid.uuid4()
BAD = ErrorCode.MALFORMED


def test_each_request_decodes_to_its_type() -> None:
    invite = {"t": "invite", "rid": 1, "app": APP.bytes, "msg": "hi", "data": b"d", "ttl": 30}
    assert decode_request(invite) == InviteRequest(1, APP, "hi", b"d", 30)
    assert decode_request({"t": "invite", "rid": 2, "app": APP.bytes, "ttl": 0}) == InviteRequest(
        2, APP, "", b"", 0
    )
    assert decode_request({"t": "get", "rid": 3, "what": "objects"}) == GetRequest(3, What.OBJECTS)
    assert decode_request({"t": "card", "rid": 4}) == CardRequest(4)
    assert decode_request({"t": "record", "rid": 5}) == RecordRequest(5)
    assert decode_request({"t": "subscribe", "rid": 6}) == SubscribeRequest(6)
    assert decode_request({"t": "unsubscribe", "rid": 7}) == UnsubscribeRequest(7)
    assert decode_request({"t": "reserve", "rid": 8}) == ReserveRequest(8)
    punch = {"t": "punch", "rid": 9, "addrs": [["203.0.113.7", 40001], ["192.168.1.20", 40001]]}
    assert decode_request(punch) == PunchRequest(9, (("203.0.113.7", 40001), ("192.168.1.20", 40001)))


@pytest.mark.parametrize(
    ("message", "code", "rid", "text"),
    [
        ({"t": "invite", "rid": 1, "app": b"x", "ttl": 1}, ErrorCode.MALFORMED, 1, '"app" must be 16 bytes'),
        ({"t": "invite", "rid": 1, "app": APP.bytes, "msg": 3, "ttl": 1}, ErrorCode.MALFORMED, 1, '"msg"'),
        (
            {"t": "invite", "rid": 1, "app": APP.bytes, "data": "x", "ttl": 1},
            ErrorCode.MALFORMED,
            1,
            '"data"',
        ),
        ({"t": "invite", "rid": 1, "app": APP.bytes}, ErrorCode.MALFORMED, 1, '"ttl"'),
        ({"t": "invite", "rid": 1, "app": APP.bytes, "ttl": -1}, ErrorCode.MALFORMED, 1, '"ttl"'),
        ({"t": "invite", "rid": 1, "app": APP.bytes, "ttl": 301}, ErrorCode.LIMIT, 1, "ttl is 301 s"),
        ({"t": "invite", "rid": 1, "app": APP.bytes, "msg": "m" * 256, "ttl": 1}, ErrorCode.LIMIT, 1, "256"),
        (
            {"t": "invite", "rid": 1, "app": APP.bytes, "data": bytes(16385), "ttl": 1},
            ErrorCode.LIMIT,
            1,
            "16385",
        ),
        (
            {"t": "invite", "app": APP.bytes, "ttl": 1},
            ErrorCode.MALFORMED,
            None,
            'invite needs an unsigned "rid"',
        ),
        ({"t": "get", "rid": 2, "what": "everything"}, ErrorCode.MALFORMED, 2, '"presence", "apps"'),
        ({"t": "get", "rid": 2}, ErrorCode.MALFORMED, 2, '"what"'),
        ({"t": "card", "rid": False}, ErrorCode.MALFORMED, None, "card needs"),
        ({"t": "punch", "rid": 5}, ErrorCode.MALFORMED, 5, '"addrs" is a list of 1 to 4'),
        ({"t": "punch", "rid": 5, "addrs": [["10.0.0.1", 1]] * 5}, ErrorCode.MALFORMED, 5, "1 to 4"),
        ({"t": "punch", "rid": 5, "addrs": [["host.example", 7000]]}, ErrorCode.MALFORMED, 5, "IP address"),
        ({"t": "punch", "rid": 5, "addrs": [["10.0.0.1", 0]]}, ErrorCode.MALFORMED, 5, "[IP address, port]"),
        ({"t": "nope", "rid": 4}, ErrorCode.UNKNOWN_TYPE, 4, "unknown message type 'nope'"),
        ({"t": "nope", "rid": -4}, ErrorCode.UNKNOWN_TYPE, None, "unknown message type"),
    ],
)
def test_bad_requests_are_refused_with_the_right_error(
    message: dict[str, Any], code: ErrorCode, rid: int | None, text: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_request(message)
    assert caught.value.code is code
    assert text in caught.value.text
    reply = caught.value.reply()
    assert reply["t"] == "error"
    assert reply["code"] == code.value
    assert reply.get("rid") == rid


def test_check_reply_reads_errors_once() -> None:
    assert check_reply({"t": "card_reply", "rid": 1}, "card_reply") == {"t": "card_reply", "rid": 1}
    with pytest.raises(Refused) as caught:
        check_reply({"t": "error", "rid": 1, "code": "not-allowed", "msg": "no"}, "get_reply")
    assert caught.value.code is ErrorCode.NOT_ALLOWED
    assert caught.value.text == "no"
    with pytest.raises(Refused) as caught:
        check_reply({"t": "error", "rid": 1, "code": "shrug", "msg": 4}, "get_reply")
    assert caught.value.code == "shrug"
    with pytest.raises(ProtocolError, match="'pong' message instead of 'get_reply'"):
        check_reply({"t": "pong", "rid": 1}, "get_reply")


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 400), st.text(max_size=3), st.binary(max_size=20)
)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {"t": st.sampled_from(["invite", "get", "card", "record", "subscribe", "unsubscribe", "other"])},
        optional=dict.fromkeys(("rid", "app", "msg", "data", "ttl", "what"), _VALUES),
    )
)
def test_the_decoder_raises_only_bad_request(message: dict[str, Any]) -> None:
    reply: dict[str, Any] | None = None
    try:
        decode_request(message)
    except BadRequest as exc:
        reply = exc.reply()
    assert reply is None or reply["t"] == "error"
