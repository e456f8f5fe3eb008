"""``handshake``: full handshakes per second, both sides in one process, sans-IO.

peerkit's ``HandshakeState`` (driven as ``peerkit.proto.connection`` drives it: static public key
known, hello payloads) beside the ``noiseprotocol`` package doing the same pattern with the same
payloads, and beside the crypto floor: the X25519 operations the pattern needs (a fresh ephemeral
key pair per side and every DH of both sides), done directly with pynacl's bindings.

A third reference is the whole of the cryptography the specification asks for, with nothing
around it: the floor's X25519 operations, and every BLAKE2b hash (each ``MixHash``, and the six
hashes of each two-output ``HKDF``: of every ``MixKey`` and of both sides' ``Split``) and every
ChaCha20-Poly1305 encryption and decryption (of the static keys and the payloads, both sides),
each called once in a row. What peerkit takes beyond it is the price of the state machine; what
it takes beyond the floor alone is mostly this work, which no implementation can skip.
"""

from __future__ import annotations

import hashlib

import nacl.bindings as sodium
from noise.connection import Keypair, NoiseConnection

from benchmarks.harness import Progress, Result, interleaved, median, ratio
from peerkit.identity import Identity
from peerkit.proto import messages
from peerkit.proto.noise import PATTERNS, HandshakeState

NAME = "handshake"
ROUNDS = 12
STEPS = 2 * 4 * ROUNDS  # patterns x candidates x rounds


def _dh_count(pattern: str) -> int:
    """DH operations of one complete handshake, both sides."""
    return 2 * sum(token in ("ee", "es", "se", "ss") for msg in PATTERNS[pattern][2] for token in msg)


def _spec_work(pattern: str, payloads: list[bytes]) -> tuple[list[int], list[int]]:
    """The sizes of the BLAKE2b inputs and of the AEAD plaintexts of one complete handshake, both
    sides (see the module's docstring); the prologue's hashes are left out, as peerkit makes them
    once per prologue."""
    hashlen, blocklen, dhlen, taglen = 64, 128, 32, 16
    # HKDF(ck, ikm) with two outputs, as the spec writes it: HMAC(ck, ikm) = temp, then HMAC(temp,
    # 0x01) and HMAC(temp, out1 || 0x02); each HMAC hashes the padded key with the data, then the
    # padded key with that hash.
    outer = blocklen + hashlen

    def hkdf(ikm: int) -> list[int]:
        return [blocklen + ikm, outer, blocklen + 1, outer, blocklen + hashlen + 1, outer]

    hashed: list[int] = []
    sealed: list[int] = []
    initiator_pre, responder_pre, messages = PATTERNS[pattern]
    hashed += [hashlen + dhlen] * 2 * len(initiator_pre + responder_pre)  # (pre-messages, both sides)
    keyed = False
    for message, payload in zip(messages, payloads, strict=True):
        for token in message:
            if token == "e":
                hashed += [hashlen + dhlen] * 2
            elif token == "s":
                if keyed:
                    sealed.append(dhlen)
                hashed += [hashlen + dhlen + (taglen if keyed else 0)] * 2
            else:
                keyed = True
                hashed += hkdf(dhlen) * 2  # (MixKey of the DH's output, both sides)
        if keyed:
            sealed.append(len(payload))
        hashed += [hashlen + len(payload) + (taglen if keyed else 0)] * 2
    hashed += hkdf(0) * 2  # (Split, both sides)
    return hashed, sealed


def run(progress: Progress, quick: bool = False) -> list[Result]:
    rounds, seconds = (2, 0.1) if quick else (ROUNDS, 0.4)
    alice, bob = Identity.generate(), Identity.generate()
    hello_a = messages.encode_hello(messages.Hello(id=alice.id.key, nick="alice", name="laptop"))
    hello_b = messages.encode_hello(messages.Hello(id=bob.id.key, nick="bob", name="desk"))
    si, spi = alice.x25519_private, alice.x25519_public
    sr, spr = bob.x25519_private, bob.x25519_public
    results = []
    for pattern in ("XX", "IK"):
        name = f"Noise_{pattern}_25519_ChaChaPoly_BLAKE2b"
        prologue = b"peerkit/1 " + name.encode()
        ik = pattern == "IK"
        payloads = [hello_a, hello_b] if ik else [b"", hello_b, hello_a]

        def peerkit_handshake(
            name: str = name, ik: bool = ik, payloads: list[bytes] = payloads, prologue: bytes = prologue
        ) -> None:
            i = HandshakeState(name, True, prologue, s=si, rs=spr if ik else None, s_public=spi)
            r = HandshakeState(name, False, prologue, s=sr, s_public=spr)
            for n, payload in enumerate(payloads):
                sender, receiver = (i, r) if n % 2 == 0 else (r, i)
                receiver.read_message(sender.write_message(payload))
            i.split()
            r.split()

        def noiseprotocol_handshake(
            name: str = name, ik: bool = ik, payloads: list[bytes] = payloads, prologue: bytes = prologue
        ) -> None:
            i = NoiseConnection.from_name(name.encode())
            r = NoiseConnection.from_name(name.encode())
            i.set_as_initiator()
            r.set_as_responder()
            for conn, key in ((i, si), (r, sr)):
                conn.set_prologue(prologue)
                conn.set_keypair_from_private_bytes(Keypair.STATIC, key)
            if ik:
                i.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, spr)
            i.start_handshake()
            r.start_handshake()
            for n, payload in enumerate(payloads):
                sender, receiver = (i, r) if n % 2 == 0 else (r, i)
                receiver.read_message(sender.write_message(payload))

        dh_count = _dh_count(pattern)

        def crypto_floor(dh_count: int = dh_count) -> None:
            e1 = sodium.randombytes(32)
            e2 = sodium.randombytes(32)
            p1 = sodium.crypto_scalarmult_base(e1)
            sodium.crypto_scalarmult_base(e2)
            for _ in range(dh_count):
                sodium.crypto_scalarmult(e2, p1)

        spec_work = _spec_work(pattern, payloads)

        def spec_floor(dh_count: int = dh_count, spec_work: tuple[list[int], list[int]] = spec_work) -> None:
            crypto_floor(dh_count)
            new = hashlib.blake2b
            hashed, sealed = spec_work
            data = bytes(512)
            for size in hashed:  # (each a hash of as many bytes as the spec's)
                new(data[:size]).digest()
            key, nonce = bytes(32), bytes(12)
            for size in sealed:  # (each sealed by its sender and opened by its receiver)
                box = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(bytes(size), data[:64], nonce, key)
                sodium.crypto_aead_chacha20poly1305_ietf_decrypt(box, data[:64], nonce, key)

        rates = interleaved(
            {
                "peerkit": peerkit_handshake,
                "noiseprotocol": noiseprotocol_handshake,
                "floor": crypto_floor,
                "spec": spec_floor,
            },
            rounds,
            seconds,
            progress,
        )
        references = (
            ("noiseprotocol", "noiseprotocol", 2.0),
            ("floor", f"crypto floor ({dh_count} DH + 2 keygen)", 0.8),
            (
                "spec",
                f"all the spec's crypto (the floor, {len(spec_work[0])} hashes, {len(spec_work[1])} AEAD)",
                None,
            ),
        )
        for key, label, target in references:
            results.append(
                Result(
                    NAME,
                    f"{pattern} handshakes/s",
                    "1/s",
                    median(rates["peerkit"]),
                    label,
                    median(rates[key]),
                    ratio(rates["peerkit"], rates[key]),
                    target if pattern == "XX" else None,
                )
            )
    return results
