"""Every published cacophony vector (25519, ChaChaPoly, BLAKE2b/SHA256) reproduced byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from peerkit.proto.crypto import public_key
from peerkit.proto.noise import PATTERNS, HandshakeState

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "cacophony-25519-chachapoly.json").read_text()
)["vectors"]


def _key(vector: dict[str, Any], field: str) -> bytes | None:
    value = vector.get(field)
    return bytes.fromhex(value) if value is not None else None


def test_the_vector_file_covers_every_base_pattern_with_both_hashes() -> None:
    names = {v["protocol_name"] for v in VECTORS}
    expected = {f"Noise_{p}_25519_ChaChaPoly_{h}" for p in PATTERNS for h in ("BLAKE2b", "SHA256")}
    assert names == expected


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    name = vector["protocol_name"]
    init = HandshakeState(
        name,
        initiator=True,
        prologue=bytes.fromhex(vector["init_prologue"]),
        s=_key(vector, "init_static"),
        e=_key(vector, "init_ephemeral"),
        rs=_key(vector, "init_remote_static"),
    )
    resp = HandshakeState(
        name,
        initiator=False,
        prologue=bytes.fromhex(vector["resp_prologue"]),
        s=_key(vector, "resp_static"),
        e=_key(vector, "resp_ephemeral"),
        rs=_key(vector, "resp_remote_static"),
    )
    messages = vector["messages"]
    pattern = name.split("_")[1]
    one_way = len(pattern) == 1
    count = len(PATTERNS[pattern][2])
    for i, message in enumerate(messages[:count]):
        sender, receiver = (init, resp) if i % 2 == 0 else (resp, init)
        payload = bytes.fromhex(message["payload"])
        ciphertext = sender.write_message(payload)
        assert ciphertext.hex() == message["ciphertext"], f"message {i}"
        assert receiver.read_message(ciphertext) == payload
    assert init.is_complete
    assert resp.is_complete
    assert init.handshake_hash == resp.handshake_hash
    if "handshake_hash" in vector:
        assert init.handshake_hash.hex() == vector["handshake_hash"]
    # Each side learned the other's static key where the pattern carries one.
    if vector.get("resp_static"):
        assert init.remote_static == public_key(bytes.fromhex(vector["resp_static"]))
    if vector.get("init_static"):
        assert resp.remote_static == public_key(bytes.fromhex(vector["init_static"]))

    i_send, i_recv = init.split()
    r_recv, r_send = resp.split()
    for i, message in enumerate(messages[count:], start=count):
        from_initiator = one_way or i % 2 == 0
        enc, dec = (i_send, r_recv) if from_initiator else (r_send, i_recv)
        payload = bytes.fromhex(message["payload"])
        ciphertext = enc.encrypt_with_ad(b"", payload)
        assert ciphertext.hex() == message["ciphertext"], f"transport message {i}"
        assert dec.decrypt_with_ad(b"", ciphertext) == payload


@pytest.mark.parametrize("hash_name", ["BLAKE2b", "SHA256"])
def test_symmetric_state_alone_reproduces_the_nn_vector(hash_name: str) -> None:
    """Drive NN by hand through the spec's SymmetricState operations (no HandshakeState)."""
    from peerkit.proto.crypto import dh, hash_function
    from peerkit.proto.noise import SymmetricState

    name = f"Noise_NN_25519_ChaChaPoly_{hash_name}"
    vector = next(v for v in VECTORS if v["protocol_name"] == name)
    e_i = bytes.fromhex(vector["init_ephemeral"])
    e_r = bytes.fromhex(vector["resp_ephemeral"])
    sides = [SymmetricState(name.encode(), hash_function(hash_name)) for _ in range(2)]
    for ss in sides:
        ss.mix_hash(bytes.fromhex(vector["init_prologue"]))
    init, resp = sides
    # -> e
    payload = bytes.fromhex(vector["messages"][0]["payload"])
    for ss in sides:
        ss.mix_hash(public_key(e_i))
    message = public_key(e_i) + init.encrypt_and_hash(payload)
    assert message.hex() == vector["messages"][0]["ciphertext"]
    assert resp.decrypt_and_hash(message[32:]) == payload
    # <- e, ee
    payload = bytes.fromhex(vector["messages"][1]["payload"])
    for ss in sides:
        ss.mix_hash(public_key(e_r))
    init.mix_key(dh(e_i, public_key(e_r)))
    resp.mix_key(dh(e_r, public_key(e_i)))
    message = public_key(e_r) + resp.encrypt_and_hash(payload)
    assert message.hex() == vector["messages"][1]["ciphertext"]
    assert init.decrypt_and_hash(message[32:]) == payload
    assert init.get_handshake_hash().hex() == vector["handshake_hash"]
    i_send, _ = init.split()
    payload = bytes.fromhex(vector["messages"][2]["payload"])
    assert i_send.encrypt_with_ad(b"", payload).hex() == vector["messages"][2]["ciphertext"]


def test_mix_key_and_hash_changes_key_and_hash_alike_on_both_sides() -> None:
    from peerkit.proto.crypto import hash_function
    from peerkit.proto.noise import SymmetricState

    a, b = (
        SymmetricState(b"Noise_NNpsk0_25519_ChaChaPoly_BLAKE2b", hash_function("BLAKE2b")) for _ in range(2)
    )
    before = a.h
    a.mix_key_and_hash(b"psk" * 10)
    b.mix_key_and_hash(b"psk" * 10)
    assert a.h == b.h != before
    assert b.decrypt_and_hash(a.encrypt_and_hash(b"secret")) == b"secret"
