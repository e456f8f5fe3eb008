from __future__ import annotations

import math

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit.errors import ProtocolError
from peerkit.proto import messages
from peerkit.proto.framing import FrameDecoder, encode_frame


def test_frames_whole_and_byte_by_byte() -> None:
    payloads = [b"a", b"bc" * 300, bytes(65535)]
    wire = b"".join(encode_frame(p) for p in payloads)
    assert FrameDecoder().feed(wire) == payloads
    decoder = FrameDecoder()
    got = []
    for i in range(len(wire)):
        got += decoder.feed(wire[i : i + 1])
    assert got == payloads
    assert decoder.pending == 0
    decoder.check_eof()


def test_frame_errors() -> None:
    with pytest.raises(ValueError, match="0 bytes; a frame holds 1 to 65535"):
        encode_frame(b"")
    with pytest.raises(ValueError, match="65536 bytes"):
        encode_frame(bytes(65536))
    with pytest.raises(ProtocolError, match="zero-length frame"):
        FrameDecoder().feed(b"\x00\x00")
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x05abc")
    with pytest.raises(ProtocolError, match="ended inside a frame"):
        decoder.check_eof()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x01\x02", "1 trailing bytes"),
        (b"\xc1\x1a\x00\x00\x00\x00", "tags are not allowed"),
        (b"\x9f\x01\xff", "indefinite-length"),
        (b"\x5f\x41a\xff", "indefinite-length"),
        (b"\xa2\x61a\x01\x61a\x02", "has the key 'a' twice"),
        (b"\x81" * 17 + b"\x00", "deeper than 16"),
        (b"\x62\xff\xfe", "not valid UTF-8"),
        (b"\x5a\xff\xff\xff\xff", "claims 4294967295 bytes"),
        (b"\x9b" + b"\xff" * 8, "claims 18446744073709551615 items"),
        (b"\xf7", "simple value 23"),
        (b"\xf8\x20", "simple value 24"),
        (b"\xff", "break code"),
        (b"\x1c", "reserved"),
        (b"", "truncated"),
        (b"\x19\x01", "truncated"),
        (b"\xa1\x81\x01\x01", "map key of type list"),
    ],
)
def test_strict_decoding_refuses(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        messages.decode(data)


def test_decoding_accepts_what_cbor_allows() -> None:
    assert messages.decode(b"\xf5") is True
    assert messages.decode(b"\xf6") is None
    assert messages.decode(b"\xf9\x3c\x00") == 1.0
    assert math.isnan(messages.decode(b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00"))
    assert messages.decode(b"\x3b" + b"\xff" * 8) == -(2**64)
    assert messages.decode(b"\x81" * 16 + b"\x00") is not None


def test_messages_need_a_text_type() -> None:
    assert messages.decode_message(messages.encode_message({"t": "x", "n": 1})) == {"t": "x", "n": 1}
    with pytest.raises(ValueError, match='text "t"'):
        messages.encode_message({"n": 1})
    with pytest.raises(TypeError, match="mapping"):
        messages.encode_message([1])  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="must be a CBOR map"):
        messages.decode_message(messages.encode([1]))
    with pytest.raises(ProtocolError, match='no text "t"'):
        messages.decode_message(messages.encode({"t": 1}))


def test_hello_round_trip_and_errors() -> None:
    hello = messages.Hello(id=bytes(32), nick="n", name="m")
    assert messages.decode_hello(messages.encode_hello(hello)) == hello
    extra = messages.encode({"v": 1, "id": bytes(32), "nick": "", "name": "", "future": [1]})
    assert messages.decode_hello(extra).nick == ""
    for bad, match in [
        ({"v": 2, "id": bytes(32)}, "version 2"),
        ({"v": True, "id": bytes(32)}, "version True"),
        ({"v": 1, "id": bytes(31)}, '"id" is not a 32-byte'),
        ({"v": 1, "id": bytes(32), "nick": 5}, '"nick" is not text'),
        ({"v": 1, "id": bytes(32), "name": "x" * 256}, '"name" is 256 characters'),
    ]:
        with pytest.raises(ProtocolError, match=match):
            messages.decode_hello(messages.encode(bad))


def test_encoding_is_deterministic() -> None:
    a = messages.encode({"b": 1, "a": [b"x", "y"], "aa": None})
    b = messages.encode({"aa": None, "a": [b"x", "y"], "b": 1})
    assert a == b
    assert list(messages.decode(a)) == ["a", "b", "aa"]


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@given(values)
def test_round_trip_of_anything_encodable(value: object) -> None:
    assert messages.decode(messages.encode(value)) == value


@given(st.binary(max_size=200))
def test_decode_only_ever_raises_protocol_error(data: bytes) -> None:
    try:
        value = messages.decode(data)
    except ProtocolError:
        return
    # Whatever is accepted is exactly one item that cbor2 reads the same way (repr: NaN != NaN).
    assert repr(cbor2.loads(data)) == repr(value)


@given(st.binary(max_size=100))
def test_frame_decoder_never_raises_anything_else(data: bytes) -> None:
    decoder = FrameDecoder()
    try:
        for frame in decoder.feed(data):
            assert 1 <= len(frame) <= 65535
    except ProtocolError:
        pass
