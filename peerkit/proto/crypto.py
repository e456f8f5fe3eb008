"""The cryptographic primitives of the Noise protocol, on libsodium (through pynacl) and OpenSSL.

This is the only module that calls pynacl's low-level bindings or ``cryptography``. X25519, the
Ed25519 conversions and the handshake's one-shot ChaChaPoly encryptions use libsodium; the
transport's :class:`TransportCipher` uses OpenSSL's ChaCha20-Poly1305 (same bytes, much faster on
bulk data), and AESGCM is OpenSSL's throughout. It offers exactly what the Noise specification
(revision 34, section 4) asks of a DH function, cipher functions and hash functions:

- ``25519``: X25519 (RFC 7748). A DH whose result is all zeros (a low-order public key) is refused.
- ``ChaChaPoly``: ChaCha20-Poly1305 of RFC 8439 with the 96-bit nonce made of 32 zero bits and the
  64-bit little-endian counter ``n``.
- ``AESGCM``: AES-256 in GCM with a 128-bit tag, the 96-bit nonce made of 32 zero bits and the
  64-bit big-endian counter ``n``. Several times faster than ChaChaPoly on bulk data where the CPU
  has AES instructions (:func:`aes_is_fast`), slower and not constant-time in software elsewhere.
- ``BLAKE2b`` and ``SHA256``, with HMAC (RFC 2104) and the spec's HKDF built on them.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import struct
from collections.abc import Callable
from typing import ClassVar, Final, NamedTuple, Protocol, Self, TypeVar

import nacl.bindings as _sodium
import nacl.exceptions
from cryptography.exceptions import InvalidTag as _OpenSSLInvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as _AESGCM
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305 as _ChaCha20Poly1305
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib

from peerkit.errors import HandshakeError, ProtocolError

__all__ = (
    "AESGCM",
    "CHACHAPOLY",
    "DHLEN",
    "TAGLEN",
    "AesGcmTransportCipher",
    "CipherFunction",
    "HashFunction",
    "InvalidTag",
    "LowOrderPoint",
    "TransportCipher",
    "aes_in_cpuinfo",
    "aes_is_fast",
    "aesgcm_decrypt",
    "aesgcm_encrypt",
    "cipher_function",
    "decrypt",
    "dh",
    "ed25519_pk_to_x25519",
    "ed25519_sk_to_x25519",
    "encrypt",
    "generate_keypair",
    "hash_function",
    "public_key",
)

DHLEN: Final = 32
TAGLEN: Final = 16

# X25519 and the handshake's AEAD calls go to libsodium through pynacl's cffi module directly: the
# public wrappers in nacl.bindings re-check every argument in Python, which doubles the cost of a
# small message. Every argument is checked here once, where the Noise state machine builds it.
_CHACHA_NONCE: Final = struct.Struct("<4xQ")
_AESGCM_NONCE: Final = struct.Struct(">4xQ")
_nonce = _CHACHA_NONCE.pack
_nonce_aesgcm = _AESGCM_NONCE.pack
_aead_encrypt = _lib.crypto_aead_chacha20poly1305_ietf_encrypt
_aead_decrypt = _lib.crypto_aead_chacha20poly1305_ietf_decrypt
# Every buffer is fully written by libsodium before it is read: skip cffi's zero-filling.
_new = _ffi.new_allocator(should_clear_after_alloc=False)
_buffer = _ffi.buffer
_from_buffer = _ffi.from_buffer
_NULL = _ffi.NULL
_scalarmult = _lib.crypto_scalarmult
_scalarmult_base = _lib.crypto_scalarmult_base


class _HashObject(Protocol):
    def digest(self) -> bytes: ...
    def update(self, data: bytes, /) -> None: ...
    def copy(self) -> Self: ...


class InvalidTag(ProtocolError):
    """A ciphertext failed authentication: it was truncated, altered, or made with another key."""


#: What :class:`InvalidTag` says when a ciphertext does not authenticate.
_TAMPERED: Final = "decryption failed: the message was truncated, altered, or sealed with another key"


class LowOrderPoint(HandshakeError):
    """A Diffie-Hellman public key is of low order, so the shared secret would be all zeros."""


def generate_keypair() -> tuple[bytes, bytes]:
    """A new X25519 key pair ``(private, public)``, the private key from libsodium's CSPRNG."""
    private = _new("unsigned char[]", DHLEN)
    public = _new("unsigned char[]", DHLEN)
    # crypto_box keys are X25519 keys: random bytes, then the base-point multiplication.
    _lib.crypto_box_keypair(public, private)
    return bytes(_buffer(private, DHLEN)), bytes(_buffer(public, DHLEN))


def public_key(private_key: bytes) -> bytes:
    """Return the X25519 public key of ``private_key`` (32 bytes)."""
    if len(private_key) != DHLEN:
        raise ValueError(f"private key is {len(private_key)} bytes; X25519 keys are {DHLEN} bytes")
    out = _new("unsigned char[]", DHLEN)
    _scalarmult_base(out, private_key)
    return bytes(_buffer(out, DHLEN))


def dh(private_key: bytes, public: bytes) -> bytes:
    """Return the X25519 shared secret of ``private_key`` and ``public``.

    :raises LowOrderPoint: when ``public`` is a low-order point (the result would be all zeros).
    """
    if len(public) != DHLEN or len(private_key) != DHLEN:
        raise HandshakeError(f"X25519 keys are {DHLEN} bytes; got {len(private_key)} and {len(public)}")
    out = _new("unsigned char[]", DHLEN)
    if _scalarmult(out, private_key, public) != 0:
        raise LowOrderPoint("remote public key is a low-order point; refusing it")
    return bytes(_buffer(out, DHLEN))


def encrypt(key: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    """ChaChaPoly encryption of ``plaintext`` with nonce ``n``; returns ciphertext and tag.

    ``key`` must be 32 bytes and ``n`` below 2**64 (the CipherState guarantees both).
    """
    size = len(plaintext) + TAGLEN
    out = _new("unsigned char[]", size)
    _aead_encrypt(out, _NULL, plaintext, len(plaintext), ad, len(ad), _NULL, _nonce(n), key)
    return bytes(_buffer(out, size))


#: Messages of at most this many bytes (plaintext) that a cipher holding no OpenSSL context seals
#: or opens go to libsodium, which keeps no context. In a loop it is up to half a microsecond
#: slower than OpenSSL with a context made at this size; but it makes none (1-2 µs in a loop, 5-15
#: µs in the cold caches of a node waking for one ping), which a node with more channels than
#: :data:`MAX_CONTEXTS` would let go again before the key's next message. Only keys that carry
#: larger messages hold a context.
MAX_CONTEXTLESS: Final = 256

#: OpenSSL cipher contexts kept at most, in all. Each key's context costs some 2.3 KB of memory
#: that Python's own accounting (tracemalloc) never sees; making one again costs about 2 µs
#: (1 µs to make, the rest in cold caches). So a node with thousands of idle channels keeps
#: contexts for the keys in use lately only, not two per channel for good (see
#: :class:`TransportCipher`).
MAX_CONTEXTS: Final = 2048


class _Contexts:
    # The ciphers that hold an OpenSSL context, in a ring swept by a "clock" hand (second
    # chance): a cipher used since the hand last passed it keeps its context once more. (Shared
    # by the threads of a process: each step is one list or attribute operation, so another
    # thread at most sees a context let go early, which a cipher in use simply makes again.)
    def __init__(self) -> None:
        self.ring: list[TransportCipher] = []
        self.hand = 0

    def take(self, cipher: TransportCipher, limit: int) -> None:
        # A place for ``cipher``'s new context: a free one, or that of the cipher the hand finds
        # unused since its last pass (whose context it drops).
        ring = self.ring
        if len(ring) < limit:
            ring.append(cipher)
            return
        hand = self.hand % len(ring)
        while True:
            holder = ring[hand]
            if holder._aead is None:  # (released: a free place)
                break
            if not holder._used:
                holder._aead = None
                break
            holder._used = False
            hand = (hand + 1) % len(ring)
        ring[hand] = cipher
        self.hand = hand + 1


_CONTEXTS = _Contexts()


class TransportCipher:
    """ChaChaPoly with one fixed key, for a CipherState's many transport messages.

    It runs on OpenSSL (through ``cryptography``), whose ChaCha20-Poly1305 is several times faster
    than libsodium's on bulk data where the CPU has AVX2/AVX-512; the bytes are the same (RFC 8439).
    OpenSSL's context for the key is made at the first message larger than
    :data:`MAX_CONTEXTLESS` bytes and kept while the key is in use: at most :data:`MAX_CONTEXTS`
    are kept (the least lately used go first, and are made again if their key is used again), and
    :meth:`release` lets go of one at once. Small messages use the context when the cipher holds
    one, and libsodium when it does not.
    """

    __slots__ = ("_aead", "_used", "key")

    #: OpenSSL's AEAD for the cipher, its nonce from ``n``, and the largest message sealed or
    #: opened without a context (by libsodium; -1: none).
    _AEAD: ClassVar[type[_ChaCha20Poly1305] | type[_AESGCM]] = _ChaCha20Poly1305
    _NONCE: ClassVar[struct.Struct] = _CHACHA_NONCE
    _CONTEXTLESS: ClassVar[int] = MAX_CONTEXTLESS

    def __init__(self, key: bytes) -> None:
        #: The 32-byte key.
        self.key = key
        self._aead: _ChaCha20Poly1305 | _AESGCM | None = None
        self._used = False

    def _context(self) -> _ChaCha20Poly1305 | _AESGCM:
        self._used = True
        aead = self._aead
        if aead is None:
            aead = self._aead = self._AEAD(self.key)
            _CONTEXTS.take(self, MAX_CONTEXTS)
        return aead

    @property
    def holds_context(self) -> bool:
        """Whether OpenSSL's context for the key is kept now."""
        return self._aead is not None

    def release(self) -> None:
        """Let go of OpenSSL's context now (the next message makes it again)."""
        self._aead = None

    def encrypt(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """Ciphertext and tag of ``plaintext`` under nonce ``n``."""
        if self._aead is None and len(plaintext) <= self._CONTEXTLESS:
            return encrypt(self.key, n, ad, bytes(plaintext))
        return self._context().encrypt(self._NONCE.pack(n), plaintext, ad)

    def encrypt_into(self, n: int, ad: bytes, plaintext: bytes, out: bytearray, offset: int) -> None:
        """Write ciphertext and tag of ``plaintext`` into ``out[offset:offset + len(plaintext) + 16]``."""
        size = len(plaintext)
        with memoryview(out) as view:
            into = view[offset : offset + size + TAGLEN]
            if self._aead is None and size <= self._CONTEXTLESS:
                if len(into) != size + TAGLEN:
                    raise ValueError(f"no room for {size + TAGLEN} bytes at {offset} of {len(out)}")
                _aead_encrypt(
                    _from_buffer(into), _NULL, bytes(plaintext), size, ad, len(ad), _NULL, _nonce(n), self.key
                )
                return
            self._context().encrypt_into(self._NONCE.pack(n), plaintext, ad, into)

    def encrypt_in_place(self, n: int, ad: bytes, buf: bytearray, offset: int, length: int) -> None:
        """Encrypt ``buf[offset:offset + length]`` where it lies, the tag following it in ``buf``."""
        aead = self._context()
        nonce = self._NONCE.pack(n)
        with memoryview(buf) as view:
            if _in_place_works(self._AEAD):
                into = view[offset : offset + length + TAGLEN]
                aead.encrypt_into(nonce, view[offset : offset + length], ad, into)
            else:  # pragma: no cover - only with a cryptography that refuses overlapping buffers
                plaintext = bytes(view[offset : offset + length])
                aead.encrypt_into(nonce, plaintext, ad, view[offset : offset + length + TAGLEN])

    def decrypt(self, n: int, ad: bytes, ciphertext: bytes | memoryview) -> bytes:
        """The plaintext of ``ciphertext``.

        :raises InvalidTag: when it does not authenticate.
        """
        if len(ciphertext) < TAGLEN:
            raise InvalidTag(f"ciphertext is {len(ciphertext)} bytes, shorter than its {TAGLEN}-byte tag")
        if self._aead is None and len(ciphertext) <= self._CONTEXTLESS + TAGLEN:
            return decrypt(self.key, n, ad, bytes(ciphertext))
        try:
            return self._context().decrypt(self._NONCE.pack(n), ciphertext, ad)
        except _OpenSSLInvalidTag:
            raise InvalidTag(_TAMPERED) from None

    def decrypt_into(self, n: int, ad: bytes, ciphertext: bytes | memoryview, out: memoryview) -> None:
        """Write the plaintext of ``ciphertext`` into ``out``, which is exactly its size.

        :raises InvalidTag: when it does not authenticate (``out`` then holds nothing useful).
        """
        if len(ciphertext) < TAGLEN:
            raise InvalidTag(f"ciphertext is {len(ciphertext)} bytes, shorter than its {TAGLEN}-byte tag")
        if self._aead is None and len(ciphertext) <= self._CONTEXTLESS + TAGLEN:
            out[:] = decrypt(self.key, n, ad, bytes(ciphertext))
            return
        try:
            self._context().decrypt_into(self._NONCE.pack(n), ciphertext, ad, out)
        except _OpenSSLInvalidTag:
            raise InvalidTag(_TAMPERED) from None


class AesGcmTransportCipher(TransportCipher):
    """AESGCM with one fixed key, for a CipherState's many transport messages (OpenSSL's, with
    its context kept as :class:`TransportCipher` keeps one; small messages use it too)."""

    __slots__ = ()

    _AEAD = _AESGCM
    _NONCE = _AESGCM_NONCE
    _CONTEXTLESS = -1


_IN_PLACE: dict[type, bool] = {}


def _in_place_works(kind: type[_ChaCha20Poly1305] | type[_AESGCM]) -> bool:
    """Whether OpenSSL (through ``cryptography``) encrypts correctly with input and output at the
    same address; checked once per cipher, against an out-of-place encryption."""
    works = _IN_PLACE.get(kind)
    if works is None:
        aead = kind(bytes(range(32)))
        nonce = bytes(12)
        plaintext = bytes(range(200))
        buf = bytearray(plaintext + bytes(TAGLEN))
        try:
            with memoryview(buf) as view:
                aead.encrypt_into(nonce, view[:200], b"ad", view)
            works = bytes(buf) == aead.encrypt(nonce, plaintext, b"ad")
        except (ValueError, TypeError, BufferError):  # pragma: no cover - depends on the version
            works = False
        _IN_PLACE[kind] = works
    return works


def decrypt(key: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
    """ChaChaPoly decryption with nonce ``n``.

    :raises InvalidTag: when the ciphertext or the associated data does not authenticate.
    """
    size = len(ciphertext) - TAGLEN
    if size < 0:
        raise InvalidTag(f"ciphertext is {len(ciphertext)} bytes, shorter than its {TAGLEN}-byte tag")
    out = _new("unsigned char[]", size or 1)
    rc = _aead_decrypt(out, _NULL, _NULL, ciphertext, len(ciphertext), ad, len(ad), _nonce(n), key)
    if rc != 0:
        raise InvalidTag(_TAMPERED)
    return bytes(_buffer(out, size))


def aesgcm_encrypt(key: bytes, n: int, ad: bytes, plaintext: bytes) -> bytes:
    """AESGCM encryption of ``plaintext`` with nonce ``n``; returns ciphertext and tag."""
    return _AESGCM(key).encrypt(_nonce_aesgcm(n), plaintext, ad)


def aesgcm_decrypt(key: bytes, n: int, ad: bytes, ciphertext: bytes) -> bytes:
    """AESGCM decryption with nonce ``n``.

    :raises InvalidTag: when the ciphertext or the associated data does not authenticate.
    """
    if len(ciphertext) < TAGLEN:
        raise InvalidTag(f"ciphertext is {len(ciphertext)} bytes, shorter than its {TAGLEN}-byte tag")
    try:
        return _AESGCM(key).decrypt(_nonce_aesgcm(n), ciphertext, ad)
    except _OpenSSLInvalidTag:
        raise InvalidTag(_TAMPERED) from None


class CipherFunction(NamedTuple):
    """A Noise cipher function: its name in protocol names, one-shot ``ENCRYPT`` and ``DECRYPT``
    (``(k, n, ad, data)``), and the class that keeps a transport key's state."""

    name: str
    encrypt: Callable[[bytes, int, bytes, bytes], bytes]
    decrypt: Callable[[bytes, int, bytes, bytes], bytes]
    transport: type[TransportCipher]


CHACHAPOLY: Final = CipherFunction("ChaChaPoly", encrypt, decrypt, TransportCipher)
AESGCM: Final = CipherFunction("AESGCM", aesgcm_encrypt, aesgcm_decrypt, AesGcmTransportCipher)
_CIPHERS: Final = {cipher.name: cipher for cipher in (CHACHAPOLY, AESGCM)}
_T = TypeVar("_T")


def cipher_function(name: str) -> CipherFunction:
    """Return the cipher function called ``name`` in a Noise protocol name.

    :raises ValueError: when the cipher is not one peerkit implements.
    """
    return _named(_CIPHERS, name, "cipher")


def _named(table: dict[str, _T], name: str, what: str) -> _T:
    # The function ``name`` of ``table``, or the error that says which there are.
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ValueError(f"unsupported Noise {what} {name!r}; supported: {known}") from None


@functools.cache
def aes_is_fast() -> bool:
    """Whether this CPU has AES instructions, so that AESGCM is the faster cipher here (and runs in
    constant time): the ``aes`` flag of Linux's ``/proc/cpuinfo`` on x86 and Arm; on macOS and
    Windows, the 64-bit x86 and Arm CPUs they run on have them. False where it cannot be told."""
    system, machine = platform.system(), platform.machine().lower()
    if system == "Linux":
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                return aes_in_cpuinfo(f.read(1 << 20))
        except OSError:
            return False
    return system in ("Darwin", "Windows") and machine in ("x86_64", "amd64", "arm64", "aarch64")


def aes_in_cpuinfo(text: str) -> bool:
    """Whether Linux's ``/proc/cpuinfo`` text lists the ``aes`` flag (x86 ``flags``, Arm
    ``Features``)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and "aes" in value.split():
            return True
    return False


def ed25519_pk_to_x25519(public: bytes) -> bytes:
    """Convert an Ed25519 public key to its X25519 form (``crypto_sign_ed25519_pk_to_curve25519``).

    :raises ValueError: when ``public`` is not a valid Ed25519 public key.
    """
    return _pk_to_x25519(bytes(public))


# The conversion decompresses and checks a point (some 60 us): a node converts the same few peer
# ids again and again (dialling, checking hellos), so recent results are kept. Bounded.
@functools.lru_cache(maxsize=1024)
def _pk_to_x25519(public: bytes) -> bytes:
    try:
        result: bytes = _sodium.crypto_sign_ed25519_pk_to_curve25519(public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise ValueError("not a valid Ed25519 public key") from None
    return result


def ed25519_sk_to_x25519(secret: bytes) -> bytes:
    """Convert a 64-byte Ed25519 secret key (seed + public) to its X25519 private key."""
    return _sodium.crypto_sign_ed25519_sk_to_curve25519(secret)


_HMAC_IPAD = bytes(x ^ 0x36 for x in range(256))
_HMAC_OPAD = bytes(x ^ 0x5C for x in range(256))


class HashFunction:
    """A Noise hash function: ``HASH``, ``HMAC-HASH`` and ``HKDF`` of the spec (section 4.3)."""

    __slots__ = ("_itail", "_otail", "blocklen", "hashlen", "name", "new")

    def __init__(self, name: str, new: Callable[[bytes], _HashObject], hashlen: int, blocklen: int):
        self.name = name
        #: The hash's constructor (``hashlib.blake2b`` or ``hashlib.sha256``).
        self.new = new
        self.hashlen = hashlen
        self.blocklen = blocklen
        # The padded part of an HMAC key that is exactly ``hashlen`` bytes long.
        self._itail = b"\x36" * (blocklen - hashlen)
        self._otail = b"\x5c" * (blocklen - hashlen)

    def digest(self, data: bytes) -> bytes:
        """``HASH(data)``."""
        return self.new(data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        """``HMAC-HASH(key, data)`` (RFC 2104); ``key`` is at most ``blocklen`` bytes here."""
        key = key.ljust(self.blocklen, b"\0")
        new = self.new
        inner = new(key.translate(_HMAC_IPAD) + data).digest()
        return new(key.translate(_HMAC_OPAD) + inner).digest()

    def hkdf(self, chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
        """The spec's ``HKDF(chaining_key, input_key_material, num_outputs)``, 2 or 3 outputs.

        ``chaining_key`` is ``hashlen`` bytes, as it always is in Noise.
        """
        new = self.new
        ipad = _HMAC_IPAD
        opad = _HMAC_OPAD
        itail = self._itail
        otail = self._otail
        inner = new(chaining_key.translate(ipad) + itail + ikm).digest()
        temp = new(chaining_key.translate(opad) + otail + inner).digest()
        # HMAC(temp, ...) two or three times: absorb the padded key once and copy the state.
        inner_state = new(temp.translate(ipad) + itail)
        outer_state = new(temp.translate(opad) + otail)
        h = inner_state.copy()
        h.update(b"\x01")
        o = outer_state.copy()
        o.update(h.digest())
        out1 = o.digest()
        h = inner_state.copy() if outputs == 3 else inner_state
        h.update(out1 + b"\x02")
        o = outer_state.copy() if outputs == 3 else outer_state
        o.update(h.digest())
        out2 = o.digest()
        if outputs == 2:
            return out1, out2
        inner_state.update(out2 + b"\x03")
        outer_state.update(inner_state.digest())
        return out1, out2, outer_state.digest()


_HASHES: Final = {
    "BLAKE2b": HashFunction("BLAKE2b", hashlib.blake2b, 64, 128),
    "SHA256": HashFunction("SHA256", hashlib.sha256, 32, 64),
}


def hash_function(name: str) -> HashFunction:
    """Return the hash function called ``name`` in a Noise protocol name.

    :raises ValueError: when the hash is not one peerkit implements.
    """
    return _named(_HASHES, name, "hash")
