from __future__ import annotations

import math
import time

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


@given(
    st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8),
    st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=20),
)
def test_frames_in_any_chunking_stay_whole_after_later_input(payloads: list[bytes], cuts: list[int]) -> None:
    # Every frame is kept until the end: one gathered across calls (a view of its own buffer)
    # must not change as later input arrives, and none can be written through.
    wire = b"".join(encode_frame(p) for p in payloads)
    decoder, got, pos, i = FrameDecoder(), [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got += decoder.feed(wire[pos : pos + step])
        pos, i = pos + step, i + 1
    assert [bytes(frame) for frame in got] == payloads
    for frame in got:
        assert isinstance(frame, bytes) or frame.readonly
    assert decoder.pending == 0


@given(
    st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=40),
    st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=10),
    st.integers(min_value=1, max_value=5),
    st.booleans(),
)
def test_a_limit_hands_frames_out_a_few_at_a_time_and_keeps_the_rest_in_order(
    payloads: list[bytes], cuts: list[int], limit: int, drain: bool
) -> None:
    # At most ``limit`` frames a call; the others wait and come first from the next call, whether
    # it brings new input or not (``drain``: the waiting ones taken with b"" before more input).
    wire = b"".join(encode_frame(p) for p in payloads)
    decoder, got, pos, i = FrameDecoder(), [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        out = decoder.feed(wire[pos : pos + step], limit)
        assert len(out) <= limit
        got += out
        while drain and decoder.waiting:
            got += decoder.feed(b"", limit)
        pos, i = pos + step, i + 1
    while decoder.waiting:
        with pytest.raises(RuntimeError, match="wait to be taken"):
            decoder.check_eof()
        got += decoder.feed(b"", limit)
    assert [bytes(frame) for frame in got] == payloads
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
        ({"v": 1.0, "id": bytes(32)}, r"version 1\.0; peerkit speaks 1"),  # the unsigned integer 1 only
        ({"id": bytes(32)}, "version None"),
        ({"v": 1, "id": bytes(31)}, '"id" is not a 32-byte'),
        ({"v": 1, "id": bytes(32), "nick": 5}, '"nick" is not text'),
        ({"v": 1, "id": bytes(32), "name": "x" * 256}, '"name" is 256 characters'),
    ]:
        with pytest.raises(ProtocolError, match=match):
            messages.decode_hello(messages.encode(bad))


def test_the_hello_stamp_travels_and_a_bad_one_is_ignored() -> None:
    hello = messages.Hello(id=bytes(32), ts=1_796_000_000_000_000_000)
    assert messages.decode_hello(messages.encode_hello(hello)).ts == hello.ts
    for bad in (-1, 1.5, "1", True, None):
        raw = messages.encode({"v": 1, "id": bytes(32), "ts": bad})
        assert messages.decode_hello(raw).ts is None


def test_hello_extension_keys() -> None:
    plain = messages.Hello(id=bytes(32))
    assert set(messages.decode(messages.encode_hello(plain))) == {"v", "id", "nick", "name"}  # unchanged
    hello = messages.Hello(id=bytes(32), port=7000, use=messages.USE_STREAM)
    assert messages.decode(messages.encode_hello(hello))["port"] == 7000
    assert messages.decode_hello(messages.encode_hello(hello)) == hello
    base = {"v": 1, "id": bytes(32)}
    for port in (0, 65536, -1, "7000", True, None, 3.0):
        assert messages.decode_hello(messages.encode({**base, "port": port})).port is None
    for use in ("control", "other", 1, None):
        assert messages.decode_hello(messages.encode({**base, "use": use})).use == messages.USE_CONTROL


def test_the_hello_ciphers_extension_travels_and_a_bad_one_is_ignored() -> None:
    hello = messages.Hello(id=bytes(32), ciphers=("AESGCM", "Future"))
    assert messages.decode(messages.encode_hello(hello))["ciphers"] == ["AESGCM", "Future"]
    assert messages.decode_hello(messages.encode_hello(hello)) == hello
    assert "ciphers" not in messages.decode(messages.encode_hello(messages.Hello(id=bytes(32))))
    base = {"v": 1, "id": bytes(32)}
    too_many = ["AESGCM"] * (messages.MAX_HELLO_CIPHERS + 1)
    too_long = ["A" * (messages.MAX_CIPHER_NAME + 1)]
    for bad in ("AESGCM", ["AESGCM", 1], [b"AESGCM"], too_many, too_long, None, {"AESGCM": 1}):
        assert messages.decode_hello(messages.encode({**base, "ciphers": bad})).ciphers == ()


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
        # Keys up to 30 characters: past 23 their length takes a byte of its own.
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=30), children, max_size=5)
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


def test_deterministic_encoding_orders_keys_bytewise_as_rfc_8949_says() -> None:
    # RFC 8949 section 4.2.1: 10, 100, -1, "z", "aa" (the example's order, for the key types allowed)
    encoded = messages.encode_deterministic({"aa": 5, "z": 4, -1: 3, 100: 2, 10: 1})
    assert encoded.hex() == "a5" + "0a01" + "186402" + "2003" + "617a04" + "62616105"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (1000, "1903e8"),
        (2**32, "1b0000000100000000"),
        (-1, "20"),
        (-(2**64), "3bffffffffffffffff"),
        (1.5, "f93e00"),
        (100000.0, "fa47c35000"),
        (1.1, "fb3ff199999999999a"),
        (float("inf"), "f97c00"),
        (float("nan"), "f97e00"),
        (b"", "40"),
        ("é", "62c3a9"),
        ([1, [2]], "82018102"),
        (None, "f6"),
        (True, "f5"),
    ],
)
def test_deterministic_encoding_of_single_items(value: object, expected: str) -> None:
    assert messages.encode_deterministic(value).hex() == expected


def test_deterministic_encoding_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ValueError, match="does not fit in 64 bits"):
        messages.encode_deterministic(2**64)
    with pytest.raises(TypeError, match="map key of type float"):
        messages.encode_deterministic({1.5: 1})
    with pytest.raises(TypeError, match="cannot encode set"):
        messages.encode_deterministic({1})
    nested: list[object] = [0]
    for _ in range(17):
        nested = [nested]
    with pytest.raises(ValueError, match="deeper than 16"):
        messages.encode_deterministic(nested)


@given(values)
def test_deterministic_encoding_round_trips_and_matches_cbor2_for_text_keys(value: object) -> None:
    encoded = messages.encode_deterministic(value)
    assert messages.decode(encoded) == value
    # For text keys, cbor2's canonical (length-first) order is the same as the bytewise order.
    assert encoded == messages.encode(value)


@given(
    small=st.dictionaries(
        st.text(max_size=10), st.integers(-(2**64), 2**64 - 1) | st.text(max_size=20), max_size=4
    ),
    extra=st.binary(max_size=300),
)
def test_message_parts_join_to_a_valid_encoding(small: dict[str, object], extra: bytes) -> None:
    big = bytes(messages.LARGE_VALUE) + extra
    message = {**small, "t": "data", "blob": big}
    parts = messages.message_parts(message)
    assert len(parts) > 1
    assert any(part is big for part in parts)  # passed through, not copied
    assert messages.decode_message(b"".join(parts)) == message
    assert messages.message_parts({"t": "small"}) == [messages.encode_message({"t": "small"})]
    with pytest.raises(ValueError, match='text "t"'):
        messages.message_parts({"blob": big})


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        ({"t": "x", "n": 2**64}, ValueError, "does not fit in 64 bits"),
        ({"t": "x", "when": __import__("datetime").datetime(2026, 1, 1)}, TypeError, "type datetime"),
        ({"t": "x", "s": {1, 2}}, TypeError, "type set"),
        ({"t": "x", "m": {1.5: 1}}, TypeError, "map key of type float"),
        ({"t": "x", "l": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}, ValueError, "deeper than 16"),
        ({"t": 3}, ValueError, 'text "t"'),
        ([("t", "x")], TypeError, "must be a mapping"),
    ],
)
def test_messages_a_peer_would_refuse_are_refused_before_sending(
    message: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        messages.encode_message(message)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        messages.message_parts(message)  # type: ignore[arg-type]


def test_every_accepted_type_round_trips() -> None:
    message = {
        "t": "all",
        "i": -(2**64),
        "u": 2**64 - 1,
        "f": 1.5,
        "b": b"\x00",
        "ba": bytearray(b"\x01"),
        "s": "text",
        "l": [1, (2, 3)],
        "m": {1: "int key", b"k": "bytes key"},
        "n": None,
        "yes": True,
    }
    decoded = messages.decode_message(messages.encode_message(message))
    assert decoded["ba"] == b"\x01"
    assert decoded["l"] == [1, [2, 3]]
    assert decoded["m"] == {1: "int key", b"k": "bytes key"}


def test_a_value_with_too_many_items_is_refused_before_the_work() -> None:
    huge = messages.encode({"t": "x", "a": list(range(65_000))})
    start = time.perf_counter()
    with pytest.raises(ProtocolError, match="more than 8192 items"):
        messages.decode_message(huge)
    assert time.perf_counter() - start < 0.05  # refused at the array's head, not after decoding it
    nested = messages.encode({"t": "x", "a": [[0] * 100 for _ in range(100)]})
    with pytest.raises(ProtocolError, match="more than 8192 items"):
        messages.decode_message(nested)
    fine = {"t": "x", "a": [{"id": bytes(16), "data": b"d"} for _ in range(1000)]}  # 5,000 items
    assert messages.decode_message(messages.encode(fine)) == fine
    with pytest.raises(ProtocolError, match="more than 99 items"):
        messages.decode(messages.encode(list(range(100))), max_items=99)
    assert messages.decode(messages.encode(list(range(99))), max_items=99) == list(range(99))


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.text(min_size=1, max_size=300),  # (not an address: the bytes still match the general path)
)


@given(
    st.integers(0, 2**64 - 1),
    st.none() | st.tuples(hosts, st.integers(0, 0xFFFF)),
)
def test_a_pong_is_the_bytes_the_general_encoder_makes(rid: int, seen: tuple[str, int] | None) -> None:
    message: dict[str, object] = {"t": "pong", "rid": rid}
    if seen is not None:
        message["seen"] = list(seen)
    pong = messages.encode_pong(rid, seen)
    assert pong == messages.encode_message(message)
    assert messages.decode_message(pong) == message


def test_a_pong_refuses_what_a_pong_cannot_say() -> None:
    with pytest.raises(ValueError, match="unsigned 64-bit integer, not -1"):
        messages.encode_pong(-1)
    with pytest.raises(ValueError, match="unsigned 64-bit integer, not 18446744073709551616"):
        messages.encode_pong(2**64)
    with pytest.raises(ValueError, match="unsigned 64-bit integer, not True"):
        messages.encode_pong(True)
    with pytest.raises(ValueError, match="port is 0-65535, not 65536"):
        messages.encode_pong(1, ("127.0.0.1", 65536))


def _general(data: bytes | bytearray | memoryview) -> object:
    # decode_message without its fast path: the general decoder and the message checks.
    value = messages.decode(data)
    if not isinstance(value, dict) or not isinstance(value.get("t"), str):
        raise ProtocolError("not a message")
    return value


def _data_message(kind: str, data: bytes) -> bytes:
    return b"\xa2\x61t" + messages.encode(kind) + b"\x61d" + messages.encode(data)


@given(
    st.text(max_size=30),
    st.one_of(st.binary(max_size=300), st.sampled_from([bytes(n) for n in (23, 24, 255, 256, 65487)])),
    st.sampled_from([bytes, bytearray, memoryview]),
)
def test_data_messages_decode_as_the_general_decoder_decodes_them(kind: str, data: bytes, form: type) -> None:
    wire = form(_data_message(kind, data))
    decoded = messages.decode_message(wire)
    assert decoded == _general(wire) == {"t": kind, "d": data}
    assert type(decoded["d"]) is bytes


def test_a_data_message_skips_the_general_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = _data_message("data", b"x" * 1000)
    monkeypatch.setattr(messages, "decode", lambda *args, **kwargs: pytest.fail("the general decoder ran"))
    assert messages.decode_message(memoryview(bytearray(wire))) == {"t": "data", "d": b"x" * 1000}
    assert messages.decode_message(_data_message("data", b"")) == {"t": "data", "d": b""}


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=3))
def test_anything_starting_like_a_data_message_decodes_as_the_general_decoder_decodes_it(
    tail: bytes, cut: int
) -> None:
    # Arbitrary bytes after the map head and the key "t", and well-formed messages cut short or
    # followed by more: the fast path accepts exactly what the general decoder does, the same way.
    for wire in (
        b"\xa2\x61t" + tail,
        _data_message("d", tail)[: len(tail) + 6 - cut],
        _data_message("d", tail) + tail[:cut],
        _data_message("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), tail),
        b"\xa2\x61t\x61d\x61d\x59" + len(tail).to_bytes(2, "big") + tail,  # a longer head than needed
        b"\xa2\x61t\x62\xff\xfe\x61d\x40",  # "t" is not UTF-8
    ):
        try:
            expected = _general(wire)
        except ProtocolError:
            with pytest.raises(ProtocolError):
                messages.decode_message(wire)
        else:
            assert messages.decode_message(wire) == expected
