"""The sans-IO connection: two state machines back to back, time advanced by hand."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerkit import Identity
from peerkit.errors import HandshakeError, ProtocolError
from peerkit.proto import messages
from peerkit.proto.connection import (
    MAX_PLAINTEXT,
    PROTOCOL_IK,
    PROTOCOL_XX,
    TRANSITIONS,
    Connection,
    Event,
    HandshakeComplete,
    MessageReceived,
    State,
    StaticKeys,
)
from peerkit.proto.framing import FrameDecoder, encode_frame


def keys(identity: Identity) -> StaticKeys:
    return StaticKeys(private=identity.x25519_private, public=identity.x25519_public)


def hello(identity: Identity, nick: str = "") -> messages.Hello:
    return messages.Hello(id=identity.id.key, nick=nick, name=f"{nick}'s box")


def transfer(src: Connection, dst: Connection, *, bytewise: bool = False, now: float = 0.0) -> list[Event]:
    data = src.data_to_send()
    if not bytewise:
        return dst.receive_data(data, now)
    events: list[Event] = []
    for i in range(len(data)):
        events += dst.receive_data(data[i : i + 1], now)
    return events


def handshake(
    alice: Identity,
    bob: Identity,
    *,
    expected: bytes | None = None,
    bytewise: bool = False,
    scratch: bytearray | None = None,
    cipher: str = "ChaChaPoly",
) -> tuple[Connection, Connection, list[Event], list[Event]]:
    a = Connection.initiate(keys(alice), hello(alice, "alice"), now=0.0, expected_id=expected, cipher=cipher)
    b = Connection.respond(keys(bob), hello(bob, "bob"), now=0.0, scratch=scratch)
    a_events: list[Event] = []
    b_events: list[Event] = []
    for _ in range(3):
        b_events += transfer(a, b, bytewise=bytewise)
        a_events += transfer(b, a, bytewise=bytewise)
    return a, b, a_events, b_events


@pytest.mark.parametrize("ik", [False, True])
def test_a_responder_takes_the_aesgcm_protocols_the_initiator_names(
    alice: Identity, bob: Identity, ik: bool
) -> None:
    a, b, a_events, b_events = handshake(alice, bob, expected=bob.id.key if ik else None, cipher="AESGCM")
    [a_done], [b_done] = a_events, b_events
    assert isinstance(a_done, HandshakeComplete)
    assert isinstance(b_done, HandshakeComplete)
    assert a_done.protocol == b_done.protocol == f"Noise_{'IK' if ik else 'XX'}_25519_AESGCM_BLAKE2b"
    for n in range(3):  # past nonce 0, small and large
        for sender, receiver, size in ((a, b, 100 * n), (b, a, 9000 * n)):
            sender.send_message({"t": "d", "d": bytes(size)})
            [event] = receiver.receive_data(sender.data_to_send(), 0.0)
            assert isinstance(event, MessageReceived)
            assert event.message == {"t": "d", "d": bytes(size)}


def test_an_unknown_cipher_is_refused_by_name(alice: Identity) -> None:
    with pytest.raises(ValueError, match="cipher must be one of ChaChaPoly, AESGCM, not 'AES'"):
        Connection.initiate(keys(alice), hello(alice, "alice"), now=0.0, cipher="AES")


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("ik", [False, True])
def test_handshake_both_patterns(alice: Identity, bob: Identity, bytewise: bool, ik: bool) -> None:
    a, b, a_events, b_events = handshake(alice, bob, expected=bob.id.key if ik else None, bytewise=bytewise)
    assert a.state is State.OPEN
    assert b.state is State.OPEN
    [a_done] = a_events
    [b_done] = b_events
    assert isinstance(a_done, HandshakeComplete)
    assert isinstance(b_done, HandshakeComplete)
    assert a_done.protocol == b_done.protocol == (PROTOCOL_IK if ik else PROTOCOL_XX)
    assert a_done.peer == hello(bob, "bob")
    assert b_done.peer == hello(alice, "alice")
    assert a_done.handshake_hash == b_done.handshake_hash
    assert a.get_timer() is None

    a.send_message({"t": "chat", "text": "hi"})
    a.send_message({"t": "chat", "text": "again"})
    got = transfer(a, b, bytewise=bytewise)
    assert [e.message for e in got if isinstance(e, MessageReceived)] == [
        {"t": "chat", "text": "hi"},
        {"t": "chat", "text": "again"},
    ]
    b.send_message({"t": "future-type", "x": [1, 2]})
    [reply] = transfer(b, a)
    assert isinstance(reply, MessageReceived)
    assert reply.message == {"t": "future-type", "x": [1, 2]}


@pytest.mark.parametrize("ik", [False, True])
def test_an_open_connection_keeps_its_ciphers_and_not_what_only_the_handshake_needed(
    alice: Identity, bob: Identity, ik: bool
) -> None:
    # A node holds thousands of open connections: their static keys, hellos to send, ephemeral
    # key and expected id are the handshake's, and go with it.
    a, b, _, _ = handshake(alice, bob, expected=bob.id.key if ik else None)
    for side in (a, b):
        assert side.state is State.OPEN
        assert (side._keys, side._hello, side._ephemeral, side._expected_id, side._handshake) == (None,) * 5
    a.send_message({"t": "chat", "text": "still fine"})
    [got] = transfer(a, b)
    assert isinstance(got, MessageReceived)


def test_the_preamble_is_the_first_frame_and_the_prologue(alice: Identity, bob: Identity) -> None:
    a = Connection.initiate(keys(alice), hello(alice), now=0.0, expected_id=bob.id.key)
    frames = FrameDecoder().feed(a.data_to_send())
    assert frames[0] == b"peerkit/1 Noise_IK_25519_ChaChaPoly_BLAKE2b"
    assert len(frames) == 2


def test_a_rewritten_preamble_is_detected(alice: Identity, bob: Identity) -> None:
    """A middlebox that rewrites the preamble to the other protocol breaks the handshake."""
    a = Connection.initiate(keys(alice), hello(alice), now=0.0)
    b = Connection.respond(keys(bob), hello(bob), now=0.0)
    frames = FrameDecoder().feed(a.data_to_send())
    forged = encode_frame(b"peerkit/1 " + PROTOCOL_IK.encode()) + encode_frame(frames[1])
    with pytest.raises(HandshakeError):
        b.receive_data(forged, 0.0)
    assert b.state is State.CLOSED


def test_unsupported_preamble(bob: Identity) -> None:
    b = Connection.respond(keys(bob), hello(bob), now=0.0)
    with pytest.raises(HandshakeError, match="unsupported preamble 'peerkit/1 Noise_NN"):
        b.receive_data(encode_frame(b"peerkit/1 Noise_NN_25519_ChaChaPoly_BLAKE2b"), 0.0)
    assert b.state is State.CLOSED
    assert b.receive_data(b"more", 0.0) == []


def test_a_hello_that_claims_another_id_is_refused(alice: Identity, bob: Identity) -> None:
    mallory = Identity.generate()
    # Mallory completes the handshake with her own static key but claims to be alice.
    a = Connection.initiate(keys(mallory), hello(alice, "alice"), now=0.0)
    b = Connection.respond(keys(bob), hello(bob), now=0.0)
    transfer(a, b)
    transfer(b, a)
    with pytest.raises(HandshakeError, match="does not match its Noise static key"):
        transfer(a, b)
    assert b.state is State.CLOSED


def test_the_initiator_refuses_a_responder_that_is_not_the_dialled_peer(
    alice: Identity, bob: Identity
) -> None:
    mallory = Identity.generate()
    a = Connection.initiate(keys(alice), hello(alice), now=0.0, expected_id=bob.id.key)
    m = Connection.respond(keys(mallory), hello(mallory), now=0.0)
    # Mallory cannot even read message 1: it was encrypted to bob's static key.
    with pytest.raises(HandshakeError, match="failed authentication"):
        transfer(a, m)


def test_a_malformed_hello_is_refused(alice: Identity, bob: Identity) -> None:
    a = Connection.initiate(keys(alice), messages.Hello(id=bytes(32)), now=0.0)
    b = Connection.respond(keys(bob), hello(bob), now=0.0)
    transfer(a, b)
    transfer(b, a)
    with pytest.raises(HandshakeError, match=r"not an Ed25519 key|does not match"):
        transfer(a, b)


def test_handshake_deadline(alice: Identity, bob: Identity) -> None:
    a = Connection.initiate(keys(alice), hello(alice), now=100.0, handshake_timeout=5.0)
    assert a.get_timer() == 105.0
    a.handle_timer(104.9)
    with pytest.raises(HandshakeError, match="did not complete in time"):
        a.handle_timer(105.0)
    assert a.state is State.CLOSED
    b = Connection.respond(keys(bob), hello(bob), now=0.0, handshake_timeout=1.0)
    with pytest.raises(HandshakeError, match="in time"):
        b.receive_data(b"\x00", now=2.0)


def test_tampered_transport_message_closes_the_connection(alice: Identity, bob: Identity) -> None:
    a, b, _, _ = handshake(alice, bob)
    a.send_message({"t": "x"})
    data = bytearray(a.data_to_send())
    data[-1] ^= 0x80
    with pytest.raises(ProtocolError, match="decryption failed"):
        b.receive_data(bytes(data), 0.0)
    assert b.state is State.CLOSED


def test_valid_ciphertext_of_invalid_cbor_is_a_protocol_error(alice: Identity, bob: Identity) -> None:
    a, b, _, _ = handshake(alice, bob)
    a.send_plaintext(b"\x01\x02")
    with pytest.raises(ProtocolError, match="trailing bytes"):
        transfer(a, b)


def test_eof(alice: Identity, bob: Identity) -> None:
    a, b, _, _ = handshake(alice, bob)
    b.receive_eof()
    assert b.state is State.CLOSED
    c = Connection.respond(keys(bob), hello(bob), now=0.0)
    with pytest.raises(HandshakeError, match=r"closed the connection during the handshake$"):
        c.receive_eof()
    for dialling, hint in ((None, "too fast"), (bob.id.key, "not the peer that was dialled")):
        d = Connection.initiate(keys(alice), hello(alice), now=0.0, expected_id=dialling)
        with pytest.raises(HandshakeError, match=rf"during the handshake \(.*{hint}\)"):
            d.receive_eof()  # (a dialler learns what a peer that closes may mean)
    d = Connection.initiate(keys(alice), hello(alice), now=0.0, expected_id=bob.id.key, cipher="AESGCM")
    with pytest.raises(HandshakeError, match=r"was dialled, or when it does not take the cipher\)"):
        d.receive_eof()
    a.send_message({"t": "x"})
    partial = a.data_to_send()[:5]
    _, b2, _, _ = handshake(alice, bob)
    b2.receive_data(partial, 0.0)
    with pytest.raises(ProtocolError, match="inside a frame"):
        b2.receive_eof()
    # What answered a dial with text (a web server's error page) is named by its first line; its
    # first two letters read as a frame length (b"HT": 18,516), so the stream ends inside a frame.
    for answer, kind, said in [
        (b"HTTP/1.0 400 Bad request", HandshakeError, r"not a Noise handshake: 'HTTP/1\.0 400 Bad request'$"),
        (b"\x01\x00\x00\xff\xfe", ProtocolError, r"inside a frame \(5 bytes left over\)$"),  # (no text)
    ]:
        d = Connection.initiate(keys(alice), hello(alice), now=0.0)
        d.data_to_send()
        assert d.receive_data(answer, 0.0) == []  # (a line not ended yet: maybe a frame)
        with pytest.raises(kind, match=said):
            d.receive_eof()


def test_a_line_of_text_where_a_handshake_message_belongs_fails_at_once(
    alice: Identity, bob: Identity
) -> None:
    # An SSH or mail server greets first, and a web client asks first: neither side waits for
    # the handshake's deadline (10 s), nor for the preamble's (3 s), to learn it.
    http = b"HTTP/1.0 400 Bad request\r\nServer: x\r\n\r\n<html>"
    for answer, said in [
        (http, r"^what answered sent text, not a Noise handshake: 'HTTP/1\.0 400 Bad request'$"),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n",
            r"^what answered sent text, not a Noise handshake: 'SSH-2\.0-OpenSSH_9\.2'$",
        ),
    ]:
        d = Connection.initiate(keys(alice), hello(alice), now=0.0)
        d.data_to_send()
        d.receive_data(answer[:10], 0.0)  # (no line end yet)
        with pytest.raises(HandshakeError, match=said):
            d.receive_data(answer[10:], 0.0)
        assert d.state is State.CLOSED
    b = Connection.respond(keys(bob), hello(bob), now=0.0)
    with pytest.raises(
        HandshakeError, match=r"^what connected sent text, not a Noise handshake: 'GET / HTTP/1\.1'$"
    ):
        b.receive_data(b"GET / HTTP/1.1\r\nHost: peerkit\r\n\r\n", 0.0)
    # Byte by byte, a real handshake never reads as a line of text (its lengths are small).
    a = Connection.initiate(keys(alice), hello(alice), now=0.0)
    c = Connection.respond(keys(bob), hello(bob), now=0.0)
    done: list[object] = []
    for _ in range(3):
        for sender, receiver in ((a, c), (c, a)):
            for byte in sender.data_to_send():
                done += receiver.receive_data(bytes([byte]), 0.0)
    assert len(done) == 2


def test_misuse_by_the_caller(alice: Identity, bob: Identity) -> None:
    a = Connection.initiate(keys(alice), hello(alice), now=0.0)
    with pytest.raises(RuntimeError, match="state handshake"):
        a.send_message({"t": "x"})
    a2, _, _, _ = handshake(alice, bob)
    with pytest.raises(ValueError, match="1 to 65519"):
        a2.send_plaintext(bytes(65520))
    a2.close()
    with pytest.raises(RuntimeError, match="state closed"):
        a2.send_message({"t": "x"})


def test_every_transition_is_in_the_table() -> None:
    states = set(State)
    assert {s for pair in TRANSITIONS for s in pair} == states
    assert all(TRANSITIONS.values())


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), split=st.integers(0, 300))
def test_random_bytes_never_crash_a_responder(bob: Identity, data: bytes, split: int) -> None:
    b = Connection.respond(keys(bob), hello(bob), now=0.0)
    try:
        b.receive_data(data[:split], 0.0)
        b.receive_data(data[split:], 0.0)
        b.receive_eof()
    except ProtocolError:
        assert b.state is State.CLOSED


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=300))
def test_random_frames_after_the_handshake_never_crash(alice: Identity, bob: Identity, data: bytes) -> None:
    _, b, _, _ = handshake(alice, bob)
    try:
        b.receive_data(encode_frame(data), 0.0)
    except ProtocolError:
        assert b.state is State.CLOSED
    else:  # pragma: no cover - forging a valid tag is not possible
        raise AssertionError("a random frame authenticated")


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=st.binary(max_size=200), flip=st.integers(0, 10_000))
def test_altered_initiator_messages_never_crash_the_responder(
    alice: Identity, bob: Identity, message: bytes, flip: int
) -> None:
    a = Connection.initiate(keys(alice), hello(alice), now=0.0, expected_id=bob.id.key)
    b = Connection.respond(keys(bob), hello(bob), now=0.0)
    wire = bytearray(a.data_to_send())
    wire[flip % len(wire)] ^= 1 << (flip % 8)
    try:
        b.receive_data(bytes(wire) + message, 0.0)
    except ProtocolError:
        assert b.state is State.CLOSED


def test_injected_ephemeral_keys_make_the_transcript_reproducible() -> None:
    alice = Identity.from_seed(bytes(range(32)))
    bob = Identity.from_seed(bytes(range(1, 33)))

    def transcript() -> list[bytes]:
        a = Connection.initiate(keys(alice), hello(alice), now=0.0, ephemeral=bytes([7]) * 32)
        b = Connection.respond(keys(bob), hello(bob), now=0.0, ephemeral=bytes([9]) * 32)
        wire = []
        for _ in range(2):
            out = a.data_to_send()
            wire.append(bytes(out))
            b.receive_data(out, 0.0)
            out = b.data_to_send()
            wire.append(bytes(out))
            a.receive_data(out, 0.0)
        a.send_message({"t": "x"})
        wire.append(bytes(a.data_to_send()))
        return wire

    first, second = transcript(), transcript()
    assert first == second
    assert first[0].startswith(b"\x00\x2bpeerkit/1 Noise_XX_25519_ChaChaPoly_BLAKE2b")


def test_a_limit_decodes_a_few_messages_at_a_time_and_the_rest_wait(alice: Identity, bob: Identity) -> None:
    # A read full of small messages is decoded ``limit`` at a time: the others wait undecoded
    # (frames_waiting) and come, in order, from calls with no new input; then the end is clean.
    a, b, _, _ = handshake(alice, bob)
    for n in range(100):
        a.send_message({"t": "m", "n": n})
    data = a.data_to_send()
    events = b.receive_data(data, 0.0, 16)
    assert len(events) == 16
    assert b.frames_waiting
    while b.frames_waiting:
        more = b.receive_data(b"", 0.0, 16)
        assert 1 <= len(more) <= 16
        events += more
    assert [e.message["n"] for e in events if isinstance(e, MessageReceived)] == list(range(100))
    b.receive_eof()
    assert b.state is State.CLOSED


def test_connections_may_share_where_they_decrypt_large_messages(alice: Identity, bob: Identity) -> None:
    # Two of bob's connections decrypt their messages over 4 KiB into one buffer: what each
    # received is whole after the other used the buffer (every value is copied out of it).
    shared = bytearray(MAX_PLAINTEXT)
    a1, b1, _, _ = handshake(alice, bob, scratch=shared)
    a2, b2, _, _ = handshake(alice, bob, scratch=shared)
    a1.send_message({"t": "d", "d": b"x" * 10_000})
    a2.send_message({"t": "d", "d": b"y" * 60_000})
    (first,) = transfer(a1, b1)
    (second,) = transfer(a2, b2)
    assert isinstance(first, MessageReceived)
    assert isinstance(second, MessageReceived)
    assert first.message["d"] == b"x" * 10_000
    assert second.message["d"] == b"y" * 60_000
    assert shared[:3] != bytes(3)  # (it was used)
    with pytest.raises(ValueError, match="scratch is 100 bytes"):
        Connection.respond(keys(bob), hello(bob), now=0.0, scratch=bytearray(100))


def test_send_many_queues_each_message_as_its_own_frame_in_one_buffer(alice: Identity, bob: Identity) -> None:
    a, b, _, _ = handshake(alice, bob, cipher="AESGCM")
    first, second = messages.encode({"t": "x", "d": bytes(MAX_PLAINTEXT - 13)}), messages.encode({"t": "y"})
    a.send_many([[first[:5], memoryview(first)[5:]], [second]])
    assert len(a._buffer) == 1  # one write for both
    events = transfer(a, b)
    assert [e.message["t"] for e in events if isinstance(e, MessageReceived)] == ["x", "y"]
    # A message too large (or empty) anywhere in the batch: an error naming it, nothing queued.
    for bad in ([b""], [bytes(MAX_PLAINTEXT + 1)]):
        with pytest.raises(ValueError, match="a message holds 1 to 65519"):
            a.send_many([[second], bad])
        assert a.data_to_send() == b""
    a.send_many([[second]])  # (the nonces did not move: the peer still reads what follows)
    assert [e.message for e in transfer(a, b) if isinstance(e, MessageReceived)] == [{"t": "y"}]
    c = Connection.initiate(keys(alice), hello(alice), now=0.0)
    with pytest.raises(RuntimeError, match="cannot send a message on a connection in state"):
        c.send_many([[second]])
