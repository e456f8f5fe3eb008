"""``transport``: encrypt+decrypt through peerkit's CipherStates beside raw AEAD calls.

Each reference does what a CipherState must at the least: build the 96-bit nonce from a counter and
call the AEAD. The issue's reference is pynacl (``crypto_aead_chacha20poly1305_ietf_encrypt`` /
``_decrypt`` from ``nacl.bindings``); peerkit's transport runs on OpenSSL's ChaCha20-Poly1305
through ``cryptography``, so that backend called raw is shown too, as the honest measure of
peerkit's own overhead.
"""

from __future__ import annotations

import os
import struct

import nacl.bindings as sodium
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from benchmarks.harness import Progress, Result, interleaved, median, ratio
from peerkit.proto.noise import CipherState

NAME = "transport"
ROUNDS = 12
STEPS = 2 * 3 * ROUNDS


def run(progress: Progress, quick: bool = False) -> list[Result]:
    rounds, seconds = (2, 0.1) if quick else (ROUNDS, 0.4)
    key = os.urandom(32)
    pack = struct.Struct("<4xQ").pack
    results = []
    for size in (64, 65536 - 16 - 1):  # 64 B, and the largest Noise plaintext (64 KiB less the tag)
        plaintext = os.urandom(size)
        enc, dec = CipherState(key), CipherState(key)
        counter = [0]  # the reference's nonce counter

        def ours(enc: CipherState = enc, dec: CipherState = dec, plaintext: bytes = plaintext) -> None:
            dec.decrypt_with_ad(b"", enc.encrypt_with_ad(b"", plaintext))

        def raw(plaintext: bytes = plaintext, counter: list[int] = counter) -> None:
            n = counter[0]
            counter[0] = n + 1
            nonce = pack(n)
            ct = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, b"", nonce, key)
            sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ct, b"", nonce, key)

        aead = ChaCha20Poly1305(key)

        def openssl(
            plaintext: bytes = plaintext, counter: list[int] = counter, aead: ChaCha20Poly1305 = aead
        ) -> None:
            n = counter[0]
            counter[0] = n + 1
            nonce = pack(n)
            aead.decrypt(nonce, aead.encrypt(nonce, plaintext, b""), b"")

        rates = interleaved({"peerkit": ours, "pynacl": raw, "openssl": openssl}, rounds, seconds, progress)
        if size == 64:
            figure, unit, scale, target = "64 B encrypt+decrypt/s", "1/s", 1.0, 0.6
        else:
            figure, unit, scale, target = "64 KiB encrypt+decrypt MB/s", "MB/s", size / 1e6, 0.9
        for reference, label, goal in (
            ("pynacl", "raw pynacl AEAD", target),
            ("openssl", "raw OpenSSL AEAD (cryptography)", None),
        ):
            results.append(
                Result(
                    NAME,
                    figure,
                    unit,
                    median(rates["peerkit"]) * scale,
                    label,
                    median(rates[reference]) * scale,
                    ratio(rates["peerkit"], rates[reference]),
                    goal,
                )
            )
    return results
