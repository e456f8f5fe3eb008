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
