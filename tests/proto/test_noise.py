"""Noise misuse, attacks, and interoperability with the ``noiseprotocol`` package."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from peerkit.errors import HandshakeError, ProtocolError
from peerkit.proto.crypto import LowOrderPoint, public_key
from peerkit.proto.noise import MAX_NONCE, CipherState, HandshakeState

XX = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
IK = "Noise_IK_25519_ChaChaPoly_BLAKE2b"

# Points of order 1, 2, 4 and 8 on Curve25519 (RFC 7748 section 7 and the libsodium blocklist).
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def _pair(name: str = XX) -> tuple[HandshakeState, HandshakeState]:
    si, sr = os.urandom(32), os.urandom(32)
    rs = public_key(sr) if "_IK_" in name else None
    return HandshakeState(name, True, b"pro", s=si, rs=rs), HandshakeState(name, False, b"pro", s=sr)


def _complete(i: HandshakeState, r: HandshakeState) -> None:
    r.read_message(i.write_message(b""))
    if not r.is_complete:
        i.read_message(r.write_message(b""))
    if not i.is_complete:
        r.read_message(i.write_message(b""))


def test_a_full_handshake_agrees_on_everything() -> None:
    i, r = _pair()
    _complete(i, r)
    assert i.is_complete
    assert r.is_complete
    assert i.handshake_hash == r.handshake_hash
    assert i.remote_static == r.local_static_public
    i1, i2 = i.split()
    r1, r2 = r.split()
    assert r1.decrypt_with_ad(b"ad", i1.encrypt_with_ad(b"ad", b"x")) == b"x"
    assert i2.decrypt_with_ad(b"", r2.encrypt_with_ad(b"", b"y")) == b"y"


def test_a_different_prologue_fails_the_first_authenticated_message() -> None:
    si, sr = os.urandom(32), os.urandom(32)
    i = HandshakeState(XX, True, b"peerkit/1 Noise_XX_25519_ChaChaPoly_BLAKE2b", s=si)
    r = HandshakeState(XX, False, b"peerkit/1 Noise_XX_25519_ChaChaPoly_BLAKE2b ", s=sr)
    r.read_message(i.write_message(b""))
    with pytest.raises(HandshakeError, match="failed authentication"):
        i.read_message(r.write_message(b""))


def test_wrong_message_order() -> None:
    i, r = _pair()
    with pytest.raises(HandshakeError, match="cannot write handshake message 1 now: it is the initiator's"):
        r.write_message(b"")
    with pytest.raises(HandshakeError, match="cannot read handshake message 1 now"):
        i.read_message(b"x" * 32)
    r.read_message(i.write_message(b""))
    with pytest.raises(HandshakeError, match="it is the responder's"):
        i.write_message(b"")


def test_messages_after_completion_are_refused() -> None:
    i, r = _pair()
    _complete(i, r)
    with pytest.raises(HandshakeError, match="already complete"):
        i.write_message(b"")
    with pytest.raises(HandshakeError, match="already complete"):
        r.read_message(b"x")


def test_split_before_completion_is_refused() -> None:
    i, _ = _pair()
    with pytest.raises(HandshakeError, match="not complete"):
        i.split()


def test_messages_over_65535_bytes() -> None:
    i, r = _pair()
    with pytest.raises(HandshakeError, match="would be 65568 bytes; the Noise limit is 65535"):
        i.write_message(bytes(65536))
    # Nothing was changed: the handshake goes on.
    r.read_message(i.write_message(bytes(65535 - 32)))
    with pytest.raises(HandshakeError, match="handshake message is 65536 bytes"):
        i.read_message(bytes(65536))


@pytest.mark.parametrize("cut", [0, 1, 31, 32, 47, 48, 95])
def test_truncated_messages(cut: int) -> None:
    i, r = _pair()
    r.read_message(i.write_message(b""))
    message = r.write_message(b"hello")
    with pytest.raises(HandshakeError, match=r"truncated|failed authentication"):
        i.read_message(message[:cut])


@pytest.mark.parametrize("bit", [0, 7, 300, 500, 800])
def test_bit_flipped_messages(bit: int) -> None:
    i, r = _pair()
    r.read_message(i.write_message(b""))
    message = bytearray(r.write_message(b"a payload of some length"))
    message[bit // 8 % len(message)] ^= 1 << (bit % 8)
    with pytest.raises(HandshakeError):
        i.read_message(bytes(message))
    with pytest.raises(HandshakeError, match="already failed"):
        i.read_message(bytes(message))


@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_ephemeral_keys_are_refused(point: bytes) -> None:
    _, r = _pair()
    r.read_message(point)  # XX message 1 is the bare ephemeral key
    with pytest.raises(LowOrderPoint, match="low-order"):
        r.write_message(b"")  # ee


@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_keys_in_ik_are_refused_while_reading(point: bytes) -> None:
    _, r = _pair(IK)
    with pytest.raises(HandshakeError, match="low-order"):
        r.read_message(point + bytes(80))  # es with a low-order e


def test_low_order_static_key_given_locally_fails_cleanly() -> None:
    i = HandshakeState(IK, True, s=os.urandom(32), rs=LOW_ORDER[0])
    with pytest.raises(HandshakeError, match="low-order"):
        i.write_message(b"")


def test_nonce_exhaustion() -> None:
    key = os.urandom(32)
    enc, dec = CipherState(key), CipherState(key)
    enc.set_nonce(MAX_NONCE - 1)
    dec.set_nonce(MAX_NONCE - 1)
    assert dec.decrypt_with_ad(b"", enc.encrypt_with_ad(b"", b"last")) == b"last"
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        enc.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(ProtocolError, match="nonce exhausted"):
        dec.decrypt_with_ad(b"", bytes(20))
    with pytest.raises(ValueError, match="outside"):
        enc.set_nonce(2**64)


def test_failed_decryption_does_not_advance_the_nonce() -> None:
    key = os.urandom(32)
    enc, dec = CipherState(key), CipherState(key)
    good = enc.encrypt_with_ad(b"", b"payload")
    bad = bytes([good[0] ^ 1]) + good[1:]
    with pytest.raises(ProtocolError, match="decryption failed"):
        dec.decrypt_with_ad(b"", bad)
    with pytest.raises(ProtocolError, match="shorter than its 16-byte tag"):
        dec.decrypt_with_ad(b"", b"short")
    assert dec.decrypt_with_ad(b"", good) == b"payload"
    assert dec.n == 1


def test_transport_size_limits() -> None:
    c = CipherState(os.urandom(32))
    assert len(c.encrypt_with_ad(b"", bytes(65519))) == 65535
    with pytest.raises(ProtocolError, match="at most 65519 bytes of plaintext"):
        c.encrypt_with_ad(b"", bytes(65520))
    with pytest.raises(ProtocolError, match="the Noise limit is 65535"):
        c.decrypt_with_ad(b"", bytes(65536))


def test_rekey_changes_the_key_on_both_sides() -> None:
    key = os.urandom(32)
    enc, dec = CipherState(key), CipherState(key)
    enc.rekey()
    dec.rekey()
    assert enc.k != key
    assert dec.decrypt_with_ad(b"", enc.encrypt_with_ad(b"", b"x")) == b"x"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"protocol_name": "Noise_XX_448_ChaChaPoly_BLAKE2b"}, ValueError, "unsupported DH"),
        ({"protocol_name": "Noise_XX_25519_AESGCMSIV_BLAKE2b"}, ValueError, "unsupported Noise cipher"),
        ({"protocol_name": "Noise_XX_25519_ChaChaPoly_SHA512"}, ValueError, "unsupported Noise hash"),
        (
            {"protocol_name": "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"},
            ValueError,
            "unsupported handshake pattern",
        ),
        ({"protocol_name": "nonsense"}, ValueError, "malformed"),
        ({"protocol_name": 5}, TypeError, "must be str"),
        ({"protocol_name": XX, "s": None}, ValueError, "needs this side's static key"),
        ({"protocol_name": IK, "s": os.urandom(32)}, ValueError, "needs the remote static key"),
        ({"protocol_name": XX, "s": b"short"}, ValueError, "5 bytes; X25519 keys are 32"),
        ({"protocol_name": XX, "s": "text"}, TypeError, "must be bytes"),
    ],
)
def test_constructor_errors(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    kwargs.setdefault("s", os.urandom(32))
    with pytest.raises(error, match=match):
        HandshakeState(initiator=True, **kwargs)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from([XX, IK]), st.integers(0, 2))
def test_read_message_only_ever_raises_handshake_error(data: bytes, name: str, step: int) -> None:
    i, r = _pair(name)
    target = r
    if step >= 1:
        r.read_message(i.write_message(b""))
        target = i
        if step == 2 and name == XX:
            i.read_message(r.write_message(b""))
            target = r
        elif step == 2:
            target = i
    with contextlib.suppress(HandshakeError):
        target.read_message(data)


# -- interoperability with the noiseprotocol package ----------------------------------------


def _theirs(name: str, initiator: bool, s: bytes, rs: bytes | None) -> NoiseConnection:
    conn = NoiseConnection.from_name(name.encode())
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(b"peerkit interop")
    conn.set_keypair_from_private_bytes(Keypair.STATIC, s)
    if rs is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("pattern", ["XX", "IK"])
@pytest.mark.parametrize("cipher", ["ChaChaPoly", "AESGCM"])
@pytest.mark.parametrize("hash_name", ["BLAKE2b", "SHA256"])
@pytest.mark.parametrize("we_initiate", [True, False])
def test_interop_with_noiseprotocol(pattern: str, cipher: str, hash_name: str, we_initiate: bool) -> None:
    name = f"Noise_{pattern}_25519_{cipher}_{hash_name}"
    s_init, s_resp = os.urandom(32), os.urandom(32)
    rs = public_key(s_resp) if pattern == "IK" else None
    if we_initiate:
        ours = HandshakeState(name, True, b"peerkit interop", s=s_init, rs=rs)
        theirs = _theirs(name, False, s_resp, None)
    else:
        ours = HandshakeState(name, False, b"peerkit interop", s=s_resp)
        theirs = _theirs(name, True, s_init, rs)
    turn_ours = we_initiate
    n = 0
    while not (ours.is_complete and theirs.handshake_finished):
        payload = f"payload {n}".encode()
        if turn_ours:
            assert theirs.read_message(ours.write_message(payload)) == payload
        else:
            assert ours.read_message(theirs.write_message(payload)) == payload
        turn_ours = not turn_ours
        n += 1
    assert ours.handshake_hash == theirs.get_handshake_hash()
    c1, c2 = ours.split()
    send, recv = (c1, c2) if we_initiate else (c2, c1)
    # Small messages, and messages large enough for the transport's OpenSSL path, each way; then
    # both directions rekeyed (the cipher's ENCRYPT at the largest nonce).
    for i, size in enumerate((0, 5, 300, 65535 - 16)):
        mine, yours = bytes([i]) * size, bytes([i + 100]) * size
        assert theirs.decrypt(send.encrypt_with_ad(b"", mine)) == mine
        assert recv.decrypt_with_ad(b"", theirs.encrypt(yours)) == yours
    send.rekey()
    recv.rekey()
    theirs.rekey_inbound_cipher()
    theirs.rekey_outbound_cipher()
    buf = bytearray(b"after rekey" + bytes(16))
    send.encrypt_with_ad_in_place(b"", buf, 0, 11)
    assert theirs.decrypt(bytes(buf)) == b"after rekey"
    out = bytearray(100)
    assert bytes(recv.decrypt_with_ad_into(b"", theirs.encrypt(b"and back"), out)) == b"and back"


def test_in_place_transport_variants_match_the_plain_ones() -> None:
    key = os.urandom(32)
    plain, into = CipherState(key), CipherState(key)
    expected = plain.encrypt_with_ad(b"ad", b"hello")
    frame = bytearray(3 + len(expected))
    into.encrypt_with_ad_into(b"ad", b"hello", frame, 3)
    assert bytes(frame[3:]) == expected
    receiver = CipherState(key)
    scratch = bytearray(100)
    with receiver.decrypt_with_ad_into(b"ad", memoryview(frame)[3:], scratch) as view:
        assert bytes(view) == b"hello"
    assert receiver.n == 1
    with pytest.raises(ProtocolError, match="does not fit the 2-byte buffer"):
        CipherState(key).decrypt_with_ad_into(b"ad", expected, bytearray(2))
    with pytest.raises(ProtocolError, match="no key"):
        CipherState().decrypt_with_ad_into(b"", expected, scratch)
    with pytest.raises(ProtocolError, match="no key"):
        CipherState().encrypt_with_ad_into(b"", b"x", frame, 0)
    bad = bytes([expected[0] ^ 1]) + expected[1:]
    failing = CipherState(key)
    with pytest.raises(ProtocolError, match="decryption failed"):
        failing.decrypt_with_ad_into(b"ad", bad, scratch)
    assert failing.n == 0


def test_in_place_encryption_matches_encrypt_with_ad() -> None:
    key = os.urandom(32)
    expected = CipherState(key).encrypt_with_ad(b"ad", b"payload")
    buf = bytearray(b"xx" + b"payload" + bytes(16))
    CipherState(key).encrypt_with_ad_in_place(b"ad", buf, 2, 7)
    assert bytes(buf[2:]) == expected
    with pytest.raises(ValueError, match="no room"):
        CipherState(key).encrypt_with_ad_in_place(b"", bytearray(10), 2, 7)
