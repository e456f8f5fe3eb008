"""peerkit.dht.krpc: KRPC messages read strictly, with the error code to answer."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit.dht.bencode import encode
from peerkit.dht.krpc import (
    Error,
    ErrorCode,
    KrpcError,
    Node,
    Query,
    Response,
    compact_nodes,
    parse,
    read_address,
    read_nodes,
)

ID = bytes(range(20))


def test_a_query_a_response_and_an_error_round_trip() -> None:
    query = Query(b"aa", b"find_node", {b"id": ID, b"target": bytes(20)}, read_only=True)
    parsed = parse(query.encode())
    assert isinstance(parsed, Query)
    assert (parsed.tid, parsed.method, parsed.sender, parsed.read_only) == (b"aa", b"find_node", ID, True)
    nodes = [Node(bytes([1]) * 20, ("10.0.0.1", 6881)), Node(bytes([2]) * 20, ("fd00::1", 6882))]
    values = {
        b"id": ID,
        b"nodes": compact_nodes(nodes, ipv6=False),
        b"nodes6": compact_nodes(nodes, ipv6=True),
    }
    response = parse(Response(b"aa", values, ip=("192.0.2.7", 4000)).encode())
    assert isinstance(response, Response)
    assert response.nodes() == nodes
    assert response.ip == ("192.0.2.7", 4000)
    error = parse(Error(b"aa", 203, "no").encode())
    assert error == Error(b"aa", 203, "no")


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [
        (b"garbage", ErrorCode.PROTOCOL, "not bencoded"),
        (encode([b"list"]), ErrorCode.PROTOCOL, "must be a dictionary"),
        (encode({b"y": b"q"}), ErrorCode.PROTOCOL, "transaction id"),
        (encode({b"t": b"x" * 17, b"y": b"q"}), ErrorCode.PROTOCOL, "transaction id"),
        (encode({b"t": b"1", b"y": b"z"}), ErrorCode.PROTOCOL, "y must be q, r or e"),
        (encode({b"t": b"1", b"y": b"q", b"q": b"ping"}), ErrorCode.PROTOCOL, "needs q and a"),
        (
            encode({b"t": b"1", b"y": b"q", b"q": b"ping", b"a": {b"id": b"short"}}),
            ErrorCode.PROTOCOL,
            "id must be 20",
        ),
        (
            encode({b"t": b"1", b"y": b"q", b"q": b"vote", b"a": {b"id": ID}}),
            ErrorCode.METHOD_UNKNOWN,
            "Method Unknown",
        ),
        (
            encode({b"t": b"1", b"y": b"q", b"q": b"get", b"a": {b"id": ID, b"target": 5}}),
            ErrorCode.PROTOCOL,
            "target missing or of the wrong type",
        ),
        (
            encode({b"t": b"1", b"y": b"q", b"q": b"put", b"a": {b"id": ID, b"token": b"t"}}),
            ErrorCode.PROTOCOL,
            "v missing",
        ),
        (encode({b"t": b"1", b"y": b"r"}), ErrorCode.PROTOCOL, "needs r"),
        (encode({b"t": b"1", b"y": b"e", b"e": [b"x"]}), ErrorCode.PROTOCOL, r"\[code, text\]"),
    ],
)
def test_malformed_messages_name_their_problem_and_code(message: bytes, code: int, text: str) -> None:
    with pytest.raises(KrpcError, match=text) as caught:
        parse(message)
    assert caught.value.code == code
    if caught.value.tid is not None:
        assert parse(caught.value.reply()) == Error(caught.value.tid, code, caught.value.text)


@given(st.binary(max_size=300))
def test_any_datagram_parses_or_is_refused_cleanly(data: bytes) -> None:
    with contextlib.suppress(KrpcError):
        parse(data)


def test_compact_forms() -> None:
    assert read_address(bytes([10, 0, 0, 1, 0x1A, 0xE1])) == ("10.0.0.1", 6881)
    assert read_address(b"12345") is None
    blob = compact_nodes([Node(ID, ("10.0.0.1", 0)), Node(ID, ("10.0.0.2", 1))], ipv6=False)
    assert read_nodes(blob, 26) == [Node(ID, ("10.0.0.2", 1))]  # port 0 is no address
