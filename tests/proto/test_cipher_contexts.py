"""OpenSSL's cipher contexts: made at a key's first large message, at most MAX_CONTEXTS kept; small
messages on a cipher without one go to libsodium."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_connection import handshake

from peerkit import Identity
from peerkit.proto import crypto
from peerkit.proto.crypto import MAX_CONTEXTLESS, TransportCipher

LARGE = b"x" * (MAX_CONTEXTLESS + 1)


@contextlib.contextmanager
def ring(limit: int) -> Iterator[None]:
    # The contexts start from none, and at most ``limit`` are kept.
    saved = crypto._CONTEXTS.__dict__.copy()
    crypto._CONTEXTS.__init__()  # type: ignore[misc]
    saved_limit, crypto.MAX_CONTEXTS = crypto.MAX_CONTEXTS, limit  # type: ignore[misc]
    try:
        yield
    finally:
        crypto.MAX_CONTEXTS = saved_limit  # type: ignore[misc]
        crypto._CONTEXTS.__dict__.update(saved)


def test_a_cipher_makes_its_context_at_its_first_large_message_and_can_let_it_go() -> None:
    key = os.urandom(32)
    with ring(4):
        cipher = TransportCipher(key)
        assert not cipher.holds_context
        sealed = cipher.encrypt(0, b"ad", LARGE)
        assert cipher.holds_context
        cipher.release()
        assert not cipher.holds_context
        assert cipher.decrypt(0, b"ad", sealed) == LARGE  # made again
        assert cipher.holds_context
    assert sealed == crypto.encrypt(key, 0, b"ad", LARGE)


def test_small_messages_make_no_context_and_use_one_that_is_held() -> None:
    key = os.urandom(32)
    small = b"y" * MAX_CONTEXTLESS
    expected = crypto.encrypt(key, 7, b"ad", small)
    with ring(4):
        cipher = TransportCipher(key)
        assert cipher.encrypt(7, b"ad", small) == expected
        frame = bytearray(2 + len(expected))
        cipher.encrypt_into(7, b"ad", small, frame, 2)
        assert frame[2:] == expected
        assert cipher.decrypt(7, b"ad", expected) == small
        out = bytearray(len(small))
        with memoryview(out) as view:
            cipher.decrypt_into(7, b"ad", memoryview(expected), view)
        assert out == small
        assert not cipher.holds_context
        assert crypto._CONTEXTS.ring == []
        cipher.encrypt(0, b"", LARGE)  # (a large message: the context is made)
        assert cipher.holds_context
        cipher._used = False
        assert cipher.decrypt(7, b"ad", expected) == small
        assert cipher._used  # (held: the small message went through it)
        with pytest.raises(crypto.InvalidTag):
            TransportCipher(os.urandom(32)).decrypt(7, b"ad", expected)
        cipher.release()
        with pytest.raises(ValueError, match="no room for"):
            cipher.encrypt_into(7, b"ad", small, bytearray(10), 2)


def test_the_contexts_kept_are_those_of_the_keys_used_lately_and_no_more() -> None:
    with ring(4):
        busy = TransportCipher(os.urandom(32))
        others = [TransportCipher(os.urandom(32)) for _ in range(12)]
        for other in others:
            busy.encrypt(0, b"", LARGE)
            other.encrypt(0, b"", LARGE)
            assert sum(c.holds_context for c in (busy, *others)) <= 4
        assert busy.holds_context  # used between each of the others: never the one let go
        assert others[-1].holds_context
        assert not any(c.holds_context for c in others[:8])


def test_ciphers_used_from_two_threads_at_once_stay_correct() -> None:
    keys = [bytes([i]) * 32 for i in range(12)]
    expected = [crypto.encrypt(k, 0, b"", b"x" * 100) for k in keys]
    wrong: list[int] = []

    def use(ciphers: list[TransportCipher]) -> None:
        for _ in range(300):
            for i, cipher in enumerate(ciphers):
                if cipher.encrypt(0, b"", b"x" * 100) != expected[i]:
                    wrong.append(i)

    with ring(4):
        threads = [threading.Thread(target=use, args=([TransportCipher(k) for k in keys],)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wrong == []
        assert len(crypto._CONTEXTS.ring) <= 4 + 1  # (one more at most, from two appends at once)


@given(
    st.lists(st.tuples(st.integers(0, 7), st.sampled_from(["encrypt", "decrypt", "release"])), max_size=120)
)
def test_contexts_let_go_and_made_again_change_no_byte(steps: list[tuple[int, str]]) -> None:
    keys = [bytes([i]) * 32 for i in range(8)]
    with ring(3):
        ciphers = [TransportCipher(k) for k in keys]
        for n, (i, what) in enumerate(steps):
            cipher = ciphers[i]
            if what == "release":
                cipher.release()
                continue
            plaintext = bytes([n]) * (n * 5)  # (small and large messages)
            sealed = crypto.encrypt(keys[i], n, b"ad", plaintext)  # (libsodium, no context)
            if what == "encrypt":
                assert cipher.encrypt(n, b"ad", plaintext) == sealed
            else:
                assert cipher.decrypt(n, b"ad", sealed) == plaintext
            assert sum(c.holds_context for c in ciphers) <= 3


def test_a_handshake_lets_its_ciphers_go_and_a_closed_connection_its_transport_ones(
    alice: Identity, bob: Identity
) -> None:
    with ring(64):
        a, b, _, _ = handshake(alice, bob)
        a.send_message({"t": "chat", "text": "hi" * MAX_CONTEXTLESS})
        b.receive_data(a.data_to_send(), 0.0)
        held = [c._cipher for side in (a, b) for c in (side._send, side._recv) if c is not None]
        assert sum(c is not None and c.holds_context for c in held) == 2  # a's sending, b's receiving
        # Only those: the handshake's messages are sealed with libsodium, which keeps no context.
        assert sum(c.holds_context for c in crypto._CONTEXTS.ring) == 2
        a.close()
        b.close()
        assert not any(c.holds_context for c in crypto._CONTEXTS.ring)
